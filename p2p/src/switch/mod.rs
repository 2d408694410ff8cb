//! The [`Switch`]: accepts and dials peers over a [`Transport`], runs the
//! upgrade ([`upgrade`]), keeps the [`PeerSet`], and routes each channel's
//! messages to the [`Reactor`] that owns it ([`routing`]; CometBFT's
//! `p2p/switch.go`). Policy is not here: the sans-IO [`PeerManager`]
//! decides admission, reputation, bans, eviction and redials, and the
//! switch carries its decisions out.
//!
//! An inbound connection meets, in order: the manager's pre-handshake
//! checks (IP cool-off, attempt rate, pending handshakes, per-IP limit),
//! the application filter by address, the upgrade checks, then
//! [`PeerManager::admit`] under the manager's lock (ban, duplicate and the
//! simultaneous-dial choice, per-IP and per-netgroup limits, the inbound
//! limit with eviction). An outbound dial meets [`PeerManager::check_dial`]
//! before the transport dial, and the same upgrade and admission after.
//!
//! Layout: [`config`] (settings), [`peer`] (Peer, PeerSet), [`upgrade`]
//! (handshake, NodeInfo, checks), [`reject`] ([`RejectReason`]), [`manager`]
//! ([`PeerManager`]) with [`reputation`] and [`eviction`], [`routing`]
//! (channel tasks to reactors), [`reactor`] (the [`Reactor`] API),
//! [`metrics`], [`rpc`] (request/response over a channel).

pub mod config;
pub mod eviction;
pub mod manager;
mod metrics;
pub mod peer;
mod reactor;
pub mod reject;
pub mod reputation;
mod routing;
pub mod rpc;
pub mod upgrade;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

pub use config::{PeerManagerConfig, SwitchConfig};
pub use manager::{
    Admission, ConnId, ConnKind, PeerManager, PeerStanding, PendingTicket, Rotation,
};
pub use metrics::SwitchMetrics;
use metrics::{DirLabel, ReasonLabel};
pub use peer::{Direction, Peer, PeerSet};
use reactor::{BoxFuture, DynReactor};
pub use reactor::{Envelope, Reactor};
pub use reject::RejectReason;
pub use reputation::{ReputationRecord, Verdict};
use upgrade::Upgrade;

use crate::fault::{Fault, Misbehavior};
use crate::key::{NodeId, NodeKey};
use crate::mconn::{ChannelDescriptor, MConnError};
use crate::netaddr::NetAddress;
use crate::node_info::NodeInfo;
use crate::transport::{Listener, Transport};

/// Why a peer was disconnected.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StopReason {
    /// The connection failed or the peer broke the wire protocol (a wire
    /// violation is also scored, see [`MConnError::misbehavior`]).
    #[error("connection: {0}")]
    Connection(MConnError),
    /// A reactor or the application stopped it for an error.
    #[error("error: {0}")]
    Error(String),
    /// A misbehaviour that disconnects, or one that tipped the score over
    /// the threshold (then `ban` says for how long).
    #[error("misbehaviour ({kind}): {reason}{}", ban.map(|d| format!("; banned for {d:?}")).unwrap_or_default())]
    Misbehavior {
        /// What it did.
        kind: Misbehavior,
        /// What happened, for the log.
        reason: String,
        /// The ban this earned, if any.
        ban: Option<Duration>,
    },
    /// Evicted to make room for a new inbound peer.
    #[error("evicted for a new inbound peer")]
    Evicted,
    /// The heaviest peer while the node-wide memory budget was nearly used
    /// up.
    #[error("dropped: heaviest peer over the memory budget ({0} bytes queued)")]
    OverBudget(usize),
    /// Nothing but pings and pongs for `idle_timeout`.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// An outbound peer replaced by an extra outbound one that relayed a
    /// novel block more recently, or an extra one that did not
    /// ([`PeerManager::rotate_outbound`]).
    #[error("rotated out: another outbound peer relayed blocks more recently")]
    Rotated,
    /// Stopped gracefully (by us or by the switch stopping).
    #[error("stopped")]
    Graceful,
}

impl StopReason {
    /// Whose fault the disconnect is.
    pub fn fault(&self) -> Fault {
        match self {
            StopReason::Connection(e) => e.fault(),
            StopReason::Misbehavior { .. } => Fault::Peer,
            StopReason::Idle(_) => Fault::Io,
            StopReason::Error(_)
            | StopReason::Evicted
            | StopReason::OverBudget(_)
            | StopReason::Rotated
            | StopReason::Graceful => Fault::Local,
        }
    }
}

/// What happened to the switch's peers, for subscribers
/// ([`Switch::subscribe`]): the node's RPC, dashboards and tests.
#[derive(Debug, Clone)]
pub enum SwitchEvent {
    /// A peer passed every check and reactors know it.
    PeerAdded {
        /// The peer.
        id: NodeId,
        /// Who dialed.
        direction: Direction,
    },
    /// A peer left; reactors have seen `remove_peer`.
    PeerRemoved {
        /// The peer.
        id: NodeId,
        /// Why.
        reason: StopReason,
    },
    /// A connection was refused.
    Rejected {
        /// Who dialed.
        direction: Direction,
        /// [`RejectReason::label`].
        reason: &'static str,
    },
    /// A peer was scored for misbehaviour.
    Misbehaved {
        /// The peer.
        id: NodeId,
        /// What it did.
        kind: Misbehavior,
        /// The manager's verdict (score, disconnect, ban).
        verdict: Verdict,
    },
}

