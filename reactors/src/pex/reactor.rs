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
//!   misbehaviour (disconnect and ban); we ask one peer at most once per
//!   `min_request_interval` (10 s), and a peer whose request comes less
//!   than half that after its previous one (the slack absorbs delivery
//!   jitter, as CometBFT's `ensurePeersPeriod / 3`) is misbehaving; the
//!   first request is free.
//! - Learning: the listen address in each peer's NodeInfo enters the book
//!   (never the socket address of an inbound connection, whose port is
//!   ephemeral); an outbound connection that succeeds promotes its address
//!   to tried (`mark_good`), inbound ones never do.
//! - The book is saved every `save_period` (2 min) and on
//!   [`PexReactor::save`].
//!
//! - Seed mode (`seed_mode`): answer each requester once, then disconnect
//!   it, and crawl the network every round (Chia's introducer).
//! - DNS seeds: looked up with hickory-resolver when we are alone, dialed at
//!   the network's default port; failures are retried with backoff.
//! - Tried collisions get a feeler connection to the incumbent.
//! - With full outbound slots, about every `extra_outbound_interval`
//!   (5 min) one extra outbound connection to a new netgroup (Bitcoin
//!   Core's extra block-relay-only peer); the switch keeps it if it
//!   relays blocks more recently than an outbound peer, which it then
//!   replaces, and closes it otherwise. A partition that filled every
//!   node's outbound slots on its own side heals through it.

use crate::service::Clock;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use plexus_p2p::netaddr::netgroup;
use plexus_p2p::switch::WeakSwitch;
use plexus_p2p::{
    ChannelDescriptor, Envelope, Misbehavior, NetAddress, NodeId, Peer, Reactor, Switch,
};
use plexus_proto::pex::{self as pb, message::Sum};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

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
    /// Shortest interval between two requests we send one peer; a peer
    /// asking us again within half of it is misbehaving. Default 10 s.
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
    /// requester once with a selection, then disconnect it; every
    /// `ensure_peers_period`, crawl: dial up to `crawl_batch` addresses from
    /// the book, ask each for addresses, disconnect it on the answer; keep
    /// no long-lived peers. Default false.
    pub seed_mode: bool,
    /// Addresses a seed crawls per round. Default 8.
    pub crawl_batch: usize,
    /// DNS seeds: host names whose A/AAAA records are dialed at
    /// `dns_seed_port` when we have no peer; the id is learned from the
    /// handshake.
    pub dns_seeds: Vec<String>,
    /// The network's default port, for DNS seed answers. Default 26656.
    pub dns_seed_port: u16,
    /// First retry delay after a DNS seed lookup fails (doubling, capped
    /// at `max_dial_backoff`). Default 5 s.
    pub dns_retry_initial: Duration,
    /// Failed dials in a row after which an address is banned in the book
    /// for `failure_ban`. Default 16.
    pub max_dial_failures: u32,
    /// How long such an address is banned. Default 1 day.
    pub failure_ban: Duration,
    /// Resolves DNS seed names (default: hickory-resolver).
    pub resolver: Arc<dyn SeedResolver>,
    /// Deadline for one DNS seed lookup. Default 10 s.
    pub dns_timeout: Duration,
    /// In seed mode, peers connected longer than this are disconnected
    /// (a seed keeps no long-lived peers). Default 30 s.
    pub seed_peer_lifetime: Duration,
    /// How long a peer that broke a PEX rule stays banned in the book.
    /// Default 1 h.
    pub misbehaviour_ban: Duration,
    /// Bytes that may wait to be sent to one peer on this channel (the
    /// MConnection's `send_queue_bytes`): answers to its requests are
    /// built only as large as what is left, so a peer that asks and never
    /// reads holds at most this. Default 256 KiB.
    pub send_queue_bytes: usize,
    /// Largest per-address redial delay (the `2^attempts` s backoff is
    /// capped here). Default 1 h.
    pub max_dial_backoff: Duration,
    /// About how often (uniformly between half and one and a half times
    /// this) a node whose outbound slots are full dials one extra
    /// outbound peer in a netgroup none of its outbound peers is in
    /// (Bitcoin Core's extra block-relay-only peer, every 5 min); the
    /// switch keeps it in place of the outbound peer that relayed a novel
    /// block least recently, or closes it
    /// ([`plexus_p2p::PeerManager::rotate_outbound`]). It is how the two
    /// sides of a healed partition, each with full outbound slots, meet
    /// again. Zero disables. Default 5 min.
    pub extra_outbound_interval: Duration,
}

