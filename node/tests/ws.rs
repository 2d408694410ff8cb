//! The WebSocket endpoint of a `plexus` process: JSON-RPC calls and error
//! objects on the socket, `new_block` / `tip` / `peers` subscriptions,
//! unsubscribe, and the client limit.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(rpc: u16) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let (ws, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{rpc}/websocket")).await?;
    Ok(ws)
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// The next JSON message, within 30 s.
async fn next(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a message within 30 s")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(t) = m {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

/// Reads until the response with `id`; events before it go to `seen`.
async fn answer(ws: &mut Ws, id: u64, seen: &mut Vec<Value>) -> Value {
    loop {
        let v = next(ws).await;
        if v["id"] == json!(id) && v["result"].get("data").is_none() {
            return v;
        }
        seen.push(v);
    }
}

fn event_type(v: &Value) -> Option<&str> {
    v["result"]["data"]["type"].as_str()
}

#[tokio::test]
async fn websocket_calls_subscriptions_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let g = genesis_file(dir.path());
    let (h1, p1, r1) = node_home_rpc(dir.path(), "miner", &g, "max_ws_clients = 2\n");
    let miner = start(&h1, r1, &["-m"]);
    until(30, "the miner's RPC", || get(r1, "status").is_some());
    let mut ws = connect(r1).await.unwrap();
    let mut seen = Vec::new();

    // Methods and error objects.
    send(&mut ws, json!({"jsonrpc": "2.0", "id": 1, "method": "status"})).await;
    let st = answer(&mut ws, 1, &mut seen).await;
    assert_eq!(st["result"]["node_id"], json!(node_id(&miner)), "{st}");
    ws.send(Message::Text("{not json".into())).await.unwrap();
    assert_eq!(next(&mut ws).await["error"]["code"], json!(-32700));
    send(&mut ws, json!({"jsonrpc": "2.0", "id": 2, "method": "nope"})).await;
    assert_eq!(answer(&mut ws, 2, &mut seen).await["error"]["code"], json!(-32601));
    let bad = json!({"jsonrpc": "2.0", "id": 3, "method": "subscribe", "params": {"event": "x"}});
    send(&mut ws, bad).await;
    let e = answer(&mut ws, 3, &mut seen).await;
    assert_eq!(e["error"]["code"], json!(-32602));
    assert!(e["error"]["message"].as_str().unwrap().contains("new_block"), "{e}");

    // Subscriptions: CometBFT's query form for new blocks, names for the rest.
    let subs = [
        (10, json!({"query": "tm.event='NewBlock'"})),
        (11, json!({"event": "tip"})),
        (12, json!({"event": "peers"})),
    ];
    for (id, params) in subs {
        send(&mut ws, json!({"jsonrpc": "2.0", "id": id, "method": "subscribe", "params": params}))
            .await;
        assert_eq!(answer(&mut ws, id, &mut seen).await["result"], json!({}));
    }
    // Blocks arrive in order, each as a new_block (id 10) then a tip (id 11).
    let mut heights = Vec::new();
    while heights.len() < 5 {
        let v = next(&mut ws).await;
        match event_type(&v) {
            Some("new_block") => {
                assert_eq!(v["id"], json!(10));
                // The query is echoed as written (CometBFT clients match on it).
                assert_eq!(v["result"]["query"], json!("tm.event='NewBlock'"));
                heights.push(v["result"]["data"]["value"]["height"].as_u64().unwrap());
            }
            Some("tip") => {
                assert_eq!(v["id"], json!(11));
                let t = &v["result"]["data"]["value"];
                assert_eq!(t["reorg_depth"], json!(0), "{v}");
                assert_eq!(t["source"], Value::Null, "mined here: {v}");
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(heights.windows(2).all(|w| w[1] == w[0] + 1), "{heights:?}");
    let again =
        json!({"jsonrpc": "2.0", "id": 13, "method": "subscribe", "params": {"event": "tip"}});
    send(&mut ws, again).await;
    let e = answer(&mut ws, 13, &mut Vec::new()).await;
    assert!(e["error"]["message"].as_str().unwrap().contains("already subscribed"), "{e}");

    // A peer joins: a peers event names it.
    let (h2, _, r2) = node_home(dir.path(), "n2", &g);
    let n2 = start(&h2, r2, &["-k", &format!("127.0.0.1:{p1}")]);
    until(30, "n2's RPC", || get(r2, "status").is_some());
    let id2 = node_id(&n2);
    loop {
        let v = next(&mut ws).await;
        if event_type(&v) == Some("peers") {
            let p = &v["result"]["data"]["value"];
            assert_eq!(v["id"], json!(12));
            assert_eq!((p["event"].as_str(), p["id"].as_str()), (Some("added"), Some(&*id2)));
            assert_eq!(p["moniker"], json!("n2"));
            break;
        }
    }

    // Unsubscribed from new_block: the next tips come without blocks.
    let unsub = json!({"jsonrpc": "2.0", "id": 20, "method": "unsubscribe",
        "params": {"event": "new_block"}});
    send(&mut ws, unsub).await;
    answer(&mut ws, 20, &mut Vec::new()).await;
    let mut tips = 0;
    while tips < 3 {
        let v = next(&mut ws).await;
        assert_ne!(event_type(&v), Some("new_block"), "{v}");
        tips += usize::from(event_type(&v) == Some("tip"));
    }

    // A page from another site is refused; the node's own page is not.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let with_origin = |origin: &str| {
        let mut req = format!("ws://127.0.0.1:{r1}/websocket").into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    match tokio_tungstenite::connect_async(with_origin("http://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a foreign origin: {:?}", other.map(|_| ())),
    }
    let own = tokio_tungstenite::connect_async(with_origin(&format!("http://127.0.0.1:{r1}")));
    drop(own.await.expect("the node's own page may connect"));
    // Methods that change the node need POST or the WebSocket.
    let e = ureq::get(&format!("http://127.0.0.1:{r1}/stop_node")).call();
    assert!(matches!(e, Err(ureq::Error::StatusCode(403))), "{e:?}");
    assert!(get(r1, "status").is_some(), "the node stopped");
    // The mempool answer is capped whatever the limit asked.
    let m = get(r1, "mempool?limit=100000").unwrap();
    assert!(m["txs"].as_array().unwrap().len() <= 100);

    // The client limit: a second client is fine, a third gets 503.
    let _second = connect(r1).await.unwrap();
    match connect(r1).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("a third client: {:?}", other.map(|_| ())),
    }
    // Methods that change the node are refused when rpc.unsafe is off.
    let (h3, _, r3) = node_home_rpc(dir.path(), "safe", &g, "unsafe = false\n");
    let safe = start(&h3, r3, &[]);
    until(30, "the safe node's RPC", || get(r3, "status").is_some());
    let mut ws3 = connect(r3).await.unwrap();
    send(&mut ws3, json!({"jsonrpc": "2.0", "id": 1, "method": "stop_node"})).await;
    let e = answer(&mut ws3, 1, &mut Vec::new()).await;
    assert_eq!(e["error"]["code"], json!(-32000), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("rpc.unsafe"), "{e}");
    let e = ureq::get(&format!("http://127.0.0.1:{r3}/stop_peer?id=00")).call();
    assert!(matches!(e, Err(ureq::Error::StatusCode(403))), "{e:?}");
    assert!(get(safe.rpc, "status").is_some(), "the node stopped");

    let mut m = ureq::get(&format!("http://127.0.0.1:{r1}/metrics")).call().unwrap();
    let text = m.body_mut().read_to_string().unwrap();
    assert!(text.contains("plexus_rpc_ws_clients 2"), "{text}");
    assert!(text.contains("plexus_chain_reorgs"), "{text}");
}
