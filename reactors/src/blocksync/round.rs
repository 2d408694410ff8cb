//! One block sync round as a sans-IO state machine: events in (a headers
//! answer, a block, a refusal, a peer gone, a tick, an import's results),
//! [`Action`]s out (send a request, report or drop a peer, end the round).
//! Time is passed in; the chain is read through a `&Blockchain` the driver
//! lends for header checks. The tokio driver in `super` sends what comes
//! out, imports ready blocks on a blocking thread and feeds back results,
//! so fork, liar, mute-peer and moving-target cases are unit-tested here
//! without sockets (`round/tests.rs`).
//!
//! The round, after Bitcoin Core's headers-first download and Chia's
//! weight-proof check:
//! 1. Ask the target peer (the heaviest claim) for headers after a locator
//!    of what we know of its chain; validate them as headers
//!    ([`Blockchain::extend_header_path`]) batch after batch until its
//!    claimed tip; a path that does not link, breaks a header rule or
//!    falls short of the claimed weight is the peer's fault (Chia bans
//!    weight liars). A header from the future is nobody's fault: the
//!    round ends [`RoundEnd::FromFuture`] with the time it becomes
//!    acceptable, and the claim waits for it.
//! 2. Fill the path with blocks from every peer whose tip lies on it
//!    ([`BlockPool`]); when the path extends our tip, blocks download
//!    while later headers still come, else only once all headers are in
//!    and their weight checked.
//! 3. Apply in height order; an invalid block blames its sender, and its
//!    heights go to others.

use std::time::Duration;

use plexus_p2p::{Misbehavior, NodeId};
use tokio::time::Instant;

use super::pool::{BlockPool, PoolConfig, PoolError, Request};
use crate::chain::{
    BlockError, BlockHash, Blockchain, BodyChecked, CheckedBlock, Header, ProcessStatus, Processed,
};
use crate::service::PeerChain;

/// Settings of a round (from [`BlockSyncConfig`](super::BlockSyncConfig)).
#[derive(Clone, Debug)]
pub struct RoundConfig {
    /// The block pool's settings.
    pub pool: PoolConfig,
    /// Most headers asked for per request after the first.
    pub max_headers_per_request: u32,
    /// Headers asked for in the first request.
    pub first_headers_batch: u32,
    /// Longest wait for a headers answer.
    pub headers_timeout: Duration,
    /// Block requests in flight to the target while its headers come.
    pub header_peer_pending: usize,
    /// A heavier tip off the path ends the round when it is more than
    /// this many blocks above the round's target.
    pub resync_distance: u64,
}

impl RoundConfig {
    /// Small batches (4 blocks a request, 4 then 8 headers, 2 requests to
    /// the target while its headers come, 15 s headers timeout, resync
    /// beyond 16 blocks), so a short chain takes many requests: for tests
    /// and fuzzing (`fuzz/`).
    pub fn small() -> RoundConfig {
        RoundConfig {
            pool: PoolConfig { blocks_per_request: 4, ..PoolConfig::default() },
            max_headers_per_request: 8,
            first_headers_batch: 4,
            headers_timeout: Duration::from_secs(15),
            header_peer_pending: 2,
            resync_distance: 16,
        }
    }
}

/// What the driver is to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `HeadersRequest{locator, stop_hash: stop, max}` to `peer`.
    RequestHeaders {
        /// The peer.
        peer: NodeId,
        /// Block locator, newest first.
        locator: Vec<BlockHash>,
        /// Where the peer may stop (its claimed tip).
        stop: BlockHash,
        /// Most headers wanted.
        max: u32,
    },
    /// Send a `BlockRequest`.
    RequestBlocks(Request),
    /// Report misbehaviour of `peer` to the switch.
    Report {
        /// The peer.
        peer: NodeId,
        /// What it did.
        kind: Misbehavior,
        /// Why, for the log and the peer's record.
        why: String,
    },
    /// Disconnect `peer` (slowness: no score).
    Disconnect {
        /// The peer.
        peer: NodeId,
        /// Why.
        why: String,
    },
    /// The round is over.
    End(RoundEnd),
}

