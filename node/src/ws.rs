//! The WebSocket endpoint `/websocket` (CometBFT's path): every JSON-RPC
//! method of the HTTP API, plus subscriptions to node events.
//!
//! A client sends JSON-RPC 2.0 requests as text messages and gets one
//! response per request, with the request's `id`. Subscriptions:
//! - `subscribe {"event": E}` with E one of `new_block` (each block that
//!   joins the main chain, lowest first), `tip` (each tip change, with the
//!   reorg it made) and `peers` (a peer added or removed). CometBFT's form
//!   `{"query": "tm.event='NewBlock'"}` is accepted for `new_block`
//!   (`'Tip'`, `'Peers'` for the others).
//! - `unsubscribe {"event": E}`, `unsubscribe_all {}`.
//!
//! Each event arrives as a response to the `subscribe` request (its `id`),
//! as CometBFT sends them: `{"jsonrpc": "2.0", "id": ID, "result":
//! {"query": E, "data": {"type": E, "value": {…}}}}`. A client that falls
//! more than the chain service's `event_buffer` (1,024) chain events
//! behind gets `{"jsonrpc": "2.0", "method": "lagged", "params":
//! {"stream": "chain"|"peers", "missed": N}}` and should re-read the state
//! it shows; one that takes longer than `rpc.ws_write_timeout_s` (10 s) to
//! accept a message, or sends nothing (not even a pong to the pings sent
//! every half of `rpc.ws_read_timeout_s`) for `ws_read_timeout_s` (30 s),
//! is disconnected. At most `rpc.max_ws_clients` (100) clients at once and
//! `rpc.max_ws_clients_per_ip` (10) from one IP address, more get 503;
//! browsers only from the node's own page or `rpc.cors_allowed_origins`
//! (the guard of [`crate::http`]). Methods that change the node are
//! allowed here (as over POST) when `rpc.unsafe` is set.
//!
//! Calls other than the subscriptions go through jsonrpsee's methods
//! ([`crate::jsonrpc::JsonRpc::call_text`]): batches and positional
//! params as over POST. The subscriptions are kept by hand here, in
//! CometBFT's form, which jsonrpsee's subscriptions cannot produce.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use plexus_p2p::SwitchEvent;
use plexus_reactors::consensus::{BlockSummary, ChainEvent};
use serde_json::{json, Value};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::jsonrpc::JsonRpc;
use crate::node::Node;
use crate::rpc::{code, err, reply, RpcError};

/// The events a client can subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Event {
    /// A block joined the main chain.
    NewBlock,
    /// The tip changed (possibly by a reorg).
    Tip,
    /// A peer was added or removed.
    Peers,
}

impl Event {
    /// Every event: its wire name and its CometBFT query name.
    const ALL: [(Event, &'static str, &'static str); 3] = [
        (Event::NewBlock, "new_block", "NewBlock"),
        (Event::Tip, "tip", "Tip"),
        (Event::Peers, "peers", "Peers"),
    ];

    /// The event's name on the wire.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(e, _, _)| *e == self).map_or("", |(_, n, _)| n)
    }

    /// From `{"event": name}` or CometBFT's `{"query": "tm.event='X'"}`:
    /// the event and the query as written (what events echo back).
    fn from_params(p: &Value) -> Result<(Event, String), RpcError> {
        let bad = || {
            err(
                code::INVALID_PARAMS,
                "event must be new_block, tip or peers (or query tm.event='NewBlock')",
            )
        };
        let (written, found) = if let Some(name) = p.get("event").and_then(Value::as_str) {
            (name, Self::ALL.iter().find(|(_, n, _)| *n == name))
        } else {
            let q = p.get("query").and_then(Value::as_str).ok_or_else(bad)?;
            let compact = q.replace(' ', "");
            (q, Self::ALL.iter().find(|(_, _, x)| compact == format!("tm.event='{x}'")))
        };
        let (e, _, _) = found.ok_or_else(bad)?;
        Ok((*e, written.to_string()))
    }
}

/// A WebSocket client slot, in the total and in its IP's count, given
/// back when dropped (the upgrade failed, the client left, or its task
/// panicked).
struct Slot {
    node: Arc<Node>,
    _place: crate::http::IpPlace,
}

impl Slot {
    /// Takes a slot for a client from `ip`, or says which limit is full.
    fn take(node: &Arc<Node>, ip: IpAddr) -> Result<Slot, String> {
        let cfg = &node.cfg.rpc;
        let per_ip = cfg.max_ws_clients_per_ip;
        let place = node.ws_per_ip.take(ip, per_ip).ok_or_else(|| {
            format!("{per_ip} WebSocket clients from {ip} already (rpc.max_ws_clients_per_ip)")
        })?;
        let max = cfg.max_ws_clients;
        let taken = node
            .ws_clients
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1));
        if taken.is_err() {
            return Err(format!("{max} WebSocket clients already (rpc.max_ws_clients)"));
        }
        Ok(Slot { node: node.clone(), _place: place })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.node.ws_clients.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `GET /websocket`: upgrades, or answers 503 when `max_ws_clients` are
