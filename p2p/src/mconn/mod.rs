//! MConnection: many prioritized channels multiplexed over one
//! [`SecretConnection`](crate::SecretConnection), as in CometBFT's
//! `p2p/conn/connection.go`, with its known faults fixed (see
//! ARCHITECTURE.md).
//!
//! - [`core::MConnCore`] is the sans-IO state machine (scheduler, chunking,
//!   reassembly, credit flow control, keepalive, send-rate limit).
//! - [`MConnection`] drives it with two tokio tasks (reader and writer) and
//!   gives the application a handle to send and one [`ChannelReceiver`] per
//!   channel to receive.

mod budget;
pub mod core;
mod driver;

use std::time::Duration;

pub use budget::{Reservation, SharedBudget};
pub use driver::{ChannelReceiver, MConnection, SendError, TrySendError};

use crate::fault::{Fault, Misbehavior};
use crate::secret::SecretError;

/// A channel as declared by a reactor (CometBFT's `ChannelDescriptor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelDescriptor {
    /// Channel id, unique on a connection (PEX 0x00, consensus 0x20,
    /// mempool 0x30, blocksync 0x40; applications take others).
    pub id: u8,
    /// Relative share of bandwidth when channels compete (≥ 1): two
    /// saturated channels of priorities 1 and 5 get bytes in ratio 1:5.
    pub priority: u32,
    /// Messages that may wait in the send queue (≥ 1). `send` waits and
    /// `try_send` fails when it is full.
    pub send_queue_capacity: usize,
    /// Bytes that may wait in the send queue (≥ 1): a message is queued
    /// when it fits in what is left, or when the queue is empty and the
    /// connection is under `MConnConfig::max_send_queue_bytes` (one message
    /// of any allowed size); otherwise `send` waits and `try_send` fails.
    /// With `MConnConfig::max_send_queue_bytes` this bounds what a peer
    /// that reads nothing makes us hold. Default 4 MiB.
    pub send_queue_bytes: usize,
    /// Largest message accepted from the peer, bytes. A larger one closes
    /// the connection with [`MConnError::MessageTooLarge`]. The largest
    /// capacity over all channels also caps one packet's data.
    pub recv_message_capacity: usize,
    /// Receive window, in credit bytes (data bytes plus 64 per packet):
    /// how much the peer may have in flight or waiting for the application
    /// on this channel. Must be at least [`ChannelDescriptor::min_window`],
    /// so one whole message always fits.
    pub recv_buffer_capacity: usize,
}

impl ChannelDescriptor {
    /// A descriptor with defaults: priority 1, send queue of 64 messages
    /// and 4 MiB, messages up to 4 MiB, receive window 8 MiB.
    pub fn new(id: u8) -> Self {
        ChannelDescriptor {
            id,
            priority: 1,
            send_queue_capacity: 64,
            send_queue_bytes: 4 << 20,
            recv_message_capacity: 4 << 20,
            recv_buffer_capacity: 8 << 20,
        }
    }

    /// Sets the priority.
    pub fn priority(mut self, p: u32) -> Self {
        self.priority = p;
        self
    }

    /// Sets the send queue capacity, in messages.
    pub fn send_queue_capacity(mut self, n: usize) -> Self {
        self.send_queue_capacity = n;
        self
    }

    /// Sets the send queue budget, in bytes.
    pub fn send_queue_bytes(mut self, n: usize) -> Self {
        self.send_queue_bytes = n;
        self
    }

    /// Sets the largest accepted message, in bytes, and raises the receive
    /// window to twice [`ChannelDescriptor::min_window`] if it was below
    /// the minimum.
    pub fn recv_message_capacity(mut self, n: usize) -> Self {
        self.recv_message_capacity = n;
        if self.recv_buffer_capacity < self.min_window() {
            self.recv_buffer_capacity = 2 * self.min_window();
        }
        self
    }

    /// Sets the receive window, in credit bytes.
    pub fn recv_buffer_capacity(mut self, n: usize) -> Self {
        self.recv_buffer_capacity = n;
        self
    }

    /// Smallest valid window: one whole message of `recv_message_capacity`
    /// sent in chunks of at least 1 KiB (the smallest allowed
    /// `max_packet_msg_payload_size`), each costing 64 credit bytes.
    pub fn min_window(&self) -> usize {
        let chunks = self.recv_message_capacity.div_ceil(1024).max(1);
        self.recv_message_capacity + chunks * core::PACKET_MSG_COST as usize
    }

