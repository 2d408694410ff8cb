//! Helpers shared by the process tests: a test genesis, node homes on
//! free loopback ports, `plexus start` children killed on drop, and RPC
//! polling with deadlines.

#![allow(dead_code)] // each test binary uses its own subset

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plexus_reactors::chain::{bits_from_target, Genesis, NetworkParams, U256};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_plexus");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A test network with no retarget and a few blocks a second on one miner
/// thread, so the other processes keep a core: blocks of ~1,000,000 hashes
/// for a release build of `plexus`, ~65,000 for a debug build (which
/// hashes about 20 times slower).
pub fn genesis_file(dir: &Path) -> PathBuf {
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

pub struct Proc {
    pub child: Child,
    pub rpc: u16,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `plexus init` of `root/name` on `genesis`, then a config on free
/// loopback ports with PEX every second and unsafe RPC: (home, p2p port,
/// RPC port).
pub fn node_home(root: &Path, name: &str, genesis: &Path) -> (PathBuf, u16, u16) {
    node_home_rpc(root, name, genesis, "")
}

/// As [`node_home`], with `rpc_lines` added to the `[rpc]` section (which
/// may set `unsafe` itself).
pub fn node_home_rpc(
    root: &Path,
    name: &str,
    genesis: &Path,
    rpc_lines: &str,
) -> (PathBuf, u16, u16) {
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
    // Unsafe methods on, unless the caller sets `unsafe` itself.
    let unsafe_line = if rpc_lines.contains("unsafe") { "" } else { "unsafe = true\n" };
    let cfg = format!(
        "moniker = \"{name}\"\n[p2p]\nhost = \"127.0.0.1\"\nport = {p2p}\naddr_book_strict = false\npex_period_s = 1\n[rpc]\nport = {rpc}\n{unsafe_line}{rpc_lines}"
    );
    std::fs::write(home.join("config.toml"), cfg).unwrap();
    (home, p2p, rpc)
}

pub fn start(home: &Path, rpc: u16, args: &[&str]) -> Proc {
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

pub fn get(rpc: u16, method: &str) -> Option<Value> {
    let mut r = ureq::get(&format!("http://127.0.0.1:{rpc}/{method}")).call().ok()?;
    let v: Value = serde_json::from_str(&r.body_mut().read_to_string().ok()?).ok()?;
    v.get("result").cloned()
}

pub fn until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{what}: {:.1} s", start.elapsed().as_secs_f64());
}

pub fn status(p: &Proc) -> Value {
    get(p.rpc, "status").unwrap_or(Value::Null)
}

pub fn height(p: &Proc) -> u64 {
    status(p)["height"].as_u64().unwrap_or(0)
}

pub fn tip(p: &Proc) -> String {
    status(p)["tip"].as_str().unwrap_or_default().to_string()
}

pub fn node_id(p: &Proc) -> String {
    status(p)["node_id"].as_str().unwrap_or_default().to_string()
}

pub fn terminate(p: &mut Proc) {
    let _ = Command::new("kill").arg("-TERM").arg(p.child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "node did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    }
}
