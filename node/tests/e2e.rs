//! End-to-end: `plexus` processes on loopback. A seed, a miner joined
//! with `-k`, two nodes joined through the seed that find each other by
//! PEX, a late node that catches up by block sync, a restart that keeps
//! the chain, and `plexus devnet`.
//!
//! The processes are polled over their HTTP RPC (there is no event to wait
//! on across processes); every wait has a deadline.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plexus_reactors::chain::{bits_from_target, Genesis, NetworkParams, U256};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_plexus");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A test network with no retarget and a few blocks a second on one miner
/// thread, so the other processes keep a core: blocks of ~1,000,000 hashes
/// for a release build of `plexus`, ~65,000 for a debug build (which
/// hashes about 20 times slower).
fn genesis_file(dir: &Path) -> PathBuf {
    let shift = if cfg!(debug_assertions) { 16 } else { 20 };
    let g = Genesis {
        bits: bits_from_target(U256::MAX >> shift),
        network_name: "plexus-e2e".into(),
        ..NetworkParams::regtest().genesis
    };
    let path = dir.join("genesis.json");
    std::fs::write(&path, serde_json::to_string_pretty(&g).unwrap()).unwrap();
    path
}

struct Proc {
    child: Child,
    rpc: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node_home(root: &Path, name: &str, genesis: &Path) -> (PathBuf, u16, u16) {
    let home = root.join(name);
    let st = Command::new(BIN)
        .args(["init", "--moniker", name, "--genesis"])
        .arg(genesis)
        .arg("--home")
        .arg(&home)
        .status()
        .unwrap();
    assert!(st.success());
    let (p2p, rpc) = (free_port(), free_port());
    let cfg = format!(
        "moniker = \"{name}\"\n[p2p]\nhost = \"127.0.0.1\"\nport = {p2p}\naddr_book_strict = false\npex_period_s = 1\n[rpc]\nport = {rpc}\nunsafe = true\n"
    );
    std::fs::write(home.join("config.toml"), cfg).unwrap();
    (home, p2p, rpc)
}

fn start(home: &Path, rpc: u16, args: &[&str]) -> Proc {
    let log = std::fs::File::create(home.join("log.txt")).unwrap();
    let child = Command::new(BIN)
        .arg("start")
        .arg("--home")
        .arg(home)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Proc { child, rpc }
}

fn get(rpc: u16, method: &str) -> Option<Value> {
    let mut r = ureq::get(&format!("http://127.0.0.1:{rpc}/{method}")).call().ok()?;
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
    v.get("result").cloned()
}

fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{what}: {:.1} s", start.elapsed().as_secs_f64());
}

fn status(p: &Proc) -> Value {
    get(p.rpc, "status").unwrap_or(Value::Null)
}

fn height(p: &Proc) -> u64 {
    status(p)["height"].as_u64().unwrap_or(0)
}

fn tip(p: &Proc) -> String {
    status(p)["tip"].as_str().unwrap_or_default().to_string()
}

fn node_id(p: &Proc) -> String {
    status(p)["node_id"].as_str().unwrap_or_default().to_string()
}

fn terminate(p: &mut Proc) {
    let _ = Command::new("kill").arg("-TERM").arg(p.child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn seed_miner_and_nodes_agree_sync_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let (h0, p0, r0) = node_home(dir.path(), "seed", &g);
    let seed = start(&h0, r0, &["--seed"]);
    until(30, "the seed's RPC", || get(r0, "status").is_some());
    let join = format!("127.0.0.1:{p0}");

    let (h1, _, r1) = node_home(dir.path(), "miner", &g);
    let mut miner = start(&h1, r1, &["-k", "127.0.0.1", &p0.to_string(), "-m"]);
    let (h2, _, r2) = node_home(dir.path(), "n2", &g);
    let n2 = start(&h2, r2, &["-k", &join]);
    let (h3, _, r3) = node_home(dir.path(), "n3", &g);
    let mut n3 = start(&h3, r3, &["-k", &join]);

    // The miner mines and every node follows.
    until(180, "height 30 on n2 and n3", || height(&n2) >= 30 && height(&n3) >= 30);
    // n2 and n3 only knew the seed: they found each other through PEX.
    let id3 = node_id(&n3);
    until(60, "n2 connected to n3", || {
        get(n2.rpc, "net_info").is_some_and(|v| {
            v["peers"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["id"].as_str() == Some(id3.as_str())))
        })
    });
    assert!(status(&seed)["height"].as_u64().is_some());

    // Stop mining; every node ends on the same tip.
    terminate(&mut miner);
    until(60, "n2 and n3 on one tip", || tip(&n2) == tip(&n3) && !tip(&n2).is_empty());

    // A late node catches up by block sync (far more than 16 blocks behind).
    let (h4, _, r4) = node_home(dir.path(), "late", &g);
    let late = start(&h4, r4, &["-k", &join]);
    let target = tip(&n2);
    let reached = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        until(90, "the late node at the tip", || tip(&late) == target)
    }));
    if reached.is_err() {
        let log = std::fs::read_to_string(h4.join("log.txt")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        panic!(
            "late node stuck at {}: {}\nlog tail:\n{}",
            height(&late),
            status(&late),
            tail.join("\n")
        );
    }
    if std::env::var_os("E2E_LOG").is_some() {
        println!("{}", std::fs::read_to_string(h4.join("log.txt")).unwrap_or_default());
    }
    let rounds = status(&late)["sync"]["rounds"].as_u64().unwrap_or(0);
    assert!(rounds >= 1, "the late node caught up without block sync");

    // Restart n3: its chain is kept and it reconnects.
    let before = height(&n3);
    terminate(&mut n3);
    let n3 = start(&h3, r3, &[]);
    until(30, "n3's RPC after restart", || get(n3.rpc, "status").is_some());
    assert!(height(&n3) >= before, "n3 lost blocks over a restart");
    until(60, "n3 reconnected", || status(&n3)["n_peers"].as_u64().unwrap_or(0) >= 1);

    // RPC errors are JSON-RPC error objects, and metrics are served.
    let e = ureq::get(&format!("http://127.0.0.1:{}/block?height=999999", n3.rpc)).call();
    assert!(matches!(e, Err(ureq::Error::StatusCode(404))), "{e:?}");
    let mut m = ureq::get(&format!("http://127.0.0.1:{}/metrics", n3.rpc)).call().unwrap();
    let text = m.body_mut().read_to_string().unwrap();
    assert!(text.contains("plexus_chain_height"), "{text}");
}

#[test]
fn devnet_runs_and_heights_advance() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let out = dir.path().join("out.txt");
    let mut child = Command::new(BIN)
        .args(["devnet", "--nodes", "4", "--miners", "1", "--words-per-minute", "60", "--genesis"])
        .arg(&g)
        .arg("--home")
        .arg(dir.path().join("net"))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut urls = Vec::new();
    until(60, "the devnet's URLs", || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        urls = text
            .split_whitespace()
            .filter(|w| w.starts_with("http://"))
            .map(String::from)
            .collect();
        urls.len() == 4
    });
    let rpc = |u: &str| u.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    // The page answers, and a non-seed node's height advances.
    let mut page = ureq::get(&urls[2]).call().unwrap();
    assert!(page.body_mut().read_to_string().unwrap().contains("<title>Plexus node</title>"));
    until(120, "height 3 on node2", || {
        get(rpc(&urls[2]), "status").is_some_and(|s| s["height"].as_u64() >= Some(3))
    });
    let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "devnet did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(100));
    }
}
