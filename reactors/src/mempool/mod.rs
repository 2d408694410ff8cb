//! The mempool ([`Mempool`]) and its gossip reactor ([`MempoolReactor`],
//! channel 0x30): every transaction goes once to each peer that has not
//! sent it, as CometBFT's mempool reactor does: a cursor per peer into the
//! pool's order and a capped sender list per transaction, so gossip state
//! is bounded by the pool, not by peers times transactions.

mod pool;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use plexus_p2p::{
    ChannelDescriptor, Envelope, Misbehavior, NodeId, Peer, Reactor, StopReason, Switch,
};
use plexus_proto::mempool::{self as pb, message::Sum};
use prost::Message;
use tokio::sync::Notify;

pub use pool::{BoundedSet, GossipTx, Mempool, MempoolConfig, MempoolError, TxSource};

use crate::chain::TxId;
use crate::service::ChainService;

/// The mempool channel.
pub const MEMPOOL_CHANNEL: u8 = 0x30;

impl MempoolConfig {
    /// The mempool channel as the reactor declares it: priority 3, 64
    /// messages and `send_queue_bytes` queued, messages up to
    /// `max_msg_bytes + 16` (the reactor's own `Txs` stay within
    /// `max_msg_bytes`; 16 bytes of slack for another encoder's framing),
    /// the default 8 MiB receive window (docs/protocol.md §4.2).
    pub fn channel(&self) -> ChannelDescriptor {
        ChannelDescriptor::new(MEMPOOL_CHANNEL)
            .priority(3)
            .send_queue_capacity(64)
            .send_queue_bytes(self.send_queue_bytes)
            .recv_message_capacity(self.max_msg_bytes + 16)
    }
}

/// The mempool gossip reactor. Register it with the switch and call
/// [`MempoolReactor::start`] with the built switch; submit local
/// transactions with [`MempoolReactor::submit`].
///
/// Gossip follows CometBFT's `broadcastTxRoutine`: each peer has a cursor
/// into the pool's order (the next sequence number to send it), so the
/// per-peer state is one number whatever the pool holds; a transaction is
/// not sent to the peers it came from (the pool remembers up to
/// `max_senders_per_tx` of them). One task runs gossip rounds, at most
/// every `gossip_interval`: a round sends each peer what is new since its
/// cursor, in messages of at most `max_txs_per_msg` transactions and
/// `max_msg_bytes`, as far as its send queue has room; a peer with no room
/// keeps its cursor and gets the rest in a later round.
pub struct MempoolReactor {
    /// Owns the pool (the miner and block import use it too).
    chain: Arc<ChainService>,
    /// Per peer: the sequence number of the next transaction to send it.
    cursors: Mutex<HashMap<NodeId, u64>>,
    /// Wakes the gossip task.
    wake: Arc<Notify>,
}

impl std::fmt::Debug for MempoolReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MempoolReactor").field("peers", &self.cursors.lock().len()).finish()
    }
}

impl MempoolReactor {
    /// A reactor gossiping the pool of `chain` (its settings are the
    /// pool's [`MempoolConfig`]).
    pub fn new(chain: Arc<ChainService>) -> MempoolReactor {
        MempoolReactor { chain, cursors: Mutex::new(HashMap::new()), wake: Arc::new(Notify::new()) }
    }

