//! The web port of a `plexus` process under hostile and faulty clients
//! (issue 16): DNS rebinding (a `Host` and `Origin` naming the attacker),
//! cross-site GETs that would change the node, JSON-RPC batches and
//! positional params, connections trickling header bytes, the connection
//! cap, silent WebSocket clients, the per-IP WebSocket cap, and HTTPS with
//! the home's own CA.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A raw HTTP/1.1 request; the status code and body of the answer.
fn raw(rpc: u16, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", rpc)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    (code, body)
}

fn post_with(rpc: u16, host: &str, origin: Option<&str>, body: &str) -> (u16, String) {
    let origin = origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default();
    raw(
        rpc,
        &format!(
            "POST / HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn post(rpc: u16, body: Value) -> Value {
    let (code, text) = post_with(rpc, &format!("127.0.0.1:{rpc}"), None, &body.to_string());
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// Seconds until the server closes `s` (reads return 0 or fail), reading
/// and dropping whatever it sends; panics after `limit` seconds.
fn until_closed(s: &mut TcpStream, since: Instant, limit: f64) -> f64 {
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return since.elapsed().as_secs_f64(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return since.elapsed().as_secs_f64(),
        }
        assert!(since.elapsed().as_secs_f64() < limit, "still open after {limit} s");
    }
}

#[test]
fn hostile_pages_and_clients_are_refused_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let lines = "unsafe = true\nheader_read_timeout_s = 2\nws_read_timeout_s = 3\nmax_ws_clients_per_ip = 2\nmax_connections = 40\nmax_connections_per_ip = 30\nrequest_timeout_s = 2\nmax_response_bytes = 65536\n";
    let (h, _, r) = node_home_rpc(dir.path(), "n", &g, lines);
    let node = start(&h, r, &[]);
    until(30, "the RPC", || get(r, "status").is_some());

    // DNS rebinding: Host and Origin both name the attacker's domain.
    // Every method is refused, the page and the WebSocket too.
    let evil = format!("attacker.example:{r}");
    let evil_origin = format!("http://{evil}");
    for method in [
        "status",
        "net_info",
        "tips",
        "block",
        "blockchain",
        "mempool",
        "broadcast_tx",
        "dial_peers",
        "stop_peer",
        "stop_node",
    ] {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {}}).to_string();
        let (code, text) = post_with(r, &evil, Some(&evil_origin), &body);
        assert_eq!(code, 403, "{method}: {text}");
        assert!(text.contains("rpc.allowed_hosts"), "{method}: {text}");
        let (code, _) = post_with(r, &evil, None, &body);
        assert_eq!(code, 403, "{method} with the attacker's Host alone");
    }
    let (code, _) =
        raw(r, &format!("GET /status HTTP/1.1\r\nHost: {evil}\r\nConnection: close\r\n\r\n"));
    assert_eq!(code, 403);
    let (code, _) = raw(
        r,
        &format!(
            "GET /websocket HTTP/1.1\r\nHost: {evil}\r\nOrigin: {evil_origin}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        ),
    );
    assert_eq!(code, 403);
    assert!(get(r, "status").is_some(), "stop_node ran");
    // A cross-site page on a local Host is refused too; the own page is not.
    let own = format!("127.0.0.1:{r}");
    let status = json!({"jsonrpc": "2.0", "id": 1, "method": "status"}).to_string();
    let (code, _) = post_with(r, &own, Some("http://evil.example"), &status);
    assert_eq!(code, 403);
    let (code, text) = post_with(r, &own, Some(&format!("http://{own}")), &status);
    assert_eq!(code, 200, "{text}");

    // A GET broadcast_tx (an <img> on any page) is refused; POST works.
    let e = ureq::get(&format!("http://127.0.0.1:{r}/broadcast_tx?tx=%22hello%22")).call();
    assert!(matches!(e, Err(ureq::Error::StatusCode(403))), "{e:?}");
    assert_eq!(get(r, "mempool").unwrap()["n_txs"], json!(0));
    let v =
        post(r, json!({"jsonrpc": "2.0", "id": 2, "method": "broadcast_tx", "params": ["hello"]}));
    assert!(v["result"]["hash"].is_string(), "{v}");

    // Batches and positional params, over POST and the WebSocket.
    let v = post(
        r,
        json!([
            {"jsonrpc": "2.0", "id": 1, "method": "status"},
            {"jsonrpc": "2.0", "id": 2, "method": "block", "params": [0]},
            {"jsonrpc": "2.0", "id": 3, "method": "blockchain", "params": [0, 0]},
            {"jsonrpc": "2.0", "id": 4, "method": "mempool", "params": {"limit": 1}},
            {"jsonrpc": "2.0", "id": 5, "method": "no_such_method"},
        ]),
    );
    let answers = v.as_array().expect("a batch answer");
    assert_eq!(answers.len(), 5, "{v}");
    let by_id = |id: u64| answers.iter().find(|a| a["id"] == json!(id)).unwrap();
    assert!(by_id(1)["result"]["height"].is_u64(), "{v}");
    assert_eq!(by_id(2)["result"]["height"], json!(0), "{v}");
    assert_eq!(by_id(3)["result"]["headers"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(by_id(4)["result"]["n_txs"], json!(1), "{v}");
    assert_eq!(by_id(5)["error"]["code"], json!(-32601), "{v}");
    let e = post(r, json!({"jsonrpc": "2.0", "id": 6, "method": "block", "params": [0, "x", 1]}));
    assert_eq!(e["error"]["code"], json!(-32602), "{e}");
    // curl -d sends a form's content type: still taken as JSON.
    let body = status.clone();
    let (code, text) = raw(
        r,
        &format!("POST / HTTP/1.1\r\nHost: {own}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()),
    );
    assert_eq!(code, 200, "{text}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("ws://127.0.0.1:{r}/websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let batch = json!([
            {"jsonrpc": "2.0", "id": 1, "method": "block", "params": [0]},
            {"jsonrpc": "2.0", "id": 2, "method": "subscribe", "params": ["new_block"]},
        ]);
        ws.send(Message::Text(batch.to_string().into())).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
        let v: Value = serde_json::from_str(m.unwrap().unwrap().to_text().unwrap()).unwrap();
        assert_eq!(v[0]["result"]["height"], json!(0), "{v}");
        assert_eq!(v[1]["result"], json!({}), "{v}");
        // The per-IP cap: a second client is fine, a third gets 503.
        let _second = tokio_tungstenite::connect_async(&url).await.unwrap();
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                let body =
                    String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
                assert!(body.contains("max_ws_clients_per_ip"), "{body}");
            }
            other => panic!("a third client from one IP: {:?}", other.map(|_| ())),
        }
    });
    drop(rt);

    // A connection trickling header bytes is closed at the header timeout
    // (2 s), whatever it still sends.
    let mut slow = TcpStream::connect(("127.0.0.1", r)).unwrap();
    let t0 = Instant::now();
    slow.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").unwrap();
    let trickle = std::thread::spawn({
        let mut s = slow.try_clone().unwrap();
        move || {
            for _ in 0..40 {
                if s.write_all(b"a").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    });
    let closed = until_closed(&mut slow, t0, 8.0);
    assert!((1.8..=4.0).contains(&closed), "closed after {closed:.2} s, timeout 2 s");
    let _ = trickle.join();
    // A keep-alive connection idle past the timeout is closed as well.
    let mut idle = TcpStream::connect(("127.0.0.1", r)).unwrap();
    idle.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let closed = until_closed(&mut idle, Instant::now(), 8.0);
    assert!(closed <= 4.0, "an idle keep-alive connection stayed {closed:.2} s");

    // A body that never ends: 408 at the request timeout (2 s), closed.
    let mut slow = TcpStream::connect(("127.0.0.1", r)).unwrap();
    slow.write_all(format!("POST / HTTP/1.1\r\nHost: {own}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"jsonrpc\"").as_bytes()).unwrap();
    let t0 = Instant::now();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let took = t0.elapsed().as_secs_f64();
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!((1.8..=4.0).contains(&took), "answered after {took:.2} s, timeout 2 s");

    // The caps: 30 connections from one address (rpc.max_connections_per_ip)
    // and 40 in all (rpc.max_connections). Loopback has many addresses.
    let is_shut = |c: &mut TcpStream| {
        c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut b = [0u8; 1];
        matches!(c.read(&mut b), Ok(0))
    };
    let from = |src: &str, n: usize| -> Vec<TcpStream> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..n {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
                let c = sock.connect(format!("127.0.0.1:{r}").parse().unwrap()).await.unwrap();
                v.push(c.into_std().unwrap());
            }
            v
        })
    };
    let mut one = from("127.0.0.1", 35);
    std::thread::sleep(Duration::from_millis(300));
    let shut_one = one.iter_mut().map(is_shut).filter(|s| *s).count();
    assert_eq!(shut_one, 5, "35 from one address, 30 allowed");
    let mut two = from("127.0.0.2", 20);
    std::thread::sleep(Duration::from_millis(300));
    let shut_two = two.iter_mut().map(is_shut).filter(|s| *s).count();
    assert_eq!(shut_two, 10, "30 + 20 connections, 40 allowed in all");
    drop(one);
    drop(two);
    until(10, "the RPC after the flood", || get(r, "status").is_some());

    // A batch's answers together stay within rpc.max_response_bytes (64 KiB).
    for i in 0..6 {
        let tx = format!("{i}{}", "x".repeat(20_000));
        let v =
            post(r, json!({"jsonrpc": "2.0", "id": 1, "method": "broadcast_tx", "params": [tx]}));
        assert!(v["result"]["hash"].is_string(), "{v}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("ws://127.0.0.1:{r}/websocket");
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let batch: Vec<Value> = (0..6)
            .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "mempool", "params": [3]}))
            .collect();
        ws.send(Message::Text(Value::Array(batch).to_string().into())).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
        let v: Value = serde_json::from_str(m.unwrap().unwrap().to_text().unwrap()).unwrap();
        let answers = v.as_array().unwrap();
        assert_eq!(answers.len(), 6);
        assert!(answers[0]["result"]["txs"].is_array(), "{}", answers[0]);
        let sizes: Vec<usize> = answers.iter().map(|a| a.to_string().len()).collect();
        assert!(
            answers.iter().any(|a| a["error"]["code"] == json!(-32011)),
            "none cut: {sizes:?} {}",
            answers[0]
        );
        assert!(v.to_string().len() < 2 * 65_536, "{} bytes", v.to_string().len());
    });
    drop(rt);

    // A silent WebSocket client (it never answers a ping) is dropped
    // within 10 % of ws_read_timeout_s (3 s).
    let mut ws = TcpStream::connect(("127.0.0.1", r)).unwrap();
    ws.write_all(
        format!("GET /websocket HTTP/1.1\r\nHost: 127.0.0.1:{r}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let t0 = Instant::now();
    let closed = until_closed(&mut ws, t0, 10.0);
    assert!((2.7..=3.3).contains(&closed), "dropped after {closed:.2} s, read timeout 3 s");
    drop(node);
}

#[test]
fn https_with_the_homes_own_ca() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let (h, _, r) = node_home_rpc(dir.path(), "tls", &g, "tls = true\n");
    let ca = std::fs::read(h.join("tls/ca.crt")).expect("plexus init writes the CA");
    let _node = start(&h, r, &[]);
    let cert = ureq::tls::Certificate::from_pem(&ca).unwrap().to_owned();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![cert])))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).build().into();
    let status = || -> Option<Value> {
        let mut resp = agent.get(&format!("https://127.0.0.1:{r}/status")).call().ok()?;
        serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()
    };
    until(30, "the RPC over HTTPS", || status().is_some());
    assert!(status().unwrap()["result"]["height"].is_u64());
    // The page and a JSON-RPC POST over HTTPS.
    let mut page = agent.get(&format!("https://localhost:{r}/")).call().unwrap();
    assert!(page.body_mut().read_to_string().unwrap().contains("<title>Plexus node</title>"));
    let mut resp = agent
        .post(&format!("https://127.0.0.1:{r}/"))
        .content_type("application/json")
        .send(json!({"jsonrpc": "2.0", "id": 1, "method": "tips"}).to_string())
        .unwrap();
    let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap();
    assert!(v["result"]["tips"].is_array(), "{v}");
    // Plain HTTP on the TLS port gets nothing.
    assert!(get(r, "status").is_none());
    // A client without the CA refuses the certificate.
    assert!(ureq::get(&format!("https://127.0.0.1:{r}/status")).call().is_err());

    // WSS with the same CA.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_rustls::rustls;
        use tokio_tungstenite::tungstenite::Message;
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", r)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(name, tcp)
            .await
            .unwrap();
        let (mut ws, _) =
            tokio_tungstenite::client_async(format!("wss://localhost:{r}/websocket"), tls)
                .await
                .unwrap();
        let req = json!({"jsonrpc": "2.0", "id": 7, "method": "status"});
        ws.send(Message::Text(req.to_string().into())).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.unwrap();
        let v: Value = serde_json::from_str(m.unwrap().unwrap().to_text().unwrap()).unwrap();
        assert!(v["result"]["height"].is_u64(), "{v}");
    });
}

