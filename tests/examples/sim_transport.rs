//! Which simulator carries the simulation (issue 19: "the memory
//! transport or turmoil; choose by measurement"): the same network of
//! Plexus switches, run once on the simulation's transport
//! ([`SimTransport`]: memory pipes with delay pumps, on one current-thread
//! runtime with tokio's paused clock) and once on turmoil (one runtime per
//! host, its simulated TCP), with the same 50 ms one-way latency, no loss.
//!
//! Each of `--nodes` nodes runs a real [`Switch`] (Noise handshake,
//! MConnection with its pings) with one small reactor, dials `--degree`
//! neighbours (persistent: redialed), and every 10 s sends a 100-byte
//! message to each peer. After `--seconds` simulated seconds it prints,
//! for each simulator: wall seconds, simulated seconds per wall second,
//! CPU seconds, messages delivered, and the RSS growth per node; and the
//! ratio of the two CPU times (each simulator runs in a child process of
//! its own).
//!
//! ```text
//! cargo run --release -p plexus-tests --example sim_transport -- --nodes 100 --seconds 120
//! ```
//!
//! Turmoil advances time in fixed ticks (`--tick-ms`, default 1 ms, its
//! default) and polls every host's runtime at every tick, so its cost
//! grows with simulated time times hosts; the paused clock jumps straight
//! to the next timer or delivery.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use plexus_p2p::{
    ChannelDescriptor, Envelope, Listener, MemoryTransport, NetAddress, NodeInfo, NodeKey, Reactor,
    Switch, SwitchConfig, Transport,
};
use plexus_tests::sim::{runtime, NetModel, RegionTable, SimTransport};

#[derive(Parser, Debug)]
struct Args {
    /// Nodes.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Simulated seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Neighbours each node dials.
    #[arg(long, default_value_t = 4)]
    degree: usize,
    /// Turmoil's tick, ms.
    #[arg(long, default_value_t = 1)]
    tick_ms: u64,
    /// One line of JSON.
    #[arg(long)]
    json: bool,
    /// Run one simulator only and print its figures (the default runs
    /// each in a child process of its own, so neither inherits the
    /// other's heap).
    #[arg(long, value_parser = ["paused", "turmoil"])]
    only: Option<String>,
}

const CHANNEL: u8 = 0x70;
const PORT: u16 = 26656;
const ONE_WAY_MS: u64 = 50;
const BEAT: Duration = Duration::from_secs(10);

/// A 100-byte message every 10 s to each peer; counts what arrives.
struct Beat {
    received: Arc<AtomicU64>,
}

impl Reactor for Beat {
    type Message = bytes::Bytes;
    fn channels(&self) -> Vec<ChannelDescriptor> {
        vec![ChannelDescriptor::new(CHANNEL).recv_message_capacity(1024)]
    }
    async fn receive(&self, _env: Envelope<bytes::Bytes>) {
        self.received.fetch_add(1, Ordering::Relaxed);
    }
}

fn key(i: usize) -> NodeKey {
    let mut k = [7u8; 32];
    // Away from the bits X25519 clamps (byte 0's lowest three).
    k[8..16].copy_from_slice(&(i as u64).to_le_bytes());
    NodeKey::from_private_key(&k).expect("a 32-byte key")
}

/// Runs node `i` on `transport` for `secs`: listen on `listen`, dial
/// `peers` (persistent), beat every 10 s.
async fn node<T: Transport>(
    i: usize,
    transport: T,
    listen: SocketAddr,
    peers: Vec<NetAddress>,
    received: Arc<AtomicU64>,
    secs: u64,
) {
    let info = NodeInfo::new("sim-transport", &format!("n{i}"));
    let cfg = SwitchConfig { listen_addr: Some(listen), ..SwitchConfig::default() };
    let sw = Switch::builder(key(i), info, cfg, transport)
        .rng_seed(i as u64)
        .reactor(Beat { received })
        .build()
        .expect("a valid switch");
    sw.start().await.expect("listens");

    sw.dial_peers(peers, true).await;
    let end = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut beat = tokio::time::interval(BEAT);
    // A BytesValue of 98 bytes: 100 bytes encoded.
    let msg = bytes::Bytes::from(prost::Message::encode_to_vec(&bytes::Bytes::from(vec![1u8; 98])));
    loop {
        tokio::select! {
            _ = beat.tick() => {
                for p in sw.peers() {
                    p.try_send(CHANNEL, msg.clone());
                }
            }
            _ = tokio::time::sleep_until(end) => break,
        }
    }
    sw.stop().await;
}

/// Each node's neighbours: the next `degree` indexes, wrapping.
fn neighbours(i: usize, n: usize, degree: usize, ip: impl Fn(usize) -> IpAddr) -> Vec<NetAddress> {
    (1..=degree.min(n - 1))
        .map(|d| (i + d) % n)
        .map(|j| NetAddress::new(key(j).node_id(), SocketAddr::new(ip(j), PORT)))
        .collect()
}

struct Outcome {
    wall: f64,
    delivered: u64,
    rss_per_node_mb: f64,
}

/// CPU seconds this process has used (user + system, from
/// `/proc/self/stat`, at 100 ticks per second): robust to other load on
/// the machine, unlike wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name (which may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

fn rss() -> u64 {
    plexus_tests::rss_bytes(std::process::id()).unwrap_or(0)
}

