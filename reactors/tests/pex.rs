//! PEX over the in-memory transport with tokio's paused clock: a network
//! that starts from one seed, the abuse rules, and a restart from a saved
//! book.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use plexus_p2p::{
    Envelope, MemoryTransport, NetAddress, NodeId, NodeInfo, NodeKey, Reactor, StopReason, Switch,
    SwitchConfig, SwitchEvent,
};
use plexus_proto::pex::{self as pb, message::Sum};
use plexus_reactors::pex::{AddrBook, AddrBookConfig, PexConfig, PexReactor, PEX_CHANNEL};
use rand::SeedableRng;

fn book(seed: u64) -> AddrBook {
    AddrBook::new(AddrBookConfig::default(), Box::new(rand::rngs::StdRng::seed_from_u64(seed)))
}

struct Node {
    sw: Switch,
    pex: Arc<PexReactor>,
}

async fn start_node(
    net: &MemoryTransport,
    ip: IpAddr,
    key: NodeKey,
    pex_cfg: PexConfig,
    b: AddrBook,
) -> Node {
    start_seeded_node(net, ip, key, pex_cfg, b, None).await
}

/// As [`start_node`], the switch's and the reactor's RNGs seeded with
/// `rng_seed` when given (a repeatable run).
async fn start_seeded_node(
    net: &MemoryTransport,
    ip: IpAddr,
    key: NodeKey,
    pex_cfg: PexConfig,
    b: AddrBook,
    rng_seed: Option<u64>,
) -> Node {
    let t = net.with_ip(ip);
    let cfg = SwitchConfig { listen_addr: Some(SocketAddr::new(ip, 0)), ..SwitchConfig::default() };
    let mut pex = PexReactor::new(pex_cfg, b);
    if let Some(s) = rng_seed {
        pex = pex.with_rng_seed(s);
    }
    let pex = Arc::new(pex);
    let mut builder = Switch::builder(key, NodeInfo::new("sim", "n"), cfg, t);
    if let Some(s) = rng_seed {
        builder = builder.rng_seed(s);
    }
    let sw = builder.shared_reactor(pex.clone()).build().unwrap();
    sw.start().await.unwrap();
    pex.start(&sw);
    Node { sw, pex }
}

fn ip(i: usize) -> IpAddr {
    IpAddr::from([31, i as u8, 0, 1])
}

/// Whether the graph of connections is connected (BFS from node 0).
fn connected(nodes: &[Node]) -> bool {
    let idx: HashMap<NodeId, usize> =
        nodes.iter().enumerate().map(|(i, n)| (n.sw.node_id(), i)).collect();
    let mut seen = HashSet::from([1usize]);
    let mut q = VecDeque::from([1usize]);
    while let Some(i) = q.pop_front() {
        for p in nodes[i].sw.peers() {
            if let Some(&j) = idx.get(&p.id()) {
                if seen.insert(j) {
                    q.push_back(j);
                }
            }
        }
    }
    // Node 0 is the seed, which keeps no peers.
    seen.len() == nodes.len() - 1
}

/// 100 nodes, each knowing only the seed: every non-seed node reaches its
/// outbound target (8) and the graph is connected.
#[tokio::test(start_paused = true)]
async fn hundred_nodes_from_one_seed() {
    const N: usize = 100;
    let net = MemoryTransport::new();
    let seed_key = NodeKey::generate();
    let seed_cfg = PexConfig { seed_mode: true, ..PexConfig::default() };
    let mut nodes = vec![start_node(&net, ip(0), seed_key.clone(), seed_cfg, book(0)).await];
    let seed_addr = nodes[0].sw.net_address().unwrap();
    for i in 1..N {
        let cfg = PexConfig { seeds: vec![seed_addr.clone()], ..PexConfig::default() };
        nodes.push(start_node(&net, ip(i), NodeKey::generate(), cfg, book(i as u64)).await);
    }
    let period = PexConfig::default().ensure_peers_period;
    let mut rounds = 0;
    loop {
        tokio::time::sleep(period).await;
        rounds += 1;
        let done = nodes[1..].iter().all(|n| n.sw.num_peers().0 >= 8) && connected(&nodes);
        if done || rounds >= 40 {
            break;
        }
    }
    let msgs: u64 = nodes
        .iter()
        .map(|n| {
            n.sw.peers()
                .iter()
                .map(|p| {
                    p.stats()
                        .channels
                        .iter()
                        .filter(|c| c.id == PEX_CHANNEL)
                        .map(|c| c.msgs_sent)
                        .sum::<u64>()
                })
                .sum::<u64>()
        })
        .sum();
    let reached = nodes[1..].iter().filter(|n| n.sw.num_peers().0 >= 8).count();
    println!("pex simulation: {N} nodes, {rounds} rounds of {period:?}, {reached}/{} at the outbound target, connected: {}, PEX messages on live connections: {msgs}", N - 1, connected(&nodes));
    assert_eq!(reached, N - 1, "after {rounds} rounds");
    assert!(connected(&nodes));
    assert!(rounds <= 20, "took {rounds} rounds");
    assert!(nodes[0].sw.peers().len() < 40, "the seed keeps no long-lived peers");
    for n in &nodes {
        n.sw.stop().await;
    }
}

