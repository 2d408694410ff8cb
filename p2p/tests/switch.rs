//! Multi-switch tests over the in-memory transport (and one over loopback
//! TCP): connect and disconnect, every upgrade rejection, limits,
//! persistent redial, bans, broadcast, reactor isolation, the chat example;
//! and the peer manager's rules against real switches: bans by identity
//! (honest neighbours on one IP untouched), wire violations scored across
//! reconnects and restarts with decay, inbound eviction.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plexus_p2p::node_info::{self, NodeInfo};
use plexus_p2p::switch::SwitchBuildError;
use plexus_p2p::{
    ChannelDescriptor, Envelope, MemoryTransport, Misbehavior, NetAddress, NodeKey,
    PeerManagerConfig, Reactor, RejectReason, SecretConfig, SecretConnection, SecretError,
    StopReason, Switch, SwitchConfig, TcpTransport, Transport,
};
use prost::Message;

#[allow(dead_code)]
#[path = "../examples/chat.rs"]
mod chat;

use chat::{ChatLine, ChatReactor, CHAT};

fn chat_info(moniker: &str, listen: &str) -> NodeInfo {
    let mut i = NodeInfo::new("plexus-chat", moniker);
    i.listen_addr = listen.into();
    i
}

/// Counts messages; optionally sleeps in `receive` (a slow reactor);
/// reports misbehaviour for the text "bad".
#[derive(Default)]
struct Probe {
    ch: u8,
    got: AtomicUsize,
    added: AtomicUsize,
    removed: parking_lot::Mutex<Vec<String>>,
    slow: bool,
}

impl Probe {
    fn on(ch: u8) -> Self {
        Probe { ch, ..Probe::default() }
    }
}

impl Reactor for Probe {
    type Message = ChatLine;
    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(self.ch).recv_message_capacity(4096).send_queue_capacity(4)]
    }
    async fn add_peer(&self, _peer: &plexus_p2p::Peer) {
        self.added.fetch_add(1, Ordering::SeqCst);
        changed();
    }
    async fn remove_peer(&self, _peer: &plexus_p2p::Peer, reason: &StopReason) {
        self.removed.lock().push(reason.to_string());
        changed();
    }
    async fn receive(&self, env: Envelope<ChatLine>) {
        if env.message.text == "block" {
            // Stands for a block new to us (the consensus reactor's call).
            env.switch.note_novel_block(&env.peer.id());
        }
        if env.message.text == "bad" {
            env.switch.report(&env.peer, Misbehavior::BadBlock, "said bad").await;
            return;
        }
        if self.slow {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        self.got.fetch_add(1, Ordering::SeqCst);
        changed();
    }
}

fn config() -> SwitchConfig {
    SwitchConfig { listen_addr: Some("127.0.0.1:0".parse().unwrap()), ..SwitchConfig::default() }
}

async fn node_with<T: Transport>(
    t: T,
    cfg: SwitchConfig,
    network: &str,
    probes: Vec<Arc<Probe>>,
) -> Switch {
    let mut info = chat_info("n", "127.0.0.1:1");
    info.network = network.into();
    let mut b = Switch::builder(NodeKey::generate(), info, cfg, t);
    for p in probes {
        b = b.shared_reactor(p);
    }
    let sw = b.build().unwrap();
    sw.start().await.unwrap();
    watch(&sw);
    sw
}

async fn node(net: &MemoryTransport, probes: Vec<Arc<Probe>>) -> Switch {
    node_with(net.clone(), config(), "test", probes).await
}

/// A NodeInfo template on the "test" network.
fn test_info(name: &str) -> NodeInfo {
    let mut i = chat_info(name, "127.0.0.1:1");
    i.network = "test".into();
    i
}

fn line(text: &str) -> Vec<u8> {
    ChatLine { id: 1, from: "t".into(), text: text.into() }.encode_to_vec()
}

/// Woken on every change the tests watch: switch events (forwarded by
/// [`watch`]) and probe updates. Conditions are re-checked on each wake,
/// so no test sleeps to synchronise.
static CHANGED: tokio::sync::Notify = tokio::sync::Notify::const_new();

fn changed() {
    CHANGED.notify_waiters();
}

/// Forwards a switch's events to [`CHANGED`].
fn watch(sw: &Switch) {
    let mut rx = sw.subscribe();
    tokio::spawn(async move {
        while !matches!(rx.recv().await, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
            changed();
        }
    });
}

async fn eventually(f: impl FnMut() -> bool) {
    until(&CHANGED, f).await
}

/// Waits until `f` holds, re-checking whenever `n` is notified.
async fn until(n: &tokio::sync::Notify, mut f: impl FnMut() -> bool) {
    let wait = async {
        loop {
            let woken = n.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if f() {
                return;
            }
            woken.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait).await.expect("condition never held");
}

#[tokio::test]
async fn connect_exchange_and_disconnect() {
    connect_exchange_and_disconnect_over(MemoryTransport::new()).await;
}

#[tokio::test]
async fn connect_exchange_and_disconnect_over_tcp() {
    connect_exchange_and_disconnect_over(TcpTransport).await;
}

async fn connect_exchange_and_disconnect_over<T: Transport>(t: T) {
    let (pa, pb) = (Arc::new(Probe::on(1)), Arc::new(Probe::on(1)));
    let a = node_with(t.clone(), config(), "test", vec![pa.clone()]).await;
    let b = node_with(t, config(), "test", vec![pb.clone()]).await;
    let peer = a.dial(&b.net_address().unwrap()).await.unwrap();
    assert!(peer.is_outbound());
    assert_eq!(peer.id(), b.node_id());
    eventually(|| b.peer(&a.node_id()).is_some()).await;
    assert_eq!(a.num_peers(), (1, 0));
    assert_eq!(b.num_peers(), (0, 1));
    assert_eq!(b.peer(&a.node_id()).unwrap().node_info().moniker, "n");
    peer.send(1, line("hi")).await.unwrap();
    eventually(|| pb.got.load(Ordering::SeqCst) == 1).await;
    assert_eq!(pb.added.load(Ordering::SeqCst), 1);
    assert_eq!(peer.stats().channels[0].msgs_sent, 1);
    a.stop_peer_for_error(&peer, "test says bye").await;
    eventually(|| a.peers().is_empty() && b.peers().is_empty()).await;
    assert!(matches!(a.last_stop_reason(&b.node_id()), Some(StopReason::Error(_))));
    assert_eq!(pa.removed.lock().len(), 1);
    eventually(|| pb.removed.lock().len() == 1).await;
}

#[test]
fn channel_clash_is_a_build_error() {
    let b = Switch::builder(
        NodeKey::generate(),
        chat_info("n", "127.0.0.1:1"),
        config(),
        MemoryTransport::new(),
    )
    .reactor(Probe::on(7))
    .reactor(Probe::on(7));
    assert!(matches!(b.build(), Err(SwitchBuildError::ChannelClash(7))));
}

#[tokio::test]
async fn other_network_is_refused_before_any_traffic() {
    let net = MemoryTransport::new();
    let pb = Arc::new(Probe::on(1));
    let a = node_with(net.clone(), config(), "mainnet", vec![Arc::new(Probe::on(1))]).await;
    let b = node_with(net.clone(), config(), "testnet", vec![pb.clone()]).await;
    let err = a.dial(&b.net_address().unwrap()).await.unwrap_err();
    match err {
        RejectReason::Incompatible(why) => assert!(why.contains("network"), "{why}"),
        other => panic!("{other}"),
    }
    assert_eq!(pb.added.load(Ordering::SeqCst), 0);
    assert!(b.peers().is_empty());
}

#[tokio::test]
async fn no_shared_channel_is_incompatible() {
    let net = MemoryTransport::new();
    let a = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let b = node(&net, vec![Arc::new(Probe::on(2))]).await;
    let err = a.dial(&b.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::Incompatible(ref w) if w.contains("no channel")), "{err}");
}