/// connected, or `max_ws_clients_per_ip` from the client's address.
pub async fn handler(
    State(node): State<Arc<Node>>,
    Extension(rpc): Extension<Arc<JsonRpc>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    let slot = match Slot::take(&node, remote.ip()) {
        Ok(s) => s,
        Err(why) => {
            let e = err(code::INTERNAL, why);
            return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(reply(Value::Null, Err(e))))
                .into_response();
        }
    };
    let limit = node.cfg.rpc.max_body_bytes;
    ws.max_message_size(limit).max_frame_size(limit).on_upgrade(move |socket| async move {
        Client::new(node, rpc).run(socket).await;
        drop(slot);
    })
}

/// One connected client.
struct Client {
    node: Arc<Node>,
    rpc: Arc<JsonRpc>,
    /// Subscribed events: the `id` of each `subscribe` and the query as the
    /// client wrote it (echoed in its events, as CometBFT does).
    subs: HashMap<Event, (Value, String)>,
    /// Held only while `new_block` or `tip` is subscribed, so the chain
    /// builds events only for someone.
    chain: Option<broadcast::Receiver<Arc<ChainEvent>>>,
    /// Held only while `peers` is subscribed.
    peers: Option<broadcast::Receiver<SwitchEvent>>,
    write_timeout: Duration,
    read_timeout: Duration,
}

/// Why a client's loop ends.
struct Gone;

