//! Block sync (channel 0x40): catching up to the heaviest chain from many
//! peers at once, after Chia's full-node sync and CometBFT's blocksync.
//!
//! A round, run by [`BlockSyncReactor::start`]'s task:
//! 1. Ask every peer for its status and wait up to `status_wait` for
//!    `min_status_peers` answers. The target is the heaviest claimed tip;
//!    a round starts only when it is more than `resync_distance` blocks
//!    above ours and heavier (closer gaps are the consensus reactor's).
//! 2. Download the target peer's headers from the fork point with block
//!    locators, validate them as headers ([`Blockchain::extend_header_path`])
//!    and check that they add up to the claimed weight; a peer whose
//!    headers are invalid, or fall short of its claim, is banned (Chia bans
//!    weight liars).
//! 3. Fill the header path with blocks from every peer whose tip lies on
//!    it, through the [`BlockPool`] (window, per-peer cap, adaptive
//!    timeouts, faster peers first, second requests at the low edge).
//! 4. Apply blocks strictly in height order while more arrive; an invalid
//!    block bans its sender and every later block it sent is fetched again
//!    from others.
//! 5. At the tip, hand over to the consensus reactor, which is told to
//!    leave catching up alone while a round runs; a peer reporting a tip
//!    `resync_distance` above ours starts a new round.
//!
//! Progress is logged every `log_interval` and published as a
//! [`SyncProgress`] watch. A restart resumes from the stored chain: the
//! locator starts at its tip, so nothing stored is fetched again.

mod pool;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use plexus_p2p::{
    ChannelDescriptor, Envelope, Misbehavior, NodeId, Peer, Reactor, StopReason, Switch,
};
use plexus_proto::blocksync::{self as pb, message::Sum};
use prost::Message;
use serde::Serialize;
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

pub use pool::{Arrival, BlockPool, PoolConfig, PoolError, Request};

use crate::chain::{
    Block, BlockError, BlockHash, Blockchain, BodyChecked, CheckedBlock, Hash, Header,
    NetworkParams, ProcessStatus, Processed,
};
use crate::consensus::{system_clock, Clock, ConsensusReactor, PeerChain, MAX_LOCATOR};

/// The block sync channel.
pub const BLOCKSYNC_CHANNEL: u8 = 0x40;

/// Block sync settings.
#[derive(Clone, Debug)]
pub struct BlockSyncConfig {
    /// The block pool's settings (window, per-peer cap, timeouts).
    pub pool: PoolConfig,
    /// How long a round waits for statuses. Default 3 s.
    pub status_wait: Duration,
    /// Statuses a round waits for (fewer if fewer peers). Default 3.
    pub min_status_peers: usize,
    /// How often statuses are asked for, idle or syncing. Default 10 s.
    pub status_interval: Duration,
    /// Most headers asked for, and answered, per request. Default 2,000.
    pub max_headers_per_request: u32,
    /// Headers asked for in a round's first request (blocks start to
    /// download once they are valid; later requests ask for
    /// `max_headers_per_request`). Default 128.
    pub first_headers_batch: u32,
    /// Longest wait for a headers answer. Default 15 s.
    pub headers_timeout: Duration,
    /// Block requests in flight to the peer whose headers are still being
    /// downloaded (its header answers queue behind them on the channel).
    /// Default 2.
    pub header_peer_pending: usize,
    /// A round starts when a peer's tip is more than this many blocks
    /// above ours (and heavier). Default 16.
    pub resync_distance: u64,
    /// Most blocks applied in one go. Default 256.
    pub apply_batch: usize,
    /// Largest block sync message, bytes (channel receive limit); must
    /// exceed the network's `max_block_bytes`. Default 8 MiB.
    pub max_msg_bytes: usize,
    /// How often progress is logged. Default 5 s.
    pub log_interval: Duration,
    /// How often the round loop schedules and checks timeouts when no
    /// block arrives. Default 50 ms.
    pub tick: Duration,
    /// Bytes that may wait to be sent to one peer on this channel (the
    /// MConnection's `send_queue_bytes`): answers to its requests are
    /// built only as large as what is left, so a peer that asks and never
    /// reads holds at most this. Default 2 MiB.
    pub send_queue_bytes: usize,
}

impl Default for BlockSyncConfig {
    fn default() -> Self {
        BlockSyncConfig {
            pool: PoolConfig::default(),
            status_wait: Duration::from_secs(3),
            min_status_peers: 3,
            status_interval: Duration::from_secs(10),
            max_headers_per_request: 2000,
            first_headers_batch: 128,
            headers_timeout: Duration::from_secs(15),
            header_peer_pending: 2,
            resync_distance: 16,
            apply_batch: 256,
            max_msg_bytes: 8 << 20,
            log_interval: Duration::from_secs(5),
            tick: Duration::from_millis(50),
            send_queue_bytes: 2 << 20,
        }
    }
}

/// Where sync stands (for the node's RPC and web page).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncProgress {
    /// A round is running.
    pub syncing: bool,
    /// Our main-chain height.
    pub height: u64,
    /// The round's target height (ours when idle).
    pub target_height: u64,
    /// Blocks applied per second over the last log interval.
    pub blocks_per_s: f64,
    /// Peers serving blocks in this round.
    pub peers: usize,
    /// Seconds left at the current rate.
    pub eta_s: Option<f64>,
    /// Rounds started since start.
    pub rounds: u64,
}