/// Why a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoundEnd {
    /// Every block of the path was handed to the importer.
    Reached,
    /// The target's headers were refused (and it was reported when to
    /// blame) or it lied about its weight.
    Refused,
    /// The target's headers include one from the future: its claim is
    /// not a lie; ask again at `retry_at_ms` (Unix ms).
    FromFuture {
        /// When the first such header becomes acceptable.
        retry_at_ms: u64,
    },
    /// The target left or its headers timed out.
    TargetGone,
    /// No peer is left to fetch from.
    NoPeers,
    /// Peers are left but none serves the missing blocks.
    Stalled,
    /// A heavier tip off the path appeared.
    HeavierElsewhere,
}

/// One round. See the module documentation.
#[derive(Debug)]
pub struct SyncRound {
    cfg: RoundConfig,
    target: NodeId,
    claim: PeerChain,
    /// Our weight when the round began (a claim no heavier is no lie).
    ours: ruint::aliases::U256,
    /// Our tip when the round began: a path from it downloads blocks
    /// while its headers still come.
    our_tip: BlockHash,
    pool: Option<BlockPool>,
    /// The headers request in flight: when sent, and whether it was a
    /// follow-up (a first request unanswered is an unbacked claim).
    headers_pending: Option<(Instant, bool)>,
    /// The path extends our tip (blocks may flow before all headers).
    overlap: bool,
    ended: Option<RoundEnd>,
    idle_since: Option<Instant>,
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

impl SyncRound {
    /// A round syncing to `target`'s `claim`, asking first for headers
    /// after `locator` (what we know of its chain, newest first). `ours`:
    /// our main chain now. Returns the round and its first request.
    pub fn start(
        cfg: RoundConfig,
        target: NodeId,
        claim: PeerChain,
        ours: &PeerChain,
        locator: Vec<BlockHash>,
        now: Instant,
    ) -> (SyncRound, Vec<Action>) {
        let max = cfg.first_headers_batch.clamp(1, cfg.max_headers_per_request.max(1));
        let stop = claim.tip;
        let round = SyncRound {
            cfg,
            target,
            claim,
            ours: ours.weight,
            our_tip: ours.tip,
            pool: None,
            headers_pending: Some((now, false)),
            overlap: false,
            ended: None,
            idle_since: None,
        };
        (round, vec![Action::RequestHeaders { peer: target, locator, stop, max }])
    }

    /// The peer whose headers the round follows.
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// What it claimed.
    pub fn claim(&self) -> &PeerChain {
        &self.claim
    }

    /// Why the round ended, once it has.
    pub fn ended(&self) -> Option<RoundEnd> {
        self.ended
    }

    /// Whether a headers answer from `peer` is awaited.
    pub fn wants_headers(&self, peer: &NodeId) -> bool {
        self.ended.is_none() && *peer == self.target && self.headers_pending.is_some()
    }

    /// The height the round syncs to: the claim until the headers prove
    /// where the path ends.
    pub fn target_height(&self) -> u64 {
        match &self.pool {
            Some(p) if p.headers_complete() => p.target_height(),
            _ => self.claim.height,
        }
    }

    /// Peers in the pool.
    pub fn peer_count(&self) -> usize {
        self.pool.as_ref().map_or(0, BlockPool::peer_count)
    }

    /// Blocks each pool peer delivered this round.
    pub fn served(&self) -> Vec<(NodeId, u64)> {
        self.pool.as_ref().map_or_else(Vec::new, BlockPool::served)
    }

    fn end(&mut self, why: RoundEnd, out: &mut Vec<Action>) {
        if self.ended.is_none() {
            self.ended = Some(why);
            out.push(Action::End(why));
        }
    }

    /// Ends the round for refused headers, reporting the target when it
    /// is to blame; a header from the future ends it `FromFuture`.
    fn refuse(
        &mut self,
        e: &BlockError,
        i: usize,
        n: usize,
        follow_up: bool,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        let (kind, why) = header_fault(i, n, e, follow_up);
        if let BlockError::TimeTooNew { timestamp_ms, limit_ms } = *e {
            let retry_at_ms = now_ms.saturating_add(timestamp_ms.saturating_sub(limit_ms));
            return self.end(RoundEnd::FromFuture { retry_at_ms }, out);
        }
        if let Some(kind) = kind {
            out.push(Action::Report { peer: self.target, kind, why });
        }
        self.end(RoundEnd::Refused, out);
    }

    /// Whether headers of `proven` weight back the claim; if not, the
    /// target lied (reported) and the round ends.
    fn weight_proven(&mut self, proven: ruint::aliases::U256, out: &mut Vec<Action>) -> bool {
        if proven >= self.claim.weight {
            return true;
        }
        let why = format!("claimed weight {} but its headers prove {proven}", self.claim.weight);
        out.push(Action::Report { peer: self.target, kind: Misbehavior::WeightLie, why });
        self.end(RoundEnd::Refused, out);
        false
    }

