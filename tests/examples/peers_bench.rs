//! How many authenticated idle peers one `plexus` node holds, and what each
//! costs it.
//!
//! The node is the real binary (`target/release/plexus`, built first with
//! the `cargo` that runs this bench), started on a fresh home on loopback
//! with `max_inbound` raised to `--peers`; every other limit stays at its
//! default (loopback is exempt from the per-IP ones, as it is for any
//! local network). This process is the peers: `--peers` clients spread
//! over `--ips` source addresses 127.0.0.2.., each a full Noise handshake,
//! NodeInfo exchange and MConnection declaring the node's four channels
//! and reading all it is sent. So the node's memory is its own, read from
//! `/proc/<pid>/status`. Both processes raise their open-file limit to
//! the hard limit.
//!
//! Printed (one JSON object with `--json`):
//! - `peers`: peers the node reports (`status.n_peers`) once all clients
//!   are connected;
//! - `rss_base_mib`, `rss_mib`: the node's resident set before the first
//!   client and with every peer connected and idle `--idle-secs`;
//!   `rss_per_peer_kib` = their difference over `peers` (goal <= 50);
//! - `pong_rtt_ms_p50` / `_p99`: a probe peer (a raw secret connection of
//!   its own, on its own thread) sends a ping every 20 ms and times the
//!   node's pong, over the idle window (goal p99 < 100 ms);
//! - `cpu_pct`: the node's CPU time over the idle window, percent of one
//!   core;
//! - `connect_s`: wall time to connect every client;
//! - `flood`: the same (`rss_mib`, `rss_per_peer_kib`, `pong_rtt_ms_*`,
//!   `cpu_pct`, `peers` left) over `--flood-secs` while every peer in turn
//!   sends the node transactions of 250 bytes, `--flood-tx-per-s` in all,
//!   plus `txs_sent` and `mempool_txs` at the end.
//!
//! `cargo run --release -p plexus-tests --example peers_bench -- --json`

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use clap::Parser;
use parking_lot::Mutex;
use plexus_p2p::secret::{SecretConfig, SecretConnection};
use plexus_p2p::{node_info, ChannelDescriptor, MConnConfig, MConnection, NodeInfo, NodeKey};
use plexus_proto::p2p::{packet::Sum as PSum, Packet, PacketPing, PacketPong};
use plexus_reactors::chain::NetworkParams;
use prost::Message;
use serde_json::{json, Value};
use tokio::net::TcpSocket;

#[derive(Parser)]
struct Args {
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Idle peers to hold.
    #[arg(long, default_value_t = 10_000)]
    peers: usize,
    /// Source addresses the peers come from (127.0.0.2 onwards).
    #[arg(long, default_value_t = 8)]
    ips: u8,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds the peers stay idle while RSS, CPU and pongs are measured.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Seconds of the transaction flood (0: none).
    #[arg(long, default_value_t = 10)]
    flood_secs: u64,
    /// Transactions per second all peers send together during the flood.
    #[arg(long, default_value_t = 100)]
    flood_tx_per_s: u64,
    /// The node binary (default: target/release/plexus, built first).
    #[arg(long)]
    node: Option<PathBuf>,
}