    /// Checks the descriptor.
    ///
    /// # Errors
    /// [`MConnError::Config`] naming the bad field.
    pub fn validate(&self) -> Result<(), MConnError> {
        let bad =
            |what: String| Err(MConnError::Config(format!("channel {:#04x}: {what}", self.id)));
        if self.priority == 0 {
            return bad("priority must be at least 1".into());
        }
        if self.send_queue_capacity == 0 {
            return bad("send_queue_capacity must be at least 1".into());
        }
        if self.send_queue_bytes == 0 {
            return bad("send_queue_bytes must be at least 1".into());
        }
        if self.recv_buffer_capacity < self.min_window() {
            return bad(format!(
                "recv_buffer_capacity {} is below recv_message_capacity {} plus chunk overhead ({})",
                self.recv_buffer_capacity,
                self.recv_message_capacity,
                self.min_window()
            ));
        }
        Ok(())
    }
}

/// Connection-wide settings. Every field is read by the code; defaults are
/// in [`MConnConfig::default`].
#[derive(Debug, Clone, PartialEq)]
pub struct MConnConfig {
    /// Largest data chunk in one `PacketMsg`, bytes (1 KiB to 16 MiB).
    /// Default 63 KiB (64512), chosen by measurement (ARCHITECTURE.md): a
    /// full packet (chunk + at most 16 bytes of protobuf) then fits one
    /// 65519-byte Noise frame, so frames carry whole packets and the
    /// receiver decodes them without copying; 1 KiB (CometBFT) spends most
    /// of the time in per-packet work, and larger chunks lengthen the wait
    /// of a high-priority message behind a bulk packet.
    pub max_packet_msg_payload_size: usize,
    /// Plaintext bytes gathered into one write (many packets share one
    /// write and Noise frames of up to 65519 bytes). Default 256 KiB.
    pub write_batch_size: usize,
    /// Longest time the writer waits to coalesce more packets before it
    /// writes what it has. Default 0: the writer drains everything queued
    /// into one write and sends at once, so batching comes from load, not
    /// from delay, and a lone small message leaves immediately. A positive
    /// value trades latency for fewer, larger writes under light load.
    pub flush_throttle: Duration,
    /// Largest amount of PacketMsg bytes (length prefix included) written
    /// and not yet acknowledged by the peer's reader (0 = no limit). Keeps
    /// bulk data from piling up in socket buffers, which bounds how long a
    /// high-priority message waits behind it. Default 512 KiB, chosen by
    /// measurement (ARCHITECTURE.md): on loopback it keeps full throughput
    /// and holds a priority message's p99 wait near 1 ms, where 1 MiB lets
    /// it reach 2 ms. It caps one connection at about 5 MB/s per 100 ms of
    /// round trip (CometBFT's default send rate is 5 MB/s); raise it, or
    /// set 0, for fast long-distance links. 0 or at least 128 KiB (twice
    /// the peer's 64 KiB ack step).
    pub max_unacked_bytes: u64,
    /// Time between pings. Default 60 s.
    pub ping_interval: Duration,
    /// Time to wait for a pong before closing with
    /// [`MConnError::PongTimeout`]. Default 45 s; must be below
    /// `ping_interval`.
    pub pong_timeout: Duration,
    /// Send limit in bytes/s of data packets (0 = unlimited, the default).
    /// Pings, pongs and credit packets are never held back by it.
    pub send_rate: u64,
    /// Receive limit in bytes/s (0 = unlimited, the default): reading from
    /// the stream pauses while over it.
    pub recv_rate: u64,
    /// Token-bucket depth in bytes for both limits. Default 0 means
    /// `max(rate / 10, 2 × largest packet)`; it is never below one packet.
    pub rate_burst: u64,
    /// How long `send(..).await` waits for room in a full queue before it
    /// fails with [`SendError::Timeout`]. Default 10 s (CometBFT's
    /// `defaultSendTimeout`).
    pub send_timeout: Duration,
    /// Bytes that may wait in all send queues of the connection together
    /// (≥ 1): a message is queued only when it fits in what is left (and
    /// its channel's budget allows it), or, into an empty channel queue,
    /// while the total is under this. So a peer that grants no credit makes
    /// us hold at most this plus one message. Default 8 MiB.
    pub max_send_queue_bytes: usize,
    /// Control packets (ping, pong, credit, ack) and empty frames a peer
    /// may send per second beyond those our own traffic earns it (each
    /// PacketMsg we send lets it answer with two: an ack and a credit
    /// grant). Over it, the connection closes with
    /// [`MConnError::ControlFlood`]. Our pongs are never delayed by it.
    /// Default 100/s.
    pub control_rate: u32,
    /// Depth of that bucket, packets. Default 200.
    pub control_burst: u32,
}