/// The block sync reactor. Register it with the switch and call
/// [`BlockSyncReactor::start`] with the built switch.
pub struct BlockSyncReactor {
    cfg: BlockSyncConfig,
    consensus: Arc<ConsensusReactor>,
    /// The chain's network (body rules of arriving blocks).
    params: Arc<NetworkParams>,
    clock: Clock,
    statuses: Mutex<HashMap<NodeId, PeerChain>>,
    status_arrived: Notify,
    /// Who waits for each headers request in flight, per peer, oldest
    /// first: a peer's channel is handled in order, so each answer belongs
    /// to the oldest request (one a finished round gave up on has no
    /// receiver left, and its answer is dropped there).
    headers_wait: Mutex<HashMap<NodeId, VecDeque<oneshot::Sender<Vec<Header>>>>>,
    pool: Arc<Mutex<Option<BlockPool>>>,
    /// Wakes the fetch side: an answer arrived or room was made.
    block_arrived: Arc<Notify>,
    /// Wakes the apply side: a block arrived.
    ready_arrived: Notify,
    progress: watch::Sender<SyncProgress>,
    /// True while an apply thread runs (it outlives a round that ended
    /// while it imported a batch; the next round waits for it).
    applying: Arc<watch::Sender<bool>>,
    blocks_received: AtomicU64,
    blocks_from: Mutex<HashMap<NodeId, u64>>,
    /// Bumped by every status answer, so the round loop looks for new pool
    /// peers only when something changed.
    status_gen: AtomicU64,
}

impl std::fmt::Debug for BlockSyncReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockSyncReactor").field("progress", &*self.progress.borrow()).finish()
    }
}

/// Blame for refused headers: `None` for a header from the future (maybe
/// clock skew) and, in a follow-up batch, for headers that do not link to
/// the previous batch (the peer's chain moved meanwhile); the reason text.
fn header_fault(
    i: usize,
    n: usize,
    e: &BlockError,
    follow_up: bool,
) -> (Option<Misbehavior>, String) {
    let moved = follow_up && matches!(e, BlockError::Unlinked);
    let kind = if moved { None } else { e.misbehavior() };
    (kind, format!("invalid header {i} of {n}: {e}"))
}

fn msg(sum: Sum) -> pb::Message {
    pb::Message { sum: Some(sum) }
}

/// The bytes of `Message{BlockResponse{block}}` from an encoded block,
/// through the wire-identical `Encoded*` messages.
/// The prefix of a `BlockResponse` message around a block encoding of
/// `len` bytes, in a vector with room for the block:
/// `EncodedMessage { block_response: EncodedBlockResponse { block } }` is
/// field 6 of the message, length-delimited, holding field 1 of the
/// response.
fn block_response_prefix(len: usize) -> Vec<u8> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let inner = 1 + encoded_len_varint(len as u64) + len;
    let mut out = Vec::with_capacity(1 + encoded_len_varint(inner as u64) + inner);
    encode_key(6, WireType::LengthDelimited, &mut out);
    encode_varint(inner as u64, &mut out);
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(len as u64, &mut out);
    out
}

impl BlockSyncReactor {
    /// A reactor that applies blocks through `consensus` (its chain,
    /// mempool and tip watch).
    pub fn new(cfg: BlockSyncConfig, consensus: Arc<ConsensusReactor>) -> BlockSyncReactor {
        let params = consensus.chain().lock().params().clone();
        BlockSyncReactor {
            cfg,
            consensus,
            params,
            clock: system_clock(),
            statuses: Mutex::new(HashMap::new()),
            status_arrived: Notify::new(),
            headers_wait: Mutex::new(HashMap::new()),
            pool: Arc::new(Mutex::new(None)),
            block_arrived: Arc::new(Notify::new()),
            ready_arrived: Notify::new(),
            progress: watch::channel(SyncProgress::default()).0,
            applying: Arc::new(watch::channel(false).0),
            blocks_received: AtomicU64::new(0),
            blocks_from: Mutex::new(HashMap::new()),
            status_gen: AtomicU64::new(0),
        }
    }

    /// Progress, updated as sync runs.
    pub fn watch_progress(&self) -> watch::Receiver<SyncProgress> {
        self.progress.subscribe()
    }

    /// Blocks received from peers since start (duplicates included).
    pub fn blocks_received(&self) -> u64 {
        self.blocks_received.load(Ordering::Relaxed)
    }

    /// Blocks received from each peer since start.
    pub fn blocks_received_from(&self) -> HashMap<NodeId, u64> {
        self.blocks_from.lock().clone()
    }

    fn chain(&self) -> &Arc<Mutex<Blockchain>> {
        self.consensus.chain()
    }

