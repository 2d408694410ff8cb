//! The simulation as a test: a small network of full nodes forms through
//! the seed, mines, and settles on one chain; two runs of one seed end
//! identical.

use std::collections::HashSet;
use std::time::Duration;

use plexus_tests::sim::{runtime, Sim, SimConfig};

fn small(seed: u64) -> SimConfig {
    SimConfig { nodes: 20, seed, miners: 4, ..SimConfig::default() }
}

/// Runs `cfg` for `secs` of simulated time with miners, then `settle`
/// without; returns the digest, the distinct tips and the height reached.
fn run(cfg: SimConfig, secs: u64, settle: u64) -> (String, usize, u64, Vec<usize>) {
    runtime().block_on(async move {
        let sim = Sim::start(cfg).await;
        sim.run_for(Duration::from_secs(secs)).await;
        sim.stop_mining();
        sim.run_for(Duration::from_secs(settle)).await;
        // The seed (node 0) keeps no peers, so it does not follow the chain.
        let tips: HashSet<_> = sim.tips().into_iter().skip(1).collect();
        let height = sim.nodes.iter().map(|n| n.chain.status().height).max().unwrap_or(0);
        let peers = sim.nodes.iter().map(|n| n.sw.peers().len()).collect();
        let digest = sim.digest();
        sim.stop().await;
        (digest, tips.len(), height, peers)
    })
}

#[test]
fn a_network_forms_mines_and_settles_on_one_chain() {
    let (_, tips, height, peers) = run(small(1), 600, 120);
    // 600 s at one block per 10 s on average.
    assert!(height >= 30, "only {height} blocks in 600 s");
    assert_eq!(tips, 1, "nodes ended on {tips} tips");
    assert!(peers[1..].iter().all(|p| *p >= 3), "peers per node: {peers:?}");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let a = run(small(3), 300, 60);
    let b = run(small(3), 300, 60);
    assert_eq!(a, b, "two runs of seed 3 differ");
    let c = run(small(4), 300, 60);
    assert_ne!(a.0, c.0, "seeds 3 and 4 gave one digest");
}
