//! Inbound eviction: which inbound peer makes room for a new one when
//! inbound is full (Bitcoin Core's `SelectNodeToEvict` in
//! `src/node/eviction.cpp`, without its network-specific protections).
//!
//! In order, peers are protected from eviction:
//! 1. `evict_protect_netgroups` peers of distinct keyed netgroups (highest
//!    keyed hash first, so an attacker cannot predict which groups win);
//! 2. `evict_protect_ping` with the lowest minimum ping;
//! 3. `evict_protect_txs` that most recently relayed a novel transaction;
//! 4. `evict_protect_blocks` that most recently relayed a novel block;
//! 5. `evict_protect_uptime_percent` of the rest, the longest connected.
//!
//! Of what is left, the netgroup with the most peers (ties: the one whose
//! youngest peer is youngest) loses its youngest peer. Nothing left means
//! nothing is evicted and the newcomer is refused.

use std::time::{Duration, Instant};

use super::config::PeerManagerConfig;
use crate::key::NodeId;

/// What the eviction rule knows about one evictable inbound peer.
#[derive(Debug, Clone)]
pub struct EvictionCandidate {
    /// The peer.
    pub id: NodeId,
    /// When it connected.
    pub connected_at: Instant,
    /// Lowest round trip measured, if any.
    pub min_ping: Option<Duration>,
    /// When it last relayed a block new to us.
    pub last_block: Option<Instant>,
    /// When it last relayed a transaction new to us.
    pub last_tx: Option<Instant>,
    /// Its netgroup ([`crate::netaddr::netgroup`]).
    pub netgroup: Vec<u8>,
    /// The netgroup hashed with the manager's secret key.
    pub keyed_netgroup: u64,
}

/// Sorts `v` by `key` (ascending; ties put the longest connected last) and
/// removes up to `k` elements from its end, the protected ones.
fn protect_last<K: Ord>(
    v: &mut Vec<EvictionCandidate>,
    k: usize,
    key: impl Fn(&EvictionCandidate) -> K,
) {
    v.sort_by_key(|c| (key(c), std::cmp::Reverse(c.connected_at), c.id));
    let keep = v.len().saturating_sub(k);
    v.truncate(keep);
}

