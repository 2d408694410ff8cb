//! The web port: the live web page at `/`, JSON-RPC 2.0 over `POST /` (as
//! CometBFT accepts it), the same methods as `GET /<method>?param=…`,
//! JSON-RPC and event subscriptions over the WebSocket at `/websocket`
//! (see [`crate::ws`]), and Prometheus metrics at `/metrics`. Request
//! bodies are capped at `rpc.max_body_bytes`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use plexus_p2p::{NetAddress, NodeId, Switch};
use plexus_reactors::chain::{Block, Hash, Header, TxId, U256};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use crate::node::Node;

/// JSON-RPC error codes (the spec's, plus ours from -32000 down).
pub mod code {
    /// Not JSON.
    pub const PARSE: i64 = -32700;
    /// Not a JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// The node failed (store error).
    pub const INTERNAL: i64 = -32603;
    /// A method that changes the node, with `rpc.unsafe = false`.
    pub const NOT_ALLOWED: i64 = -32000;
    /// No such block.
    pub const NOT_FOUND: i64 = -32001;
    /// The mempool refused the transaction.
    pub const TX_REFUSED: i64 = -32002;
}

/// A JSON-RPC error object.
#[derive(Debug)]
pub struct RpcError {
    /// One of [`code`].
    pub code: i64,
    /// What went wrong, for a person.
    pub message: String,
}

pub(crate) fn err(code: i64, message: impl Into<String>) -> RpcError {
    RpcError { code, message: message.into() }
}

/// The node's metrics: the switch's series plus gauges read at scrape.
pub struct Metrics {
    registry: parking_lot::Mutex<Registry>,
    height: Gauge,
    weight_log2: Gauge<f64, AtomicU64>,
    mempool_txs: Gauge,
    mempool_bytes: Gauge,
    hash_rate: Gauge<f64, AtomicU64>,
    sync_target: Gauge,
    syncing: Gauge,
    sync_height: Gauge,
    blocks_found: Gauge,
    reorgs: Gauge,
    reorged_blocks: Gauge,
    ws_clients: Gauge,
}

impl Metrics {
    /// A registry with `sw`'s series and the node gauges.
    pub fn new(sw: &Switch) -> Metrics {
        let mut r = Registry::with_prefix("plexus");
        sw.metrics().register(&mut r);
        let m = Metrics {
            registry: parking_lot::Mutex::new(Registry::default()),
            height: Gauge::default(),
            weight_log2: Gauge::default(),
            mempool_txs: Gauge::default(),
            mempool_bytes: Gauge::default(),
            hash_rate: Gauge::default(),
            sync_target: Gauge::default(),
            syncing: Gauge::default(),
            sync_height: Gauge::default(),
            blocks_found: Gauge::default(),
            reorgs: Gauge::default(),
            reorged_blocks: Gauge::default(),
            ws_clients: Gauge::default(),
        };
        let counts: &[(&str, &str, &Gauge)] = &[
            ("chain_height", "Main-chain height", &m.height),
            ("chain_reorgs", "Reorgs since start", &m.reorgs),
            (
                "chain_reorged_blocks",
                "Blocks taken off the main chain by reorgs since start",
                &m.reorged_blocks,
            ),
            ("mempool_txs", "Transactions in the mempool", &m.mempool_txs),
            ("mempool_bytes", "Bytes of transactions in the mempool", &m.mempool_bytes),
            ("miner_blocks_found", "Blocks this node mined", &m.blocks_found),
            ("syncing", "1 while a block sync round runs", &m.syncing),
            ("sync_height", "Height the running block sync round has applied", &m.sync_height),
            ("sync_target_height", "Target height of the running block sync round", &m.sync_target),
            ("rpc_ws_clients", "Connected WebSocket clients", &m.ws_clients),
        ];
        for (name, help, g) in counts {
            r.register(*name, *help, (*g).clone());
        }
        let weight = "log2 of the main chain's cumulative work";
        r.register("chain_weight_log2", weight, m.weight_log2.clone());
        r.register("miner_hash_rate", "Miner hashes per second", m.hash_rate.clone());
        *m.registry.lock() = r;
        m
    }