async fn pair(net: &MemoryTransport) -> (Switch, Switch) {
    (node(net, vec![Arc::new(Probe::on(1))]).await, node(net, vec![Arc::new(Probe::on(1))]).await)
}

#[tokio::test]
async fn dialing_ourselves_is_refused() {
    let net = MemoryTransport::new();
    let (a, _) = pair(&net).await;
    let err = a.dial(&a.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::SelfConnection), "{err}");
}

#[tokio::test]
async fn wrong_expected_id_is_refused() {
    let net = MemoryTransport::new();
    let (a, b) = pair(&net).await;
    let mut wrong = b.net_address().unwrap();
    wrong.id = NodeKey::generate().node_id();
    let err = a.dial(&wrong).await.unwrap_err();
    assert!(matches!(err, RejectReason::Handshake(SecretError::WrongPeer { .. })), "{err}");
}

#[tokio::test]
async fn duplicate_connection_is_refused() {
    let net = MemoryTransport::new();
    let (a, b) = pair(&net).await;
    a.dial(&b.net_address().unwrap()).await.unwrap();
    let err = a.dial(&b.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::Duplicate(id) if id == b.node_id()), "{err}");
    assert_eq!(a.counters().rejected["duplicate"], 1);
    // From the other side too: b already has a as a peer.
    eventually(|| b.peer(&a.node_id()).is_some()).await;
    let err = b.dial(&a.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::Duplicate(_)), "{err}");
}

/// A copy of a connected node's home (same node key) dialing the same
/// peer is refused, and told why in the peer's NodeInfo (a `Refusal`), so
/// both operators can see it; the first connection stays.
#[tokio::test]
async fn a_second_process_with_one_node_key_is_told_it_is_a_duplicate() {
    let net = MemoryTransport::new();
    let p = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let key = NodeKey::generate();
    let with_key = |key: NodeKey| {
        let net = net.clone();
        async move {
            let mut info = chat_info("copy", "127.0.0.1:1");
            info.network = "test".into();
            let sw = Switch::builder(key, info, config(), net)
                .shared_reactor(Arc::new(Probe::on(1)))
                .build()
                .unwrap();
            sw.start().await.unwrap();
            watch(&sw);
            sw
        }
    };
    let x = with_key(key.clone()).await;
    let copy = with_key(key).await;
    x.dial(&p.net_address().unwrap()).await.unwrap();
    eventually(|| p.peer(&x.node_id()).is_some()).await;
    let err = copy.dial(&p.net_address().unwrap()).await.unwrap_err();
    match &err {
        RejectReason::NodeInfo(node_info::NodeInfoError::Refused(r)) => {
            assert_eq!(r.code, plexus_p2p::RefusalCode::Duplicate);
            assert!(r.to_string().contains("another process with this node key"), "{r}");
        }
        other => panic!("the copy was not told why: {other}"),
    }
    assert!(copy.peer(&p.node_id()).is_none());
    eventually(|| p.counters().rejected.get("duplicate") == Some(&1)).await;
    assert!(p.peer(&x.node_id()).is_some(), "the first connection was dropped");
    assert!(x.peer(&p.node_id()).is_some());
}

