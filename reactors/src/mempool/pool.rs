//! The transaction pool: opaque transactions by id, bounded by count and
//! bytes, first in first out, and fair between sources: each transaction
//! remembers where it came from (our own RPC, a peer, a disconnected
//! block); one peer holds at most `max_peer_share_percent` of the pool,
//! peers together leave `reserved_local_percent` for our own submissions,
//! and when the pool is full a newcomer evicts the oldest transaction of
//! the peer holding the most (if that peer holds more than the newcomer's
//! source).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;

use plexus_p2p::NodeId;

use crate::chain::{Hash, TipChange, TxId};

/// Where a transaction came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxSource {
    /// Submitted to this node (RPC, the node's own users): never evicted
    /// for a peer's transaction.
    Local,
    /// Gossiped by this peer.
    Peer(NodeId),
    /// Put back from a block a reorganisation disconnected.
    Chain,
}

/// Mempool limits.
#[derive(Clone, Debug)]
pub struct MempoolConfig {
    /// Most transactions held. Default 10,000.
    pub max_txs: usize,
    /// Most bytes of transactions held. Default 64 MiB.
    pub max_bytes: usize,
    /// Largest transaction accepted, bytes; at most the network's
    /// `max_tx_bytes`. Default 65,536.
    pub max_tx_bytes: usize,
    /// How many ids of recently mined transactions are remembered, so a
    /// transaction gossiped back after its block is not mined again.
    /// Default 100,000.
    pub max_recent_mined: usize,
    /// Bytes that may wait to be sent to one peer on this channel (the
    /// MConnection's `send_queue_bytes`): answers to its requests are
    /// built only as large as what is left, so a peer that asks and never
    /// reads holds at most this. Default 1 MiB.
    pub send_queue_bytes: usize,
    /// Peers remembered per transaction as having sent it to us (the
    /// first one is its source), so gossip does not send it back to them
    /// (CometBFT's per-transaction sender list, capped; a later sender is
    /// only sent back a duplicate). Memory for it is bounded by the pool,
    /// never by the number of peers. Default 4.
    pub max_senders_per_tx: usize,
    /// Gossip runs at most this often: transactions arriving meanwhile go
    /// to each peer together, in one message per `max_txs_per_msg`, so the
    /// cost per peer is per round, not per transaction (Bitcoin Core
    /// trickles its inventory the same way). Default 100 ms.
    pub gossip_interval: std::time::Duration,
    /// Most transactions in one gossip message; more is a protocol error.
    /// Default 256.
    pub max_txs_per_msg: usize,
    /// Largest gossip message, bytes (the channel's receive limit); at
    /// least `max_tx_bytes + 16`. Default 1 MiB.
    pub max_msg_bytes: usize,
    /// Most of the pool (of `max_txs` and of `max_bytes`) one peer's
    /// transactions may hold, percent. Default 25.
    pub max_peer_share_percent: u8,
    /// Share of the pool (of `max_txs` and of `max_bytes`) peers' transactions
    /// together leave for local submissions, percent. Default 10.
    pub reserved_local_percent: u8,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            max_txs: 10_000,
            max_bytes: 64 << 20,
            max_tx_bytes: 64 * 1024,
            max_recent_mined: 100_000,
            send_queue_bytes: 1 << 20,
            max_senders_per_tx: 4,
            gossip_interval: std::time::Duration::from_millis(100),
            max_txs_per_msg: 256,
            max_msg_bytes: 1 << 20,
            max_peer_share_percent: 25,
            reserved_local_percent: 10,
        }
    }
}

/// Why a transaction was not added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// Larger than `max_tx_bytes` (a peer sending it misbehaves).
    #[error("transaction is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Already in the pool.
    #[error("transaction {0} is already in the mempool")]
    Duplicate(TxId),
    /// Recently mined into the main chain.
    #[error("transaction {0} is already in a block")]
    AlreadyMined(TxId),
    /// The pool is at `max_txs` or `max_bytes` (or the source's share of
    /// them) and nothing could be evicted for it.
    #[error("mempool is full ({txs} transactions, {bytes} bytes)")]
    Full {
        /// Transactions held.
        txs: usize,
        /// Bytes held.
        bytes: usize,
    },
}

/// A set of ids that forgets the oldest beyond its capacity.
#[derive(Debug, Default)]
pub struct BoundedSet {
    set: HashSet<Hash>,
    order: VecDeque<Hash>,
    cap: usize,
}

