//! Prometheus metrics of the switch (prometheus-client), in the spirit of
//! rust-libp2p's per-protocol metrics: register them once with
//! [`SwitchMetrics::register`], then scrape the registry.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Direction;

/// Label value for a direction.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Dir {
    /// We dialed.
    Outbound,
    /// They dialed.
    Inbound,
}

impl From<Direction> for Dir {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Outbound => Dir::Outbound,
            Direction::Inbound => Dir::Inbound,
        }
    }
}

/// `{direction="inbound|outbound"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirLabel {
    /// The direction.
    pub direction: Dir,
}

/// `{channel="0x20"}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// The channel id in hex.
    pub channel: String,
}

impl ChannelLabel {
    pub(crate) fn of(ch: u8) -> Self {
        ChannelLabel { channel: format!("{ch:#04x}") }
    }
}

/// `{reason="duplicate"}` ([`super::RejectReason::label`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason label.
    pub reason: String,
}

/// The switch's metrics. Cloning shares the same series.
#[derive(Clone, Debug, Default)]
pub struct SwitchMetrics {
    /// Connected peers by direction.
    pub peers: Family<DirLabel, Gauge>,
    /// Message bytes queued for sending, per channel.
    pub bytes_sent: Family<ChannelLabel, Counter>,
    /// Message bytes received, per channel.
    pub bytes_received: Family<ChannelLabel, Counter>,
    /// Messages queued for sending, per channel.
    pub messages_sent: Family<ChannelLabel, Counter>,
    /// Messages received, per channel.
    pub messages_received: Family<ChannelLabel, Counter>,
    /// Failed dials by reason.
    pub dial_failures: Family<ReasonLabel, Counter>,
    /// Refused inbound connections by reason.
    pub rejected: Family<ReasonLabel, Counter>,
    /// Bans imposed.
    pub bans: Counter,
    /// Misbehaviour reports by kind ([`crate::fault::Misbehavior::label`]).
    pub misbehaviors: Family<ReasonLabel, Counter>,
    /// Inbound peers evicted for a newcomer.
    pub evictions: Counter,
    /// Bytes waiting in the send queues of all peers, sampled every
    /// `maintenance_interval`.
    pub send_queue_bytes: Gauge,
}

impl SwitchMetrics {
    /// Registers every series under the `plexus_p2p_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("plexus_p2p");
        r.register("peers", "Connected peers by direction", self.peers.clone());
        r.register(
            "message_bytes_sent",
            "Message bytes queued for sending",
            self.bytes_sent.clone(),
        );
        r.register("message_bytes_received", "Message bytes received", self.bytes_received.clone());
        r.register("messages_sent", "Messages queued for sending", self.messages_sent.clone());
        r.register("messages_received", "Messages received", self.messages_received.clone());
        r.register("dial_failures", "Failed dials by reason", self.dial_failures.clone());
        r.register(
            "rejected_connections",
            "Refused inbound connections by reason",
            self.rejected.clone(),
        );
        r.register("bans", "Bans imposed", self.bans.clone());
        r.register("misbehaviors", "Misbehaviour reports by kind", self.misbehaviors.clone());
        r.register("evictions", "Inbound peers evicted for a newcomer", self.evictions.clone());
        r.register(
            "send_queue_bytes",
            "Bytes waiting in the send queues of all peers",
            self.send_queue_bytes.clone(),
        );
    }
}