    fn render(&self, node: &Node) -> String {
        let c = node.chain.status();
        self.height.set(c.height as i64);
        self.weight_log2.set(c.weight.bit_len() as f64 - 1.0 + fraction(c.weight));
        let (txs, bytes) = node.chain.with_mempool(|p| (p.len(), p.bytes()));
        self.mempool_txs.set(txs as i64);
        self.mempool_bytes.set(bytes as i64);
        if let Some(m) = node.miner.lock().as_ref() {
            self.hash_rate.set(m.hash_rate());
            self.blocks_found.set(m.blocks_found() as i64);
        }
        let prog = node.sync.watch_progress().borrow().clone();
        self.sync_target.set(prog.target_height as i64);
        self.syncing.set(prog.syncing as i64);
        self.sync_height.set(prog.height as i64);
        let (reorgs, reorged) = node.chain.reorgs();
        self.reorgs.set(reorgs as i64);
        self.reorged_blocks.set(reorged as i64);
        self.ws_clients.set(node.ws_clients.load(std::sync::atomic::Ordering::Relaxed) as i64);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock());
        out
    }
}

/// The fractional part of log2(w), from its top bits.
fn fraction(w: U256) -> f64 {
    let bits = w.bit_len();
    if bits <= 1 {
        return 0.0;
    }
    let top = if bits > 53 { (w >> (bits - 53)).to::<u64>() } else { w.to::<u64>() << (53 - bits) };
    (top as f64 / (1u64 << 52) as f64).log2()
}

/// Serves the router on `listener` until the node's switch stops, with
/// the limits and guard of [`crate::http`] and `tls` (built from
/// `rpc.tls` by [`crate::tls::acceptor`]). Errors: the JSON-RPC methods
/// could not be registered.
pub fn serve(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> anyhow::Result<()> {
    let sw = node.sw.clone();
    let rpc = Arc::new(crate::jsonrpc::JsonRpc::new(&node)?);
    let cfg = node.cfg.rpc.clone();
    crate::http::serve(&cfg, listener, router(node, rpc), tls, async move { sw.stopped().await });
    Ok(())
}

/// The routes, behind [`crate::http::guard`].
pub fn router(node: Arc<Node>, rpc: Arc<crate::jsonrpc::JsonRpc>) -> Router {
    Router::new()
        .route("/", get(index).post(crate::jsonrpc::post))
        .route("/metrics", get(metrics))
        .route("/websocket", get(crate::ws::handler))
        .route("/{method}", get(get_method))
        .layer(axum::extract::DefaultBodyLimit::max(node.cfg.rpc.max_body_bytes))
        .layer(axum::Extension(rpc))
        .layer(axum::middleware::from_fn_with_state(node.clone(), crate::http::guard))
        .with_state(node)
}

async fn index() -> Html<&'static str> {
    Html(include_str!("web/index.html"))
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    // Rendering reads the chain and the mempool under their locks.
    let n = node.clone();
    let body = tokio::task::spawn_blocking(move || n.metrics.render(&n)).await.unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

pub(crate) fn reply(id: Value, r: Result<Value, RpcError>) -> Value {
    match r {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => {
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": e.code, "message": e.message}})
        }
    }
}

async fn get_method(
    State(node): State<Arc<Node>>,
    Path(method): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // CometBFT's URI form: params as query strings, quoted strings allowed.
    let params: serde_json::Map<String, Value> = q
        .into_iter()
        .map(|(k, v)| {
            let v = serde_json::from_str::<Value>(&v).unwrap_or(Value::String(v));
            (k, v)
        })
        .collect();
    let r = call(&node, &method, Value::Object(params), Via::Get).await;
    let status = match &r {
        Ok(_) => StatusCode::OK,
        Err(e) if e.code == code::METHOD_NOT_FOUND || e.code == code::NOT_FOUND => {
            StatusCode::NOT_FOUND
        }
        Err(e) if e.code == code::NOT_ALLOWED => StatusCode::FORBIDDEN,
        Err(e) if e.code == code::INTERNAL => StatusCode::INTERNAL_SERVER_ERROR,
        Err(_) => StatusCode::BAD_REQUEST,
    };
    (status, Json(reply(json!(-1), r))).into_response()
}

fn param<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
    p.get(name).filter(|v| !v.is_null())
}

