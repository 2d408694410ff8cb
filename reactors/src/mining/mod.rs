//! Proof-of-work mining: the [`HeaderHasher`] inner loop and the
//! [`Miner`], worker threads fed through crossbeam channels.
//!
//! One coordinator thread asks a [`WorkSource`] for a block template,
//! hands every worker a job (the header and its own slice of the nonce
//! space) and waits for a solution, a new-work signal or a stop. Workers
//! hash `batch` nonces at a time and look for a newer job between batches,
//! so a new tip or new transactions restart the work within one batch
//! (about a millisecond). A solution goes back to the source, which
//! validates, stores and broadcasts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use sha2::{Digest, Sha256};

use crate::chain::{target_from_bits, Block, Header};

/// Hashes one header at many nonces: SHA-256 runs over the first 64 bytes
/// once (the midstate), then two compressions per nonce: the last 32
/// header bytes with padding, and the second SHA-256 over the digest.
#[derive(Clone)]
pub struct HeaderHasher {
    mid: Sha256,
    tail: [u8; Header::SIZE - 64],
}

impl HeaderHasher {
    /// The hasher for `header` (its nonce is ignored).
    pub fn new(header: &Header) -> HeaderHasher {
        let bytes = header.to_bytes();
        let mut mid = Sha256::new();
        mid.update(&bytes[..64]);
        HeaderHasher { mid, tail: bytes[64..].try_into().expect("32 bytes") }
    }

    /// The block hash with `nonce`, as bytes (a big-endian number).
    #[inline]
    pub fn hash(&mut self, nonce: u64) -> [u8; 32] {
        self.tail[Header::NONCE_OFFSET - 64..].copy_from_slice(&nonce.to_le_bytes());
        let mut s = self.mid.clone();
        s.update(self.tail);
        Sha256::digest(s.finalize()).into()
    }

    /// The first nonce in `start..start + count` whose hash is at most
    /// `target` (32 bytes, big-endian).
    #[inline]
    pub fn search(&mut self, target: &[u8; 32], start: u64, count: u64) -> Option<u64> {
        (start..start.saturating_add(count)).find(|&n| self.hash(n) <= *target)
    }
}

/// Sets `header.nonce` to one meeting its target, trying at most
/// `max_tries` nonces from the current one. Returns whether it found one
/// (false as well for invalid bits). For tests and tools; the [`Miner`]
/// runs the same loop on many threads.
pub fn solve(header: &mut Header, max_tries: u64) -> bool {
    let Some(target) = target_from_bits(header.bits) else { return false };
    let target = target.to_be_bytes::<32>();
    match HeaderHasher::new(header).search(&target, header.nonce, max_tries) {
        Some(n) => {
            header.nonce = n;
            true
        }
        None => false,
    }
}

/// Where the miner gets its work and puts its blocks.
pub trait WorkSource: Send + Sync + 'static {
    /// A block to mine on the current tip (nonce to be found), or `None`
    /// when there is nothing to mine yet.
    fn template(&self) -> Option<Block>;
    /// A solved block: validate, store and broadcast it, and say what
    /// became of it.
    fn submit(&self, block: Block) -> Submitted;
}

/// What became of a submitted block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Stored (and broadcast).
    Accepted,
    /// Refused for itself (stale, invalid): mining goes on.
    Refused,
    /// It could not be stored (disk full, a broken store): the miner
    /// pauses (`MinerConfig::store_retry`, doubling up to
    /// `store_retry_max`) instead of mining blocks it cannot keep.
    NotStored,
}

/// Miner settings.
#[derive(Clone, Debug)]
pub struct MinerConfig {
    /// Worker threads. Default 1.
    pub threads: usize,
    /// Nonces hashed between looks for a newer job. Default 16,384 (about
    /// 1 ms on one core with SHA extensions).
    pub batch: u64,
    /// How often the hash rate figure is updated. Default 1 s.
    pub rate_interval: Duration,
    /// After a block that could not be stored, mining pauses this long;
    /// each further failure doubles it. Default 1 s.
    pub store_retry: Duration,
    /// The longest such pause. Default 60 s.
    pub store_retry_max: Duration,
}

impl Default for MinerConfig {
    fn default() -> Self {
        MinerConfig {
            threads: 1,
            batch: 16_384,
            rate_interval: Duration::from_secs(1),
            store_retry: Duration::from_secs(1),
            store_retry_max: Duration::from_secs(60),
        }
    }
}