/// The node's channels, as its reactors declare them (PEX, consensus,
/// mempool, block sync), with room for whole blocks.
fn channels() -> Vec<ChannelDescriptor> {
    [0x00, 0x20, 0x30, 0x40]
        .into_iter()
        .map(|id| {
            ChannelDescriptor::new(id)
                .recv_message_capacity(16 << 20)
                .recv_buffer_capacity(32 << 20)
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Builds the node binary with the cargo running this bench, unless one
/// is given.
fn node_binary(given: Option<PathBuf>) -> PathBuf {
    if let Some(p) = given {
        return p;
    }
    let exe = std::env::current_exe().unwrap();
    // target/release/examples/peers_bench -> target/release/plexus
    let bin = exe.parent().unwrap().parent().unwrap().join("plexus");
    if let Ok(cargo) = std::env::var("CARGO") {
        let ok = Command::new(cargo)
            .args(["build", "--release", "-p", "plexus-node", "--bin", "plexus"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "building the node failed");
    }
    assert!(bin.exists(), "{} not found: pass --node", bin.display());
    bin
}

struct NodeProc {
    child: Child,
    rpc: u16,
    p2p: SocketAddr,
    params: Arc<NetworkParams>,
    _home: tempfile::TempDir,
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(bin: &Path, peers: usize) -> NodeProc {
    let home = tempfile::tempdir().unwrap();
    let h = home.path().to_str().unwrap().to_string();
    let ok = Command::new(bin).args(["init", "--home", &h]).stdout(Stdio::null()).status().unwrap();
    assert!(ok.success(), "plexus init failed");
    let (p2p, rpc) = (free_port(), free_port());
    let cfg = format!(
        "[p2p]\nhost = \"127.0.0.1\"\nport = {p2p}\nmax_inbound = {}\n\n\
         [rpc]\nport = {rpc}\n\n[log]\nfilter = \"warn\"\n",
        peers + 10
    );
    std::fs::write(home.path().join("config.toml"), cfg).unwrap();
    let log = std::fs::File::create(home.path().join("node.log")).unwrap();
    let child = Command::new(bin)
        .args(["start", "--home", &h])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let params = Arc::new(NetworkParams::load(&home.path().join("genesis.json")).unwrap());
    let p2p = SocketAddr::from(([127, 0, 0, 1], p2p));
    let node = NodeProc { child, rpc, p2p, params, _home: home };
    let t = Instant::now();
    while rpc_status(node.rpc).is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "the node did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    node
}

fn rpc_status(port: u16) -> Option<Value> {
    let body = ureq::get(format!("http://127.0.0.1:{port}/status"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    Some(v.get("result").cloned().unwrap_or(v))
}

/// Resident set of `pid`, bytes.
fn rss(pid: u32) -> u64 {
    plexus_tests::rss_bytes(pid).expect("the node's /proc status")
}

/// User plus system CPU time of `pid`, seconds.
fn cpu(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// One idle client: handshake, NodeInfo, an MConnection that reads
/// everything it is sent.
async fn client(
    addr: SocketAddr,
    ip: IpAddr,
    params: &NetworkParams,
) -> anyhow::Result<MConnection> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(ip, 0))?;
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    let key = NodeKey::generate();
    let mut conn = SecretConnection::connect(stream, &key, None, &SecretConfig::default()).await?;
    let mut info = NodeInfo::new(&params.network_id(), "bench");
    info.node_id = key.node_id();
    info.channels = channels().iter().map(|c| c.id).collect();
    info.listen_addr = format!("{ip}:1");
    node_info::exchange(&mut conn, &info, None, Duration::from_secs(30)).await?;
    let (mc, receivers) = MConnection::new(conn, &channels(), MConnConfig::default())?;
    for mut rx in receivers {
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
    }
    Ok(mc)
}

/// Pong round trips, milliseconds, measured by the probe.
#[derive(Default)]
struct Rtts {
    samples: Vec<f64>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn encode(p: PSum) -> Vec<u8> {
    Packet { sum: Some(p) }.encode_length_delimited_to_vec()
}

/// The probe: a raw secret connection declaring PEX only, pinging every
/// 20 ms and timing each pong; answers the node's pings. Runs on its own
/// thread and runtime until `stop`.
fn probe(
    addr: SocketAddr,
    params: Arc<NetworkParams>,
    rtts: Arc<Mutex<Rtts>>,
    stop: Arc<AtomicBool>,
) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let key = NodeKey::generate();
        let mut conn =
            SecretConnection::connect(stream, &key, None, &SecretConfig::default()).await.unwrap();
        let mut info = NodeInfo::new(&params.network_id(), "probe");
        info.node_id = key.node_id();
        info.channels = vec![0x00];
        info.listen_addr = "127.0.0.1:1".into();
        node_info::exchange(&mut conn, &info, None, Duration::from_secs(30)).await.unwrap();
        let mut buf = BytesMut::new();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut sent: Option<Instant> = None;
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tick.tick(), if sent.is_none() => {
                    conn.send_frame(&encode(PSum::Ping(PacketPing {}))).await.unwrap();
                    sent = Some(Instant::now());
                }
                frame = conn.recv_frame() => {
                    buf.extend_from_slice(&frame.expect("the node closed the probe"));
                    while let Some(p) = next_packet(&mut buf) {
                        match p.sum {
                            Some(PSum::Pong(_)) => if let Some(t) = sent.take() {
                                rtts.lock().samples.push(t.elapsed().as_secs_f64() * 1000.0);
                            },
                            Some(PSum::Ping(_)) => {
                                conn.send_frame(&encode(PSum::Pong(PacketPong {}))).await.unwrap();
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
    });
}

/// The next whole length-delimited packet in `buf`, if there is one.
fn next_packet(buf: &mut BytesMut) -> Option<Packet> {
    let mut peek = &buf[..];
    let len = prost::encoding::decode_varint(&mut peek).ok()? as usize;
    let head = buf.len() - peek.len();
    if peek.len() < len {
        return None;
    }
    buf.advance(head);
    let body = buf.split_to(len);
    Packet::decode(body).ok()
}

/// What one window measured.
fn window(pid: u32, secs: u64, rtts: &Mutex<Rtts>, base: u64, peers: usize) -> Value {
    rtts.lock().samples.clear();
    let (c0, t0) = (cpu(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let cpu_pct = (cpu(pid) - c0) / t0.elapsed().as_secs_f64() * 100.0;
    let r = rss(pid);
    let mut s = std::mem::take(&mut rtts.lock().samples);
    json!({
        "rss_mib": r as f64 / (1 << 20) as f64,
        "rss_per_peer_kib": r.saturating_sub(base) as f64 / 1024.0 / peers.max(1) as f64,
        "pong_rtt_ms_p50": percentile(&mut s, 0.5),
        "pong_rtt_ms_p99": percentile(&mut s, 0.99),
        "pongs": s.len(),
        "cpu_pct": cpu_pct,
    })
}

fn main() {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let bin = node_binary(args.node.clone());
    let node = start_node(&bin, args.peers);
    let pid = node.child.id();
    // Let the node settle before its base is read.
    std::thread::sleep(Duration::from_secs(2));
    let base = rss(pid);

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let params = node.params.clone();
    let (addr, n, ips, conc) = (node.p2p, args.peers, args.ips.max(1), args.concurrency.max(1));
    let t = Instant::now();
    let (conns, failed) = rt.block_on(async move {
        let sem = Arc::new(tokio::sync::Semaphore::new(conc));
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let params = params.clone();
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % ips as usize) as u8));
            tasks.push(tokio::spawn(async move {
                let r = client(addr, ip, &params).await;
                drop(permit);
                r
            }));
        }
        let (mut conns, mut failed) = (Vec::new(), 0usize);
        for t in tasks {
            match t.await.unwrap() {
                Ok(c) => conns.push(c),
                Err(e) => {
                    if failed == 0 {
                        eprintln!("a client failed: {e:#}");
                    }
                    failed += 1
                }
            }
        }
        (conns, failed)
    });
    let connect_s = t.elapsed().as_secs_f64();

    let rtts = Arc::new(Mutex::new(Rtts::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let probe_thread = {
        let (p, r, s) = (node.params.clone(), rtts.clone(), stop.clone());
        std::thread::spawn(move || probe(addr, p, r, s))
    };
    std::thread::sleep(Duration::from_secs(1));
    let peers = rpc_status(node.rpc).and_then(|s| s["n_peers"].as_u64()).unwrap_or(0) as usize;
    let idle = window(pid, args.idle_secs, &rtts, base, peers);

    let mut flood = Value::Null;
    if args.flood_secs > 0 && !conns.is_empty() {
        let conns = Arc::new(conns);
        let done = Arc::new(AtomicBool::new(false));
        let (cs, d, rate) = (conns.clone(), done.clone(), args.flood_tx_per_s.max(1));
        let sender = rt.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let (mut sent, mut next, t0) = (0u64, 0usize, Instant::now());
            while !d.load(Ordering::Relaxed) {
                tick.tick().await;
                let due = (t0.elapsed().as_secs_f64() * rate as f64) as u64;
                while sent < due {
                    let mut tx = vec![0u8; 250];
                    tx[..8].copy_from_slice(&sent.to_be_bytes());
                    rand_fill(&mut tx[8..]);
                    let msg = plexus_proto::mempool::Message {
                        sum: Some(plexus_proto::mempool::message::Sum::Txs(
                            plexus_proto::mempool::Txs { txs: vec![tx.into()] },
                        )),
                    };
                    let _ = cs[next % cs.len()].try_send(0x30, msg.encode_to_vec());
                    next += 1;
                    sent += 1;
                }
            }
            sent
        });
        let mut w = window(pid, args.flood_secs, &rtts, base, peers);
        done.store(true, Ordering::Relaxed);
        let sent = rt.block_on(sender).unwrap();
        let status = rpc_status(node.rpc).unwrap_or(Value::Null);
        w["peers"] = status["n_peers"].clone();
        w["mempool_txs"] = status["mempool_txs"].clone();
        w["txs_sent"] = sent.into();
        flood = w;
        drop(conns);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = probe_thread.join();

    let out = json!({
        "peers": peers,
        "clients_failed": failed,
        "connect_s": connect_s,
        "rss_base_mib": base as f64 / (1 << 20) as f64,
        "rss_mib": idle["rss_mib"],
        "rss_per_peer_kib": idle["rss_per_peer_kib"],
        "pong_rtt_ms_p50": idle["pong_rtt_ms_p50"],
        "pong_rtt_ms_p99": idle["pong_rtt_ms_p99"],
        "pongs": idle["pongs"],
        "cpu_pct": idle["cpu_pct"],
        "flood": flood,
    });
    if args.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
    }
    let _ = std::io::stdout().flush();
    drop(node);
}

/// Fills `b` with random bytes (unique transactions).
fn rand_fill(b: &mut [u8]) {
    use rand::RngCore;
    rand::rng().fill_bytes(b);
}
