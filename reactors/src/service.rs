//! The chain service: the one owner of the [`Blockchain`], the
//! [`Mempool`], the chain events, the peer-chain-status table and the
//! miner's work feed. Reactors (consensus, block sync, mempool), the miner
//! and the RPC hold an `Arc<ChainService>` and nothing else of the chain:
//! no reactor holds another reactor, and no lock guard leaves this module.
//!
//! The seam is narrow, after reth's `crates/net/network/src/import.rs`
//! (the network hands blocks to an import service and hears back what
//! became of them):
//! - import: [`ChainService::import_blocks`] (peers' blocks, on a blocking
//!   thread), [`ChainService::import_checked_blocking`] (block sync's
//!   apply thread), [`ChainService::submit_block`] (RPC, tools) and the
//!   miner's [`WorkSource`]; each returns what became of every block;
//! - reads: [`ChainService::with_chain`] and [`ChainService::with_mempool`]
//!   run a closure under one lock, never both, so callers cannot take them
//!   in the wrong order (the importer and the miner's template, the only
//!   places needing both, are inside: chain, then mempool);
//! - news: the tip watch, [`ChainEvent`]s, local blocks to announce, and
//!   transactions added (the miner's feed);
//! - the peer-chain-status table ([`ChainService::peer_chain`], fed by the
//!   `Status` exchange on the consensus channel) that block relay and block
//!   sync both read, and the "block sync runs" flag that keeps block relay
//!   from chasing what a sync round fetches.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use plexus_p2p::NodeId;
use ruint::aliases::U256;
use tokio::sync::{broadcast, watch, Notify};

use crate::chain::{
    Block, BlockError, BlockHash, Blockchain, CheckedBlock, Hash, Processed, TipChange,
};
use crate::mempool::Mempool;
use crate::mining::{Miner, MinerConfig, Submitted, WorkSource};

/// The wall clock as Unix milliseconds; injectable for tests.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// Chain service settings.
#[derive(Clone, Debug)]
pub struct ChainServiceConfig {
    /// Main-chain changes buffered for each [`ChainService::subscribe`]
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
    /// Run the chain's blocking work (SQLite imports and block reads, see
    /// [`ChainService::blocking`]) on the calling task instead of tokio's
    /// blocking thread pool. For a deterministic simulation on a
    /// current-thread runtime with a paused clock: on the pool, when an
    /// import finishes relative to the runtime's other tasks depends on
    /// the OS scheduler, so two runs of one seed could diverge. Never for
    /// a node serving peers over real time (an import would hold up every
    /// connection of the runtime). Default false.
    pub inline_blocking: bool,
}

impl Default for ChainServiceConfig {
    fn default() -> Self {
        ChainServiceConfig {
            event_buffer: 1024,
            commit_batch: 256,
            commit_batch_bytes: 8 << 20,
            inline_blocking: false,
        }
    }
}

/// Blocking work of the chain service panicked (or the runtime shut down
/// before it ran). Our fault, never a peer's.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the chain's blocking task failed: {0}")]
pub struct BlockingFailed(String);

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
/// `disconnected` is not empty), as [`ChainService::subscribe`]
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

/// One peer's entry in the status table.
#[derive(Clone, Debug)]
struct PeerEntry {
    /// What it last said (or showed) of its main chain.
    chain: PeerChain,
    /// The heaviest block we store that it is known to have (it sent it,
    /// or its status tip): locators for it start there when that block is
    /// off our main chain (Bitcoin Core's `pindexBestKnownBlock`).
    best_known: Option<BlockHash>,
}

/// The chain service. See the module docs.
pub struct ChainService {
    chain: Mutex<Blockchain>,
    mempool: Mutex<Mempool>,
    tip: watch::Sender<BlockHash>,
    events: broadcast::Sender<Arc<ChainEvent>>,
    /// Blocks mined or submitted here that moved the tip, for block relay.
    local_blocks: broadcast::Sender<Arc<Block>>,
    /// Counts transactions added to the mempool (the miner's feed).
    txs_added: watch::Sender<u64>,
    reorgs: AtomicU64,
    reorged_blocks: AtomicU64,
    clock: Clock,
    commit_batch: usize,
    commit_batch_bytes: usize,
    inline_blocking: bool,
    /// The status table, by id (one order in every run).
    peers: Mutex<BTreeMap<NodeId, PeerEntry>>,
    /// Bumped by every status change in the table.
    status_gen: AtomicU64,
    status_changed: Notify,
    syncing: AtomicBool,
}

