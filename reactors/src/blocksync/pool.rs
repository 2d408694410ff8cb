//! The sans-IO block pool: which block heights of a validated header path
//! to request from which peer, and the blocks that arrived, handed out in
//! height order. Time is passed in; the reactor sends what
//! [`BlockPool::schedule`] returns and feeds back what peers answer.
//!
//! After CometBFT's `BlockPool` (a window of heights ahead of the next one
//! to apply, a cap of pending requests per peer, timeouts that move a
//! request to another peer), with what its users asked for: requests go
//! to faster peers first, the timeout follows each peer's measured rate,
//! and near the low edge of the window a request older than
//! `duplicate_after` is also sent to a second peer, so one slow peer
//! cannot stall the pipeline.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use plexus_p2p::NodeId;
use tokio::time::Instant;

use crate::chain::{BlockHash, BodyChecked, CheckedBlock, HeaderPath};

/// Settings of the pool (part of [`BlockSyncConfig`](super::BlockSyncConfig)).
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Heights requested ahead of the next one to apply. Default 1,024.
    pub window: u64,
    /// Most blocks in one request (at most 32). Default 32.
    pub blocks_per_request: usize,
    /// Most requests pending per peer. Default 16.
    pub max_pending_per_peer: usize,
    /// Longest a request may take. Default 15 s.
    pub request_timeout: Duration,
    /// Shortest timeout, however fast the peer has been. Default 2 s.
    pub min_request_timeout: Duration,
    /// Heights near the low edge of the window that may be asked of a
    /// second peer. Default 32.
    pub low_edge: u64,
    /// Age of a request at the low edge before a second peer is asked.
    /// Default 1 s.
    pub duplicate_after: Duration,
    /// Timeouts in a row after which a peer is dropped. Default 3.
    pub max_timeouts: u32,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            window: 1024,
            blocks_per_request: 32,
            max_pending_per_peer: 16,
            request_timeout: Duration::from_secs(15),
            min_request_timeout: Duration::from_secs(2),
            low_edge: 32,
            duplicate_after: Duration::from_secs(1),
            max_timeouts: 3,
        }
    }
}

/// What a peer did wrong in the pool's eyes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// A block or refusal we did not ask this peer for.
    #[error("block {0} was not requested from this peer")]
    Unsolicited(BlockHash),
    /// It refused a block of the chain it claimed to have.
    #[error("refused block at height {height}, below its claimed height {claimed}")]
    RefusedClaimed {
        /// The height refused.
        height: u64,
        /// The height it claimed.
        claimed: u64,
    },
}

#[derive(Debug)]
struct PoolPeer {
    /// Highest height of the path it can serve.
    height: u64,
    /// Requests in flight: first height → (sent, heights).
    inflight: HashMap<u64, (Instant, Vec<u64>)>,
    /// Blocks per second, smoothed.
    rate: f64,
    delivered: u64,
    rate_at: Instant,
    timeouts: u32,
    /// Heights at or above which it said it has no block.
    refused_from: Option<u64>,
    /// Blocks it delivered, all told.
    served: u64,
    /// The tip it claimed when that tip is not yet known to be on the
    /// path: until the path reaches it, a refusal is no offence (the path
    /// may turn out to lead elsewhere).
    claimed_tip: Option<BlockHash>,
    /// Its own cap on requests in flight (the header peer's while headers
    /// still come, so its header answers do not queue behind blocks).
    max_pending: Option<usize>,
}

impl PoolPeer {
    fn timeout(&self, cfg: &PoolConfig, blocks: usize) -> Duration {
        if self.rate <= 0.0 {
            return cfg.request_timeout;
        }
        let expected = Duration::from_secs_f64(4.0 * blocks as f64 / self.rate);
        expected.clamp(cfg.min_request_timeout, cfg.request_timeout)
    }
}

/// What an arrived block changed, so the driver wakes only who can act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// It completed its request: the peer has room for another.
    pub request_done: bool,
    /// The next height to apply is ready.
    pub next_ready: bool,
}

/// A request to send: `peer` is asked for `hashes`, at `heights`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The peer.
    pub peer: NodeId,
    /// The heights, ascending.
    pub heights: Vec<u64>,
    /// Their hashes.
    pub hashes: Vec<BlockHash>,
}