#[tokio::test]
async fn other_block_protocol_is_incompatible() {
    let net = MemoryTransport::new();
    let a = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let mut info = test_info("v2");
    info.protocol_version.block = 2;
    let b = Switch::builder(NodeKey::generate(), info, config(), net.clone())
        .reactor(Probe::on(1))
        .build()
        .unwrap();
    b.start().await.unwrap();
    let err = a.dial(&b.net_address().unwrap()).await.unwrap_err();
    assert!(
        matches!(err, RejectReason::Incompatible(ref w) if w.contains("block protocol")),
        "{err}"
    );
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_is_refused() {
    use tokio::io::AsyncWriteExt;
    let net = MemoryTransport::new();
    let (_, b) = pair(&net).await;
    let mut s = net.dial(b.listen_addr().unwrap()).await.unwrap();
    s.write_all(b"\x00\x05hello").await.unwrap();
    eventually(|| b.counters().rejected.get("handshake") == Some(&1)).await;
    assert!(b.peers().is_empty());
}

#[tokio::test]
async fn too_many_from_one_ip() {
    let net = MemoryTransport::new();
    let b = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let far = net.with_ip("10.0.0.9".parse().unwrap());
    let a1 = node_with(far.clone(), config(), "test", vec![Arc::new(Probe::on(1))]).await;
    let a2 = node_with(far, config(), "test", vec![Arc::new(Probe::on(1))]).await;
    a1.dial(&b.net_address().unwrap()).await.unwrap();
    eventually(|| b.num_peers().1 == 1).await;
    assert!(a2.dial(&b.net_address().unwrap()).await.is_err());
    eventually(|| b.counters().rejected.get("too_many_from_ip") == Some(&1)).await;
    // Loopback is exempt by default.
    let c = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let d = node(&net, vec![Arc::new(Probe::on(1))]).await;
    c.dial(&b.net_address().unwrap()).await.unwrap();
    d.dial(&b.net_address().unwrap()).await.unwrap();
}

#[tokio::test]
async fn filters_by_address_and_by_id() {
    let net = MemoryTransport::new();
    let a = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let b = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let blocked = b.node_id();
    let sw = Switch::builder(NodeKey::generate(), test_info("f"), config(), net.clone())
        .reactor(Probe::on(1))
        .filter_peer(move |info: NodeInfo| async move {
            if info.node_id == blocked {
                Err("blocked id".into())
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    sw.start().await.unwrap();
    watch(&sw);
    let err = sw.dial(&b.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::Filtered(ref w) if w == "blocked id"), "{err}");
    sw.dial(&a.net_address().unwrap()).await.unwrap();

    let by_addr = Switch::builder(NodeKey::generate(), test_info("g"), config(), net.clone())
        .reactor(Probe::on(1))
        .filter_addr(|addr: std::net::SocketAddr| async move { Err(format!("no dialing {addr}")) })
        .build()
        .unwrap();
    let err = by_addr.dial(&a.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::Filtered(_)), "{err}");
}

#[tokio::test(start_paused = true)]
async fn slow_filter_times_out() {
    let net = MemoryTransport::new();
    let a = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let cfg = SwitchConfig { filter_timeout: Duration::from_secs(2), ..config() };
    let sw = Switch::builder(NodeKey::generate(), test_info("s"), cfg, net.clone())
        .reactor(Probe::on(1))
        .filter_addr(|_| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        })
        .build()
        .unwrap();
    let t0 = tokio::time::Instant::now();
    let err = sw.dial(&a.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::FilterTimeout), "{err}");
    assert_eq!(t0.elapsed(), Duration::from_secs(2));
}

/// A hand-made peer that completes the handshake and then sends `info`.
async fn raw_dial(
    net: &MemoryTransport,
    to: &Switch,
    info: impl FnOnce(&NodeKey) -> NodeInfo,
) -> RejectReason {
    let key = NodeKey::generate();
    let before = to.counters().rejected.values().sum::<u64>();
    let stream = net.dial(to.listen_addr().unwrap()).await.unwrap();
    let mut conn =
        SecretConnection::connect(stream, &key, None, &SecretConfig::default()).await.unwrap();
    let ours = info(&key);
    // Our side of the exchange fails or succeeds; the switch refuses.
    let _ = node_info::exchange(&mut conn, &ours, None, Duration::from_secs(5)).await;
    eventually(|| to.counters().rejected.values().sum::<u64>() > before).await;
    drop(conn);
    RejectReason::Stopped
}

#[tokio::test]
async fn node_info_with_another_id_is_refused() {
    let net = MemoryTransport::new();
    let b = node(&net, vec![Arc::new(Probe::on(1))]).await;
    raw_dial(&net, &b, |_| {
        let mut i = test_info("liar");
        i.channels = vec![1];
        i.node_id = NodeKey::generate().node_id();
        i
    })
    .await;
    assert_eq!(b.counters().rejected.get("node_info_id"), Some(&1));
    assert!(b.peers().is_empty());
}

#[tokio::test]
async fn invalid_node_info_is_refused() {
    let net = MemoryTransport::new();
    let b = node(&net, vec![Arc::new(Probe::on(1))]).await;
    raw_dial(&net, &b, |k| {
        let mut i = test_info("bad\u{7}moniker");
        i.channels = vec![1];
        i.node_id = k.node_id();
        i
    })
    .await;
    assert_eq!(b.counters().rejected.get("node_info"), Some(&1));
    assert!(b.peers().is_empty());
}

#[tokio::test]
async fn inbound_and_outbound_limits() {
    let net = MemoryTransport::new();
    let cfg = SwitchConfig {
        peers: PeerManagerConfig { max_inbound: 1, ..PeerManagerConfig::default() },
        ..config()
    };
    let b = node_with(net.clone(), cfg, "test", vec![Arc::new(Probe::on(1))]).await;
    let a1 = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let a2 = node(&net, vec![Arc::new(Probe::on(1))]).await;
    a1.dial(&b.net_address().unwrap()).await.unwrap();
    eventually(|| b.num_peers().1 == 1).await;
    let _ = a2.dial(&b.net_address().unwrap()).await;
    eventually(|| b.counters().rejected.get("inbound_full") == Some(&1)).await;
    assert_eq!(b.num_peers().1, 1);

    let cfg = SwitchConfig {
        peers: PeerManagerConfig { max_outbound: 1, ..PeerManagerConfig::default() },
        ..config()
    };
    let c = node_with(net.clone(), cfg, "test", vec![Arc::new(Probe::on(1))]).await;
    c.dial(&a1.net_address().unwrap()).await.unwrap();
    let err = c.dial(&a2.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::OutboundFull), "{err}");
}

#[tokio::test]
async fn misbehaviour_disconnects_and_bans() {
    let net = MemoryTransport::new();
    let a = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let b = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let peer = a.dial(&b.net_address().unwrap()).await.unwrap();
    peer.send(1, line("bad")).await.unwrap();
    eventually(|| b.peers().is_empty()).await;
    assert!(matches!(b.last_stop_reason(&a.node_id()), Some(StopReason::Misbehavior { .. })));
    assert_eq!(b.counters().bans, 1);
    // b refuses a while banned (by identity, after the handshake).
    eventually(|| a.peers().is_empty()).await;
    let _ = a.dial(&b.net_address().unwrap()).await;
    eventually(|| b.counters().rejected.get("banned") == Some(&1)).await;
    // And b will not dial a.
    let err = b.dial(&a.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::Banned(_)), "{err}");
}

#[tokio::test]
async fn undecodable_message_is_a_protocol_error() {
    let net = MemoryTransport::new();
    let a = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let b = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let peer = a.dial(&b.net_address().unwrap()).await.unwrap();
    peer.send(1, vec![0xff, 0xff, 0xff]).await.unwrap();
    eventually(|| b.peers().is_empty()).await;
    assert!(
        matches!(b.last_stop_reason(&a.node_id()), Some(StopReason::Misbehavior { ref reason, .. }) if reason.contains("undecodable"))
    );
}

