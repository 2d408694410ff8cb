//! The mempool ([`Mempool`]) and its gossip reactor ([`MempoolReactor`],
//! channel 0x30): every transaction goes to each peer that has not sent it
//! or been sent it, as CometBFT's mempool reactor does, with a bounded
//! per-peer memory instead of its per-transaction sender list.

mod pool;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::Mutex;
use plexus_p2p::{
    ChannelDescriptor, Envelope, Misbehavior, NodeId, Peer, Reactor, StopReason, Switch,
};
use plexus_proto::mempool::{self as pb, message::Sum};
use prost::Message;
use tokio::sync::watch;

pub use pool::{BoundedSet, Mempool, MempoolConfig, MempoolError, TxSource};

use crate::chain::{Hash, TxId};

/// The mempool channel.
pub const MEMPOOL_CHANNEL: u8 = 0x30;

/// The mempool gossip reactor. Register it with the switch and call
/// [`MempoolReactor::start`] with the built switch; submit local
/// transactions with [`MempoolReactor::submit`].
pub struct MempoolReactor {
    pool: Arc<Mutex<Mempool>>,
    seen: Mutex<HashMap<NodeId, BoundedSet>>,
    switch: OnceLock<Switch>,
    /// Counts transactions added; the miner watches it.
    added: watch::Sender<u64>,
}

impl std::fmt::Debug for MempoolReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MempoolReactor").field("pool", &*self.pool.lock()).finish()
    }
}

impl MempoolReactor {
    /// A reactor around an empty pool.
    pub fn new(cfg: MempoolConfig) -> MempoolReactor {
        MempoolReactor {
            pool: Arc::new(Mutex::new(Mempool::new(cfg))),
            seen: Mutex::new(HashMap::new()),
            switch: OnceLock::new(),
            added: watch::channel(0).0,
        }
    }

    /// The pool (shared with the consensus reactor and the miner).
    pub fn pool(&self) -> &Arc<Mutex<Mempool>> {
        &self.pool
    }

    /// Changes whenever a transaction enters the pool.
    pub fn watch_added(&self) -> watch::Receiver<u64> {
        self.added.subscribe()
    }

    /// Lets [`MempoolReactor::submit`] gossip through `switch`.
    pub fn start(&self, switch: &Switch) {
        let _ = self.switch.set(switch.clone());
    }

    /// Adds a local transaction and gossips it. Errors: [`MempoolError`].
    pub fn submit(&self, tx: Bytes) -> Result<TxId, MempoolError> {
        let id = self.pool.lock().add(tx.clone())?;
        self.added.send_modify(|n| *n += 1);
        if let Some(sw) = self.switch.get() {
            self.gossip(sw, &[(id, tx)], None);
        }
        Ok(id)
    }

    /// Sends `txs` to every peer but `except` that has not seen them,
    /// marking them seen for that peer. A peer whose queue is full misses
    /// them (they stay unmarked, so it gets them with the next batch).
    fn gossip(&self, sw: &Switch, txs: &[(TxId, Bytes)], except: Option<NodeId>) {
        for peer in sw.peers() {
            if Some(peer.id()) == except {
                continue;
            }
            self.send_unseen(&peer, txs.iter());
        }
    }

    fn send_unseen<'a>(&self, peer: &Peer, txs: impl Iterator<Item = &'a (TxId, Bytes)>) {
        let (max_txs, max_bytes) = {
            let pool = self.pool.lock();
            (pool.config().max_txs_per_msg.max(1), pool.config().max_msg_bytes)
        };
        let mut seen = self.seen.lock();
        let Some(set) = seen.get_mut(&peer.id()) else { return };
        let mut batch: Vec<&(TxId, Bytes)> = Vec::new();
        let mut bytes = 0;
        let send = |batch: &mut Vec<&(TxId, Bytes)>, set: &mut BoundedSet| {
            let txs = batch.iter().map(|(_, t)| t.clone()).collect();
            let msg = pb::Message { sum: Some(Sum::Txs(pb::Txs { txs })) };
            let ok = peer.try_send(MEMPOOL_CHANNEL, msg.encode_to_vec());
            if ok {
                batch.iter().for_each(|(id, _)| {
                    set.insert(*id);
                });
            }
            batch.clear();
            ok
        };
        let fresh: Vec<_> = txs.filter(|(id, _)| !set.contains(id)).collect();
        for item in fresh {
            // Each transaction costs its length plus a tag and a length
            // prefix of at most 4 bytes.
            let cost = item.1.len() + 4;
            if !batch.is_empty() && (batch.len() == max_txs || bytes + cost > max_bytes) {
                if !send(&mut batch, set) {
                    return;
                }
                bytes = 0;
            }
            batch.push(item);
            bytes += cost;
        }
        if !batch.is_empty() {
            send(&mut batch, set);
        }
    }
}

impl Reactor for MempoolReactor {
    type Message = pb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        let (max, queue) = {
            let pool = self.pool.lock();
            (pool.config().max_msg_bytes, pool.config().send_queue_bytes)
        };
        vec![ChannelDescriptor::new(MEMPOOL_CHANNEL)
            .priority(3)
            .send_queue_capacity(64)
            .send_queue_bytes(queue)
            .recv_message_capacity(max + 16)]
    }

    async fn add_peer(&self, peer: &Peer) {
        let cap = self.pool.lock().config().max_seen_per_peer;
        self.seen.lock().insert(peer.id(), BoundedSet::new(cap));
        // A new peer gets the whole pool (CometBFT's broadcastTxRoutine
        // starts from the front of the list).
        let all: Vec<(TxId, Bytes)> =
            self.pool.lock().iter().map(|(i, t)| (*i, t.clone())).collect();
        self.send_unseen(peer, all.iter());
    }

    async fn remove_peer(&self, peer: &Peer, _reason: &StopReason) {
        self.seen.lock().remove(&peer.id());
    }

    async fn receive(&self, env: Envelope<pb::Message>) {
        let peer = &env.peer;
        let Some(Sum::Txs(list)) = env.message.sum else {
            let why = "empty mempool message";
            env.switch.report(peer, Misbehavior::MalformedMessage, why).await;
            return;
        };
        let max = self.pool.lock().config().max_txs_per_msg;
        if list.txs.len() > max {
            let why = format!("{} transactions in one message, limit {max}", list.txs.len());
            env.switch.report(peer, Misbehavior::MalformedMessage, why).await;
            return;
        }
        let mut fresh = Vec::new();
        let mut bad = None;
        {
            let mut pool = self.pool.lock();
            let mut seen = self.seen.lock();
            for tx in list.txs {
                let id = Hash::sha256(&tx);
                if let Some(s) = seen.get_mut(&peer.id()) {
                    s.insert(id);
                }
                match pool.add_from(tx.clone(), TxSource::Peer(peer.id())) {
                    Ok(id) => fresh.push((id, tx)),
                    Err(e @ MempoolError::TooLarge { .. }) => bad = Some(e),
                    Err(_) => {}
                }
            }
        }
        if !fresh.is_empty() {
            // Novel transactions protect this peer from inbound eviction.
            env.switch.note_novel_tx(&peer.id());
            self.added.send_modify(|n| *n += fresh.len() as u64);
            self.gossip(&env.switch, &fresh, Some(peer.id()));
        }
        if let Some(e) = bad {
            env.switch.report(peer, Misbehavior::InvalidTransaction, e.to_string()).await;
        }
    }
}
