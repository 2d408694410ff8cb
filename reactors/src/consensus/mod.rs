//! Block relay (channel 0x20): the chain status exchange, new-block push,
//! and locator requests for the few missing parents of a pushed block;
//! heaviest-chain fork choice happens in the [`Blockchain`](crate::chain::Blockchain) behind the
//! [`ChainService`].
//!
//! - On connect and every `status_interval` each side sends `Status`
//!   (height, weight, tip). It is the node's only status exchange: it
//!   fills the service's peer-chain-status table, which block sync (0x40)
//!   reads to decide what to catch up with. Every gap and fork a peer's
//!   status reveals is block sync's (headers first); this reactor never
//!   catches up from a status.
//! - A new main-chain tip is pushed whole (`NewBlock`) to every peer that
//!   has not sent or been sent it: blocks relayed from peers at once,
//!   blocks mined or submitted here from the service's local-block feed.
//! - A pushed block whose parent is missing makes us ask its sender for
//!   its main-chain blocks after our locator (`GetBlocks`, answered by
//!   `Blocks`), at most `max_parent_requests` batches while each one makes
//!   progress and no sync round runs; a longer gap shows in the sender's
//!   status (raised by the pushed block) and block sync takes it.
//! - An invalid block, an unsolicited or oversized answer, or a malformed
//!   message is misbehaviour reported to the switch (score, then ban); the
//!   node keeps going.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use plexus_p2p::{
    ChannelDescriptor, Envelope, Misbehavior, NodeId, Peer, Reactor, StopReason, Switch,
};
use plexus_proto::chain::{self as pb, message::Sum};
use prost::Message;

use crate::chain::{Block, BlockError, Hash, ProcessStatus};
use crate::mempool::BoundedSet;
use crate::service::ChainService;
pub use crate::service::{system_clock, BlockSummary, ChainEvent, Clock, PeerChain};

/// The consensus channel.
pub const CONSENSUS_CHANNEL: u8 = 0x20;

/// Most hashes accepted in a block locator (Bitcoin's `MAX_LOCATOR_SZ`).
pub const MAX_LOCATOR: usize = 101;

/// Consensus reactor settings.
#[derive(Clone, Debug)]
pub struct ConsensusConfig {
    /// How often `Status` goes to every peer. Default 10 s.
    pub status_interval: Duration,
    /// Most blocks asked for, and answered, per `GetBlocks`. Default 64.
    pub max_blocks_per_request: u32,
    /// `GetBlocks` batches in a row chasing the missing parents of one
    /// pushed block (each must bring new blocks); a longer gap is left to
    /// block sync, headers first. Default 4 (256 blocks).
    pub max_parent_requests: u32,
    /// Largest consensus message, bytes (the channel's receive limit and
    /// the byte budget of a `Blocks` answer); must exceed the network's
    /// `max_block_bytes`. Default 8 MiB.
    pub max_msg_bytes: usize,
    /// An unanswered `GetBlocks` is given up after this. Default 30 s.
    pub request_timeout: Duration,
    /// Per-peer memory of blocks it has sent or been sent. Default 1,024.
    pub max_known_per_peer: usize,
    /// Bytes that may wait to be sent to one peer on this channel (the
    /// MConnection's `send_queue_bytes`): answers to its requests are
    /// built only as large as what is left, so a peer that asks and never
    /// reads holds at most this. Default 1 MiB.
    pub send_queue_bytes: usize,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        ConsensusConfig {
            status_interval: Duration::from_secs(10),
            max_blocks_per_request: 64,
            max_parent_requests: 4,
            max_msg_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
            max_known_per_peer: 1024,
            send_queue_bytes: 1 << 20,
        }
    }
}

/// How many items to answer a request asking for `asked` with our cap
/// `cap`: `min(asked, cap)`, and `cap` when `asked` is 0, the proto3
/// default a client that sets no limit sends (`GetBlocks.max_blocks`,
/// `HeadersRequest.max`; docs/protocol.md §8.6, §10).
pub fn answer_limit(asked: u32, cap: u32) -> usize {
    (if asked == 0 { cap } else { asked.min(cap) }) as usize
}

impl ConsensusConfig {
    /// The consensus channel as this reactor declares it: priority 5, 64
    /// messages and `send_queue_bytes` queued, messages up to
    /// `max_msg_bytes`, and the receive window (initial credit) twice the
    /// smallest one that holds such a message (17,825,792 credit bytes for
    /// 8 MiB; docs/protocol.md §4.2 lists the values).
    pub fn channel(&self) -> ChannelDescriptor {
        ChannelDescriptor::new(CONSENSUS_CHANNEL)
            .priority(5)
            .send_queue_capacity(64)
            .send_queue_bytes(self.send_queue_bytes)
            .recv_message_capacity(self.max_msg_bytes)
    }
}

