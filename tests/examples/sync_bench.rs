//! Block sync speed against local import, measured in the same run.
//!
//! 10,000 pre-mined blocks with a few transactions each are served by 4
//! nodes over loopback TCP to one syncing node (SQLite on disk, WAL):
//! - `sync_blocks_per_s`: from the first dial until the syncing node's tip
//!   is the servers' tip (status, headers and blocks included);
//! - `import_blocks_per_s`: the same blocks validated and stored into a
//!   fresh on-disk store with no network, through the node's own import
//!   path (`ChainService::import_blocks`, `apply_batch` blocks per
//!   call, as block sync applies them: validation, SQLite commits of
//!   `commit_batch` blocks, mempool upkeep); the ceiling, measured just
//!   before and just after the sync and averaged (`ceiling_spread`: how
//!   far the two differ, over their mean);
//! - `chain_import_blocks_per_s`: the `Blockchain` alone on the same
//!   blocks (validation and the same batched commits, no mempool upkeep),
//!   with `chain_ratio` = sync over it;
//! - `ratio`: sync over the ceiling (target >= 0.8), per round; the
//!   bench runs `--rounds` (5) rounds against the same four servers, each a
//!   fresh syncing node and fresh ceiling stores, and reports the round
//!   with the median ratio (all ratios in `ratios`);
//! - `wire_bytes_per_block`: block sync channel payload bytes received per
//!   block (headers included; before MConnection framing and encryption),
//!   next to `block_bytes` (the mean protobuf block size);
//! - `first_block_ms`: from the first dial to the first block applied
//!   (status round and headers download);
//! - then the same for `--big-blocks` (1,000) blocks of about 1 MB of
//!   transactions (15 of 64 KiB), one round from 4 fresh servers:
//!   `big_sync_mb_s` (block bytes per second, 1 MB = 1e6 bytes),
//!   `big_import_mb_s` (the ceiling, measured the same way) and
//!   `big_ratio` (target >= 0.8), `big_block_bytes`.
//!
//! `cargo run --release -p plexus-tests --example sync_bench -- --json`

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use plexus_p2p::{NodeInfo, NodeKey, Switch, SwitchConfig, TcpTransport};
use plexus_reactors::blocksync::{BlockSyncConfig, BlockSyncReactor, BLOCKSYNC_CHANNEL};
use plexus_reactors::chain::{
    Block, BlockHash, Blockchain, BlockchainConfig, NetworkParams, Store,
};
use plexus_reactors::consensus::{ConsensusConfig, ConsensusReactor};
use plexus_reactors::mempool::{Mempool, MempoolConfig, MempoolReactor};
use plexus_reactors::mining::solve;
use plexus_reactors::service::{ChainService, ChainServiceConfig};

#[derive(Parser)]
struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Blocks to pre-mine and sync.
    #[arg(long, default_value_t = 10_000)]
    blocks: usize,
    /// Serving peers.
    #[arg(long, default_value_t = 4)]
    peers: usize,
    /// Rounds (each: import, sync a fresh node, import); the median ratio
    /// is reported, since this machine's disk and CPU speed drift.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Blocks of about 1 MB for the big-block round (0: none).
    #[arg(long, default_value_t = 1_000)]
    big_blocks: usize,
}

struct Node {
    sw: Switch,
    chain: Arc<ChainService>,
    sync: Arc<BlockSyncReactor>,
}

async fn node(params: &Arc<NetworkParams>, chain: Blockchain, min_status_peers: usize) -> Node {
    let cfg = SwitchConfig {
        listen_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..SwitchConfig::default()
    };
    let chain = ChainService::new(
        ChainServiceConfig::default(),
        chain,
        Mempool::new(MempoolConfig::default()),
    );
    let mem = Arc::new(MempoolReactor::new(chain.clone()));
    let cons = Arc::new(ConsensusReactor::new(ConsensusConfig::default(), chain.clone()));
    let scfg = BlockSyncConfig { min_status_peers, ..BlockSyncConfig::default() };
    let sync = Arc::new(BlockSyncReactor::new(scfg, chain.clone()));
    let sw = Switch::builder(
        NodeKey::generate(),
        NodeInfo::new(&params.network_id(), "bench"),
        cfg,
        TcpTransport,
    )
    .shared_reactor(cons.clone())
    .shared_reactor(mem.clone())
    .shared_reactor(sync.clone())
    .build()
    .unwrap();
    sw.start().await.unwrap();
    cons.start(&sw);
    mem.start(&sw);
    sync.start(&sw);
    Node { sw, chain, sync }
}

