//! The web page in a real headless browser: Debian's chromium, driven by
//! chromedriver over WebDriver from Rust (fantoccini). A mining node and a
//! peer run as `plexus` processes; the page must show the peer and the
//! height, connect its WebSocket, and show the height rising while the
//! miner runs, without a reload.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian packages
//! chromium and chromium-driver; `.ci/run` installs them). Other paths:
//! `PLEXUS_CHROMIUM`, `PLEXUS_CHROMEDRIVER`. Without them the test says so
//! and passes, unless `PLEXUS_REQUIRE_BROWSER` is set (CI sets it), when it
//! fails.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn path_from(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

/// Polls `f` every 200 ms for up to `secs`.
async fn wait_for<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn text(c: &Client, id: &str) -> String {
    match c.find(Locator::Id(id)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[tokio::test]
async fn web_page_shows_peers_and_a_rising_height_live() {
    let chromium = path_from("PLEXUS_CHROMIUM", "/usr/bin/chromium");
    let chromedriver = path_from("PLEXUS_CHROMEDRIVER", "/usr/bin/chromedriver");
    if !std::path::Path::new(&chromium).exists() || !std::path::Path::new(&chromedriver).exists() {
        let msg = format!(
            "{chromium} or {chromedriver} is missing: apt-get install chromium chromium-driver"
        );
        assert!(std::env::var_os("PLEXUS_REQUIRE_BROWSER").is_none(), "{msg}");
        eprintln!("skipping the browser test: {msg}");
        return;
    }

    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let (h1, p1, r1) = node_home(dir.path(), "miner", &g);
    let _miner = start(&h1, r1, &["-m"]);
    let (h2, _, r2) = node_home(dir.path(), "n2", &g);
    let n2 = start(&h2, r2, &["-k", &format!("127.0.0.1:{p1}")]);
    until(30, "both RPCs", || get(r1, "status").is_some() && get(r2, "status").is_some());
    let id2 = node_id(&n2);

    let port = free_port();
    let _driver = Driver(
        Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let profile = dir.path().join("chromium-profile");
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                // The HTTPS node's certificate is signed by its home's own
                // CA, which this fresh profile does not hold.
                "--ignore-certificate-errors",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let caps: serde_json::Map<String, serde_json::Value> = caps.as_object().unwrap().clone();
    let mut client = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.is_none() {
        // chromedriver speaks plain HTTP on loopback: no TLS connector.
        let http = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(http)
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => client = Some(c),
            Err(e) => {
                assert!(Instant::now() < deadline, "chromedriver did not start: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let c = client.unwrap();

    c.goto(&format!("http://127.0.0.1:{r1}/")).await.unwrap();
    assert_eq!(c.title().await.unwrap(), "Plexus node");
    // A marker that a reload would erase.
    c.execute("window.plexusTestMarker = 42; return 1;", vec![]).await.unwrap();
    wait_for(30, "the WebSocket badge to say live", || async { text(&c, "live").await == "live" })
        .await;
    wait_for(30, "n2 in the peers table", || async {
        let peers = text(&c, "peers").await;
        peers.contains(&id2[..16]) && peers.contains("n2")
    })
    .await;
    assert_eq!(text(&c, "npeers").await, "1");
    let first = text(&c, "height").await.parse::<u64>().unwrap_or(0);
    wait_for(60, "the height to rise on the page", || async {
        text(&c, "height").await.parse::<u64>().unwrap_or(0) >= first + 3
    })
    .await;
    let blocks = text(&c, "blocks").await;
    assert!(!blocks.is_empty(), "the last blocks table is empty");
    let events: u64 = text(&c, "nevents").await.parse().unwrap_or(0);
    assert!(events >= 3, "{events} WebSocket events shown");
    // The same page, updated in place.
    let marker = c.execute("return window.plexusTestMarker;", vec![]).await.unwrap();
    assert_eq!(marker, json!(42), "the page reloaded");

    // Once over HTTPS (rpc.tls): the page, its RPC calls and its WSS feed.
    let (h3, _, r3) = node_home_rpc(dir.path(), "n3", &g, "tls = true\n");
    let _n3 = start(&h3, r3, &["-k", &format!("127.0.0.1:{p1}")]);
    wait_for(30, "the HTTPS page", || async {
        c.goto(&format!("https://127.0.0.1:{r3}/")).await.is_ok()
            && c.title().await.is_ok_and(|t| t == "Plexus node")
    })
    .await;
    wait_for(30, "the WSS badge to say live", || async { text(&c, "live").await == "live" }).await;
    let first = text(&c, "height").await.parse::<u64>().unwrap_or(0);
    wait_for(60, "the height to rise on the HTTPS page", || async {
        text(&c, "height").await.parse::<u64>().unwrap_or(0) >= first + 2
    })
    .await;
    c.close().await.unwrap();
}