impl std::fmt::Debug for ChainService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainService").field("chain", &*self.chain.lock()).finish()
    }
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

impl ChainService {
    /// A service over `chain` and `mempool` on the system clock.
    pub fn new(cfg: ChainServiceConfig, chain: Blockchain, mempool: Mempool) -> Arc<ChainService> {
        Self::with_clock(cfg, chain, mempool, system_clock())
    }

    /// As [`ChainService::new`] with another wall clock (block time rules,
    /// templates).
    pub fn with_clock(
        cfg: ChainServiceConfig,
        chain: Blockchain,
        mempool: Mempool,
        clock: Clock,
    ) -> Arc<ChainService> {
        Arc::new(ChainService {
            tip: watch::channel(chain.tip()).0,
            chain: Mutex::new(chain),
            mempool: Mutex::new(mempool),
            events: broadcast::channel(cfg.event_buffer.max(1)).0,
            local_blocks: broadcast::channel(64).0,
            txs_added: watch::channel(0).0,
            reorgs: AtomicU64::new(0),
            reorged_blocks: AtomicU64::new(0),
            clock,
            commit_batch: cfg.commit_batch.max(1),
            commit_batch_bytes: cfg.commit_batch_bytes.max(1),
            inline_blocking: cfg.inline_blocking,
            peers: Mutex::new(BTreeMap::new()),
            status_gen: AtomicU64::new(0),
            status_changed: Notify::new(),
            syncing: AtomicBool::new(false),
        })
    }

    /// Runs `f` on the chain under its lock (held only for `f`; keep it
    /// short, an import waits for it). `f` must not call the service.
    pub fn with_chain<R>(&self, f: impl FnOnce(&Blockchain) -> R) -> R {
        f(&self.chain.lock())
    }

    /// Runs `f` on the mempool under its lock. `f` must not call the
    /// service.
    pub fn with_mempool<R>(&self, f: impl FnOnce(&mut Mempool) -> R) -> R {
        f(&mut self.mempool.lock())
    }

    /// The wall clock, Unix milliseconds.
    pub fn now_ms(&self) -> u64 {
        (self.clock)()
    }

    /// Our main chain's height, weight and tip.
    pub fn status(&self) -> PeerChain {
        PeerChain::of(&self.chain.lock())
    }

    /// Changes to each new main-chain tip.
    pub fn watch_tip(&self) -> watch::Receiver<BlockHash> {
        self.tip.subscribe()
    }