/// A node restarted with its saved book reconnects without any seed.
#[tokio::test(start_paused = true)]
async fn restart_from_saved_book_needs_no_seed() {
    let net = MemoryTransport::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("addrbook.json");
    let mut others = Vec::new();
    for i in 1..5 {
        others.push(
            start_node(&net, ip(i), NodeKey::generate(), PexConfig::default(), book(i as u64))
                .await,
        );
    }
    let key = NodeKey::generate();
    let cfg = PexConfig {
        seeds: vec![others[0].sw.net_address().unwrap()],
        book_path: Some(path.clone()),
        ..PexConfig::default()
    };
    let me = start_node(&net, ip(50), key.clone(), cfg, book(50)).await;
    // Let it learn the others through the first one.
    for o in &others[1..] {
        o.sw.dial(&others[0].sw.net_address().unwrap()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(me.pex.book().lock().len() >= 4, "learned {}", me.pex.book().lock().len());
    me.sw.stop().await;
    me.pex.save();
    drop(me);
    // Restart: same key, no seeds, the saved book.
    let saved = AddrBook::load(
        AddrBookConfig::default(),
        &path,
        Box::new(rand::rngs::StdRng::seed_from_u64(51)),
    );
    assert!(saved.len() >= 4);
    let again = start_node(&net, ip(51), key, PexConfig::default(), saved).await;
    tokio::time::sleep(Duration::from_secs(90)).await;

    assert!(again.sw.num_peers().0 >= 3, "reconnected to {}", again.sw.num_peers().0);
}

/// Two nodes whose PEX runs every second with a book below its low water
/// keep asking each other, but no more often than `min_request_interval`:
/// in five minutes nobody is punished and the connection stays up.
#[tokio::test(start_paused = true)]
async fn fast_ensure_period_asks_within_the_limit() {
    let net = MemoryTransport::new();
    let fast = || PexConfig { ensure_peers_period: Duration::from_secs(1), ..PexConfig::default() };
    let a = start_node(&net, ip(1), NodeKey::generate(), fast(), book(1)).await;
    let cfg = PexConfig { seeds: vec![a.sw.net_address().unwrap()], ..fast() };
    let b = start_node(&net, ip(2), NodeKey::generate(), cfg, book(2)).await;
    let mut events = a.sw.subscribe();
    b.sw.dial(&a.sw.net_address().unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await;
    while let Ok(ev) = events.try_recv() {
        assert!(!matches!(ev, SwitchEvent::PeerRemoved { .. }), "{ev:?}");
    }
    assert_eq!(a.sw.num_peers(), (0, 1));
    assert_eq!(b.sw.num_peers(), (1, 0));
}

/// Sends raw PEX messages (no PEX reactor of its own).
struct Raw;
impl Reactor for Raw {
    type Message = pb::Message;
    fn channels(&self) -> Vec<plexus_p2p::ChannelDescriptor> {
        vec![plexus_p2p::ChannelDescriptor::new(PEX_CHANNEL).recv_message_capacity(64 * 1024)]
    }
    async fn receive(&self, _env: Envelope<pb::Message>) {}
}

async fn abuse(msgs: Vec<pb::Message>) -> StopReason {
    let net = MemoryTransport::new();
    let victim = start_node(&net, ip(1), NodeKey::generate(), PexConfig::default(), book(1)).await;
    let mut events = victim.sw.subscribe();
    let cfg =
        SwitchConfig { listen_addr: Some(SocketAddr::new(ip(2), 0)), ..SwitchConfig::default() };
    let raw =
        Switch::builder(NodeKey::generate(), NodeInfo::new("sim", "raw"), cfg, net.with_ip(ip(2)))
            .reactor(Raw)
            .build()
            .unwrap();
    raw.start().await.unwrap();
    let mut raw_events = raw.subscribe();
    // The victim dials the raw node, so the raw node is an outbound peer.
    victim.sw.dial(&raw.net_address().unwrap()).await.unwrap();
    while !matches!(raw_events.recv().await.unwrap(), SwitchEvent::PeerAdded { .. }) {}
    let back = raw.peer(&victim.sw.node_id()).unwrap();
    for m in msgs {
        let _ = back.send_msg(PEX_CHANNEL, &m).await;
    }
    loop {
        match events.recv().await.unwrap() {
            SwitchEvent::PeerRemoved { reason, .. } => return reason,
            _ => continue,
        }
    }
}

fn addrs(n: usize) -> pb::Message {
    let addrs = (0..n)
        .map(|i| pb::NetAddress {
            id: NodeKey::generate().node_id().to_string(),
            ip: format!("32.{}.0.1", i % 250),
            port: 26656,
        })
        .collect();
    pb::Message { sum: Some(Sum::PexAddrs(pb::PexAddrs { addrs })) }
}

#[tokio::test(start_paused = true)]
async fn unsolicited_addrs_are_misbehaviour() {
    // The victim asks its new outbound peer at once, so the first PexAddrs
    // is solicited; the second is not.
    let reason = abuse(vec![addrs(3), addrs(3)]).await;
    assert!(
        matches!(reason, StopReason::Misbehavior { reason: ref w, .. } if w.contains("unsolicited")),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn too_many_addrs_are_misbehaviour() {
    let reason = abuse(vec![addrs(251)]).await;
    assert!(
        matches!(reason, StopReason::Misbehavior { reason: ref w, .. } if w.contains("251")),
        "{reason}"
    );
}

#[tokio::test(start_paused = true)]
async fn asking_too_often_is_misbehaviour() {
    let req = pb::Message { sum: Some(Sum::PexRequest(pb::PexRequest {})) };
    let reason = abuse(vec![req.clone(), req]).await;
    assert!(
        matches!(reason, StopReason::Misbehavior { reason: ref w, .. } if w.contains("too often")),
        "{reason}"
    );
}

/// Answers DNS seed lookups from a table; fails a number of times first.
#[derive(Debug)]
struct FakeDns {
    table: HashMap<String, Vec<IpAddr>>,
    fail_first: std::sync::atomic::AtomicUsize,
    lookups: std::sync::atomic::AtomicUsize,
}

impl plexus_reactors::pex::SeedResolver for FakeDns {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<IpAddr>, String>> + Send + 'a>>
    {
        use std::sync::atomic::Ordering::SeqCst;
        Box::pin(async move {
            self.lookups.fetch_add(1, SeqCst);
            if self.fail_first.load(SeqCst) > 0 {
                self.fail_first.fetch_sub(1, SeqCst);
                return Err("SERVFAIL".into());
            }
            self.table.get(host).cloned().ok_or_else(|| "NXDOMAIN".to_string())
        })
    }
}

/// A node with nothing but a DNS seed name finds the network; lookup
/// failures are retried with backoff, never fatal.
#[tokio::test(start_paused = true)]
async fn dns_seed_bootstraps_after_failed_lookups() {
    let net = MemoryTransport::new();
    // The node behind the DNS name listens on the network's default port.
    let target_ip = ip(7);
    let cfg = SwitchConfig {
        listen_addr: Some(SocketAddr::new(target_ip, 26656)),
        ..SwitchConfig::default()
    };
    let pex = Arc::new(PexReactor::new(PexConfig::default(), book(7)));
    let target = Switch::builder(
        NodeKey::generate(),
        NodeInfo::new("sim", "t"),
        cfg,
        net.with_ip(target_ip),
    )
    .shared_reactor(pex.clone())
    .build()
    .unwrap();
    target.start().await.unwrap();
    let dns = Arc::new(FakeDns {
        table: HashMap::from([("seed.plexus.test".to_string(), vec![target_ip])]),
        fail_first: std::sync::atomic::AtomicUsize::new(3),
        lookups: std::sync::atomic::AtomicUsize::new(0),
    });
    let cfg = PexConfig {
        dns_seeds: vec!["seed.plexus.test".into()],
        resolver: dns.clone(),
        ..PexConfig::default()
    };
    let me = start_node(&net, ip(8), NodeKey::generate(), cfg, book(8)).await;
    let mut events = me.sw.subscribe();
    loop {
        if let SwitchEvent::PeerAdded { id, .. } = events.recv().await.unwrap() {
            assert_eq!(id, target.node_id(), "the id was learned from the handshake");
            break;
        }
    }
    assert!(
        dns.lookups.load(std::sync::atomic::Ordering::SeqCst) >= 4,
        "three failures, then a success"
    );
}

/// A seed crawls: it dials addresses from its book, asks them, learns their
/// peers, and disconnects; it keeps no peers.
#[tokio::test(start_paused = true)]
async fn seed_crawls_and_keeps_no_peers() {
    let net = MemoryTransport::new();
    let mut nodes = Vec::new();
    for i in 1..6 {
        nodes.push(
            start_node(&net, ip(i), NodeKey::generate(), PexConfig::default(), book(i as u64))
                .await,
        );
    }
    // The nodes know each other (a line), the seed knows only the first.
    for w in 0..nodes.len() - 1 {
        nodes[w].sw.dial(&nodes[w + 1].sw.net_address().unwrap()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut seed_book = book(60);
    let first = nodes[0].sw.net_address().unwrap();
    seed_book.add(&first, ip(60), 0, 1, 1).ok();
    let seed_cfg = PexConfig { seed_mode: true, ..PexConfig::default() };
    let seed = start_node(&net, ip(60), NodeKey::generate(), seed_cfg, seed_book).await;
    tokio::time::sleep(Duration::from_secs(150)).await;
    let learned = seed.pex.book().lock().len();
    assert!(learned >= 4, "the seed learned {learned} addresses by crawling");
    assert!(seed.sw.peers().is_empty(), "the seed disconnects what it crawled");
}

/// An address that keeps failing is banned in the book after
/// `max_dial_failures` attempts.
#[tokio::test(start_paused = true)]
async fn repeatedly_failing_address_is_banned() {
    let net = MemoryTransport::new();
    let mut b = book(70);
    let dead = NetAddress::new(NodeKey::generate().node_id(), SocketAddr::new(ip(71), 1234));
    b.add(&dead, ip(72), 0, 1, 1).unwrap();
    let cfg = PexConfig { max_dial_failures: 2, ..PexConfig::default() };
    let me = start_node(&net, ip(70), NodeKey::generate(), cfg, b).await;
    tokio::time::sleep(Duration::from_secs(300)).await;
    let book = me.pex.book();
    let e = book.lock().get(&dead.id).cloned().unwrap();
    assert!(e.banned_until > 0, "{e:?}");
    assert_eq!(e.attempts, 2);
}

/// What a PEX network ended with, by node index: each node's peers (as
/// indices, in order) and the ids its book holds (in order).
type Outcome = Vec<(Vec<usize>, Vec<NodeId>)>;

/// `n` nodes from one seed for `rounds` PEX periods, every key, switch,
/// reactor and book seeded from `seed`, in a fresh runtime on the paused
/// clock.
fn seeded_network(seed: u64, n: usize, rounds: u32) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let net = MemoryTransport::new();
        let key = |i: usize| {
            let mut b = [0u8; 32];
            rand::RngCore::fill_bytes(
                &mut rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64) << 32),
                &mut b,
            );
            NodeKey::from_private_key(&b).unwrap()
        };
        let start = |i: usize, cfg: PexConfig| {
            let s = seed.wrapping_mul(1000).wrapping_add(i as u64);
            start_seeded_node(&net, ip(i), key(i), cfg, book(s), Some(s))
        };
        let seed_cfg = PexConfig { seed_mode: true, ..PexConfig::default() };
        let mut nodes = vec![start(0, seed_cfg).await];
        let seed_addr = nodes[0].sw.net_address().unwrap();
        for i in 1..n {
            let cfg = PexConfig { seeds: vec![seed_addr.clone()], ..PexConfig::default() };
            nodes.push(start(i, cfg).await);
        }
        tokio::time::sleep(PexConfig::default().ensure_peers_period * rounds).await;
        let idx: HashMap<NodeId, usize> =
            nodes.iter().enumerate().map(|(i, n)| (n.sw.node_id(), i)).collect();
        let outcome = nodes
            .iter()
            .map(|n| {
                let peers = n.sw.peers().iter().filter_map(|p| idx.get(&p.id()).copied()).collect();
                let book = n.pex.book().lock().entries().map(|e| e.id).collect();
                (peers, book)
            })
            .collect();
        for n in &nodes {
            n.sw.stop().await;
        }
        outcome
    })
}

/// Same seed, same network: every key, RNG and iteration order the PEX
/// path reads is seeded or ordered, so two runs end with the same peers
/// and books (the groundwork of the deterministic simulation).
#[test]
fn the_same_seed_replays_the_same_network() {
    let a = seeded_network(7, 20, 6);
    let b = seeded_network(7, 20, 6);
    assert!(a.iter().skip(1).all(|(p, _)| !p.is_empty()), "nodes found peers: {a:?}");
    let diff: Vec<usize> = (0..a.len()).filter(|i| a[*i] != b[*i]).collect();
    assert!(diff.is_empty(), "nodes {diff:?} differ between two runs of one seed");
    assert_ne!(a, seeded_network(8, 20, 6), "another seed, another network");
}
