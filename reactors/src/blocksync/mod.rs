//! Block sync (channel 0x40): catching up to the heaviest chain from many
//! peers at once, headers first, after Bitcoin Core's headers-first
//! download, Chia's full-node sync and CometBFT's blocksync. Every gap and
//! every fork a peer's status reveals is caught up with here, whatever its
//! depth.
//!
//! The reactor is a thin tokio driver around [`SyncRound`], the sans-IO
//! state machine of one round (`round.rs`, where the steps are described):
//! it picks the heaviest claim in the chain service's peer-chain-status
//! table (filled by the `Status` exchange on the consensus channel; there
//! is no status message here), starts a round when it is heavier than our
//! chain, sends what the round asks, feeds it answers and ticks, and
//! imports ready blocks on a blocking thread through the
//! [`ChainService`]. While a round runs, block relay leaves catching up to
//! it ([`ChainService::set_syncing`]).
//!
//! A claim whose headers include one from the future is not a lie and is
//! not synced to until that header's time comes; a claim refused for a
//! fault is dropped from the table. Progress is logged every
//! `log_interval` and published as a [`SyncProgress`] watch. A restart
//! resumes from the stored chain: the locator starts at its tip, so
//! nothing stored is fetched again.

mod pool;
mod round;

use std::collections::{BTreeSet, HashMap};
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
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

pub use pool::{Arrival, BlockPool, PoolConfig, PoolError, Request};
pub use round::{Action, RoundConfig, RoundEnd, SyncRound};

use crate::chain::{
    Block, BlockError, BlockHash, BodyChecked, CheckedBlock, Hash, Header, NetworkParams,
    ProcessStatus, Processed,
};
use crate::consensus::MAX_LOCATOR;
use crate::service::{ChainService, PeerChain};

/// The block sync channel.
pub const BLOCKSYNC_CHANNEL: u8 = 0x40;