    /// Every later main-chain change, one [`ChainEvent`] per processed
    /// block that moved the tip (the RPC's subscriptions). Events are
    /// built only while a receiver exists; a receiver more than
    /// `event_buffer` events behind gets `RecvError::Lagged`.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<ChainEvent>> {
        self.events.subscribe()
    }

    /// Blocks mined or submitted here that became the tip, for block
    /// relay to push (bounded: 64; a receiver behind misses the oldest).
    pub fn local_blocks(&self) -> broadcast::Receiver<Arc<Block>> {
        self.local_blocks.subscribe()
    }

    /// Changes whenever transactions enter the mempool.
    pub fn watch_txs_added(&self) -> watch::Receiver<u64> {
        self.txs_added.subscribe()
    }

    /// Tells the miner's feed that `n` transactions entered the mempool.
    pub fn note_txs_added(&self, n: u64) {
        if n > 0 {
            self.txs_added.send_modify(|c| *c += n);
        }
    }

    /// Reorgs since start (tip changes that left blocks behind) and the
    /// blocks they took off the main chain.
    pub fn reorgs(&self) -> (u64, u64) {
        (self.reorgs.load(Ordering::Relaxed), self.reorged_blocks.load(Ordering::Relaxed))
    }

    // ---- the peer-chain-status table ----

    /// Records what `peer` says of its main chain (its `Status`).
    pub fn set_peer_chain(&self, peer: NodeId, chain: PeerChain) {
        let tip = chain.tip;
        let known = self.chain.lock().weight_of(&tip).map(|w| (tip, w));
        let mut peers = self.peers.lock();
        let e = peers.entry(peer).or_insert(PeerEntry { chain: chain.clone(), best_known: None });
        e.chain = chain;
        if let Some((tip, _)) = known {
            e.best_known = Some(tip);
        }
        drop(peers);
        self.status_changed_now();
    }

    /// Notes that `peer` has `block` (it sent it and we store it): its
    /// best known block moves there when that is heavier, and its status
    /// is raised to it when the block is heavier than what it claimed (a
    /// pushed block proves its tip moved).
    pub fn note_peer_block(&self, peer: NodeId, block: &BlockHash) {
        let (weight, height, prev) = {
            let c = self.chain.lock();
            let Some(w) = c.weight_of(block) else { return };
            let h = c.header(block).map_or(0, |h| h.height);
            let prev = self.peers.lock().get(&peer).and_then(|e| e.best_known);
            (w, h, prev.and_then(|p| c.weight_of(&p)))
        };
        let mut peers = self.peers.lock();
        let Some(e) = peers.get_mut(&peer) else { return };
        if prev.is_none_or(|p| weight > p) {
            e.best_known = Some(*block);
        }
        let raised = weight > e.chain.weight;
        if raised {
            e.chain = PeerChain { height, weight, tip: *block };
        }
        drop(peers);
        if raised {
            self.status_changed_now();
        }
    }

    fn status_changed_now(&self) {
        self.status_gen.fetch_add(1, Ordering::Relaxed);
        self.status_changed.notify_waiters();
    }

    /// Removes `peer` from the table (it left, or its claim was a lie).
    pub fn forget_peer(&self, peer: &NodeId) {
        if self.peers.lock().remove(peer).is_some() {
            self.status_changed_now();
        }
    }

    /// What `peer` last said of its chain.
    pub fn peer_chain(&self, peer: &NodeId) -> Option<PeerChain> {
        self.peers.lock().get(peer).map(|e| e.chain.clone())
    }

    /// Every peer's last status.
    pub fn peer_chains(&self) -> Vec<(NodeId, PeerChain)> {
        self.peers.lock().iter().map(|(id, e)| (*id, e.chain.clone())).collect()
    }

    /// How many peers have told us their status.
    pub fn peer_chain_count(&self) -> usize {
        self.peers.lock().len()
    }

    /// A locator for asking `peer` for what follows what we know of its
    /// chain: from its best known block when that is off our main chain
    /// (so a fork deeper than one answer is followed answer after answer),
    /// else our main chain's. Exponential spacing, at most 101 hashes
    /// ([`Blockchain::locator_from`]).
    pub fn locator_for(&self, peer: &NodeId) -> Vec<BlockHash> {
        let best = self.peers.lock().get(peer).and_then(|e| e.best_known);
        let c = self.chain.lock();
        match best {
            Some(h) if c.contains(&h) && !c.on_main(&h) => c.locator_from(&h),
            _ => c.locator(),
        }
    }

    /// Bumped by every change of the status table (a cheap "anything
    /// new?" check).
    pub fn status_generation(&self) -> u64 {
        self.status_gen.load(Ordering::Relaxed)
    }

    /// Resolves at the next change of the status table. Create it before
    /// reading the table so a change meanwhile still wakes it
    /// (`Notified::enable`).
    pub fn status_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.status_changed.notified()
    }

    /// Whether a block sync round runs (block relay then leaves catching
    /// up to it).
    pub fn is_syncing(&self) -> bool {
        self.syncing.load(Ordering::Relaxed)
    }

    /// Block sync says whether a round runs.
    pub fn set_syncing(&self, on: bool) {
        self.syncing.store(on, Ordering::Relaxed);
    }

    // ---- import ----

    /// Runs `f` (SQLite writes or reads, the chain lock) off the async
    /// tasks: on tokio's blocking pool (`spawn_blocking`), or, with
    /// [`ChainServiceConfig::inline_blocking`], right here on the calling
    /// task. Every reactor's blocking chain work goes through this one
    /// place. Errors: [`BlockingFailed`] when `f` panicked (either way)
    /// or the runtime is shutting down.
    pub async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, BlockingFailed> {
        if self.inline_blocking {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
                .map_err(|_| BlockingFailed("panicked".into()))
        } else {
            tokio::task::spawn_blocking(f).await.map_err(|e| BlockingFailed(e.to_string()))
        }
    }

    /// Imports a block from outside the network (RPC, tools): validates
    /// and stores it; a new tip goes to block relay to announce.
    pub async fn submit_block(self: &Arc<Self>, block: Block) -> Result<Processed, BlockError> {
        let me = self.clone();
        self.blocking(move || me.import_local(block))
            .await
            .map_err(|_| BlockError::ImportAborted)?
    }

    /// Imports a block made here (mined or submitted) and hands a new tip
    /// to block relay.
    fn import_local(&self, block: Block) -> Result<Processed, BlockError> {
        let r = self
            .apply(vec![Incoming::Block(block)], None)
            .pop()
            .ok_or(BlockError::ImportAborted)?;
        if let Ok(p) = &r {
            if let Some(b) = p.tip_change.as_ref().and_then(|tc| tc.connected.last()) {
                let _ = self.local_blocks.send(Arc::new(b.clone()));
            }
        }
        r
    }

    /// As [`ChainService::import_blocks`] for blocks checked before
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
        self.apply(blocks.into_iter().map(Incoming::Checked).collect(), source)
    }

    /// Validates and stores `blocks` in order on a blocking thread (SQLite
    /// writes must not hold up the runtime), keeping the mempool and the
    /// tip watch in step, and stops after the first block the sender is to
    /// blame for. Nothing is announced (block relay does that for peers'
    /// blocks).
    pub async fn import_blocks(
        self: &Arc<Self>,
        blocks: Vec<Block>,
        source: Option<NodeId>,
    ) -> Vec<Result<Processed, BlockError>> {
        let me = self.clone();
        let blocks = blocks.into_iter().map(Incoming::Block).collect();
        match self.blocking(move || me.apply(blocks, source)).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "block import task failed");
                Vec::new()
            }
        }
    }

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

    // ---- the miner's work feed ----

    /// Starts a [`Miner`] on this chain and mempool; it restarts its work
    /// on every new tip and whenever transactions enter the mempool. Its
    /// blocks go to block relay through [`ChainService::local_blocks`].
    pub fn start_miner(self: &Arc<Self>, cfg: MinerConfig) -> Miner {
        let miner = Miner::start(cfg, Arc::new(MinerLink(self.clone())));
        let notifier = miner.notifier();
        let (mut tip, mut txs) = (self.watch_tip(), self.watch_txs_added());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = tip.changed() => if r.is_err() { break },
                    r = txs.changed() => if r.is_err() { break },
                }
                notifier.new_work();
            }
        });
        miner
    }
}