/// Largest PEX message accepted, bytes: 250 addresses of at most ~80
/// bytes each fit.
pub const MAX_PEX_MSG_BYTES: usize = 64 * 1024;

impl PexConfig {
    /// The PEX channel as this reactor declares it: priority 1, 16
    /// messages and `send_queue_bytes` queued, messages up to
    /// [`MAX_PEX_MSG_BYTES`], the default 8 MiB receive window
    /// (docs/protocol.md §4.2).
    pub fn channel(&self) -> ChannelDescriptor {
        ChannelDescriptor::new(PEX_CHANNEL)
            .priority(1)
            .send_queue_capacity(16)
            .send_queue_bytes(self.send_queue_bytes)
            .recv_message_capacity(MAX_PEX_MSG_BYTES)
    }
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
            crawl_batch: 8,
            dns_seeds: Vec::new(),
            dns_seed_port: 26656,
            dns_retry_initial: Duration::from_secs(5),
            max_dial_failures: 16,
            failure_ban: Duration::from_secs(86_400),
            resolver: Arc::new(HickoryResolver),
            dns_timeout: Duration::from_secs(10),
            seed_peer_lifetime: Duration::from_secs(30),
            misbehaviour_ban: Duration::from_secs(3600),
            send_queue_bytes: 256 << 10,
            extra_outbound_interval: Duration::from_secs(300),
        }
    }
}

/// Resolves a DNS seed's name to IP addresses. Pluggable so tests and
/// simulations can answer without DNS.
pub trait SeedResolver: Send + Sync + std::fmt::Debug {
    /// The A/AAAA addresses of `host`.
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>>;
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The system resolver configuration through hickory-resolver.
#[derive(Debug, Clone, Copy)]
pub struct HickoryResolver;

impl SeedResolver for HickoryResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, String>> {
        Box::pin(
            async move { plexus_p2p::netaddr::resolve_host(host).await.map_err(|e| e.to_string()) },
        )
    }
}

#[derive(Default)]
struct State {
    /// DNS seeds: the next lookup not before, and the current retry delay.
    dns_next: Option<tokio::time::Instant>,
    dns_delay: Duration,
    /// Peers we asked and that have not answered yet.
    asked: HashSet<NodeId>,
    /// When each peer last asked us.
    last_request: HashMap<NodeId, tokio::time::Instant>,
    /// When we last asked each peer.
    last_sent: HashMap<NodeId, tokio::time::Instant>,
    /// Unix seconds of the next extra outbound dial (set at the first
    /// round with full outbound slots).
    next_extra: Option<u64>,
}

/// The PEX reactor. Register it with the switch, then call
/// [`PexReactor::start`] with the built switch.
pub struct PexReactor {
    cfg: PexConfig,
    /// Seed mode: `cfg.seed_mode`, or set by `start` for an introducer.
    seed: std::sync::atomic::AtomicBool,
    book: Arc<Mutex<AddrBook>>,
    state: Mutex<State>,
    /// The switch, once started (weak: the switch owns this reactor).
    switch: Mutex<Option<WeakSwitch>>,
    /// Which outbound peer to ask for addresses, dial jitter. Seeded
    /// from the OS by default; [`PexReactor::with_rng_seed`] makes a run
    /// repeatable (simulation).
    rng: Mutex<StdRng>,
    /// Unix ms for the book's times (attempts, successes, bans): tokio's
    /// clock from the OS time at the first reading by default;
    /// [`PexReactor::with_clock`] for a simulation.
    clock: Clock,
}

impl std::fmt::Debug for PexReactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PexReactor").field("book", &*self.book.lock()).finish()
    }
}

