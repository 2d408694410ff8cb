//! The [`PeerManager`]: the switch's policy as a plain struct (quinn-proto's
//! `Endpoint` and reth's `PeersManager` are the models). It takes events —
//! an inbound attempt, a finished handshake, a connection to admit, a
//! disconnect, a misbehaviour, a novel block or transaction, a measured
//! ping — each with the time injected, and returns decisions; the
//! [`Switch`](super::Switch)'s tokio code carries them out. Randomness
//! (the netgroup key, redial jitter) comes from a seeded RNG.
//!
//! What it decides:
//! - before the handshake: per-IP attempt rate, per-IP and total pending
//!   handshakes, per-IP inbound limit, and a short cool-off for an IP that
//!   keeps failing handshakes (never loopback, never a ban);
//! - after it: bans (by NodeId only), duplicates and the simultaneous-dial
//!   choice (the connection dialed by the lower id wins), limits by
//!   direction, IP and netgroup, and inbound eviction
//!   ([`super::eviction`]) when inbound is full;
//! - reputation ([`crate::fault`] has the table): scores by NodeId across
//!   reconnects, decaying, with ban tiers; persistent and unconditional
//!   peers are disconnected but capped and never banned for long;
//! - the redial backoff of persistent peers.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::config::PeerManagerConfig;
use super::eviction::{select_to_evict, EvictionCandidate};
use super::reject::RejectReason;
use super::reputation::{Reputation, ReputationRecord, Verdict};
use super::Direction;
use crate::fault::{Fault, Misbehavior};
use crate::key::NodeId;
use crate::netaddr::{is_local_group, netgroup};

/// Identifies one admitted connection (an id may reconnect; stale events
/// about an earlier connection are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What kind of connection asks to be admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnKind {
    /// They dialed us.
    Inbound,
    /// We dialed, counted against `max_outbound`.
    Outbound,
    /// We dialed a persistent peer: exempt from the outbound limits.
    Persistent,
    /// We dialed a short-lived feeler (addrman's test-before-evict):
    /// exempt from the outbound limits.
    Feeler,
    /// We dialed an extra outbound peer (Bitcoin Core's extra
    /// block-relay-only peer, `net_processing.cpp`
    /// `EXTRA_BLOCK_RELAY_ONLY_PEER_INTERVAL`): one at a time
    /// (`max_extra_outbound`), exempt from `max_outbound` and the
    /// netgroup limit. Once `extra_outbound_min_age` old,
    /// [`PeerManager::rotate_outbound`] keeps it in place of the outbound
    /// peer whose last novel block is oldest, or closes it. It is how a
    /// node whose outbound slots are all inside one side of a healed
    /// partition meets the other side again.
    Extra,
}

impl ConnKind {
    /// Who dialed.
    pub fn direction(self) -> Direction {
        match self {
            ConnKind::Inbound => Direction::Inbound,
            _ => Direction::Outbound,
        }
    }
}

/// The manager's answer to a connection that passed the handshake.
#[derive(Debug)]
pub enum Admission {
    /// Admitted.
    Accept(ConnId),
    /// Admitted once `victim`, an inbound peer, is disconnected (it no
    /// longer counts against the limits).
    Evict {
        /// The new connection.
        conn: ConnId,
        /// The inbound peer to disconnect.
        victim: NodeId,
    },
    /// A connection to this id exists and the new one is preferred (the
    /// one dialed by the lower id): stop the old one, wait until it is
    /// gone, then ask again.
    Replace,
    /// Refused.
    Refuse(RejectReason),
}

/// One admitted connection, as the manager sees it.
#[derive(Debug, Clone)]
struct Connected {
    conn: ConnId,
    kind: ConnKind,
    ip: IpAddr,
    group: Vec<u8>,
    connected_at: Instant,
    min_ping: Option<Duration>,
    last_block: Option<Instant>,
    last_tx: Option<Instant>,
    /// Chosen for eviction; no longer counted, still blocks duplicates.
    evicting: bool,
}