/// `plexus status` and `plexus peers` read a running node's RPC from its
/// home (the address from config.toml, over HTTPS with the home's CA).
#[test]
fn the_operator_commands_read_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let (h, p, r) = node_home_rpc(dir.path(), "op", &g, "tls = true\n");
    let _node = start(&h, r, &["-m"]);
    let run = |cmd: &str| {
        let out = std::process::Command::new(BIN).arg(cmd).arg("--home").arg(&h).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    until(30, "plexus status over HTTPS", || run("status").0);
    let (h2, _, r2) = node_home(dir.path(), "other", &g);
    let _other = start(&h2, r2, &["-k", &format!("127.0.0.1:{p}")]);
    let (_, text, _) = run("status");
    assert!(
        text.contains("Height") && text.contains("plexus-e2e") && text.contains("\"op\""),
        "{text}"
    );
    let mut last = String::new();
    let seen = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        until(30, "the other node in plexus peers", || {
            let (_, out, err) = run("peers");
            last = format!("{out}{err}");
            out.contains("other")
        })
    }));
    assert!(seen.is_ok(), "plexus peers printed: {last}");
    let (_, text, _) = run("peers");
    assert!(text.contains("1 peers"), "{text}");
    // A node that is not running is named, not a panic.
    let (ok, _, err) = {
        let out = std::process::Command::new(BIN)
            .args(["status", "--rpc", "http://127.0.0.1:1"])
            .output()
            .unwrap();
        (out.status.success(), (), String::from_utf8_lossy(&out.stderr).to_string())
    };
    assert!(!ok && err.contains("cannot reach the node at http://127.0.0.1:1"), "{err}");
}