    /// Starts the sync task for `switch`; it ends when the switch stops.
    pub fn start(self: &Arc<Self>, switch: &Switch) {
        self.consensus.set_short_sync_depth(self.cfg.resync_distance);
        let (me, sw) = (self.clone(), switch.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = me.run(&sw) => {}
                _ = sw.stopped() => {}
            }
            me.consensus.set_syncing(false);
        });
    }

    /// Polls statuses (at start, after each round, then every
    /// `status_interval`) and runs a round whenever a peer is far enough
    /// ahead; between polls, any status that arrives (a new peer's, say)
    /// is looked at at once without asking everyone again.
    async fn run(&self, sw: &Switch) {
        let mut next_poll = Instant::now();
        loop {
            // Registered before the statuses are read, so one arriving
            // meanwhile still wakes the wait below.
            let arrived = self.status_arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if Instant::now() >= next_poll {
                self.poll_status(sw).await;
                next_poll = Instant::now() + self.cfg.status_interval;
            }
            let ours = PeerChain::of(&self.chain().lock());
            self.publish(false, ours.height, ours.height, 0.0, 0, None);
            let best = self.best_peer(sw, &ours);
            let Some((peer, claim)) = best else {
                tokio::select! {
                    _ = tokio::time::sleep_until(next_poll) => {}
                    _ = arrived => {}
                }
                continue;
            };
            self.consensus.set_syncing(true);
            self.progress.send_modify(|p| p.rounds += 1);
            tracing::info!(peer = %peer.id(), height = claim.height, ours = ours.height, "block sync starts");
            self.round(sw, &peer, claim, &ours).await;
            *self.pool.lock() = None;
            // An apply thread still importing its last batch finishes
            // before our chain state is read again.
            let _ = self.applying.subscribe().wait_for(|busy| !busy).await;
            self.consensus.set_syncing(false);
            next_poll = Instant::now();
            if self.chain().lock().height() == ours.height {
                // A round that moved nothing (a peer refused or timed
                // out): pause before the next, rather than spin.
                tokio::time::sleep(self.cfg.status_wait).await;
            }
        }
    }

    /// The heaviest claim far enough ahead of `ours` to sync to.
    fn best_peer(&self, sw: &Switch, ours: &PeerChain) -> Option<(Peer, PeerChain)> {
        let st = self.statuses.lock();
        let (id, claim) = st
            .iter()
            .filter(|(_, c)| {
                c.weight > ours.weight && c.height > ours.height + self.cfg.resync_distance
            })
            .max_by(|a, b| a.1.weight.cmp(&b.1.weight).then(b.0.cmp(a.0)))?;
        Some((sw.peer(id)?, claim.clone()))
    }

    /// Asks every peer for its status and waits up to `status_wait` for
    /// `min_status_peers` answers (then goes with what is there).
    async fn poll_status(&self, sw: &Switch) {
        let peers = sw.peers();
        let asked_at = Instant::now();
        let bytes = msg(Sum::StatusRequest(pb::StatusRequest {})).encode_to_vec();
        for p in &peers {
            p.try_send(BLOCKSYNC_CHANNEL, bytes.clone());
        }
        // Peers that connect meanwhile are asked on connect and count too.
        let want = self.cfg.min_status_peers.max(1);
        let deadline = asked_at + self.cfg.status_wait;
        loop {
            let fresh = self.statuses.lock().len();
            if fresh >= want {
                return;
            }
            if tokio::time::timeout_at(deadline, self.status_arrived.notified()).await.is_err() {
                return;
            }
        }
    }

    fn publish(
        &self,
        syncing: bool,
        height: u64,
        target: u64,
        rate: f64,
        peers: usize,
        eta: Option<f64>,
    ) {
        self.progress.send_modify(|p| {
            p.syncing = syncing;
            p.height = height;
            p.target_height = target;
            p.blocks_per_s = rate;
            p.peers = peers;
            p.eta_s = eta;
        });
    }

    /// One round: headers from `peer`, then blocks from everyone on them.
    /// When the headers extend our tip, blocks download as soon as the
    /// first batch of headers is valid and later batches extend the pool's
    /// path meanwhile (every block applied then extends our main chain, so
    /// a peer that turns out to have lied about its weight cost us nothing
    /// but valid blocks). Headers of a fork off our tip all come first, and
    /// the weight check before any block of it.
    async fn round(&self, sw: &Switch, peer: &Peer, claim: PeerChain, ours: &PeerChain) {
        let Some(headers) = self.request_headers(sw, peer, &claim, None).await else { return };
        if headers.is_empty() {
            // It claims more work than ours and shows none of it.
            self.weight_proven(sw, peer, &claim, ours.weight).await;
            return;
        }
        let now_ms = (self.clock)();
        let verdict = {
            let chain = self.chain().lock();
            match chain.header_path(&headers[0].prev_hash) {
                None => Err((
                    Some(Misbehavior::MalformedMessage),
                    "headers do not start on our chain".to_string(),
                )),
                Some(mut path) => chain
                    .extend_header_path(&mut path, &headers, now_ms)
                    .map(|()| path)
                    .map_err(|(i, e)| header_fault(i, headers.len(), &e, false)),
            }
        };
        let path = match verdict {
            Ok(path) => path,
            Err((kind, why)) => return self.refuse_headers(sw, peer, kind, why).await,
        };
        let more = path.tip_hash() != claim.tip;
        if !more && !self.weight_proven(sw, peer, &claim, path.weight()).await {
            return;
        }
        let overlap = path.fork() == ours.tip;
        let now = Instant::now();
        let mut pool = BlockPool::new(self.cfg.pool.clone(), path, 0);
        pool.set_headers_complete(!more);
        pool.add_peer(peer.id(), pool.target_height(), now);
        if more {
            // Its header answers must not queue behind many blocks.
            pool.limit_peer(&peer.id(), Some(self.cfg.header_peer_pending));
        }
        *self.pool.lock() = Some(pool);
        self.add_pool_peers(sw, &claim, now);
        if more && !overlap && !self.header_loop(sw, peer, &claim).await {
            return;
        }

        // Headers (when still coming), fetching and applying run side by
        // side; the round ends when fetching or applying ends (applied
        // everything, or the fetch side gave up), or when the headers turn
        // out bad.
        let applied = Arc::new(AtomicU64::new(0));
        // Ends the round only when the headers turn out bad.
        let headers = async {
            if more && overlap && !self.header_loop(sw, peer, &claim).await {
                return;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = headers => {}
            _ = self.fetch_loop(sw, &claim, &applied) => {}
            _ = self.apply_loop(sw, &applied) => {}
        }
    }

    /// Downloads the rest of `peer`'s headers into the running pool's
    /// path, until its claimed tip or an empty answer, then checks they
    /// add up to its claimed weight. False (and the peer reported where it
    /// is to blame) when they do not, or when the peer left, timed out or
    /// moved to another chain meanwhile.
    async fn header_loop(&self, sw: &Switch, peer: &Peer, claim: &PeerChain) -> bool {
        loop {
            let tip = self.pool.lock().as_ref().map(|p| p.path().tip_hash());
            let Some(tip) = tip else { return false };
            let Some(headers) = self.request_headers(sw, peer, claim, Some(tip)).await else {
                return false;
            };
            if headers.is_empty() {
                break;
            }
            let now_ms = (self.clock)();
            // Chain, then pool: the order everywhere both are held.
            let verdict = {
                let chain = self.chain().lock();
                let mut guard = self.pool.lock();
                let Some(pool) = guard.as_mut() else { return false };
                let r = chain.extend_header_path(pool.path_mut(), &headers, now_ms);
                r.map(|()| pool.path().tip_hash())
                    .map_err(|(i, e)| header_fault(i, headers.len(), &e, true))
            };
            let tip = match verdict {
                Ok(tip) => tip,
                Err((kind, why)) => {
                    self.refuse_headers(sw, peer, kind, why).await;
                    return false;
                }
            };
            // It serves what it sent; others whose tips are now on the
            // path join, and claimants whose tip it reached answer for
            // what they refused; new heights to ask for.
            let now = Instant::now();
            let blamed = match self.pool.lock().as_mut() {
                Some(pool) => {
                    pool.add_peer(peer.id(), pool.target_height(), now);
                    pool.settle_claims()
                }
                None => Vec::new(),
            };
            for (id, e) in blamed {
                if let Some(p) = sw.peer(&id) {
                    self.report_refusal(sw, &p, e).await;
                }
            }
            self.add_pool_peers(sw, claim, now);
            self.block_arrived.notify_one();
            if tip == claim.tip {
                break;
            }
        }
        let weight = self.pool.lock().as_ref().map(|p| p.path().weight());
        let Some(weight) = weight else { return false };
        if !self.weight_proven(sw, peer, claim, weight).await {
            return false;
        }
        let now = Instant::now();
        if let Some(pool) = self.pool.lock().as_mut() {
            pool.set_headers_complete(true);
            pool.limit_peer(&peer.id(), None);
            tracing::debug!(target_height = pool.target_height(), "block sync: all headers in");
        }
        self.add_pool_peers(sw, claim, now);
        self.block_arrived.notify_one();
        self.ready_arrived.notify_one();
        true
    }

    /// Applies blocks in height order as they become ready, until the
    /// pool has handed out the whole path.
    async fn apply_loop(&self, sw: &Switch, applied: &Arc<AtomicU64>) {
        loop {
            let (ready, done) = {
                let mut guard = self.pool.lock();
                let Some(pool) = guard.as_mut() else { return };
                (pool.take_ready(self.cfg.apply_batch), pool.is_done())
            };
            if ready.is_empty() {
                if done {
                    let height = self.chain().lock().height();
                    tracing::info!(height, "block sync reached its target; handing over");
                    return;
                }
                tokio::select! {
                    _ = self.ready_arrived.notified() => {}
                    _ = tokio::time::sleep(self.cfg.tick) => {}
                }
                continue;
            }
            self.apply(sw, ready, applied).await;
        }
    }

    /// Schedules requests, retires timed-out ones, takes in new peers,
    /// watches for a heavier tip elsewhere and logs progress. Returns when
    /// the round should end early.
    async fn fetch_loop(&self, sw: &Switch, claim: &PeerChain, applied: &AtomicU64) {
        let mut last_log = Instant::now();
        let mut last_status = Instant::now();
        let mut seen_gen = u64::MAX;
        let mut idle_since: Option<Instant> = None;
        loop {
            let now = Instant::now();
            // Peers whose status arrived since: into the pool at once.
            let gen = self.status_gen.load(Ordering::Relaxed);
            if gen != seen_gen {
                seen_gen = gen;
                self.add_pool_peers(sw, claim, now);
            }
            let (requests, slow, (pool_peers, inflight), headers_in, target) = {
                let mut guard = self.pool.lock();
                let Some(pool) = guard.as_mut() else { return };
                let slow = pool.expire(now);
                for id in &slow {
                    pool.remove_peer(id);
                }
                let headers_in = pool.headers_complete();
                // The claim until its headers prove where the path ends.
                let target = if headers_in { pool.target_height() } else { claim.height };
                let requests = pool.schedule(now);
                let counts = (pool.peer_count(), pool.inflight_count());
                (requests, slow, counts, headers_in, target)
            };
            for id in slow {
                if let Some(p) = sw.peer(&id) {
                    tracing::info!(peer = %id, "block sync: peer keeps timing out; disconnecting");
                    sw.stop_peer_for_error(&p, "block sync requests timed out").await;
                }
            }
            let requests_sent = requests.len();
            for r in requests {
                self.send_request(sw, r);
            }
            if now.duration_since(last_status) >= self.cfg.status_interval {
                last_status = now;
                self.poll_status_quick(sw);
                if self.heavier_elsewhere(sw, claim) {
                    tracing::info!("block sync: a heavier tip off this path appeared; new round");
                    return;
                }
            }
            let waiting = self.pool.lock().as_ref().map_or(0, |p| p.ready_count());
            if pool_peers == 0 && inflight == 0 && waiting == 0 {
                tracing::info!("block sync: no peer left to fetch from; new round");
                return;
            }
            // Peers left, but none can serve what is missing (while
            // headers still arrive, the header side watches its peer).
            if headers_in && inflight == 0 && waiting == 0 && requests_sent == 0 {
                let since = *idle_since.get_or_insert(now);
                if now.duration_since(since) >= self.cfg.pool.request_timeout {
                    tracing::info!("block sync: no peer serves the missing blocks; new round");
                    return;
                }
            } else {
                idle_since = None;
            }
            let since = now.duration_since(last_log);
            if since >= self.cfg.log_interval {
                let height = self.chain().lock().height();
                let rate = applied.swap(0, Ordering::Relaxed) as f64 / since.as_secs_f64();
                let eta = (rate > 0.0).then(|| target.saturating_sub(height) as f64 / rate);
                tracing::info!(height, target, blocks_per_s = rate, peers = pool_peers, eta_s = ?eta, "block sync");
                self.publish(true, height, target, rate, pool_peers, eta);
                last_log = now;
            }
            tokio::select! {
                _ = self.block_arrived.notified() => {}
                _ = tokio::time::sleep(self.cfg.tick) => {}
            }
        }
    }

    /// Sends status requests without waiting for answers.
    fn poll_status_quick(&self, sw: &Switch) {
        let bytes = msg(Sum::StatusRequest(pb::StatusRequest {})).encode_to_vec();
        for p in sw.peers() {
            p.try_send(BLOCKSYNC_CHANNEL, bytes.clone());
        }
    }

    /// Adds to the pool every connected peer that claims the round's tip
    /// (it serves the whole path, also while headers still arrive) or whose
    /// claimed tip lies on the path (it can serve up to that height).
    fn add_pool_peers(&self, sw: &Switch, claim: &PeerChain, now: Instant) {
        let claims: Vec<(NodeId, PeerChain)> =
            self.statuses.lock().iter().map(|(id, c)| (*id, c.clone())).collect();
        let mut guard = self.pool.lock();
        let Some(pool) = guard.as_mut() else { return };
        for (id, c) in claims {
            if sw.peer(&id).is_none() {
                continue;
            }
            if let Some(h) = pool.path().height_of(&c.tip) {
                pool.add_peer(id, h, now);
            } else if c.tip == claim.tip {
                pool.add_claimant(id, c.height, c.tip, now);
            } else if pool.headers_complete()
                && c.height >= pool.target_height()
                && c.weight >= pool.path().weight()
                && pool.has_peer(&id)
            {
                // Still ahead of the path on the same chain (it served us).
                pool.add_peer(id, pool.target_height(), now);
            }
        }
    }

    /// Whether a connected peer claims a tip off our path, heavier than
    /// the round's target and far enough ahead of it to be worth a new
    /// round.
    fn heavier_elsewhere(&self, sw: &Switch, claim: &PeerChain) -> bool {
        let guard = self.pool.lock();
        let Some(pool) = guard.as_ref() else { return false };
        let w = pool.path().weight().max(claim.weight);
        let h = pool.target_height().max(claim.height);
        self.statuses.lock().iter().any(|(id, c)| {
            sw.peer(id).is_some()
                && c.tip != claim.tip
                && pool.path().height_of(&c.tip).is_none()
                && c.weight > w
                && c.height > h + self.cfg.resync_distance
        })
    }

    fn send_request(&self, sw: &Switch, r: Request) {
        let hashes = r.hashes.iter().map(|h| h.0.to_vec().into()).collect();
        let bytes = msg(Sum::BlockRequest(pb::BlockRequest { hashes })).encode_to_vec();
        match sw.peer(&r.peer) {
            // A full queue: the request times out and goes elsewhere.
            Some(p) => {
                p.try_send(BLOCKSYNC_CHANNEL, bytes);
            }
            None => {
                if let Some(pool) = self.pool.lock().as_mut() {
                    pool.remove_peer(&r.peer);
                }
            }
        }
    }

    /// Applies `ready` (consecutive heights) through the consensus reactor
    /// on a blocking thread, which then goes on with the next ready blocks
    /// itself, batch after batch, until none is ready (no trip through the
    /// runtime between batches); `applied` counts them as they go, and the
    /// fetch side is woken after each batch (room in the window). A batch
    /// with a failure comes back here to be settled. If this future is
    /// dropped (the round ended), the thread stops after its batch.
    async fn apply(
        &self,
        sw: &Switch,
        ready: Vec<(CheckedBlock, NodeId)>,
        applied: &Arc<AtomicU64>,
    ) {
        /// Runs its closure when dropped (also when unwinding).
        struct OnDrop<F: FnMut()>(F);
        impl<F: FnMut()> Drop for OnDrop<F> {
            fn drop(&mut self) {
                (self.0)();
            }
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let flag = cancel.clone();
        let _cancel_on_drop = OnDrop(move || flag.store(true, Ordering::SeqCst));
        let (cons, pool, room) =
            (self.consensus.clone(), self.pool.clone(), self.block_arrived.clone());
        let (counter, max) = (applied.clone(), self.cfg.apply_batch);
        self.applying.send_replace(true);
        let applying = self.applying.clone();
        let busy = OnDrop(move || {
            applying.send_replace(false);
        });
        // The first height of the batch being imported, for a panic.
        let current = Arc::new(AtomicU64::new(u64::MAX));
        let at = current.clone();
        let failed = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            let mut batch = ready;
            loop {
                at.store(batch[0].0.block().header.height, Ordering::Relaxed);
                let blocks = batch.iter().map(|(b, _)| b.clone()).collect();
                let results = cons.import_checked_blocking(blocks, None);
                // An orphan here means our chain moved under the path.
                let unapplied = |r: &Result<Processed, BlockError>| {
                    r.as_ref().map_or(true, |p| p.status == ProcessStatus::Orphan)
                };
                if results.len() < batch.len() || results.iter().any(unapplied) {
                    return Some((batch, results));
                }
                counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
                room.notify_one();
                // Checked under the pool lock: a later round's pool is
                // installed only after this round's future was dropped.
                batch = match pool.lock().as_mut() {
                    Some(p) if !cancel.load(Ordering::SeqCst) => p.take_ready(max),
                    _ => Vec::new(),
                };
                if batch.is_empty() {
                    return None;
                }
            }
        })
        .await;
        match failed {
            Ok(None) => {}
            Ok(Some((batch, results))) => {
                let n = self.settle(sw, batch, results).await;
                applied.fetch_add(n, Ordering::Relaxed);
                self.block_arrived.notify_one();
            }
            Err(e) => {
                // The import thread died holding the batch it took from
                // the pool (its writes were rolled back): fetch from that
                // batch's first height again.
                tracing::error!(error = %e, "block sync: import task failed");
                let height = current.load(Ordering::Relaxed);
                if let Some(pool) = self.pool.lock().as_mut() {
                    pool.rewind(height, None, Vec::new());
                }
                self.block_arrived.notify_one();
            }
        }
    }

    /// A block whose body breaks a rule arrived from `peer`: it made or
    /// altered it (its header may be valid, so nothing is remembered as
    /// invalid). It is blamed as for an invalid block ([`Self::blame`]),
    /// its already ready blocks dropped.
    async fn invalid_body(&self, sw: &Switch, peer: &Peer, height: u64, e: BlockError) {
        self.blame(sw, &peer.id(), height, u64::MAX, Vec::new(), &e).await;
    }

    /// `from` sent an invalid block at `height`: the pool rewinds to
    /// `rewind_to` with `rest` put back, dropping `from`'s blocks and
    /// taking it out of the pool (its heights go to others), and it is
    /// reported (a bad block: a ban).
    async fn blame(
        &self,
        sw: &Switch,
        from: &NodeId,
        height: u64,
        rewind_to: u64,
        rest: Vec<(CheckedBlock, NodeId)>,
        e: &BlockError,
    ) {
        tracing::warn!(peer = %from, height, error = %e, "block sync: invalid block");
        if let Some(pool) = self.pool.lock().as_mut() {
            pool.rewind(rewind_to, Some(from), rest);
        }
        if let Some(p) = sw.peer(from) {
            let why = format!("invalid block at height {height}: {e}");
            sw.report(&p, e.misbehavior().unwrap_or(Misbehavior::BadBlock), why).await;
        }
    }

    /// Settles a batch whose import stopped early (`results` holds one
    /// entry per block processed): the blocks before the first that was
    /// not applied count as applied; that one and the rest go back to the
    /// pool. An invalid block blames its sender ([`Self::blame`]); an error
    /// of ours (retried after a tick), an orphan (our chain moved under the
    /// path) or a block not processed blames no one. Returns how many were
    /// applied.
    async fn settle(
        &self,
        sw: &Switch,
        ready: Vec<(CheckedBlock, NodeId)>,
        results: Vec<Result<Processed, BlockError>>,
    ) -> u64 {
        let applied = results
            .iter()
            .take_while(|r| matches!(r, Ok(p) if p.status != ProcessStatus::Orphan))
            .count();
        let rest = ready[applied..].to_vec();
        let Some((first, from)) = rest.first() else { return applied as u64 };
        let (height, from) = (first.block().header.height, *from);
        match results.get(applied) {
            Some(Err(e)) if e.is_peer_fault() => {
                self.blame(sw, &from, height, height, rest, e).await;
            }
            not_applied => {
                tracing::warn!(height, error = ?not_applied.and_then(|r| r.as_ref().err()), "block sync: block not applied; will retry");
                if let Some(pool) = self.pool.lock().as_mut() {
                    pool.rewind(height, None, rest);
                }
                if matches!(not_applied, Some(Err(_))) {
                    tokio::time::sleep(self.cfg.tick).await;
                }
            }
        }
        applied as u64
    }

    /// One `HeadersRequest` to `peer` (locator: `after`, if any, then our
    /// chain's), and its answer. `None` when the peer left or timed out
    /// (then it is disconnected).
    async fn request_headers(
        &self,
        sw: &Switch,
        peer: &Peer,
        claim: &PeerChain,
        after: Option<BlockHash>,
    ) -> Option<Vec<Header>> {
        let mut locator = self.chain().lock().locator();
        if let Some(h) = after {
            locator.insert(0, h);
        }
        locator.truncate(MAX_LOCATOR);
        let (tx, rx) = oneshot::channel();
        self.headers_wait.lock().entry(peer.id()).or_default().push_back(tx);
        let req = pb::HeadersRequest {
            locator: locator.iter().map(|h| h.0.to_vec().into()).collect(),
            stop_hash: claim.tip.0.to_vec().into(),
            // A small first batch gets blocks moving sooner.
            max: if after.is_none() {
                self.cfg.first_headers_batch.clamp(1, self.cfg.max_headers_per_request)
            } else {
                self.cfg.max_headers_per_request
            },
        };
        if peer.send_msg(BLOCKSYNC_CHANNEL, &msg(Sum::HeadersRequest(req))).await.is_err() {
            return None;
        }
        match tokio::time::timeout(self.cfg.headers_timeout, rx).await {
            Ok(Ok(h)) => Some(h),
            Ok(Err(_)) => None, // the peer left
            Err(_) => {
                // Its waiter stays queued: a late answer still matches it
                // (and is dropped) until the peer is gone.
                // The first request unanswered: it claimed the heaviest
                // chain and shows nothing of it, scored as an unbacked
                // claim (the score follows its identity, so coming back to
                // do it again ends in a ban). A later one may queue behind
                // the blocks it is sending us on a slow link: not scored.
                tracing::info!(peer = %peer.id(), "block sync: headers request timed out");
                if after.is_none() {
                    let why = format!(
                        "claimed a heavier chain and sent no headers within {:?}",
                        self.cfg.headers_timeout
                    );
                    sw.report(peer, Misbehavior::UnbackedClaim, why).await;
                }
                sw.stop_peer_for_error(peer, "headers request timed out").await;
                None
            }
        }
    }

    /// Answers a `BlockRequest`, building only what the peer's send budget
    /// takes: wait for room (at most `send_timeout`), read blocks in order
    /// until they fill the room (at least one), send them, repeat. A peer
    /// that leaves the budget full that long does not read what it asked
    /// for ([`Misbehavior::UnreadAnswers`]).
    async fn serve_blocks(&self, sw: &Switch, peer: &Peer, hashes: Vec<Hash>) {
        let mut rest = hashes;
        while !rest.is_empty() {
            if let Err(e) = peer.ready(BLOCKSYNC_CHANNEL).await {
                return sw.report_unread(peer, e, "blocks").await;
            }
            let room = peer.send_room(BLOCKSYNC_CHANNEL);
            // Hold the room in the node-wide budget while reading, so many
            // peers' answers cannot be built at once past it.
            let permit = match peer.reserve_wait(room.max(1)).await {
                Ok(p) => p,
                Err(e) => return sw.report_unread(peer, e, "blocks").await,
            };
            let chain = self.chain().clone();
            let todo = std::mem::take(&mut rest);
            let read = tokio::task::spawn_blocking(move || {
                let c = chain.lock();
                let (mut found, mut bytes) = (Vec::new(), 0usize);
                let mut it = todo.into_iter().peekable();
                while let Some(&h) = it.peek() {
                    // A block that cannot fit is not read (it goes first
                    // in the next round); the first always goes, unasked.
                    if !found.is_empty() {
                        if let Ok(Some(size)) = c.block_encoded_size(&h) {
                            if bytes + size + 16 > room {
                                break;
                            }
                        }
                    }
                    // Each answer is read straight into its message.
                    let answer = match c.block_encoded_framed(&h, block_response_prefix) {
                        Ok(Some(b)) => b,
                        _ => msg(Sum::NoBlockResponse(pb::NoBlockResponse {
                            hash: h.0.to_vec().into(),
                        }))
                        .encode_to_vec(),
                    };
                    // Within the room held for it; the first one always
                    // goes (an empty queue takes one larger message).
                    if !found.is_empty() && bytes + answer.len() > room {
                        break;
                    }
                    bytes += answer.len();
                    found.push(answer);
                    it.next();
                }
                (found, it.collect::<Vec<_>>())
            })
            .await;
            // Stored bytes go out as they are (no decode).
            let Ok((msgs, left)) = read else { return };
            rest = left;
            let mut permit = permit;
            for bytes in msgs {
                // Counted in the budget from the reservation while it waits.
                if let Err(e) = peer.send_reserved(BLOCKSYNC_CHANNEL, bytes, &mut permit).await {
                    return sw.report_unread(peer, e, "blocks").await;
                }
            }
        }
    }

    /// Reports a peer that refused a block it claimed to have.
    async fn report_refusal(&self, sw: &Switch, peer: &Peer, e: PoolError) {
        sw.report(peer, Misbehavior::WithheldData, e.to_string()).await;
    }

    /// Logs refused headers and reports the peer when it is to blame
    /// (`kind`; `None` for a header from the future, maybe clock skew).
    async fn refuse_headers(
        &self,
        sw: &Switch,
        peer: &Peer,
        kind: Option<Misbehavior>,
        why: String,
    ) {
        tracing::info!(peer = %peer.id(), %why, "block sync: headers refused");
        if let Some(kind) = kind {
            sw.report(peer, kind, why).await;
        }
    }

    /// Whether headers of `proven` weight back `claim`; if not, `peer`
    /// lied and is reported (Chia bans peers that lie about weight).
    async fn weight_proven(
        &self,
        sw: &Switch,
        peer: &Peer,
        claim: &PeerChain,
        proven: ruint::aliases::U256,
    ) -> bool {
        if proven >= claim.weight {
            return true;
        }
        let why = format!("claimed weight {} but its headers prove {proven}", claim.weight);
        sw.report(peer, Misbehavior::WeightLie, why).await;
        self.statuses.lock().remove(&peer.id());
        false
    }

    /// Our status as a message.
    fn status_response(&self) -> pb::Message {
        let c = PeerChain::of(&self.chain().lock());
        msg(Sum::StatusResponse(pb::StatusResponse {
            height: c.height,
            weight: c.weight.to_be_bytes::<32>().to_vec().into(),
            tip_hash: c.tip.0.to_vec().into(),
            base_height: 0,
        }))
    }
}