impl Default for MConnConfig {
    fn default() -> Self {
        MConnConfig {
            max_packet_msg_payload_size: 63 * 1024,
            write_batch_size: 256 * 1024,
            flush_throttle: Duration::ZERO,
            max_unacked_bytes: 512 * 1024,
            ping_interval: Duration::from_secs(60),
            pong_timeout: Duration::from_secs(45),
            send_rate: 0,
            recv_rate: 0,
            rate_burst: 0,
            send_timeout: Duration::from_secs(10),
            max_send_queue_bytes: 8 << 20,
            control_rate: 100,
            control_burst: 200,
        }
    }
}

impl MConnConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// [`MConnError::Config`] naming the bad field: `pong_timeout` not below
    /// `ping_interval`, a zero interval, an interval or `send_timeout` over
    /// a day, a `flush_throttle` over 1 s, a packet payload below 1 KiB or
    /// above 16 MiB, a zero write batch, a burst below one packet, an
    /// in-flight window below 128 KiB, a `recv_rate` too low to let a pong
    /// through a full in-flight window within `pong_timeout`.
    pub fn validate(&self) -> Result<(), MConnError> {
        let bad = |s: &str| Err(MConnError::Config(s.to_string()));
        const DAY: Duration = Duration::from_secs(86_400);
        if self.ping_interval.is_zero() {
            return bad("ping_interval must be positive");
        }
        if self.max_send_queue_bytes == 0 {
            return bad("max_send_queue_bytes must be at least 1");
        }
        if self.control_rate == 0 || self.control_burst == 0 {
            return bad("control_rate and control_burst must be at least 1");
        }
        if self.ping_interval > DAY || self.send_timeout > DAY {
            return bad("ping_interval and send_timeout must be at most one day");
        }
        if self.flush_throttle > Duration::from_secs(1) {
            return bad("flush_throttle must be at most 1 s");
        }
        if self.recv_rate != 0
            && (self.recv_rate as f64) * self.pong_timeout.as_secs_f64()
                < 2.0 * self.max_unacked_bytes as f64
        {
            // A pong may sit behind a full in-flight window of data that
            // the receive limit lets in only at recv_rate.
            return bad("recv_rate × pong_timeout must be at least 2 × max_unacked_bytes, or pongs arrive late");
        }
        if self.pong_timeout >= self.ping_interval {
            return bad("pong_timeout must be less than ping_interval");
        }
        if self.max_packet_msg_payload_size < 1024 || self.max_packet_msg_payload_size > 16 << 20 {
            return bad("max_packet_msg_payload_size must be between 1 KiB and 16 MiB");
        }
        if self.max_unacked_bytes != 0 && self.max_unacked_bytes < 2 * core::ACK_EVERY {
            return bad("max_unacked_bytes must be 0 (no limit) or at least 128 KiB");
        }
        if self.write_batch_size == 0 {
            return bad("write_batch_size must be positive");
        }
        if self.rate_burst != 0 && self.rate_burst < self.packet_wire_max() as u64 {
            return bad(
                "rate_burst must hold at least one packet (max_packet_msg_payload_size + 16)",
            );
        }
        Ok(())
    }

    fn packet_wire_max(&self) -> usize {
        self.max_packet_msg_payload_size + core::PACKET_OVERHEAD
    }

    /// The effective token-bucket depth in bytes (see `rate_burst`).
    pub fn rate_burst(&self) -> u64 {
        if self.rate_burst != 0 {
            return self.rate_burst;
        }
        let rate = self.send_rate.max(self.recv_rate);
        (rate / 10).max(2 * self.packet_wire_max() as u64)
    }
}