#[tokio::test]
async fn broadcast_reaches_every_peer() {
    let net = MemoryTransport::new();
    let hub = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let mut probes = Vec::new();
    for _ in 0..4 {
        let p = Arc::new(Probe::on(1));
        let n = node(&net, vec![p.clone()]).await;
        hub.dial(&n.net_address().unwrap()).await.unwrap();
        probes.push((p, n));
    }
    let sent = hub.broadcast(1, line("all")).await;
    assert_eq!(sent.len(), 4);
    assert!(sent.iter().all(|(_, ok)| *ok));
    for (p, _) in &probes {
        eventually(|| p.got.load(Ordering::SeqCst) == 1).await;
    }
    let except = probes[0].1.node_id();
    let sent = hub.broadcast_except(&except, 1, line("most")).await;
    assert_eq!(sent.len(), 3);
    assert!(sent.iter().all(|(id, _)| *id != except));
}

/// A reactor stuck in `receive` holds back only its own channel.
#[tokio::test]
async fn blocking_reactor_does_not_stall_another() {
    let net = MemoryTransport::new();
    let slow = Arc::new(Probe { slow: true, ..Probe::on(1) });
    let fast = Arc::new(Probe::on(2));
    let a = node(&net, vec![Arc::new(Probe::on(1)), Arc::new(Probe::on(2))]).await;
    let b = node(&net, vec![slow.clone(), fast.clone()]).await;
    let peer = a.dial(&b.net_address().unwrap()).await.unwrap();
    // Enough to fill the slow channel's queue and window.
    for _ in 0..20 {
        let _ = peer.try_send(1, line("stuck"));
    }
    for i in 0..100 {
        peer.send(2, line(&format!("m{i}"))).await.unwrap();
    }
    eventually(|| fast.got.load(Ordering::SeqCst) == 100).await;
    assert_eq!(slow.got.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn persistent_peer_is_redialed_after_it_restarts() {
    let net = MemoryTransport::new();
    let key_b = NodeKey::generate();
    let addr: std::net::SocketAddr = "127.0.0.1:30001".parse().unwrap();
    let start_b = |key: NodeKey| {
        let net = net.clone();
        async move {
            let cfg = SwitchConfig { listen_addr: Some(addr), ..SwitchConfig::default() };
            let mut info = chat_info("b", "127.0.0.1:30001");
            info.network = "test".into();
            let sw = Switch::builder(key, info, cfg, net).reactor(Probe::on(1)).build().unwrap();
            sw.start().await.unwrap();
            watch(&sw);
            sw
        }
    };
    let b = start_b(key_b.clone()).await;
    let target = NetAddress::new(key_b.node_id(), addr);
    let cfg = SwitchConfig { persistent_peers: vec![target.clone()], ..config() };
    let a = node_with(net.clone(), cfg, "test", vec![Arc::new(Probe::on(1))]).await;
    eventually(|| a.peer(&key_b.node_id()).is_some()).await;
    // b goes away; a keeps trying with backoff; b comes back on the same
    // address; a reconnects.
    b.stop().await;
    drop(b);
    eventually(|| a.peer(&key_b.node_id()).is_none()).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let _b2 = start_b(key_b.clone()).await;
    eventually(|| a.peer(&key_b.node_id()).is_some()).await;
    assert!(a.peer(&key_b.node_id()).unwrap().is_persistent());
}

#[tokio::test(start_paused = true)]
async fn idle_peer_is_disconnected_despite_heartbeats() {
    let net = MemoryTransport::new();
    let cfg = SwitchConfig {
        idle_timeout: Duration::from_secs(120),
        mconn: plexus_p2p::MConnConfig {
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(5),
            ..Default::default()
        },
        ..config()
    };
    let a = node_with(net.clone(), cfg.clone(), "test", vec![Arc::new(Probe::on(1))]).await;
    let b = node_with(net.clone(), cfg, "test", vec![Arc::new(Probe::on(1))]).await;
    let t0 = tokio::time::Instant::now();
    a.dial(&b.net_address().unwrap()).await.unwrap();
    // Heartbeats flow all along (ping every 10 s), yet no message does.
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(a.peers().len(), 1, "still connected before idle_timeout");
    assert!(a.peers()[0].stats().last_rtt.is_some());
    tokio::time::sleep(Duration::from_secs(60)).await;
    eventually(|| a.peers().is_empty()).await;
    assert!(t0.elapsed() >= Duration::from_secs(120));
    assert!(matches!(a.last_stop_reason(&b.node_id()), Some(StopReason::Idle(_))));
}

/// The chat example: three nodes in a line over loopback TCP; a line
/// typed at one end reaches the other end through the middle.
#[tokio::test]
async fn chat_example_gossips_across_a_line_of_nodes() {
    let mut nodes = Vec::new();
    for name in ["left", "middle", "right"] {
        let r = Arc::new(ChatReactor::default());
        let info = chat_info(name, "127.0.0.1:1");
        let sw = Switch::builder(NodeKey::generate(), info, config(), TcpTransport)
            .shared_reactor(r.clone())
            .build()
            .unwrap();
        sw.start().await.unwrap();
        watch(&sw);
        nodes.push((sw, r));
    }
    nodes[0].0.dial(&nodes[1].0.net_address().unwrap()).await.unwrap();
    nodes[1].0.dial(&nodes[2].0.net_address().unwrap()).await.unwrap();
    eventually(|| nodes[2].0.peers().len() == 1 && nodes[0].0.peers().len() == 1).await;
    nodes[0].1.say(&nodes[0].0, "hello from the left").await;
    let far = nodes[2].1.clone();
    until(&far.heard, || far.lines.lock().unwrap().len() == 1).await;
    let got = nodes[2].1.lines.lock().unwrap()[0].clone();
    assert_eq!((got.from.as_str(), got.text.as_str()), ("left", "hello from the left"));
    assert_eq!(nodes[1].1.lines.lock().unwrap().len(), 1);
    assert_eq!(CHAT, 0x70);
}

#[tokio::test]
async fn metrics_count_peers_messages_and_rejections() {
    let net = MemoryTransport::new();
    let pb = Arc::new(Probe::on(1));
    let a = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let b = node(&net, vec![pb.clone()]).await;
    let mut registry = prometheus_client::registry::Registry::default();
    a.metrics().register(&mut registry);
    let mut rb = prometheus_client::registry::Registry::default();
    b.metrics().register(&mut rb);
    let peer = a.dial(&b.net_address().unwrap()).await.unwrap();
    peer.send(1, line("counted")).await.unwrap();
    eventually(|| pb.got.load(Ordering::SeqCst) == 1).await;
    let _ = a.dial(&b.net_address().unwrap()).await; // duplicate
    let text = |r: &prometheus_client::registry::Registry| {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, r).unwrap();
        s
    };
    let ta = text(&registry);
    assert!(ta.contains("plexus_p2p_peers{direction=\"Outbound\"} 1"), "{ta}");
    assert!(ta.contains("plexus_p2p_messages_sent_total{channel=\"0x01\"} 1"), "{ta}");
    assert!(ta.contains("plexus_p2p_dial_failures_total{reason=\"duplicate\"} 1"), "{ta}");
    let tb = text(&rb);
    assert!(tb.contains("plexus_p2p_messages_received_total{channel=\"0x01\"} 1"), "{tb}");
    assert!(tb.contains("plexus_p2p_peers{direction=\"Inbound\"} 1"), "{tb}");
}

/// Serves "upper-case this" requests and makes its own; silent when told.
struct Upper {
    rpc: plexus_p2p::switch::rpc::Requester,
    silent: bool,
    unsolicited: AtomicUsize,
}

impl Reactor for Upper {
    type Message = plexus_p2p::switch::rpc::RpcFrame;
    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(0x40)]
    }
    async fn remove_peer(&self, peer: &plexus_p2p::Peer, _reason: &StopReason) {
        self.rpc.peer_gone(&peer.id());
    }
    async fn receive(&self, env: Envelope<Self::Message>) {
        match self.rpc.handle(&env.peer, env.message) {
            Ok(Some(req)) if !self.silent => {
                let line = ChatLine::decode(req.payload).unwrap();
                let up = ChatLine { text: line.text.to_uppercase(), ..line };
                plexus_p2p::switch::rpc::respond(&env.peer, 0x40, req.id, &up).await.unwrap();
            }
            Ok(_) => {}
            Err(_) => {
                self.unsolicited.fetch_add(1, Ordering::SeqCst);
                changed();
            }
        }
    }
}