/// Block sync settings.
#[derive(Clone, Debug)]
pub struct BlockSyncConfig {
    /// The block pool's settings (window, per-peer cap, timeouts).
    pub pool: PoolConfig,
    /// How long after start the first round waits for statuses (from the
    /// consensus channel's `Status` exchange), and the pause after a round
    /// that moved nothing. Default 3 s.
    pub status_wait: Duration,
    /// Statuses the first round waits for (fewer once `status_wait` has
    /// passed). Default 3.
    pub min_status_peers: usize,
    /// How often the status table is looked at when nothing wakes the
    /// sync task (every status change does). Default 10 s.
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
    /// A round starts for any claim heavier than our chain, whatever its
    /// height. This many blocks is the distance that matters otherwise:
    /// a round is logged at INFO when its target is further above us, and
    /// a heavier tip off the round's path ends the round when it is
    /// further above the round's target. Default 16.
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

impl BlockSyncConfig {
    /// The block sync channel as this reactor declares it: priority 2, 256
    /// messages and `send_queue_bytes` queued, messages up to
    /// `max_msg_bytes` (one `BlockResponse`), and the receive window twice
    /// the smallest one that holds such a message (docs/protocol.md §4.2).
    pub fn channel(&self) -> ChannelDescriptor {
        ChannelDescriptor::new(BLOCKSYNC_CHANNEL)
            .priority(2)
            .send_queue_capacity(256)
            .send_queue_bytes(self.send_queue_bytes)
            .recv_message_capacity(self.max_msg_bytes)
    }
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
    chain: Arc<ChainService>,
    /// The chain's network (body rules of arriving blocks).
    params: Arc<NetworkParams>,
    /// The running round, if any.
    round: Arc<Mutex<Option<SyncRound>>>,
    /// Headers requests sent to each peer and not answered yet: a peer's
    /// channel is handled in order, so each answer belongs to the oldest;
    /// an answer the round no longer wants (it ended) is dropped, one
    /// nobody asked for is unsolicited.
    headers_owed: Mutex<HashMap<NodeId, u32>>,
    /// Claims not to sync to before a time (Unix ms): their headers
    /// include one from the future. Keyed by peer, with the claimed tip.
    deferred: Mutex<HashMap<NodeId, (BlockHash, u64)>>,
    /// Wakes the round loop: an answer arrived or room was made.
    wake: Arc<Notify>,
    /// Wakes the apply side: a block arrived.
    ready_arrived: Notify,
    progress: watch::Sender<SyncProgress>,
    /// True while an apply thread runs (it outlives a round that ended
    /// while it imported a batch; the next round waits for it).
    applying: Arc<watch::Sender<bool>>,
    blocks_received: AtomicU64,
    blocks_from: Mutex<HashMap<NodeId, u64>>,
}

impl std::fmt::Debug for BlockSyncReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockSyncReactor").field("progress", &*self.progress.borrow()).finish()
    }
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
    /// A reactor that syncs `chain` (statuses from its table, blocks
    /// imported through it).
    pub fn new(cfg: BlockSyncConfig, chain: Arc<ChainService>) -> BlockSyncReactor {
        let params = chain.with_chain(|c| c.params().clone());
        BlockSyncReactor {
            cfg,
            chain,
            params,
            round: Arc::new(Mutex::new(None)),
            headers_owed: Mutex::new(HashMap::new()),
            deferred: Mutex::new(HashMap::new()),
            wake: Arc::new(Notify::new()),
            ready_arrived: Notify::new(),
            progress: watch::channel(SyncProgress::default()).0,
            applying: Arc::new(watch::channel(false).0),
            blocks_received: AtomicU64::new(0),
            blocks_from: Mutex::new(HashMap::new()),
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

    fn round_config(&self) -> RoundConfig {
        RoundConfig {
            pool: self.cfg.pool.clone(),
            max_headers_per_request: self.cfg.max_headers_per_request,
            first_headers_batch: self.cfg.first_headers_batch,
            headers_timeout: self.cfg.headers_timeout,
            header_peer_pending: self.cfg.header_peer_pending,
            resync_distance: self.cfg.resync_distance,
        }
    }

    /// Starts the sync task for `switch`; it ends when the switch stops.
    pub fn start(self: &Arc<Self>, switch: &Switch) {
        let (me, sw) = (self.clone(), switch.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = me.run(&sw) => {}
                _ = sw.stopped() => {}
            }
            me.chain.set_syncing(false);
        });
    }

    /// Watches the status table and runs a round whenever a peer claims a
    /// heavier chain than ours; before the first round it waits up to
    /// `status_wait` for `min_status_peers` statuses, so the target is the
    /// heaviest of several.
    async fn run(&self, sw: &Switch) {
        let started = Instant::now();
        loop {
            // Registered before the table is read, so a change meanwhile
            // still wakes the wait below.
            let changed = self.chain.status_changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let ours = self.chain.status();
            self.publish(false, ours.height, ours.height, 0.0, 0, None);
            let waiting = self.chain.peer_chain_count() < self.cfg.min_status_peers.max(1)
                && started.elapsed() < self.cfg.status_wait;
            let best = if waiting { None } else { self.best_peer(sw, &ours) };
            let Some((peer, claim)) = best else {
                let wait = if waiting {
                    self.cfg.status_wait.saturating_sub(started.elapsed())
                } else {
                    self.cfg.status_interval
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = changed => {}
                }
                continue;
            };
            self.chain.set_syncing(true);
            self.progress.send_modify(|p| p.rounds += 1);
            if claim.height > ours.height + self.cfg.resync_distance {
                tracing::info!(peer = %peer.id(), height = claim.height, ours = ours.height, "block sync starts");
            } else {
                tracing::debug!(peer = %peer.id(), height = claim.height, ours = ours.height, "block sync starts");
            }
            let end = self.round(sw, &peer, claim.clone(), &ours).await;
            *self.round.lock() = None;
            // An apply thread still importing its last batch finishes
            // before our chain state is read again.
            let _ = self.applying.subscribe().wait_for(|busy| !busy).await;
            self.chain.set_syncing(false);
            match end {
                RoundEnd::FromFuture { retry_at_ms } => {
                    tracing::info!(peer = %peer.id(), retry_at_ms, "block sync: its chain is in our future; waiting for its time");
                    self.deferred.lock().insert(peer.id(), (claim.tip, retry_at_ms));
                }
                RoundEnd::Refused => self.chain.forget_peer(&peer.id()),
                _ => {}
            }
            if self.chain.status().height == ours.height && end != RoundEnd::Reached {
                // A round that moved nothing: pause before the next,
                // rather than spin.
                tokio::time::sleep(self.cfg.status_wait).await;
            }
        }
    }

    /// The heaviest claim heavier than `ours` that is not deferred.
    fn best_peer(&self, sw: &Switch, ours: &PeerChain) -> Option<(Peer, PeerChain)> {
        let now_ms = self.chain.now_ms();
        let mut deferred = self.deferred.lock();
        deferred.retain(|_, (_, at)| *at > now_ms);
        let (id, claim) = self
            .chain
            .peer_chains()
            .into_iter()
            .filter(|(id, c)| {
                c.weight > ours.weight && deferred.get(id).is_none_or(|(t, _)| *t != c.tip)
            })
            .max_by(|a, b| a.1.weight.cmp(&b.1.weight).then(b.0.cmp(&a.0)))?;
        Some((sw.peer(&id)?, claim))
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

    /// Carries out what the round asked for.
    async fn execute(&self, sw: &Switch, actions: Vec<Action>) -> Option<RoundEnd> {
        let mut end = None;
        for a in actions {
            match a {
                Action::RequestHeaders { peer, locator, stop, max } => {
                    let Some(p) = sw.peer(&peer) else { continue };
                    let mut locator = locator;
                    locator.truncate(MAX_LOCATOR);
                    let req = pb::HeadersRequest {
                        locator: locator.iter().map(|h| h.0.to_vec().into()).collect(),
                        stop_hash: stop.0.to_vec().into(),
                        max,
                    };
                    *self.headers_owed.lock().entry(peer).or_default() += 1;
                    // A peer that is gone ends the round through remove_peer.
                    let _ = p.send_msg(BLOCKSYNC_CHANNEL, &msg(Sum::HeadersRequest(req))).await;
                }
                Action::RequestBlocks(r) => self.send_request(sw, r),
                Action::Report { peer, kind, why } => {
                    if let Some(p) = sw.peer(&peer) {
                        tracing::info!(peer = %peer, %why, "block sync: peer at fault");
                        sw.report(&p, kind, why).await;
                    }
                }
                Action::Disconnect { peer, why } => {
                    if let Some(p) = sw.peer(&peer) {
                        tracing::info!(peer = %peer, %why, "block sync: disconnecting");
                        sw.stop_peer_for_error(&p, &why).await;
                    }
                }
                Action::End(e) => end = Some(e),
            }
        }
        end
    }

    /// One round to `claim` of `peer`: the state machine driven by ticks
    /// and answers, side by side with the import of ready blocks; returns
    /// why it ended.
    async fn round(
        &self,
        sw: &Switch,
        peer: &Peer,
        claim: PeerChain,
        ours: &PeerChain,
    ) -> RoundEnd {
        let locator = self.chain.locator_for(&peer.id());
        let (round, first) =
            SyncRound::start(self.round_config(), peer.id(), claim, ours, locator, Instant::now());
        *self.round.lock() = Some(round);
        if let Some(end) = self.execute(sw, first).await {
            return end;
        }
        let applied = Arc::new(AtomicU64::new(0));
        tokio::select! {
            end = self.tick_loop(sw, &applied) => end,
            _ = self.apply_loop(sw, &applied) => RoundEnd::Reached,
        }
    }

    /// Ticks the round every `tick` (or when woken), carries out what it
    /// asks, and logs progress; returns when the round ends.
    async fn tick_loop(&self, sw: &Switch, applied: &AtomicU64) -> RoundEnd {
        let mut last_log = Instant::now();
        loop {
            let now = Instant::now();
            let peers = self.chain.peer_chains();
            let importing = *self.applying.borrow();
            let (actions, target, pool_peers) = {
                let mut guard = self.round.lock();
                let Some(r) = guard.as_mut() else { return RoundEnd::TargetGone };
                if let Some(end) = r.ended() {
                    return end;
                }
                (r.tick(&peers, importing, now), r.target_height(), r.peer_count())
            };
            if let Some(end) = self.execute(sw, actions).await {
                return end;
            }
            let since = now.duration_since(last_log);
            if since >= self.cfg.log_interval {
                let height = self.chain.status().height;
                let rate = applied.swap(0, Ordering::Relaxed) as f64 / since.as_secs_f64();
                let eta = (rate > 0.0).then(|| target.saturating_sub(height) as f64 / rate);
                tracing::info!(height, target, blocks_per_s = rate, peers = pool_peers, eta_s = ?eta, "block sync");
                self.publish(true, height, target, rate, pool_peers, eta);
                last_log = now;
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.cfg.tick) => {}
            }
        }
    }

    /// Applies blocks in height order as they become ready; never returns
    /// on its own (the tick loop ends the round).
    async fn apply_loop(&self, sw: &Switch, applied: &Arc<AtomicU64>) {
        loop {
            let ready = match self.round.lock().as_mut() {
                Some(r) => r.take_ready(self.cfg.apply_batch),
                None => Vec::new(),
            };
            if ready.is_empty() {
                tokio::select! {
                    _ = self.ready_arrived.notified() => {}
                    _ = tokio::time::sleep(self.cfg.tick) => {}
                }
                continue;
            }
            self.apply(sw, ready, applied).await;
        }
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
                if let Some(round) = self.round.lock().as_mut() {
                    round.on_peer_removed(&r.peer);
                }
            }
        }
    }

    /// Applies `ready` (consecutive heights) through the chain service on
    /// a blocking thread ([`ChainService::blocking`]: inline in a
    /// simulation), which then goes on with the next ready blocks
    /// itself, batch after batch, until none is ready (no trip through the
    /// runtime between batches); `applied` counts them as they go, and the
    /// round loop is woken after each batch (room in the window). A batch
    /// with a failure comes back here to be settled by the round. If this
    /// future is dropped (the round ended), the thread stops after its
    /// batch (an ended round hands out nothing more).
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
        let (chain, round, wake) = (self.chain.clone(), self.round.clone(), self.wake.clone());
        let (counter, max) = (applied.clone(), self.cfg.apply_batch);
        self.applying.send_replace(true);
        let applying = self.applying.clone();
        let busy = OnDrop(move || {
            applying.send_replace(false);
        });
        // The first height of the batch being imported, for a panic.
        let current = Arc::new(AtomicU64::new(u64::MAX));
        let at = current.clone();
        // Who served each applied batch: a block sync peer that gives us
        // new blocks is protected as a consensus relayer is.
        let servers = Arc::new(Mutex::new(BTreeSet::new()));
        let served = servers.clone();
        // Through the chain service's one blocking seam (inline in a
        // simulation, so a run stays a function of its seed).
        let failed = self
            .chain
            .blocking(move || {
                let _busy = busy;
                let mut batch = ready;
                loop {
                    at.store(batch[0].0.block().header.height, Ordering::Relaxed);
                    let blocks = batch.iter().map(|(b, _)| b.clone()).collect();
                    let results = chain.import_checked_blocking(blocks, None);
                    // An orphan here means our chain moved under the path.
                    let unapplied = |r: &Result<Processed, BlockError>| {
                        r.as_ref().map_or(true, |p| p.status == ProcessStatus::Orphan)
                    };
                    if results.len() < batch.len() || results.iter().any(unapplied) {
                        return Some((batch, results));
                    }
                    counter.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    served.lock().extend(batch.iter().map(|(_, from)| *from));
                    wake.notify_one();
                    // Checked under the round lock: a later round is installed
                    // only after this round's future was dropped.
                    batch = match round.lock().as_mut() {
                        Some(r) if !cancel.load(Ordering::SeqCst) => r.take_ready(max),
                        _ => Vec::new(),
                    };
                    if batch.is_empty() {
                        return None;
                    }
                }
            })
            .await;
        for peer in std::mem::take(&mut *servers.lock()) {
            sw.note_novel_block(&peer);
        }
        match failed {
            Ok(None) => {}
            Ok(Some((batch, results))) => {
                let settled = self.round.lock().as_mut().map(|r| r.on_applied(batch, &results));
                if let Some((n, pause, actions)) = settled {
                    applied.fetch_add(n, Ordering::Relaxed);
                    self.execute(sw, actions).await;
                    if pause {
                        tokio::time::sleep(self.cfg.tick).await;
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "block sync: import task failed");
                let height = current.load(Ordering::Relaxed);
                if let Some(r) = self.round.lock().as_mut() {
                    r.on_import_failed(height);
                }
            }
        }
        self.wake.notify_one();
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
            let chain = self.chain.clone();
            let todo = std::mem::take(&mut rest);
            let read = self
                .chain
                .blocking(move || {
                    chain.with_chain(|c| {
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
}

impl Reactor for BlockSyncReactor {
    type Message = pb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![self.cfg.channel()]
    }

    async fn remove_peer(&self, peer: &Peer, _reason: &StopReason) {
        self.headers_owed.lock().remove(&peer.id());
        self.deferred.lock().remove(&peer.id());
        if let Some(round) = self.round.lock().as_mut() {
            round.on_peer_removed(&peer.id());
        }
        self.wake.notify_one();
    }

    async fn receive(&self, env: Envelope<pb::Message>) {
        let (sw, peer) = (&env.switch, &env.peer);
        match env.message.sum {
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
                let max = crate::consensus::answer_limit(req.max, self.cfg.max_headers_per_request);
                let headers = self.chain.with_chain(|c| c.main_headers_after(&locator, &stop, max));
                let headers = headers.iter().map(Header::to_proto).collect();
                let reply = msg(Sum::HeadersResponse(pb::HeadersResponse { headers }));
                if let Err(e) = peer.send_msg(BLOCKSYNC_CHANNEL, &reply).await {
                    sw.report_unread(peer, e, "headers").await;
                }
            }
            Some(Sum::HeadersResponse(resp)) => {
                let owed = {
                    let mut owed = self.headers_owed.lock();
                    match owed.get_mut(&peer.id()) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            true
                        }
                        _ => false,
                    }
                };
                if !owed {
                    sw.report(peer, Misbehavior::UnsolicitedMessage, "unsolicited HeadersResponse")
                        .await;
                    return;
                }
                if resp.headers.len() > self.cfg.max_headers_per_request as usize {
                    sw.report(
                        peer,
                        Misbehavior::MalformedMessage,
                        format!("{} headers in one answer", resp.headers.len()),
                    )
                    .await;
                    return;
                }
                let headers = match resp
                    .headers
                    .iter()
                    .map(Header::from_proto)
                    .collect::<Result<Vec<_>, BlockError>>()
                {
                    Ok(h) => h,
                    Err(e) => {
                        return sw.report(peer, Misbehavior::MalformedMessage, e.to_string()).await
                    }
                };
                let peers = self.chain.peer_chains();
                let (now, now_ms) = (Instant::now(), self.chain.now_ms());
                // Round, then chain: the round's header checks read it.
                let actions = {
                    let mut guard = self.round.lock();
                    match guard.as_mut() {
                        // An answer a finished round asked for is dropped.
                        Some(r) if r.wants_headers(&peer.id()) => self.chain.with_chain(|c| {
                            r.on_headers(c, peer.id(), &headers, &peers, now, now_ms)
                        }),
                        _ => Vec::new(),
                    }
                };
                self.execute(sw, actions).await;
                self.wake.notify_one();
                self.ready_arrived.notify_one();
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
                    Err(e) => {
                        tracing::warn!(peer = %peer.id(), height, error = %e, "block sync: invalid block");
                        let actions = match self.round.lock().as_mut() {
                            Some(r) => r.on_invalid_body(peer.id(), height, &e),
                            None => Vec::new(),
                        };
                        self.execute(sw, actions).await;
                        return;
                    }
                };
                // A late answer to a retired request is not an offence.
                let arrival = self.round.lock().as_mut().and_then(|r| r.on_block(peer.id(), block));
                if let Some(Ok(a)) = arrival {
                    if a.request_done {
                        self.wake.notify_one();
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
                let actions = match self.round.lock().as_mut() {
                    Some(r) => r.on_no_block(peer.id(), &hash),
                    None => Vec::new(),
                };
                self.execute(sw, actions).await;
                self.wake.notify_one();
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
