//! The consensus reactor (channel 0x20): chain status exchange, new-block
//! push, and locator-based requests for missing blocks; heaviest-chain
//! fork choice happens in the [`Blockchain`] it drives.
//!
//! - On connect and every `status_interval` each side sends `Status`
//!   (height, weight, tip), like a simple blockchain peer's "stats".
//! - A new main-chain tip is pushed whole (`NewBlock`) to every peer that
//!   has not sent or been sent it.
//! - A block whose parent is missing, or a peer whose status is heavier,
//!   makes us ask that peer for its main-chain blocks after our locator
//!   (`GetBlocks`, answered by `Blocks`), batch after batch while the peer
//!   stays ahead and each batch makes progress. Block sync (channel 0x40)
//!   takes over long catch-ups when it lands.
//! - An invalid block, an unsolicited or oversized answer, or a malformed
//!   message is misbehaviour reported to the switch (score, then ban); the
//!   node keeps going.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use plexus_p2p::{
    ChannelDescriptor, Envelope, Misbehavior, NodeId, Peer, Reactor, StopReason, Switch,
};
use plexus_proto::chain::{self as pb, message::Sum};
use prost::Message;
use ruint::aliases::U256;
use tokio::sync::{broadcast, watch};

use crate::chain::{
    Block, BlockError, BlockHash, Blockchain, CheckedBlock, Hash, ProcessStatus, Processed,
    TipChange,
};
use crate::mempool::{BoundedSet, Mempool};
use crate::mining::{Miner, MinerConfig, Submitted, WorkSource};

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
    /// Largest consensus message, bytes (the channel's receive limit and
    /// the byte budget of a `Blocks` answer); must exceed the network's
    /// `max_block_bytes`. Default 8 MiB.
    pub max_msg_bytes: usize,
    /// An unanswered `GetBlocks` is given up after this; another peer may
    /// then be asked. Default 30 s.
    pub request_timeout: Duration,
    /// Per-peer memory of blocks it has sent or been sent. Default 1,024.
    pub max_known_per_peer: usize,
    /// Bytes that may wait to be sent to one peer on this channel (the
    /// MConnection's `send_queue_bytes`): answers to its requests are
    /// built only as large as what is left, so a peer that asks and never
    /// reads holds at most this. Default 1 MiB.
    pub send_queue_bytes: usize,
    /// Main-chain changes buffered for each [`ConsensusReactor::subscribe`]
    /// receiver; one that falls further behind is told how many it
    /// missed (`RecvError::Lagged`). Default 1,024.
    pub event_buffer: usize,
    /// Most blocks of one import written in one SQLite transaction
    /// ([`Blockchain::batch`]): the chain lock is held for each such
    /// chunk (readers wait at most that long), and a crash loses at most
    /// one uncommitted chunk, never a block reported as stored. 1 commits
    /// every block alone. Default 256, block sync's `apply_batch` (on this
    /// VM the `Blockchain` alone imported small blocks at ~23,000 blocks/s
    /// with 1, ~68,000 with 64 and ~85,000-90,000 with 256; the lock is
    /// then held a few milliseconds per chunk of small blocks, and
    /// `commit_batch_bytes` bounds it for large ones).
    pub commit_batch: usize,
    /// Most block bytes in one such transaction, so large blocks do not
    /// hold the chain lock for long. Default 8 MiB.
    pub commit_batch_bytes: usize,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        ConsensusConfig {
            status_interval: Duration::from_secs(10),
            max_blocks_per_request: 64,
            max_msg_bytes: 8 << 20,
            request_timeout: Duration::from_secs(30),
            max_known_per_peer: 1024,
            send_queue_bytes: 1 << 20,
            event_buffer: 1024,
            commit_batch: 256,
            commit_batch_bytes: 8 << 20,
        }
    }
}

/// The wall clock as Unix milliseconds; injectable for tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// What a peer last told us of its main chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerChain {
    /// Tip height.
    pub height: u64,
    /// Cumulative work.
    pub weight: U256,
    /// Tip hash.
    pub tip: BlockHash,
}

