//! Crash consistency of the chain store: a child process writes blocks
//! (with reorgs) as fast as it can and is killed with SIGKILL at arbitrary
//! points; every reopen must find a consistent chain with every block it
//! reported written.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use bytes::Bytes;
use plexus_reactors::chain::{Block, Blockchain, BlockchainConfig, NetworkParams, Store};
use plexus_reactors::mining::solve;

const DB_ENV: &str = "PLEXUS_CRASH_DB";

fn open(path: &Path) -> Blockchain {
    let params = Arc::new(NetworkParams::regtest());
    Blockchain::open(params, Store::open(path).unwrap(), BlockchainConfig::default()).unwrap()
}

fn mine_on(c: &Blockchain, parent: &plexus_reactors::chain::BlockHash, salt: u64) -> Block {
    let ph = *c.header(parent).unwrap();
    let txs: Vec<Bytes> =
        (0..3).map(|i| Bytes::from(format!("word {salt} {i} {}", "x".repeat(200)))).collect();
    let mut header = c.template(txs.clone(), ph.timestamp_ms + 1000).header;
    header.prev_hash = *parent;
    header.height = ph.height + 1;
    header.timestamp_ms = ph.timestamp_ms + 1000;
    header.merkle_root = plexus_reactors::chain::merkle_root(&txs);
    assert!(solve(&mut header, u64::MAX));
    Block { header, txs }
}

/// The child: extends the chain forever, every seventh step by a two-block
/// fork from the tip's parent (a reorg), every third by a batch of blocks
/// in one transaction ([`Blockchain::batch`]), printing the main-chain
/// height after each commit.
#[test]
#[ignore = "run by kill_9_leaves_a_consistent_store in a child process"]
fn crash_child() {
    let Ok(path) = std::env::var(DB_ENV) else { return };
    let mut c = open(Path::new(&path));
    let mut salt = c.block_count() as u64 * 1000;
    let far = u64::MAX / 2;
    loop {
        salt += 1;
        let tip = c.tip();
        if salt.is_multiple_of(7) && c.height() > 0 {
            let parent = c.tip_header().prev_hash;
            let a = mine_on(&c, &parent, salt);
            c.process_block(a.clone(), None, far).unwrap();
            let b = mine_on(&c, &a.hash(), salt + 500_000);
            let r = c.process_block(b, None, far).unwrap();
            assert_eq!(r.tip_change.unwrap().disconnected.len(), 1);
        } else if salt.is_multiple_of(3) {
            // A batch of 2 to 5 blocks, committed as one transaction.
            c.batch(|c| {
                let mut parent = tip;
                for k in 0..2 + salt % 4 {
                    let b = mine_on(c, &parent, salt + 1_000_000 * (k + 1));
                    parent = b.hash();
                    c.process_block(b, None, far).unwrap();
                }
            })
            .unwrap();
        } else {
            let b = mine_on(&c, &tip, salt);
            c.process_block(b, None, far).unwrap();
        }
        println!("committed {} {}", c.block_count(), c.height());
    }
}

#[test]
fn kill_9_leaves_a_consistent_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/chain.sqlite");
    let exe = std::env::current_exe().unwrap();
    let mut reported = 0u64;
    for round in 0..4 {
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env(DB_ENV, &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Let it commit a varying number of blocks, then SIGKILL it while
        // it keeps writing.
        let target = 20 + round * 17;
        let mut seen = 0;
        while seen < target {
            let line = lines.next().expect("child output").unwrap();
            if let Some(rest) = line.strip_prefix("committed ") {
                reported = rest.split(' ').next().unwrap().parse().unwrap();
                seen += 1;
            }
        }
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();

        // Reopening checks that the main chain links up from genesis and
        // ends at the heaviest tip; it fails with Corrupt otherwise.
        let c = open(&db);
        eprintln!(
            "round {round}: reported {reported}, stored {}, height {}",
            c.block_count(),
            c.height()
        );
        assert_eq!(c.store().integrity_check().unwrap(), "ok");
        assert!(c.block_count() as u64 >= reported, "round {round}: lost committed blocks");
        for h in 1..=c.height() {
            let hash = c.height_to_hash(h).unwrap();
            let b = c.block(&hash).unwrap().expect("main-chain block stored");
            assert_eq!(b.hash(), hash);
            assert_eq!(b.header.height, h);
            assert_eq!(b.compute_merkle_root(), b.header.merkle_root);
            assert_eq!(b.header.prev_hash, c.height_to_hash(h - 1).unwrap());
        }
    }
}
