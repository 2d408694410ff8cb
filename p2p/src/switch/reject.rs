//! [`RejectReason`]: why a connection was refused, by the manager's
//! admission or by the upgrade, with whose fault it is.

use std::io;
use std::net::IpAddr;

use crate::fault::Fault;
use crate::key::NodeId;
use crate::node_info::NodeInfoError;
use crate::secret::SecretError;

/// Why a connection was refused. Seen by the dialer and in the log, and
/// counted by [`RejectReason::label`]; [`RejectReason::fault`] says whose
/// fault it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RejectReason {
    /// The transport could not connect (or timed out).
    #[error("dial failed: {0}")]
    Dial(io::Error),
    /// The address did not resolve.
    #[error("{0}")]
    Resolve(String),
    /// The identity is banned (for misbehaving toward us).
    #[error("banned (id {0})")]
    Banned(NodeId),
    /// The IP failed too many handshakes lately and is refused for
    /// `ip_cooloff` before the handshake.
    #[error("cooling off ({0} failed too many handshakes)")]
    CoolingOff(IpAddr),
    /// The IP connects faster than `attempt_rate_per_ip`.
    #[error("too many connection attempts from {0}")]
    TooManyAttempts(IpAddr),
    /// Already connected to this id.
    #[error("duplicate connection to {0}")]
    Duplicate(NodeId),
    /// Too many inbound connections from this IP.
    #[error("too many connections from {0}")]
    TooManyFromIp(IpAddr),
    /// Too many connections in this IP's netgroup.
    #[error("too many connections in the netgroup of {0}")]
    TooManyFromNetgroup(IpAddr),
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
    /// `max_inbound` reached and no inbound peer could be evicted.
    #[error("inbound peer limit reached")]
    InboundFull,
    /// `max_outbound` reached.
    #[error("outbound peer limit reached")]
    OutboundFull,
    /// `max_pending_handshakes` (in total or from this IP) inbound
    /// handshakes already running.
    #[error("too many handshakes in progress")]
    TooManyHandshakes,
    /// A pending inbound handshake gave its slot to a newer connection
    /// from an IP holding fewer pending handshakes.
    #[error("displaced by a connection from a less busy IP")]
    Displaced,
    /// The node-wide memory budget for peers is used up.
    #[error("the memory budget for peers is used up")]
    OverBudget,
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
            RejectReason::CoolingOff(_) => "cooling_off",
            RejectReason::TooManyAttempts(_) => "too_many_attempts",
            RejectReason::Duplicate(_) => "duplicate",
            RejectReason::TooManyFromIp(_) => "too_many_from_ip",
            RejectReason::TooManyFromNetgroup(_) => "too_many_from_netgroup",
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
            RejectReason::Displaced => "displaced",
            RejectReason::OverBudget => "over_budget",
            RejectReason::Stopped => "stopped",
        }
    }

    /// Whose fault the refusal is. A dial or resolve failure is I/O; a
    /// broken handshake or NodeInfo is the peer's; an incompatible peer is
    /// nobody's; bans, limits, filters and stopping are our decisions.
    pub fn fault(&self) -> Fault {
        match self {
            RejectReason::Dial(_) | RejectReason::Resolve(_) => Fault::Io,
            RejectReason::Handshake(e) => e.fault(),
            RejectReason::NodeInfo(e) => e.fault(),
            RejectReason::NodeInfoIdMismatch { .. } => Fault::Peer,
            RejectReason::Incompatible(_) | RejectReason::SelfConnection => Fault::Incompatible,
            RejectReason::Banned(_)
            | RejectReason::CoolingOff(_)
            | RejectReason::TooManyAttempts(_)
            | RejectReason::Duplicate(_)
            | RejectReason::TooManyFromIp(_)
            | RejectReason::TooManyFromNetgroup(_)
            | RejectReason::Filtered(_)
            | RejectReason::FilterTimeout
            | RejectReason::InboundFull
            | RejectReason::OutboundFull
            | RejectReason::TooManyHandshakes
            | RejectReason::Displaced
            | RejectReason::OverBudget
            | RejectReason::Stopped => Fault::Local,
        }
    }
}