fn run_paused(a: &Args) -> Outcome {
    let ip = |i: usize| IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8 + 1]);
    let received = Arc::new(AtomicU64::new(0));
    let before = rss();
    let wall = Instant::now();
    let peak = runtime().block_on(async {
        let model =
            Arc::new(NetModel::new(RegionTable::single(ONE_WAY_MS as u32), |_| 0, 1 << 30, 0.0, 1));
        let net = MemoryTransport::new();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..a.nodes {
            let t = SimTransport::new(net.with_ip(ip(i)), model.clone());
            let peers = neighbours(i, a.nodes, a.degree, ip);
            let listen = SocketAddr::new(ip(i), PORT);
            set.spawn(node(i, t, listen, peers, received.clone(), a.seconds));
        }
        // The RSS while every node runs.
        tokio::time::sleep(Duration::from_secs(a.seconds / 2)).await;
        let peak = rss();
        while set.join_next().await.is_some() {}
        peak
    });
    Outcome {
        wall: wall.elapsed().as_secs_f64(),
        delivered: received.load(Ordering::Relaxed),
        rss_per_node_mb: peak.saturating_sub(before) as f64 / a.nodes as f64 / (1 << 20) as f64,
    }
}

/// Turmoil's simulated TCP as a Plexus [`Transport`].
#[derive(Clone)]
struct TurmoilTransport;

struct TurmoilListener {
    inner: turmoil::net::TcpListener,
    local: SocketAddr,
}

impl Transport for TurmoilTransport {
    type Stream = turmoil::net::TcpStream;
    type Listener = TurmoilListener;
    async fn listen(&self, addr: SocketAddr) -> std::io::Result<TurmoilListener> {
        // Turmoil binds the unspecified address (or localhost) only.
        let any = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), addr.port());
        let inner = turmoil::net::TcpListener::bind(any).await?;
        let local = inner.local_addr()?;
        Ok(TurmoilListener { inner, local })
    }
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<turmoil::net::TcpStream> {
        turmoil::net::TcpStream::connect(addr).await
    }
}

impl Listener for TurmoilListener {
    type Stream = turmoil::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<(turmoil::net::TcpStream, SocketAddr)> {
        self.inner.accept().await
    }
    fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

fn run_turmoil(a: &Args) -> Outcome {
    let received = Arc::new(AtomicU64::new(0));
    let before = rss();
    let wall = Instant::now();
    let latency = Duration::from_millis(ONE_WAY_MS);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(a.seconds + 60))
        .tick_duration(Duration::from_millis(a.tick_ms))
        .min_message_latency(latency)
        .max_message_latency(latency)
        .fail_rate(0.0)
        .rng_seed(1)
        .build();
    let (n, degree, secs) = (a.nodes, a.degree, a.seconds);
    for i in 0..n {
        let received = received.clone();
        sim.host(format!("n{i}"), move || {
            let received = received.clone();
            async move {
                let ip = |j: usize| turmoil::lookup(format!("n{j}"));
                let peers = neighbours(i, n, degree, ip);
                let listen = SocketAddr::new(ip(i), PORT);
                node(i, TurmoilTransport, listen, peers, received, secs).await;
                Ok(())
            }
        });
    }
    let peak = Arc::new(AtomicU64::new(0));
    let p = peak.clone();
    sim.client("driver", async move {
        tokio::time::sleep(Duration::from_secs(secs / 2)).await;
        p.store(rss(), Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(secs - secs / 2 + 1)).await;
        Ok(())
    });
    sim.run().expect("the turmoil run");
    Outcome {
        wall: wall.elapsed().as_secs_f64(),
        delivered: received.load(Ordering::Relaxed),
        rss_per_node_mb: peak.load(Ordering::Relaxed).saturating_sub(before) as f64
            / a.nodes as f64
            / (1 << 20) as f64,
    }
}

fn main() {
    let a = Args::parse();
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    if let Some(which) = &a.only {
        let o = if which == "paused" { run_paused(&a) } else { run_turmoil(&a) };
        let v = serde_json::json!({
            "wall_seconds": round(o.wall),
            "cpu_seconds": round(cpu_seconds()),
            "sim_speed": round(a.seconds as f64 / o.wall),
            "delivered": o.delivered,
            "rss_mb_per_node": round(o.rss_per_node_mb),
        });
        println!("{v}");
        return;
    }
    let child = |which: &str| -> serde_json::Value {
        let out = std::process::Command::new(std::env::current_exe().expect("this program"))
            .args(["--nodes", &a.nodes.to_string(), "--seconds", &a.seconds.to_string()])
            .args(["--degree", &a.degree.to_string(), "--tick-ms", &a.tick_ms.to_string()])
            .args(["--only", which])
            .output()
            .expect("the child run");
        assert!(out.status.success(), "{which}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("the child's JSON")
    };
    let paused = child("paused");
    let turmoil = child("turmoil");
    let cpu = |v: &serde_json::Value| v["cpu_seconds"].as_f64().unwrap_or(f64::NAN);
    let out = serde_json::json!({
        "nodes": a.nodes,
        "degree": a.degree,
        "sim_seconds": a.seconds,
        "one_way_ms": ONE_WAY_MS,
        "turmoil_tick_ms": a.tick_ms,
        // CPU seconds for the same simulated run, turmoil's over ours.
        "cpu_ratio_turmoil_over_paused": round(cpu(&turmoil) / cpu(&paused)),
        "paused_clock_sim_transport": paused,
        "turmoil": turmoil,
    });
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
    }
}