/// `n` blocks of about 1 MB each: 15 transactions of 64 KiB less 16 bytes
/// (random, so nothing compresses or repeats).
fn premine_big(params: &Arc<NetworkParams>, n: usize) -> Vec<Block> {
    use rand::RngCore;
    let mut rng = rand::rng();
    premine_with(params, n, |_| {
        (0..15)
            .map(|_| {
                let mut t = vec![0u8; 64 * 1024 - 16];
                rng.fill_bytes(&mut t);
                Bytes::from(t)
            })
            .collect()
    })
}

/// `n` blocks with a few words each.
fn premine(params: &Arc<NetworkParams>, n: usize) -> Vec<Block> {
    premine_with(params, n, |i| {
        (0..3).map(|j| Bytes::from(format!("block {i} word {j}: {}", "w".repeat(40)))).collect()
    })
}

/// `n` mined blocks, block `i` holding `txs(i)`.
fn premine_with(
    params: &Arc<NetworkParams>,
    n: usize,
    mut txs: impl FnMut(usize) -> Vec<Bytes>,
) -> Vec<Block> {
    let mut c = Blockchain::open(
        params.clone(),
        Store::open_in_memory().unwrap(),
        BlockchainConfig::default(),
    )
    .unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let now = c.tip_header().timestamp_ms + 1000;
        let mut b = c.template(txs(i), now);
        assert!(solve(&mut b.header, u64::MAX));
        c.process_block(b.clone(), None, u64::MAX / 2).unwrap();
        out.push(b);
    }
    out
}

/// A chain on `store` holding `blocks`, committed in the chunks the
/// node's importer commits.
fn chain_with(params: &Arc<NetworkParams>, store: Store, blocks: &[Block]) -> Blockchain {
    let mut c = Blockchain::open(params.clone(), store, BlockchainConfig::default()).unwrap();
    for chunk in blocks.chunks(ChainServiceConfig::default().commit_batch) {
        c.batch(|c| {
            for b in chunk {
                c.process_block(b.clone(), None, u64::MAX / 2).unwrap();
            }
        })
        .unwrap();
    }
    c
}

/// The ceiling: `blocks` imported through a chain service (no network)
/// into a fresh store at `path`, `apply_batch` at a time as block
/// sync hands them over; blocks/s and the tip.
async fn node_import(
    params: &Arc<NetworkParams>,
    blocks: &[Block],
    path: &Path,
) -> (f64, BlockHash) {
    let chain = chain_with(params, Store::open(path).unwrap(), &[]);
    let cons = ChainService::new(
        ChainServiceConfig::default(),
        chain,
        Mempool::new(MempoolConfig::default()),
    );
    let t = Instant::now();
    for chunk in blocks.chunks(BlockSyncConfig::default().apply_batch) {
        for r in cons.import_blocks(chunk.to_vec(), None).await {
            r.unwrap();
        }
    }
    let rate = blocks.len() as f64 / t.elapsed().as_secs_f64();
    let tip = *cons.watch_tip().borrow();
    (rate, tip)
}

/// `blocks` into a fresh `Blockchain` at `path` alone; blocks/s.
fn chain_import(params: &Arc<NetworkParams>, blocks: &[Block], path: &Path) -> f64 {
    let store = Store::open(path).unwrap();
    let t = Instant::now();
    tokio::task::block_in_place(|| chain_with(params, store, blocks));
    blocks.len() as f64 / t.elapsed().as_secs_f64()
}