fn u64_param(p: &Value, name: &str) -> Result<Option<u64>, RpcError> {
    match param(p, name) {
        None => Ok(None),
        Some(v) => {
            v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).map(Some).ok_or_else(
                || err(code::INVALID_PARAMS, format!("{name} must be a non-negative integer")),
            )
        }
    }
}

fn header_json(hash: &Hash, h: &Header) -> Value {
    json!({
        "hash": hash.to_string(),
        "height": h.height,
        "prev_hash": h.prev_hash.to_string(),
        "merkle_root": h.merkle_root.to_string(),
        "timestamp_ms": h.timestamp_ms,
        "bits": format!("{:#010x}", h.bits),
        "nonce": h.nonce,
        "version": h.version,
    })
}

/// A transaction as the RPC shows it (docs/protocol.md §12): a JSON
/// string when its bytes are UTF-8 (the string is the text), else
/// `{"hex": "<lowercase hex of the bytes>"}`. The two never look alike, so
/// a text that reads `0x…` stays that text.
pub fn tx_json(tx: &[u8]) -> Value {
    match std::str::from_utf8(tx) {
        Ok(s) => json!(s),
        Err(_) => json!({ "hex": hex::encode(tx) }),
    }
}

/// The bytes of a transaction given in either form of [`tx_json`] (a
/// number or a boolean is taken as its JSON text, for `curl` users).
///
/// # Errors
/// -32602 for another JSON type, an object other than `{"hex": …}`, or
/// hex that does not decode.
pub fn tx_bytes(v: Option<&Value>) -> Result<Vec<u8>, RpcError> {
    let shape = "tx must be a string (UTF-8 text) or {\"hex\": \"<hex bytes>\"}";
    match v {
        Some(Value::String(s)) => Ok(s.clone().into_bytes()),
        Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(v.to_string().into_bytes()),
        Some(Value::Object(o)) if o.len() == 1 => match o.get("hex") {
            Some(Value::String(h)) => hex::decode(h)
                .map_err(|e| err(code::INVALID_PARAMS, format!("tx hex does not decode: {e}"))),
            _ => Err(err(code::INVALID_PARAMS, shape)),
        },
        _ => Err(err(code::INVALID_PARAMS, shape)),
    }
}

fn block_json(b: &Block) -> Value {
    let mut v = header_json(&b.hash(), &b.header);
    v["txs"] = Value::Array(b.txs.iter().map(|t| tx_json(t)).collect());
    v["size"] = json!(b.size());
    v
}

/// How a request arrived. GET routes never run methods that change the
/// node (`broadcast_tx` and the unsafe ones): a page on another site can
/// make a browser send a GET (an `<img>`) without any check, while POST
/// and WebSocket requests from a browser carry an `Origin` the guard
/// checks ([`crate::http::guard`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `GET /<method>`.
    Get,
    /// JSON-RPC: `POST /` or a WebSocket message (both through
    /// [`crate::jsonrpc`]).
    JsonRpc,
}

fn require_unsafe(node: &Node, via: Via) -> Result<(), RpcError> {
    if !node.cfg.rpc.unsafe_methods {
        Err(err(code::NOT_ALLOWED, "method not allowed: set rpc.unsafe = true in config.toml"))
    } else if via == Via::Get {
        Err(err(code::NOT_ALLOWED, "methods that change the node need POST or the WebSocket"))
    } else {
        Ok(())
    }
}

