//! Nodes with the consensus, mempool and block sync reactors over the
//! in-memory transport: miners converging on one chain, a late node
//! catching up headers first, transaction gossip into blocks, a peer
//! banned for an invalid block or a weight lie, and a clock ahead.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use plexus_p2p::{
    MemoryTransport, NodeInfo, NodeKey, StopReason, Switch, SwitchConfig, SwitchEvent,
};
use plexus_proto::chain as pb;
use plexus_reactors::blocksync::{BlockSyncConfig, BlockSyncReactor, BLOCKSYNC_CHANNEL};
use plexus_reactors::chain::{
    bits_from_target, Block, BlockHash, Blockchain, BlockchainConfig, Genesis, NetworkParams, Store,
};
use plexus_reactors::consensus::{
    system_clock, Clock, ConsensusConfig, ConsensusReactor, CONSENSUS_CHANNEL,
};
use plexus_reactors::mempool::{Mempool, MempoolConfig, MempoolReactor};
use plexus_reactors::mining::{solve, Miner, MinerConfig};
use plexus_reactors::service::{ChainService, ChainServiceConfig};
use prost::Message;
use ruint::aliases::U256;
use tokio::sync::{mpsc, watch};

struct Node {
    sw: Switch,
    chain: Arc<ChainService>,
    mem: Arc<MempoolReactor>,
}

impl Node {
    fn tip(&self) -> BlockHash {
        self.chain.status().tip
    }
    fn height(&self) -> u64 {
        self.chain.status().height
    }
    fn miner(&self) -> Miner {
        self.chain.start_miner(MinerConfig::default())
    }
    /// Mines one block on the tip in this thread and submits it.
    async fn mine_one(&self) -> Block {
        let mut b = self.chain.with_chain(|c| {
            let now = c.tip_header().timestamp_ms + 1;
            c.template(vec![], now)
        });
        assert!(solve(&mut b.header, u64::MAX));
        self.chain.submit_block(b.clone()).await.unwrap();
        b
    }
}

fn params(shift: usize) -> Arc<NetworkParams> {
    let g =
        Genesis { bits: bits_from_target(U256::MAX >> shift), ..NetworkParams::regtest().genesis };
    Arc::new(NetworkParams::from_genesis(g).unwrap())
}

fn chain(p: &Arc<NetworkParams>) -> Blockchain {
    Blockchain::open(p.clone(), Store::open_in_memory().unwrap(), BlockchainConfig::default())
        .unwrap()
}

async fn node(net: &MemoryTransport, i: u8, p: &Arc<NetworkParams>, c: Blockchain) -> Node {
    let ccfg = ConsensusConfig {
        status_interval: Duration::from_millis(500),
        ..ConsensusConfig::default()
    };
    node_with(net, i, p, c, ccfg).await
}

async fn node_with(
    net: &MemoryTransport,
    i: u8,
    p: &Arc<NetworkParams>,
    c: Blockchain,
    ccfg: ConsensusConfig,
) -> Node {
    node_clocked(net, i, p, c, ccfg, system_clock()).await
}

async fn node_clocked(
    net: &MemoryTransport,
    i: u8,
    p: &Arc<NetworkParams>,
    c: Blockchain,
    ccfg: ConsensusConfig,
    clock: Clock,
) -> Node {
    let ip = IpAddr::from([10, 0, 0, i]);
    let cfg = SwitchConfig { listen_addr: Some(SocketAddr::new(ip, 0)), ..SwitchConfig::default() };
    let mempool = Mempool::new(MempoolConfig::default());
    let chain = ChainService::with_clock(ChainServiceConfig::default(), c, mempool, clock);
    let mem = Arc::new(MempoolReactor::new(chain.clone()));
    let cons = Arc::new(ConsensusReactor::new(ccfg, chain.clone()));
    let scfg = BlockSyncConfig {
        status_wait: Duration::from_millis(300),
        headers_timeout: Duration::from_secs(5),
        ..BlockSyncConfig::default()
    };
    let sync = Arc::new(BlockSyncReactor::new(scfg, chain.clone()));
    let info = NodeInfo::new(&p.network_id(), &format!("n{i}"));
    let sw = Switch::builder(NodeKey::generate(), info, cfg, net.with_ip(ip))
        .shared_reactor(cons.clone())
        .shared_reactor(mem.clone())
        .shared_reactor(sync.clone())
        .build()
        .unwrap();
    sw.start().await.unwrap();
    cons.start(&sw);
    mem.start(&sw);
    sync.start(&sw);
    Node { sw, chain, mem }
}

async fn connect(a: &Node, b: &Node) {
    a.sw.dial(&b.sw.net_address().unwrap()).await.unwrap();
}