/// Why an MConnection closed. Peer-facing variants mean the peer broke the
/// protocol; the switch scores or bans it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum MConnError {
    /// Invalid local configuration (not the peer's fault).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The secret connection failed (I/O, EOF, decryption).
    #[error("secret connection: {0}")]
    Secret(std::sync::Arc<SecretError>),
    /// A packet's length prefix exceeds the largest allowed packet.
    #[error("packet of {len} bytes exceeds the limit of {max} bytes")]
    PacketTooLarge {
        /// Announced length, bytes.
        len: usize,
        /// Limit, bytes.
        max: usize,
    },
    /// A packet is not valid protobuf, or breaks a protocol rule (such as
    /// acknowledging more bytes than were sent).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A packet with none of ping, pong, msg, credit or ack set.
    #[error("packet carries no message")]
    EmptyPacket,
    /// A `PacketMsg` for a channel that is not declared, or a `PacketMsg`
    /// or credit with an id outside 0..=255. (A `PacketMsg` without a
    /// channel field is channel 0 in proto3: accepted only where channel 0
    /// is declared.) Credit for a valid undeclared id is ignored.
    #[error("unknown channel id {0}")]
    UnknownChannel(i32),
    /// A message grew past the channel's `recv_message_capacity`.
    #[error("message on channel {channel:#04x} of at least {len} bytes exceeds {max} bytes")]
    MessageTooLarge {
        /// Channel id.
        channel: u8,
        /// Length reached, bytes.
        len: usize,
        /// `recv_message_capacity`, bytes.
        max: usize,
    },
    /// The peer sent more than the credit we granted on a channel.
    #[error(
        "peer exceeded its credit on channel {channel:#04x}: packet costs {cost}, window {window}"
    )]
    CreditExceeded {
        /// Channel id.
        channel: u8,
        /// Credit cost of the packet.
        cost: u64,
        /// Credit the peer had left.
        window: u64,
    },
    /// No pong arrived within `pong_timeout` of a ping.
    #[error("no pong within {0:?}")]
    PongTimeout(Duration),
    /// The peer sent control packets (ping, pong, credit, ack) or empty
    /// frames faster than `control_rate` beyond what our traffic earns.
    #[error("control packets above {rate}/s")]
    ControlFlood {
        /// `control_rate`, packets/s.
        rate: u32,
    },
    /// Closed locally by `stop` or `flush_stop`.
    #[error("connection stopped")]
    Stopped,
}

impl MConnError {
    /// Whose fault the close is: wire violations are the peer's, a missing
    /// pong or a broken stream is I/O, a bad config or `stop` is ours.
    pub fn fault(&self) -> Fault {
        match self {
            MConnError::Config(_) | MConnError::Stopped => Fault::Local,
            MConnError::Secret(e) => e.fault(),
            MConnError::PongTimeout(_) => Fault::Io,
            MConnError::PacketTooLarge { .. }
            | MConnError::Malformed(_)
            | MConnError::EmptyPacket
            | MConnError::UnknownChannel(_)
            | MConnError::MessageTooLarge { .. }
            | MConnError::CreditExceeded { .. }
            | MConnError::ControlFlood { .. } => Fault::Peer,
        }
    }

    /// The reputation-table entry of a peer fault (`None` otherwise).
    pub fn misbehavior(&self) -> Option<Misbehavior> {
        Some(match self {
            MConnError::Secret(e) => return e.misbehavior(),
            MConnError::PacketTooLarge { .. } | MConnError::MessageTooLarge { .. } => {
                Misbehavior::OversizedMessage
            }
            MConnError::Malformed(_) | MConnError::EmptyPacket => Misbehavior::MalformedPacket,
            MConnError::UnknownChannel(_) => Misbehavior::UndeclaredChannel,
            MConnError::CreditExceeded { .. } => Misbehavior::FlowControlViolation,
            MConnError::ControlFlood { .. } => Misbehavior::Flood,
            MConnError::Config(_) | MConnError::Stopped | MConnError::PongTimeout(_) => {
                return None
            }
        })
    }
}

impl From<SecretError> for MConnError {
    fn from(e: SecretError) -> Self {
        MConnError::Secret(std::sync::Arc::new(e))
    }
}

/// Per-channel statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelStats {
    /// Channel id.
    pub id: u8,
    /// Data bytes sent.
    pub bytes_sent: u64,
    /// Whole messages sent.
    pub msgs_sent: u64,
    /// Data bytes received.
    pub bytes_recv: u64,
    /// Whole messages received.
    pub msgs_recv: u64,
    /// Messages waiting to be sent (including one partly sent).
    pub send_queue_len: usize,
    /// Bytes of the messages waiting to be sent.
    pub send_queue_bytes: usize,
    /// Messages received and not yet taken by the application.
    pub recv_queue_len: usize,
    /// Bytes of those messages.
    pub recv_queue_bytes: usize,
    /// Credit the peer has granted us and we have not used, credit bytes.
    pub send_credit: u64,
}

/// Connection statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Packet bytes/s written (prefixes included), averaged over the last
    /// completed measuring window of at least one second.
    pub send_rate: u64,
    /// Packet bytes/s read, measured the same way.
    pub recv_rate: u64,
    /// Round trip of the last answered ping.
    pub last_rtt: Option<Duration>,
    /// Bytes waiting in all send queues (see `max_send_queue_bytes`), with
    /// the batch being written to the socket (taken out of the queues, not
    /// yet taken by the socket).
    pub send_queue_bytes: usize,
    /// Lowest round trip measured on this connection (the peer manager's
    /// eviction rule protects the lowest).
    pub min_rtt: Option<Duration>,
    /// One entry per channel, in declaration order.
    pub channels: Vec<ChannelStats>,
}