/// The pool. See the module documentation.
#[derive(Debug)]
pub struct BlockPool {
    cfg: PoolConfig,
    path: HeaderPath,
    /// The next height to hand out.
    next: u64,
    /// Every height from `next` below this is asked for or ready, so
    /// scheduling starts its search here. Lowered whenever a height
    /// becomes free again.
    scan_from: u64,
    /// By id: `expire` and `settle_claims` report in one order every run.
    peers: BTreeMap<NodeId, PoolPeer>,
    /// Who has been asked for each height (not yet arrived).
    asked: HashMap<u64, Vec<NodeId>>,
    ready: BTreeMap<u64, (CheckedBlock, NodeId)>,
    /// False while later headers may still extend the path.
    headers_complete: bool,
    /// Peers given up on ([`BlockPool::drop_peer`]): never added again,
    /// though the status table may list them until the driver's
    /// disconnect lands. At most one entry per peer that joined.
    dropped: HashSet<NodeId>,
}

impl BlockPool {
    /// A pool for the blocks of `path` from `next` (at least the height
    /// after its fork) to its tip.
    pub fn new(cfg: PoolConfig, path: HeaderPath, next: u64) -> BlockPool {
        let next = next.max(path.fork_height() + 1);
        BlockPool {
            cfg,
            path,
            next,
            scan_from: next,
            peers: BTreeMap::new(),
            asked: HashMap::new(),
            ready: BTreeMap::new(),
            headers_complete: true,
            dropped: HashSet::new(),
        }
    }

    /// The path, to extend while blocks download (headers and blocks
    /// overlap); see [`BlockPool::set_headers_complete`].
    pub fn path_mut(&mut self) -> &mut HeaderPath {
        &mut self.path
    }

    /// Marks whether the path is final. A pool made with a path still
    /// growing is set `false` first: it is not [`done`](Self::is_done)
    /// when it has handed out the path so far. Default true.
    pub fn set_headers_complete(&mut self, complete: bool) {
        self.headers_complete = complete;
    }

    /// Whether the path is final.
    pub fn headers_complete(&self) -> bool {
        self.headers_complete
    }

    /// The header path being filled.
    pub fn path(&self) -> &HeaderPath {
        &self.path
    }

    /// The next height to hand out for applying.
    pub fn next_height(&self) -> u64 {
        self.next
    }

    /// The last height of the path.
    pub fn target_height(&self) -> u64 {
        self.path.tip_height()
    }

    /// Whether every block of the final path has been handed out.
    pub fn is_done(&self) -> bool {
        self.headers_complete && self.next > self.path.tip_height()
    }

    /// Peers in the pool.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Whether `peer` is in the pool.
    pub fn has_peer(&self, peer: &NodeId) -> bool {
        self.peers.contains_key(peer)
    }

    /// Blocks each peer delivered.
    pub fn served(&self) -> Vec<(NodeId, u64)> {
        self.peers.iter().map(|(id, p)| (*id, p.served)).collect()
    }

    /// Adds (or updates) a peer that can serve the path up to `height`
    /// (requests never go past the path); a block it then refuses at or
    /// below `height` is an offence.
    pub fn add_peer(&mut self, peer: NodeId, height: u64, now: Instant) {
        self.add(peer, height, None, now);
    }

    /// Adds (or updates) a peer that claims `tip` at `height` while the
    /// path does not reach `tip` yet (headers still arriving): it is asked
    /// for the path's blocks as they come, and a refusal becomes an offence
    /// only once the path holds `tip`.
    pub fn add_claimant(&mut self, peer: NodeId, height: u64, tip: BlockHash, now: Instant) {
        let tip = self.path.height_of(&tip).is_none().then_some(tip);
        self.add(peer, height, tip, now);
    }

    /// Claimants whose claimed tip the path now holds: from here on they
    /// answer for the path like any peer. Those that refused a block at or
    /// below their claimed height meanwhile are returned with that offence
    /// ([`PoolError::RefusedClaimed`]).
    pub fn settle_claims(&mut self) -> Vec<(NodeId, PoolError)> {
        let mut out = Vec::new();
        for (id, p) in self.peers.iter_mut() {
            let Some(tip) = p.claimed_tip else { continue };
            if self.path.height_of(&tip).is_none() {
                continue;
            }
            p.claimed_tip = None;
            if let Some(r) = p.refused_from.filter(|r| *r <= p.height) {
                out.push((*id, PoolError::RefusedClaimed { height: r, claimed: p.height }));
            }
        }
        out
    }

