//! Mining and import speed, each against a ceiling measured in the same
//! run.
//!
//! - `hashes_per_s`: the [`Miner`] on one thread, on a target no hash
//!   meets, read from its own counter;
//! - `sha2_ceiling_per_s`: the sha2 crate hashing the same 96-byte header
//!   layout (double SHA-256, nonce changing) in a tight loop;
//! - `ratio`: the first over the second (the miner hashes the first 64
//!   header bytes once per job, so it may exceed 1);
//! - `import_blocks_per_s`: validation and SQLite store (WAL, on disk) of
//!   10,000 pre-mined small blocks from memory, as `process_block` does
//!   for a peer's blocks.
//!
//! `cargo run --release -p plexus-reactors --example mining_bench -- --json`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use plexus_reactors::chain::{
    Block, Blockchain, BlockchainConfig, Hash, Header, NetworkParams, Store,
};
use plexus_reactors::mining::{solve, Miner, MinerConfig, Submitted, WorkSource};
use sha2::{Digest, Sha256};

#[derive(Parser)]
struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Seconds per hashing measurement (each is taken three times,
    /// alternating, and the best kept).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Blocks to import.
    #[arg(long, default_value_t = 10_000)]
    blocks: usize,
}

fn header() -> Header {
    Header {
        version: Header::VERSION,
        height: 1,
        prev_hash: Hash([7; 32]),
        merkle_root: Hash([9; 32]),
        timestamp_ms: 1_795_000_000_000,
        // Target 1: no hash meets it, so the miner never stops to submit.
        bits: 0x0300_0001,
        nonce: 0,
    }
}

/// The sha2 crate's double SHA-256 over the header bytes, nonce changing.
fn ceiling(secs: f64) -> f64 {
    let mut bytes = header().to_bytes();
    let start = Instant::now();
    let mut n: u64 = 0;
    let mut best = [0xffu8; 32];
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..4096 {
            bytes[Header::NONCE_OFFSET..].copy_from_slice(&n.to_le_bytes());
            let d: [u8; 32] = Sha256::digest(Sha256::digest(black_box(&bytes))).into();
            best = best.min(d);
            n += 1;
        }
    }
    black_box(best);
    n as f64 / start.elapsed().as_secs_f64()
}

struct Impossible;

impl WorkSource for Impossible {
    fn template(&self) -> Option<Block> {
        Some(Block { header: header(), txs: vec![] })
    }
    fn submit(&self, _: Block) -> Submitted {
        Submitted::Refused
    }
}

/// The miner's own loop on one worker thread.
fn miner(secs: f64) -> f64 {
    let m =
        Miner::start(MinerConfig { threads: 1, ..MinerConfig::default() }, Arc::new(Impossible));
    // Let it take its first job before the clock starts.
    std::thread::sleep(Duration::from_millis(50));
    let (t0, h0) = (Instant::now(), m.hashes());
    std::thread::sleep(Duration::from_secs_f64(secs));
    let rate = (m.hashes() - h0) as f64 / t0.elapsed().as_secs_f64();
    m.stop();
    rate
}

fn import(n: usize) -> (f64, f64) {
    let params = Arc::new(NetworkParams::regtest());
    let mut src = Blockchain::open(
        params.clone(),
        Store::open_in_memory().unwrap(),
        BlockchainConfig::default(),
    )
    .unwrap();
    let mut blocks = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let now = src.tip_header().timestamp_ms + 1000;
        let txs = vec![Bytes::from(format!("word {i} a")), Bytes::from(format!("word {i} b"))];
        let mut b = src.template(txs, now);
        assert!(solve(&mut b.header, u64::MAX));
        src.process_block(b.clone(), None, u64::MAX / 2).unwrap();
        blocks.push(b);
    }
    let premine = t.elapsed().as_secs_f64();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data/chain.sqlite")).unwrap();
    let mut dst = Blockchain::open(params, store, BlockchainConfig::default()).unwrap();
    let t = Instant::now();
    for b in blocks {
        dst.process_block(b, None, u64::MAX / 2).unwrap();
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    assert_eq!(dst.height() as usize, n);
    (rate, premine)
}

fn main() {
    let args = Args::parse();
    let (mut best_miner, mut best_ceiling) = (0f64, 0f64);
    for _ in 0..3 {
        best_ceiling = best_ceiling.max(ceiling(args.seconds));
        best_miner = best_miner.max(miner(args.seconds));
    }
    let ratio = best_miner / best_ceiling;
    let (import_rate, premine_s) = import(args.blocks);
    if args.json {
        println!(
            "{{\"hashes_per_s\":{best_miner:.0},\"sha2_ceiling_per_s\":{best_ceiling:.0},\"ratio\":{ratio:.3},\"import_blocks_per_s\":{import_rate:.0},\"import_blocks\":{}}}",
            args.blocks
        );
    } else {
        println!("miner, one thread:        {:>12.0} hashes/s", best_miner);
        println!("sha2 double SHA-256:      {:>12.0} hashes/s", best_ceiling);
        println!("ratio:                    {ratio:>12.3}  (target >= 0.9)");
        println!(
            "import {} blocks:       {:>12.0} blocks/s  (validation + SQLite WAL on disk; pre-mined in {premine_s:.1} s)",
            args.blocks, import_rate
        );
    }
}
