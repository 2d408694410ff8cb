//! Mempool gossip over real switches: every peer gets each transaction
//! once and never its own back, a peer whose queue is full catches up by
//! itself, a late peer gets the whole pool, and a peer flooding
//! transactions keeps neither local submissions nor another peer's
//! transactions out.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use plexus_p2p::secret::{SecretConfig, SecretConnection};
use plexus_p2p::{
    node_info, ChannelDescriptor, MConnConfig, MConnection, MemoryTransport, NodeInfo, NodeKey,
    SwitchConfig, Transport,
};
use plexus_reactors::chain::NetworkParams;
use plexus_reactors::consensus::ConsensusConfig;
use plexus_reactors::mempool::{MempoolConfig, TxSource, MEMPOOL_CHANNEL};
use prost::Message;

async fn node(net: &MemoryTransport, i: u8, p: &Arc<NetworkParams>, m: MempoolConfig) -> SyncNode {
    let ip = IpAddr::from([10, 5, 0, i]);
    let scfg =
        SwitchConfig { listen_addr: Some(SocketAddr::new(ip, 0)), ..SwitchConfig::default() };
    let c = chain_with(p, &[]);
    sync_node_mempool(net.with_ip(ip), scfg, ConsensusConfig::default(), m, p, c, sync_cfg()).await
}

fn tx(tag: &str, i: usize, len: usize) -> Bytes {
    let mut t = format!("{tag}-{i}-").into_bytes();
    t.resize(len, b'.');
    Bytes::from(t)
}