struct PeerState {
    /// The `GetBlocks` in flight: when it was sent and its `max_blocks`.
    request: Option<(tokio::time::Instant, u32)>,
    /// The last request timed out: one late answer to it is dropped
    /// without blame (slowness is not misbehaviour).
    expired: Option<u32>,
    known: BoundedSet,
    /// `GetBlocks` sent in the current parent chase.
    chase: u32,
}

/// The consensus (block relay) reactor. Register it with the switch and
/// call [`ConsensusReactor::start`] with the built switch.
pub struct ConsensusReactor {
    cfg: ConsensusConfig,
    chain: Arc<ChainService>,
    peers: Mutex<HashMap<NodeId, PeerState>>,
    switch: OnceLock<Switch>,
}

impl std::fmt::Debug for ConsensusReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsensusReactor").field("peers", &self.peers.lock().len()).finish()
    }
}

impl ConsensusReactor {
    /// Block relay for `chain`.
    pub fn new(cfg: ConsensusConfig, chain: Arc<ChainService>) -> Self {
        ConsensusReactor { cfg, chain, peers: Mutex::new(HashMap::new()), switch: OnceLock::new() }
    }

    /// The chain service it relays for.
    pub fn service(&self) -> &Arc<ChainService> {
        &self.chain
    }

    /// Starts the status loop for `switch` (it also retires unanswered
    /// requests) and the push of blocks mined or submitted here; both end
    /// when the switch stops.
    pub fn start(self: &Arc<Self>, switch: &Switch) {
        let _ = self.switch.set(switch.clone());
        let (me, sw) = (self.clone(), switch.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.cfg.status_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => me.status_round(&sw).await,
                    _ = sw.stopped() => break,
                }
            }
        });
        let (me, sw) = (self.clone(), switch.clone());
        let mut local = self.chain.local_blocks();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = local.recv() => match r {
                        Ok(block) => me.announce(&block, None),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => break,
                    },
                    _ = sw.stopped() => break,
                }
            }
        });
    }

    fn status_msg(&self) -> pb::Message {
        let c = self.chain.status();
        let status = pb::Status {
            height: c.height,
            weight: c.weight.to_be_bytes::<32>().to_vec().into(),
            tip_hash: c.tip.0.to_vec().into(),
        };
        pb::Message { sum: Some(Sum::Status(status)) }
    }

    async fn status_round(&self, sw: &Switch) {
        let bytes = self.status_msg().encode_to_vec();
        sw.broadcast(CONSENSUS_CHANNEL, bytes).await;
        let now = tokio::time::Instant::now();
        let timeout = self.cfg.request_timeout;
        for (id, st) in self.peers.lock().iter_mut() {
            if st.request.is_some_and(|(t, _)| now.duration_since(t) >= timeout) {
                tracing::debug!(peer = %id, "GetBlocks timed out");
                st.expired = st.request.take().map(|(_, max)| max);
            }
        }
    }

    /// Pushes `block` (the new tip) to every peer but `except` that does
    /// not know it. A full send queue skips the peer (it sees the tip in
    /// our next `Status`).
    fn announce(&self, block: &Block, except: Option<NodeId>) {
        let Some(sw) = self.switch.get() else { return };
        let hash = block.hash();
        let msg = pb::Message {
            sum: Some(Sum::NewBlock(pb::NewBlock { block: Some(block.to_proto()) })),
        };
        let bytes = bytes::Bytes::from(msg.encode_to_vec());
        for peer in sw.peers() {
            if Some(peer.id()) == except {
                continue;
            }
            let fresh =
                self.peers.lock().get_mut(&peer.id()).is_some_and(|st| st.known.insert(hash));
            if fresh && !peer.try_send(CONSENSUS_CHANNEL, bytes.clone()) {
                tracing::debug!(peer = %peer.id(), "send queue full; peer misses NewBlock");
            }
        }
    }

    /// Asks `peer` for its main-chain blocks after what we know of its
    /// chain ([`ChainService::locator_for`]), unless a request to it is in
    /// flight, the chase is at `max_parent_requests`, or block sync runs.
    async fn request_blocks(&self, peer: &Peer) {
        if self.chain.is_syncing() {
            return;
        }
        let max = self.cfg.max_blocks_per_request;
        {
            let mut peers = self.peers.lock();
            let Some(st) = peers.get_mut(&peer.id()) else { return };
            if st.request.is_some() || st.chase >= self.cfg.max_parent_requests {
                return;
            }
            st.chase += 1;
            st.request = Some((tokio::time::Instant::now(), max));
            st.expired = None;
        }
        let locator = self.chain.locator_for(&peer.id());
        let locator = locator.iter().map(|h| h.0.to_vec().into()).collect();
        let msg =
            pb::Message { sum: Some(Sum::GetBlocks(pb::GetBlocks { locator, max_blocks: max })) };
        if peer.send_msg(CONSENSUS_CHANNEL, &msg).await.is_err() {
            if let Some(st) = self.peers.lock().get_mut(&peer.id()) {
                st.request = None;
            }
        }
    }

    /// Imports blocks that `peer` sent and acts on the outcome: reports an
    /// invalid block or orphan, notes what the peer has, announces a new
    /// tip. Returns how many blocks were new.
    async fn import_from(&self, sw: &Switch, peer: &Peer, blocks: Vec<Block>) -> Imported {
        {
            let mut peers = self.peers.lock();
            if let Some(st) = peers.get_mut(&peer.id()) {
                for b in &blocks {
                    st.known.insert(b.hash());
                }
            }
        }
        let hashes: Vec<_> = blocks.iter().map(Block::hash).collect();
        let mut out = Imported::default();
        let results = self.chain.import_blocks(blocks, Some(peer.id())).await;
        for (r, hash) in results.into_iter().zip(hashes) {
            match r {
                Err(e) if e.is_peer_fault() => {
                    let kind = e.misbehavior().unwrap_or(Misbehavior::BadBlock);
                    sw.report(peer, kind, format!("invalid block: {e}")).await;
                    return out;
                }
                Err(e) => {
                    // Known already (note what the peer has), or from the
                    // future (not misbehaviour, docs/protocol.md §8.4).
                    self.chain.note_peer_block(peer.id(), &hash);
                    tracing::debug!(peer = %peer.id(), error = %e, "block not accepted")
                }
                Ok(p) => {
                    self.chain.note_peer_block(peer.id(), &hash);
                    if !p.accepted.is_empty() {
                        // A novel block protects this peer from eviction.
                        sw.note_novel_block(&peer.id());
                    }
                    out.new += p.accepted.len() + (p.status == ProcessStatus::Orphan) as usize;
                    out.orphan |= p.status == ProcessStatus::Orphan;
                    for (src, h, e) in &p.rejected_orphans {
                        if let Some(bad) = src.and_then(|id| sw.peer(&id)) {
                            let kind = e.misbehavior().unwrap_or(Misbehavior::BadBlock);
                            sw.report(&bad, kind, format!("invalid block {h}: {e}")).await;
                        }
                    }
                    if let Some(b) = p.tip_change.as_ref().and_then(|tc| tc.connected.last()) {
                        self.announce(b, Some(peer.id()));
                    }
                }
            }
        }
        out
    }

    fn decode_blocks(list: Vec<pb::Block>) -> Result<Vec<Block>, BlockError> {
        list.into_iter().map(Block::from_proto).collect()
    }
}