fn upper(silent: bool) -> Arc<Upper> {
    Arc::new(Upper {
        rpc: plexus_p2p::switch::rpc::Requester::new(Duration::from_secs(5), 8),
        silent,
        unsolicited: AtomicUsize::new(0),
    })
}

async fn rpc_node(net: &MemoryTransport, r: Arc<Upper>) -> Switch {
    let sw = Switch::builder(NodeKey::generate(), test_info("rpc"), config(), net.clone())
        .shared_reactor(r)
        .build()
        .unwrap();
    sw.start().await.unwrap();
    watch(&sw);
    sw
}

#[tokio::test(start_paused = true)]
async fn request_response_matches_ids_and_times_out() {
    use plexus_p2p::switch::rpc::{RequestError, RpcFrame};
    let net = MemoryTransport::new();
    let (client, server, mute) = (upper(false), upper(false), upper(true));
    let c = rpc_node(&net, client.clone()).await;
    let s = rpc_node(&net, server.clone()).await;
    let m = rpc_node(&net, mute.clone()).await;
    let to_s = c.dial(&s.net_address().unwrap()).await.unwrap();
    // Several requests in flight at once each get their own answer.
    let reqs = ["a", "bb", "ccc"].map(|t| {
        let (client, to_s) = (client.clone(), to_s.clone());
        tokio::spawn(async move {
            let r: ChatLine = client
                .rpc
                .request(&to_s, 0x40, &ChatLine { id: 0, from: "c".into(), text: t.into() })
                .await
                .unwrap();
            r.text
        })
    });
    let mut got = Vec::new();
    for r in reqs {
        got.push(r.await.unwrap());
    }
    assert_eq!(got, ["A", "BB", "CCC"]);
    assert_eq!(client.rpc.pending(), 0);
    // A peer that never answers: Timeout after 5 s.
    let to_m = c.dial(&m.net_address().unwrap()).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let err =
        client.rpc.request::<_, ChatLine>(&to_m, 0x40, &ChatLine::default()).await.unwrap_err();
    assert!(matches!(err, RequestError::Timeout(_)), "{err}");
    assert_eq!(t0.elapsed(), Duration::from_secs(5));
    // A response nobody asked for is reported.
    to_s.send_msg(0x40, &RpcFrame { id: 999, response: true, payload: Default::default() })
        .await
        .unwrap();
    eventually(|| server.unsolicited.load(Ordering::SeqCst) == 1).await;
}

/// A transport whose dials never complete and whose listener accepts
/// nothing: for dial and handshake timeouts.
#[derive(Clone)]
struct Blackhole(MemoryTransport);