/// The miner's view of the service: templates from its chain and mempool
/// (chain lock, then mempool lock), solved blocks imported as local ones.
struct MinerLink(Arc<ChainService>);

impl WorkSource for MinerLink {
    fn template(&self) -> Option<Block> {
        let s = &self.0;
        let chain = s.chain.lock();
        // Room for the header and the block's own framing.
        let room = chain.params().genesis.max_block_bytes.saturating_sub(512);
        let txs = s.mempool.lock().select(room);
        Some(chain.template(txs, (s.clock)()))
    }

    fn submit(&self, block: Block) -> Submitted {
        match self.0.import_local(block) {
            Ok(_) => Submitted::Accepted,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tests::{chain, params};
    use crate::mempool::MempoolConfig;

    fn service(inline_blocking: bool) -> Arc<ChainService> {
        let cfg = ChainServiceConfig { inline_blocking, ..ChainServiceConfig::default() };
        ChainService::new(cfg, chain(&params(0)), Mempool::new(MempoolConfig::default()))
    }

    #[tokio::test(flavor = "current_thread")]
    async fn inline_blocking_runs_on_the_calling_thread_and_a_panic_is_an_error() {
        let here = std::thread::current().id();
        let inline = service(true);
        assert_eq!(inline.blocking(move || std::thread::current().id()).await.unwrap(), here);
        assert!(inline.blocking(|| panic!("in the closure")).await.is_err());
        let pooled = service(false);
        assert_ne!(pooled.blocking(move || std::thread::current().id()).await.unwrap(), here);
        assert!(pooled.blocking(|| panic!("in the closure")).await.is_err());
    }
}
