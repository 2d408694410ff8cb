//! The [`Switch`]: accepts and dials peers over a [`Transport`], runs the
//! upgrade checks, keeps the [`PeerSet`], and routes each channel's
//! messages to the [`Reactor`] that owns it (CometBFT's `p2p/switch.go`).
//!
//! Upgrade checks, in order, each a typed [`RejectReason`]:
//! 1. a ban on the remote IP (and, when dialing, on the id);
//! 2. duplicate: already connected to the dialed id;
//! 3. too many inbound connections from one IP (`max_inbound_per_ip`,
//!    loopback exempt when `per_ip_exempt_loopback`);
//! 4. the application filter by address (with `filter_timeout`);
//! 5. the secret handshake, whose deadline `handshake_timeout` also covers
//!    the NodeInfo exchange;
//! 6. the dialed id matches the authenticated id;
//! 7. the peer's NodeInfo is valid;
//! 8. the NodeInfo id equals the authenticated id;
//! 9. not ourselves;
//! 10. compatible: same network and block protocol, a shared channel;
//!
//! then, now that the id is known: a ban on the id, the application filter
//! by id, and, under the peer-set lock, the switch not stopping, duplicate
//! by id (a simultaneous pair of connections keeps the one dialed by the
//! lower id), the per-IP limit again, and the inbound or outbound limit
//! (unconditional peers exempt).

mod metrics;
mod reactor;
pub mod rpc;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use metrics::SwitchMetrics;
use metrics::{ChannelLabel, DirLabel, ReasonLabel};
use reactor::{BoxFuture, DynReactor};
pub use reactor::{Envelope, Reactor};

use crate::key::{NodeId, NodeKey};
use crate::mconn::{
    ChannelDescriptor, ConnectionStats, MConnConfig, MConnError, MConnection, SendError,
};
use crate::netaddr::NetAddress;
use crate::node_info::{self, NodeInfo, NodeInfoError};
use crate::secret::{SecretConfig, SecretConnection, SecretError};
use crate::transport::{Listener, Transport};

/// Switch settings. Every field is read by the code.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    /// Where to listen; `None` for a dial-only switch.
    pub listen_addr: Option<SocketAddr>,
    /// Deadline for a transport dial. Default 3 s.
    pub dial_timeout: Duration,
    /// Deadline for the secret handshake plus the NodeInfo exchange.
    /// Default 10 s.
    pub handshake_timeout: Duration,
    /// Deadline for each call of the application filters. Default 5 s.
    pub filter_timeout: Duration,
    /// Most inbound peers (unconditional peers exempt). Default 40.
    pub max_inbound: usize,
    /// Most outbound peers (unconditional and persistent peers exempt).
    /// Default 8.
    pub max_outbound: usize,
    /// Most inbound connections from one IP (0 = no limit). Default 1.
    pub max_inbound_per_ip: usize,
    /// Whether loopback addresses are exempt from `max_inbound_per_ip`
    /// (devnets on one machine). Default true.
    pub per_ip_exempt_loopback: bool,
    /// A peer that sends nothing but pings and pongs for this long is
    /// disconnected (Chia's rule); zero disables. Default 30 min.
    pub idle_timeout: Duration,
    /// Peers to keep connected: redialed with backoff, forever.
    pub persistent_peers: Vec<NetAddress>,
    /// Peers exempt from the inbound and outbound limits.
    pub unconditional_peer_ids: Vec<NodeId>,
    /// Peers never gossiped to others (PEX reads this).
    pub private_peer_ids: Vec<NodeId>,
    /// First redial delay of a persistent peer. Default 1 s.
    pub redial_initial: Duration,
    /// Largest redial delay of a persistent peer. Default 10 min.
    pub redial_max: Duration,
    /// Misbehaviour score at which a peer is disconnected and banned.
    /// Default 100.
    pub ban_threshold: u32,
    /// Ban for protocol errors (bad packets, undecodable messages).
    /// Default 10 s (Chia).
    pub ban_protocol_error: Duration,
    /// Ban for invalid data (bad blocks or transactions). Default 60 s.
    pub ban_invalid_data: Duration,
    /// Ban for consensus errors (lying about the chain). Default 600 s
    /// (Chia).
    pub ban_consensus_error: Duration,
    /// Grace period for reactors to finish the messages of a peer that
    /// disconnected; a `receive` still running after it is aborted so the
    /// peer can leave. Default 5 s.
    pub remove_grace: Duration,
    /// Most inbound connections in the handshake at once; more are dropped
    /// unanswered. Default 64.
    pub max_pending_handshakes: usize,
    /// Pause after a failed accept (e.g. out of file descriptors) before
    /// accepting again. Default 100 ms.
    pub accept_retry_delay: Duration,
    /// Channel settings.
    pub mconn: MConnConfig,
    /// Handshake settings (its timeout is replaced by `handshake_timeout`).
    pub secret: SecretConfig,
}