impl Transport for Blackhole {
    type Stream = tokio::io::DuplexStream;
    type Listener = plexus_p2p::transport::MemoryListener;
    async fn listen(&self, addr: std::net::SocketAddr) -> std::io::Result<Self::Listener> {
        self.0.listen(addr).await
    }
    async fn dial(&self, _addr: std::net::SocketAddr) -> std::io::Result<Self::Stream> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn dial_timeout_is_read() {
    let net = MemoryTransport::new();
    let (_, b) = pair(&net).await;
    let cfg = SwitchConfig { dial_timeout: Duration::from_secs(3), ..config() };
    let a = node_with(Blackhole(net.clone()), cfg, "test", vec![Arc::new(Probe::on(1))]).await;
    let t0 = tokio::time::Instant::now();
    let err = a.dial(&b.net_address().unwrap()).await.unwrap_err();
    assert!(
        matches!(err, RejectReason::Dial(ref e) if e.kind() == std::io::ErrorKind::TimedOut),
        "{err}"
    );
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn handshake_timeout_is_read() {
    let net = MemoryTransport::new();
    // A listener that accepts the connection and never says a word.
    let mut silent = net.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr =
        NetAddress::new(NodeKey::generate().node_id(), plexus_p2p::Listener::local_addr(&silent));
    tokio::spawn(async move {
        let _keep = plexus_p2p::Listener::accept(&mut silent).await;
        std::future::pending::<()>().await;
    });
    let cfg = SwitchConfig { handshake_timeout: Duration::from_secs(7), ..config() };
    let a = node_with(net.clone(), cfg, "test", vec![Arc::new(Probe::on(1))]).await;
    let t0 = tokio::time::Instant::now();
    let err = a.dial(&addr).await.unwrap_err();
    assert!(matches!(err, RejectReason::Handshake(SecretError::Timeout(_))), "{err}");
    assert_eq!(t0.elapsed(), Duration::from_secs(7));
}

#[tokio::test]
async fn refused_dial_and_stopped_switch() {
    let net = MemoryTransport::new();
    let (a, b) = pair(&net).await;
    let nobody = NetAddress::new(NodeKey::generate().node_id(), "127.0.0.1:9".parse().unwrap());
    let err = a.dial(&nobody).await.unwrap_err();
    assert!(matches!(err, RejectReason::Dial(_)), "{err}");
    a.stop().await;
    let err = a.dial(&b.net_address().unwrap()).await.unwrap_err();
    assert!(matches!(err, RejectReason::Stopped), "{err}");
}

#[tokio::test]
async fn unconditional_peers_pass_the_inbound_limit() {
    let net = MemoryTransport::new();
    let a1 = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let vip_key = NodeKey::generate();
    let cfg = SwitchConfig {
        peers: PeerManagerConfig {
            max_inbound: 1,
            unconditional_peer_ids: vec![vip_key.node_id()],
            ..PeerManagerConfig::default()
        },
        ..config()
    };
    let b = node_with(net.clone(), cfg, "test", vec![Arc::new(Probe::on(1))]).await;
    a1.dial(&b.net_address().unwrap()).await.unwrap();
    eventually(|| b.num_peers().1 == 1).await;
    let vip = Switch::builder(vip_key, test_info("vip"), config(), net.clone())
        .reactor(Probe::on(1))
        .build()
        .unwrap();
    vip.dial(&b.net_address().unwrap()).await.unwrap();
    eventually(|| b.num_peers().1 == 2).await;
}

/// Each side dials the other at the same moment: both end up with the one
/// connection dialed by the lower id, and only that.
#[tokio::test]
async fn simultaneous_dials_keep_one_connection() {
    let net = MemoryTransport::new();
    for _ in 0..5 {
        let (a, b) = pair(&net).await;
        let (na, nb) = (a.net_address().unwrap(), b.net_address().unwrap());
        let (ra, rb) = tokio::join!(a.dial(&nb), b.dial(&na));
        let _ = (ra, rb);
        let lower_dialed = |sw: &Switch, other: &Switch| {
            sw.peer(&other.node_id())
                .is_some_and(|p| p.is_outbound() == (sw.node_id() < other.node_id()))
        };
        eventually(|| lower_dialed(&a, &b) && lower_dialed(&b, &a)).await;
        assert_eq!(a.peers().len(), 1);
        assert_eq!(b.peers().len(), 1);
    }
}

/// A peer whose reactor is stuck in `receive` still leaves the switch
/// after `remove_grace`, so it can reconnect.
#[tokio::test(start_paused = true)]
async fn stuck_reactor_does_not_keep_a_dead_peer() {
    let net = MemoryTransport::new();
    let slow = Arc::new(Probe { slow: true, ..Probe::on(1) });
    let a = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let cfg = SwitchConfig { remove_grace: Duration::from_secs(5), ..config() };
    let b = node_with(net.clone(), cfg, "test", vec![slow.clone()]).await;
    let peer = a.dial(&b.net_address().unwrap()).await.unwrap();
    peer.send(1, line("stuck")).await.unwrap();
    eventually(|| b.peer(&a.node_id()).is_some()).await;
    a.stop_peer_for_error(&peer, "bye").await;
    eventually(|| b.peers().is_empty()).await;
    assert_eq!(slow.removed.lock().len(), 1);
    a.dial(&b.net_address().unwrap()).await.unwrap();
}

#[tokio::test]
async fn abandoned_dial_leaves_no_trace() {
    let net = MemoryTransport::new();
    let (a, b) = pair(&net).await;
    // Give up on the dial at once; the switch finishes (or drops) it alone.
    let _ = tokio::time::timeout(Duration::from_micros(1), a.dial(&b.net_address().unwrap())).await;
    eventually(|| a.peer(&b.node_id()).is_some()).await;
    a.stop_peer_for_error(&a.peer(&b.node_id()).unwrap(), "again").await;
    eventually(|| a.peers().is_empty()).await;
    // Not stuck as "dialing" or "duplicate".
    a.dial(&b.net_address().unwrap()).await.unwrap();
}

// ------------------------------------------------------------ peer manager

/// Three nodes behind one IP (a NAT); one misbehaves toward a fourth and is
/// banned. The ban hits its identity only: the two others stay, keep
/// relaying, and can redial while it holds; a new key from the same IP is
/// accepted.
#[tokio::test]
async fn a_ban_spares_honest_neighbours_on_the_same_ip() {
    let net = MemoryTransport::new();
    let probe = Arc::new(Probe::on(1));
    let cfg = SwitchConfig {
        peers: PeerManagerConfig { max_inbound_per_ip: 8, ..PeerManagerConfig::default() },
        ..config()
    };
    let victim = node_with(net.clone(), cfg, "test", vec![probe.clone()]).await;
    let nat = net.with_ip("10.7.7.7".parse().unwrap());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let n = node_with(nat.clone(), config(), "test", vec![Arc::new(Probe::on(1))]).await;
        n.dial(&victim.net_address().unwrap()).await.unwrap();
        nodes.push(n);
    }
    eventually(|| victim.num_peers().1 == 3).await;
    let (evil, honest) = (&nodes[0], &nodes[1..]);
    let to_victim = evil.peer(&victim.node_id()).unwrap();
    to_victim.send(1, line("bad")).await.unwrap();
    eventually(|| victim.peer(&evil.node_id()).is_none()).await;
    assert!(victim.is_banned(&evil.node_id()));
    assert!(matches!(
        victim.last_stop_reason(&evil.node_id()),
        Some(StopReason::Misbehavior { kind: Misbehavior::BadBlock, ban: Some(_), .. })
    ));
    // The neighbours are still connected and still heard.
    for h in honest {
        assert!(victim.peer(&h.node_id()).is_some());
        h.peer(&victim.node_id()).unwrap().send(1, line("still here")).await.unwrap();
    }
    eventually(|| probe.got.load(Ordering::SeqCst) == 2).await;
    // They can leave and come back while the ban holds.
    let h = &honest[0];
    h.stop_peer_gracefully(&h.peer(&victim.node_id()).unwrap()).await;
    eventually(|| victim.peer(&h.node_id()).is_none()).await;
    h.dial(&victim.net_address().unwrap()).await.unwrap();
    eventually(|| victim.peer(&h.node_id()).is_some()).await;
    // The banned identity cannot.
    eventually(|| evil.peers().is_empty()).await;
    let _ = evil.dial(&victim.net_address().unwrap()).await;
    eventually(|| victim.counters().rejected.get("banned") == Some(&1)).await;
    assert!(victim.peer(&evil.node_id()).is_none());
    // A new key from the banned node's IP is accepted.
    let fresh = node_with(nat, config(), "test", vec![Arc::new(Probe::on(1))]).await;
    fresh.dial(&victim.net_address().unwrap()).await.unwrap();
    eventually(|| victim.peer(&fresh.node_id()).is_some()).await;
    assert!(victim.is_banned(&evil.node_id()));
}

/// The outcome of one connection attempt by a raw peer: admitted (then it
/// sends a packet on an undeclared channel and is dropped) or refused.
async fn undeclared_channel_try(
    net: &MemoryTransport,
    victim: &Switch,
    key: &NodeKey,
) -> Result<(), &'static str> {
    use plexus_proto::p2p::{packet::Sum, Packet, PacketMsg};
    let mut events = victim.subscribe();
    let stream = net.dial(victim.listen_addr().unwrap()).await.unwrap();
    let mut conn =
        SecretConnection::connect(stream, key, None, &SecretConfig::default()).await.unwrap();
    let mut info = test_info("raw");
    info.node_id = key.node_id();
    info.channels = vec![1];
    let _ = node_info::exchange(&mut conn, &info, None, Duration::from_secs(5)).await;
    loop {
        match events.recv().await.unwrap() {
            plexus_p2p::SwitchEvent::PeerAdded { id, .. } if id == key.node_id() => break,
            plexus_p2p::SwitchEvent::Rejected { reason, .. } => return Err(reason),
            _ => {}
        }
    }
    let pkt = Packet {
        sum: Some(Sum::Msg(PacketMsg { channel_id: 9, eof: true, data: vec![1].into() })),
    };
    conn.send_frame(&pkt.encode_length_delimited_to_vec()).await.unwrap();
    loop {
        if let plexus_p2p::SwitchEvent::PeerRemoved { id, reason } = events.recv().await.unwrap() {
            if id == key.node_id() {
                assert!(
                    matches!(
                        reason,
                        StopReason::Misbehavior { kind: Misbehavior::UndeclaredChannel, .. }
                    ),
                    "{reason}"
                );
                return Ok(());
            }
        }
    }
}

