//! Block sync over the in-memory transport: one node catching up from
//! four, and one test per fault (a mute peer, a peer refusing blocks it
//! claimed, an invalid block in the middle, a weight liar, a peer leaving
//! mid-sync, a single peer, a heavier fork appearing during sync). The
//! node always ends on the heaviest valid chain and bans exactly the
//! misbehaving peers. Kill-and-restart runs in `blocksync_restart.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use plexus_p2p::MemoryTransport;
use plexus_reactors::blocksync::BlockSyncConfig;
use plexus_reactors::chain::BlockHash;

const N: usize = 400;

fn banned(n: &SyncNode, id: &plexus_p2p::NodeId) -> bool {
    n.sw.is_banned(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_syncs_from_four() {
    let p = params();
    let blocks = premined(N);
    let net = MemoryTransport::new();
    let mut servers = Vec::new();
    for i in 0..4 {
        servers.push(sync_node(&net, 10 + i, &p, chain_with(&p, &blocks), sync_cfg()).await);
    }
    // Wait for all four statuses before the round starts.
    let cfg =
        BlockSyncConfig { min_status_peers: 4, status_wait: Duration::from_secs(5), ..sync_cfg() };
    let me = sync_node(&net, 1, &p, chain_with(&p, &[]), cfg).await;
    for s in &servers {
        connect(&me, s).await;
    }
    let target = servers[0].tip();
    assert!(wait_tip(&me, target, 60).await, "stuck at {}", me.height());
    assert_eq!(me.chain.status().weight, servers[0].chain.status().weight);
    // Block sync fetched them, from every peer.
    let from = me.sync.blocks_received_from();
    let total: u64 = from.values().sum();
    assert!(total >= N as u64 - 16, "block sync fetched {total}");
    let serving =
        servers.iter().filter(|s| from.get(&s.sw.node_id()).is_some_and(|n| *n > 0)).count();
    assert_eq!(serving, 4, "{from:?}");
    for s in &servers {
        assert!(!banned(&me, &s.sw.node_id()));
    }
    let progress = me.sync.watch_progress().borrow().clone();
    assert!(progress.rounds >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_peer() {
    let p = params();
    let blocks = premined(N);
    let net = MemoryTransport::new();
    let s = sync_node(&net, 10, &p, chain_with(&p, &blocks), sync_cfg()).await;
    let me = sync_node(&net, 1, &p, chain_with(&p, &[]), sync_cfg()).await;
    connect(&me, &s).await;
    assert!(wait_tip(&me, s.tip(), 60).await, "stuck at {}", me.height());
}

async fn with_faulty(fault: Fault) -> (SyncNode, SyncNode, FaultyNode, BlockHash) {
    let p = params();
    let blocks = premined(N);
    let net = MemoryTransport::new();
    let good = sync_node(&net, 10, &p, chain_with(&p, &blocks), sync_cfg()).await;
    let bad = faulty_node(&net, 20, &p, chain_with(&p, &blocks), fault).await;
    let me = sync_node(&net, 1, &p, chain_with(&p, &[]), sync_cfg()).await;
    connect(&me, &bad.node).await;
    connect(&me, &good).await;
    let tip = good.tip();
    (me, good, bad, tip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_is_dropped_not_banned() {
    let (me, good, bad, tip) = with_faulty(Fault::Mute).await;
    assert!(wait_tip(&me, tip, 60).await, "stuck at {}", me.height());
    assert!(!banned(&me, &good.sw.node_id()));
    assert!(!banned(&me, &bad.node.sw.node_id()), "slow is not malicious");
    assert!(me.sync.blocks_received_from().get(&good.sw.node_id()).is_some_and(|n| *n > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_refusing_blocks_it_claimed_is_banned() {
    let (me, good, bad, tip) = with_faulty(Fault::NoBlock).await;
    assert!(wait_tip(&me, tip, 60).await, "stuck at {}", me.height());
    assert!(wait_banned(&me, &bad.node.sw.node_id(), 30).await);
    assert!(!banned(&me, &good.sw.node_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_block_in_the_middle_bans_its_sender() {
    let (me, good, bad, tip) = with_faulty(Fault::CorruptFrom(150)).await;
    assert!(wait_tip(&me, tip, 60).await, "stuck at {}", me.height());
    assert!(wait_banned(&me, &bad.node.sw.node_id(), 30).await);
    assert!(!banned(&me, &good.sw.node_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_more_weight_than_its_headers_prove_is_banned() {
    let (me, good, bad, tip) = with_faulty(Fault::LieWeight).await;
    assert!(wait_tip(&me, tip, 60).await, "stuck at {}", me.height());
    assert!(wait_banned(&me, &bad.node.sw.node_id(), 30).await);
    assert!(!banned(&me, &good.sw.node_id()));
}

/// The heaviest claim comes with no headers at all: that peer is banned
/// (not picked again and again) and the node syncs from the honest one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_a_heavy_tip_and_sending_no_headers_is_banned() {
    let (me, good, bad, tip) = with_faulty(Fault::NoHeaders).await;
    assert!(wait_tip(&me, tip, 60).await, "stuck at {}", me.height());
    assert!(wait_banned(&me, &bad.node.sw.node_id(), 30).await);
    assert!(!banned(&me, &good.sw.node_id()));
}

/// The heaviest claim never answers headers: each time it is scored as
/// an unbacked claim and dropped, and coming back again and again it is
/// banned (the score follows its identity across connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_claimant_that_never_sends_headers_is_scored_and_banned_on_repeat() {
    let (me, good, bad, tip) = with_faulty(Fault::SilentHeaders).await;
    assert!(wait_tip(&me, tip, 60).await, "stuck at {}", me.height());
    let id = bad.node.sw.node_id();
    let mut events = me.sw.subscribe();
    let mut reasons = Vec::new();
    // Rounds, not counted: a reconnection may race the node's own redial
    // and one of the two connections go as a duplicate, unscored.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !banned(&me, &id) {
        assert!(std::time::Instant::now() < deadline, "not banned: {reasons:?}");
        if me.sw.peer(&id).is_none() {
            // It comes back (a ban refuses it, which ends the loop).
            if bad.node.sw.dial(&me.sw.net_address().unwrap()).await.is_err() {
                continue;
            }
        }
        loop {
            let e = tokio::time::timeout(Duration::from_secs(30), events.recv()).await;
            match e.expect("the silent peer was not dropped").unwrap() {
                plexus_p2p::SwitchEvent::PeerRemoved { id: gone, reason } if gone == id => {
                    reasons.push(format!("{reason} (score {:.0})", me.sw.standing(&id).score));
                    break;
                }
                _ => {}
            }
        }
        assert!(me.sw.standing(&id).score > 0.0, "dropped without a score: {reasons:?}");
    }
    assert!(!banned(&me, &good.sw.node_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_leaving_mid_sync_does_not_stop_it() {
    let p = params();
    let blocks = premined(N);
    let net = MemoryTransport::new();
    let a = sync_node(&net, 10, &p, chain_with(&p, &blocks), sync_cfg()).await;
    let b = sync_node(&net, 11, &p, chain_with(&p, &blocks), sync_cfg()).await;
    // Slow apply so there is a "middle": small batches.
    let me = sync_node(&net, 1, &p, chain_with(&p, &[]), sync_cfg()).await;
    connect(&me, &a).await;
    connect(&me, &b).await;
    let mut tips = me.chain.watch_tip();
    let mid = async {
        while me.height() < 50 {
            tips.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), mid).await.unwrap();
    a.sw.stop().await;
    assert!(wait_tip(&me, b.tip(), 60).await, "stuck at {}", me.height());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavier_fork_appearing_during_sync_wins() {
    let p = params();
    let blocks = premined(N);
    // A fork from height 50 that ends 100 blocks higher: heavier.
    let fork = fork_of(&p, &blocks, 50, N + 100 - 50);
    let net = MemoryTransport::new();
    let a = sync_node(&net, 10, &p, chain_with(&p, &blocks), sync_cfg()).await;
    let mut c_chain = chain_with(&p, &blocks[..50]);
    import(&mut c_chain, &fork);
    let c = sync_node(&net, 12, &p, c_chain, sync_cfg()).await;
    let me = sync_node(&net, 1, &p, chain_with(&p, &[]), sync_cfg()).await;
    connect(&me, &a).await;
    let mut tips = me.chain.watch_tip();
    let mid = async {
        while me.height() < 100 {
            tips.changed().await.unwrap();
        }
    };
    tokio::time::timeout(Duration::from_secs(60), mid).await.unwrap();
    connect(&me, &c).await;
    assert!(wait_tip(&me, c.tip(), 90).await, "at {} of {}", me.height(), c.height());
    assert!(!banned(&me, &a.sw.node_id()) && !banned(&me, &c.sw.node_id()));
    let _ = Arc::clone(&me.sync);
}

/// With nobody ahead, nothing goes on the block sync channel (statuses
/// come from the consensus channel's `Status`, once per its
/// `status_interval`, 500 ms in these tests), and no round starts. Real
/// time: a loop that woke on every status and asked something would
/// show here as traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_sends_nothing_on_block_sync_and_statuses_flow_at_their_interval() {
    let p = params();
    let net = MemoryTransport::new();
    let every = BlockSyncConfig { status_interval: Duration::from_millis(200), ..sync_cfg() };
    let a = sync_node(&net, 10, &p, chain_with(&p, &[]), every.clone()).await;
    let me = sync_node(
        &net,
        1,
        &p,
        chain_with(&p, &[]),
        BlockSyncConfig { min_status_peers: 1, ..every },
    )
    .await;
    connect(&me, &a).await;
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let received = |ch: u8| {
        a.sw.peers()[0].stats().channels.iter().find(|c| c.id == ch).map_or(0, |c| c.msgs_recv)
    };
    assert_eq!(received(plexus_reactors::blocksync::BLOCKSYNC_CHANNEL), 0);
    // One on connect and one per 500 ms round.
    let statuses = received(plexus_reactors::consensus::CONSENSUS_CHANNEL);
    assert!((2..=8).contains(&statuses), "{statuses} statuses in {window:?}");
    assert_eq!(me.sync.watch_progress().borrow().rounds, 0);
}