impl Default for SwitchConfig {
    fn default() -> Self {
        SwitchConfig {
            listen_addr: None,
            dial_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            filter_timeout: Duration::from_secs(5),
            max_inbound: 40,
            max_outbound: 8,
            max_inbound_per_ip: 1,
            per_ip_exempt_loopback: true,
            idle_timeout: Duration::from_secs(30 * 60),
            persistent_peers: Vec::new(),
            unconditional_peer_ids: Vec::new(),
            private_peer_ids: Vec::new(),
            redial_initial: Duration::from_secs(1),
            redial_max: Duration::from_secs(600),
            ban_threshold: 100,
            ban_protocol_error: Duration::from_secs(10),
            ban_invalid_data: Duration::from_secs(60),
            ban_consensus_error: Duration::from_secs(600),
            remove_grace: Duration::from_secs(5),
            max_pending_handshakes: 64,
            accept_retry_delay: Duration::from_millis(100),
            mconn: MConnConfig::default(),
            secret: SecretConfig::default(),
        }
    }
}

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We dialed.
    Outbound,
    /// They dialed.
    Inbound,
}

/// Why a connection was refused during the upgrade. Seen by the dialer
/// and in the log, and counted.
#[derive(Debug, thiserror::Error)]
pub enum RejectReason {
    /// The transport could not connect (or timed out).
    #[error("dial failed: {0}")]
    Dial(io::Error),
    /// The address did not resolve.
    #[error("{0}")]
    Resolve(String),
    /// The id or IP is banned until the given time.
    #[error("banned ({0})")]
    Banned(String),
    /// Already connected to this id.
    #[error("duplicate connection to {0}")]
    Duplicate(NodeId),
    /// Too many inbound connections from this IP.
    #[error("too many connections from {0}")]
    TooManyFromIp(IpAddr),
    /// The application filter refused the address or id.
    #[error("filtered: {0}")]
    Filtered(String),
    /// The application filter did not answer within `filter_timeout`.
    #[error("filter timed out")]
    FilterTimeout,
    /// The secret handshake failed (including a dialed id mismatch,
    /// [`SecretError::WrongPeer`]).
    #[error("secret handshake: {0}")]
    Handshake(SecretError),
    /// The NodeInfo exchange failed or the NodeInfo is invalid.
    #[error("node info: {0}")]
    NodeInfo(NodeInfoError),
    /// The NodeInfo names another id than the handshake proved.
    #[error("node info id {claimed} differs from authenticated id {actual}")]
    NodeInfoIdMismatch {
        /// Id in the NodeInfo.
        claimed: NodeId,
        /// Id proved by the handshake.
        actual: NodeId,
    },
    /// We connected to ourselves.
    #[error("connected to ourselves")]
    SelfConnection,
    /// Another network, block protocol, or no shared channel.
    #[error("incompatible: {0}")]
    Incompatible(String),
    /// `max_inbound` reached.
    #[error("inbound peer limit reached")]
    InboundFull,
    /// `max_outbound` reached.
    #[error("outbound peer limit reached")]
    OutboundFull,
    /// `max_pending_handshakes` inbound handshakes already running.
    #[error("too many handshakes in progress")]
    TooManyHandshakes,
    /// The switch is stopping.
    #[error("switch stopped")]
    Stopped,
}

impl RejectReason {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RejectReason::Dial(_) => "dial",
            RejectReason::Resolve(_) => "resolve",
            RejectReason::Banned(_) => "banned",
            RejectReason::Duplicate(_) => "duplicate",
            RejectReason::TooManyFromIp(_) => "too_many_from_ip",
            RejectReason::Filtered(_) => "filtered",
            RejectReason::FilterTimeout => "filter_timeout",
            RejectReason::Handshake(_) => "handshake",
            RejectReason::NodeInfo(_) => "node_info",
            RejectReason::NodeInfoIdMismatch { .. } => "node_info_id",
            RejectReason::SelfConnection => "self",
            RejectReason::Incompatible(_) => "incompatible",
            RejectReason::InboundFull => "inbound_full",
            RejectReason::OutboundFull => "outbound_full",
            RejectReason::TooManyHandshakes => "too_many_handshakes",
            RejectReason::Stopped => "stopped",
        }
    }
}