/// The peer to evict, or `None` if every candidate is protected.
pub fn select_to_evict(mut v: Vec<EvictionCandidate>, cfg: &PeerManagerConfig) -> Option<NodeId> {
    // 1. Distinct keyed netgroups: the highest keyed hashes, one peer each
    //    (the longest connected of its group).
    v.sort_by_key(|c| (std::cmp::Reverse(c.keyed_netgroup), c.connected_at));
    let mut protected_groups = Vec::new();
    v.retain(|c| {
        if protected_groups.len() < cfg.evict_protect_netgroups
            && !protected_groups.contains(&c.keyed_netgroup)
        {
            protected_groups.push(c.keyed_netgroup);
            false
        } else {
            true
        }
    });
    // 2. Lowest minimum ping (an unmeasured peer sorts as the slowest).
    protect_last(&mut v, cfg.evict_protect_ping, |c| {
        std::cmp::Reverse(c.min_ping.unwrap_or(Duration::MAX))
    });
    // 3. and 4. Most recent novel transactions, then blocks; a peer that
    //    never relayed one is not protected for it.
    for (k, of) in [
        (cfg.evict_protect_txs, (|c: &EvictionCandidate| c.last_tx) as fn(&_) -> _),
        (cfg.evict_protect_blocks, |c: &EvictionCandidate| c.last_block),
    ] {
        let relayed = v.iter().filter(|c| of(c).is_some()).count();
        protect_last(&mut v, k.min(relayed), of);
    }
    // 5. The longest connected share of the rest.
    let half = v.len() * usize::from(cfg.evict_protect_uptime_percent) / 100;
    protect_last(&mut v, half, |c| std::cmp::Reverse(c.connected_at));
    if v.is_empty() {
        return None;
    }
    // The most populous netgroup, ties to the one with the youngest peer,
    // loses its youngest peer.
    let mut groups: std::collections::HashMap<&[u8], (usize, &EvictionCandidate)> =
        std::collections::HashMap::new();
    for c in &v {
        let e = groups.entry(&c.netgroup).or_insert((0, c));
        e.0 += 1;
        if c.connected_at > e.1.connected_at {
            e.1 = c;
        }
    }
    groups
        .into_values()
        .max_by_key(|(n, youngest)| (*n, youngest.connected_at, youngest.id))
        .map(|(_, youngest)| youngest.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PeerManagerConfig {
        PeerManagerConfig::default()
    }

    fn id(n: u8) -> NodeId {
        NodeId::from_public_key(&[n; 32])
    }

    fn cand(n: u8, group: u8, age_s: u64, t0: Instant) -> EvictionCandidate {
        EvictionCandidate {
            id: id(n),
            connected_at: t0 + Duration::from_secs(1000 - age_s),
            min_ping: Some(Duration::from_millis(100 + u64::from(n))),
            last_block: None,
            last_tx: None,
            netgroup: vec![4, group, 0],
            keyed_netgroup: u64::from(group) * 7919,
        }
    }

    #[test]
    fn nothing_to_evict_when_everyone_is_protected() {
        let t0 = Instant::now();
        // 4 groups + 8 pings + 1 of 2 by uptime... with only 10 peers of
        // distinct groups, the netgroup rule alone protects 4, ping 6 more.
        let v: Vec<_> = (0..10).map(|n| cand(n, n, u64::from(n), t0)).collect();
        assert_eq!(select_to_evict(v, &cfg()), None);
        assert_eq!(select_to_evict(Vec::new(), &cfg()), None);
    }

    #[test]
    fn the_youngest_of_the_largest_group_goes() {
        let t0 = Instant::now();
        let c = PeerManagerConfig {
            evict_protect_netgroups: 0,
            evict_protect_ping: 0,
            evict_protect_uptime_percent: 0,
            ..cfg()
        };
        // Group 1 has three peers, group 2 two.
        let v = vec![
            cand(1, 1, 500, t0),
            cand(2, 1, 10, t0),
            cand(3, 1, 300, t0),
            cand(4, 2, 5, t0),
            cand(5, 2, 400, t0),
        ];
        assert_eq!(select_to_evict(v, &c), Some(id(2)));
    }

    #[test]
    fn each_protection_counts() {
        let t0 = Instant::now();
        let none = PeerManagerConfig {
            evict_protect_netgroups: 0,
            evict_protect_ping: 0,
            evict_protect_txs: 0,
            evict_protect_blocks: 0,
            evict_protect_uptime_percent: 0,
            ..cfg()
        };
        let base: Vec<_> = (1..=6).map(|n| cand(n, 1, u64::from(n) * 10, t0)).collect();
        // Without protections the youngest (id 1) goes.
        assert_eq!(select_to_evict(base.clone(), &none), Some(id(1)));
        // A novel block protects it.
        let mut v = base.clone();
        v[0].last_block = Some(t0);
        let c = PeerManagerConfig { evict_protect_blocks: 1, ..none.clone() };
        assert_eq!(select_to_evict(v, &c), Some(id(2)));
        // So does a novel transaction.
        let mut v = base.clone();
        v[0].last_tx = Some(t0);
        let c = PeerManagerConfig { evict_protect_txs: 1, ..none.clone() };
        assert_eq!(select_to_evict(v, &c), Some(id(2)));
        // And the lowest ping.
        let mut v = base.clone();
        v[0].min_ping = Some(Duration::from_millis(1));
        let c = PeerManagerConfig { evict_protect_ping: 1, ..none.clone() };
        assert_eq!(select_to_evict(v, &c), Some(id(2)));
        // A distinct netgroup.
        let mut v = base.clone();
        v[0].netgroup = vec![4, 9, 0];
        v[0].keyed_netgroup = u64::MAX;
        let c = PeerManagerConfig { evict_protect_netgroups: 1, ..none.clone() };
        assert_eq!(select_to_evict(v, &c), Some(id(2)));
        // Uptime protects the oldest half: the youngest still goes, and
        // with 100 % nobody does.
        let c = PeerManagerConfig { evict_protect_uptime_percent: 50, ..none.clone() };
        assert_eq!(select_to_evict(base.clone(), &c), Some(id(1)));
        let c = PeerManagerConfig { evict_protect_uptime_percent: 100, ..none };
        assert_eq!(select_to_evict(base, &c), None);
    }
}