#[derive(Default)]
struct Stats {
    hashes: AtomicU64,
    blocks: AtomicU64,
    /// Hashes per second over the last `rate_interval`, as f64 bits.
    rate: AtomicU64,
}

struct Job {
    /// Nothing to mine: wait for the next job.
    idle: bool,
    header: Header,
    target: [u8; 32],
    start: u64,
    id: u64,
}

enum Control {
    NewWork,
    Stop,
}

/// A handle that restarts the miner's work (a new tip, new transactions).
#[derive(Clone, Debug)]
pub struct MinerNotifier(Sender<Control>);

impl MinerNotifier {
    /// Asks the miner to take a fresh template. Cheap; bursts coalesce.
    pub fn new_work(&self) {
        let _ = self.0.try_send(Control::NewWork);
    }
}

/// Running miner threads. Dropping it stops them.
pub struct Miner {
    control: Sender<Control>,
    stats: Arc<Stats>,
    coordinator: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Miner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Miner")
            .field("hashes", &self.hashes())
            .field("blocks", &self.blocks_found())
            .finish()
    }
}

impl Miner {
    /// Starts `cfg.threads` workers (at least one) and the coordinator.
    pub fn start(cfg: MinerConfig, source: Arc<dyn WorkSource>) -> Miner {
        let (control, control_rx) = crossbeam_channel::bounded(16);
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let coordinator = std::thread::Builder::new()
            .name("miner".into())
            .spawn(move || coordinate(cfg, source, control_rx, st))
            .expect("spawning the miner thread");
        Miner { control, stats, coordinator: Some(coordinator) }
    }

    /// A handle to restart the work from other tasks.
    pub fn notifier(&self) -> MinerNotifier {
        MinerNotifier(self.control.clone())
    }

    /// Asks for a fresh template (see [`MinerNotifier::new_work`]).
    pub fn new_work(&self) {
        self.notifier().new_work();
    }

    /// Hashes tried since start.
    pub fn hashes(&self) -> u64 {
        self.stats.hashes.load(Ordering::Relaxed)
    }

    /// Blocks found since start.
    pub fn blocks_found(&self) -> u64 {
        self.stats.blocks.load(Ordering::Relaxed)
    }

    /// Hashes per second over the last rate interval.
    pub fn hash_rate(&self) -> f64 {
        f64::from_bits(self.stats.rate.load(Ordering::Relaxed))
    }

