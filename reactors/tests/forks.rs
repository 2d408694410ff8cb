//! Forks of any depth heal: two nodes that mined apart from genesis (100,
//! 1,000 and 5,000 blocks deep, the other side a few blocks longer) connect and
//! both end on the heavier chain, and neither blames the other; three
//! sides of a partition joined at once all converge. A fork
//! deeper than one `GetBlocks` answer (64 blocks) used to stall: the
//! locator held only our main chain, so the peer sent the same first
//! answer again and was banned for an "unbacked" weight.

mod common;

use common::*;
use plexus_p2p::{MemoryTransport, SwitchEvent};

/// Nodes that mined apart from genesis, `lengths[i]` blocks each, joined
/// in a line (0-1, 1-2, ...) all at once: every one ends on the longest
/// (heaviest) chain and nobody is blamed.
async fn heal(lengths: &[usize]) {
    let p = params();
    let net = MemoryTransport::new();
    let mut nodes = Vec::new();
    let mut heavy = (0, p.genesis_hash);
    for (i, &n) in lengths.iter().enumerate() {
        let mut c = chain_with(&p, &[]);
        mine_on(&mut c, n, &format!("side {i}"));
        if n > heavy.0 {
            heavy = (n, c.tip());
        }
        nodes.push(sync_node(&net, i as u8 + 1, &p, c, sync_cfg()).await);
    }
    let mut events: Vec<_> = nodes.iter().map(|n| n.sw.subscribe()).collect();
    for pair in nodes.windows(2) {
        connect(&pair[0], &pair[1]).await;
    }
    for n in &nodes {
        assert!(wait_tip(n, heavy.1, 180).await, "a node stayed at {}", n.height());
    }
    // Nobody was blamed anywhere.
    for (n, ev) in nodes.iter().zip(events.iter_mut()) {
        while let Ok(e) = ev.try_recv() {
            if let SwitchEvent::PeerRemoved { reason, .. } = e {
                panic!("a peer was removed: {reason}");
            }
        }
        for peer in n.sw.peers() {
            let st = n.sw.standing(&peer.id());
            assert_eq!(st.score, 0.0, "a peer was scored: {st:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_100_blocks_deep_heals() {
    heal(&[100, 108]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_1000_blocks_deep_heals() {
    heal(&[1000, 1008]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_5000_blocks_deep_heals() {
    heal(&[5000, 5008]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_way_partition_heals_at_once() {
    heal(&[300, 310, 305]).await;
}

/// Far enough apart that block sync (headers-first) takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_fork_far_behind_heals_through_block_sync() {
    heal(&[1000, 1200]).await;
}

/// Two peers on the same heavier fork answer the same locator: the second
/// answer holds blocks the first brought. Progress along the fork is not
/// a stale answer, and neither peer is blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deep_fork_served_by_two_peers_heals_without_blame() {
    let p = params();
    let net = MemoryTransport::new();
    let mut ca = chain_with(&p, &[]);
    mine_on(&mut ca, 1000, "left");
    let mut cb = chain_with(&p, &[]);
    let right = mine_on(&mut cb, 1008, "right");
    let heavy = cb.tip();
    let a = sync_node(&net, 1, &p, ca, sync_cfg()).await;
    let b = sync_node(&net, 2, &p, cb, sync_cfg()).await;
    let c = sync_node(&net, 3, &p, chain_with(&p, &right), sync_cfg()).await;
    let mut events = a.sw.subscribe();
    connect(&a, &b).await;
    connect(&a, &c).await;
    assert!(wait_tip(&a, heavy, 180).await, "stayed at {}", a.height());
    while let Ok(e) = events.try_recv() {
        if let SwitchEvent::PeerRemoved { reason, .. } = e {
            panic!("a peer was removed: {reason}");
        }
    }
    for n in [&b, &c] {
        let st = a.sw.standing(&n.sw.node_id());
        assert_eq!(st.score, 0.0, "an honest peer was scored: {st:?}");
    }
}