/// One stream of "something changed" from many watches.
fn merge<T: Send + Sync + 'static>(rxs: Vec<watch::Receiver<T>>) -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    for mut r in rxs {
        let tx = tx.clone();
        tokio::spawn(async move {
            while r.changed().await.is_ok() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Waits for `cond`, re-checking on every event, for at most `secs`.
async fn until(
    events: &mut mpsc::UnboundedReceiver<()>,
    secs: u64,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if cond() {
            return true;
        }
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(())) => {}
            _ => return cond(),
        }
    }
}

fn tips(nodes: &[&Node]) -> mpsc::UnboundedReceiver<()> {
    merge(nodes.iter().map(|n| n.chain.watch_tip()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_miners_converge_on_one_chain() {
    let p = params(16);
    let net = MemoryTransport::new();
    let a = node(&net, 1, &p, chain(&p)).await;
    let b = node(&net, 2, &p, chain(&p)).await;
    connect(&a, &b).await;
    let mut ev = tips(&[&a, &b]);
    let (ma, mb) = (a.miner(), b.miner());
    assert!(until(&mut ev, 60, || a.height() >= 15 && b.height() >= 15).await, "both mined");
    let found = (ma.blocks_found(), mb.blocks_found());
    assert!(ma.hashes() > 0 && mb.hashes() > 0);
    ma.stop();
    mb.stop();
    // Both miners found blocks; break any weight tie with one more block.
    assert!(found.0 > 0 && found.1 > 0, "found {found:?}");
    a.mine_one().await;
    assert!(until(&mut ev, 30, || a.tip() == b.tip()).await, "tips {:?} {:?}", a.tip(), b.tip());
    let main = |n: &Node| {
        n.chain.with_chain(|c| (0..=c.height()).map(|h| c.height_to_hash(h)).collect::<Vec<_>>())
    };
    assert_eq!(a.chain.status().weight, b.chain.status().weight);
    assert_eq!(main(&a), main(&b));
    println!("converged at height {} after {found:?} blocks found", a.height());
}

/// A status heavier than ours is block sync's, headers first: the late
/// node asks no `GetBlocks` of its own (those only chase a pushed block's
/// missing parents).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_catches_up_headers_first() {
    let p = params(8);
    let mut long = chain(&p);
    for _ in 0..150 {
        let now = long.tip_header().timestamp_ms + 1;
        let mut b = long.template(vec![Bytes::from_static(b"w")], now);
        b.txs = vec![Bytes::from(format!("word {}", b.header.height))];
        b.header.merkle_root = b.compute_merkle_root();
        assert!(solve(&mut b.header, u64::MAX));
        long.process_block(b, None, u64::MAX / 2).unwrap();
    }
    let net = MemoryTransport::new();
    let a = node(&net, 1, &p, long).await;
    let b = node(&net, 2, &p, chain(&p)).await;
    let mut ev = tips(&[&b]);
    connect(&b, &a).await;
    assert!(until(&mut ev, 30, || b.tip() == a.tip()).await, "b at {}", b.height());
    assert_eq!(b.height(), 150);
    let sent = |n: &Node, ch: u8| -> u64 {
        n.sw.peers()[0].stats().channels.iter().filter(|c| c.id == ch).map(|c| c.msgs_sent).sum()
    };
    // Its consensus channel carried statuses only (one on connect and
    // one per 500 ms status round); the blocks came on block sync's.
    assert!(
        sent(&a, BLOCKSYNC_CHANNEL) >= 150,
        "{} block sync messages",
        sent(&a, BLOCKSYNC_CHANNEL)
    );
    let statuses = sent(&b, CONSENSUS_CHANNEL);
    assert!(statuses <= 1 + 2 * 30, "{statuses} consensus messages from the late node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_gossip_into_a_block_and_leave_every_mempool() {
    let p = params(12);
    let net = MemoryTransport::new();
    let a = node(&net, 1, &p, chain(&p)).await;
    let b = node(&net, 2, &p, chain(&p)).await;
    let c = node(&net, 3, &p, chain(&p)).await;
    connect(&a, &b).await;
    connect(&b, &c).await;
    let mut added = merge(vec![c.chain.watch_txs_added()]);
    let txs: Vec<Bytes> = (0..20).map(|i| Bytes::from(format!("hello {i}"))).collect();
    for t in &txs {
        a.mem.submit(t.clone()).unwrap();
    }
    // Two hops: a -> b -> c.
    assert!(until(&mut added, 30, || c.chain.with_mempool(|m| m.len()) == 20).await);
    assert_eq!(b.chain.with_mempool(|m| m.len()), 20);
    // c mines them; every mempool empties as the block spreads.
    let mut ev = tips(&[&a, &b, &c]);
    let miner = c.miner();
    assert!(
        until(&mut ev, 30, || [&a, &b, &c].iter().all(|n| n.chain.with_mempool(|m| m.is_empty())))
            .await
    );
    drop(miner);
    let mined: usize = a.chain.with_chain(|chain| {
        (1..=chain.height())
            .map(|h| chain.block(&chain.height_to_hash(h).unwrap()).unwrap().unwrap().txs.len())
            .sum()
    });
    assert_eq!(mined, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_an_invalid_block_is_banned_and_the_node_goes_on() {
    let p = params(8);
    let net = MemoryTransport::new();
    let victim = node(&net, 1, &p, chain(&p)).await;
    let evil = node(&net, 2, &p, chain(&p)).await;
    let mut events = victim.sw.subscribe();
    connect(&evil, &victim).await;
    // A block whose proof of work fails.
    let mut bad = victim.chain.with_chain(|c| c.template(vec![], 0));
    let target = plexus_reactors::chain::target_from_bits(bad.header.bits).unwrap();
    while bad.hash().to_u256() <= target {
        bad.header.nonce += 1;
    }
    let msg = pb::Message {
        sum: Some(pb::message::Sum::NewBlock(pb::NewBlock { block: Some(bad.to_proto()) })),
    };
    evil.sw.peers()[0].send(CONSENSUS_CHANNEL, msg.encode_to_vec()).await.unwrap();
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await.unwrap().unwrap() {
            SwitchEvent::PeerRemoved { id, reason } if id == evil.sw.node_id() => break reason,
            _ => {}
        }
    };
    assert!(
        matches!(&reason, StopReason::Misbehavior { reason: r, .. } if r.contains("proof of work")),
        "{reason:?}"
    );
    assert_eq!(victim.height(), 0);
    // The victim goes on: an honest node syncs from it.
    victim.mine_one().await;
    let honest = node(&net, 3, &p, chain(&p)).await;
    let mut ev = tips(&[&honest]);
    connect(&honest, &victim).await;
    assert!(until(&mut ev, 10, || honest.height() == 1).await);
    // And the banned one cannot come back.
    assert!(evil.sw.dial(&victim.sw.net_address().unwrap()).await.is_err());
}

/// A peer whose status claims far more work than it has is asked for
/// headers by block sync, shows none of that work, and is banned for the
/// weight lie (Chia's rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_lying_about_its_weight_is_banned() {
    let p = params(8);
    let net = MemoryTransport::new();
    let fast =
        ConsensusConfig { status_interval: Duration::from_secs(1), ..ConsensusConfig::default() };
    let victim = node_with(&net, 1, &p, chain(&p), fast).await;
    // The liar's own status loop stays quiet so only the lie is heard.
    let quiet = ConsensusConfig {
        status_interval: Duration::from_secs(3600),
        ..ConsensusConfig::default()
    };
    let liar = node_with(&net, 2, &p, chain(&p), quiet).await;
    let mut events = victim.sw.subscribe();
    connect(&liar, &victim).await;
    let lie = pb::Status {
        height: 1_000_000,
        weight: vec![0xff; 32].into(),
        tip_hash: vec![1; 32].into(),
    };
    let msg = pb::Message { sum: Some(pb::message::Sum::Status(lie)) }.encode_to_vec();
    // The liar keeps lying (its honest status on connect, sent by its own
    // reactor at a moment the test does not control, must not end the
    // lie); the victim asks for its headers and gets none past genesis.
    let to_victim = liar.sw.peers()[0].clone();
    let lying = tokio::spawn(async move {
        while to_victim.send(CONSENSUS_CHANNEL, msg.clone()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await.unwrap().unwrap() {
            SwitchEvent::PeerRemoved { id, reason } if id == liar.sw.node_id() => break reason,
            _ => {}
        }
    };
    lying.abort();
    assert!(
        matches!(&reason, StopReason::Misbehavior { reason: r, .. } if r.contains("claimed weight")),
        "{reason:?}"
    );
}

/// A miner whose clock runs 3 h ahead: its heavier chain is refused by the
/// clock rule and never blamed (docs/protocol.md §8.4), round after round,
/// and is taken once the honest clock reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miner_with_a_clock_ahead_is_not_banned_and_is_followed_in_time() {
    let p = params(8);
    let net = MemoryTransport::new();
    let ahead_ms = 3 * 3600 * 1000;
    // Its chain: five blocks stamped 3 h from now.
    let mut c = chain(&p);
    let start = system_clock()() + ahead_ms;
    for i in 0..5 {
        let mut b = c.template(vec![], start + i * 1000);
        assert!(solve(&mut b.header, u64::MAX));
        c.process_block(b, None, start + i * 1000).unwrap();
    }
    let future_tip = c.tip();
    let offset = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let o = offset.clone();
    let clock: Clock =
        Arc::new(move || system_clock()() + o.load(std::sync::atomic::Ordering::SeqCst));
    let fast = ConsensusConfig {
        status_interval: Duration::from_millis(300),
        ..ConsensusConfig::default()
    };
    let honest = node_clocked(&net, 1, &p, chain(&p), fast.clone(), clock).await;
    let ahead = node_with(&net, 2, &p, c, fast).await;
    connect(&ahead, &honest).await;
    // Statuses go by: block sync asked for its headers once, the clock
    // rule refused them, the claim waits for its time, and nobody is
    // blamed (a liar is banned at once: a_peer_lying_about_its_weight_is_banned).
    let answers = || {
        honest
            .sw
            .peer(&ahead.sw.node_id())
            .map(|x| x.stats().channels.iter().map(|c| c.msgs_recv).sum::<u64>())
    };
    let t = std::time::Instant::now();
    // The dial returns once the dialer has the peer; the honest side may
    // add it a moment later.
    let mut seen = false;
    loop {
        match answers() {
            Some(n) if n >= 20 => break,
            Some(_) => seen = true,
            None => assert!(
                !seen,
                "the miner ahead was dropped: {:?}",
                honest.sw.last_stop_reason(&ahead.sw.node_id())
            ),
        }
        assert!(t.elapsed() < Duration::from_secs(30), "rounds did not go by");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(honest.sw.standing(&ahead.sw.node_id()).score, 0.0, "blamed for our clock");
    assert_ne!(honest.tip(), future_tip);
    // The honest clock catches up: the next round takes the chain.
    offset.store(ahead_ms + 10_000, std::sync::atomic::Ordering::SeqCst);
    let mut tips = honest.chain.watch_tip();
    tokio::time::timeout(Duration::from_secs(30), async {
        while honest.tip() != future_tip {
            tips.changed().await.unwrap();
        }
    })
    .await
    .expect("the chain was taken once its time came");
}

/// `subscribe` reports each tip change in order: the new blocks, then a
/// heavier fork as one event that names the blocks it took off the main
/// chain and those it put on; the reorg counters follow.
#[tokio::test]
async fn chain_events_report_new_tips_and_reorgs() {
    let p = params(8);
    let net = MemoryTransport::new();
    let a = node(&net, 1, &p, chain(&p)).await;
    let mut events = a.chain.subscribe();
    let b1 = a.mine_one().await;
    let b2 = a.mine_one().await;
    for b in [&b1, &b2] {
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.new_tip, b.hash());
        assert_eq!(ev.connected.len(), 1);
        assert_eq!(ev.connected[0].hash, b.hash());
        assert_eq!(ev.connected[0].height, b.header.height);
        assert!(ev.disconnected.is_empty());
        assert_eq!(ev.source, None);
    }
    assert_eq!(a.chain.reorgs(), (0, 0));
    // A fork of three blocks from genesis, built on another chain.
    let other = chain(&p);
    let mut fork = Vec::new();
    let mut c = other;
    for i in 0..3 {
        let now = c.tip_header().timestamp_ms + 7 + i;
        let mut b = c.template(vec![Bytes::from(format!("fork {i}"))], now);
        assert!(solve(&mut b.header, u64::MAX));
        c.process_block(b.clone(), None, now).unwrap();
        fork.push(b);
    }
    let results = a.chain.import_blocks(fork.clone(), None).await;
    assert!(results.iter().all(Result::is_ok));
    // Fork blocks 1 and 2 only tie (ties go to the first seen); the
    // third is heavier and moves the tip in one event.
    let ev = events.recv().await.unwrap();
    assert_eq!((ev.fork_height, ev.height, ev.new_tip), (0, 3, fork[2].hash()));
    let gone: Vec<BlockHash> = ev.disconnected.iter().map(|s| s.hash).collect();
    assert_eq!(gone, vec![b2.hash(), b1.hash()]);
    let came: Vec<BlockHash> = ev.connected.iter().map(|s| s.hash).collect();
    assert_eq!(came, fork.iter().map(Block::hash).collect::<Vec<_>>());
    assert_eq!(ev.connected[0].n_txs, 1);
    assert!(events.try_recv().is_err(), "one event for the reorg");
    assert_eq!(a.chain.reorgs(), (1, 2));
}