impl PeerChain {
    /// From wire fields: `weight` big-endian, at most 32 bytes; `tip` 32
    /// bytes. `None` when either is malformed.
    pub fn from_wire(height: u64, weight: &[u8], tip: &[u8]) -> Option<PeerChain> {
        let tip = Hash::from_slice(tip)?;
        if weight.len() > 32 {
            return None;
        }
        let mut w = [0u8; 32];
        w[32 - weight.len()..].copy_from_slice(weight);
        Some(PeerChain { height, weight: U256::from_be_bytes(w), tip })
    }

    /// Our own main chain.
    pub fn of(chain: &Blockchain) -> PeerChain {
        PeerChain { height: chain.height(), weight: chain.weight(), tip: chain.tip() }
    }
}

/// A block as [`ChainEvent`]s report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSummary {
    /// Block hash.
    pub hash: BlockHash,
    /// Height.
    pub height: u64,
    /// Header time, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Transactions in it.
    pub n_txs: usize,
    /// Encoded size, bytes.
    pub size: usize,
}

impl BlockSummary {
    /// The summary of `b`.
    pub fn of(b: &Block) -> BlockSummary {
        BlockSummary {
            hash: b.hash(),
            height: b.header.height,
            timestamp_ms: b.header.timestamp_ms,
            n_txs: b.txs.len(),
            size: b.size(),
        }
    }
}

/// One change of the main chain (a new tip, or a reorg when
/// `disconnected` is not empty), as [`ConsensusReactor::subscribe`]
/// delivers it: one event per processed block that moved the tip, in
/// order; `connected` holds more than that block when it also connected
/// stored orphans or won a fork.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainEvent {
    /// The tip before.
    pub old_tip: BlockHash,
    /// The tip after.
    pub new_tip: BlockHash,
    /// The new tip's height.
    pub height: u64,
    /// The highest block the old and new main chains share.
    pub fork_height: u64,
    /// Blocks that left the main chain, old tip first.
    pub disconnected: Vec<BlockSummary>,
    /// Blocks that joined it, lowest first.
    pub connected: Vec<BlockSummary>,
    /// The peer that sent the processed block (orphans it connected may
    /// have come from others); `None` for a block mined here or submitted
    /// locally.
    pub source: Option<NodeId>,
}

struct PeerState {
    status: Option<PeerChain>,
    /// The `GetBlocks` in flight: when it was sent and its `max_blocks`.
    request: Option<(tokio::time::Instant, u32)>,
    /// The last request timed out: one late answer to it is dropped
    /// without blame (slowness is not misbehaviour).
    expired: Option<u32>,
    known: BoundedSet,
    /// The last block of its last `Blocks` answer that we hold: the next
    /// request's locator starts there when it is off our main chain, so a
    /// fork deeper than one answer is followed answer after answer.
    best_sent: Option<BlockHash>,
    /// `Blocks` answers in a row that held only blocks we already had
    /// (a late answer to an expired request overlaps the next one).
    stale_answers: u32,
}

/// The consensus reactor. Register it with the switch and call
/// [`ConsensusReactor::start`] with the built switch.
pub struct ConsensusReactor {
    cfg: ConsensusConfig,
    importer: Arc<Importer>,
    peers: Mutex<HashMap<NodeId, PeerState>>,
    switch: OnceLock<Switch>,
    runtime: OnceLock<tokio::runtime::Handle>,
    /// Block sync is running: no catch-up requests of our own.
    syncing: AtomicBool,
    /// Peers more than this many blocks ahead are left to block sync.
    short_sync_depth: AtomicU64,
}

impl std::fmt::Debug for ConsensusReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsensusReactor").field("chain", &*self.importer.chain.lock()).finish()
    }
}

impl ConsensusReactor {
    /// A reactor over `chain`, keeping `mempool` in step with the main
    /// chain, on the system clock.
    pub fn new(
        cfg: ConsensusConfig,
        chain: Arc<Mutex<Blockchain>>,
        mempool: Arc<Mutex<Mempool>>,
    ) -> Self {
        Self::with_clock(cfg, chain, mempool, system_clock())
    }