    fn request_more_headers(&mut self, now: Instant, out: &mut Vec<Action>) {
        let Some(pool) = &self.pool else { return };
        let tip = pool.path().tip_hash();
        self.headers_pending = Some((now, true));
        out.push(Action::RequestHeaders {
            peer: self.target,
            // The path's tip is the newest block we know of its chain; the
            // peer answers from it (anything older is already in the path).
            locator: vec![tip, pool.path().fork()],
            stop: self.claim.tip,
            max: self.cfg.max_headers_per_request.max(1),
        });
    }

    /// A headers answer from `peer` (the caller matched it to a request;
    /// one not awaited is ignored). `chain` validates them; `peers` is the
    /// status table (who can serve the path).
    pub fn on_headers(
        &mut self,
        chain: &Blockchain,
        peer: NodeId,
        headers: &[Header],
        peers: &[(NodeId, PeerChain)],
        now: Instant,
        now_ms: u64,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if !self.wants_headers(&peer) {
            return out;
        }
        let follow_up = self.headers_pending.take().is_some_and(|(_, f)| f);
        let n = headers.len();
        let complete = match self.pool.as_mut() {
            None => {
                if headers.is_empty() {
                    // It claims more work than ours and shows none of it.
                    if self.weight_proven(self.ours, &mut out) {
                        self.end(RoundEnd::Reached, &mut out);
                    }
                    return out;
                }
                let Some(mut path) = chain.header_path(&headers[0].prev_hash) else {
                    let why = "headers do not start on our chain".to_string();
                    out.push(Action::Report { peer, kind: Misbehavior::MalformedMessage, why });
                    self.end(RoundEnd::Refused, &mut out);
                    return out;
                };
                if let Err((i, e)) = chain.extend_header_path(&mut path, headers, now_ms) {
                    self.refuse(&e, i, n, false, now_ms, &mut out);
                    return out;
                }
                let complete = path.tip_hash() == self.claim.tip;
                self.overlap = path.fork() == self.our_tip;
                let mut pool = BlockPool::new(self.cfg.pool.clone(), path, 0);
                // Complete only once the path reaches the claimed tip and
                // its weight is proven (below).
                pool.set_headers_complete(false);
                pool.add_peer(peer, pool.target_height(), now);
                if !complete {
                    // Its header answers must not queue behind many blocks.
                    pool.limit_peer(&peer, Some(self.cfg.header_peer_pending));
                }
                self.pool = Some(pool);
                complete
            }
            Some(pool) => {
                if headers.is_empty() {
                    true
                } else {
                    if let Err((i, e)) = chain.extend_header_path(pool.path_mut(), headers, now_ms)
                    {
                        self.refuse(&e, i, n, follow_up, now_ms, &mut out);
                        return out;
                    }
                    pool.add_peer(peer, pool.target_height(), now);
                    // Claimants whose tip it reached answer for what they
                    // refused.
                    for (id, e) in pool.settle_claims() {
                        let why = e.to_string();
                        out.push(Action::Report { peer: id, kind: Misbehavior::WithheldData, why });
                    }
                    pool.path().tip_hash() == self.claim.tip
                }
            }
        };
        if complete {
            let weight = self.pool.as_ref().map(|p| p.path().weight()).unwrap_or_default();
            if !self.weight_proven(weight, &mut out) {
                return out;
            }
            if let Some(pool) = self.pool.as_mut() {
                pool.set_headers_complete(true);
                pool.limit_peer(&peer, None);
            }
        } else {
            self.request_more_headers(now, &mut out);
        }
        self.add_pool_peers(peers, now);
        out.extend(self.schedule(now));
        out
    }

    /// Whether blocks may be requested: the path extends our tip, or all
    /// its headers are in and their weight proven.
    fn downloading(&self) -> bool {
        self.pool.as_ref().is_some_and(|p| self.overlap || p.headers_complete())
    }

    fn schedule(&mut self, now: Instant) -> Vec<Action> {
        if !self.downloading() || self.ended.is_some() {
            return Vec::new();
        }
        let Some(pool) = self.pool.as_mut() else { return Vec::new() };
        pool.schedule(now).into_iter().map(Action::RequestBlocks).collect()
    }