/// Why a peer was disconnected.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StopReason {
    /// The connection failed or the peer broke the wire protocol.
    #[error("connection: {0}")]
    Connection(MConnError),
    /// A reactor or the application stopped it for an error.
    #[error("error: {0}")]
    Error(String),
    /// Misbehaviour past the threshold; banned.
    #[error("banned for misbehaviour: {0}")]
    Misbehavior(String),
    /// Nothing but pings and pongs for `idle_timeout`.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// Stopped gracefully (by us or by the switch stopping).
    #[error("stopped")]
    Graceful,
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
}

/// Kinds of misbehaviour a reactor reports, each with its ban time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MisbehaviorKind {
    /// Malformed or unexpected messages.
    ProtocolError,
    /// Invalid blocks, transactions or addresses.
    InvalidData,
    /// Lying about the chain (weight, tip).
    ConsensusError,
}

/// A misbehaviour report: the peer's score grows by `score`; at
/// `ban_threshold` it is disconnected and banned for its kind's time.
#[derive(Debug, Clone)]
pub struct PeerMisbehavior {
    /// What kind.
    pub kind: MisbehaviorKind,
    /// How much it counts (the threshold defaults to 100).
    pub score: u32,
    /// What happened, for the log.
    pub reason: String,
}

struct PeerInner {
    info: NodeInfo,
    direction: Direction,
    socket_addr: SocketAddr,
    persistent: bool,
    conn: MConnection,
    connected_at: Instant,
    /// Milliseconds since `connected_at` of the last message received.
    last_msg_ms: AtomicU64,
    score: AtomicU64,
    stop_reason: Mutex<Option<StopReason>>,
    metrics: SwitchMetrics,
}

/// A connected peer: its NodeInfo, direction and connection. Cheap to
/// clone.
#[derive(Clone)]
pub struct Peer(Arc<PeerInner>);

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id())
            .field("addr", &self.0.socket_addr)
            .field("direction", &self.0.direction)
            .finish()
    }
}

impl Peer {
    /// The peer's authenticated id.
    pub fn id(&self) -> NodeId {
        self.0.info.node_id
    }
    /// What the peer said about itself.
    pub fn node_info(&self) -> &NodeInfo {
        &self.0.info
    }
    /// Who dialed.
    pub fn direction(&self) -> Direction {
        self.0.direction
    }
    /// Whether we dialed.
    pub fn is_outbound(&self) -> bool {
        self.0.direction == Direction::Outbound
    }
    /// Whether the switch redials this peer.
    pub fn is_persistent(&self) -> bool {
        self.0.persistent
    }
    /// The remote socket address (for inbound peers an ephemeral port).
    pub fn socket_addr(&self) -> SocketAddr {
        self.0.socket_addr
    }
    /// How long the peer has been connected.
    pub fn uptime(&self) -> Duration {
        self.0.connected_at.elapsed()
    }
    /// Connection statistics (bytes and messages per channel, RTT).
    pub fn stats(&self) -> ConnectionStats {
        self.0.conn.stats()
    }
    /// Sends raw bytes on a channel, waiting for room up to `send_timeout`.
    ///
    /// # Errors
    /// [`SendError`].
    pub async fn send(&self, channel: u8, msg: impl Into<Bytes>) -> Result<(), SendError> {
        let msg = msg.into();
        let len = msg.len() as u64;
        self.0.conn.send(channel, msg).await?;
        self.count_sent(channel, len);
        Ok(())
    }

    fn count_sent(&self, channel: u8, len: u64) {
        let l = ChannelLabel::of(channel);
        self.0.metrics.bytes_sent.get_or_create(&l).inc_by(len);
        self.0.metrics.messages_sent.get_or_create(&l).inc();
    }
    /// Encodes and sends a protobuf message on a channel.
    ///
    /// # Errors
    /// [`SendError`].
    pub async fn send_msg<M: prost::Message>(&self, channel: u8, msg: &M) -> Result<(), SendError> {
        self.send(channel, msg.encode_to_vec()).await
    }
    /// Queues raw bytes if there is room now; `false` otherwise.
    pub fn try_send(&self, channel: u8, msg: impl Into<Bytes>) -> bool {
        let msg = msg.into();
        let len = msg.len() as u64;
        let ok = self.0.conn.try_send(channel, msg).is_ok();
        if ok {
            self.count_sent(channel, len);
        }
        ok
    }
}