/// What [`PeerManager::rotate_outbound`] decided about an extra outbound
/// connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The extra relayed no block more recently than any outbound peer:
    /// disconnect it.
    Close(NodeId),
    /// The extra (`id`) is now a regular outbound peer; `evict`, the
    /// outbound peer with the oldest last novel block, is to be
    /// disconnected (none when a slot was free).
    Keep {
        /// The extra connection, kept.
        id: NodeId,
        /// The outbound peer it replaces.
        evict: Option<NodeId>,
    },
}

impl Rotation {
    /// The peer to disconnect, if any: the closed extra, or the outbound
    /// peer the kept extra replaces.
    pub fn leaving(&self) -> Option<NodeId> {
        match self {
            Rotation::Close(id) => Some(*id),
            Rotation::Keep { evict, .. } => *evict,
        }
    }
}

/// Per-IP state before authentication.
#[derive(Debug, Clone)]
struct IpState {
    pending: usize,
    tokens: f64,
    refilled: Instant,
    failures: u32,
    window_start: Instant,
    cooloff_until: Option<Instant>,
}

/// A pending inbound handshake admitted by
/// [`PeerManager::inbound_attempt`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingTicket {
    /// Hand back to [`PeerManager::handshake_finished`].
    pub id: u64,
    /// The older pending handshake this one displaced: close it.
    pub displaced: Option<u64>,
}

/// A peer's standing, for the RPC and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerStanding {
    /// Current score (decayed to now); the ban threshold defaults to 100.
    pub score: f64,
    /// Time left on its ban, if banned.
    pub banned_for: Option<Duration>,
}

/// The switch's policy: admission, reputation, bans, eviction, redials.
#[derive(Debug)]
pub struct PeerManager {
    /// Shared so the accept path can hold it while it changes per-IP state
    /// (a reference count, not a copy of the id lists).
    cfg: std::sync::Arc<PeerManagerConfig>,
    local_id: NodeId,
    rng: StdRng,
    netgroup_key: [u8; 32],
    /// By id: eviction sees candidates in the same order in every run.
    peers: BTreeMap<NodeId, Connected>,
    reputation: Reputation,
    ips: HashMap<IpAddr, IpState>,
    /// Pending inbound handshakes by ticket id (oldest first) and IP key.
    pending_list: std::collections::BTreeMap<u64, IpAddr>,
    next_pending: u64,
    persistent: HashSet<NodeId>,
    unconditional: HashSet<NodeId>,
    redial: HashMap<NodeId, Duration>,
    next_conn: u64,
}

/// Above this many tracked IPs, idle ones are pruned at once; if that is not
/// enough, every IP without a pending handshake is forgotten, so the table
/// stays within this plus `max_pending_handshakes`.
const MAX_TRACKED_IPS: usize = 65_536;

/// The key of an address for the per-IP rules: the canonical IP (an
/// IPv4-mapped IPv6 address is its IPv4 address), and for IPv6 its /64,
/// the block one host or one customer usually holds.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if !v6.is_loopback() => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        other => other,
    }
}