/// Unix ms now, following tokio's (possibly paused) clock so that
/// tests with a paused clock see book times advance with it.
fn unix_now_ms() -> u64 {
    static BASE: std::sync::OnceLock<(tokio::time::Instant, u64)> = std::sync::OnceLock::new();
    let (t0, u0) = *BASE.get_or_init(|| {
        let u = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        (tokio::time::Instant::now(), u as u64)
    });
    u0 + tokio::time::Instant::now().saturating_duration_since(t0).as_millis() as u64
}

/// `a` as a PEX wire address (§6 of docs/protocol.md); `None` for a DNS
/// host, which PEX never gossips.
pub fn to_pb(a: &NetAddress) -> Option<pb::NetAddress> {
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
        Self::with_shared_book(cfg, Arc::new(Mutex::new(book)))
    }

    /// A reactor around a book the caller shares (a simulation keeps it
    /// across a node's restart, as a node keeps `addrbook.json`).
    pub fn with_shared_book(cfg: PexConfig, book: Arc<Mutex<AddrBook>>) -> Self {
        let seed = std::sync::atomic::AtomicBool::new(cfg.seed_mode);
        PexReactor {
            cfg,
            seed,
            book,
            state: Mutex::new(State::default()),
            switch: Mutex::new(None),
            rng: Mutex::new(StdRng::from_os_rng()),
            clock: Arc::new(unix_now_ms),
        }
    }

    /// Reads the book's wall clock from `clock` (Unix ms) instead, as a
    /// simulation does for every node ([`crate::service::ChainService::with_clock`]
    /// takes the same kind of clock).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Unix seconds on the reactor's clock.
    fn unix_now(&self) -> u64 {
        (self.clock)() / 1000
    }

    /// Seeds the reactor's own RNG (which outbound peer to ask, dial
    /// jitter), as the switch builder's `rng_seed` does the
    /// switch's; the book has its own, given to [`AddrBook::new`].
    pub fn with_rng_seed(mut self, seed: u64) -> Self {
        self.rng = Mutex::new(StdRng::seed_from_u64(seed));
        self
    }

    /// Reports a PEX rule broken by `peer` to the switch (scored; every
    /// PEX kind disconnects) and bans its address in the book.
    async fn punish(&self, sw: &Switch, peer: &Peer, kind: Misbehavior, reason: String) {
        self.book.lock().ban(&peer.id(), self.unix_now() + self.cfg.misbehaviour_ban.as_secs());
        sw.report(peer, kind, reason).await;
    }

    fn is_seed(&self) -> bool {
        self.seed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The address book (shared).
    pub fn book(&self) -> Arc<Mutex<AddrBook>> {
        self.book.clone()
    }

    /// Puts the switch's reputations into the book, so they are saved with
    /// it (and restored on the next start).
    fn take_reputation(&self) {
        let sw = self.switch.lock().as_ref().and_then(WeakSwitch::upgrade);
        if let Some(sw) = sw {
            let records = sw.reputation_snapshot();
            self.book.lock().set_reputation(records);
        }
    }

    /// Saves the book, with the switch's reputations, if a path is
    /// configured.
    pub fn save(&self) {
        if let Some(path) = &self.cfg.book_path {
            self.take_reputation();
            if let Err(e) = self.book.lock().save(path) {
                tracing::warn!(error = %e, "saving the address book failed");
            }
        }
    }

    /// Serialises the book under its lock, then writes it on a blocking
    /// thread so the runtime never waits for the disk.
    fn save_in_background(&self) {
        if let Some(path) = self.cfg.book_path.clone() {
            self.take_reputation();
            let json = self.book.lock().to_json();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = AddrBook::write_json(&path, &json) {
                    tracing::warn!(error = %e, "saving the address book failed");
                }
            });
        }
    }

    /// Starts the ensure-peers and save loops for `switch`; they end when
    /// the switch stops.
    pub fn start(self: &Arc<Self>, switch: &Switch) {
        *self.switch.lock() = Some(switch.downgrade());
        if switch.node_info().node_type == plexus_p2p::NodeType::Introducer {
            self.seed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let (me, sw) = (self.clone(), switch.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.cfg.ensure_peers_period);
            let mut save = tokio::time::interval(me.cfg.save_period);
            loop {
                tokio::select! {
                    _ = tick.tick() => me.ensure_peers(&sw).await,
                    _ = save.tick() => me.save_in_background(),
                    _ = sw.stopped() => break,
                }
            }
            me.save();
        });
    }

    /// One round of the ensure-peers loop (public for tests and the node).
    ///
    /// Bootstrap order: persistent peers (the switch redials them), the
    /// book, the configured seeds (when we have no peer), then DNS seeds
    /// (when we still have none).
    pub async fn ensure_peers(&self, sw: &Switch) {
        let now = self.unix_now();
        self.book.lock().resolve_collisions(now);
        let (out, _) = sw.num_peers();
        let target =
            if self.is_seed() { self.cfg.crawl_batch } else { sw.config().peers.max_outbound };
        if out < target {
            let picks = self.pick_candidates(sw, target - out, (target - out) * 3, now, |_| true);
            if !picks.is_empty() {
                // Outcomes reach the book through add_peer (success); a
                // failure already counted as an attempt.
                let sw2 = sw.clone();
                tokio::spawn(async move {
                    sw2.dial_peers(picks, false).await;
                });
            }
        }
        if out >= target && !self.is_seed() {
            self.extra_outbound(sw, now);
        }
        self.feeler(sw, now);
        if self.is_seed() {
            for p in sw.peers() {
                if p.uptime() > self.cfg.seed_peer_lifetime {
                    sw.stop_peer_gracefully(&p).await;
                }
            }
            return;
        }
        let book_low = self.book.lock().len() < self.cfg.book_low_water;
        if book_low {
            let outbound: Vec<Peer> = sw.peers().into_iter().filter(Peer::is_outbound).collect();
            if !outbound.is_empty() {
                let p = &outbound[self.rng.lock().random_range(0..outbound.len())];
                if sw.peer(&p.id()).is_some() {
                    self.request(p).await;
                    // It may have left meanwhile; forget the question then.
                    if sw.peer(&p.id()).is_none() {
                        self.state.lock().asked.remove(&p.id());
                    }
                }
            }
        }
        if sw.peers().is_empty() {
            if !self.cfg.seeds.is_empty() {
                let sw2 = sw.clone();
                let seeds = self.cfg.seeds.clone();
                tokio::spawn(async move {
                    sw2.dial_peers(seeds, false).await;
                });
            }
            self.dns_seeds(sw).await;
        }
    }

    /// Up to `n` addresses from the book to dial now, in at most `tries`
    /// selections: not ourselves, not connected, accepted by `accept`,
    /// not inside their `2^attempts` s backoff; an address that failed
    /// `max_dial_failures` times in a row is banned instead.
    fn pick_candidates(
        &self,
        sw: &Switch,
        n: usize,
        tries: usize,
        now: u64,
        accept: impl Fn(&NetAddress) -> bool,
    ) -> Vec<NetAddress> {
        let connected: HashSet<NodeId> = sw.peers().iter().map(|p| p.id()).collect();
        let mut picks: Vec<NetAddress> = Vec::new();
        let mut book = self.book.lock();
        for _ in 0..tries {
            if picks.len() >= n {
                break;
            }
            let Some(a) = book.select(self.cfg.tried_bias, now) else { break };
            if a.id == sw.node_id()
                || connected.contains(&a.id)
                || picks.iter().any(|p| p.id == a.id)
                || !accept(&a)
            {
                continue;
            }
            let e = book.get(&a.id).expect("selected from the book");
            if e.attempts >= self.cfg.max_dial_failures {
                book.ban(&a.id, now + self.cfg.failure_ban.as_secs());
                continue;
            }
            let backoff =
                Duration::from_secs(1u64 << e.attempts.min(20)).min(self.cfg.max_dial_backoff);
            let jitter = self.rng.lock().random_range(0..=backoff.as_secs() / 4 + 1);
            if e.last_attempt != 0 && now < e.last_attempt + backoff.as_secs() + jitter {
                continue;
            }
            book.mark_attempt(&a.id, now);
            picks.push(a);
        }
        picks
    }

    /// Every `extra_outbound_interval` or so (with full outbound slots):
    /// dials one extra outbound peer from the book in a netgroup none of
    /// our outbound peers is in (Bitcoin Core's extra block-relay-only
    /// peer; up to 100 selections, as its connection loop). The switch
    /// decides later whether it stays ([`Switch::dial_extra`]).
    fn extra_outbound(&self, sw: &Switch, now: u64) {
        let interval = self.cfg.extra_outbound_interval.as_secs();
        if interval == 0 {
            return;
        }
        let next = now + interval / 2 + self.rng.lock().random_range(0..=interval);
        {
            let mut st = self.state.lock();
            match st.next_extra {
                Some(t) if now >= t => st.next_extra = Some(next),
                Some(_) => return,
                None => {
                    st.next_extra = Some(next);
                    return;
                }
            }
        }
        let groups: HashSet<Vec<u8>> = sw
            .peers()
            .iter()
            .filter(|p| p.is_outbound())
            .map(|p| netgroup(p.socket_addr().ip()))
            .collect();
        let new_group = |a: &NetAddress| match a.host {
            plexus_p2p::Host::Ip(ip) => !groups.contains(&netgroup(ip)),
            plexus_p2p::Host::Dns(_) => false,
        };
        let Some(pick) = self.pick_candidates(sw, 1, 100, now, new_group).pop() else { return };
        let sw2 = sw.clone();
        tokio::spawn(async move {
            // Its outcome reaches the book through add_peer, as any dial.
            let _ = sw2.dial_extra(&pick).await;
        });
    }

    /// Test-before-evict: a short feeler connection to the incumbent of the
    /// oldest tried collision. If it answers, `add_peer` marks it good (it
    /// keeps its slot) and the feeler is closed; if not, the failed attempt
    /// lets the newcomer take the slot at the next `resolve_collisions`.
    fn feeler(&self, sw: &Switch, now: u64) {
        let Some(incumbent) = self.book.lock().collision_to_test() else { return };
        if sw.peer(&incumbent.id).is_some() {
            self.book.lock().mark_good(&incumbent.id, now);
            return;
        }
        let (sw2, book, clock) = (sw.clone(), self.book.clone(), self.clock.clone());
        tokio::spawn(async move {
            match sw2.dial_feeler(&incumbent).await {
                // It answered: add_peer marked it good; close the feeler.
                Ok(p) => sw2.stop_peer_gracefully(&p).await,
                // Refused on our side (limits, duplicate, stopping): no verdict.
                Err(e) if e.fault() == plexus_p2p::Fault::Local => {}
                // It did not answer: the newcomer takes the slot.
                Err(_) => {
                    let now = clock() / 1000;
                    let mut b = book.lock();
                    b.mark_attempt(&incumbent.id, now);
                    b.resolve_collisions(now);
                }
            }
        });
    }

    /// Looks up the DNS seeds (at most once per retry delay, which doubles
    /// after a round that found nothing) and dials what they return. A
    /// failure is logged, never fatal.
    async fn dns_seeds(&self, sw: &Switch) {
        if self.cfg.dns_seeds.is_empty() {
            return;
        }
        let now = tokio::time::Instant::now();
        if self.state.lock().dns_next.is_some_and(|t| now < t) {
            return;
        }
        let mut found = Vec::new();
        for host in &self.cfg.dns_seeds {
            let lookup =
                tokio::time::timeout(self.cfg.dns_timeout, self.cfg.resolver.resolve(host)).await;
            match lookup.unwrap_or_else(|_| Err("timed out".into())) {
                Ok(ips) => found
                    .extend(ips.into_iter().map(|ip| SocketAddr::new(ip, self.cfg.dns_seed_port))),
                Err(e) => tracing::warn!(%host, error = %e, "DNS seed lookup failed; will retry"),
            }
        }
        {
            let mut st = self.state.lock();
            st.dns_delay = if found.is_empty() {
                (st.dns_delay * 2).clamp(self.cfg.dns_retry_initial, self.cfg.max_dial_backoff)
            } else {
                self.cfg.dns_retry_initial
            };
            st.dns_next = Some(now + st.dns_delay);
        }
        for socket in found {
            let sw2 = sw.clone();
            tokio::spawn(async move {
                let _ = sw2.dial_unknown(socket).await;
            });
        }
    }

    async fn request(&self, p: &Peer) {
        {
            let now = tokio::time::Instant::now();
            let mut st = self.state.lock();
            let recent = st
                .last_sent
                .get(&p.id())
                .is_some_and(|t| now.duration_since(*t) < self.cfg.min_request_interval);
            // Still waiting for its answer, or asked it too recently.
            if recent || !st.asked.insert(p.id()) {
                return;
            }
            st.last_sent.insert(p.id(), now);
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
        let now = self.unix_now();
        let mut book = self.book.lock();
        let _ = book.add(&addr, peer.socket_addr().ip(), now, info.node_type as u8, now);
        if let plexus_p2p::Host::Ip(ip) = addr.host {
            // Refused (port 0, not routable): the book keeps what it had.
            let _ = book.set_addr(&peer.id(), SocketAddr::new(ip, addr.port));
        }
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
        vec![self.cfg.channel()]
    }

    async fn add_peer(&self, peer: &Peer) {
        self.learn(peer);
        // As CometBFT: ask a new outbound peer at once while the book is low.
        // A seed asks every peer it crawls.
        if peer.is_outbound()
            && (self.is_seed() || self.book.lock().len() < self.cfg.book_low_water)
        {
            self.request(peer).await;
        }
    }

    async fn remove_peer(&self, peer: &Peer, _reason: &plexus_p2p::StopReason) {
        let mut st = self.state.lock();
        st.asked.remove(&peer.id());
        st.last_request.remove(&peer.id());
        st.last_sent.remove(&peer.id());
    }

    async fn receive(&self, env: Envelope<pb::Message>) {
        let peer = &env.peer;
        match env.message.sum {
            Some(Sum::PexRequest(_)) => {
                let now = tokio::time::Instant::now();
                let too_soon = {
                    let mut st = self.state.lock();
                    let last = st.last_request.insert(peer.id(), now);
                    last.is_some_and(|t| now.duration_since(t) < self.cfg.min_request_interval / 2)
                };
                if too_soon {
                    let why = "PEX requests too often".to_string();
                    self.punish(&env.switch, peer, Misbehavior::Flood, why).await;
                    return;
                }
                let private = &env.switch.config().private_peer_ids;
                let addrs = self.book.lock().get_selection(private, self.unix_now());
                let addrs =
                    addrs.iter().filter_map(to_pb).take(self.cfg.max_addrs_per_msg).collect();
                let reply = pb::Message { sum: Some(Sum::PexAddrs(pb::PexAddrs { addrs })) };
                let _ = peer.send_msg(PEX_CHANNEL, &reply).await;
                if self.is_seed() {
                    env.switch.stop_peer_gracefully(peer).await;
                }
            }
            Some(Sum::PexAddrs(list)) => {
                if !self.state.lock().asked.remove(&peer.id()) {
                    let why = "unsolicited PexAddrs".to_string();
                    self.punish(&env.switch, peer, Misbehavior::UnsolicitedMessage, why).await;
                    return;
                }
                if list.addrs.len() > self.cfg.max_addrs_per_msg {
                    let why = format!("{} addresses in one PexAddrs", list.addrs.len());
                    self.punish(&env.switch, peer, Misbehavior::BadAddresses, why).await;
                    return;
                }
                let now = self.unix_now();
                let source = peer.socket_addr().ip();
                {
                    let mut book = self.book.lock();
                    for a in list.addrs.iter().filter_map(from_pb) {
                        if a.id != env.switch.node_id() {
                            let _ = book.add(&a, source, now, 0, now);
                        }
                    }
                }
                if self.is_seed() {
                    // A crawled peer has answered: done with it.
                    env.switch.stop_peer_gracefully(peer).await;
                }
            }
            None => {
                let why = "empty PEX message".to_string();
                self.punish(&env.switch, peer, Misbehavior::MalformedMessage, why).await
            }
        }
    }
}