type AddrFilter = Arc<dyn Fn(SocketAddr) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;
type IdFilter = Arc<dyn Fn(NodeInfo) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}
type BoxStream = Box<dyn AsyncStream>;

trait DynTransport: Send + Sync {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxStream>>;
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn DynListener>>>;
}
trait DynListener: Send {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>>;
    fn local_addr(&self) -> SocketAddr;
}
impl<T: Transport> DynTransport for T {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxStream>> {
        Box::pin(async move { Ok(Box::new(Transport::dial(self, addr).await?) as BoxStream) })
    }
    fn listen(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<Box<dyn DynListener>>> {
        Box::pin(async move {
            Ok(Box::new(Transport::listen(self, addr).await?) as Box<dyn DynListener>)
        })
    }
}
impl<L: Listener> DynListener for L {
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, SocketAddr)>> {
        Box::pin(async move {
            let (s, a) = Listener::accept(self).await?;
            Ok((Box::new(s) as BoxStream, a))
        })
    }
    fn local_addr(&self) -> SocketAddr {
        Listener::local_addr(self)
    }
}

/// Counters the switch keeps (exported as metrics by the node).
#[derive(Debug, Default, Clone)]
pub struct SwitchCounters {
    /// Rejected connections by [`RejectReason::label`].
    pub rejected: HashMap<&'static str, u64>,
    /// Bans imposed.
    pub bans: u64,
    /// Inbound peers evicted.
    pub evictions: u64,
}

struct Inner {
    key: NodeKey,
    info: parking_lot::RwLock<NodeInfo>,
    config: SwitchConfig,
    transport: Box<dyn DynTransport>,
    reactors: Vec<Arc<dyn DynReactor>>,
    /// channel id -> reactor index
    routes: HashMap<u8, usize>,
    channels: Vec<ChannelDescriptor>,
    /// The node-wide memory budget for peers' send queues.
    budget: crate::mconn::SharedBudget,
    /// Policy. Lock order: `manager` before `peers`.
    manager: Mutex<PeerManager>,
    peers: Mutex<PeerSet>,
    dialing: Mutex<HashSet<NodeId>>,
    persistent: Mutex<HashMap<NodeId, NetAddress>>,
    last_stop: Mutex<HashMap<NodeId, StopReason>>,
    counters: Mutex<SwitchCounters>,
    addr_filter: Option<AddrFilter>,
    id_filter: Option<IdFilter>,
    listen: Mutex<Option<SocketAddr>>,
    cancel: CancellationToken,
    metrics: SwitchMetrics,
    events: tokio::sync::broadcast::Sender<SwitchEvent>,
    started: std::sync::atomic::AtomicBool,
    persistent_running: Mutex<HashSet<NodeId>>,
    /// Cancels a pending inbound handshake the manager displaced, by
    /// ticket id.
    pending_cancel: Mutex<HashMap<u64, CancellationToken>>,
    /// Woken whenever a peer leaves the set.
    peer_left: tokio::sync::Notify,
}

/// The switch. Cheap to clone; every clone is the same switch.
#[derive(Clone)]
pub struct Switch(Arc<Inner>);

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch").field("id", &self.0.key.node_id()).finish()
    }
}

/// A handle to a switch that does not keep it alive: for a reactor the
/// switch owns that needs the switch later (an `Arc` cycle otherwise).
#[derive(Clone)]
pub struct WeakSwitch(std::sync::Weak<Inner>);

impl WeakSwitch {
    /// The switch, if it still exists.
    pub fn upgrade(&self) -> Option<Switch> {
        self.0.upgrade().map(Switch)
    }
}

impl std::fmt::Debug for WeakSwitch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakSwitch")
    }
}

/// Why a switch could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwitchBuildError {
    /// Two reactors claim the same channel id.
    #[error("channel {0:#04x} is claimed by two reactors")]
    ChannelClash(u8),
    /// A channel descriptor or the config is invalid.
    #[error("{0}")]
    Config(String),
}

impl SwitchBuildError {
    /// Always ours: the application's reactors or config.
    pub fn fault(&self) -> Fault {
        Fault::Local
    }
}

/// Builds a [`Switch`]: key, NodeInfo template, config, transport,
/// reactors, optional filters, saved reputations and the RNG seed.
pub struct SwitchBuilder {
    key: NodeKey,
    info: NodeInfo,
    config: SwitchConfig,
    transport: Box<dyn DynTransport>,
    reactors: Vec<Arc<dyn DynReactor>>,
    addr_filter: Option<AddrFilter>,
    id_filter: Option<IdFilter>,
    reputation: Vec<ReputationRecord>,
    seed: Option<u64>,
}

impl SwitchBuilder {
    /// Adds a reactor.
    pub fn reactor<R: Reactor>(mut self, r: R) -> Self {
        self.reactors.push(Arc::new(r));
        self
    }