    /// As [`ConsensusReactor::new`] with another clock.
    pub fn with_clock(
        cfg: ConsensusConfig,
        chain: Arc<Mutex<Blockchain>>,
        mempool: Arc<Mutex<Mempool>>,
        clock: Clock,
    ) -> Self {
        let tip = watch::channel(chain.lock().tip()).0;
        let events = broadcast::channel(cfg.event_buffer.max(1)).0;
        let importer = Importer {
            chain,
            mempool,
            tip,
            events,
            reorgs: AtomicU64::new(0),
            reorged_blocks: AtomicU64::new(0),
            clock,
            commit_batch: cfg.commit_batch.max(1),
            commit_batch_bytes: cfg.commit_batch_bytes.max(1),
        };
        ConsensusReactor {
            cfg,
            importer: Arc::new(importer),
            peers: Mutex::new(HashMap::new()),
            switch: OnceLock::new(),
            runtime: OnceLock::new(),
            syncing: AtomicBool::new(false),
            short_sync_depth: AtomicU64::new(u64::MAX),
        }
    }

    /// The chain.
    pub fn chain(&self) -> &Arc<Mutex<Blockchain>> {
        &self.importer.chain
    }

    /// Changes to each new main-chain tip.
    pub fn watch_tip(&self) -> watch::Receiver<BlockHash> {
        self.importer.tip.subscribe()
    }