/// Every method and its parameters in positional order (a JSON-RPC
/// `params` array is named by it, [`crate::jsonrpc::named_params`]).
pub const METHODS: &[(&str, &[&str])] = &[
    ("status", &[]),
    ("net_info", &[]),
    ("tips", &[]),
    ("block", &["height", "hash"]),
    ("blockchain", &["min_height", "max_height"]),
    ("mempool", &["limit"]),
    ("broadcast_tx", &["tx"]),
    ("dial_peers", &["peers", "persistent"]),
    ("stop_peer", &["id"]),
    ("stop_node", &[]),
];

/// A method call with its parameters parsed and checked
/// ([`Request::parse`]): everything a caller can get wrong is refused
/// there, before the node is touched.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// `status`.
    Status,
    /// `net_info`.
    NetInfo,
    /// `tips`.
    Tips,
    /// `block`: by height, else by hash, else the tip.
    Block {
        /// `height`.
        height: Option<u64>,
        /// `hash` (64 hex digits, `0x` allowed).
        hash: Option<Hash>,
    },
    /// `blockchain`.
    Blockchain {
        /// `min_height`.
        min: Option<u64>,
        /// `max_height`.
        max: Option<u64>,
    },
    /// `mempool`: at most `limit` transactions (default 30, capped at
    /// [`MAX_MEMPOOL_LIMIT`]).
    Mempool {
        /// `limit`.
        limit: usize,
    },
    /// `broadcast_tx`: the transaction's bytes ([`tx_bytes`]).
    BroadcastTx(Vec<u8>),
    /// `dial_peers`.
    DialPeers {
        /// `peers`, at most `rpc.max_dial_peers`.
        peers: Vec<NetAddress>,
        /// `persistent` (default false).
        persistent: bool,
    },
    /// `stop_peer`.
    StopPeer(NodeId),
    /// `stop_node`.
    StopNode,
}

impl Request {
    /// Parses `method` with named params `p` (an object, or null for
    /// none); `max_dial_peers` is `rpc.max_dial_peers`.
    ///
    /// # Errors
    /// -32601 for an unknown method; -32602 naming the bad parameter.
    pub fn parse(method: &str, p: &Value, max_dial_peers: usize) -> Result<Request, RpcError> {
        let empty = json!({});
        let p = match p {
            Value::Object(_) => p,
            Value::Null => &empty,
            _ => {
                let why = "params must be an object of named parameters";
                return Err(err(code::INVALID_PARAMS, why));
            }
        };
        Ok(match method {
            "status" => Request::Status,
            "net_info" => Request::NetInfo,
            "tips" => Request::Tips,
            "block" => {
                let hash = match param(p, "hash") {
                    None => None,
                    Some(v) => Some(
                        v.as_str()
                            .and_then(|s| s.strip_prefix("0x").unwrap_or(s).parse::<Hash>().ok())
                            .ok_or_else(|| {
                                err(code::INVALID_PARAMS, "hash must be 64 hex digits")
                            })?,
                    ),
                };
                Request::Block { height: u64_param(p, "height")?, hash }
            }
            "blockchain" => Request::Blockchain {
                min: u64_param(p, "min_height")?,
                max: u64_param(p, "max_height")?,
            },
            "mempool" => {
                let limit = u64_param(p, "limit")?.unwrap_or(30).min(MAX_MEMPOOL_LIMIT as u64);
                Request::Mempool { limit: limit as usize }
            }
            "broadcast_tx" => Request::BroadcastTx(tx_bytes(param(p, "tx"))?),
            "dial_peers" => {
                let list = param(p, "peers").and_then(Value::as_array).ok_or_else(|| {
                    err(code::INVALID_PARAMS, "peers must be a list of id@host:port")
                })?;
                if list.len() > max_dial_peers {
                    let why = format!(
                        "{} peers; at most {max_dial_peers} (rpc.max_dial_peers)",
                        list.len()
                    );
                    return Err(err(code::INVALID_PARAMS, why));
                }
                let mut peers = Vec::new();
                for v in list {
                    let s = v.as_str().unwrap_or_default();
                    let a: NetAddress = s
                        .parse()
                        .map_err(|e| err(code::INVALID_PARAMS, format!("peer {s}: {e}")))?;
                    peers.push(a);
                }
                let persistent = match param(p, "persistent") {
                    None => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(err(code::INVALID_PARAMS, "persistent must be a boolean"))
                    }
                };
                Request::DialPeers { peers, persistent }
            }
            "stop_peer" => Request::StopPeer(
                param(p, "id").and_then(Value::as_str).and_then(|s| s.parse().ok()).ok_or_else(
                    || err(code::INVALID_PARAMS, "id must be a node id (40 hex digits)"),
                )?,
            ),
            "stop_node" => Request::StopNode,
            other => return Err(err(code::METHOD_NOT_FOUND, format!("unknown method {other:?}"))),
        })
    }
}

