//! [`PexReactor`]: peer exchange on channel 0x00 (CometBFT's
//! `p2p/pex/pex_reactor.go`) around the [`AddrBook`].
//!
//! - Every `ensure_peers_period` (30 s): if we have fewer outbound peers
//!   than the switch's `max_outbound`, dial candidates from the book, each
//!   address at most once per `2^attempts` s (plus jitter); if the book holds
//!   fewer than `book_low_water` (1000) addresses, ask one random outbound
//!   peer for more; with no peer at all, dial the seeds.
//! - Abuse rules: we only ask outbound peers; a `PexAddrs` we did not ask
//!   for, or one with more than `max_addrs_per_msg` (250) addresses, is
//!   misbehaviour (disconnect and ban); a peer asking more often than once
//!   per `min_request_interval` (10 s; the first request is free) is
//!   misbehaviour.
//! - Learning: the listen address in each peer's NodeInfo enters the book
//!   (never the socket address of an inbound connection, whose port is
//!   ephemeral); an outbound connection that succeeds promotes its address
//!   to tried (`mark_good`), inbound ones never do.
//! - The book is saved every `save_period` (2 min) and on
//!   [`PexReactor::save`].
//!
//! - Seed mode (`seed_mode`): answer each requester once, then disconnect
//!   it (Chia's introducer).
//!
//! Still to come (issue 4): the seed's 30 s crawl, DNS seeds, feeler
//! connections for tried collisions.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use plexus_p2p::{
    ChannelDescriptor, Envelope, MisbehaviorKind, NetAddress, NodeId, Peer, PeerMisbehavior,
    Reactor, Switch,
};
use plexus_proto::pex::{self as pb, message::Sum};
use rand::Rng;

use super::addrbook::{AddrBook, Good};

/// The PEX channel id.
pub const PEX_CHANNEL: u8 = 0x00;

/// PEX settings. Every field is read by the code.
#[derive(Debug, Clone)]
pub struct PexConfig {
    /// How often to check the outbound count. Default 30 s.
    pub ensure_peers_period: Duration,
    /// Ask for addresses while the book holds fewer. Default 1000.
    pub book_low_water: usize,
    /// Most addresses accepted in one `PexAddrs`. Default 250.
    pub max_addrs_per_msg: usize,
    /// Shortest interval between two requests from one peer. Default 10 s.
    pub min_request_interval: Duration,
    /// Seeds dialed when we have no peer (`id@host:port`).
    pub seeds: Vec<NetAddress>,
    /// Share of dials taken from the tried table (Bitcoin Core: 0.5).
    pub tried_bias: f64,
    /// Where the book is saved; `None` keeps it in memory.
    pub book_path: Option<PathBuf>,
    /// How often the book is saved. Default 2 min.
    pub save_period: Duration,
    /// Seed (introducer) mode, Chia's `get_peers_introducer`: answer each
    /// requester once with a selection, then disconnect it; keep no
    /// long-lived peers and dial nobody. Default false.
    pub seed_mode: bool,
    /// Largest per-address redial delay (the `2^attempts` s backoff is
    /// capped here). Default 1 h.
    pub max_dial_backoff: Duration,
}

impl Default for PexConfig {
    fn default() -> Self {
        PexConfig {
            ensure_peers_period: Duration::from_secs(30),
            book_low_water: 1000,
            max_addrs_per_msg: 250,
            min_request_interval: Duration::from_secs(10),
            seeds: Vec::new(),
            tried_bias: 0.5,
            book_path: None,
            save_period: Duration::from_secs(120),
            max_dial_backoff: Duration::from_secs(3600),
            seed_mode: false,
        }
    }
}

#[derive(Default)]
struct State {
    /// Peers we asked and that have not answered yet.
    asked: HashSet<NodeId>,
    /// When each peer last asked us.
    last_request: HashMap<NodeId, tokio::time::Instant>,
}

/// The PEX reactor. Register it with the switch, then call
/// [`PexReactor::start`] with the built switch.
pub struct PexReactor {
    cfg: PexConfig,
    book: Arc<Mutex<AddrBook>>,
    state: Mutex<State>,
}

impl std::fmt::Debug for PexReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PexReactor").field("book", &*self.book.lock()).finish()
    }
}