impl PeerManager {
    /// A manager for the node `local_id`, its randomness drawn from
    /// `seed` (a fixed seed makes every decision reproducible).
    pub fn new(cfg: PeerManagerConfig, local_id: NodeId, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let netgroup_key = rng.random();
        let unconditional = cfg.unconditional_peer_ids.iter().copied().collect();
        PeerManager {
            cfg: std::sync::Arc::new(cfg),
            local_id,
            rng,
            netgroup_key,
            peers: BTreeMap::new(),
            reputation: Reputation::new(),
            ips: HashMap::new(),
            pending_list: std::collections::BTreeMap::new(),
            next_pending: 0,
            persistent: HashSet::new(),
            unconditional,
            redial: HashMap::new(),
            next_conn: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &PeerManagerConfig {
        &self.cfg
    }

    /// Marks `id` as a persistent peer (exempt from outbound limits,
    /// never evicted, never banned for long).
    pub fn add_persistent(&mut self, id: NodeId) {
        self.persistent.insert(id);
    }

    /// Whether `id` is persistent or unconditional.
    pub fn is_protected(&self, id: &NodeId) -> bool {
        self.persistent.contains(id) || self.unconditional.contains(id)
    }

    /// Whether `id` is unconditional (exempt from the peer limits).
    pub fn is_unconditional(&self, id: &NodeId) -> bool {
        self.unconditional.contains(id)
    }

    fn ip_exempt(&self, ip: IpAddr) -> bool {
        self.cfg.per_ip_exempt_loopback && ip.to_canonical().is_loopback()
    }

    fn ip_state(&mut self, ip: IpAddr, now: Instant) -> &mut IpState {
        if self.ips.len() >= MAX_TRACKED_IPS && !self.ips.contains_key(&ip) {
            self.prune_ips(now);
            if self.ips.len() >= MAX_TRACKED_IPS {
                self.ips.retain(|_, s| s.pending > 0);
            }
        }
        let burst = f64::from(self.cfg.attempt_burst);
        self.ips.entry(ip).or_insert(IpState {
            pending: 0,
            tokens: burst,
            refilled: now,
            failures: 0,
            window_start: now,
            cooloff_until: None,
        })
    }

    fn prune_ips(&mut self, now: Instant) {
        let (rate, burst) = (self.cfg.attempt_rate_per_ip, f64::from(self.cfg.attempt_burst));
        let window = self.cfg.preauth_window;
        self.ips.retain(|_, s| {
            let tokens = s.tokens + now.saturating_duration_since(s.refilled).as_secs_f64() * rate;
            s.pending > 0
                || tokens < burst
                || s.cooloff_until.is_some_and(|t| t > now)
                || (s.failures > 0 && now.saturating_duration_since(s.window_start) < window)
        });
    }

    /// Peers that count against `max_outbound` and `max_inbound`: not being
    /// evicted, not unconditional, and for outbound neither persistent nor
    /// feelers (they are exempt, so they take no regular slot either).
    /// Checks the manager's invariants, for tests and fuzzing (`fuzz/`):
    /// counted inbound and outbound peers within `max_inbound` and
    /// `max_outbound` (unconditional and evicting peers are not counted),
    /// never our own id, pending handshakes within `max_pending_handshakes`
    /// and equal to the sum of the per-IP counts, no IP but an exempt one
    /// over `max_pending_handshakes_per_ip`, the IP table within its bound.
    ///
    /// # Errors
    /// The first invariant broken, described.
    pub fn check_invariants(&self) -> Result<(), String> {
        let (outbound, inbound) = self.counts();
        if inbound > self.cfg.max_inbound || outbound > self.cfg.max_outbound {
            return Err(format!("{inbound} inbound / {outbound} outbound peers counted"));
        }
        if self.peers.contains_key(&self.local_id) {
            return Err("our own id is a peer".into());
        }
        if self.extras() > self.cfg.max_extra_outbound {
            return Err(format!("{} extra outbound peers", self.extras()));
        }
        let pending: usize = self.ips.values().map(|s| s.pending).sum();
        if pending != self.pending_list.len()
            || pending > self.cfg.max_pending_handshakes
            || self.ips.iter().any(|(ip, s)| {
                !self.ip_exempt(*ip) && s.pending > self.cfg.max_pending_handshakes_per_ip
            })
        {
            return Err(format!(
                "{pending} pending by IP, {} in the list",
                self.pending_list.len()
            ));
        }
        if self.ips.len() > MAX_TRACKED_IPS + self.cfg.max_pending_handshakes {
            return Err(format!("{} IPs tracked", self.ips.len()));
        }
        Ok(())
    }

    fn counts(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        for (id, c) in &self.peers {
            if c.evicting || self.unconditional.contains(id) {
                continue;
            }
            match c.kind {
                ConnKind::Inbound => counts.1 += 1,
                ConnKind::Outbound => counts.0 += 1,
                ConnKind::Persistent | ConnKind::Feeler | ConnKind::Extra => {}
            }
        }
        counts
    }

    /// Extra outbound connections not being evicted.
    fn extras(&self) -> usize {
        self.peers
            .iter()
            .filter(|(id, c)| {
                c.kind == ConnKind::Extra && !c.evicting && !self.unconditional.contains(*id)
            })
            .count()
    }

    /// A new inbound connection from `ip`, before any byte is read: the
    /// IP's cool-off, its attempt rate, the per-IP pending-handshake and
    /// inbound limits, then the total of pending handshakes. When the total
    /// is full, the newcomer displaces the oldest pending handshake of the
    /// IP holding the most, if that IP holds more than the newcomer's; so
    /// many idle connections from few IPs cannot keep others out. On `Ok`
    /// the handshake counts as pending until
    /// [`PeerManager::handshake_finished`] with its ticket's id.
    ///
    /// # Errors
    /// [`RejectReason::CoolingOff`], [`RejectReason::TooManyAttempts`],
    /// [`RejectReason::TooManyHandshakes`],
    /// [`RejectReason::TooManyFromIp`].
    pub fn inbound_attempt(
        &mut self,
        now: Instant,
        ip: IpAddr,
    ) -> Result<PendingTicket, RejectReason> {
        let ip = ip.to_canonical();
        let exempt = self.ip_exempt(ip);
        let key = ip_key(ip);
        let cfg = self.cfg.clone();
        let inbound_from_ip = self
            .peers
            .values()
            .filter(|c| c.kind == ConnKind::Inbound && !c.evicting && ip_key(c.ip) == key)
            .count();
        let s = self.ip_state(key, now);
        if !key.is_loopback() && s.cooloff_until.is_some_and(|t| t > now) {
            return Err(RejectReason::CoolingOff(ip));
        }
        if !exempt {
            let dt = now.saturating_duration_since(s.refilled).as_secs_f64();
            s.tokens = (s.tokens + dt * cfg.attempt_rate_per_ip).min(f64::from(cfg.attempt_burst));
            s.refilled = now;
            if s.tokens < 1.0 {
                return Err(RejectReason::TooManyAttempts(ip));
            }
            s.tokens -= 1.0;
            if s.pending >= cfg.max_pending_handshakes_per_ip {
                return Err(RejectReason::TooManyHandshakes);
            }
            if cfg.max_inbound_per_ip != 0 && inbound_from_ip >= cfg.max_inbound_per_ip {
                return Err(RejectReason::TooManyFromIp(ip));
            }
        }
        let mine = s.pending;
        let mut displaced = None;
        if self.pending_list.len() >= cfg.max_pending_handshakes {
            let heaviest = self
                .ips
                .iter()
                .filter(|(_, st)| st.pending > mine)
                .max_by_key(|(k, st)| (st.pending, **k))
                .map(|(k, _)| *k);
            let Some(heavy) = heaviest else {
                // Refused for others' handshakes: its attempt is not spent.
                if !exempt {
                    let s = self.ip_state(key, now);
                    s.tokens = (s.tokens + 1.0).min(f64::from(cfg.attempt_burst));
                }
                return Err(RejectReason::TooManyHandshakes);
            };
            let oldest = self.pending_list.iter().find(|(_, k)| **k == heavy).map(|(id, _)| *id);
            let Some(oldest) = oldest else { return Err(RejectReason::TooManyHandshakes) };
            self.release_pending(oldest);
            displaced = Some(oldest);
        }
        self.next_pending += 1;
        let id = self.next_pending;
        self.pending_list.insert(id, key);
        self.ip_state(key, now).pending += 1;
        Ok(PendingTicket { id, displaced })
    }

    /// Forgets pending handshake `id` (its counts), if still pending.
    fn release_pending(&mut self, id: u64) -> Option<IpAddr> {
        let key = self.pending_list.remove(&id)?;
        if let Some(s) = self.ips.get_mut(&key) {
            s.pending = s.pending.saturating_sub(1);
        }
        Some(key)
    }

    /// Pending handshakes now (for tests and metrics).
    pub fn pending_handshakes(&self) -> usize {
        self.pending_list.len()
    }

    /// The handshake of ticket `id` ended (admitted, refused, failed or
    /// displaced; a displaced one was already released). A failure that is
    /// the peer's fault before it was authenticated counts toward the IP's
    /// cool-off: after `preauth_failures` within `preauth_window` the IP is
    /// refused for `ip_cooloff` (never loopback).
    pub fn handshake_finished(&mut self, now: Instant, id: u64, failure: Option<Fault>) {
        let cfg = self.cfg.clone();
        let Some(key) = self.release_pending(id) else { return };
        if failure != Some(Fault::Peer) || key.is_loopback() {
            return;
        }
        let s = self.ip_state(key, now);
        if now.saturating_duration_since(s.window_start) >= cfg.preauth_window {
            s.window_start = now;
            s.failures = 0;
        }
        s.failures += 1;
        if s.failures >= cfg.preauth_failures {
            s.cooloff_until = Some(now + cfg.ip_cooloff);
            s.failures = 0;
            s.window_start = now;
        }
    }

    /// Whether we may dial `id` now: not banned, not connected, and for a
    /// regular dial, room among outbound peers.
    ///
    /// # Errors
    /// [`RejectReason::Banned`], [`RejectReason::Duplicate`],
    /// [`RejectReason::OutboundFull`].
    pub fn check_dial(
        &self,
        now: Instant,
        id: Option<NodeId>,
        kind: ConnKind,
    ) -> Result<(), RejectReason> {
        if let Some(id) = id {
            if self.reputation.banned_until(&id, now).is_some() {
                return Err(RejectReason::Banned(id));
            }
            if self.peers.contains_key(&id) {
                return Err(RejectReason::Duplicate(id));
            }
            if self.is_unconditional(&id) {
                return Ok(());
            }
        }
        if kind == ConnKind::Outbound && self.counts().0 >= self.cfg.max_outbound {
            return Err(RejectReason::OutboundFull);
        }
        if kind == ConnKind::Extra && self.extras() >= self.cfg.max_extra_outbound {
            return Err(RejectReason::OutboundFull);
        }
        Ok(())
    }

    /// Whether `id`, authenticated, may be admitted at all (not banned):
    /// checked right after the handshake, before the application's filter.
    ///
    /// # Errors
    /// [`RejectReason::Banned`].
    pub fn check_banned(&self, now: Instant, id: &NodeId) -> Result<(), RejectReason> {
        match self.reputation.banned_until(id, now) {
            Some(_) => Err(RejectReason::Banned(*id)),
            None => Ok(()),
        }
    }

    /// Whether a connection of `direction` to `id` is the one kept when
    /// both sides dial each other: the one dialed by the lower id.
    fn preferred(&self, id: &NodeId, direction: Direction) -> bool {
        (direction == Direction::Outbound) == (self.local_id < *id)
    }

    /// Whether a connection of `kind` under `id` would be refused as a
    /// duplicate of the connected one: checked before our NodeInfo is sent
    /// so the refusal can say so ([`crate::Refusal`]); admission checks it
    /// again ([`PeerManager::admit`]).
    ///
    /// # Errors
    /// [`RejectReason::Duplicate`].
    pub fn check_duplicate(&self, id: &NodeId, kind: ConnKind) -> Result<(), RejectReason> {
        if let Some(old) = self.peers.get(id) {
            let new_preferred = self.preferred(id, kind.direction());
            let old_preferred = self.preferred(id, old.kind.direction());
            if !new_preferred || old_preferred {
                return Err(RejectReason::Duplicate(*id));
            }
        }
        Ok(())
    }

    /// An authenticated connection asks to join the peer set.
    pub fn admit(&mut self, now: Instant, id: NodeId, ip: IpAddr, kind: ConnKind) -> Admission {
        let ip = ip.to_canonical();
        // The NodeInfo check refuses it first in the switch; the manager
        // does not rely on that (found by fuzz/peer_manager).
        if id == self.local_id {
            return Admission::Refuse(RejectReason::SelfConnection);
        }
        if let Err(e) = self.check_banned(now, &id) {
            return Admission::Refuse(e);
        }
        if self.peers.contains_key(&id) {
            if let Err(e) = self.check_duplicate(&id, kind) {
                return Admission::Refuse(e);
            }
            // The new connection takes the old one's place: replace only if
            // the limits would admit it there, or both would be lost.
            let old = self.peers.remove(&id).expect("present");
            let fits = self.limits(id, ip, kind);
            self.peers.insert(id, old);
            return match fits {
                Ok(_) => Admission::Replace,
                Err(e) => Admission::Refuse(e),
            };
        }
        let victim = match self.limits(id, ip, kind) {
            Ok(v) => v,
            Err(e) => return Admission::Refuse(e),
        };
        if kind == ConnKind::Persistent {
            self.persistent.insert(id);
        }
        if self.persistent.contains(&id) {
            // Connected, whoever dialed: the next redial starts over.
            self.redial.remove(&id);
        }
        self.next_conn += 1;
        let conn = ConnId(self.next_conn);
        self.peers.insert(
            id,
            Connected {
                conn,
                kind,
                ip,
                group: netgroup(ip),
                connected_at: now,
                min_ping: None,
                last_block: None,
                last_tx: None,
                evicting: false,
            },
        );
        match victim {
            Some(v) => {
                if let Some(c) = self.peers.get_mut(&v) {
                    c.evicting = true;
                }
                Admission::Evict { conn, victim: v }
            }
            None => Admission::Accept(conn),
        }
    }

    /// The limits by direction, IP and netgroup for a new connection of
    /// `id` from/to `ip`: `Ok(Some(victim))` when inbound is full and
    /// `victim` can make room, `Ok(None)` when there is room.
    fn limits(
        &self,
        id: NodeId,
        ip: IpAddr,
        kind: ConnKind,
    ) -> Result<Option<NodeId>, RejectReason> {
        let unconditional = self.is_unconditional(&id);
        let group = netgroup(ip);
        let group_limited = !is_local_group(ip) && !unconditional;
        let (outbound, inbound) = self.counts();
        let same_group = |k: ConnKind| {
            self.peers.values().filter(|c| !c.evicting && c.kind == k && c.group == group).count()
        };
        match kind {
            ConnKind::Inbound => {
                let exempt = self.ip_exempt(ip) || unconditional;
                // An IPv6 /64 is one IP here, as for every per-IP rule.
                let key = ip_key(ip);
                let from_ip = self
                    .peers
                    .values()
                    .filter(|c| c.kind == ConnKind::Inbound && !c.evicting && ip_key(c.ip) == key)
                    .count();
                let per_ip = self.cfg.max_inbound_per_ip;
                if !exempt && per_ip != 0 && from_ip >= per_ip {
                    return Err(RejectReason::TooManyFromIp(ip));
                }
                let limit = self.cfg.max_inbound_per_netgroup;
                if group_limited && limit != 0 && same_group(ConnKind::Inbound) >= limit {
                    return Err(RejectReason::TooManyFromNetgroup(ip));
                }
                if !unconditional && inbound >= self.cfg.max_inbound {
                    return match self.select_victim() {
                        Some(v) => Ok(Some(v)),
                        None => Err(RejectReason::InboundFull),
                    };
                }
            }
            ConnKind::Outbound => {
                if !unconditional && outbound >= self.cfg.max_outbound {
                    return Err(RejectReason::OutboundFull);
                }
                let limit = self.cfg.max_outbound_per_netgroup;
                if group_limited
                    && limit != 0
                    && !self.persistent.contains(&id)
                    && same_group(ConnKind::Outbound) >= limit
                {
                    return Err(RejectReason::TooManyFromNetgroup(ip));
                }
            }
            ConnKind::Extra => {
                if !unconditional && self.extras() >= self.cfg.max_extra_outbound {
                    return Err(RejectReason::OutboundFull);
                }
            }
            ConnKind::Persistent | ConnKind::Feeler => {}
        }
        Ok(None)
    }

    fn keyed_netgroup(&self, group: &[u8]) -> u64 {
        let h = Sha256::new().chain_update(self.netgroup_key).chain_update(group).finalize();
        u64::from_be_bytes(h[..8].try_into().expect("8 bytes"))
    }

    /// The inbound peer to evict for a newcomer, if any is evictable.
    fn select_victim(&self) -> Option<NodeId> {
        let candidates = self
            .peers
            .iter()
            .filter(|(id, c)| c.kind == ConnKind::Inbound && !c.evicting && !self.is_protected(id))
            .map(|(id, c)| EvictionCandidate {
                id: *id,
                connected_at: c.connected_at,
                min_ping: c.min_ping,
                last_block: c.last_block,
                last_tx: c.last_tx,
                keyed_netgroup: self.keyed_netgroup(&c.group),
                netgroup: c.group.clone(),
            })
            .collect();
        select_to_evict(candidates, &self.cfg)
    }

    /// The connection `conn` of `id` has ended (an event about an older
    /// connection of the same id is ignored).
    pub fn disconnected(&mut self, id: &NodeId, conn: ConnId) {
        if self.peers.get(id).is_some_and(|c| c.conn == conn) {
            self.peers.remove(id);
        }
    }

    /// `id` misbehaved: its score grows by the kind's weight, and the
    /// verdict says whether to disconnect and for how long it is banned.
    pub fn misbehaved(&mut self, now: Instant, id: NodeId, kind: Misbehavior) -> Verdict {
        let protected = self.is_protected(&id);
        self.reputation.report(&self.cfg, id, kind, protected, now)
    }

    /// Bans `id` for `dur` (an application decision; never shortens a ban
    /// in force).
    pub fn ban(&mut self, now: Instant, id: NodeId, dur: Duration) {
        self.reputation.ban(&self.cfg, id, dur, now);
    }

    /// `id` relayed a block new to us (protects it from eviction).
    pub fn novel_block(&mut self, now: Instant, id: &NodeId) {
        if let Some(c) = self.peers.get_mut(id) {
            c.last_block = Some(now);
        }
    }

    /// `id` relayed a transaction new to us (protects it from eviction).
    pub fn novel_tx(&mut self, now: Instant, id: &NodeId) {
        if let Some(c) = self.peers.get_mut(id) {
            c.last_tx = Some(now);
        }
    }

    /// A round trip measured to `id`.
    pub fn ping(&mut self, id: &NodeId, rtt: Duration) {
        if let Some(c) = self.peers.get_mut(id) {
            c.min_ping = Some(c.min_ping.map_or(rtt, |m| m.min(rtt)));
        }
    }

    /// `id`'s score and ban now.
    pub fn standing(&self, now: Instant, id: &NodeId) -> PeerStanding {
        PeerStanding {
            score: self.reputation.score(&self.cfg, id, now),
            banned_for: self.reputation.banned_until(id, now).map(|t| t - now),
        }
    }

    /// The delay before the next redial of persistent peer `id`: starts at
    /// `redial_initial`, doubles per call up to `redial_max`, plus up to
    /// 25 % jitter; [`PeerManager::admit`] of a persistent connection
    /// resets it.
    pub fn redial_delay(&mut self, id: &NodeId) -> Duration {
        let cur = *self.redial.get(id).unwrap_or(&self.cfg.redial_initial);
        self.redial.insert(*id, (cur * 2).min(self.cfg.redial_max));
        cur + cur.mul_f64(self.rng.random::<f64>() * 0.25)
    }

    /// The extra-outbound rotation (Bitcoin Core's
    /// `EvictExtraOutboundPeers` for block-relay-only peers), called from
    /// the switch's maintenance loop: for the oldest extra connection that
    /// is at least `extra_outbound_min_age` old, among it and the
    /// regular outbound peers (neither persistent nor unconditional nor
    /// being evicted) the one whose last novel block is the oldest (never
    /// one counts as oldest; ties go to the youngest connection) loses.
    /// If that is the extra, it is closed ([`Rotation::Close`]); if not,
    /// the extra becomes a regular outbound peer in its place
    /// ([`Rotation::Keep`], the loser to be disconnected, and no longer
    /// counted). With a free outbound slot the extra is kept and nobody
    /// leaves; a persistent or unconditional peer reached as an extra is
    /// kept as its own kind. `None`: nothing to decide now.
    pub fn rotate_outbound(&mut self, now: Instant) -> Option<Rotation> {
        let min_age = self.cfg.extra_outbound_min_age;
        let (extra_id, _) = self
            .peers
            .iter()
            .filter(|(_, c)| {
                c.kind == ConnKind::Extra
                    && !c.evicting
                    && now.saturating_duration_since(c.connected_at) >= min_age
            })
            .min_by_key(|(id, c)| (c.connected_at, **id))?;
        let extra_id = *extra_id;
        if self.is_protected(&extra_id) {
            // A persistent or unconditional peer reached as an extra: it
            // is never rotated out, so it simply stays, as its own kind.
            let c = self.peers.get_mut(&extra_id).expect("present");
            c.kind = if self.persistent.contains(&extra_id) {
                ConnKind::Persistent
            } else {
                ConnKind::Outbound
            };
            return Some(Rotation::Keep { id: extra_id, evict: None });
        }
        let full = self.counts().0 >= self.cfg.max_outbound;
        let loser = if full {
            let regular = |(id, c): &(&NodeId, &Connected)| {
                c.kind == ConnKind::Outbound && !c.evicting && !self.is_protected(id)
            };
            // Oldest novel block first (None before any), then the
            // youngest connection, then the id for a total order.
            self.peers
                .iter()
                .filter(|e| e.0 == &extra_id || regular(e))
                .min_by_key(|(id, c)| (c.last_block, std::cmp::Reverse(c.connected_at), **id))
                .map(|(id, _)| *id)
        } else {
            None
        };
        if loser == Some(extra_id) {
            self.peers.get_mut(&extra_id).expect("present").evicting = true;
            return Some(Rotation::Close(extra_id));
        }
        if let Some(l) = loser {
            self.peers.get_mut(&l).expect("present").evicting = true;
        }
        self.peers.get_mut(&extra_id).expect("present").kind = ConnKind::Outbound;
        Some(Rotation::Keep { id: extra_id, evict: loser })
    }

    /// Housekeeping: forgets spent reputations and idle IP state.
    pub fn tick(&mut self, now: Instant) {
        self.reputation.prune(&self.cfg, now);
        self.prune_ips(now);
    }

    /// Every identity's reputation in saved form, as of `now` and unix time
    /// `wall` seconds.
    pub fn snapshot(&self, now: Instant, wall: u64) -> Vec<ReputationRecord> {
        self.reputation.snapshot(&self.cfg, now, wall)
    }

    /// Takes back saved reputations (the wall time since they were saved
    /// decays the scores and runs down the bans).
    pub fn restore(&mut self, now: Instant, wall: u64, records: &[ReputationRecord]) {
        self.reputation.restore(&self.cfg, records, now, wall);
    }
}

#[cfg(test)]
mod tests;