/// Waits until `done` holds for `n`'s pool, on its `watch_added`.
async fn until_pool(
    n: &SyncNode,
    secs: u64,
    done: impl Fn(&plexus_reactors::mempool::Mempool) -> bool,
) -> bool {
    let mut added = n.chain.watch_txs_added();
    let wait = async {
        while !n.chain.with_mempool(|m| done(m)) {
            if added.changed().await.is_err() {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_secs(secs), wait).await.unwrap_or(false)
}

/// Mempool-channel (messages sent, bytes received) of `n`, all peers.
fn mempool_traffic(n: &SyncNode) -> (u64, u64) {
    n.sw.peers()
        .iter()
        .flat_map(|p| p.stats().channels)
        .filter(|c| c.id == MEMPOOL_CHANNEL)
        .fold((0, 0), |(s, r), c| (s + c.msgs_sent, r + c.bytes_recv))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_sends_each_transaction_once_never_back_and_catches_up() {
    let p = params();
    let net = MemoryTransport::new();
    // A small send queue and small messages: a round sends a peer only
    // a few messages, so the rest must follow in later rounds by itself.
    let small = MempoolConfig {
        send_queue_bytes: 8 << 10,
        max_txs_per_msg: 16,
        ..MempoolConfig::default()
    };
    let a = node(&net, 1, &p, small).await;
    let b = node(&net, 2, &p, MempoolConfig::default()).await;
    let c = node(&net, 3, &p, MempoolConfig::default()).await;
    connect(&b, &a).await;
    connect(&c, &a).await;
    for i in 0..300 {
        a.mem.submit(tx("a", i, 200)).unwrap();
    }
    for n in [&b, &c] {
        assert!(
            until_pool(n, 20, |m| m.len() == 300).await,
            "{} of 300",
            n.chain.with_mempool(|m| m.len())
        );
        // Its only peer is the sender of every transaction: none go back.
        assert_eq!(mempool_traffic(n).0, 0, "gossiped back to its source");
    }
    assert_eq!(mempool_traffic(&a).1, 0, "a received its own transactions");
    // Each went once: 300 transactions of 200 bytes in messages of 16.
    let sent = mempool_traffic(&a).0;
    assert!((2 * 19..=2 * 20).contains(&sent), "{sent} messages for 2 x 300 transactions");

    // A peer joining later gets the whole pool.
    let d = node(&net, 4, &p, MempoolConfig::default()).await;
    connect(&d, &a).await;
    assert!(until_pool(&d, 20, |m| m.len() == 300).await);
}

/// A raw peer from 10.6.0.`host` declaring only `channel`, reading what
/// it is sent.
async fn raw_peer(
    net: &MemoryTransport,
    to: &SyncNode,
    p: &NetworkParams,
    host: u8,
    channel: u8,
) -> (plexus_p2p::NodeId, MConnection) {
    let key = NodeKey::generate();
    let ip = IpAddr::from([10, 6, 0, host]);
    let stream = net.with_ip(ip).dial(to.sw.listen_addr().unwrap()).await.unwrap();
    let mut conn =
        SecretConnection::connect(stream, &key, None, &SecretConfig::default()).await.unwrap();
    let mut info = NodeInfo::new(&p.network_id(), "raw");
    info.node_id = key.node_id();
    info.channels = vec![channel];
    info.listen_addr = format!("{ip}:1");
    node_info::exchange(&mut conn, &info, None, Duration::from_secs(5)).await.unwrap();
    let ch = [ChannelDescriptor::new(channel)];
    let (mc, rxs) = MConnection::new(conn, &ch, MConnConfig::default()).unwrap();
    for mut rx in rxs {
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
    }
    (key.node_id(), mc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_keeps_neither_local_nor_other_peers_transactions_out() {
    let p = params();
    let net = MemoryTransport::new();
    let n = node(&net, 1, &p, MempoolConfig::default()).await;
    let h = node(&net, 2, &p, MempoolConfig::default()).await;
    connect(&h, &n).await;
    let (flooder, flood) = raw_peer(&net, &n, &p, 1, MEMPOOL_CHANNEL).await;
    // Twice the whole pool, from one peer.
    let cap = MempoolConfig::default().max_txs;
    for m in 0..(2 * cap / 250) {
        let txs = (0..250).map(|i| tx("flood", m * 250 + i, 64)).collect();
        let msg = plexus_proto::mempool::Message {
            sum: Some(plexus_proto::mempool::message::Sum::Txs(plexus_proto::mempool::Txs { txs })),
        };
        flood.send(MEMPOOL_CHANNEL, msg.encode_to_vec()).await.unwrap();
    }
    let share = cap * MempoolConfig::default().max_peer_share_percent as usize / 100;
    let last = tx("flood", 2 * cap - 1, 64);
    let last = plexus_reactors::chain::Hash::sha256(&last);
    assert!(until_pool(&n, 30, |m| m.contains(&last)).await, "the flood did not arrive");
    assert_eq!(n.chain.with_mempool(|m| m.share_of(&TxSource::Peer(flooder)).0), share);

    // Meanwhile: every local submission and every honest peer's
    // transaction gets in.
    for i in 0..200 {
        n.mem.submit(tx("local", i, 100)).expect("a local submission refused");
        h.mem.submit(tx("honest", i, 100)).unwrap();
    }
    let ids: Vec<_> =
        (0..200).map(|i| plexus_reactors::chain::Hash::sha256(&tx("honest", i, 100))).collect();
    assert!(
        until_pool(&n, 30, |m| ids.iter().all(|id| m.contains(id))).await,
        "the honest peer's transactions were kept out"
    );
    drop(flood);
}

/// Transactions that enter the pool without a wake-up (as a reorg puts a
/// disconnected block's transactions back) are gossiped at the gossip
/// task's next look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_put_back_without_a_wake_up_are_gossiped() {
    let p = params();
    let net = MemoryTransport::new();
    let a = node(&net, 1, &p, MempoolConfig::default()).await;
    let b = node(&net, 2, &p, MempoolConfig::default()).await;
    connect(&b, &a).await;
    // Straight into the pool, as `apply_tip_change` does.
    for i in 0..5 {
        a.chain.with_mempool(|m| m.add_from(tx("back", i, 80), TxSource::Chain)).unwrap();
    }
    assert!(
        until_pool(&b, 20, |m| m.len() == 5).await,
        "{} of 5",
        b.chain.with_mempool(|m| m.len())
    );
}

/// A peer without the mempool channel gets no gossip state: it neither
/// holds the gossip task in rounds (it would never have room) nor keeps
/// others from being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_mempool_channel_does_not_stall_gossip() {
    let p = params();
    let net = MemoryTransport::new();
    let a = node(&net, 1, &p, MempoolConfig::default()).await;
    // A peer declaring only another channel.
    let channel = plexus_reactors::consensus::CONSENSUS_CHANNEL;
    let _other = raw_peer(&net, &a, &p, 9, channel).await;
    let b = node(&net, 2, &p, MempoolConfig::default()).await;
    connect(&b, &a).await;
    a.mem.submit(tx("x", 0, 50)).unwrap();
    assert!(until_pool(&b, 20, |m| m.len() == 1).await);
    assert_eq!(a.mem.gossip_peers(), 1, "only the peer with the mempool channel has a cursor");
}