    /// Adds a shared reactor (the application keeps a handle to it).
    pub fn shared_reactor<R: Reactor>(mut self, r: Arc<R>) -> Self {
        self.reactors.push(r);
        self
    }

    /// Refuses connections from or to addresses for which `f` fails, before
    /// the handshake (bounded by `filter_timeout`).
    pub fn filter_addr<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.addr_filter = Some(Arc::new(move |a| Box::pin(f(a))));
        self
    }

    /// Refuses peers whose NodeInfo `f` rejects, after the handshake
    /// (bounded by `filter_timeout`).
    pub fn filter_peer<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(NodeInfo) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.id_filter = Some(Arc::new(move |i| Box::pin(f(i))));
        self
    }

    /// Starts with these saved reputations ([`Switch::reputation_snapshot`]
    /// of an earlier run; the node keeps them in the address book file).
    pub fn reputation(mut self, records: Vec<ReputationRecord>) -> Self {
        self.reputation = records;
        self
    }

    /// Seeds the peer manager's RNG (netgroup key, redial jitter); by
    /// default a random seed.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Builds the switch. The NodeInfo's `node_id` and `channels` are set
    /// from the key and the reactors.
    ///
    /// # Errors
    /// [`SwitchBuildError::ChannelClash`] if two reactors share a channel
    /// id; [`SwitchBuildError::Config`] for an invalid descriptor or config.
    pub fn build(mut self) -> Result<Switch, SwitchBuildError> {
        let mut routes = HashMap::new();
        let mut channels = Vec::new();
        for (i, r) in self.reactors.iter().enumerate() {
            for d in r.channels() {
                if routes.insert(d.id, i).is_some() {
                    return Err(SwitchBuildError::ChannelClash(d.id));
                }
                d.validate().map_err(|e| SwitchBuildError::Config(e.to_string()))?;
                channels.push(d);
            }
        }
        self.config.mconn.validate().map_err(|e| SwitchBuildError::Config(e.to_string()))?;
        self.config.validate().map_err(SwitchBuildError::Config)?;
        self.info.node_id = self.key.node_id();
        self.info.channels = channels.iter().map(|d| d.id).collect();
        if self.info.listen_addr.is_empty() {
            let addr =
                self.config.listen_addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            self.info.listen_addr = addr.to_string();
        }
        self.info.validate().map_err(|e| SwitchBuildError::Config(e.to_string()))?;
        let persistent: HashMap<NodeId, NetAddress> =
            self.config.persistent_peers.iter().map(|a| (a.id, a.clone())).collect();
        let seed = self.seed.unwrap_or_else(rand::random);
        let mut manager = PeerManager::new(self.config.peers.clone(), self.key.node_id(), seed);
        for id in persistent.keys() {
            manager.add_persistent(*id);
        }
        manager.restore(std_now(), unix_now(), &self.reputation);
        let budget = crate::mconn::SharedBudget::new(self.config.max_peer_memory_bytes);
        Ok(Switch(Arc::new(Inner {
            key: self.key,
            info: parking_lot::RwLock::new(self.info),
            config: self.config,
            transport: self.transport,
            reactors: self.reactors,
            routes,
            channels,
            budget,
            manager: Mutex::new(manager),
            peers: Mutex::new(PeerSet::default()),
            dialing: Mutex::new(HashSet::new()),
            persistent: Mutex::new(persistent),
            last_stop: Mutex::new(HashMap::new()),
            counters: Mutex::new(SwitchCounters::default()),
            addr_filter: self.addr_filter,
            id_filter: self.id_filter,
            listen: Mutex::new(None),
            cancel: CancellationToken::new(),
            metrics: SwitchMetrics::default(),
            events: tokio::sync::broadcast::channel(1024).0,
            peer_left: tokio::sync::Notify::new(),
            started: std::sync::atomic::AtomicBool::new(false),
            persistent_running: Mutex::new(HashSet::new()),
            pending_cancel: Mutex::new(HashMap::new()),
        })))
    }
}

fn now_ms(since: Instant) -> u64 {
    tokio::time::Instant::now().into_std().saturating_duration_since(since).as_millis() as u64
}

/// The switch's clock: tokio's, so a paused test clock drives the peer
/// manager too.
fn std_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Unix time in seconds (saved reputations are in wall-clock terms).
fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Gives a pending inbound handshake back to the manager when dropped
/// (whatever way the accept task ends), with the failure's fault.
struct PendingHandshake {
    sw: Switch,
    id: u64,
    failure: Option<Fault>,
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        self.sw.0.pending_cancel.lock().remove(&self.id);
        self.sw.0.manager.lock().handshake_finished(std_now(), self.id, self.failure);
    }
}

impl Switch {
    /// A builder. `info` is the template of our NodeInfo (network,
    /// versions, moniker, node type, listen address, capabilities).
    pub fn builder<T: Transport>(
        key: NodeKey,
        info: NodeInfo,
        config: SwitchConfig,
        transport: T,
    ) -> SwitchBuilder {
        SwitchBuilder {
            key,
            info,
            config,
            transport: Box::new(transport),
            reactors: Vec::new(),
            addr_filter: None,
            id_filter: None,
            reputation: Vec::new(),
            seed: None,
        }
    }