/// Runs one method; the JSON-RPC, GET and WebSocket forms all end here.
/// `params` must be an object (named parameters) or absent. Reads of the
/// chain, the store and the mempool run on a blocking thread, so a block
/// import holding the chain lock never parks the async workers.
pub async fn call(node: &Arc<Node>, method: &str, p: Value, via: Via) -> Result<Value, RpcError> {
    // Who may call it comes before what it was given.
    match method {
        "dial_peers" | "stop_peer" | "stop_node" => require_unsafe(node, via)?,
        // A transaction changes the node: a page on any site could make a
        // browser send this GET (an `<img>`).
        "broadcast_tx" if via == Via::Get => {
            return Err(err(code::NOT_ALLOWED, "broadcast_tx needs POST or the WebSocket"));
        }
        _ => {}
    }
    match Request::parse(method, &p, node.cfg.rpc.max_dial_peers)? {
        Request::BroadcastTx(tx) => {
            let id = node
                .mem
                .submit(Bytes::from(tx))
                .map_err(|e| err(code::TX_REFUSED, e.to_string()))?;
            Ok(json!({ "hash": id.to_string() }))
        }
        Request::DialPeers { peers, persistent } => {
            let sw = node.sw.clone();
            let n = peers.len();
            tokio::spawn(async move {
                sw.dial_peers(peers, persistent).await;
            });
            Ok(json!({ "dialing": n, "persistent": persistent }))
        }
        Request::StopPeer(id) => {
            let peer =
                node.sw.peer(&id).ok_or_else(|| err(code::NOT_FOUND, format!("no peer {id}")))?;
            node.sw.stop_peer_gracefully(&peer).await;
            Ok(json!({ "stopped": id.to_string() }))
        }
        Request::StopNode => {
            node.stop_requested.notify_one();
            Ok(json!({ "stopping": true }))
        }
        // The read-only methods.
        read_only => {
            let node = node.clone();
            tokio::task::spawn_blocking(move || read(&node, read_only))
                .await
                .unwrap_or_else(|e| Err(err(code::INTERNAL, format!("the request failed: {e}"))))
        }
    }
}

/// Most transactions one `mempool` call returns (CometBFT's
/// `unconfirmed_txs` cap).
pub const MAX_MEMPOOL_LIMIT: usize = 100;

/// Most headers one `blockchain` call returns (as CometBFT).
pub const MAX_BLOCKCHAIN_HEADERS: u64 = 20;

