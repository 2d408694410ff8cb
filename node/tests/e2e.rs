//! End-to-end: `plexus` processes on loopback. A seed, a miner joined
//! with `-k`, two nodes joined through the seed that find each other by
//! PEX, a late node that catches up by block sync, a restart that keeps
//! the chain, and `plexus devnet`.
//!
//! The processes are polled over their HTTP RPC (there is no event to wait
//! on across processes); every wait has a deadline.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

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
    // Honest neighbours on one IP (loopback) are never scored.
    let ni = get(n2.rpc, "net_info").unwrap();
    let peers = ni["peers"].as_array().unwrap();
    assert!(peers.iter().all(|p| p["score"].as_f64() == Some(0.0)), "{ni}");

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

/// Two processes on one home would both write its chain store (issue 16:
/// `main chain breaks at height 52` after both mined): the second start
/// is refused at once, naming the home and the first process, and the
/// first goes on.
#[test]
fn a_second_process_on_a_home_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let (h, _, r) = node_home(dir.path(), "one", &g);
    let mut first = start(&h, r, &["-m"]);
    until(60, "the first node mining", || height(&first) >= 2);
    let out = Command::new(BIN)
        .arg("start")
        .arg("--home")
        .arg(&h)
        .args(["-p", "0", "-i", "0"])
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second start ran: {err}");
    let pid = first.child.id().to_string();
    assert!(err.contains("is in use by process") && err.contains(&pid), "{err}");
    // The first keeps mining on a store that stays consistent: it restarts
    // on its chain once the first has gone.
    let before = height(&first);
    until(60, "the first node still mining", || height(&first) > before);
    terminate(&mut first);
    let again = start(&h, r, &[]);
    until(30, "a restart on the home", || get(r, "status").is_some());
    assert!(height(&again) > before, "the chain was lost over the restart");
}

/// Each damaged or lost file of a home that ran (issue 16) stops `plexus
/// start` with an error naming that file, never a silent new identity or a
/// chain started over at height 0; `--resync` and `--new-node-key` are the
/// stated ways out.
#[test]
fn damaged_home_files_are_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let (h, _, r) = node_home(dir.path(), "ran", &g);
    let mut n = start(&h, r, &["-m"]);
    until(60, "a few blocks", || height(&n) >= 3);
    terminate(&mut n);
    drop(n);

    let copy_home = |name: &str| {
        let to = dir.path().join(name);
        let st = Command::new("cp").arg("-r").arg(&h).arg(&to).status().unwrap();
        assert!(st.success());
        let _ = std::fs::remove_file(to.join("LOCK"));
        to
    };
    // A start that is refused exits at once; one that runs is stopped
    // after 20 s and counts as started.
    let run = |home: &std::path::Path, extra: &[&str]| {
        let err_path = home.join("stderr.txt");
        let mut child = Command::new(BIN)
            .arg("start")
            .arg("--home")
            .arg(home)
            .args(["-p", "0", "-i", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let ok = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break true;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (ok, std::fs::read_to_string(&err_path).unwrap_or_default())
    };
    type Damage = fn(&std::path::Path);
    let cases: [(&str, &str, Damage); 7] = [
        ("truncated store", "data/chain.sqlite", |p| {
            let len = std::fs::metadata(p).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(p).unwrap().set_len(len / 2).unwrap();
        }),
        ("garbled store", "data/chain.sqlite", |p| std::fs::write(p, vec![0x5a; 65536]).unwrap()),
        ("deleted store", "data/chain.sqlite", |p| std::fs::remove_file(p).unwrap()),
        ("empty store", "data/chain.sqlite", |p| std::fs::write(p, b"").unwrap()),
        ("truncated genesis", "genesis.json", |p| {
            let text = std::fs::read_to_string(p).unwrap();
            std::fs::write(p, &text[..text.len() / 2]).unwrap();
        }),
        ("edited genesis", "genesis.json", |p| {
            let text = std::fs::read_to_string(p).unwrap();
            std::fs::write(p, text.replace("plexus-e2e", "plexus-e2f")).unwrap();
        }),
        ("deleted node key", "node_key.json", |p| std::fs::remove_file(p).unwrap()),
    ];
    for (i, (what, file, damage)) in cases.iter().enumerate() {
        let home = copy_home(&format!("case{i}"));
        let path = home.join(file);
        if *file == "data/chain.sqlite" {
            // The damage is to the whole store: its WAL goes with it (SQLite
            // would otherwise mend the pages the WAL holds).
            for f in ["data/chain.sqlite-wal", "data/chain.sqlite-shm"] {
                let _ = std::fs::remove_file(home.join(f));
            }
        }
        damage(&path);
        let (ok, err) = run(&home, &[]);
        assert!(!ok, "{what}: started anyway: {err}");
        assert!(err.contains(&path.display().to_string()), "{what}: path not named: {err}");
        if *file == "data/chain.sqlite" {
            // The stated way out works, and the damaged file is kept.
            assert!(err.contains("--resync"), "{what}: {err}");
            let rpc = free_port();
            let mut p = start(&home, rpc, &["--resync", "-i", &rpc.to_string(), "-p", "0"]);
            until(30, "a resynced start", || get(rpc, "status").is_some());
            terminate(&mut p);
        }
    }
}

/// A `-k` peer that is not up yet when the node starts is tried again
/// (after 1 s, doubling) until the node has joined through it.
#[test]
fn a_join_peer_that_starts_later_is_joined() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let (ha, pa, ra) = node_home(dir.path(), "late-seed", &g);
    let (hb, _, rb) = node_home(dir.path(), "early", &g);
    let b = start(&hb, rb, &["-k", &format!("127.0.0.1:{pa}")]);
    until(30, "a failed first join", || {
        std::fs::read_to_string(hb.join("log.txt"))
            .unwrap_or_default()
            .contains("could not join through peer")
    });
    let _a = start(&ha, ra, &[]);
    until(60, "the early node joined the late one", || {
        status(&b)["n_peers"].as_u64().unwrap_or(0) >= 1
    });
}