    /// Caps `peer`'s requests in flight at `max` (`None`: the configured
    /// `max_pending_per_peer`).
    pub fn limit_peer(&mut self, peer: &NodeId, max: Option<usize>) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.max_pending = max;
        }
    }

    fn room(&self, p: &PoolPeer) -> bool {
        p.inflight.len() < p.max_pending.unwrap_or(self.cfg.max_pending_per_peer)
    }

    fn add(&mut self, peer: NodeId, height: u64, claimed_tip: Option<BlockHash>, now: Instant) {
        if self.dropped.contains(&peer) {
            return;
        }
        let p = self.peers.entry(peer).or_insert(PoolPeer {
            height,
            inflight: HashMap::new(),
            rate: 0.0,
            delivered: 0,
            rate_at: now,
            timeouts: 0,
            refused_from: None,
            served: 0,
            claimed_tip,
            max_pending: None,
        });
        p.height = p.height.max(height);
        if claimed_tip.is_none() {
            p.claimed_tip = None;
        }
    }

    /// Removes a peer; its requests will go to others.
    pub fn remove_peer(&mut self, peer: &NodeId) {
        if self.peers.remove(peer).is_some() {
            self.scan_from = self.next;
            for who in self.asked.values_mut() {
                who.retain(|p| p != peer);
            }
        }
    }

    /// Removes a peer for the rest of the pool's life (it sent an invalid
    /// block or kept timing out): later `add_peer`/`add_claimant` calls
    /// for it are ignored, so a peer still listed in the status table
    /// while its disconnect is pending is not asked again. (Found by the
    /// blocksync fuzz target: a blamed peer rejoined at every tick and was
    /// asked for the same blocks over and over.)
    pub fn drop_peer(&mut self, peer: &NodeId) {
        self.remove_peer(peer);
        self.dropped.insert(*peer);
    }

    /// New requests: the heights of the window not yet asked for, in
    /// batches of consecutive heights, to the fastest peers with room; then
    /// second requests for old ones at the low edge.
    pub fn schedule(&mut self, now: Instant) -> Vec<Request> {
        self.update_rates(now);
        let mut order: Vec<NodeId> = self.peers.keys().copied().collect();
        // Peers that timed out last go last; then the fastest first.
        order.sort_by(|a, b| {
            let (pa, pb) = (&self.peers[a], &self.peers[b]);
            pa.timeouts.cmp(&pb.timeouts).then(pb.rate.total_cmp(&pa.rate)).then(a.cmp(b))
        });
        let end = self.path.tip_height().min(self.next + self.cfg.window - 1);
        let mut out = Vec::new();
        // Passes over the peers, fastest first, one batch each per pass,
        // so every peer is busy from the start and a faster one, freeing
        // its slots sooner, gets more over time.
        let mut from = self.scan_from.max(self.next);
        loop {
            let mut progressed = false;
            for id in &order {
                let Some(heights) = self.next_batch(id, &mut from, end) else { continue };
                out.push(self.send(*id, heights, now));
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        self.scan_from = from;
        // Second requests at the low edge.
        let edge = end.min(self.next + self.cfg.low_edge - 1);
        for h in self.next..=edge {
            if self.ready.contains_key(&h) {
                continue;
            }
            let Some(who) = self.asked.get(&h) else { continue };
            if who.len() != 1 {
                continue;
            }
            let first = who[0];
            let old = self.peers.get(&first).and_then(|p| {
                p.inflight
                    .values()
                    .find(|(_, hs)| hs.contains(&h))
                    .map(|(t, _)| now.duration_since(*t))
            });
            if old.is_none_or(|age| age < self.cfg.duplicate_after) {
                continue;
            }
            let helper = order.iter().find(|id| {
                let p = &self.peers[*id];
                **id != first
                    && self.room(p)
                    && p.height >= h
                    && p.refused_from.is_none_or(|r| r > h)
            });
            if let Some(id) = helper.copied() {
                out.push(self.send(id, vec![h], now));
            }
        }
        out
    }

    fn free(&self, h: u64) -> bool {
        !self.ready.contains_key(&h) && self.asked.get(&h).is_none_or(|w| w.is_empty())
    }

    /// The next batch for `peer`: consecutive free heights from the first
    /// free one at or after `from` that it can serve. Advances `from` past
    /// the batch when the batch starts at the first free height.
    fn next_batch(&self, peer: &NodeId, from: &mut u64, end: u64) -> Option<Vec<u64>> {
        let p = &self.peers[peer];
        if !self.room(p) {
            return None;
        }
        let limit = end.min(p.height).min(p.refused_from.map_or(u64::MAX, |r| r.saturating_sub(1)));
        while *from <= end && !self.free(*from) {
            *from += 1;
        }
        let mut h = *from;
        while h <= limit && !self.free(h) {
            h += 1;
        }
        let mut heights = Vec::new();
        while h <= limit && heights.len() < self.cfg.blocks_per_request.clamp(1, 32) && self.free(h)
        {
            heights.push(h);
            h += 1;
        }
        if heights.is_empty() {
            return None;
        }
        if heights[0] == *from {
            *from = h;
        }
        Some(heights)
    }

    fn send(&mut self, peer: NodeId, heights: Vec<u64>, now: Instant) -> Request {
        let hashes =
            heights.iter().map(|h| self.path.hash_at(*h).expect("height on the path")).collect();
        for h in &heights {
            self.asked.entry(*h).or_default().push(peer);
        }
        let p = self.peers.get_mut(&peer).expect("scheduled peer");
        p.inflight.insert(heights[0], (now, heights.clone()));
        Request { peer, heights, hashes }
    }

    fn update_rates(&mut self, now: Instant) {
        for p in self.peers.values_mut() {
            let dt = now.duration_since(p.rate_at).as_secs_f64();
            if dt >= 0.5 {
                let sample = p.delivered as f64 / dt;
                p.rate = if p.rate == 0.0 { sample } else { 0.7 * p.rate + 0.3 * sample };
                p.delivered = 0;
                p.rate_at = now;
            }
        }
    }

    /// Forgets `height` from `peer`'s in-flight requests; whether it was
    /// asked of that peer.
    /// `Some(true)` when that completed its request.
    fn settle(&mut self, peer: &NodeId, height: u64) -> Option<bool> {
        let p = self.peers.get_mut(peer)?;
        let k = p.inflight.iter().find(|(_, (_, hs))| hs.contains(&height)).map(|(k, _)| *k)?;
        let (_, hs) = p.inflight.get_mut(&k).expect("found");
        hs.retain(|h| *h != height);
        let done = hs.is_empty();
        if done {
            p.inflight.remove(&k);
        }
        if let Some(who) = self.asked.get_mut(&height) {
            who.retain(|x| x != peer);
        }
        Some(done)
    }

    /// A block from `peer`, its body checked on arrival; the path admits
    /// it as a [`CheckedBlock`] (its header is one the path validated).
    /// Errors: [`PoolError::Unsolicited`] when it was not asked for it (a
    /// block not of the path cannot have been).
    pub fn on_block(&mut self, peer: NodeId, block: BodyChecked) -> Result<Arrival, PoolError> {
        let hash = block.hash();
        let height = block.block().header.height;
        let block = self.path.admit(block).ok_or(PoolError::Unsolicited(hash))?;
        let Some(request_done) = self.settle(&peer, height) else {
            return Err(PoolError::Unsolicited(hash));
        };
        let p = self.peers.get_mut(&peer).expect("settled");
        p.delivered += 1;
        p.served += 1;
        p.timeouts = 0;
        if height >= self.next {
            self.ready.entry(height).or_insert((block, peer));
            // Whoever else was asked need not answer.
            self.asked.remove(&height);
        }
        Ok(Arrival { request_done, next_ready: self.ready.contains_key(&self.next) })
    }

    /// `peer` has no block `hash`. Errors: [`PoolError::Unsolicited`], or
    /// [`PoolError::RefusedClaimed`] for a height it claimed to have; the
    /// height goes to another peer either way.
    pub fn on_no_block(&mut self, peer: NodeId, hash: &BlockHash) -> Result<(), PoolError> {
        let Some(height) = self.path.height_of(hash) else {
            return Err(PoolError::Unsolicited(*hash));
        };
        if self.settle(&peer, height).is_none() {
            return Err(PoolError::Unsolicited(*hash));
        }
        self.scan_from = self.scan_from.min(height);
        let path = &self.path;
        let p = self.peers.get_mut(&peer).expect("settled");
        p.refused_from = Some(p.refused_from.map_or(height, |r| r.min(height)));
        // A claimant whose tip the path has not reached may be on another
        // chain than the path: no blame.
        let proven = p.claimed_tip.is_none_or(|t| path.height_of(&t).is_some());
        if proven && height <= p.height {
            return Err(PoolError::RefusedClaimed { height, claimed: p.height });
        }
        Ok(())
    }

    /// Retires requests past their timeout (they will be sent elsewhere)
    /// and returns the peers that timed out `max_timeouts` times in a row.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let mut slow = Vec::new();
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for id in ids {
            let p = &self.peers[&id];
            let expired: Vec<(u64, Vec<u64>)> = p
                .inflight
                .iter()
                .filter(|(_, (t, hs))| now.duration_since(*t) >= p.timeout(&self.cfg, hs.len()))
                .map(|(k, (_, hs))| (*k, hs.clone()))
                .collect();
            if expired.is_empty() {
                continue;
            }
            self.scan_from = self.next;
            let p = self.peers.get_mut(&id).expect("listed");
            for (k, hs) in expired {
                p.inflight.remove(&k);
                for h in hs {
                    if let Some(who) = self.asked.get_mut(&h) {
                        who.retain(|x| *x != id);
                    }
                }
            }
            p.timeouts += 1;
            if p.timeouts >= self.cfg.max_timeouts {
                slow.push(id);
            }
        }
        slow
    }

    /// Takes up to `max` blocks in height order from the next height on.
    pub fn take_ready(&mut self, max: usize) -> Vec<(CheckedBlock, NodeId)> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.ready.remove(&self.next) {
                Some(b) => {
                    out.push(b);
                    self.next += 1;
                }
                None => break,
            }
        }
        out
    }

    /// Applying failed at `height`: the pool goes back to it and puts
    /// `rest` (the blocks taken from `height` on) back. When `bad` names
    /// the peer whose block was invalid, its blocks (in `rest` and waiting)
    /// are dropped and it leaves the pool for good ([`BlockPool::drop_peer`]),
    /// so those heights go to others.
    pub fn rewind(&mut self, height: u64, bad: Option<&NodeId>, rest: Vec<(CheckedBlock, NodeId)>) {
        self.next = self.next.min(height);
        self.scan_from = self.next;
        for (b, from) in rest {
            if Some(&from) != bad {
                self.ready.insert(b.block().header.height, (b, from));
            }
        }
        if let Some(peer) = bad {
            self.ready.retain(|_, (_, from)| from != peer);
            self.drop_peer(peer);
        }
    }

    /// Blocks waiting to be applied.
    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    /// Requests in flight, all peers.
    pub fn inflight_count(&self) -> usize {
        self.peers.values().map(|p| p.inflight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::tests::{chain, extend, params, T};
    use crate::chain::Blockchain;

    fn id(i: u8) -> NodeId {
        NodeId::from_public_key(&[i; 32])
    }

    /// A source chain of `n` blocks and a pool for all of them on an
    /// empty chain.
    fn setup(n: usize, cfg: PoolConfig) -> (Blockchain, BlockPool) {
        let (src, _, _, pool) = growing(n, n, cfg);
        (src, pool)
    }

    /// A source chain of `n` blocks, an empty chain, the `n` headers, and a
    /// pool on the empty chain whose path holds the first `first` of them
    /// (headers incomplete when `first < n`).
    fn growing(
        n: usize,
        first: usize,
        cfg: PoolConfig,
    ) -> (Blockchain, Blockchain, Vec<crate::chain::Header>, BlockPool) {
        let p = params(0);
        let mut src = chain(&p);
        extend(&mut src, p.genesis_hash, n, T);
        let empty = chain(&p);
        let mut path = empty.header_path(&p.genesis_hash).unwrap();
        let headers: Vec<_> =
            (1..=n as u64).map(|h| *src.header(&src.height_to_hash(h).unwrap()).unwrap()).collect();
        empty.extend_header_path(&mut path, &headers[..first], u64::MAX / 2).unwrap();
        let mut pool = BlockPool::new(cfg, path, 0);
        pool.set_headers_complete(first == n);
        (src, empty, headers, pool)
    }

    fn block(src: &Blockchain, h: u64) -> BodyChecked {
        let b = src.block(&src.height_to_hash(h).unwrap()).unwrap().unwrap();
        BodyChecked::check(src.params(), b).unwrap()
    }

    fn cfg() -> PoolConfig {
        PoolConfig {
            window: 40,
            blocks_per_request: 4,
            max_pending_per_peer: 3,
            ..PoolConfig::default()
        }
    }

    #[test]
    fn requests_spread_over_peers_within_window_and_caps() {
        let (_, mut pool) = setup(100, cfg());
        let t = Instant::now();
        pool.add_peer(id(1), 100, t);
        pool.add_peer(id(2), 6, t); // can serve only up to height 6
        let reqs = pool.schedule(t);
        assert_eq!(pool.next_height(), 1);
        let by = |i: u8| reqs.iter().filter(|r| r.peer == id(i)).collect::<Vec<_>>();
        assert_eq!(by(1).len(), 3, "capped at max_pending_per_peer");
        assert!(by(2).iter().all(|r| r.heights.iter().all(|h| *h <= 6)));
        assert!(!by(2).is_empty(), "the second peer works from the start");
        // No height twice, all within the window, each batch consecutive.
        let mut all: Vec<u64> = reqs.iter().flat_map(|r| r.heights.clone()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
        assert!(all.iter().all(|h| *h >= 1 && *h <= 40));
        for r in &reqs {
            assert!(r.heights.windows(2).all(|w| w[1] == w[0] + 1) && r.heights.len() <= 4);
        }
        // Nothing more until something is answered.
        assert!(pool.schedule(t).iter().all(|r| r.peer != id(1)));
    }

    #[test]
    fn blocks_come_out_in_height_order_only() {
        let (src, mut pool) = setup(20, cfg());
        let t = Instant::now();
        pool.add_peer(id(1), 20, t);
        let reqs = pool.schedule(t);
        assert_eq!(reqs[0].heights, vec![1, 2, 3, 4]);
        assert_eq!(
            pool.on_block(id(2), block(&src, 2)),
            Err(PoolError::Unsolicited(block(&src, 2).hash()))
        );
        pool.on_block(id(1), block(&src, 2)).unwrap();
        assert!(pool.take_ready(10).is_empty(), "height 1 is missing");
        pool.on_block(id(1), block(&src, 1)).unwrap();
        let got: Vec<u64> =
            pool.take_ready(10).iter().map(|(b, _)| b.block().header.height).collect();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(pool.next_height(), 3);
        // A block that is not on the path was never asked for.
        let mut other = block(&src, 3).block().clone();
        other.header.nonce ^= 1;
        let other = BodyChecked::check(src.params(), other).unwrap();
        assert!(pool.on_block(id(1), other).is_err());
    }

    #[test]
    fn timeouts_move_requests_and_drop_a_peer_that_keeps_failing() {
        let c = PoolConfig { max_timeouts: 2, ..cfg() };
        let (_, mut pool) = setup(20, c.clone());
        let t0 = Instant::now();
        pool.add_peer(id(1), 20, t0);
        let first = pool.schedule(t0);
        assert!(first.iter().all(|r| r.peer == id(1)));
        pool.add_peer(id(2), 20, t0);
        let t1 = t0 + c.request_timeout;
        assert!(pool.expire(t1).is_empty(), "one timeout is not yet a drop");
        let again = pool.schedule(t1);
        assert!(again.iter().any(|r| r.peer == id(2) && r.heights.contains(&1)), "{again:?}");
        let t2 = t1 + c.request_timeout;
        let slow = pool.expire(t2);
        assert!(slow.contains(&id(1)), "{slow:?}");
    }

    #[test]
    fn a_slow_request_at_the_low_edge_is_also_sent_elsewhere() {
        let c = PoolConfig { window: 8, ..cfg() };
        let (_, mut pool) = setup(8, c.clone());
        let t0 = Instant::now();
        pool.add_peer(id(1), 8, t0);
        pool.schedule(t0);
        pool.add_peer(id(2), 8, t0);
        assert!(pool.schedule(t0 + c.duplicate_after / 2).is_empty());
        let dup = pool.schedule(t0 + c.duplicate_after);
        assert!(dup.iter().any(|r| r.peer == id(2) && r.heights == vec![1]), "{dup:?}");
    }

    #[test]
    fn a_growing_path_is_served_as_it_grows() {
        let (src, empty, headers, mut pool) = growing(30, 10, cfg());
        let t = Instant::now();
        pool.add_peer(id(1), 30, t); // claims the whole chain
        let reqs = pool.schedule(t);
        assert!(reqs.iter().flat_map(|r| &r.heights).all(|h| *h <= 10), "{reqs:?}");
        for h in 1..=10 {
            pool.on_block(id(1), block(&src, h)).unwrap();
        }
        assert_eq!(pool.take_ready(100).len(), 10);
        assert!(!pool.is_done(), "more headers are coming");
        // More headers: the same peer is asked for them at once.
        empty.extend_header_path(pool.path_mut(), &headers[10..], u64::MAX / 2).unwrap();
        pool.set_headers_complete(true);
        let reqs = pool.schedule(t);
        assert_eq!(reqs[0].heights[0], 11);
        assert!(reqs.iter().all(|r| r.peer == id(1)));
        for h in 11..=30 {
            pool.schedule(t);
            pool.on_block(id(1), block(&src, h)).unwrap();
        }
        assert_eq!(pool.take_ready(100).len(), 20);
        assert!(pool.is_done());
    }

    #[test]
    fn a_claimant_is_blamed_for_refusals_only_once_its_tip_is_on_the_path() {
        let (src, empty, headers, mut pool) = growing(20, 8, cfg());
        let tip = src.tip();
        let t = Instant::now();
        pool.add_claimant(id(1), 20, tip, t);
        pool.add_claimant(id(2), 20, tip, t);
        let reqs = pool.schedule(t);
        let r1 = reqs.iter().find(|r| r.peer == id(1)).unwrap().clone();
        // Not yet an offence: the path may still lead elsewhere.
        assert_eq!(pool.on_no_block(id(1), &r1.hashes[0]), Ok(()));
        assert!(pool.settle_claims().is_empty(), "the path has not reached the tip");
        empty.extend_header_path(pool.path_mut(), &headers[8..], u64::MAX / 2).unwrap();
        let blamed = pool.settle_claims();
        assert_eq!(blamed.len(), 1, "{blamed:?}");
        assert_eq!(blamed[0].0, id(1));
        assert!(matches!(blamed[0].1, PoolError::RefusedClaimed { .. }));
        assert!(pool.settle_claims().is_empty(), "settled once");
    }

    #[test]
    fn refusals_and_rewinds() {
        let (src, mut pool) = setup(20, cfg());
        let t = Instant::now();
        pool.add_peer(id(1), 20, t);
        pool.add_peer(id(2), 20, t);
        let reqs = pool.schedule(t);
        let r2 = reqs.iter().find(|r| r.peer == id(2)).unwrap().clone();
        // Refusing a block below its claimed height is an offence.
        let e = pool.on_no_block(id(2), &r2.hashes[0]).unwrap_err();
        assert!(matches!(e, PoolError::RefusedClaimed { .. }));
        // Peer 1 delivers 1..=4, the block at 2 turns out invalid.
        for h in 1..=4 {
            pool.on_block(id(1), block(&src, h)).unwrap();
        }
        let taken = pool.take_ready(10);
        assert_eq!(taken.len(), 4);
        pool.rewind(2, Some(&id(1)), taken[1..].to_vec());
        assert_eq!(pool.next_height(), 2);
        assert_eq!(pool.ready_count(), 0, "everything from the bad peer is dropped");
        assert!(!pool.has_peer(&id(1)));
        // Heights 2..=4 are asked again, of the other peer.
        let again = pool.schedule(t);
        assert!(again.iter().all(|r| r.peer == id(2)));
    }
}