    /// Starts the gossip task on `switch`, which gossips what
    /// [`MempoolReactor::submit`] and peers add. It holds neither the
    /// reactor nor the switch while it waits, and ends once either is gone
    /// or the switch stops. Must be called inside a tokio runtime.
    pub fn start(self: &Arc<Self>, switch: &Switch) {
        let (me, sw, wake) = (Arc::downgrade(self), switch.downgrade(), self.wake.clone());
        let interval = self.chain.with_mempool(|p| p.config().gossip_interval);
        tokio::spawn(async move {
            // The pool's next sequence number at the last round: a pool
            // that grew without a wake-up (transactions put back by a
            // reorg) is gossiped at the next look.
            let mut seen_end = 0;
            loop {
                // Woken, or a look every second whether we are still wanted.
                let woken = tokio::time::timeout(LIVENESS_CHECK, wake.notified()).await.is_ok();
                let (Some(me), Some(sw)) = (me.upgrade(), sw.upgrade()) else { return };
                if sw.is_stopped() {
                    return;
                }
                let end = me.chain.with_mempool(|p| p.next_seq());
                if !woken && end == seen_end {
                    continue;
                }
                seen_end = end;
                if me.gossip_round(&sw) {
                    // Someone had no room: try again next round.
                    wake.notify_one();
                }
                drop((me, sw));
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Peers that gossip state is kept for (those declaring the mempool
    /// channel).
    pub fn gossip_peers(&self) -> usize {
        self.cursors.lock().len()
    }

    /// Adds a local transaction and gossips it. Errors: [`MempoolError`].
    pub fn submit(&self, tx: Bytes) -> Result<TxId, MempoolError> {
        let id = self.chain.with_mempool(|p| p.add(tx))?;
        self.chain.note_txs_added(1);
        self.wake.notify_one();
        Ok(id)
    }

    /// One gossip round (see the type's docs). Returns whether some peer
    /// was left behind for lack of room.
    fn gossip_round(&self, sw: &Switch) -> bool {
        let mut cursors = self.cursors.lock();
        // Only peers with room now take part: one whose queue is full costs
        // neither a copy of the pool nor an encoding this round.
        let (mut peers, mut left_out) = (Vec::new(), false);
        for p in sw.peers() {
            if !cursors.contains_key(&p.id()) {
                continue;
            }
            if p.send_room(MEMPOOL_CHANNEL) > 0 {
                peers.push(p);
            } else {
                left_out = true;
            }
        }
        let Some(oldest) = peers.iter().filter_map(|p| cursors.get(&p.id()).copied()).min() else {
            return left_out;
        };
        let (tail, end, max_txs, max_bytes) = {
            self.chain.with_mempool(|pool| {
                let c = pool.config();
                (pool.since(oldest), pool.next_seq(), c.max_txs_per_msg.max(1), c.max_msg_bytes)
            })
        };
        // Peers at the same cursor get the same messages: encode each once.
        let mut encoded: HashMap<(u64, u64), Bytes> = HashMap::new();
        let mut behind = false;
        for peer in peers {
            let Some(cursor) = cursors.get_mut(&peer.id()) else { continue };
            let mut i = tail.partition_point(|t| t.seq < *cursor);
            if i == tail.len() {
                // Nothing new for it.
                *cursor = end;
            }
            while i < tail.len() {
                // The next message: consecutive transactions not from this
                // peer, within the message limits.
                let (first, mut bytes, mut txs, mut clean) = (i, 0, Vec::new(), true);
                while i < tail.len() && txs.len() < max_txs {
                    let t = &tail[i];
                    // Each transaction costs its length plus a tag and a
                    // length prefix of at most 4 bytes.
                    let cost = t.tx.len() + 4;
                    if !txs.is_empty() && bytes + cost > max_bytes {
                        break;
                    }
                    if t.senders.contains(&peer.id()) {
                        clean = false;
                    } else {
                        txs.push(t.tx.clone());
                        bytes += cost;
                    }
                    i += 1;
                }
                let next = tail.get(i).map_or(end, |t| t.seq);
                if !txs.is_empty() {
                    let encode = || {
                        let msg = pb::Message { sum: Some(Sum::Txs(pb::Txs { txs })) };
                        Bytes::from(msg.encode_to_vec())
                    };
                    let msg = if clean {
                        encoded.entry((tail[first].seq, next)).or_insert_with(encode).clone()
                    } else {
                        encode()
                    };
                    if !peer.try_send(MEMPOOL_CHANNEL, msg) {
                        behind = true;
                        break;
                    }
                }
                *cursor = next;
            }
        }
        behind || left_out
    }
}

/// How often an idle gossip task checks that its reactor and switch still
/// exist.
const LIVENESS_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

impl Reactor for MempoolReactor {
    type Message = pb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![self.chain.with_mempool(|pool| pool.config().channel())]
    }

    async fn add_peer(&self, peer: &Peer) {
        if !peer.node_info().channels.contains(&MEMPOOL_CHANNEL) {
            // It takes no transactions: no cursor (it would never have
            // room and keep the gossip task running rounds for nothing).
            return;
        }
        // A new peer gets the whole pool (CometBFT's broadcastTxRoutine
        // starts from the front of the list).
        self.cursors.lock().insert(peer.id(), 0);
        self.wake.notify_one();
    }

    async fn remove_peer(&self, peer: &Peer, _reason: &StopReason) {
        self.cursors.lock().remove(&peer.id());
    }

    async fn receive(&self, env: Envelope<pb::Message>) {
        let peer = &env.peer;
        let Some(Sum::Txs(list)) = env.message.sum else {
            let why = "empty mempool message";
            env.switch.report(peer, Misbehavior::MalformedMessage, why).await;
            return;
        };
        let max = self.chain.with_mempool(|p| p.config().max_txs_per_msg);
        if list.txs.len() > max {
            let why = format!("{} transactions in one message, limit {max}", list.txs.len());
            env.switch.report(peer, Misbehavior::MalformedMessage, why).await;
            return;
        }
        let mut fresh = 0u64;
        let mut bad = None;
        self.chain.with_mempool(|pool| {
            for tx in list.txs {
                match pool.add_from(tx, TxSource::Peer(peer.id())) {
                    Ok(_) => fresh += 1,
                    Err(MempoolError::Duplicate(id)) => pool.note_sender(&id, peer.id()),
                    Err(e @ MempoolError::TooLarge { .. }) => bad = Some(e),
                    Err(_) => {}
                }
            }
        });
        if fresh > 0 {
            // Novel transactions protect this peer from inbound eviction.
            env.switch.note_novel_tx(&peer.id());
            self.chain.note_txs_added(fresh);
            self.wake.notify_one();
        }
        if let Some(e) = bad {
            env.switch.report(peer, Misbehavior::InvalidTransaction, e.to_string()).await;
        }
    }
}