impl Client {
    fn new(node: Arc<Node>, rpc: Arc<JsonRpc>) -> Client {
        let write_timeout = Duration::from_secs(node.cfg.rpc.ws_write_timeout_s.max(1));
        let read_timeout = Duration::from_secs(node.cfg.rpc.ws_read_timeout_s.max(1));
        Client {
            node,
            rpc,
            subs: HashMap::new(),
            chain: None,
            peers: None,
            write_timeout,
            read_timeout,
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let mut ping = tokio::time::interval(self.read_timeout / 2);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // Disconnected at this deadline unless something arrives first.
        let silent = tokio::time::sleep(self.read_timeout);
        tokio::pin!(silent);
        loop {
            let r = tokio::select! {
                msg = socket.recv() => {
                    silent.as_mut().reset(tokio::time::Instant::now() + self.read_timeout);
                    match msg {
                        Some(Ok(Message::Text(t))) => {
                            let out = self.request(t.as_str()).await;
                            self.send(&mut socket, &out).await
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let e = err(code::PARSE, "send JSON-RPC as text messages");
                            self.send(&mut socket, &reply(Value::Null, Err(e))).await
                        }
                        Some(Ok(_)) => Ok(()), // pings are answered by axum; pongs count as heard
                        Some(Err(_)) | None => Err(Gone),
                    }
                }
                ev = recv_opt(&mut self.chain) => self.chain_event(&mut socket, ev).await,
                ev = recv_opt(&mut self.peers) => self.peer_event(&mut socket, ev).await,
                _ = &mut silent => Err(Gone),
                _ = ping.tick() => self.send_msg(&mut socket, Message::Ping(Default::default())).await,
                _ = self.node.sw.stopped() => Err(Gone),
            };
            if r.is_err() {
                break;
            }
        }
        let _ = tokio::time::timeout(self.write_timeout, socket.send(Message::Close(None))).await;
    }

    async fn send_msg(&self, socket: &mut WebSocket, m: Message) -> Result<(), Gone> {
        match tokio::time::timeout(self.write_timeout, socket.send(m)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(Gone),
        }
    }

    async fn send(&self, socket: &mut WebSocket, v: &Value) -> Result<(), Gone> {
        self.send_msg(socket, Message::Text(v.to_string().into())).await
    }

    /// Answers one message: a request or a batch, subscriptions here, the
    /// rest through jsonrpsee's methods.
    async fn request(&mut self, text: &str) -> Value {
        let rpc = self.rpc.clone();
        let max_batch = self.node.cfg.rpc.max_batch;
        let out = rpc.call_text(text, max_batch, |req| self.subscription(req)).await;
        self.listen();
        out
    }

    /// Answers `subscribe`, `unsubscribe` and `unsubscribe_all`; `None`
    /// for any other request.
    fn subscription(&mut self, req: &Value) -> Option<Value> {
        let method = req.get("method").and_then(Value::as_str)?;
        if !matches!(method, "subscribe" | "unsubscribe" | "unsubscribe_all") {
            return None;
        }
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let params = match req.get("params") {
            // A positional `["new_block"]` names the event.
            Some(Value::Array(a)) => json!({ "event": a.first().cloned().unwrap_or(Value::Null) }),
            Some(p) => p.clone(),
            None => json!({}),
        };
        let r = match method {
            "subscribe" => Event::from_params(&params).and_then(|(e, query)| {
                if self.subs.contains_key(&e) {
                    return Err(err(
                        code::INVALID_PARAMS,
                        format!("already subscribed to {query}"),
                    ));
                }
                self.subs.insert(e, (id.clone(), query));
                Ok(json!({}))
            }),
            "unsubscribe" => Event::from_params(&params).and_then(|(e, query)| {
                self.subs
                    .remove(&e)
                    .map(|_| json!({}))
                    .ok_or_else(|| err(code::INVALID_PARAMS, format!("not subscribed to {query}")))
            }),
            _ => {
                self.subs.clear();
                Ok(json!({}))
            }
        };
        Some(reply(id, r))
    }

    /// Holds the event receivers exactly while someone subscribed.
    fn listen(&mut self) {
        let chain = self.subscribed(Event::NewBlock) || self.subscribed(Event::Tip);
        match (chain, self.chain.is_some()) {
            (true, false) => self.chain = Some(self.node.chain.subscribe()),
            (false, true) => self.chain = None,
            _ => {}
        }
        match (self.subscribed(Event::Peers), self.peers.is_some()) {
            (true, false) => self.peers = Some(self.node.sw.subscribe()),
            (false, true) => self.peers = None,
            _ => {}
        }
    }

    fn subscribed(&self, e: Event) -> bool {
        self.subs.contains_key(&e)
    }

    fn event(&self, e: Event, value: Value) -> Option<Value> {
        let (id, query) = self.subs.get(&e)?;
        Some(json!({
            "jsonrpc": "2.0",
            "id": id,
            "result": {"query": query, "data": {"type": e.name(), "value": value}},
        }))
    }

    async fn lagged(&self, socket: &mut WebSocket, stream: &str, missed: u64) -> Result<(), Gone> {
        let params = json!({"stream": stream, "missed": missed});
        self.send(socket, &json!({"jsonrpc": "2.0", "method": "lagged", "params": params})).await
    }

    async fn chain_event(
        &mut self,
        socket: &mut WebSocket,
        ev: Result<Arc<ChainEvent>, RecvError>,
    ) -> Result<(), Gone> {
        let ev = match ev {
            Ok(ev) => ev,
            Err(RecvError::Lagged(n)) => return self.lagged(socket, "chain", n).await,
            Err(RecvError::Closed) => return Err(Gone),
        };
        if self.subscribed(Event::NewBlock) {
            for b in &ev.connected {
                if let Some(v) = self.event(Event::NewBlock, summary_json(b)) {
                    self.send(socket, &v).await?;
                }
            }
        }
        if !self.subscribed(Event::Tip) {
            return Ok(());
        }
        let tip = json!({
            "old_tip": ev.old_tip.to_string(),
            "tip": ev.new_tip.to_string(),
            "height": ev.height,
            "fork_height": ev.fork_height,
            "reorg_depth": ev.disconnected.len(),
            "disconnected": ev.disconnected.iter().map(summary_json).collect::<Vec<_>>(),
            "connected": ev.connected.len(),
            "source": ev.source.map(|id| id.to_string()),
        });
        match self.event(Event::Tip, tip) {
            Some(v) => self.send(socket, &v).await,
            None => Ok(()),
        }
    }

    async fn peer_event(
        &mut self,
        socket: &mut WebSocket,
        ev: Result<SwitchEvent, RecvError>,
    ) -> Result<(), Gone> {
        let n_peers = || self.node.sw.peers().len();
        let value = match ev {
            Ok(SwitchEvent::PeerAdded { id, direction }) => {
                let peer = self.node.sw.peer(&id);
                json!({
                    "event": "added",
                    "id": id.to_string(),
                    "outbound": matches!(direction, plexus_p2p::Direction::Outbound),
                    "moniker": peer.as_ref().map(|p| p.node_info().moniker.clone()),
                    "addr": peer.as_ref().map(|p| p.socket_addr().to_string()),
                    "n_peers": n_peers(),
                })
            }
            Ok(SwitchEvent::PeerRemoved { id, reason }) => json!({
                "event": "removed",
                "id": id.to_string(),
                "reason": reason.to_string(),
                "n_peers": n_peers(),
            }),
            Ok(_) => return Ok(()),
            Err(RecvError::Lagged(n)) => return self.lagged(socket, "peers", n).await,
            Err(RecvError::Closed) => return Err(Gone),
        };
        match self.event(Event::Peers, value) {
            Some(v) => self.send(socket, &v).await,
            None => Ok(()),
        }
    }
}

/// Receives from `rx`, or waits forever when there is none.
async fn recv_opt<T: Clone>(rx: &mut Option<broadcast::Receiver<T>>) -> Result<T, RecvError> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A block summary as JSON (also the `new_block` event's value).
pub fn summary_json(b: &BlockSummary) -> Value {
    json!({
        "hash": b.hash.to_string(),
        "height": b.height,
        "timestamp_ms": b.timestamp_ms,
        "n_txs": b.n_txs,
        "size": b.size,
    })
}