/// One round: the ceiling (a fresh on-disk import just before and just
/// after; their mean counts) around one sync of a fresh node from
/// `servers`.
struct Round {
    sync_rate: f64,
    import_rate: f64,
    chain_import_rate: f64,
    /// How far the two ceiling measurements differ, over their mean.
    ceiling_spread: f64,
    first_block_ms: f64,
    wire_per_block: f64,
    peers_used: usize,
    received: u64,
}

async fn round(
    params: &Arc<NetworkParams>,
    blocks: &[Block],
    servers: &[Node],
    dir: &Path,
    i: usize,
) -> Round {
    let db = |name: &str| dir.join(format!("{name}-{i}")).join("chain.sqlite");
    let (import_before, tip) = node_import(params, blocks, &db("import-before")).await;
    let chain_before = chain_import(params, blocks, &db("chain-before"));
    let store = Store::open(&dir.join(format!("sync-{i}/chain.sqlite"))).unwrap();
    let me = node(params, chain_with(params, store, &[]), servers.len()).await;
    let mut tips = me.chain.watch_tip();
    let t = Instant::now();
    // Dialled together, as a node dials its peers.
    let mut dials = tokio::task::JoinSet::new();
    for s in servers {
        let (sw, addr) = (me.sw.clone(), s.sw.net_address().unwrap());
        dials.spawn(async move { sw.dial(&addr).await.map(|_| ()) });
    }
    while let Some(r) = dials.join_next().await {
        r.unwrap().unwrap();
    }
    let mut first_block = None;
    let done = tokio::time::timeout(Duration::from_secs(600), async {
        // The watch's own value: no chain lock against the import thread.
        while *tips.borrow_and_update() != tip {
            tips.changed().await.unwrap();
            first_block.get_or_insert_with(|| t.elapsed());
        }
    })
    .await;
    assert!(done.is_ok(), "sync did not finish");
    let sync_rate = blocks.len() as f64 / t.elapsed().as_secs_f64();
    let wire: u64 = me
        .sw
        .peers()
        .iter()
        .flat_map(|p| p.stats().channels)
        .filter(|c| c.id == BLOCKSYNC_CHANNEL)
        .map(|c| c.bytes_recv)
        .sum();
    let peers_used = me.sync.blocks_received_from().len();
    let received = me.sync.blocks_received();
    me.sw.stop().await;
    // The imports on either side of the sync, averaged: this VM's speed
    // drifts, and keeping the faster of the two would compare the sync
    // with the luckier measurement.
    let import_after = node_import(params, blocks, &db("import-after")).await.0;
    let import_rate = (import_before + import_after) / 2.0;
    let chain_after = chain_import(params, blocks, &db("chain-after"));
    let chain_import_rate = (chain_before + chain_after) / 2.0;
    let ceiling_spread = (import_before - import_after).abs() / import_rate;
    Round {
        sync_rate,
        import_rate,
        chain_import_rate,
        ceiling_spread,
        // Status and headers: the time until the first block was applied.
        first_block_ms: first_block.unwrap_or_default().as_secs_f64() * 1000.0,
        wire_per_block: wire as f64 / blocks.len() as f64,
        peers_used,
        received,
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let params = Arc::new(NetworkParams::regtest());
    let blocks = premine(&params, args.blocks);
    let block_bytes = blocks.iter().map(Block::size).sum::<usize>() as f64 / blocks.len() as f64;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = Vec::new();
    for _ in 0..args.peers {
        let c = tokio::task::block_in_place(|| {
            chain_with(&params, Store::open_in_memory().unwrap(), &blocks)
        });
        servers.push(node(&params, c, args.peers).await);
    }
    let mut rounds = Vec::new();
    for i in 0..args.rounds.max(1) {
        rounds.push(round(&params, &blocks, &servers, dir.path(), i).await);
    }
    // Every ratio in run order, then the round with the median ratio,
    // reported whole.
    let all: Vec<String> =
        rounds.iter().map(|r| format!("{:.3}", r.sync_rate / r.import_rate)).collect();
    rounds.sort_by(|a, b| (a.sync_rate / a.import_rate).total_cmp(&(b.sync_rate / b.import_rate)));
    let r = &rounds[rounds.len() / 2];
    let (sync_rate, import_rate, chain_rate) = (r.sync_rate, r.import_rate, r.chain_import_rate);
    let ratio = sync_rate / import_rate;
    let chain_ratio = sync_rate / chain_rate;
    let mut json = String::new();
    if args.json {
        json = format!(
            "{{\"blocks\":{},\"peers\":{},\"rounds\":{},\"sync_blocks_per_s\":{sync_rate:.0},\"import_blocks_per_s\":{import_rate:.0},\"ratio\":{ratio:.3},\"chain_import_blocks_per_s\":{chain_rate:.0},\"chain_ratio\":{chain_ratio:.3},\"ceiling_spread\":{:.3},\"ratios\":[{}],\"wire_bytes_per_block\":{:.1},\"block_bytes\":{block_bytes:.1},\"peers_used\":{},\"first_block_ms\":{:.1},\"blocks_received\":{}}}",
            blocks.len(),
            args.peers,
            rounds.len(),
            r.ceiling_spread,
            all.join(","),
            r.wire_per_block,
            r.peers_used,
            r.first_block_ms,
            r.received,
        );
    } else {
        println!("blocks: {}, serving peers: {} (used {})", blocks.len(), args.peers, r.peers_used);
        println!("sync over loopback TCP: {sync_rate:>10.0} blocks/s");
        println!("local import (ceiling): {import_rate:>10.0} blocks/s  (the node's import path)");
        println!(
            "Blockchain alone:       {chain_rate:>10.0} blocks/s  (sync over it: {chain_ratio:.3})"
        );
        println!(
            "ratio:                  {ratio:>10.3}  (target >= 0.8; median of rounds {})",
            all.join(", ")
        );
        println!(
            "wire bytes per block:   {:>10.1}  (mean block {block_bytes:.1} bytes)",
            r.wire_per_block
        );
        println!("first block applied:    {:>10.1} ms (status + first headers)", r.first_block_ms);
    }
    for s in &servers {
        s.sw.stop().await;
    }
    drop(servers);
    if args.big_blocks > 0 {
        let big = big_round(&params, &args, dir.path()).await;
        if args.json {
            // One object: the big-block fields after the others.
            json.pop();
            json = format!("{json},{}", &big[1..]);
        } else {
            println!("big blocks: {big}");
        }
    }
    if args.json {
        println!("{json}");
    }
}

/// The big-block round: one sync of `--big-blocks` blocks of ~1 MB from
/// `--peers` fresh servers against the same ceiling; a JSON object.
async fn big_round(params: &Arc<NetworkParams>, args: &Args, dir: &Path) -> String {
    let blocks = tokio::task::block_in_place(|| premine_big(params, args.big_blocks));
    let block_bytes = blocks.iter().map(Block::size).sum::<usize>() as f64 / blocks.len() as f64;
    let mut servers = Vec::new();
    for _ in 0..args.peers {
        let c = tokio::task::block_in_place(|| {
            chain_with(params, Store::open_in_memory().unwrap(), &blocks)
        });
        servers.push(node(params, c, args.peers).await);
    }
    let r = round(params, &blocks, &servers, &dir.join("big"), 0).await;
    for s in &servers {
        s.sw.stop().await;
    }
    let mb = |rate: f64| rate * block_bytes / 1e6;
    format!(
        "{{\"big_blocks\":{},\"big_block_bytes\":{block_bytes:.0},\"big_sync_mb_s\":{:.1},\"big_import_mb_s\":{:.1},\"big_ratio\":{:.3},\"big_ceiling_spread\":{:.3},\"big_peers_used\":{}}}",
        blocks.len(),
        mb(r.sync_rate),
        mb(r.import_rate),
        r.sync_rate / r.import_rate,
        r.ceiling_spread,
        r.peers_used,
    )
}