    /// Every later main-chain change, one [`ChainEvent`] per processed
    /// block that moved the tip (the RPC's subscriptions). Events are built only while
    /// a receiver exists; a receiver more than `event_buffer` events
    /// behind gets `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChainEvent>> {
        self.importer.events.subscribe()
    }

    /// Reorgs since start (tip changes that left blocks behind) and the
    /// blocks they took off the main chain.
    pub fn reorgs(&self) -> (u64, u64) {
        let i = &self.importer;
        (i.reorgs.load(Ordering::Relaxed), i.reorged_blocks.load(Ordering::Relaxed))
    }

    /// What `peer` last said of its chain.
    pub fn peer_chain(&self, peer: &NodeId) -> Option<PeerChain> {
        self.peers.lock().get(peer).and_then(|p| p.status.clone())
    }

    /// Starts the status loop for `switch` (it also retires unanswered
    /// requests); it ends when the switch stops.
    pub fn start(self: &Arc<Self>, switch: &Switch) {
        let _ = self.switch.set(switch.clone());
        let _ = self.runtime.set(tokio::runtime::Handle::current());
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
    }

    /// Starts a [`Miner`] on this chain and mempool; it restarts its work
    /// on every new tip and on every change of `txs_added` (the mempool
    /// reactor's [`watch_added`](crate::mempool::MempoolReactor::watch_added)).
    pub fn start_miner(
        self: &Arc<Self>,
        cfg: MinerConfig,
        mut txs_added: watch::Receiver<u64>,
    ) -> Miner {
        let _ = self.runtime.set(tokio::runtime::Handle::current());
        let miner = Miner::start(cfg, Arc::new(MinerLink(self.clone())));
        let notifier = miner.notifier();
        let mut tip = self.watch_tip();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = tip.changed() => if r.is_err() { break },
                    r = txs_added.changed() => if r.is_err() { break },
                }
                notifier.new_work();
            }
        });
        miner
    }

    fn status_msg(&self) -> pb::Message {
        let c = self.importer.chain.lock();
        let status = pb::Status {
            height: c.height(),
            weight: c.weight().to_be_bytes::<32>().to_vec().into(),
            tip_hash: c.tip().0.to_vec().into(),
        };
        pb::Message { sum: Some(Sum::Status(status)) }
    }

    async fn status_round(&self, sw: &Switch) {
        let bytes = self.status_msg().encode_to_vec();
        sw.broadcast(CONSENSUS_CHANNEL, bytes).await;
        let now = tokio::time::Instant::now();
        let timeout = self.cfg.request_timeout;
        let mut ahead = Vec::new();
        let mut claims = Vec::new();
        for (id, st) in self.peers.lock().iter_mut() {
            if st.request.is_some_and(|(t, _)| now.duration_since(t) >= timeout) {
                tracing::debug!(peer = %id, "GetBlocks timed out");
                st.expired = st.request.take().map(|(_, max)| max);
            }
            if let Some(s) = &st.status {
                claims.push((*id, s.height, s.weight));
            }
        }
        for (id, height, weight) in claims {
            if self.worth_catching_up(height, weight) {
                ahead.push(id);
            }
        }
        for id in ahead {
            if let Some(p) = sw.peer(&id) {
                self.request_blocks(&p).await;
            }
        }
    }

    /// Imports a block from outside the network (RPC, tools): validates,
    /// stores and announces it.
    pub async fn submit_block(&self, block: Block) -> Result<Processed, BlockError> {
        let p = self
            .import_blocks(vec![block], None)
            .await
            .pop()
            .ok_or(BlockError::ImportAborted)??;
        self.announce(&p, None).await;
        Ok(p)
    }

    /// As [`ConsensusReactor::import_blocks`] for blocks checked before
    /// ([`CheckedBlock`]: header on a validated header path, body checked
    /// on arrival; [`Blockchain::process_checked`]), on the calling
    /// thread: call it from a blocking thread (`spawn_blocking`), never
    /// from an async task, since it writes SQLite and holds the chain
    /// lock. Block sync's apply thread uses it to import batch after batch
    /// without a trip through the runtime between them.
    pub fn import_checked_blocking(
        &self,
        blocks: Vec<CheckedBlock>,
        source: Option<NodeId>,
    ) -> Vec<Result<Processed, BlockError>> {
        self.importer.apply(blocks.into_iter().map(Incoming::Checked).collect(), source)
    }

    /// Validates and stores `blocks` in order on a blocking thread (SQLite
    /// writes must not hold up the runtime), keeping the mempool and the
    /// tip watch in step, and stops after the first block the sender is to
    /// blame for. No block is announced (block sync uses this).
    pub async fn import_blocks(
        &self,
        blocks: Vec<Block>,
        source: Option<NodeId>,
    ) -> Vec<Result<Processed, BlockError>> {
        let me = self.importer.clone();
        let blocks = blocks.into_iter().map(Incoming::Block).collect();
        match tokio::task::spawn_blocking(move || me.apply(blocks, source)).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "block import task failed");
                Vec::new()
            }
        }
    }

    /// Pushes the new tip of `p` (if it moved) to every peer but `except`
    /// that does not know it.
    async fn announce(&self, p: &Processed, except: Option<NodeId>) {
        let Some(tc) = &p.tip_change else { return };
        let Some(block) = tc.connected.last() else { return };
        let Some(sw) = self.switch.get() else { return };
        let hash = tc.new_tip;
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

    /// While block sync runs, this reactor leaves catching up to it (no
    /// `GetBlocks` of its own); it still relays and imports new blocks.
    pub fn set_syncing(&self, on: bool) {
        self.syncing.store(on, Ordering::Relaxed);
    }

    /// Leaves peers more than `depth` blocks ahead to block sync (which
    /// sets this to its `resync_distance`); without block sync every peer
    /// ahead is caught up with here, in `GetBlocks` batches.
    pub fn set_short_sync_depth(&self, depth: u64) {
        self.short_sync_depth.store(depth, Ordering::Relaxed);
    }

    /// Whether a peer at `height` with `weight` is one to catch up with
    /// here: heavier than us and within the short-sync depth.
    fn worth_catching_up(&self, height: u64, weight: U256) -> bool {
        let c = self.importer.chain.lock();
        let depth = self.short_sync_depth.load(Ordering::Relaxed);
        weight > c.weight() && height <= c.height().saturating_add(depth)
    }

    /// Whether block sync is running.
    pub fn is_syncing(&self) -> bool {
        self.syncing.load(Ordering::Relaxed)
    }

    /// Asks `peer` for its main-chain blocks after our locator, unless a
    /// request to it is in flight or block sync is running.
    async fn request_blocks(&self, peer: &Peer) {
        if self.is_syncing() {
            return;
        }
        let max = self.cfg.max_blocks_per_request;
        {
            let mut peers = self.peers.lock();
            let Some(st) = peers.get_mut(&peer.id()) else { return };
            if st.request.is_some() {
                return;
            }
            st.request = Some((tokio::time::Instant::now(), max));
            st.expired = None;
        }
        let from = self.peers.lock().get(&peer.id()).and_then(|st| st.best_sent);
        let locator = {
            let c = self.importer.chain.lock();
            match from {
                Some(h) if c.contains(&h) && !c.on_main(&h) => c.locator_from(&h),
                _ => c.locator(),
            }
        };
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
    /// invalid block or orphan, asks for missing parents, announces a new
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
        // Which blocks have a parent we hold (or one earlier in the
        // answer): only those can excuse a claim as "in our future"; a
        // block from the future with no known parent proves nothing.
        let parent_known: Vec<bool> = {
            let c = self.importer.chain.lock();
            let mut earlier = std::collections::HashSet::new();
            blocks
                .iter()
                .map(|b| {
                    let known =
                        c.contains(&b.header.prev_hash) || earlier.contains(&b.header.prev_hash);
                    earlier.insert(b.hash());
                    known
                })
                .collect()
        };
        let mut out = Imported::default();
        let results = self.import_blocks(blocks, Some(peer.id())).await;
        for (r, parent_known) in results.into_iter().zip(parent_known) {
            match r {
                Err(e) if e.is_peer_fault() => {
                    let kind = e.misbehavior().unwrap_or(Misbehavior::BadBlock);
                    sw.report(peer, kind, format!("invalid block: {e}")).await;
                    return out;
                }
                Err(e) => {
                    out.from_future |= parent_known && matches!(e, BlockError::TimeTooNew { .. });
                    tracing::debug!(peer = %peer.id(), error = %e, "block not accepted")
                }
                Ok(p) => {
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
                    self.announce(&p, Some(peer.id())).await;
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
    /// Whether one was refused as too new (the clock rule).
    from_future: bool,
}

/// Block import: validate and store, keep the mempool in step, publish
/// the new tip. Shared by peers' blocks (on blocking threads) and the
/// miner's (on its coordinator thread).
struct Importer {
    chain: Arc<Mutex<Blockchain>>,
    mempool: Arc<Mutex<Mempool>>,
    tip: watch::Sender<BlockHash>,
    events: broadcast::Sender<Arc<ChainEvent>>,
    reorgs: AtomicU64,
    reorged_blocks: AtomicU64,
    clock: Clock,
    commit_batch: usize,
    commit_batch_bytes: usize,
}

/// A block for the importer: checked in full, or checked before.
enum Incoming {
    Block(Block),
    Checked(CheckedBlock),
}

impl Incoming {
    fn size(&self) -> usize {
        match self {
            Incoming::Block(b) => b.size(),
            Incoming::Checked(b) => b.block().size(),
        }
    }
}

impl Importer {
    /// Imports `blocks` in order, stopping after the first one its sender
    /// is to blame for, or at a store error. Holds the chain lock for each
    /// chunk of at most `commit_batch` blocks and `commit_batch_bytes`,
    /// written in one SQLite transaction ([`Blockchain::batch`]). Only once
    /// a chunk is committed do the mempool (its lock taken per tip change,
    /// after the chain's), the reorg counters and event subscribers follow
    /// its tip changes, in order, and are its results returned; a failed
    /// chunk (a disk fault, logged as an error) turns its accepted blocks
    /// into `BlockError::NotCommitted` and ends the import. The tip watch
    /// is told once, at the end (one wake-up per import, not per block).
    fn apply(
        &self,
        blocks: Vec<Incoming>,
        source: Option<NodeId>,
    ) -> Vec<Result<Processed, BlockError>> {
        let mut out: Vec<Result<Processed, BlockError>> = Vec::with_capacity(blocks.len());
        let mut new_tip = None;
        let mut blocks = blocks.into_iter().peekable();
        let mut stop = false;
        while !stop && blocks.peek().is_some() {
            let mut chain = self.chain.lock();
            let start = out.len();
            // Where the chain stood after each block that moved the tip.
            let mut moved = Vec::new();
            let committed = chain.batch(|chain| {
                let (mut n, mut bytes) = (0, 0);
                while let Some(block) =
                    blocks.next_if(|_| n < self.commit_batch && bytes < self.commit_batch_bytes)
                {
                    n += 1;
                    bytes += block.size();
                    let now_ms = (self.clock)();
                    let r = match block {
                        Incoming::Block(b) => chain.process_block(b, source, now_ms),
                        Incoming::Checked(b) => chain.process_checked(b, source, now_ms),
                    };
                    if let Ok(Processed { tip_change: Some(_), .. }) = &r {
                        moved.push((out.len(), chain.height()));
                    }
                    stop = r
                        .as_ref()
                        .is_err_and(|e| e.is_peer_fault() || matches!(e, BlockError::Store(_)));
                    out.push(r);
                    if stop {
                        break;
                    }
                }
            });
            match committed {
                Ok(()) => {
                    for (i, height) in moved {
                        if let Ok(Processed { tip_change: Some(tc), .. }) = &out[i] {
                            self.follow(tc, height, source);
                            new_tip = Some((tc.new_tip, height, tc.disconnected.len()));
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "storing blocks failed");
                    for r in &mut out[start..] {
                        if r.is_ok() {
                            *r = Err(BlockError::NotCommitted(e.to_string()));
                        }
                    }
                    if out.len() == start {
                        // The batch did not open: the next block failed.
                        out.push(Err(BlockError::NotCommitted(e.to_string())));
                    }
                    new_tip = Some((chain.tip(), chain.height(), 0));
                    break;
                }
            }
        }
        if let Some((tip, height, reorg)) = new_tip {
            self.tip.send_replace(tip);
            // One line per mined or relayed block; batches (sync) at debug.
            if out.len() == 1 {
                tracing::info!(height, %tip, reorg, "new tip");
            } else {
                tracing::debug!(height, %tip, reorg, "new tip");
            }
        }
        out
    }

    /// The mempool, reorg counters and event subscribers follow a
    /// committed tip change (`height`: the chain's height after it).
    fn follow(&self, tc: &TipChange, height: u64, source: Option<NodeId>) {
        self.mempool.lock().apply_tip_change(tc);
        if !tc.disconnected.is_empty() {
            self.reorgs.fetch_add(1, Ordering::Relaxed);
            self.reorged_blocks.fetch_add(tc.disconnected.len() as u64, Ordering::Relaxed);
            // Every reorganisation at INFO with its depth, batched or not.
            tracing::info!(
                depth = tc.disconnected.len(),
                connected = tc.connected.len(),
                height,
                old_tip = %tc.old_tip,
                new_tip = %tc.new_tip,
                "reorganisation"
            );
        }
        if self.events.receiver_count() > 0 {
            let summaries = |bs: &[Block]| bs.iter().map(BlockSummary::of).collect();
            let _ = self.events.send(Arc::new(ChainEvent {
                old_tip: tc.old_tip,
                new_tip: tc.new_tip,
                height,
                fork_height: tc.fork_height,
                disconnected: summaries(&tc.disconnected),
                connected: summaries(&tc.connected),
                source,
            }));
        }
    }
}

/// The miner's view of a consensus reactor: templates from its chain and
/// mempool, solved blocks imported and announced.
struct MinerLink(Arc<ConsensusReactor>);

impl WorkSource for MinerLink {
    fn template(&self) -> Option<Block> {
        let r = &self.0;
        let chain = r.importer.chain.lock();
        // Room for the header and the block's own framing.
        let room = chain.params().genesis.max_block_bytes.saturating_sub(512);
        let txs = r.importer.mempool.lock().select(room);
        Some(chain.template(txs, (r.importer.clock)()))
    }

    fn submit(&self, block: Block) -> Submitted {
        match self.0.importer.apply(vec![Incoming::Block(block)], None).pop().expect("one result") {
            Ok(p) => {
                if let Some(rt) = self.0.runtime.get() {
                    let me = self.0.clone();
                    rt.spawn(async move { me.announce(&p, None).await });
                }
                Submitted::Accepted
            }
            Err(e @ (BlockError::Store(_) | BlockError::NotCommitted(_))) => {
                tracing::error!(error = %e, "a mined block could not be stored");
                Submitted::NotStored
            }
            Err(e) => {
                tracing::warn!(error = %e, "mined block refused");
                Submitted::Refused
            }
        }
    }
}

impl Reactor for ConsensusReactor {
    type Message = pb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(CONSENSUS_CHANNEL)
            .priority(5)
            .send_queue_capacity(64)
            .send_queue_bytes(self.cfg.send_queue_bytes)
            .recv_message_capacity(self.cfg.max_msg_bytes)]
    }

    async fn add_peer(&self, peer: &Peer) {
        let st = PeerState {
            status: None,
            request: None,
            expired: None,
            known: BoundedSet::new(self.cfg.max_known_per_peer),
            best_sent: None,
            stale_answers: 0,
        };
        self.peers.lock().insert(peer.id(), st);
        let _ = peer.send_msg(CONSENSUS_CHANNEL, &self.status_msg()).await;
    }

    async fn remove_peer(&self, peer: &Peer, _reason: &StopReason) {
        self.peers.lock().remove(&peer.id());
    }

    async fn receive(&self, env: Envelope<pb::Message>) {
        let (sw, peer) = (&env.switch, &env.peer);
        match env.message.sum {
            Some(Sum::Status(s)) => {
                let Some(status) = PeerChain::from_wire(s.height, &s.weight, &s.tip_hash) else {
                    sw.report(peer, Misbehavior::MalformedMessage, "malformed Status").await;
                    return;
                };
                let tip = status.tip;
                let ahead = self.worth_catching_up(status.height, status.weight);
                if let Some(st) = self.peers.lock().get_mut(&peer.id()) {
                    st.known.insert(tip);
                    st.status = Some(status);
                }
                if ahead {
                    self.request_blocks(peer).await;
                }
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
                let max = req.max_blocks.min(self.cfg.max_blocks_per_request) as usize;
                let room = peer.send_room(CONSENSUS_CHANNEL);
                // Half the room: twice this is reserved while it is built.
                let budget = self.cfg.max_msg_bytes.saturating_sub(1024).min((room / 2).max(1));
                // Held in the node-wide budget while the answer is built:
                // the blocks read and their encoding, both alive at once.
                let mut permit = match peer.reserve_wait(2 * budget).await {
                    Ok(p) => p,
                    Err(e) => return sw.report_unread(peer, e, "blocks").await,
                };
                let chain = self.importer.chain.clone();
                let found = tokio::task::spawn_blocking(move || {
                    chain.lock().main_blocks_after(&locator, max, budget)
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
                let last = blocks.last().map(Block::hash);
                let got = self.import_from(sw, peer, blocks).await;
                let prev = self.peers.lock().get(&peer.id()).and_then(|st| st.best_sent);
                // Progress: new blocks, or an answer ending further along
                // its branch than the last one (blocks we already had from
                // another peer on the same fork).
                let (w_last, w_prev) = {
                    let c = self.importer.chain.lock();
                    (last.and_then(|h| c.weight_of(&h)), prev.and_then(|h| c.weight_of(&h)))
                };
                let further = w_last.is_some() && w_last > w_prev;
                let stale = match self.peers.lock().get_mut(&peer.id()) {
                    Some(st) => {
                        if w_last.is_some() && w_last >= w_prev {
                            st.best_sent = last;
                        }
                        // Blocks, all of them known and no further: stale,
                        // not yet a lie.
                        let known_only = last.is_some() && got.new == 0 && !further;
                        st.stale_answers = if known_only { st.stale_answers + 1 } else { 0 };
                        st.stale_answers
                    }
                    None => 0,
                };
                let ours = self.importer.chain.lock().weight();
                let ahead = self.peer_chain(&peer.id()).is_some_and(|s| s.weight > ours);
                if ahead && (got.new > 0 || further || stale == 1) {
                    // Continue from what it sent (a stale answer once: the
                    // overlap of a late answer with the next request).
                    self.request_blocks(peer).await;
                } else if ahead && got.from_future {
                    // Its claim rests on blocks our clock rule refuses for
                    // now (docs/protocol.md §8.4): not a lie, maybe a clock
                    // ahead of ours; asked again at the next status round.
                    tracing::debug!(peer = %peer.id(), "heavier chain is in our future");
                } else if ahead {
                    // It claims more work than it can show: no blocks past
                    // our locator, or known blocks twice in a row.
                    let why = "status weight not backed by blocks";
                    sw.report(peer, Misbehavior::UnbackedClaim, why).await;
                }
            }
            None => sw.report(peer, Misbehavior::MalformedMessage, "empty consensus message").await,
        }
    }
}