/// The connected peers, by id.
#[derive(Default)]
pub struct PeerSet {
    peers: HashMap<NodeId, Peer>,
}

impl PeerSet {
    /// Number of peers.
    pub fn len(&self) -> usize {
        self.peers.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
    /// The peer with this id.
    pub fn get(&self, id: &NodeId) -> Option<&Peer> {
        self.peers.get(id)
    }
    /// Peers of a direction.
    pub fn count(&self, dir: Direction) -> usize {
        self.peers.values().filter(|p| p.direction() == dir).count()
    }
    /// Inbound peers from this IP.
    pub fn inbound_from(&self, ip: IpAddr) -> usize {
        self.peers
            .values()
            .filter(|p| p.direction() == Direction::Inbound && p.socket_addr().ip() == ip)
            .count()
    }
    /// All peers.
    pub fn iter(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }
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
    peers: Mutex<PeerSet>,
    dialing: Mutex<HashSet<NodeId>>,
    bans_id: Mutex<HashMap<NodeId, Instant>>,
    bans_ip: Mutex<HashMap<IpAddr, Instant>>,
    persistent: Mutex<HashMap<NodeId, NetAddress>>,
    last_stop: Mutex<HashMap<NodeId, StopReason>>,
    counters: Mutex<SwitchCounters>,
    addr_filter: Option<AddrFilter>,
    id_filter: Option<IdFilter>,
    listen: Mutex<Option<SocketAddr>>,
    cancel: CancellationToken,
    metrics: SwitchMetrics,
    events: tokio::sync::broadcast::Sender<SwitchEvent>,
    handshakes: Arc<tokio::sync::Semaphore>,
    started: std::sync::atomic::AtomicBool,
    persistent_running: Mutex<HashSet<NodeId>>,
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

/// Why a switch could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SwitchBuildError {
    /// Two reactors claim the same channel id.
    #[error("channel {0:#04x} is claimed by two reactors")]
    ChannelClash(u8),
    /// A channel descriptor or the MConnection config is invalid.
    #[error("{0}")]
    Config(String),
}

/// Builds a [`Switch`]: key, NodeInfo template, config, transport,
/// reactors, optional filters.
pub struct SwitchBuilder {
    key: NodeKey,
    info: NodeInfo,
    config: SwitchConfig,
    transport: Box<dyn DynTransport>,
    reactors: Vec<Arc<dyn DynReactor>>,
    addr_filter: Option<AddrFilter>,
    id_filter: Option<IdFilter>,
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
        self.info.node_id = self.key.node_id();
        self.info.channels = channels.iter().map(|d| d.id).collect();
        if self.info.listen_addr.is_empty() {
            let addr =
                self.config.listen_addr.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            self.info.listen_addr = addr.to_string();
        }
        self.info.validate().map_err(|e| SwitchBuildError::Config(e.to_string()))?;
        let persistent = self.config.persistent_peers.iter().map(|a| (a.id, a.clone())).collect();
        if self.config.redial_initial.is_zero()
            || self.config.redial_max < self.config.redial_initial
        {
            return Err(SwitchBuildError::Config(
                "redial_initial must be positive and at most redial_max".into(),
            ));
        }
        let c = &self.config;
        let year = Duration::from_secs(365 * 86_400);
        for (name, d) in [
            ("dial_timeout", c.dial_timeout),
            ("handshake_timeout", c.handshake_timeout),
            ("filter_timeout", c.filter_timeout),
            ("idle_timeout", c.idle_timeout),
            ("redial_max", c.redial_max),
            ("remove_grace", c.remove_grace),
            ("accept_retry_delay", c.accept_retry_delay),
        ] {
            if d > year {
                return Err(SwitchBuildError::Config(format!("{name} must be at most a year")));
            }
        }
        if self.config.max_pending_handshakes == 0 {
            return Err(SwitchBuildError::Config("max_pending_handshakes must be positive".into()));
        }
        Ok(Switch(Arc::new(Inner {
            handshakes: Arc::new(tokio::sync::Semaphore::new(self.config.max_pending_handshakes)),
            key: self.key,
            info: parking_lot::RwLock::new(self.info),
            config: self.config,
            transport: self.transport,
            reactors: self.reactors,
            routes,
            channels,
            peers: Mutex::new(PeerSet::default()),
            dialing: Mutex::new(HashSet::new()),
            bans_id: Mutex::new(HashMap::new()),
            bans_ip: Mutex::new(HashMap::new()),
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
        })))
    }
}

fn now_ms(since: Instant) -> u64 {
    tokio::time::Instant::now().into_std().saturating_duration_since(since).as_millis() as u64
}