    /// A handle that does not keep the switch alive.
    pub fn downgrade(&self) -> WeakSwitch {
        WeakSwitch(Arc::downgrade(&self.0))
    }

    /// Our id.
    pub fn node_id(&self) -> NodeId {
        self.0.key.node_id()
    }

    /// Our NodeInfo (its `listen_addr` is the bound address once started).
    pub fn node_info(&self) -> NodeInfo {
        self.0.info.read().clone()
    }

    /// The config in force.
    pub fn config(&self) -> &SwitchConfig {
        &self.0.config
    }

    /// The bound listen address, once started.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        *self.0.listen.lock()
    }

    /// Our address as peers dial it (`id@listen_addr`), once started.
    pub fn net_address(&self) -> Option<NetAddress> {
        self.listen_addr().map(|a| NetAddress::new(self.node_id(), a))
    }

    /// Starts listening (if configured), dialing the persistent peers, and
    /// the maintenance loop (pings to the manager, idle peers).
    ///
    /// # Errors
    /// The listener could not bind.
    pub async fn start(&self) -> io::Result<()> {
        if self.0.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(addr) = self.0.config.listen_addr {
            let listener = match self.0.transport.listen(addr).await {
                Ok(l) => l,
                Err(e) => {
                    // Not started: a later call may try again.
                    self.0.started.store(false, Ordering::SeqCst);
                    return Err(e);
                }
            };
            let bound = listener.local_addr();
            *self.0.listen.lock() = Some(bound);
            {
                // Advertise the port actually bound (the config may say 0).
                let mut info = self.0.info.write();
                if info.listen_addr == addr.to_string() {
                    info.listen_addr = bound.to_string();
                }
            }
            let sw = self.clone();
            tokio::spawn(async move { sw.accept_loop(listener).await });
        }
        let persistent: Vec<NetAddress> = self.0.persistent.lock().values().cloned().collect();
        for a in persistent {
            self.spawn_persistent(a);
        }
        let sw = self.clone();
        tokio::spawn(async move { sw.maintenance_loop().await });
        let sw = self.clone();
        tokio::spawn(async move { sw.budget_loop().await });
        Ok(())
    }

    /// Stops every peer gracefully and stops accepting and dialing.
    pub async fn stop(&self) {
        self.0.cancel.cancel();
        let peers: Vec<Peer> = self.peers();
        for p in peers {
            self.stop_peer(&p, StopReason::Graceful).await;
        }
    }

    /// Whether [`Switch::stop`] has been called.
    pub fn is_stopped(&self) -> bool {
        self.0.cancel.is_cancelled()
    }

    /// Resolves once [`Switch::stop`] has been called.
    pub async fn stopped(&self) {
        self.0.cancel.cancelled().await
    }

    /// The connected peers.
    pub fn peers(&self) -> Vec<Peer> {
        self.0.peers.lock().iter().cloned().collect()
    }

    /// The peer with this id.
    pub fn peer(&self, id: &NodeId) -> Option<Peer> {
        self.0.peers.lock().get(id).cloned()
    }

    /// Number of peers by direction: (outbound, inbound).
    pub fn num_peers(&self) -> (usize, usize) {
        let set = self.0.peers.lock();
        (set.count(Direction::Outbound), set.count(Direction::Inbound))
    }

    /// Why the peer with this id was last disconnected.
    pub fn last_stop_reason(&self, id: &NodeId) -> Option<StopReason> {
        self.0.last_stop.lock().get(id).cloned()
    }

    /// Events about peers from now on (a bounded broadcast of 1024; a
    /// subscriber that falls behind skips the oldest).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<SwitchEvent> {
        self.0.events.subscribe()
    }

    fn emit(&self, e: SwitchEvent) {
        let _ = self.0.events.send(e);
    }

    /// The switch's Prometheus metrics; register them with
    /// [`SwitchMetrics::register`].
    pub fn metrics(&self) -> &SwitchMetrics {
        &self.0.metrics
    }

    /// Rejection, ban and eviction counters.
    pub fn counters(&self) -> SwitchCounters {
        self.0.counters.lock().clone()
    }

    /// Whether ids in `private_peer_ids` include `id` (never gossip it).
    pub fn is_private(&self, id: &NodeId) -> bool {
        self.0.config.private_peer_ids.contains(id)
    }

    /// `id`'s reputation now: its decayed score and the time left on its
    /// ban.
    pub fn standing(&self, id: &NodeId) -> PeerStanding {
        self.0.manager.lock().standing(std_now(), id)
    }

    /// Whether `id` is banned now.
    pub fn is_banned(&self, id: &NodeId) -> bool {
        self.standing(id).banned_for.is_some()
    }

    /// Every remembered reputation in saved form (for
    /// [`SwitchBuilder::reputation`] on the next start).
    pub fn reputation_snapshot(&self) -> Vec<ReputationRecord> {
        self.0.manager.lock().snapshot(std_now(), unix_now())
    }

    /// Dials `addrs` concurrently and returns each outcome. With
    /// `persistent`, addresses not yet persistent become so and are dialed
    /// (and redialed) by their own background task instead, so they are not
    /// in the returned list.
    pub async fn dial_peers(
        &self,
        addrs: Vec<NetAddress>,
        persistent: bool,
    ) -> Vec<(NetAddress, Result<Peer, RejectReason>)> {
        let mut set = tokio::task::JoinSet::new();
        for a in addrs {
            if persistent {
                let new = self.0.persistent.lock().insert(a.id, a.clone()).is_none();
                if new {
                    self.0.manager.lock().add_persistent(a.id);
                    self.spawn_persistent(a);
                    continue;
                }
            }
            let sw = self.clone();
            set.spawn(async move {
                let r = sw.dial(&a).await;
                (a, r)
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out
    }

    /// Dials one address and runs the upgrade.
    ///
    /// # Errors
    /// The [`RejectReason`].
    pub async fn dial(&self, addr: &NetAddress) -> Result<Peer, RejectReason> {
        let kind = if self.0.persistent.lock().contains_key(&addr.id) {
            ConnKind::Persistent
        } else {
            ConnKind::Outbound
        };
        self.dial_with(addr, kind).await
    }

    /// Dials a short-lived feeler connection (addrman's test-before-evict),
    /// exempt from `max_outbound`; the caller closes it.
    ///
    /// # Errors
    /// The [`RejectReason`].
    pub async fn dial_feeler(&self, addr: &NetAddress) -> Result<Peer, RejectReason> {
        self.dial_with(addr, ConnKind::Feeler).await
    }

    /// Dials an extra outbound connection ([`ConnKind::Extra`], Bitcoin
    /// Core's extra block-relay-only peer): exempt from `max_outbound`, at
    /// most `max_extra_outbound` at once; the maintenance loop keeps it in
    /// place of a staler outbound peer or closes it
    /// ([`PeerManager::rotate_outbound`]).
    ///
    /// # Errors
    /// The [`RejectReason`]; [`RejectReason::OutboundFull`] when an extra
    /// connection is already open.
    pub async fn dial_extra(&self, addr: &NetAddress) -> Result<Peer, RejectReason> {
        self.dial_with(addr, ConnKind::Extra).await
    }

    async fn dial_with(&self, addr: &NetAddress, kind: ConnKind) -> Result<Peer, RejectReason> {
        // The upgrade runs in its own task: if the caller stops waiting,
        // the connection is still either fully set up or fully dropped.
        let (sw, a) = (self.clone(), addr.clone());
        let res = self.run_dial(async move { sw.dial_inner(&a, kind).await }).await;
        if let Err(e) = &res {
            tracing::debug!(peer = %addr, reason = %e, "dial failed");
        }
        res
    }

    /// Runs a dial in its own task (a caller that stops waiting cannot
    /// leave a half-made connection) and records a refusal.
    async fn run_dial(
        &self,
        dial: impl Future<Output = Result<Peer, RejectReason>> + Send + 'static,
    ) -> Result<Peer, RejectReason> {
        let res = tokio::spawn(dial).await.unwrap_or_else(|_| Err(RejectReason::Stopped));
        if let Err(e) = &res {
            self.record_reject(Direction::Outbound, e);
            if let RejectReason::NodeInfo(crate::node_info::NodeInfoError::Refused(r)) = e {
                // The peer said why; an operator should see it.
                tracing::info!(reason = %r, "a peer refused our connection");
            }
        }
        res
    }

    async fn dial_inner(&self, addr: &NetAddress, kind: ConnKind) -> Result<Peer, RejectReason> {
        if self.0.cancel.is_cancelled() {
            return Err(RejectReason::Stopped);
        }
        self.0.manager.lock().check_dial(std_now(), Some(addr.id), kind)?;
        if !self.0.dialing.lock().insert(addr.id) {
            return Err(RejectReason::Duplicate(addr.id));
        }
        let res = async {
            // Name resolution shares the dial deadline; then each address the
            // name resolves to is tried in turn until one answers.
            let sockets = tokio::time::timeout(self.0.config.dial_timeout, addr.resolve())
                .await
                .map_err(|_| RejectReason::Resolve(format!("resolving {} timed out", addr.host)))?
                .map_err(|e| RejectReason::Resolve(e.to_string()))?;
            let mut last = RejectReason::Resolve(format!("{} resolved to no address", addr.host));
            for socket in sockets {
                let up = Upgrade { kind, expected: Some(addr.id), displaced: None };
                match self.connect_out(socket, up).await {
                    Err(e @ RejectReason::Dial(_)) => last = e,
                    other => return other,
                }
            }
            Err(last)
        }
        .await;
        self.0.dialing.lock().remove(&addr.id);
        res
    }

    /// Dials a socket address whose node id is not known yet (a DNS seed
    /// answer): the id is learned from the handshake, and all the other
    /// upgrade checks apply.
    ///
    /// # Errors
    /// The [`RejectReason`].
    pub async fn dial_unknown(&self, socket: SocketAddr) -> Result<Peer, RejectReason> {
        let sw = self.clone();
        self.run_dial(async move {
            if sw.0.cancel.is_cancelled() {
                return Err(RejectReason::Stopped);
            }
            sw.0.manager.lock().check_dial(std_now(), None, ConnKind::Outbound)?;
            let up = Upgrade { kind: ConnKind::Outbound, expected: None, displaced: None };
            sw.connect_out(socket, up).await
        })
        .await
    }

    /// Address filter, transport dial within `dial_timeout`, then the
    /// upgrade of an outbound connection.
    async fn connect_out(&self, socket: SocketAddr, up: Upgrade) -> Result<Peer, RejectReason> {
        self.run_addr_filter(socket).await?;
        let stream =
            tokio::time::timeout(self.0.config.dial_timeout, self.0.transport.dial(socket))
                .await
                .map_err(|_| RejectReason::Dial(io::ErrorKind::TimedOut.into()))?
                .map_err(RejectReason::Dial)?;
        self.upgrade(stream, socket, up).await
    }

    async fn accept_loop(&self, mut listener: Box<dyn DynListener>) {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = self.0.cancel.cancelled() => return,
            };
            let (stream, remote) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(self.0.config.accept_retry_delay).await;
                    continue;
                }
            };
            if self.0.budget.left() == 0 {
                self.record_reject(Direction::Inbound, &RejectReason::OverBudget);
                continue;
            }
            let ticket = match self.0.manager.lock().inbound_attempt(std_now(), remote.ip()) {
                Ok(t) => t,
                Err(e) => {
                    self.record_reject(Direction::Inbound, &e);
                    continue;
                }
            };
            let token = CancellationToken::new();
            {
                let mut tokens = self.0.pending_cancel.lock();
                if let Some(old) = ticket.displaced.and_then(|id| tokens.remove(&id)) {
                    old.cancel();
                }
                tokens.insert(ticket.id, token.clone());
            }
            let mut pending = PendingHandshake { sw: self.clone(), id: ticket.id, failure: None };
            let sw = self.clone();
            tokio::spawn(async move {
                if let Err(e) = sw.accept_one(stream, remote, token).await {
                    // Only a failure before authentication counts against
                    // the IP; later ones were scored against the NodeId.
                    if matches!(e, RejectReason::Handshake(_)) {
                        pending.failure = Some(e.fault());
                    }
                    sw.record_reject(Direction::Inbound, &e);
                    sw.log_inbound_refusal(remote, &e);
                }
                drop(pending);
            });
        }
    }

    /// Logs an inbound refusal: at DEBUG, but a second inbound connection
    /// under the id of a peer already connected inbound at INFO with a
    /// hint. Crossed dials of two honest nodes are one inbound and one
    /// outbound; two inbound ones under one id are two processes with one
    /// node key (a copied home), or a restart before its old connection
    /// timed out.
    fn log_inbound_refusal(&self, remote: SocketAddr, e: &RejectReason) {
        if let RejectReason::Duplicate(id) = e {
            if let Some(old) = self.peer(id).filter(|p| p.direction() == Direction::Inbound) {
                tracing::info!(
                    peer = %id, %remote, connected_from = %old.socket_addr(),
                    "refused a second connection under the id of a connected peer: another \
                     process with this node key (a copied home)? or a restart before its old \
                     connection timed out"
                );
                return;
            }
        }
        tracing::debug!(%remote, reason = %e, "inbound connection refused");
    }

    async fn accept_one(
        &self,
        stream: BoxStream,
        remote: SocketAddr,
        displaced: CancellationToken,
    ) -> Result<Peer, RejectReason> {
        self.run_addr_filter(remote).await?;
        let up = Upgrade { kind: ConnKind::Inbound, expected: None, displaced: Some(displaced) };
        self.upgrade(stream, remote, up).await
    }

    async fn run_addr_filter(&self, addr: SocketAddr) -> Result<(), RejectReason> {
        let Some(f) = &self.0.addr_filter else { return Ok(()) };
        tokio::time::timeout(self.0.config.filter_timeout, f(addr))
            .await
            .map_err(|_| RejectReason::FilterTimeout)?
            .map_err(RejectReason::Filtered)
    }

    /// Counts a refused connection (counters and the metric of its
    /// direction) and tells subscribers.
    fn record_reject(&self, direction: Direction, e: &RejectReason) {
        *self.0.counters.lock().rejected.entry(e.label()).or_default() += 1;
        let family = match direction {
            Direction::Outbound => &self.0.metrics.dial_failures,
            Direction::Inbound => &self.0.metrics.rejected,
        };
        family.get_or_create(&ReasonLabel { reason: e.label().into() }).inc();
        self.emit(SwitchEvent::Rejected { direction, reason: e.label() });
    }

    /// Asks the manager to admit `peer`, and carries out its answer: an
    /// eviction, or the replacement of the other connection of a
    /// simultaneous pair (the new one waits for the old one to leave).
    async fn admit(&self, peer: &Peer) -> Result<(), RejectReason> {
        let id = peer.id();
        loop {
            let left = self.0.peer_left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            let decision = {
                let mut manager = self.0.manager.lock();
                if self.0.cancel.is_cancelled() {
                    return Err(RejectReason::Stopped);
                }
                let d = manager.admit(std_now(), id, peer.socket_addr().ip(), peer.kind());
                let conn = match &d {
                    Admission::Accept(c) | Admission::Evict { conn: c, .. } => Some(*c),
                    _ => None,
                };
                if let Some(c) = conn {
                    let _ = peer.0.conn_id.set(c);
                    self.0.peers.lock().peers.insert(id, peer.clone());
                }
                d
            };
            match decision {
                Admission::Accept(_) => break,
                Admission::Evict { victim, .. } => {
                    if let Some(v) = self.peer(&victim) {
                        tracing::info!(peer = %victim, newcomer = %id, "evicting an inbound peer");
                        self.0.counters.lock().evictions += 1;
                        self.0.metrics.evictions.inc();
                        self.stop_peer(&v, StopReason::Evicted).await;
                    }
                    break;
                }
                Admission::Replace => {
                    if let Some(old) = self.peer(&id) {
                        let why = "replaced by the connection dialed by the lower id";
                        self.stop_peer(&old, StopReason::Error(why.into())).await;
                    }
                    left.await;
                }
                Admission::Refuse(e) => return Err(e),
            }
        }
        self.0.metrics.peers.get_or_create(&DirLabel { direction: peer.direction().into() }).inc();
        Ok(())
    }

    /// Disconnects a peer for an error (CometBFT's `StopPeerForError`).
    pub async fn stop_peer_for_error(&self, peer: &Peer, reason: impl Into<String>) {
        self.stop_peer(peer, StopReason::Error(reason.into())).await;
    }

    /// Disconnects a peer after flushing what is queued for it.
    pub async fn stop_peer_gracefully(&self, peer: &Peer) {
        self.stop_peer(peer, StopReason::Graceful).await;
    }

    async fn stop_peer(&self, peer: &Peer, reason: StopReason) {
        {
            let mut r = peer.0.stop_reason.lock();
            if r.is_none() {
                *r = Some(reason.clone());
            }
        }
        if matches!(reason, StopReason::Graceful) {
            peer.0.conn.flush_stop().await;
        } else {
            peer.0.conn.stop();
        }
    }

    /// Scores `id` for `kind` and counts the outcome; returns the verdict.
    fn score_id(&self, id: NodeId, kind: Misbehavior, reason: &str) -> Verdict {
        let verdict = self.0.manager.lock().misbehaved(std_now(), id, kind);
        self.0
            .metrics
            .misbehaviors
            .get_or_create(&ReasonLabel { reason: kind.label().into() })
            .inc();
        if let Some(ban) = verdict.ban {
            self.0.counters.lock().bans += 1;
            self.0.metrics.bans.inc();
            tracing::info!(peer = %id, %kind, ?ban, reason, "banned");
        } else {
            tracing::debug!(peer = %id, %kind, score = verdict.score, reason, "misbehaviour");
        }
        self.emit(SwitchEvent::Misbehaved { id, kind, verdict });
        verdict
    }

    /// Reports what `peer` did wrong. Its identity's score grows by the
    /// kind's weight (the table in [`crate::fault`]); the peer is
    /// disconnected if the kind disconnects or the score reached
    /// `ban_threshold`, and then banned by NodeId (never by IP) for its
    /// tier's time.
    pub async fn report(&self, peer: &Peer, kind: Misbehavior, reason: impl Into<String>) {
        let reason = reason.into();
        let verdict = self.score_id(peer.id(), kind, &reason);
        if verdict.disconnect {
            self.stop_peer(peer, StopReason::Misbehavior { kind, reason, ban: verdict.ban }).await;
        }
    }

    /// A send to `peer` failed while answering its request for `what`
    /// (blocks, headers, ...): a timeout means it does not read what it
    /// asked for ([`Misbehavior::UnreadAnswers`]: scored, dropped); a closed
    /// connection needs nothing more.
    pub async fn report_unread(&self, peer: &Peer, e: crate::mconn::SendError, what: &str) {
        // Its own queue must be what stayed full: a wait for the node-wide
        // budget (other peers' bytes) is not its doing.
        if e == crate::mconn::SendError::Timeout && peer.queued_bytes() > 0 {
            let why = format!("does not read the {what} it asked for");
            self.report(peer, Misbehavior::UnreadAnswers, why).await;
        } else {
            tracing::debug!(peer = %peer.id(), error = %e, what, "answer not sent");
        }
    }

    /// `peer` relayed a block new to us: the eviction rule protects the
    /// most recent such peers.
    pub fn note_novel_block(&self, peer: &NodeId) {
        self.0.manager.lock().novel_block(std_now(), peer);
    }

    /// `peer` relayed a transaction new to us: the eviction rule protects
    /// the most recent such peers.
    pub fn note_novel_tx(&self, peer: &NodeId) {
        self.0.manager.lock().novel_tx(std_now(), peer);
    }

    /// Bans an identity for `dur` (the application's decision), checked on
    /// accept and dial; never shortens a ban in force. A connected peer
    /// with that id is disconnected.
    pub async fn ban(&self, id: NodeId, dur: Duration) {
        self.0.manager.lock().ban(std_now(), id, dur);
        self.0.counters.lock().bans += 1;
        self.0.metrics.bans.inc();
        if let Some(p) = self.peer(&id) {
            self.stop_peer_for_error(&p, "banned").await;
        }
    }

    /// Sends `msg` on `channel` to every peer at once, each bounded by
    /// `send_timeout`; returns who got it queued.
    pub async fn broadcast(&self, channel: u8, msg: impl Into<Bytes>) -> Vec<(NodeId, bool)> {
        self.broadcast_filtered(None, channel, msg.into()).await
    }

    /// As [`Switch::broadcast`], to every peer but `except` (the one the
    /// message came from).
    pub async fn broadcast_except(
        &self,
        except: &NodeId,
        channel: u8,
        msg: impl Into<Bytes>,
    ) -> Vec<(NodeId, bool)> {
        self.broadcast_filtered(Some(*except), channel, msg.into()).await
    }

    async fn broadcast_filtered(
        &self,
        except: Option<NodeId>,
        channel: u8,
        msg: Bytes,
    ) -> Vec<(NodeId, bool)> {
        let mut set = tokio::task::JoinSet::new();
        for p in self.peers() {
            if Some(p.id()) == except {
                continue;
            }
            let msg = msg.clone();
            set.spawn(async move { (p.id(), p.send(channel, msg).await.is_ok()) });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(r) = r {
                out.push(r);
            }
        }
        out
    }

    fn spawn_persistent(&self, addr: NetAddress) {
        if !self.0.persistent_running.lock().insert(addr.id) {
            return;
        }
        let sw = self.clone();
        tokio::spawn(async move {
            loop {
                if sw.0.cancel.is_cancelled() {
                    return;
                }
                let peer = match sw.peer(&addr.id) {
                    Some(p) => Some(p),
                    None => sw.dial(&addr).await.ok(),
                };
                if let Some(p) = peer {
                    tokio::select! {
                        _ = p.0.conn.closed() => {}
                        _ = sw.0.cancel.cancelled() => return,
                    }
                    // Let the removal finish before redialing.
                    loop {
                        let left = sw.0.peer_left.notified();
                        tokio::pin!(left);
                        left.as_mut().enable();
                        if sw.peer(&addr.id).is_none() {
                            break;
                        }
                        left.await;
                    }
                }
                // The manager's backoff: doubling with jitter, capped,
                // reset when the peer is admitted.
                let delay = sw.0.manager.lock().redial_delay(&addr.id);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = sw.0.cancel.cancelled() => return,
                }
            }
        });
    }

    /// Bytes the peers' send queues hold, and the node-wide limit.
    pub fn memory_budget(&self) -> (usize, usize) {
        (self.0.budget.used(), self.0.budget.limit())
    }

    /// Whenever a send was refused for the node-wide budget, and every
    /// second: while more than 90 % of it is in use, drops the peer with
    /// the most bytes queued that is neither persistent nor unconditional.
    async fn budget_loop(&self) {
        let b = self.0.budget.clone();
        loop {
            tokio::select! {
                _ = b.exhausted() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = self.0.cancel.cancelled() => return,
            }
            let high = b.limit() / 10 * 9;
            // What each peer makes us hold: its queues, the batch being
            // written, and the reservations of answers built for it.
            let weight = |p: &Peer| p.queued_bytes() + p.held_bytes();
            let mut candidates: Vec<(usize, Peer)> = {
                let manager = self.0.manager.lock();
                self.peers()
                    .into_iter()
                    .filter(|p| !manager.is_protected(&p.id()))
                    .map(|p| (weight(&p), p))
                    .filter(|(q, _)| *q > 0)
                    .collect()
            };
            let mut queued: usize = self.peers().iter().map(weight).sum();
            candidates.sort_by_key(|(q, p)| std::cmp::Reverse((*q, p.id())));
            for (q, p) in candidates {
                if queued <= high {
                    break;
                }
                tracing::info!(peer = %p.id(), queued = q, "dropping the heaviest peer: memory budget");
                queued -= q;
                self.stop_peer(&p, StopReason::OverBudget(q)).await;
            }
        }
    }

    /// Every `maintenance_interval` (and at least four times per
    /// `idle_timeout`): samples the bytes queued for all peers, feeds each
    /// peer's lowest round trip to the manager, lets it forget spent state
    /// and rotate the extra outbound peer, disconnects idle peers.
    async fn maintenance_loop(&self) {
        let idle = self.0.config.idle_timeout;
        let mut period = self.0.config.maintenance_interval;
        if !idle.is_zero() {
            period = period.min((idle / 4).max(Duration::from_millis(100)));
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.0.cancel.cancelled() => return,
            }
            let peers = self.peers();
            let queued: usize = peers.iter().map(Peer::queued_bytes).sum();
            self.0.metrics.send_queue_bytes.set(queued as i64);
            let rotation = {
                let mut manager = self.0.manager.lock();
                for p in &peers {
                    if let Some(rtt) = p.stats().min_rtt {
                        manager.ping(&p.id(), rtt);
                    }
                }
                manager.tick(std_now());
                manager.rotate_outbound(std_now())
            };
            if let Some(p) = rotation.and_then(|r| r.leaving()).and_then(|id| self.peer(&id)) {
                tracing::info!(peer = %p.id(), "rotating out an outbound peer");
                self.stop_peer(&p, StopReason::Rotated).await;
            }
            if idle.is_zero() {
                continue;
            }
            for p in peers {
                let last = Duration::from_millis(p.0.last_msg_ms.load(Ordering::Relaxed));
                let since = Duration::from_millis(now_ms(p.0.connected_at)).saturating_sub(last);
                if since >= idle {
                    self.stop_peer(&p, StopReason::Idle(idle)).await;
                }
            }
        }
    }
}