/// Unix seconds now, following tokio's (possibly paused) clock so that
/// tests with a paused clock see book times advance with it.
fn unix_now() -> u64 {
    static BASE: std::sync::OnceLock<(tokio::time::Instant, u64)> = std::sync::OnceLock::new();
    let (t0, u0) = *BASE.get_or_init(|| {
        let u = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        (tokio::time::Instant::now(), u)
    });
    u0 + tokio::time::Instant::now().saturating_duration_since(t0).as_secs()
}

fn to_pb(a: &NetAddress) -> Option<pb::NetAddress> {
    match a.host {
        plexus_p2p::Host::Ip(ip) => {
            Some(pb::NetAddress { id: a.id.to_string(), ip: ip.to_string(), port: a.port.into() })
        }
        plexus_p2p::Host::Dns(_) => None,
    }
}

fn from_pb(a: &pb::NetAddress) -> Option<NetAddress> {
    let id: NodeId = a.id.parse().ok()?;
    let ip: IpAddr = a.ip.parse().ok()?;
    let port = u16::try_from(a.port).ok().filter(|p| *p != 0)?;
    Some(NetAddress::new(id, SocketAddr::new(ip, port)))
}

impl PexReactor {
    /// A reactor around `book`.
    pub fn new(cfg: PexConfig, book: AddrBook) -> Self {
        PexReactor { cfg, book: Arc::new(Mutex::new(book)), state: Mutex::new(State::default()) }
    }

    /// The address book (shared).
    pub fn book(&self) -> Arc<Mutex<AddrBook>> {
        self.book.clone()
    }

    /// Saves the book if a path is configured.
    pub fn save(&self) {
        if let Some(path) = &self.cfg.book_path {
            if let Err(e) = self.book.lock().save(path) {
                tracing::warn!(error = %e, "saving the address book failed");
            }
        }
    }

    /// Starts the ensure-peers and save loops for `switch`; they end when
    /// the switch stops.
    pub fn start(self: &Arc<Self>, switch: &Switch) {
        let (me, sw) = (self.clone(), switch.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.cfg.ensure_peers_period);
            let mut save = tokio::time::interval(me.cfg.save_period);
            loop {
                tokio::select! {
                    _ = tick.tick() => me.ensure_peers(&sw).await,
                    _ = save.tick() => me.save(),
                    _ = sw.stopped() => break,
                }
            }
            me.save();
        });
    }

    /// One round of the ensure-peers loop (public for tests and the node).
    pub async fn ensure_peers(&self, sw: &Switch) {
        if self.cfg.seed_mode {
            return; // a seed only answers (crawling is still to come)
        }
        let (out, _) = sw.num_peers();
        let target = sw.config().max_outbound;
        let now = unix_now();
        if out < target {
            let connected: HashSet<NodeId> = sw.peers().iter().map(|p| p.id()).collect();
            let mut picks = Vec::new();
            {
                let mut book = self.book.lock();
                for _ in 0..(target - out) * 3 {
                    if picks.len() >= target - out {
                        break;
                    }
                    let Some(a) = book.select(self.cfg.tried_bias, now) else { break };
                    if a.id == sw.node_id()
                        || connected.contains(&a.id)
                        || picks.iter().any(|p: &NetAddress| p.id == a.id)
                    {
                        continue;
                    }
                    let e = book.get(&a.id).expect("selected from the book");
                    let backoff = Duration::from_secs(1u64 << e.attempts.min(20))
                        .min(self.cfg.max_dial_backoff);
                    let jitter = rand::rng().random_range(0..=backoff.as_secs() / 4 + 1);
                    if e.last_attempt != 0 && now < e.last_attempt + backoff.as_secs() + jitter {
                        continue;
                    }
                    book.mark_attempt(&a.id, now);
                    picks.push(a);
                }
            }
            tracing::debug!(picks = picks.len(), out, target, "ensure_peers");
            if !picks.is_empty() {
                // Outcomes reach the book through add_peer (success); a
                // failure already counted as an attempt.
                let sw2 = sw.clone();
                tokio::spawn(async move {
                    sw2.dial_peers(picks, false).await;
                });
            }
        }
        let book_low = self.book.lock().len() < self.cfg.book_low_water;
        if book_low {
            let outbound: Vec<Peer> = sw.peers().into_iter().filter(Peer::is_outbound).collect();
            if !outbound.is_empty() {
                let p = &outbound[rand::rng().random_range(0..outbound.len())];
                self.request(p).await;
            }
        }
        if sw.peers().is_empty() && !self.cfg.seeds.is_empty() {
            let sw2 = sw.clone();
            let seeds = self.cfg.seeds.clone();
            tokio::spawn(async move {
                sw2.dial_peers(seeds, false).await;
            });
        }
    }

    async fn request(&self, p: &Peer) {
        if !self.state.lock().asked.insert(p.id()) {
            return; // still waiting for its answer
        }
        let msg = pb::Message { sum: Some(Sum::PexRequest(pb::PexRequest {})) };
        if p.send_msg(PEX_CHANNEL, &msg).await.is_err() {
            self.state.lock().asked.remove(&p.id());
        }
    }

    fn learn(&self, peer: &Peer) {
        let info = peer.node_info();
        let Ok(listen) = info.listen_addr.parse::<SocketAddr>() else { return };
        // A peer listening on an unspecified address is reachable at the
        // IP it connected from, on its advertised port.
        let ip = if listen.ip().is_unspecified() { peer.socket_addr().ip() } else { listen.ip() };
        let addr = NetAddress::new(peer.id(), SocketAddr::new(ip, listen.port()));
        let now = unix_now();
        let mut book = self.book.lock();
        let _ = book.add(&addr, peer.socket_addr().ip(), now, info.node_type as u8, now);
        if peer.is_outbound() {
            if let Good::Collision { incumbent } = book.mark_good(&peer.id(), now) {
                tracing::debug!(%incumbent, "tried collision queued");
            }
            book.resolve_collisions(now);
        }
    }
}

