//! [`Peer`] (one authenticated MConnection with its NodeInfo, direction
//! and kind) and the [`PeerSet`] of connected peers (CometBFT's
//! `p2p/peer.go` and `peer_set.go`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use super::manager::{ConnId, ConnKind};
use super::metrics::{ChannelLabel, SwitchMetrics};
use super::StopReason;
use crate::key::NodeId;
use crate::mconn::{ConnectionStats, MConnection, SendError};
use crate::node_info::NodeInfo;

/// Which side opened the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// We dialed.
    Outbound,
    /// They dialed.
    Inbound,
}

pub(super) struct PeerInner {
    pub(super) info: NodeInfo,
    pub(super) kind: ConnKind,
    /// Set once the peer manager admits the connection.
    pub(super) conn_id: std::sync::OnceLock<ConnId>,
    pub(super) socket_addr: SocketAddr,
    pub(super) conn: MConnection,
    pub(super) connected_at: Instant,
    /// Milliseconds since `connected_at` of the last message received.
    pub(super) last_msg_ms: AtomicU64,
    pub(super) stop_reason: Mutex<Option<StopReason>>,
    pub(super) metrics: SwitchMetrics,
}

/// A connected peer: its NodeInfo, direction and connection. Cheap to
/// clone.
#[derive(Clone)]
pub struct Peer(pub(super) Arc<PeerInner>);

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id())
            .field("addr", &self.0.socket_addr)
            .field("kind", &self.0.kind)
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
        self.0.kind.direction()
    }
    /// The peer manager's id of this connection (`ConnId(0)` before it
    /// was admitted).
    pub fn conn_id(&self) -> ConnId {
        self.0.conn_id.get().copied().unwrap_or(ConnId(0))
    }
    /// What kind of connection it was dialed or accepted as: inbound,
    /// outbound, persistent, feeler or extra (an extra connection the
    /// rotation kept still says `Extra` here; the peer manager counts it
    /// as outbound from then on).
    pub fn kind(&self) -> ConnKind {
        self.0.kind
    }
    /// Whether we dialed.
    pub fn is_outbound(&self) -> bool {
        self.direction() == Direction::Outbound
    }
    /// Whether the switch redials this peer.
    pub fn is_persistent(&self) -> bool {
        self.0.kind == ConnKind::Persistent
    }
    /// The remote socket address (for inbound peers an ephemeral port).
    pub fn socket_addr(&self) -> SocketAddr {
        self.0.socket_addr
    }
    /// How long the peer has been connected, by tokio's clock (the
    /// switch's clock: paused in tests, simulated in a simulation).
    pub fn uptime(&self) -> Duration {
        tokio::time::Instant::now().into_std().saturating_duration_since(self.0.connected_at)
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

    /// As [`Peer::send`], charging the node-wide budget from `held` first
    /// (see [`MConnection::send_reserved`](crate::MConnection::send_reserved)):
    /// an answer built under a reservation stays counted while it waits.
    ///
    /// # Errors
    /// As [`Peer::send`].
    pub async fn send_reserved(
        &self,
        channel: u8,
        msg: impl Into<Bytes>,
        held: &mut crate::mconn::Reservation,
    ) -> Result<(), SendError> {
        let msg = msg.into();
        let len = msg.len() as u64;
        self.0.conn.send_reserved(channel, msg, held).await?;
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
    /// The largest message `channel` takes now, bytes (0: none): what is
    /// left of the channel's and the connection's send budgets. Reactors
    /// answering a request build at most this much.
    pub fn send_room(&self, channel: u8) -> usize {
        self.0.conn.room(channel)
    }

    /// Waits until `channel` has room, at most `send_timeout`; a peer that
    /// does not take what it asked for meets [`SendError::Timeout`].
    ///
    /// # Errors
    /// [`SendError`].
    pub async fn ready(&self, channel: u8) -> Result<(), SendError> {
        self.0.conn.ready(channel).await
    }

    /// Holds `n` bytes of the node-wide budget while an answer for this
    /// peer is built, so concurrent builders cannot pass it; `None` if they
    /// do not fit now. Drop it just before sending the answer.
    pub fn reserve(&self, n: usize) -> Option<crate::mconn::Reservation> {
        self.0.conn.reserve(n)
    }

    /// As [`Peer::reserve`], waiting at most `send_timeout` for bytes to be
    /// given back.
    ///
    /// # Errors
    /// [`SendError::Timeout`], [`SendError::Closed`].
    pub async fn reserve_wait(&self, n: usize) -> Result<crate::mconn::Reservation, SendError> {
        self.0.conn.reserve_wait(n).await
    }

    /// Bytes waiting in all send queues to this peer.
    pub fn queued_bytes(&self) -> usize {
        self.0.conn.queued_bytes()
    }

    /// Bytes of the node-wide budget reserved for answers to this peer
    /// being built or waiting for room.
    pub fn held_bytes(&self) -> usize {
        self.0.conn.held_bytes()
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
    /// By id: iteration (and so `Switch::peers()`) is in id order, the
    /// same in every run (a simulation replays).
    pub(super) peers: BTreeMap<NodeId, Peer>,
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