/// A peer repeating a wire violation (a message on an undeclared channel)
/// with the same key is refused by its third try; its score survives the
/// reconnects and a restart of the victim (saved and restored), and decays
/// back after the half-life.
#[tokio::test]
async fn a_repeated_wire_violation_is_banned_across_reconnects_and_restarts() {
    let net = MemoryTransport::new();
    let key = NodeKey::generate();
    let victim_key = NodeKey::generate();
    let start = |records: Vec<plexus_p2p::switch::ReputationRecord>| {
        let (net, k) = (net.clone(), victim_key.clone());
        async move {
            let cfg = SwitchConfig {
                listen_addr: Some("127.0.0.1:31001".parse().unwrap()),
                ..SwitchConfig::default()
            };
            let sw = Switch::builder(k, test_info("victim"), cfg, net)
                .reactor(Probe::on(1))
                .reputation(records)
                .build()
                .unwrap();
            // The stopped victim's accept task lets go of the address as
            // soon as it runs.
            let mut tries = 0;
            while let Err(e) = sw.start().await {
                assert!(tries < 10_000, "{e}");
                tries += 1;
                tokio::task::yield_now().await;
            }
            watch(&sw);
            sw
        }
    };
    let victim = start(Vec::new()).await;
    let id = key.node_id();
    assert_eq!(undeclared_channel_try(&net, &victim, &key).await, Ok(()));
    assert_eq!(victim.standing(&id).score.round(), 50.0, "scored once, not banned");
    assert!(!victim.is_banned(&id));
    assert_eq!(undeclared_channel_try(&net, &victim, &key).await, Ok(()));
    assert!(victim.is_banned(&id), "banned at the second offence");
    assert_eq!(undeclared_channel_try(&net, &victim, &key).await, Err("banned"));
    // The victim restarts with what it saved: still banned.
    let saved = victim.reputation_snapshot();
    victim.stop().await;
    drop(victim);
    let victim = start(saved).await;
    assert!(victim.is_banned(&id));
    assert_eq!(undeclared_channel_try(&net, &victim, &key).await, Err("banned"));
    let score = victim.standing(&id).score;
    assert!(score > 40.0, "the score survived the restart: {score}");
    // A half-life later (paused clock) the ban is over and the score halved:
    // one more offence is forgiven, not banned.
    tokio::time::pause();
    tokio::time::advance(PeerManagerConfig::default().score_half_life).await;
    tokio::time::resume();
    let halved = victim.standing(&id).score;
    assert!((halved - score / 2.0).abs() < 1.0, "{halved} vs {score}");
    assert_eq!(undeclared_channel_try(&net, &victim, &key).await, Ok(()));
    assert!(!victim.is_banned(&id));
}

