//! The transaction pool: opaque transactions by id, bounded by count and
//! bytes, first in first out.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use bytes::Bytes;

use crate::chain::{Hash, TipChange, TxId};

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
    /// Per-peer memory of transactions it has sent or been sent, so
    /// nothing goes back and forth twice. Default 10,000 ids per peer.
    pub max_seen_per_peer: usize,
    /// Most transactions in one gossip message; more is a protocol error.
    /// Default 256.
    pub max_txs_per_msg: usize,
    /// Largest gossip message, bytes (the channel's receive limit); at
    /// least `max_tx_bytes + 16`. Default 1 MiB.
    pub max_msg_bytes: usize,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        MempoolConfig {
            max_txs: 10_000,
            max_bytes: 64 << 20,
            max_tx_bytes: 64 * 1024,
            max_recent_mined: 100_000,
            max_seen_per_peer: 10_000,
            max_txs_per_msg: 256,
            max_msg_bytes: 1 << 20,
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
    /// The pool is at `max_txs` or `max_bytes`.
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
    txs: HashMap<TxId, (u64, Bytes)>,
    order: BTreeMap<u64, TxId>,
    next_seq: u64,
    bytes: usize,
    recent_mined: BoundedSet,
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
        }
    }

    /// The limits.
    pub fn config(&self) -> &MempoolConfig {
        &self.cfg
    }

    /// Adds `tx`. Errors: [`MempoolError`] (too large, duplicate, recently
    /// mined, full).
    pub fn add(&mut self, tx: Bytes) -> Result<TxId, MempoolError> {
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
        if self.txs.len() >= self.cfg.max_txs || self.bytes + tx.len() > self.cfg.max_bytes {
            return Err(MempoolError::Full { txs: self.txs.len(), bytes: self.bytes });
        }
        self.insert(id, tx);
        Ok(id)
    }

    fn insert(&mut self, id: TxId, tx: Bytes) {
        self.bytes += tx.len();
        self.order.insert(self.next_seq, id);
        self.txs.insert(id, (self.next_seq, tx));
        self.next_seq += 1;
    }

    /// Removes `id`, returning the transaction.
    pub fn remove(&mut self, id: &TxId) -> Option<Bytes> {
        let (seq, tx) = self.txs.remove(id)?;
        self.order.remove(&seq);
        self.bytes -= tx.len();
        Some(tx)
    }

    /// Whether `id` is in the pool.
    pub fn contains(&self, id: &TxId) -> bool {
        self.txs.contains_key(id)
    }

    /// A transaction by id.
    pub fn get(&self, id: &TxId) -> Option<&Bytes> {
        self.txs.get(id).map(|(_, t)| t)
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
            let tx = &self.txs[id].1;
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
        self.order.values().map(|id| (id, &self.txs[id].1))
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
                let _ = self.add(tx.clone());
            }
        }
    }
}