    /// Adds to the pool every peer that claims the round's tip (it serves
    /// the whole path, also while headers still arrive) or whose claimed
    /// tip lies on the path (it can serve up to that height).
    fn add_pool_peers(&mut self, peers: &[(NodeId, PeerChain)], now: Instant) {
        let claim_tip = self.claim.tip;
        let Some(pool) = self.pool.as_mut() else { return };
        for (id, c) in peers {
            if let Some(h) = pool.path().height_of(&c.tip) {
                pool.add_peer(*id, h, now);
            } else if c.tip == claim_tip {
                pool.add_claimant(*id, c.height, c.tip, now);
            } else if pool.headers_complete()
                && c.height >= pool.target_height()
                && c.weight >= pool.path().weight()
                && pool.has_peer(id)
            {
                // Still ahead of the path on the same chain (it served us).
                pool.add_peer(*id, pool.target_height(), now);
            }
        }
    }

    /// Time passes: the target's headers time out (a first request
    /// unanswered is an unbacked claim, scored), slow peers are dropped,
    /// new requests go out, peers in `peers` (the status table) join, and
    /// the round ends when the path is handed out, nobody can serve it, or
    /// a heavier tip far ahead appeared off it. `importing`: the driver's
    /// import of handed-out blocks still runs (the round is not reached
    /// until it is back, since a failure there rewinds the pool).
    pub fn tick(
        &mut self,
        peers: &[(NodeId, PeerChain)],
        importing: bool,
        now: Instant,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if self.ended.is_some() {
            return out;
        }
        if let Some((sent, follow_up)) = self.headers_pending {
            if now.duration_since(sent) >= self.cfg.headers_timeout {
                self.headers_pending = None;
                if !follow_up {
                    // It claimed the heaviest chain and shows nothing of
                    // it: scored (the score follows its identity, so
                    // coming back to do it again ends in a ban). A later
                    // request may queue behind the blocks it is sending
                    // us on a slow link: not scored.
                    let why = format!(
                        "claimed a heavier chain and sent no headers within {:?}",
                        self.cfg.headers_timeout
                    );
                    out.push(Action::Report {
                        peer: self.target,
                        kind: Misbehavior::UnbackedClaim,
                        why,
                    });
                }
                let why = "headers request timed out".to_string();
                out.push(Action::Disconnect { peer: self.target, why });
                self.end(RoundEnd::TargetGone, &mut out);
                return out;
            }
        }
        let Some(pool) = self.pool.as_mut() else { return out };
        for id in pool.expire(now) {
            pool.drop_peer(&id);
            out.push(Action::Disconnect { peer: id, why: "block sync requests timed out".into() });
        }
        if self.heavier_elsewhere(peers) {
            self.end(RoundEnd::HeavierElsewhere, &mut out);
            return out;
        }
        self.add_pool_peers(peers, now);
        let requests = self.schedule(now);
        let sent = requests.len();
        out.extend(requests);
        let Some(pool) = self.pool.as_ref() else { return out };
        let (peers_left, inflight, ready) =
            (pool.peer_count(), pool.inflight_count(), pool.ready_count());
        let headers_in = pool.headers_complete();
        if headers_in && pool.is_done() {
            if !importing {
                self.end(RoundEnd::Reached, &mut out);
            }
        } else if peers_left == 0 && inflight == 0 && ready == 0 {
            self.end(RoundEnd::NoPeers, &mut out);
        } else if headers_in && inflight == 0 && ready == 0 && sent == 0 {
            // Peers left, but none can serve what is missing.
            let since = *self.idle_since.get_or_insert(now);
            if now.duration_since(since) >= self.cfg.pool.request_timeout {
                self.end(RoundEnd::Stalled, &mut out);
            }
        } else {
            self.idle_since = None;
        }
        out
    }

    /// Whether a peer claims a tip off our path, heavier than the round's
    /// target and far enough ahead of it to be worth a new round.
    fn heavier_elsewhere(&self, peers: &[(NodeId, PeerChain)]) -> bool {
        let Some(pool) = &self.pool else { return false };
        let w = pool.path().weight().max(self.claim.weight);
        let h = pool.target_height().max(self.claim.height);
        peers.iter().any(|(_, c)| {
            c.tip != self.claim.tip
                && pool.path().height_of(&c.tip).is_none()
                && c.weight > w
                && c.height > h + self.cfg.resync_distance
        })
    }