impl BoundedSet {
    /// An empty set holding at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        BoundedSet { set: HashSet::new(), order: VecDeque::new(), cap }
    }

    /// Adds `id`; false if it was there.
    pub fn insert(&mut self, id: Hash) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Whether `id` is remembered.
    pub fn contains(&self, id: &Hash) -> bool {
        self.set.contains(id)
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: &Hash) {
        if self.set.remove(id) {
            self.order.retain(|h| h != id);
        }
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// The pool. See the module documentation.
#[derive(Debug)]
pub struct Mempool {
    cfg: MempoolConfig,
    txs: HashMap<TxId, Entry>,
    order: BTreeMap<u64, TxId>,
    next_seq: u64,
    bytes: usize,
    recent_mined: BoundedSet,
    /// Per source: (transactions, bytes, their sequence numbers).
    sources: HashMap<TxSource, Share>,
    /// Transactions and bytes from peers in all.
    from_peers: (usize, usize),
}

/// One transaction in the pool.
#[derive(Debug)]
struct Entry {
    seq: u64,
    tx: Bytes,
    source: TxSource,
    /// Peers that sent it after its source: with the source when that is
    /// a peer, at most `max_senders_per_tx` peers in all.
    also_from: Vec<NodeId>,
}

/// A transaction as gossip sees it ([`Mempool::since`]): its place in
/// the pool's order and the peers known to have it.
#[derive(Debug, Clone)]
pub struct GossipTx {
    /// Position in the pool's order (increasing, never reused).
    pub seq: u64,
    /// The transaction.
    pub tx: Bytes,
    /// Peers that sent it to us (at most `max_senders_per_tx`).
    pub senders: Vec<NodeId>,
}

/// What one source holds.
#[derive(Debug, Default)]
struct Share {
    txs: usize,
    bytes: usize,
    seqs: std::collections::BTreeSet<u64>,
}

impl Mempool {
    /// An empty pool.
    pub fn new(cfg: MempoolConfig) -> Mempool {
        let recent_mined = BoundedSet::new(cfg.max_recent_mined);
        Mempool {
            cfg,
            txs: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
            recent_mined,
            sources: HashMap::new(),
            from_peers: (0, 0),
        }
    }

    /// Checks the pool's invariants, for tests and fuzzing (`fuzz/`): the
    /// order, the per-source shares and the byte counts agree with the
    /// transactions held; the pool is within `max_txs` and `max_bytes`;
    /// each peer within its share (`max_peer_share_percent`, at least one
    /// transaction of any allowed size); each transaction with at most
    /// `max_senders_per_tx` senders (its source, when a peer, counted).
    ///
    /// # Errors
    /// The first invariant broken, described.
    pub fn check_invariants(&self) -> Result<(), String> {
        let c = &self.cfg;
        if self.order.len() != self.txs.len()
            || self.order.iter().any(|(seq, id)| self.txs.get(id).map(|e| e.seq) != Some(*seq))
        {
            return Err("the order and the transactions disagree".into());
        }
        if self.txs.values().map(|e| e.tx.len()).sum::<usize>() != self.bytes {
            return Err("bytes miscounted".into());
        }
        let mut shares: HashMap<TxSource, (usize, usize)> = HashMap::new();
        for e in self.txs.values() {
            let s = shares.entry(e.source).or_default();
            s.0 += 1;
            s.1 += e.tx.len();
            let peer_source = usize::from(matches!(e.source, TxSource::Peer(_)));
            if peer_source + e.also_from.len() > c.max_senders_per_tx.max(1) {
                return Err("too many senders remembered".into());
            }
        }
        let mut peers = (0, 0);
        for (source, share) in &self.sources {
            let held = shares.get(source).copied().unwrap_or_default();
            if (share.txs, share.bytes) != held || share.seqs.len() != share.txs {
                return Err(format!("the share of {source:?} is miscounted"));
            }
            if let TxSource::Peer(_) = source {
                peers = (peers.0 + held.0, peers.1 + held.1);
                let pct = |n: usize| n * usize::from(c.max_peer_share_percent) / 100;
                if held.0 > pct(c.max_txs).max(1) || held.1 > pct(c.max_bytes).max(c.max_tx_bytes) {
                    return Err(format!("{source:?} holds more than its share"));
                }
            }
        }
        if shares.keys().any(|s| !self.sources.contains_key(s)) || peers != self.from_peers {
            return Err("a source is missing or the peers' total is miscounted".into());
        }
        if self.txs.len() > c.max_txs || self.bytes > c.max_bytes {
            return Err(format!(
                "{} transactions, {} bytes: over the limits",
                self.txs.len(),
                self.bytes
            ));
        }
        Ok(())
    }

    /// The limits.
    pub fn config(&self) -> &MempoolConfig {
        &self.cfg
    }

    /// Adds a local transaction ([`TxSource::Local`]). Errors:
    /// [`MempoolError`] (too large, duplicate, recently mined, full).
    pub fn add(&mut self, tx: Bytes) -> Result<TxId, MempoolError> {
        self.add_from(tx, TxSource::Local)
    }

    /// Adds `tx` from `source`, fairly (module docs). Errors:
    /// [`MempoolError`] (too large, duplicate, recently mined, full).
    pub fn add_from(&mut self, tx: Bytes, source: TxSource) -> Result<TxId, MempoolError> {
        if tx.len() > self.cfg.max_tx_bytes {
            return Err(MempoolError::TooLarge { size: tx.len(), max: self.cfg.max_tx_bytes });
        }
        let id = Hash::sha256(&tx);
        if self.txs.contains_key(&id) {
            return Err(MempoolError::Duplicate(id));
        }
        if self.recent_mined.contains(&id) {
            return Err(MempoolError::AlreadyMined(id));
        }
        let full = Err(MempoolError::Full { txs: self.txs.len(), bytes: self.bytes });
        let pct = |n: usize, p: u8| n * usize::from(p) / 100;
        let (max_txs, max_bytes) = (self.cfg.max_txs, self.cfg.max_bytes);
        let len = tx.len();
        // Evict until `fits` holds, the oldest transaction of the peer
        // holding the most each time, as long as it holds more than
        // `mine` (transactions and bytes of the newcomer's source).
        loop {
            let mine = self.sources.get(&source).map_or((0, 0), |s| (s.txs, s.bytes));
            let over_share = matches!(source, TxSource::Peer(_))
                && (mine.0 + 1 > pct(max_txs, self.cfg.max_peer_share_percent).max(1)
                    || mine.1 + len > pct(max_bytes, self.cfg.max_peer_share_percent).max(len));
            if over_share {
                // Its own share is full: its oldest makes room, or nothing.
                if !self.evict_oldest_of(source) {
                    return full;
                }
                continue;
            }
            let peers_room = matches!(source, TxSource::Peer(_))
                && (self.from_peers.0 + 1
                    > max_txs - pct(max_txs, self.cfg.reserved_local_percent)
                    || self.from_peers.1 + len
                        > max_bytes - pct(max_bytes, self.cfg.reserved_local_percent));
            let pool_full = self.txs.len() + 1 > max_txs || self.bytes + len > max_bytes;
            if !peers_room && !pool_full {
                break;
            }
            let Some(heavy) = self.heaviest_peer(source, mine) else { return full };
            self.evict_oldest_of(heavy);
        }
        self.insert(id, tx, source);
        Ok(id)
    }

    /// The peer holding the most bytes, if it holds more than `mine`
    /// (and is not `source`); any peer will do for a local or chain
    /// transaction.
    fn heaviest_peer(&self, source: TxSource, mine: (usize, usize)) -> Option<TxSource> {
        let peer_source = matches!(source, TxSource::Peer(_));
        self.sources
            .iter()
            .filter(|(s, share)| {
                matches!(s, TxSource::Peer(_))
                    && **s != source
                    && share.txs > 0
                    && (!peer_source || share.bytes > mine.1 || share.txs > mine.0)
            })
            .max_by_key(|(s, share)| {
                let id = match s {
                    TxSource::Peer(id) => Some(*id),
                    _ => None,
                };
                (share.bytes, share.txs, id)
            })
            .map(|(s, _)| *s)
    }

    /// Removes the oldest transaction of `source`; false if it has none.
    fn evict_oldest_of(&mut self, source: TxSource) -> bool {
        let Some(seq) = self.sources.get(&source).and_then(|s| s.seqs.first().copied()) else {
            return false;
        };
        let id = self.order[&seq];
        self.remove(&id);
        true
    }

    fn insert(&mut self, id: TxId, tx: Bytes, source: TxSource) {
        self.bytes += tx.len();
        let share = self.sources.entry(source).or_default();
        share.txs += 1;
        share.bytes += tx.len();
        share.seqs.insert(self.next_seq);
        if matches!(source, TxSource::Peer(_)) {
            self.from_peers.0 += 1;
            self.from_peers.1 += tx.len();
        }
        self.order.insert(self.next_seq, id);
        self.txs.insert(id, Entry { seq: self.next_seq, tx, source, also_from: Vec::new() });
        self.next_seq += 1;
    }

    /// Removes `id`, returning the transaction.
    pub fn remove(&mut self, id: &TxId) -> Option<Bytes> {
        let Entry { seq, tx, source, .. } = self.txs.remove(id)?;
        self.order.remove(&seq);
        self.bytes -= tx.len();
        if let Some(share) = self.sources.get_mut(&source) {
            share.txs -= 1;
            share.bytes -= tx.len();
            share.seqs.remove(&seq);
            if share.txs == 0 {
                self.sources.remove(&source);
            }
        }
        if matches!(source, TxSource::Peer(_)) {
            self.from_peers.0 -= 1;
            self.from_peers.1 -= tx.len();
        }
        Some(tx)
    }

    /// Transactions and bytes held for `source`.
    pub fn share_of(&self, source: &TxSource) -> (usize, usize) {
        self.sources.get(source).map_or((0, 0), |s| (s.txs, s.bytes))
    }

    /// Whether `id` is in the pool.
    pub fn contains(&self, id: &TxId) -> bool {
        self.txs.contains_key(id)
    }

    /// A transaction by id.
    pub fn get(&self, id: &TxId) -> Option<&Bytes> {
        self.txs.get(id).map(|e| &e.tx)
    }

    /// Transactions held.
    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest transactions whose protobuf encoding in a block stays
    /// within `max_bytes` (each costs its length plus a tag and length
    /// prefix of at most 4 bytes).
    pub fn select(&self, max_bytes: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut used = 0;
        for id in self.order.values() {
            let tx = &self.txs[id].tx;
            let cost = tx.len() + 4;
            if used + cost > max_bytes {
                break;
            }
            used += cost;
            out.push(tx.clone());
        }
        out
    }

    /// Every transaction, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&TxId, &Bytes)> {
        self.order.values().map(|id| (id, &self.txs[id].tx))
    }

    /// The sequence number the next transaction will get: every
    /// transaction in the pool has a lower one.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Transactions from sequence number `seq` on, in pool order, with
    /// the peers known to have sent each (for gossip cursors).
    pub fn since(&self, seq: u64) -> Vec<GossipTx> {
        self.order
            .range(seq..)
            .map(|(&seq, id)| {
                let e = &self.txs[id];
                let mut senders = Vec::with_capacity(1 + e.also_from.len());
                if let TxSource::Peer(p) = e.source {
                    senders.push(p);
                }
                senders.extend_from_slice(&e.also_from);
                GossipTx { seq, tx: e.tx.clone(), senders }
            })
            .collect()
    }

    /// Records that `peer` also sent `id` (it is already in the pool), up
    /// to `max_senders_per_tx` senders per transaction.
    pub fn note_sender(&mut self, id: &TxId, peer: NodeId) {
        let cap = self.cfg.max_senders_per_tx;
        let Some(e) = self.txs.get_mut(id) else { return };
        let known = e.source == TxSource::Peer(peer) || e.also_from.contains(&peer);
        let count = usize::from(matches!(e.source, TxSource::Peer(_))) + e.also_from.len();
        if !known && count < cap {
            e.also_from.push(peer);
        }
    }

    /// Follows the main chain: transactions of connected blocks leave the
    /// pool (and are remembered as mined); transactions of disconnected
    /// blocks that the new chain does not hold come back (oldest block
    /// first), as far as the limits allow.
    pub fn apply_tip_change(&mut self, change: &TipChange) {
        let mut now_mined = HashSet::new();
        for b in &change.connected {
            for tx in &b.txs {
                let id = Hash::sha256(tx);
                self.remove(&id);
                self.recent_mined.insert(id);
                now_mined.insert(id);
            }
        }
        for b in change.disconnected.iter().rev() {
            for tx in &b.txs {
                let id = Hash::sha256(tx);
                if now_mined.contains(&id) {
                    continue;
                }
                self.recent_mined.remove(&id);
                let _ = self.add_from(tx.clone(), TxSource::Chain);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tests::{add, chain, child_with, params, T};

    fn tx(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    /// Found by the mempool fuzz target: a transaction whose source is not
    /// a peer (local, or put back by a reorg) remembers up to
    /// `max_senders_per_tx` peers, as documented, but the invariant check
    /// counted the source as a peer and called the pool broken.
    #[test]
    fn senders_are_capped_whatever_the_source() {
        let cap = MempoolConfig::default().max_senders_per_tx;
        let peers: Vec<NodeId> =
            (0..cap as u8 + 2).map(|i| NodeId::from_public_key(&[i])).collect();
        let mut m = Mempool::new(MempoolConfig::default());
        let local = m.add(tx("local")).unwrap();
        let gossiped = m.add_from(tx("gossiped"), TxSource::Peer(peers[0])).unwrap();
        for p in &peers {
            m.note_sender(&local, *p);
            m.note_sender(&gossiped, *p);
            m.check_invariants().unwrap();
        }
        let senders = |id: &TxId| {
            m.since(0).into_iter().find(|g| Hash::sha256(&g.tx) == *id).unwrap().senders
        };
        assert_eq!(senders(&local).len(), cap, "a local transaction: {cap} peers");
        assert_eq!(
            senders(&gossiped).len(),
            cap,
            "a gossiped one: its source and {} more",
            cap - 1
        );
        assert_eq!(senders(&gossiped)[0], peers[0]);
    }

    #[test]
    fn limits_and_duplicates() {
        let cfg = MempoolConfig {
            max_txs: 3,
            max_bytes: 10,
            max_tx_bytes: 6,
            ..MempoolConfig::default()
        };
        let mut m = Mempool::new(cfg);
        let id = m.add(tx("abc")).unwrap();
        assert_eq!(id, Hash::sha256(b"abc"));
        assert_eq!(m.add(tx("abc")), Err(MempoolError::Duplicate(id)));
        assert_eq!(m.add(tx("1234567")), Err(MempoolError::TooLarge { size: 7, max: 6 }));
        m.add(tx("defg")).unwrap();
        assert_eq!(m.add(tx("hijk")), Err(MempoolError::Full { txs: 2, bytes: 7 }), "bytes bound");
        m.add(tx("h")).unwrap();
        assert_eq!(m.add(tx("i")), Err(MempoolError::Full { txs: 3, bytes: 8 }), "count bound");
        assert_eq!((m.len(), m.bytes()), (3, 8));
        assert_eq!(m.remove(&id), Some(tx("abc")));
        assert_eq!((m.len(), m.bytes()), (2, 5));
    }

    #[test]
    fn select_is_oldest_first_within_the_byte_budget() {
        let mut m = Mempool::new(MempoolConfig::default());
        for s in ["aaaa", "bbbbbbbb", "cc", "dddd"] {
            m.add(tx(s)).unwrap();
        }
        assert_eq!(m.select(8), vec![tx("aaaa")]);
        assert_eq!(
            m.select(20),
            vec![tx("aaaa"), tx("bbbbbbbb")],
            "stops at the first that does not fit"
        );
        assert_eq!(m.select(1000).len(), 4);
    }

    #[test]
    fn mined_transactions_leave_and_come_back_on_a_reorg() {
        let p = params(0);
        let mut c = chain(&p);
        let mut m = Mempool::new(MempoolConfig::default());
        let (t1, t2, t3) = (tx("one"), tx("two"), tx("three"));
        for t in [&t1, &t2, &t3] {
            m.add(t.clone()).unwrap();
        }
        // a1 mines t1 and t2.
        let a1 = child_with(&c, &p.genesis_hash, T, m.select(1000)[..2].to_vec());
        let r = add(&mut c, a1.clone()).unwrap();
        m.apply_tip_change(&r.tip_change.unwrap());
        assert_eq!(m.iter().map(|(_, t)| t.clone()).collect::<Vec<_>>(), vec![t3.clone()]);
        assert_eq!(m.add(t1.clone()), Err(MempoolError::AlreadyMined(Hash::sha256(&t1))));
        // A heavier fork b1 (with t2), b2 (empty) replaces a1.
        let b1 = child_with(&c, &p.genesis_hash, T, vec![t2.clone()]);
        add(&mut c, b1.clone()).unwrap();
        let b2 = child_with(&c, &b1.hash(), T, vec![]);
        let tc = add(&mut c, b2).unwrap().tip_change.unwrap();
        assert_eq!(tc.disconnected, vec![a1]);
        m.apply_tip_change(&tc);
        // t1 is back; t2 is mined again on the new chain; t3 stayed.
        assert!(m.contains(&Hash::sha256(&t1)));
        assert!(!m.contains(&Hash::sha256(&t2)));
        assert!(m.contains(&Hash::sha256(&t3)));
        assert_eq!(m.add(t2.clone()), Err(MempoolError::AlreadyMined(Hash::sha256(&t2))));
    }

    #[test]
    fn one_flooding_peer_keeps_neither_local_nor_other_peers_out() {
        let cfg = MempoolConfig { max_txs: 1000, max_bytes: 100_000, ..MempoolConfig::default() };
        let mut m = Mempool::new(cfg);
        let key = |n: u8| plexus_p2p::NodeKey::from_private_key(&[n; 32]).unwrap().node_id();
        let (flooder, other) = (TxSource::Peer(key(1)), TxSource::Peer(key(2)));
        let mut flooded = 0;
        let (mut local_ok, mut other_ok) = (0, 0);
        for i in 0..20_000u32 {
            // The flooder sends 10 small transactions for each honest one.
            if m.add_from(Bytes::from(format!("junk {i}")), flooder).is_ok() {
                flooded += 1;
            }
            if i % 10 == 0 {
                local_ok += m.add(Bytes::from(format!("rpc {i}"))).is_ok() as u32;
                other_ok += m.add_from(Bytes::from(format!("peer {i}")), other).is_ok() as u32;
                // Blocks take some honest transactions out now and then.
                if i % 500 == 0 {
                    let ids: Vec<_> = m.iter().map(|(id, _)| *id).take(50).collect();
                    for id in ids {
                        m.remove(&id);
                    }
                }
            }
        }
        assert!(flooded > 0);
        assert_eq!(local_ok, 2000, "every RPC submission accepted");
        assert_eq!(other_ok, 2000, "every transaction of the other peer accepted");
        // The flooder holds at most its share.
        let (n, bytes) = m.share_of(&flooder);
        assert!(n <= 250 && bytes <= 25_000, "{n} txs, {bytes} bytes");
        assert!(m.len() <= 1000 && m.bytes() <= 100_000);
    }

    #[test]
    fn a_full_pool_evicts_the_heaviest_peer_for_a_local_transaction() {
        let cfg = MempoolConfig {
            max_txs: 10,
            max_peer_share_percent: 50,
            reserved_local_percent: 0,
            ..MempoolConfig::default()
        };
        let mut m = Mempool::new(cfg);
        let key = |n: u8| plexus_p2p::NodeKey::from_private_key(&[n; 32]).unwrap().node_id();
        let (a, b) = (TxSource::Peer(key(1)), TxSource::Peer(key(2)));
        for i in 0..5 {
            m.add_from(Bytes::from(format!("a{i}")), a).unwrap();
        }
        for i in 0..5 {
            m.add_from(Bytes::from(format!("bb{i}")), b).unwrap();
        }
        // Full. b holds more bytes: a local transaction evicts b's oldest.
        m.add(tx("mine")).unwrap();
        assert!(!m.contains(&Hash::sha256(b"bb0")));
        assert_eq!(m.share_of(&b).0, 4);
        // a, holding its share (5 of 10), makes room only from its own.
        m.add_from(tx("a5"), a).unwrap();
        assert!(!m.contains(&Hash::sha256(b"a0")));
        assert_eq!(m.share_of(&a).0, 5);
    }

    #[test]
    fn bounded_set_forgets_the_oldest() {
        let mut s = BoundedSet::new(2);
        let h = |i: u8| Hash([i; 32]);
        assert!(s.insert(h(1)) && s.insert(h(2)) && !s.insert(h(2)));
        s.insert(h(3));
        assert!(!s.contains(&h(1)) && s.contains(&h(2)) && s.contains(&h(3)));
        s.remove(&h(2));
        assert_eq!(s.len(), 1);
    }
}