/// `Err` while `key` is banned; forgets an expired ban.
fn check_ban<K: std::hash::Hash + Eq>(bans: &mut HashMap<K, Instant>, key: &K) -> Result<(), ()> {
    match bans.get(key) {
        Some(until) if *until > std_now() => Err(()),
        Some(_) => {
            bans.remove(key);
            Ok(())
        }
        None => Ok(()),
    }
}

fn std_now() -> Instant {
    tokio::time::Instant::now().into_std()
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
        }
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
    /// the idle-peer check.
    ///
    /// # Errors
    /// The listener could not bind.
    pub async fn start(&self) -> io::Result<()> {
        if self.0.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(addr) = self.0.config.listen_addr {
            let listener = self.0.transport.listen(addr).await?;
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
        if !self.0.config.idle_timeout.is_zero() {
            let sw = self.clone();
            tokio::spawn(async move { sw.idle_loop().await });
        }
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

    /// Rejection and ban counters.
    pub fn counters(&self) -> SwitchCounters {
        self.0.counters.lock().clone()
    }

    /// Whether ids in `private_peer_ids` include `id` (never gossip it).
    pub fn is_private(&self, id: &NodeId) -> bool {
        self.0.config.private_peer_ids.contains(id)
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
        // The upgrade runs in its own task: if the caller stops waiting,
        // the connection is still either fully set up or fully dropped.
        self.dial_with(addr, false).await
    }

    /// Dials a short-lived feeler connection (addrman's test-before-evict),
    /// exempt from `max_outbound`; the caller closes it.
    ///
    /// # Errors
    /// The [`RejectReason`].
    pub async fn dial_feeler(&self, addr: &NetAddress) -> Result<Peer, RejectReason> {
        self.dial_with(addr, true).await
    }

    async fn dial_with(&self, addr: &NetAddress, exempt: bool) -> Result<Peer, RejectReason> {
        let (sw, a) = (self.clone(), addr.clone());
        let res = self.run_dial(async move { sw.dial_inner(&a, exempt).await }).await;
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
        }
        res
    }

    async fn dial_inner(&self, addr: &NetAddress, exempt: bool) -> Result<Peer, RejectReason> {
        if self.0.cancel.is_cancelled() {
            return Err(RejectReason::Stopped);
        }
        self.check_ban_id(&addr.id)?;
        if self.0.peers.lock().get(&addr.id).is_some() || !self.0.dialing.lock().insert(addr.id) {
            return Err(RejectReason::Duplicate(addr.id));
        }
        let res = async {
            let persistent = self.0.persistent.lock().contains_key(&addr.id);
            let persistent_or_exempt = persistent || exempt;
            if !persistent_or_exempt
                && !self.is_unconditional(&addr.id)
                && self.num_peers().0 >= self.0.config.max_outbound
            {
                return Err(RejectReason::OutboundFull);
            }
            // Name resolution shares the dial deadline; then each address the
            // name resolves to is tried in turn until one answers.
            let sockets = tokio::time::timeout(self.0.config.dial_timeout, addr.resolve())
                .await
                .map_err(|_| RejectReason::Resolve(format!("resolving {} timed out", addr.host)))?
                .map_err(|e| RejectReason::Resolve(e.to_string()))?;
            let mut last = RejectReason::Resolve(format!("{} resolved to no address", addr.host));
            for socket in sockets {
                match self.connect_out(socket, Some(addr.id), persistent, exempt).await {
                    Err(e @ (RejectReason::Dial(_) | RejectReason::Banned(_))) => last = e,
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
            if sw.num_peers().0 >= sw.0.config.max_outbound {
                return Err(RejectReason::OutboundFull);
            }
            sw.connect_out(socket, None, false, false).await
        })
        .await
    }

    /// IP ban, address filter, transport dial within `dial_timeout`, then
    /// the upgrade of an outbound connection.
    async fn connect_out(
        &self,
        socket: SocketAddr,
        expected: Option<NodeId>,
        persistent: bool,
        exempt: bool,
    ) -> Result<Peer, RejectReason> {
        self.check_ban_ip(socket.ip())?;
        self.run_addr_filter(socket).await?;
        let stream =
            tokio::time::timeout(self.0.config.dial_timeout, self.0.transport.dial(socket))
                .await
                .map_err(|_| RejectReason::Dial(io::ErrorKind::TimedOut.into()))?
                .map_err(RejectReason::Dial)?;
        self.upgrade(stream, socket, Direction::Outbound, expected, persistent, exempt).await
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
            let Ok(permit) = self.0.handshakes.clone().try_acquire_owned() else {
                self.record_reject(Direction::Inbound, &RejectReason::TooManyHandshakes);
                continue;
            };
            let sw = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = sw.accept_one(stream, remote).await {
                    sw.record_reject(Direction::Inbound, &e);
                    tracing::debug!(%remote, reason = %e, "inbound connection refused");
                }
            });
        }
    }

    async fn accept_one(
        &self,
        stream: BoxStream,
        remote: SocketAddr,
    ) -> Result<Peer, RejectReason> {
        self.check_ban_ip(remote.ip())?;
        if self.ip_full(&self.0.peers.lock(), remote.ip()) {
            return Err(RejectReason::TooManyFromIp(remote.ip()));
        }
        self.run_addr_filter(remote).await?;
        self.upgrade(stream, remote, Direction::Inbound, None, false, false).await
    }

    async fn run_addr_filter(&self, addr: SocketAddr) -> Result<(), RejectReason> {
        let Some(f) = &self.0.addr_filter else { return Ok(()) };
        tokio::time::timeout(self.0.config.filter_timeout, f(addr))
            .await
            .map_err(|_| RejectReason::FilterTimeout)?
            .map_err(RejectReason::Filtered)
    }

    fn is_unconditional(&self, id: &NodeId) -> bool {
        self.0.config.unconditional_peer_ids.contains(id)
    }

    fn check_ban_id(&self, id: &NodeId) -> Result<(), RejectReason> {
        check_ban(&mut self.0.bans_id.lock(), id)
            .map_err(|_| RejectReason::Banned(format!("id {id}")))
    }

    fn check_ban_ip(&self, ip: IpAddr) -> Result<(), RejectReason> {
        check_ban(&mut self.0.bans_ip.lock(), &ip)
            .map_err(|_| RejectReason::Banned(format!("ip {ip}")))
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

    /// Whether `ip` already has `max_inbound_per_ip` inbound peers in `set`
    /// (loopback exempt when `per_ip_exempt_loopback`).
    fn ip_full(&self, set: &PeerSet, ip: IpAddr) -> bool {
        let cfg = &self.0.config;
        let exempt = cfg.per_ip_exempt_loopback && ip.is_loopback();
        cfg.max_inbound_per_ip != 0 && !exempt && set.inbound_from(ip) >= cfg.max_inbound_per_ip
    }

    async fn upgrade(
        &self,
        stream: BoxStream,
        remote: SocketAddr,
        direction: Direction,
        dialed: Option<NodeId>,
        persistent: bool,
        exempt: bool,
    ) -> Result<Peer, RejectReason> {
        let cfg = &self.0.config;
        let secret_cfg =
            SecretConfig { handshake_timeout: cfg.handshake_timeout, ..cfg.secret.clone() };
        let deadline = tokio::time::Instant::now() + cfg.handshake_timeout;
        let mut conn = match direction {
            Direction::Outbound => {
                SecretConnection::connect(stream, &self.0.key, dialed, &secret_cfg).await
            }
            Direction::Inbound => SecretConnection::accept(stream, &self.0.key, &secret_cfg).await,
        }
        .map_err(RejectReason::Handshake)?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let ours = self.node_info();
        let info =
            node_info::exchange(&mut conn, &ours, left).await.map_err(RejectReason::NodeInfo)?;
        let actual = conn.remote_id();
        if info.node_id != actual {
            return Err(RejectReason::NodeInfoIdMismatch { claimed: info.node_id, actual });
        }
        if actual == self.node_id() {
            return Err(RejectReason::SelfConnection);
        }
        ours.compatible_with(&info).map_err(RejectReason::Incompatible)?;
        self.check_ban_id(&actual)?;
        if let Some(f) = &self.0.id_filter {
            tokio::time::timeout(cfg.filter_timeout, f(info.clone()))
                .await
                .map_err(|_| RejectReason::FilterTimeout)?
                .map_err(RejectReason::Filtered)?;
        }
        // Only channels both sides serve are opened.
        let chans: Vec<ChannelDescriptor> =
            self.0.channels.iter().filter(|d| info.channels.contains(&d.id)).cloned().collect();
        let (mconn, receivers) = MConnection::new(conn, &chans, cfg.mconn.clone())
            .map_err(|e| RejectReason::Incompatible(e.to_string()))?;
        let peer = Peer(Arc::new(PeerInner {
            info,
            direction,
            socket_addr: remote,
            persistent,
            conn: mconn,
            connected_at: std_now(),
            last_msg_ms: AtomicU64::new(0),
            score: AtomicU64::new(0),
            stop_reason: Mutex::new(None),
            metrics: self.0.metrics.clone(),
        }));
        self.admit(&peer, persistent || exempt).await?;
        self.0.metrics.peers.get_or_create(&DirLabel { direction: direction.into() }).inc();
        self.run_peer(peer.clone(), receivers).await;
        Ok(peer)
    }

    /// The checks made under the peer-set lock, then the insert. Of two
    /// simultaneous connections between the same pair (each side dialed),
    /// both sides keep the one dialed by the lower id: a new preferred
    /// connection waits for the other one to be stopped and removed.
    async fn admit(&self, peer: &Peer, persistent: bool) -> Result<(), RejectReason> {
        let cfg = &self.0.config;
        let id = peer.id();
        let we_dialed_lower = self.node_id() < id;
        let preferred = |p: &Peer| p.is_outbound() == we_dialed_lower;
        loop {
            let left = self.0.peer_left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            let replaced = {
                let mut set = self.0.peers.lock();
                if self.0.cancel.is_cancelled() {
                    return Err(RejectReason::Stopped);
                }
                match set.get(&id) {
                    Some(old) if preferred(peer) && !preferred(old) => old.clone(),
                    Some(_) => return Err(RejectReason::Duplicate(id)),
                    None => {
                        let unconditional = self.is_unconditional(&id);
                        let ip = peer.socket_addr().ip();
                        match peer.direction() {
                            Direction::Inbound if self.ip_full(&set, ip) => {
                                return Err(RejectReason::TooManyFromIp(ip))
                            }
                            Direction::Inbound
                                if !unconditional
                                    && set.count(Direction::Inbound) >= cfg.max_inbound =>
                            {
                                return Err(RejectReason::InboundFull)
                            }
                            Direction::Outbound
                                if !unconditional
                                    && !persistent
                                    && set.count(Direction::Outbound) >= cfg.max_outbound =>
                            {
                                return Err(RejectReason::OutboundFull)
                            }
                            _ => {}
                        }
                        set.peers.insert(id, peer.clone());
                        return Ok(());
                    }
                }
            };
            let why = "replaced by the connection dialed by the lower id";
            self.stop_peer(&replaced, StopReason::Error(why.into())).await;
            left.await;
        }
    }

    /// Notifies reactors, starts one task per channel, and a task that
    /// waits for the end of the connection.
    async fn run_peer(&self, peer: Peer, receivers: Vec<crate::mconn::ChannelReceiver>) {
        let span = tracing::info_span!("peer", id = %peer.id(), addr = %peer.socket_addr(), dir = ?peer.direction());
        for r in &self.0.reactors {
            r.add_peer(&peer).await;
        }
        tracing::info!(parent: &span, moniker = %peer.node_info().moniker, "peer added");
        self.emit(SwitchEvent::PeerAdded { id: peer.id(), direction: peer.direction() });
        let mut tasks = tokio::task::JoinSet::new();
        for mut rx in receivers {
            let ch = rx.id();
            let reactor = self.0.reactors[self.0.routes[&ch]].clone();
            let (sw, p) = (self.clone(), peer.clone());
            tasks.spawn(
                async move {
                    let label = ChannelLabel::of(ch);
                    while let Some(bytes) = rx.recv().await {
                        p.0.last_msg_ms.store(now_ms(p.0.connected_at).max(1), Ordering::Relaxed);
                        p.0.metrics.bytes_received.get_or_create(&label).inc_by(bytes.len() as u64);
                        p.0.metrics.messages_received.get_or_create(&label).inc();
                        if let Err(e) = reactor.receive(sw.clone(), p.clone(), ch, bytes).await {
                            let why = format!("undecodable message on channel {ch:#04x}: {e}");
                            sw.report(
                                &p,
                                PeerMisbehavior {
                                    kind: MisbehaviorKind::ProtocolError,
                                    score: u32::MAX,
                                    reason: why,
                                },
                            )
                            .await;
                            break;
                        }
                    }
                }
                .instrument(span.clone()),
            );
        }
        let sw = self.clone();
        tokio::spawn(
            async move {
                let conn_reason = peer.0.conn.closed().await;
                // Let every reactor see the last messages before remove_peer,
                // within the grace period; a stuck receive is aborted.
                let grace = sw.0.config.remove_grace;
                let drained = tokio::time::timeout(grace, async {
                    while tasks.join_next().await.is_some() {}
                })
                .await;
                if drained.is_err() {
                    tracing::warn!(
                        ?grace,
                        "a reactor did not finish in time; aborting its receive"
                    );
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                }
                let reason = peer
                    .0
                    .stop_reason
                    .lock()
                    .clone()
                    .unwrap_or(StopReason::Connection(conn_reason));
                for r in &sw.0.reactors {
                    r.remove_peer(&peer, &reason).await;
                }
                {
                    let mut last = sw.0.last_stop.lock();
                    if last.len() >= 1024 {
                        last.clear();
                    }
                    last.insert(peer.id(), reason.clone());
                }
                {
                    let mut set = sw.0.peers.lock();
                    if set.get(&peer.id()).is_some_and(|p| Arc::ptr_eq(&p.0, &peer.0)) {
                        set.peers.remove(&peer.id());
                    }
                }
                sw.0.metrics
                    .peers
                    .get_or_create(&DirLabel { direction: peer.direction().into() })
                    .dec();
                tracing::info!(%reason, "peer removed");
                sw.0.peer_left.notify_waiters();
                sw.emit(SwitchEvent::PeerRemoved { id: peer.id(), reason });
            }
            .instrument(span),
        );
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

    /// Records misbehaviour; at `ban_threshold` the peer is disconnected
    /// and its id and IP banned for the kind's time.
    pub async fn report(&self, peer: &Peer, m: PeerMisbehavior) {
        let before = peer.0.score.fetch_add(u64::from(m.score), Ordering::Relaxed);
        let score = before.saturating_add(u64::from(m.score));
        tracing::debug!(peer = %peer.id(), kind = ?m.kind, score, reason = %m.reason, "misbehaviour");
        let threshold = u64::from(self.0.config.ban_threshold);
        // Ban once, when the score first reaches the threshold.
        if score < threshold || before >= threshold {
            return;
        }
        let dur = match m.kind {
            MisbehaviorKind::ProtocolError => self.0.config.ban_protocol_error,
            MisbehaviorKind::InvalidData => self.0.config.ban_invalid_data,
            MisbehaviorKind::ConsensusError => self.0.config.ban_consensus_error,
        };
        self.ban(peer.id(), Some(peer.socket_addr().ip()), dur);
        self.stop_peer(peer, StopReason::Misbehavior(m.reason)).await;
    }

    /// Bans an id (and optionally an IP) for `dur`; checked on accept and
    /// dial.
    /// A ban never shortens one already in force; expired bans are pruned.
    pub fn ban(&self, id: NodeId, ip: Option<IpAddr>, dur: Duration) {
        let now = std_now();
        let until = now.checked_add(dur).unwrap_or(now + Duration::from_secs(100 * 365 * 86_400));
        fn put<K: std::hash::Hash + Eq>(
            m: &mut HashMap<K, Instant>,
            k: K,
            until: Instant,
            now: Instant,
        ) {
            m.retain(|_, t| *t > now);
            let e = m.entry(k).or_insert(until);
            *e = (*e).max(until);
        }
        put(&mut self.0.bans_id.lock(), id, until, now);
        if let Some(ip) = ip {
            put(&mut self.0.bans_ip.lock(), ip, until, now);
        }
        self.0.counters.lock().bans += 1;
        self.0.metrics.bans.inc();
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
            let cfg = &sw.0.config;
            let mut delay = cfg.redial_initial;
            loop {
                if sw.0.cancel.is_cancelled() {
                    return;
                }
                let peer = match sw.peer(&addr.id) {
                    Some(p) => Some(p),
                    None => sw.dial(&addr).await.ok(),
                };
                if let Some(p) = peer {
                    delay = cfg.redial_initial;
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
                // Exponential backoff with up to 25% jitter, capped.
                let jitter = delay.mul_f64(rand::random::<f64>() * 0.25);
                tokio::select! {
                    _ = tokio::time::sleep(delay + jitter) => {}
                    _ = sw.0.cancel.cancelled() => return,
                }
                delay = (delay * 2).min(cfg.redial_max);
            }
        });
    }

    async fn idle_loop(&self) {
        let idle = self.0.config.idle_timeout;
        let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.0.cancel.cancelled() => return,
            }
            for p in self.peers() {
                let last = Duration::from_millis(p.0.last_msg_ms.load(Ordering::Relaxed));
                let since = Duration::from_millis(now_ms(p.0.connected_at)).saturating_sub(last);
                if since >= idle {
                    self.stop_peer(&p, StopReason::Idle(idle)).await;
                }
            }
        }
    }
}