    /// `peer` left: its requests go to others; the round ends when it was
    /// the target and its headers are not all in.
    pub fn on_peer_removed(&mut self, peer: &NodeId) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(pool) = self.pool.as_mut() {
            pool.remove_peer(peer);
        }
        let headers_in = self.pool.as_ref().is_some_and(BlockPool::headers_complete);
        if *peer == self.target && !headers_in {
            self.end(RoundEnd::TargetGone, &mut out);
        }
        out
    }

    /// A block (body checked on arrival) from `peer`. `None` when the
    /// round has no pool yet; `Some(Err)` for one not asked of it (a late
    /// answer to a retired request: no offence).
    pub fn on_block(
        &mut self,
        peer: NodeId,
        block: BodyChecked,
    ) -> Option<Result<super::pool::Arrival, PoolError>> {
        self.pool.as_mut().map(|p| p.on_block(peer, block))
    }

    /// `peer` says it has no block `hash`: a refusal of a block of the
    /// chain it claimed is reported.
    pub fn on_no_block(&mut self, peer: NodeId, hash: &BlockHash) -> Vec<Action> {
        match self.pool.as_mut().map(|p| p.on_no_block(peer, hash)) {
            Some(Err(e @ PoolError::RefusedClaimed { .. })) => {
                vec![Action::Report { peer, kind: Misbehavior::WithheldData, why: e.to_string() }]
            }
            _ => Vec::new(),
        }
    }

    /// Up to `max` blocks ready in height order, for the importer.
    pub fn take_ready(&mut self, max: usize) -> Vec<(CheckedBlock, NodeId)> {
        match self.pool.as_mut() {
            Some(p) if self.ended.is_none() => p.take_ready(max),
            _ => Vec::new(),
        }
    }

    /// A block from `peer` at `height` whose body breaks a rule: it made
    /// or altered it; its ready blocks are dropped, it leaves the pool and
    /// is reported.
    pub fn on_invalid_body(&mut self, peer: NodeId, height: u64, e: &BlockError) -> Vec<Action> {
        self.blame(peer, height, u64::MAX, Vec::new(), e)
    }

    fn blame(
        &mut self,
        from: NodeId,
        height: u64,
        rewind_to: u64,
        rest: Vec<(CheckedBlock, NodeId)>,
        e: &BlockError,
    ) -> Vec<Action> {
        if let Some(pool) = self.pool.as_mut() {
            pool.rewind(rewind_to, Some(&from), rest);
        }
        let why = format!("invalid block at height {height}: {e}");
        vec![Action::Report {
            peer: from,
            kind: e.misbehavior().unwrap_or(Misbehavior::BadBlock),
            why,
        }]
    }

    /// Settles a batch whose import stopped early (`results` holds one
    /// entry per block processed): the blocks before the first that was
    /// not applied count as applied; that one and the rest go back to the
    /// pool. An invalid block blames its sender; an error of ours, an
    /// orphan (our chain moved under the path) or a block not processed
    /// blames no one. Returns how many were applied, whether to pause
    /// before retrying (an error of ours), and what to do.
    pub fn on_applied(
        &mut self,
        batch: Vec<(CheckedBlock, NodeId)>,
        results: &[Result<Processed, BlockError>],
    ) -> (u64, bool, Vec<Action>) {
        let applied = results
            .iter()
            .take_while(|r| matches!(r, Ok(p) if p.status != ProcessStatus::Orphan))
            .count();
        let rest = batch[applied.min(batch.len())..].to_vec();
        let Some((first, from)) = rest.first() else { return (applied as u64, false, Vec::new()) };
        let (height, from) = (first.block().header.height, *from);
        match results.get(applied) {
            Some(Err(e)) if e.is_peer_fault() => {
                (applied as u64, false, self.blame(from, height, height, rest, e))
            }
            not_applied => {
                tracing::warn!(height, error = ?not_applied.and_then(|r| r.as_ref().err()), "block sync: block not applied; will retry");
                if let Some(pool) = self.pool.as_mut() {
                    pool.rewind(height, None, rest);
                }
                (applied as u64, matches!(not_applied, Some(Err(_))), Vec::new())
            }
        }
    }

    /// The import thread died holding a batch starting at `height` (its
    /// writes were rolled back): fetch from there again.
    pub fn on_import_failed(&mut self, height: u64) {
        if let Some(pool) = self.pool.as_mut() {
            pool.rewind(height, None, Vec::new());
        }
    }
}

#[cfg(test)]
mod tests;