/// The read-only methods, on a blocking thread. The chain and mempool
/// locks are held only to copy out what the answer needs (hashes,
/// headers); blocks are read through the node's read-only database
/// connection, and JSON is built after.
fn read(node: &Node, request: Request) -> Result<Value, RpcError> {
    let store_err = |e: plexus_reactors::chain::StoreError| err(code::INTERNAL, e.to_string());
    match request {
        Request::Status => Ok(status(node)),
        Request::NetInfo => Ok(net_info(node)),
        Request::Tips => {
            let tips = node.chain.with_chain(|c| c.tips());
            let tips: Vec<Value> = tips
                .iter()
                .map(|t| json!({"hash": t.hash.to_string(), "height": t.height, "weight": t.weight.to_string()}))
                .collect();
            Ok(json!({ "tips": tips }))
        }
        Request::Block { height, hash } => {
            let (hash, main) = node.chain.with_chain(|c| {
                let hash = match (height, hash) {
                    (Some(h), _) => c
                        .height_to_hash(h)
                        .ok_or_else(|| err(code::NOT_FOUND, format!("no block at height {h}")))?,
                    (None, Some(hash)) => hash,
                    (None, None) => c.tip(),
                };
                Ok::<_, RpcError>((hash, c.on_main(&hash)))
            })?;
            let block = node.reader.lock().block(&hash).map_err(store_err)?;
            let block = block.ok_or_else(|| err(code::NOT_FOUND, format!("no block {hash}")))?;
            let mut v = block_json(&block);
            v["main_chain"] = json!(main);
            Ok(v)
        }
        Request::Blockchain { min, max } => {
            let (last, picked) = node.chain.with_chain(|c| {
                let last = c.height();
                let max = max.unwrap_or(last).min(last);
                let span = MAX_BLOCKCHAIN_HEADERS - 1;
                let min = min.unwrap_or(max.saturating_sub(span));
                if min > max {
                    let why = format!("min_height {min} is above max_height {max}");
                    return Err(err(code::INVALID_PARAMS, why));
                }
                // Newest first, as CometBFT.
                let mut picked = Vec::new();
                for h in (min.max(max.saturating_sub(span))..=max).rev() {
                    let hash = c.height_to_hash(h);
                    let header = hash.and_then(|x| c.header(&x).cloned());
                    let (Some(hash), Some(header)) = (hash, header) else {
                        return Err(err(code::INTERNAL, format!("main chain has no block {h}")));
                    };
                    picked.push((hash, header));
                }
                Ok::<_, RpcError>((last, picked))
            })?;
            let mut headers = Vec::with_capacity(picked.len());
            let reader = node.reader.lock();
            for (hash, header) in picked {
                let mut v = header_json(&hash, &header);
                let block = reader.block(&hash).map_err(store_err)?;
                if let Some(b) = block {
                    v["n_txs"] = json!(b.txs.len());
                }
                headers.push(v);
            }
            Ok(json!({ "last_height": last, "headers": headers }))
        }
        Request::Mempool { limit } => {
            let (n, bytes, txs) = node.chain.with_mempool(|m| {
                let txs: Vec<(TxId, Bytes)> =
                    m.iter().take(limit).map(|(id, t)| (*id, t.clone())).collect();
                (m.len(), m.bytes(), txs)
            });
            let txs: Vec<Value> = txs
                .iter()
                .map(|(id, t)| json!({"hash": id.to_string(), "tx": tx_json(t)}))
                .collect();
            Ok(json!({ "n_txs": n, "bytes": bytes, "txs": txs }))
        }
        other => Err(err(code::INTERNAL, format!("{other:?} is not a read-only method"))),
    }
}