/// What importing one peer's blocks did.
#[derive(Debug, Default)]
struct Imported {
    /// Blocks accepted or kept as orphans.
    new: usize,
    /// Whether one became an orphan (its parent is missing).
    orphan: bool,
}

impl Reactor for ConsensusReactor {
    type Message = pb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![self.cfg.channel()]
    }

    async fn add_peer(&self, peer: &Peer) {
        let st = PeerState {
            request: None,
            expired: None,
            known: BoundedSet::new(self.cfg.max_known_per_peer),
            chase: 0,
        };
        self.peers.lock().insert(peer.id(), st);
        let _ = peer.send_msg(CONSENSUS_CHANNEL, &self.status_msg()).await;
    }

    async fn remove_peer(&self, peer: &Peer, _reason: &StopReason) {
        self.peers.lock().remove(&peer.id());
        self.chain.forget_peer(&peer.id());
    }

    async fn receive(&self, env: Envelope<pb::Message>) {
        let (sw, peer) = (&env.switch, &env.peer);
        match env.message.sum {
            Some(Sum::Status(s)) => {
                let Some(status) = PeerChain::from_wire(s.height, &s.weight, &s.tip_hash) else {
                    sw.report(peer, Misbehavior::MalformedMessage, "malformed Status").await;
                    return;
                };
                if let Some(st) = self.peers.lock().get_mut(&peer.id()) {
                    st.known.insert(status.tip);
                }
                // Block sync reads it from the table and catches up.
                self.chain.set_peer_chain(peer.id(), status);
            }
            Some(Sum::NewBlock(nb)) => {
                let Some(block) = nb.block else {
                    sw.report(peer, Misbehavior::MalformedMessage, "NewBlock without a block")
                        .await;
                    return;
                };
                match Block::from_proto(block) {
                    Ok(b) => {
                        let orphan = self.import_from(sw, peer, vec![b]).await.orphan;
                        if orphan {
                            // A new chase for this block's parents.
                            if let Some(st) = self.peers.lock().get_mut(&peer.id()) {
                                if st.request.is_none() {
                                    st.chase = 0;
                                }
                            }
                            self.request_blocks(peer).await;
                        }
                    }
                    Err(e) => sw.report(peer, Misbehavior::MalformedMessage, e.to_string()).await,
                }
            }
            Some(Sum::GetBlocks(req)) => {
                if req.locator.len() > MAX_LOCATOR {
                    sw.report(
                        peer,
                        Misbehavior::MalformedMessage,
                        format!("locator of {} hashes", req.locator.len()),
                    )
                    .await;
                    return;
                }
                let Some(locator) =
                    req.locator.iter().map(|h| Hash::from_slice(h)).collect::<Option<Vec<_>>>()
                else {
                    sw.report(peer, Misbehavior::MalformedMessage, "locator hash not 32 bytes")
                        .await;
                    return;
                };
                // Build only what the peer's send budget takes now.
                if let Err(e) = peer.ready(CONSENSUS_CHANNEL).await {
                    return sw.report_unread(peer, e, "blocks").await;
                }
                let max = answer_limit(req.max_blocks, self.cfg.max_blocks_per_request);
                let room = peer.send_room(CONSENSUS_CHANNEL);
                // Half the room: twice this is reserved while it is built.
                let budget = self.cfg.max_msg_bytes.saturating_sub(1024).min((room / 2).max(1));
                // Held in the node-wide budget while the answer is built:
                // the blocks read and their encoding, both alive at once.
                let mut permit = match peer.reserve_wait(2 * budget).await {
                    Ok(p) => p,
                    Err(e) => return sw.report_unread(peer, e, "blocks").await,
                };
                let chain = self.chain.clone();
                let found = self
                    .chain
                    .blocking(move || {
                        chain.with_chain(|c| c.main_blocks_after(&locator, max, budget))
                    })
                    .await;
                let blocks = match found {
                    Ok(Ok(b)) => b,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "reading blocks for a peer failed");
                        Vec::new()
                    }
                    Err(_) => Vec::new(),
                };
                if let Some(st) = self.peers.lock().get_mut(&peer.id()) {
                    for b in &blocks {
                        st.known.insert(b.hash());
                    }
                }
                let protos = blocks.iter().map(Block::to_proto).collect();
                let msg = pb::Message { sum: Some(Sum::Blocks(pb::Blocks { blocks: protos })) }
                    .encode_to_vec();
                drop(blocks);
                // Counted in the budget from the reservation while it waits.
                if let Err(e) = peer.send_reserved(CONSENSUS_CHANNEL, msg, &mut permit).await {
                    sw.report_unread(peer, e, "blocks").await;
                }
            }
            Some(Sum::Blocks(list)) => {
                let (asked, late) = match self.peers.lock().get_mut(&peer.id()) {
                    Some(st) => (st.request.take(), st.expired.take()),
                    None => (None, None),
                };
                let Some((_, max)) = asked else {
                    if late.is_none() {
                        let why = "unsolicited Blocks";
                        sw.report(peer, Misbehavior::UnsolicitedMessage, why).await;
                    }
                    return;
                };
                if list.blocks.len() > max as usize {
                    let why = format!("{} blocks for a request of {max}", list.blocks.len());
                    sw.report(peer, Misbehavior::MalformedMessage, why).await;
                    return;
                }
                let blocks = match Self::decode_blocks(list.blocks) {
                    Ok(b) => b,
                    Err(e) => {
                        sw.report(peer, Misbehavior::MalformedMessage, e.to_string()).await;
                        return;
                    }
                };
                let full = blocks.len() == max as usize;
                let got = self.import_from(sw, peer, blocks).await;
                // A full answer that brought new blocks: its chain goes on,
                // ask for more (up to `max_parent_requests`); anything else
                // ends the chase. Nothing is blamed here: a claim heavier
                // than what it shows is block sync's to check, headers first.
                if got.new > 0 && (full || got.orphan) {
                    self.request_blocks(peer).await;
                }
            }
            None => sw.report(peer, Misbehavior::MalformedMessage, "empty consensus message").await,
        }
    }
}