    /// Stops the workers and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(t) = self.coordinator.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Miner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn coordinate(
    cfg: MinerConfig,
    source: Arc<dyn WorkSource>,
    control: Receiver<Control>,
    stats: Arc<Stats>,
) {
    let threads = cfg.threads.max(1) as u64;
    let (found_tx, found_rx) = crossbeam_channel::unbounded::<(u64, Header)>();
    let mut workers = Vec::new();
    for i in 0..threads {
        let (job_tx, job_rx) = crossbeam_channel::bounded::<Job>(1);
        let (found, stats, batch) = (found_tx.clone(), stats.clone(), cfg.batch.max(1));
        let h = std::thread::Builder::new()
            .name(format!("miner-{i}"))
            .spawn(move || work(job_rx, found, stats, batch))
            .expect("spawning a miner worker");
        workers.push((job_tx, h));
    }
    let mut job_id = 0u64;
    let mut block: Option<Block> = None;
    let mut rate_at = (Instant::now(), 0u64);
    let tick = crossbeam_channel::tick(cfg.rate_interval);
    let mut fresh = true;
    // A paused miner (its blocks could not be stored): until when, and the
    // pause after the next failure.
    let mut paused_until: Option<Instant> = None;
    let mut next_pause = cfg.store_retry;
    loop {
        if paused_until.is_some_and(|t| Instant::now() < t) {
            // Checked again at the next tick or signal.
        } else if fresh {
            fresh = false;
            paused_until = None;
            job_id += 1;
            block = source.template();
            if let Some(b) = &block {
                let target = target_from_bits(b.header.bits).map(|t| t.to_be_bytes::<32>());
                for (i, (tx, _)) in workers.iter().enumerate() {
                    // Each worker takes its own slice of the nonce space.
                    let start = (u64::MAX / threads) * i as u64;
                    let job = Job {
                        idle: false,
                        header: b.header,
                        target: target.unwrap_or([0; 32]),
                        start,
                        id: job_id,
                    };
                    // A worker's slot holds one job; replace a stale one.
                    if let Err(crossbeam_channel::TrySendError::Full(job)) = tx.try_send(job) {
                        let _ = tx.send(job);
                    }
                }
            }
        }
        select! {
            recv(control) -> c => {
                // Coalesce a burst of signals; a stop among them wins.
                let mut stop = !matches!(c, Ok(Control::NewWork));
                for more in control.try_iter() {
                    stop |= matches!(more, Control::Stop);
                }
                if stop {
                    break;
                }
                fresh = true;
            },
            recv(found_rx) -> f => {
                let Ok((id, header)) = f else { break };
                if id == job_id {
                    if let Some(b) = block.take() {
                        stats.blocks.fetch_add(1, Ordering::Relaxed);
                        match source.submit(Block { header, txs: b.txs }) {
                            Submitted::NotStored => {
                                tracing::warn!(
                                    pause = ?next_pause,
                                    "a mined block could not be stored; mining paused"
                                );
                                paused_until = Some(Instant::now() + next_pause);
                                next_pause = (next_pause * 2).min(cfg.store_retry_max);
                                // The workers stop until mining resumes.
                                job_id += 1;
                                for (tx, _) in &workers {
                                    let idle = Job { idle: true, header, target: [0; 32], start: 0, id: job_id };
                                    if let Err(crossbeam_channel::TrySendError::Full(job)) = tx.try_send(idle) {
                                        let _ = tx.send(job);
                                    }
                                }
                            }
                            Submitted::Accepted => next_pause = cfg.store_retry,
                            Submitted::Refused => {}
                        }
                    }
                    fresh = true;
                }
            },
            recv(tick) -> _ => {
                let now = (Instant::now(), stats.hashes.load(Ordering::Relaxed));
                let secs = now.0.duration_since(rate_at.0).as_secs_f64();
                if secs > 0.0 {
                    let rate = (now.1 - rate_at.1) as f64 / secs;
                    stats.rate.store(rate.to_bits(), Ordering::Relaxed);
                }
                rate_at = now;
            },
        }
    }
    for (tx, h) in workers {
        drop(tx);
        let _ = h.join();
    }
}