fn status(node: &Node) -> Value {
    let (height, weight, tip, tip_time) =
        node.chain.with_chain(|c| (c.height(), c.weight(), c.tip(), c.tip_header().timestamp_ms));
    let sync = node.sync.watch_progress().borrow().clone();
    let (mining, hash_rate, found) = match node.miner.lock().as_ref() {
        Some(m) => (true, m.hash_rate(), m.blocks_found()),
        None => (false, 0.0, 0),
    };
    json!({
        "node_id": node.sw.node_id().to_string(),
        "moniker": node.cfg.moniker,
        "home": node.home.dir().display().to_string(),
        "network": node.params.network_id(),
        "network_name": node.params.genesis.network_name,
        "version": env!("CARGO_PKG_VERSION"),
        "listen_addr": node.p2p_address().map(|a| a.to_string()),
        "uptime_s": node.started.elapsed().as_secs(),
        "height": height,
        "weight": weight.to_string(),
        "tip": tip.to_string(),
        "tip_time_ms": tip_time,
        "syncing": sync.syncing,
        "sync": sync,
        "mining": mining,
        "hash_rate": hash_rate,
        "blocks_found": found,
        "n_peers": node.sw.peers().len(),
        "mempool_txs": node.chain.with_mempool(|m| m.len()),
    })
}

fn net_info(node: &Node) -> Value {
    let peers: Vec<Value> = node
        .sw
        .peers()
        .iter()
        .map(|p| {
            let st = p.stats();
            let info = p.node_info();
            let channels: Vec<Value> = st
                .channels
                .iter()
                .map(
                    |c| json!({"id": c.id, "bytes_sent": c.bytes_sent, "bytes_recv": c.bytes_recv}),
                )
                .collect();
            json!({
                "id": p.id().to_string(),
                "addr": p.socket_addr().to_string(),
                "listen_addr": info.listen_addr,
                "moniker": info.moniker,
                "node_type": format!("{:?}", info.node_type),
                "outbound": p.is_outbound(),
                "persistent": p.is_persistent(),
                "kind": format!("{:?}", p.kind()).to_lowercase(),
                "score": node.sw.standing(&p.id()).score,
                "uptime_s": p.uptime().as_secs(),
                "rtt_ms": st.last_rtt.map(|d| d.as_secs_f64() * 1000.0),
                "send_rate": st.send_rate,
                "queued_bytes": st.send_queue_bytes,
                "recv_rate": st.recv_rate,
                "channels": channels,
            })
        })
        .collect();
    let book = node.pex.book();
    let book_len = book.lock().len();
    json!({
        "listening": node.p2p_address().is_some(),
        "listen_addr": node.p2p_address().map(|a| a.to_string()),
        "n_peers": peers.len(),
        "address_book": book_len,
        "peers": peers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/openrpc.json describes exactly the served methods, with their
    /// params in positional order.
    #[test]
    fn the_openrpc_document_names_every_method_and_param() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openrpc.json");
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let described: Vec<(String, Vec<String>)> = doc["methods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let params = m["params"].as_array().unwrap();
                let names = params.iter().map(|p| p["name"].as_str().unwrap().to_string());
                (m["name"].as_str().unwrap().to_string(), names.collect())
            })
            .collect();
        let served: Vec<(String, Vec<String>)> = METHODS
            .iter()
            .map(|(m, ps)| (m.to_string(), ps.iter().map(|p| p.to_string()).collect()))
            .collect();
        assert_eq!(described, served);
    }

    #[test]
    fn transactions_show_text_as_strings_and_other_bytes_as_hex_objects() {
        assert_eq!(tx_json(b"0xab"), json!("0xab"));
        assert_eq!(tx_json(&[0xff, 0x00]), json!({"hex": "ff00"}));
        assert_eq!(tx_bytes(Some(&json!("0xab"))).unwrap(), b"0xab");
        assert_eq!(tx_bytes(Some(&json!({"hex": "ff00"}))).unwrap(), vec![0xff, 0x00]);
        assert_eq!(tx_bytes(Some(&json!(12))).unwrap(), b"12");
        for bad in
            [json!({"hex": "f"}), json!({"hex": 1}), json!({"text": "a"}), json!([1]), json!(null)]
        {
            assert_eq!(tx_bytes(Some(&bad)).unwrap_err().code, code::INVALID_PARAMS, "{bad}");
        }
        assert!(tx_bytes(None).is_err());
    }
}