/// Inbound is full of peers from one netgroup: a peer from another netgroup
/// gets in by evicting the youngest of them that did not just relay a novel
/// block; the outbound peer is untouched.
#[tokio::test]
async fn a_full_inbound_evicts_for_a_peer_from_another_netgroup() {
    let net = MemoryTransport::new();
    let cfg = SwitchConfig {
        peers: PeerManagerConfig {
            max_inbound: 4,
            max_inbound_per_netgroup: 0,
            evict_protect_netgroups: 1,
            evict_protect_ping: 0,
            evict_protect_txs: 0,
            evict_protect_blocks: 1,
            evict_protect_uptime_percent: 0,
            ..PeerManagerConfig::default()
        },
        ..config()
    };
    let vprobe = Arc::new(Probe::on(1));
    let victim = node_with(net.clone(), cfg, "test", vec![vprobe.clone()]).await;
    let out = node(&net, vec![Arc::new(Probe::on(1))]).await;
    victim.dial(&out.net_address().unwrap()).await.unwrap();
    let mut inbound = Vec::new();
    for i in 1..=4 {
        let t = net.with_ip(format!("20.1.0.{i}").parse().unwrap());
        let n = node_with(t, config(), "test", vec![Arc::new(Probe::on(1))]).await;
        n.dial(&victim.net_address().unwrap()).await.unwrap();
        eventually(|| victim.peer(&n.node_id()).is_some()).await;
        inbound.push(n);
    }
    // The youngest relays a novel block.
    let youngest = &inbound[3];
    youngest.peer(&victim.node_id()).unwrap().send(1, line("block")).await.unwrap();
    eventually(|| vprobe.got.load(Ordering::SeqCst) == 1).await;
    let t = net.with_ip("30.2.0.1".parse().unwrap());
    let newcomer = node_with(t, config(), "test", vec![Arc::new(Probe::on(1))]).await;
    newcomer.dial(&victim.net_address().unwrap()).await.unwrap();
    eventually(|| victim.peer(&newcomer.node_id()).is_some()).await;
    let third = &inbound[2];
    eventually(|| victim.peer(&third.node_id()).is_none()).await;
    assert!(matches!(victim.last_stop_reason(&third.node_id()), Some(StopReason::Evicted)));
    assert_eq!(victim.counters().evictions, 1);
    assert!(victim.peer(&youngest.node_id()).is_some(), "relayed a novel block");
    assert!(victim.peer(&out.node_id()).is_some(), "outbound never evicted");
    assert_eq!(victim.num_peers(), (1, 4));
}

/// Idle connections that never start the handshake cannot keep honest
/// peers out: 1,000 from one address are held to that IP's share, and a
/// table filled by eight IPs gives way to newcomers from other IPs (the
/// oldest pending handshake of the busiest IP is displaced).
#[tokio::test]
async fn idle_connections_cannot_keep_an_honest_peer_out() {
    let net = MemoryTransport::new();
    let victim = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let to = victim.listen_addr().unwrap();
    let mut idle = Vec::new();
    let one = net.with_ip("10.66.0.1".parse().unwrap());
    for _ in 0..1000 {
        if let Ok(s) = one.dial(to).await {
            idle.push(s);
        }
    }
    for i in 0..8u8 {
        let t = net.with_ip(format!("10.67.0.{i}").parse().unwrap());
        for _ in 0..8 {
            idle.push(t.dial(to).await.unwrap());
        }
    }
    for i in 0..10u8 {
        let t = net.with_ip(format!("10.77.0.{i}").parse().unwrap());
        let honest = node_with(t, config(), "test", vec![Arc::new(Probe::on(1))]).await;
        honest.dial(&victim.net_address().unwrap()).await.expect("first attempt");
    }
    assert_eq!(victim.num_peers().1, 10);
    let c = victim.counters();
    assert!(c.rejected.get("displaced").copied().unwrap_or(0) >= 1, "{:?}", c.rejected);
    drop(idle);
}

/// A ping flood is cut as soon as it passes the control allowance, scored
/// as a flood; an honest peer's pings are answered on time meanwhile.
#[tokio::test]
async fn a_ping_flood_is_cut_and_honest_pongs_stay_on_time() {
    use plexus_proto::p2p::{packet::Sum, Packet, PacketPing};
    let net = MemoryTransport::new();
    let victim = node(&net, vec![Arc::new(Probe::on(1))]).await;
    let honest_cfg = SwitchConfig {
        mconn: plexus_p2p::MConnConfig {
            ping_interval: Duration::from_millis(1000),
            pong_timeout: Duration::from_millis(800),
            ..Default::default()
        },
        ..config()
    };
    let t = net.with_ip("10.8.0.1".parse().unwrap());
    let honest = node_with(t, honest_cfg, "test", vec![Arc::new(Probe::on(1))]).await;
    honest.dial(&victim.net_address().unwrap()).await.unwrap();
    let mut events = victim.subscribe();

    let key = NodeKey::generate();
    let stream =
        net.with_ip("10.9.0.1".parse().unwrap()).dial(victim.listen_addr().unwrap()).await.unwrap();
    let mut conn =
        SecretConnection::connect(stream, &key, None, &SecretConfig::default()).await.unwrap();
    let mut info = test_info("flood");
    info.node_id = key.node_id();
    info.channels = vec![1];
    node_info::exchange(&mut conn, &info, None, Duration::from_secs(5)).await.unwrap();
    let ping = Packet { sum: Some(Sum::Ping(PacketPing {})) }.encode_length_delimited_to_vec();
    let frame: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 1000).collect();
    let mut frames = 0;
    while conn.send_frame(&frame).await.is_ok() && frames < 10_000 {
        frames += 1;
    }
    let reason = loop {
        if let plexus_p2p::SwitchEvent::PeerRemoved { id, reason } = events.recv().await.unwrap() {
            if id == key.node_id() {
                break reason;
            }
        }
    };
    assert!(matches!(reason, StopReason::Misbehavior { kind: Misbehavior::Flood, .. }), "{reason}");
    assert!(frames < 10_000, "the flood was never cut");
    // The honest peer is still there, and its pings are answered within
    // its 800 ms pong timeout.
    let p = honest.peer(&victim.node_id()).expect("honest peer kept");
    // No event reports a pong, so the round trip is polled: two more ping
    // cycles after the flood (a late pong would have closed the peer with
    // PongTimeout).
    let pongs = |p: &plexus_p2p::Peer| p.stats().last_rtt;
    let start = pongs(&p);
    let mut seen = 0;
    let mut last = start;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = pongs(&p);
        if now != last {
            seen += 1;
            last = now;
        }
    }
    assert!(last.is_some_and(|rtt| rtt < Duration::from_millis(800)), "{last:?}");
    assert!(victim.peer(&honest.node_id()).is_some());
}

/// A peer's uptime follows tokio's clock like the rest of the switch (it
/// read the OS clock, so under a paused or simulated clock it stayed near
/// zero and a seed never dropped a peer after `seed_peer_lifetime`).
#[tokio::test(start_paused = true)]
async fn uptime_follows_the_runtime_clock() {
    let net = MemoryTransport::new();
    let (a, b) = pair(&net).await;
    a.dial(&b.net_address().unwrap()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(100)).await;
    let up = a.peer(&b.node_id()).expect("still connected").uptime();
    assert!(up >= Duration::from_secs(100), "uptime {up:?} after 100 s");
}
