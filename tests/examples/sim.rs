//! Runs a simulated network ([`plexus_tests::sim`]) and prints what it
//! measured, one JSON object with `--json`:
//!
//! ```sh
//! cargo run --release -p plexus-tests --example sim -- --nodes 1000 --seed 1 --json
//! ```
//!
//! Fields: `nodes`, `seed`, `sim_seconds`, `wall_seconds`, `sim_speed`
//! (simulated seconds per wall second), `rss_mb_per_node` (this process's
//! resident set over the nodes), `height`, `tips` (distinct tips of the
//! nodes that follow the chain, after `--settle` seconds without mining),
//! `propagation` (delay from the miner to 90 % and 100 % of the nodes,
//! p50 and p99 over the blocks mined after `--warmup` that reached all,
//! seconds),
//! `outbound_per_node` (mean and min over non-seed nodes), `connected`
//! (share of non-seed nodes reachable from node 1 over live connections),
//! `digest` (the same for two runs of one seed; taken before the forks)
//! `eclipse` (a second network of the same size plus
//! `--attackers-percent` PEX-flooding attackers from one /16: the mean
//! share of honest nodes' outbound peers, and of their book entries,
//! that are attackers) and `converged_after_heal_s` (for each `--fork-depths` depth: the
//! network split in two halves that each mine that many blocks at
//! `--fork-interval`, then healed; simulated seconds from the heal until
//! every node has one tip, null if not within the limit). `wall_seconds`
//! and `sim_speed` cover the main run, before the forks.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use clap::Parser;
use plexus_tests::sim::{runtime, Sim, SimConfig};

#[derive(Parser, Debug)]
struct Args {
    /// Nodes, the seed included.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// The run's seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mining nodes (default: one in 20, at least 1).
    #[arg(long)]
    miners: Option<usize>,
    /// Simulated seconds with mining.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Simulated seconds without mining at the end (the network settles).
    #[arg(long, default_value_t = 60)]
    settle: u64,
    /// Blocks mined in the first seconds are left out of propagation
    /// (the network is still forming).
    #[arg(long, default_value_t = 120)]
    warmup: u64,
    /// Mean seconds between blocks (whole network).
    #[arg(long, default_value_t = 10)]
    block_interval: u64,
    /// Fork depths for the partition scenario (comma separated; empty
    /// for none): after the main run, the network is split in two halves
    /// that each mine this many blocks, healed, and timed until one tip.
    #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
    fork_depths: Vec<u64>,
    /// Mean seconds between blocks during the fork scenarios (fast, so a
    /// 1,000-block fork takes simulated minutes, not hours).
    #[arg(long, default_value_t = 1.0)]
    fork_interval: f64,
    /// Percent of extra nodes that are PEX-flooding attackers from one /16
    /// in a second network of the same size and seed, for the eclipse
    /// measure (0 for none).
    #[arg(long, default_value_t = 10)]
    attackers_percent: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Share of nodes 1.. reachable from node 1 over live connections.
fn connected_share(sim: &Sim) -> f64 {
    let idx: HashMap<_, usize> =
        sim.nodes.iter().enumerate().map(|(i, n)| (n.sw.node_id(), i)).collect();
    let (mut seen, mut q) = (HashSet::from([1usize]), VecDeque::from([1usize]));
    while let Some(i) = q.pop_front() {
        for p in sim.nodes[i].sw.peers() {
            if let Some(&j) = idx.get(&p.id()) {
                if j != 0 && seen.insert(j) {
                    q.push_back(j);
                }
            }
        }
    }
    seen.len() as f64 / (sim.nodes.len() - 1).max(1) as f64
}

fn main() {
    let a = Args::parse();
    let cfg = SimConfig {
        nodes: a.nodes.max(2),
        seed: a.seed,
        miners: a.miners.unwrap_or((a.nodes / 20).max(1)),
        block_interval: Duration::from_secs(a.block_interval.max(1)),
        ..SimConfig::default()
    };
    let wall = Instant::now();
    let eclipse_cfg = SimConfig {
        attackers: cfg.nodes * a.attackers_percent / 100,
        attackers_lie: false,
        ..cfg.clone()
    };
    let eclipse_cfg = SimConfig { nodes: cfg.nodes + eclipse_cfg.attackers, ..eclipse_cfg };
    let mut out = runtime().block_on(async move {
        let sim = Sim::start(cfg.clone()).await;
        sim.run_for(Duration::from_secs(a.seconds)).await;
        sim.stop_mining();
        sim.run_for(Duration::from_secs(a.settle)).await;
        let sim_seconds = sim.elapsed().as_secs_f64();
        let tips: HashSet<_> = sim.tips().into_iter().skip(1).collect();
        let height = sim.nodes.iter().map(|n| n.chain.status().height).max().unwrap_or(0);
        let outbound: Vec<usize> = sim.nodes[1..].iter().map(|n| n.sw.num_peers().0).collect();
        let out_mean = outbound.iter().sum::<usize>() as f64 / outbound.len().max(1) as f64;
        let out_min = outbound.iter().copied().min().unwrap_or(0);
        let p = sim.propagation(Duration::from_secs(a.warmup));
        let connected = connected_share(&sim);
        let digest = sim.digest();
        let wall_seconds = wall.elapsed().as_secs_f64();
        let rss =
            plexus_tests::rss_bytes(std::process::id()).unwrap_or(0) as f64 / (1 << 20) as f64;
        // The fork scenarios, one after another on the same network.
        let mut healed = serde_json::Map::new();
        sim.set_block_interval(Duration::from_secs_f64(a.fork_interval.max(0.001)));
        sim.resume_mining();
        for depth in a.fork_depths.iter().copied().filter(|d| *d > 0) {
            let max = Duration::from_secs_f64(depth as f64 * a.fork_interval * 20.0 + 3600.0);
            let t = sim.fork_and_heal(depth, max).await;
            healed.insert(depth.to_string(), t.map(|d| d.as_secs_f64()).into());
        }
        let v = serde_json::json!({
            "nodes": cfg.nodes,
            "seed": cfg.seed,
            "miners": cfg.miners,
            "sim_seconds": sim_seconds,
            "wall_seconds": (wall_seconds * 100.0).round() / 100.0,
            "sim_speed": (sim_seconds / wall_seconds * 100.0).round() / 100.0,
            "rss_mb_per_node": (rss / cfg.nodes as f64 * 100.0).round() / 100.0,
            "height": height,
            "tips": tips.len(),
            "propagation": {
                "blocks": p.blocks,
                "p50_to_90_s": p.p50_to_90,
                "p99_to_90_s": p.p99_to_90,
                "p50_to_100_s": p.p50_to_100,
                "p99_to_100_s": p.p99_to_100,
            },
            "outbound_per_node": { "mean": out_mean, "min": out_min },
            "connected": connected,
            "converged_after_heal_s": healed,
            "fork_interval_s": a.fork_interval,
            "digest": digest,
        });
        sim.stop().await;
        v
    });
    // The eclipse measure: honest nodes' outbound slots held by the
    // attackers after the same main run, on a network of its own.
    if eclipse_cfg.attackers > 0 {
        let secs = a.seconds;
        let (share, book) = runtime().block_on(async move {
            let sim = Sim::start(eclipse_cfg).await;
            sim.run_for(Duration::from_secs(secs)).await;
            let r = (sim.eclipse_share(), sim.attacker_book_share());
            sim.stop().await;
            r
        });
        out["eclipse"] = serde_json::json!({
            "attackers_percent": a.attackers_percent,
            "outbound_share": share,
            "book_share": book,
        });
    }
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    }
}