impl Reactor for BlockSyncReactor {
    type Message = pb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(BLOCKSYNC_CHANNEL)
            .priority(2)
            .send_queue_capacity(256)
            .send_queue_bytes(self.cfg.send_queue_bytes)
            .recv_message_capacity(self.cfg.max_msg_bytes)]
    }

    async fn add_peer(&self, peer: &Peer) {
        let _ =
            peer.send_msg(BLOCKSYNC_CHANNEL, &msg(Sum::StatusRequest(pb::StatusRequest {}))).await;
    }

    async fn remove_peer(&self, peer: &Peer, _reason: &StopReason) {
        self.statuses.lock().remove(&peer.id());
        self.headers_wait.lock().remove(&peer.id());
        if let Some(pool) = self.pool.lock().as_mut() {
            pool.remove_peer(&peer.id());
        }
        self.block_arrived.notify_one();
    }

    async fn receive(&self, env: Envelope<pb::Message>) {
        let (sw, peer) = (&env.switch, &env.peer);
        match env.message.sum {
            Some(Sum::StatusRequest(_)) => {
                let _ = peer.send_msg(BLOCKSYNC_CHANNEL, &self.status_response()).await;
            }
            Some(Sum::StatusResponse(s)) => {
                let Some(c) = PeerChain::from_wire(s.height, &s.weight, &s.tip_hash) else {
                    sw.report(peer, Misbehavior::MalformedMessage, "malformed StatusResponse")
                        .await;
                    return;
                };
                self.statuses.lock().insert(peer.id(), c);
                self.status_gen.fetch_add(1, Ordering::Relaxed);
                self.status_arrived.notify_waiters();
            }
            Some(Sum::HeadersRequest(req)) => {
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
                let stop = Hash::from_slice(&req.stop_hash).unwrap_or(Hash::ZERO);
                let max = req.max.min(self.cfg.max_headers_per_request) as usize;
                let headers = self.chain().lock().main_headers_after(&locator, &stop, max);
                let headers = headers.iter().map(Header::to_proto).collect();
                let reply = msg(Sum::HeadersResponse(pb::HeadersResponse { headers }));
                if let Err(e) = peer.send_msg(BLOCKSYNC_CHANNEL, &reply).await {
                    sw.report_unread(peer, e, "headers").await;
                }
            }
            Some(Sum::HeadersResponse(resp)) => {
                let waiter =
                    self.headers_wait.lock().get_mut(&peer.id()).and_then(VecDeque::pop_front);
                let Some(tx) = waiter else {
                    sw.report(peer, Misbehavior::UnsolicitedMessage, "unsolicited HeadersResponse")
                        .await;
                    return;
                };
                if resp.headers.len() > self.cfg.max_headers_per_request as usize {
                    sw.report(
                        peer,
                        Misbehavior::MalformedMessage,
                        format!("{} headers in one answer", resp.headers.len()),
                    )
                    .await;
                    return;
                }
                match resp
                    .headers
                    .iter()
                    .map(Header::from_proto)
                    .collect::<Result<Vec<_>, BlockError>>()
                {
                    Ok(h) => {
                        // A waiter that is gone (its round ended) drops it.
                        let _ = tx.send(h);
                    }
                    Err(e) => sw.report(peer, Misbehavior::MalformedMessage, e.to_string()).await,
                }
            }
            Some(Sum::BlockRequest(req)) => {
                if req.hashes.is_empty() || req.hashes.len() > 32 {
                    sw.report(
                        peer,
                        Misbehavior::MalformedMessage,
                        format!("BlockRequest of {} hashes", req.hashes.len()),
                    )
                    .await;
                    return;
                }
                let Some(hashes) =
                    req.hashes.iter().map(|h| Hash::from_slice(h)).collect::<Option<Vec<_>>>()
                else {
                    sw.report(peer, Misbehavior::MalformedMessage, "block hash not 32 bytes").await;
                    return;
                };
                self.serve_blocks(sw, peer, hashes).await;
            }
            Some(Sum::BlockResponse(resp)) => {
                let block = match resp.block.map(Block::from_proto) {
                    Some(Ok(b)) => b,
                    Some(Err(e)) => {
                        return sw.report(peer, Misbehavior::MalformedMessage, e.to_string()).await
                    }
                    None => {
                        return sw
                            .report(
                                peer,
                                Misbehavior::MalformedMessage,
                                "BlockResponse without a block",
                            )
                            .await
                    }
                };
                self.blocks_received.fetch_add(1, Ordering::Relaxed);
                *self.blocks_from.lock().entry(peer.id()).or_default() += 1;
                // Body rules here, on the receiving task and before any
                // lock (the header is checked by the path below, once).
                let height = block.header.height;
                let block = match BodyChecked::check(&self.params, block) {
                    Ok(b) => b,
                    Err(e) => return self.invalid_body(sw, peer, height, e).await,
                };
                // A late answer to a retired request is not an offence.
                let arrival = self.pool.lock().as_mut().map(|pool| pool.on_block(peer.id(), block));
                if let Some(Ok(a)) = arrival {
                    if a.request_done {
                        self.block_arrived.notify_one();
                    }
                    if a.next_ready {
                        self.ready_arrived.notify_one();
                    }
                }
            }
            Some(Sum::NoBlockResponse(r)) => {
                let Some(hash) = Hash::from_slice(&r.hash) else {
                    return sw
                        .report(peer, Misbehavior::MalformedMessage, "hash not 32 bytes")
                        .await;
                };
                let refused = self.pool.lock().as_mut().map(|p| p.on_no_block(peer.id(), &hash));
                if let Some(Err(e @ PoolError::RefusedClaimed { .. })) = refused {
                    self.report_refusal(sw, peer, e).await;
                }
                self.block_arrived.notify_one();
            }
            None => {
                sw.report(peer, Misbehavior::MalformedMessage, "empty block sync message").await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tests::{add, chain, child_with, params, T};

    #[test]
    fn served_block_bytes_decode_as_a_block_response() {
        let p = params(0);
        let mut c = chain(&p);
        let txs = vec![bytes::Bytes::from_static(b"one"), bytes::Bytes::from(vec![7u8; 300])];
        let b = child_with(&c, &p.genesis_hash, T, txs);
        let h = b.hash();
        add(&mut c, b).unwrap();
        let block = c.block(&h).unwrap().unwrap();
        let bytes = c.block_encoded_framed(&h, block_response_prefix).unwrap().unwrap();
        assert_eq!(
            bytes,
            msg(Sum::BlockResponse(pb::BlockResponse { block: Some(block.to_proto()) }))
                .encode_to_vec()
        );
    }
}
