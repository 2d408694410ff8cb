//! A syncing node killed with SIGKILL mid-sync (a child process, over
//! loopback TCP) restarts from its SQLite store and finishes without
//! fetching the stored blocks again.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use plexus_p2p::{NetAddress, TcpTransport};
use plexus_reactors::chain::Store;

const DB_ENV: &str = "PLEXUS_SYNC_DB";
const PEERS_ENV: &str = "PLEXUS_SYNC_PEERS";
const N: usize = 3000;

fn local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn syncing_node(db: &Path) -> SyncNode {
    let p = params();
    let chain = chain_in(&p, Store::open(db).unwrap(), &[]);
    sync_node_on(TcpTransport, local(), &p, chain, sync_cfg()).await
}

/// The child: a syncing node on `DB_ENV` dialing `PEERS_ENV`, printing
/// its height at every new tip, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by killed_mid_sync_resumes_from_the_store in a child process"]
async fn sync_child() {
    let Ok(db) = std::env::var(DB_ENV) else { return };
    let node = syncing_node(Path::new(&db)).await;
    for a in std::env::var(PEERS_ENV).unwrap().split(',') {
        let addr: NetAddress = a.parse().unwrap();
        node.sw.dial(&addr).await.unwrap();
    }
    let mut tips = node.chain.watch_tip();
    loop {
        println!("height {}", node.height());
        tips.changed().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_sync_resumes_from_the_store() {
    let p = params();
    let blocks = premined(N);
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(
            sync_node_on(TcpTransport, local(), &p, chain_with(&p, &blocks), sync_cfg()).await,
        );
    }
    let peers: Vec<String> =
        servers.iter().map(|s| s.sw.net_address().unwrap().to_string()).collect();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/chain.sqlite");

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["sync_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(DB_ENV, &db)
        .env(PEERS_ENV, peers.join(","))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = 0u64;
    while seen < 800 {
        let line = lines.next().expect("child output").unwrap();
        if let Some(h) = line.strip_prefix("height ") {
            seen = h.parse().unwrap();
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let node = syncing_node(&db).await;
    let stored = node.height();
    assert!(stored >= seen, "stored {stored}, the child reported {seen}");
    assert!(stored < N as u64, "the child finished before it was killed; raise N");
    for s in &servers {
        node.sw.dial(&s.sw.net_address().unwrap()).await.unwrap();
    }
    let tip = servers[0].tip();
    assert!(wait_tip(&node, tip, 120).await, "stuck at {}", node.height());
    let fetched = node.sync.blocks_received();
    let missing = N as u64 - stored;
    println!("stored {stored} before the kill; fetched {fetched} for the {missing} missing");
    // Second requests at the low edge may fetch a block twice; nothing
    // stored is fetched again.
    assert!(fetched <= missing + 64, "fetched {fetched} for {missing} missing blocks");
    tokio::time::timeout(Duration::from_secs(5), node.sw.stop()).await.unwrap();
}