impl Reactor for PexReactor {
    type Message = pb::Message;

    fn channels(&self) -> Vec<ChannelDescriptor> {
        // 250 addresses of at most ~80 bytes each fit in 64 KiB.
        vec![ChannelDescriptor::new(PEX_CHANNEL)
            .priority(1)
            .send_queue_capacity(16)
            .recv_message_capacity(64 * 1024)]
    }

    async fn add_peer(&self, peer: &Peer) {
        self.learn(peer);
        // As CometBFT: ask a new outbound peer at once while the book is low.
        if peer.is_outbound()
            && !self.cfg.seed_mode
            && self.book.lock().len() < self.cfg.book_low_water
        {
            self.request(peer).await;
        }
    }

    async fn remove_peer(&self, peer: &Peer, _reason: &plexus_p2p::StopReason) {
        let mut st = self.state.lock();
        st.asked.remove(&peer.id());
        st.last_request.remove(&peer.id());
    }

    async fn receive(&self, env: Envelope<pb::Message>) {
        let peer = &env.peer;
        let misbehave = |reason: String| PeerMisbehavior {
            kind: MisbehaviorKind::ProtocolError,
            score: 100,
            reason,
        };
        match env.message.sum {
            Some(Sum::PexRequest(_)) => {
                let now = tokio::time::Instant::now();
                let too_soon = {
                    let mut st = self.state.lock();
                    let last = st.last_request.insert(peer.id(), now);
                    last.is_some_and(|t| now.duration_since(t) < self.cfg.min_request_interval)
                };
                if too_soon {
                    env.switch.report(peer, misbehave("PEX requests too often".into())).await;
                    return;
                }
                let private = &env.switch.config().private_peer_ids;
                let addrs = self.book.lock().get_selection(private, unix_now());
                let addrs =
                    addrs.iter().filter_map(to_pb).take(self.cfg.max_addrs_per_msg).collect();
                let reply = pb::Message { sum: Some(Sum::PexAddrs(pb::PexAddrs { addrs })) };
                let _ = peer.send_msg(PEX_CHANNEL, &reply).await;
                if self.cfg.seed_mode {
                    env.switch.stop_peer_gracefully(peer).await;
                }
            }
            Some(Sum::PexAddrs(list)) => {
                if !self.state.lock().asked.remove(&peer.id()) {
                    env.switch.report(peer, misbehave("unsolicited PexAddrs".into())).await;
                    return;
                }
                if list.addrs.len() > self.cfg.max_addrs_per_msg {
                    let why = format!("{} addresses in one PexAddrs", list.addrs.len());
                    env.switch.report(peer, misbehave(why)).await;
                    return;
                }
                let now = unix_now();
                let source = peer.socket_addr().ip();
                let mut book = self.book.lock();
                for a in list.addrs.iter().filter_map(from_pb) {
                    if a.id != env.switch.node_id() {
                        let _ = book.add(&a, source, now, 0, now);
                    }
                }
            }
            None => env.switch.report(peer, misbehave("empty PEX message".into())).await,
        }
    }
}