/// A worker: mines its current job batch by batch, switching to a newer
/// job between batches, and waits after a solution or when idle.
fn work(jobs: Receiver<Job>, found: Sender<(u64, Header)>, stats: Arc<Stats>, batch: u64) {
    let Ok(mut job) = jobs.recv() else { return };
    loop {
        if job.idle {
            match jobs.recv() {
                Ok(j) => job = j,
                Err(_) => return,
            }
            continue;
        }
        let mut hasher = HeaderHasher::new(&job.header);
        let mut nonce = job.start;
        let next = loop {
            if let Some(n) = hasher.search(&job.target, nonce, batch) {
                stats.hashes.fetch_add(n - nonce + 1, Ordering::Relaxed);
                let header = Header { nonce: n, ..job.header };
                if found.send((job.id, header)).is_err() {
                    return;
                }
                break jobs.recv().ok();
            }
            stats.hashes.fetch_add(batch, Ordering::Relaxed);
            nonce = nonce.wrapping_add(batch);
            match jobs.try_recv() {
                Ok(j) => break Some(j),
                Err(crossbeam_channel::TryRecvError::Empty) => {}
                Err(crossbeam_channel::TryRecvError::Disconnected) => return,
            }
        };
        match next {
            Some(j) => job = j,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{bits_from_target, Hash};
    use parking_lot::Mutex;
    use ruint::aliases::U256;

    /// Hands out a template whose height is `height`; records solutions.
    struct Fake {
        height: Mutex<u64>,
        outcome: Mutex<Submitted>,
        bits: u32,
        found: crossbeam_channel::Sender<Block>,
    }

    impl WorkSource for Fake {
        fn template(&self) -> Option<Block> {
            let header = Header {
                version: Header::VERSION,
                height: *self.height.lock(),
                prev_hash: Hash::ZERO,
                merkle_root: Hash::ZERO,
                timestamp_ms: 0,
                bits: self.bits,
                nonce: 0,
            };
            Some(Block { header, txs: vec![] })
        }
        fn submit(&self, block: Block) -> Submitted {
            let _ = self.found.send(block);
            *self.outcome.lock()
        }
    }

    #[test]
    fn hasher_matches_the_header_hash() {
        let mut h = Header {
            version: 1,
            height: 7,
            prev_hash: Hash([3; 32]),
            merkle_root: Hash([4; 32]),
            timestamp_ms: 99,
            bits: 0x207fffff,
            nonce: 0,
        };
        let mut hasher = HeaderHasher::new(&h);
        for n in [0u64, 1, 0xdead_beef, u64::MAX] {
            h.nonce = n;
            assert_eq!(hasher.hash(n), h.hash().0);
        }
        h.nonce = 0;
        assert!(solve(&mut h, u64::MAX));
        assert!(h.hash().to_u256() <= crate::chain::target_from_bits(h.bits).unwrap());
    }

    #[test]
    fn miner_finds_blocks_and_restarts_on_new_work() {
        let (tx, rx) = crossbeam_channel::unbounded();
        // About 4,096 hashes a block: many blocks a second on any thread.
        let bits = bits_from_target(U256::MAX >> 12);
        let outcome = Mutex::new(Submitted::Accepted);
        let src = Arc::new(Fake { height: Mutex::new(1), outcome, bits, found: tx });
        let cfg = MinerConfig {
            threads: 2,
            batch: 256,
            rate_interval: Duration::from_millis(50),
            ..MinerConfig::default()
        };
        let miner = Miner::start(cfg, src.clone());
        let first = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(first.header.height, 1);
        assert!(first.hash().to_u256() <= crate::chain::target_from_bits(bits).unwrap());
        // New work: everything found from the next job on is for height 2.
        *src.height.lock() = 2;
        miner.new_work();
        let mut saw_new = false;
        for _ in 0..50 {
            let b = rx.recv_timeout(Duration::from_secs(20)).unwrap();
            if b.header.height == 2 {
                saw_new = true;
                break;
            }
        }
        assert!(saw_new, "the miner never switched to the new template");
        assert!(miner.blocks_found() >= 2);
        assert!(miner.hashes() >= miner.blocks_found());
        // The rate is published once a rate interval has passed.
        let deadline = Instant::now() + Duration::from_secs(20);
        while miner.hash_rate() == 0.0 && Instant::now() < deadline {
            let _ = rx.recv_timeout(Duration::from_millis(50));
        }
        assert!(miner.hash_rate() > 0.0);
        // A burst of new-work signals then a stop: the stop is not lost.
        for _ in 0..100 {
            miner.new_work();
        }
        miner.stop();
    }

    /// Blocks that cannot be stored pause the miner (doubling) instead
    /// of being mined and refused thousands of times a second; a stored
    /// one resets the pause.
    #[test]
    fn a_miner_whose_blocks_cannot_be_stored_pauses() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let bits = bits_from_target(U256::MAX >> 4);
        let outcome = Mutex::new(Submitted::NotStored);
        let src = Arc::new(Fake { height: Mutex::new(1), outcome, bits, found: tx });
        let cfg = MinerConfig {
            threads: 2,
            batch: 16,
            rate_interval: Duration::from_millis(20),
            store_retry: Duration::from_millis(300),
            store_retry_max: Duration::from_secs(60),
        };
        let miner = Miner::start(cfg, src.clone());
        let t0 = Instant::now();
        rx.recv_timeout(Duration::from_secs(20)).unwrap();
        // Paused 300 ms after the first failure, then 600 ms after the
        // second: within 800 ms of the first, one more at most. (Unpaused,
        // about 16 hashes a block find thousands.)
        let second = rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let gap = t0.elapsed();
        assert!(gap >= Duration::from_millis(290), "resumed after {gap:?}");
        assert_eq!(second.header.height, 1);
        let extra = rx.recv_timeout(Duration::from_millis(500));
        assert!(extra.is_err(), "mined again within the doubled pause");
        // Stored again: mining goes on at full speed.
        *src.outcome.lock() = Submitted::Accepted;
        rx.recv_timeout(Duration::from_secs(20)).unwrap();
        let (a, b) =
            (rx.recv_timeout(Duration::from_secs(20)), rx.recv_timeout(Duration::from_secs(20)));
        assert!(a.is_ok() && b.is_ok());
        miner.stop();
    }

    #[test]
    fn invalid_bits_cannot_be_solved() {
        let mut h = Header {
            version: 1,
            height: 1,
            prev_hash: Hash::ZERO,
            merkle_root: Hash::ZERO,
            timestamp_ms: 0,
            bits: 0,
            nonce: 0,
        };
        assert!(!solve(&mut h, 1000));
    }
}
