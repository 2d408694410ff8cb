//! The sans-IO MConnection core: packet scheduling, chunking, reassembly,
//! credit-based flow control, keepalive timers and send-rate limiting, as a
//! plain struct with injected time. It never touches a socket; the tokio
//! driver in [`super::MConnection`] feeds it plaintext and takes packets
//! from it.
//!
//! # Scheduling
//! Start-time fair queuing (Goyal et al., SIGCOMM '96), a refinement of
//! CometBFT's "lowest `recently_sent / priority`" rule: every channel keeps a
//! virtual finish tag; a packet of cost `c` from channel `i` gets start tag
//! `S = max(V, F_i)` and finish tag `F_i = S + c / priority_i`, and the
//! channel with the smallest start tag among those that can send goes next
//! (`V` is the start tag of the last packet sent). Saturated channels then
//! share bytes exactly in proportion to their priorities, whatever their
//! message sizes (no starvation of large messages, CometBFT #2954), and a
//! message arriving on an idle channel starts at `V`, so it waits behind at
//! most one packet per other channel (bounded latency, CometBFT #2128).
//! There is no time-based decay to tune.
//!
//! # Flow control
//! Each side grants the other credit per channel, in "credit bytes": a
//! `PacketMsg` costs `data.len() + PACKET_MSG_COST` credits. The receiver
//! grants its `recv_buffer_capacity` when the connection starts and grants
//! again what the application has consumed. A sender only sends what it has
//! credit for; a peer that exceeds its credit is a protocol violation. So a
//! slow consumer on one channel holds up only that channel's sender, while
//! every other channel and ping/pong keep flowing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use plexus_proto::p2p::{
    packet::Sum, Packet, PacketAck, PacketCredit, PacketMsg, PacketPing, PacketPong,
};
use prost::Message;

use super::{ChannelDescriptor, ChannelStats, ConnectionStats, MConnConfig, MConnError};
use crate::rate::RateLimit;

/// Credit charged per `PacketMsg` on top of its data bytes, so that empty
/// or tiny packets cannot queue without bound at the receiver.
pub const PACKET_MSG_COST: u64 = 64;

/// Protobuf overhead of a `Packet{msg}` around its data, in bytes: at most
/// 1 (oneof tag), 4 (msg length), 3 (channel), 2 (eof), 1 (data tag) and 4
/// (data length), 15 in all, rounded up. A packet whose length prefix
/// exceeds the largest `recv_message_capacity` plus 16 is refused unread.
pub const PACKET_OVERHEAD: usize = 16;

/// A receiver acknowledges PacketMsg bytes whenever this many (64 KiB) are
/// unacknowledged; a sender's `max_unacked_bytes` must be at least twice
/// this, so acks always arrive before it blocks.
pub const ACK_EVERY: u64 = 64 * 1024;

/// Most control tokens the PacketMsgs we send can bank for the peer.
pub const CONTROL_EARNED_MAX: u64 = 1 << 16;

/// Single-chunk messages of at least this many bytes (64 KiB) are handed
/// to the application as slices of the read buffer, without a copy;
/// smaller ones are copied out so they do not pin the buffer.
pub const ZERO_COPY_MIN: usize = 64 * 1024;

/// Scale of virtual time, so that integer division by priority keeps
/// precision.
const VT_SCALE: u128 = 1 << 20;

/// One received whole message, with the credit it used (returned to the
/// peer when the application takes it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Index of the channel in the descriptor list.
    pub index: usize,
    /// The message.
    pub msg: Bytes,
    /// Credit bytes the message consumed.
    pub cost: u64,
}

/// Why [`MConnCore::push`] refused a message.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// No channel with this id was declared.
    UnknownChannel(u8),
    /// The channel's send queue holds `send_queue_capacity` messages.
    Full(Bytes),
    /// The connection is flushing for a graceful stop.
    Closing(Bytes),
    /// The message exceeds the channel's `recv_message_capacity`.
    TooLarge {
        /// Message length, bytes.
        len: usize,
        /// The capacity, bytes.
        max: usize,
    },
}

#[derive(Debug)]
struct SendChannel {
    desc: ChannelDescriptor,
    queue: VecDeque<Bytes>,
    /// Bytes of the front message already sent.
    offset: usize,
    queued_bytes: usize,
    /// Credit granted by the peer and not yet used.
    credit: u64,
    finish: u128,
    bytes_sent: u64,
    msgs_sent: u64,
}

#[derive(Debug)]
struct RecvChannel {
    /// Chunks of the message being reassembled, as zero-copy slices of the
    /// read buffers; joined with one copy of exactly the right size at eof.
    partial: Vec<Bytes>,
    partial_cost: u64,
    partial_len: usize,
    in_partial: bool,
    /// Credit the peer still has on this channel.
    window: u64,
    /// Credit consumed by the application and not yet granted back.
    consumed: u64,
    /// Credit to announce in the next outgoing packets.
    grant: u64,
    /// Messages delivered and not yet consumed.
    pending_msgs: usize,
    pending_bytes: usize,
    bytes_recv: u64,
    msgs_recv: u64,
}

/// Bytes per second over the last completed one-second window.
#[derive(Debug, Clone, Copy)]
struct RateMeter {
    start: Instant,
    bytes: u64,
    rate: u64,
}

impl RateMeter {
    fn new(now: Instant) -> Self {
        RateMeter { start: now, bytes: 0, rate: 0 }
    }
    fn add(&mut self, now: Instant, n: usize) {
        self.roll(now);
        self.bytes += n as u64;
    }
    fn roll(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.start);
        if dt >= Duration::from_secs(1) {
            self.rate = (self.bytes as f64 / dt.as_secs_f64()) as u64;
            self.bytes = 0;
            self.start = now;
        }
    }
}

/// The MConnection state machine. See the module docs.
#[derive(Debug)]
pub struct MConnCore {
    config: MConnConfig,
    index: Box<[Option<u8>; 256]>,
    send: Vec<SendChannel>,
    recv: Vec<RecvChannel>,
    vtime: u128,
    pong_pending: bool,
    next_ping: Instant,
    ping_sent: Option<Instant>,
    last_rtt: Option<Duration>,
    min_rtt: Option<Duration>,
    /// Bytes in all send queues.
    queued_total: usize,
    /// The node-wide budget these queues also count against, if any.
    shared: Option<super::SharedBudget>,
    /// Control packets (ping, pong, credit, ack) and empty frames the peer
    /// may still send: a base bucket refilled at `control_rate`, and
    /// tokens earned by the PacketMsgs we send (each may draw one ack or
    /// credit back).
    control_base: f64,
    control_earned: u64,
    control_refilled: Instant,
    send_limit: Option<RateLimit>,
    rate_blocked_until: Option<Instant>,
    /// PacketMsg wire bytes written and not yet acknowledged by the peer.
    unacked: u64,
    /// PacketMsg wire bytes read and not yet acknowledged to the peer.
    to_ack: u64,
    /// An ack is owed.
    ack_owed: u64,
    freed: Vec<usize>,
    send_meter: RateMeter,
    recv_meter: RateMeter,
    closing: bool,
    /// Largest packet accepted: the largest `recv_message_capacity` plus
    /// [`PACKET_OVERHEAD`], so a peer may chunk as coarsely as it likes.
    max_recv_packet: usize,
    /// The start of a packet split across Noise frames.
    stitch: BytesMut,
}

impl MConnCore {
    /// A core for `channels` at time `now`. The first outgoing packets
    /// grant the peer each channel's `recv_buffer_capacity` in credit.
    ///
    /// # Errors
    /// [`MConnError::Config`] if the config or a descriptor is invalid
    /// ([`MConnConfig::validate`], [`ChannelDescriptor::validate`],
    /// duplicate ids).
    pub fn new(
        channels: &[ChannelDescriptor],
        config: MConnConfig,
        now: Instant,
    ) -> Result<MConnCore, MConnError> {
        config.validate()?;
        let mut index = Box::new([None; 256]);
        for (i, d) in channels.iter().enumerate() {
            d.validate()?;
            if index[d.id as usize].replace(i as u8).is_some() {
                return Err(MConnError::Config(format!("channel id {:#04x} declared twice", d.id)));
            }
        }
        if channels.is_empty() {
            return Err(MConnError::Config("at least one channel is needed".into()));
        }
        let send = channels
            .iter()
            .map(|d| SendChannel {
                desc: d.clone(),
                queue: VecDeque::new(),
                offset: 0,
                queued_bytes: 0,
                credit: 0,
                finish: 0,
                bytes_sent: 0,
                msgs_sent: 0,
            })
            .collect();
        let recv = channels
            .iter()
            .map(|d| RecvChannel {
                partial: Vec::new(),
                partial_cost: 0,
                partial_len: 0,
                in_partial: false,
                window: d.recv_buffer_capacity as u64,
                consumed: 0,
                grant: d.recv_buffer_capacity as u64,
                pending_msgs: 0,
                pending_bytes: 0,
                bytes_recv: 0,
                msgs_recv: 0,
            })
            .collect();
        let send_limit = RateLimit::new(config.send_rate, config.rate_burst(), now);
        let control_base = f64::from(config.control_burst);
        Ok(MConnCore {
            next_ping: now + config.ping_interval,
            config,
            index,
            send,
            recv,
            vtime: 0,
            pong_pending: false,
            ping_sent: None,
            last_rtt: None,
            min_rtt: None,
            queued_total: 0,
            shared: None,
            control_base,
            control_earned: 0,
            control_refilled: now,
            send_limit,
            rate_blocked_until: None,
            unacked: 0,
            to_ack: 0,
            ack_owed: 0,
            freed: Vec::new(),
            send_meter: RateMeter::new(now),
            recv_meter: RateMeter::new(now),
            closing: false,
            max_recv_packet: channels
                .iter()
                .map(|d| d.recv_message_capacity)
                .max()
                .unwrap_or(0)
                .max(1024)
                + PACKET_OVERHEAD,
            stitch: BytesMut::new(),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &MConnConfig {
        &self.config
    }

    /// Index of channel `id` in the descriptor list, if declared.
    pub fn channel_index(&self, id: u8) -> Option<usize> {
        self.index[id as usize].map(usize::from)
    }

    /// Number of channels.
    pub fn channel_count(&self) -> usize {
        self.send.len()
    }

    /// The descriptor of the channel at `index`.
    pub fn descriptor(&self, index: usize) -> &ChannelDescriptor {
        &self.send[index].desc
    }

    // ----------------------------------------------------------------- send

    /// Queues `msg` on channel `id`.
    ///
    /// # Errors
    /// [`PushError::UnknownChannel`]; [`PushError::Full`] (giving the
    /// message back) when `send_queue_capacity` messages are queued or the
    /// message does not fit the channel's `send_queue_bytes` or the
    /// connection's `max_send_queue_bytes` (an empty queue takes one larger
    /// message while the connection is under its budget).
    pub fn push(&mut self, id: u8, msg: Bytes) -> Result<(), PushError> {
        self.push_from(id, msg, None)
    }

    /// As [`MConnCore::push`], charging the node-wide budget from `held`
    /// first (bytes reserved while the message was built), so a built
    /// answer never sits outside the budget while it waits for room.
    ///
    /// # Errors
    /// As [`MConnCore::push`]; `held` keeps its bytes on an error.
    pub fn push_from(
        &mut self,
        id: u8,
        msg: Bytes,
        held: Option<&mut super::Reservation>,
    ) -> Result<(), PushError> {
        let Some(i) = self.channel_index(id) else {
            return Err(PushError::UnknownChannel(id));
        };
        if self.closing {
            return Err(PushError::Closing(msg));
        }
        let max = self.send[i].desc.recv_message_capacity;
        if msg.len() > max {
            return Err(PushError::TooLarge { len: msg.len(), max });
        }
        let ch = &self.send[i];
        let count_ok = ch.queue.len() < ch.desc.send_queue_capacity;
        let overshoot = ch.queue.is_empty() && self.queued_total < self.config.max_send_queue_bytes;
        let own = self.own_room(i);
        if !count_ok || (msg.len() > own && !overshoot) {
            return Err(PushError::Full(msg));
        }
        if let Some(b) = &self.shared {
            let (moved, held) = match held {
                Some(r) => (r.hand_over(msg.len()), Some(r)),
                None => (0, None),
            };
            if moved < msg.len() && !b.try_take(msg.len() - moved) {
                if let Some(r) = held {
                    r.take_back(moved);
                }
                return Err(PushError::Full(msg));
            }
        }
        let ch = &mut self.send[i];
        ch.queued_bytes += msg.len();
        self.queued_total += msg.len();
        ch.queue.push_back(msg);
        Ok(())
    }

    /// Whether channel `index` can take another message now.
    pub fn has_room(&self, index: usize) -> bool {
        self.room(index) > 0
    }

    /// Bytes channel `index` has left in its budgets now (0: none): the
    /// least of what is left of its `send_queue_bytes` and of the
    /// connection's `max_send_queue_bytes`. A reactor builds an answer of
    /// at most this. ([`MConnCore::push`] also takes one larger message
    /// into an empty queue while the connection is under its budget, so
    /// what a peer makes us hold is at most `max_send_queue_bytes` plus one
    /// message.)
    pub fn room(&self, index: usize) -> usize {
        let own = self.own_room(index);
        match &self.shared {
            Some(b) => own.min(b.left()),
            None => own,
        }
    }

    /// As [`MConnCore::room`], without the shared budget.
    fn own_room(&self, index: usize) -> usize {
        let ch = &self.send[index];
        if ch.queue.len() >= ch.desc.send_queue_capacity {
            return 0;
        }
        let in_channel = ch.desc.send_queue_bytes.saturating_sub(ch.queued_bytes);
        let in_connection = self.config.max_send_queue_bytes.saturating_sub(self.queued_total);
        in_channel.min(in_connection)
    }

    /// Whether the node-wide budget, not this connection's own budgets, is
    /// what keeps channel `index` from taking a message now.
    pub fn limited_by_shared(&self, index: usize) -> bool {
        self.shared.as_ref().is_some_and(|b| b.left() < self.own_room(index).max(1))
    }

    /// Drops every queued message (the connection is closed), giving the
    /// bytes back to the shared budget; later pushes are refused.
    pub fn drop_queued(&mut self) {
        self.closing = true;
        for ch in &mut self.send {
            ch.queue.clear();
            ch.queued_bytes = 0;
            ch.offset = 0;
        }
        if let Some(b) = &self.shared {
            b.give(self.queued_total);
        }
        self.queued_total = 0;
    }

    /// Counts these queues against `budget` too (a node-wide budget shared
    /// by many connections). Call before queuing anything.
    pub fn set_shared_budget(&mut self, budget: super::SharedBudget) {
        self.shared = Some(budget);
    }

    /// Bytes waiting in all send queues.
    pub fn queued_bytes(&self) -> usize {
        self.queued_total
    }

    /// Channels on which a queued message finished sending since the last
    /// call (their queues have room again).
    pub fn take_freed(&mut self) -> impl Iterator<Item = usize> + '_ {
        self.freed.drain(..)
    }

    /// Marks the connection as closing: [`MConnCore::is_drained`] tells when
    /// everything queued has been written (graceful `flush_stop`).
    pub fn start_closing(&mut self) {
        self.closing = true;
    }

    /// Whether [`MConnCore::start_closing`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// True when no message is queued or half sent and no control packet
    /// is owed.
    pub fn is_drained(&self) -> bool {
        !self.pong_pending && self.ack_owed == 0 && self.send.iter().all(|c| c.queue.is_empty())
    }

    /// Length of the next chunk channel `i` may send now, if any. A chunk
    /// is always the full `min(remaining, max_packet_msg_payload_size)`:
    /// it waits for enough credit rather than being cut short, so a
    /// message's credit cost is fixed (`len + 64 × chunks`) and always fits
    /// a window the receiver validated for it.
    fn chunk_len(&self, i: usize) -> Option<usize> {
        let ch = &self.send[i];
        let msg = ch.queue.front()?;
        let len = (msg.len() - ch.offset).min(self.config.max_packet_msg_payload_size);
        (ch.credit >= len as u64 + PACKET_MSG_COST).then_some(len)
    }

    fn pick(&self) -> Option<(usize, usize, u128)> {
        let mut best: Option<(usize, usize, u128)> = None;
        for i in 0..self.send.len() {
            let Some(len) = self.chunk_len(i) else { continue };
            let start = self.vtime.max(self.send[i].finish);
            let better = match best {
                None => true,
                Some((j, _, s)) => {
                    start < s
                        || (start == s && self.send[i].desc.priority > self.send[j].desc.priority)
                }
            };
            if better {
                best = Some((i, len, start));
            }
        }
        best
    }

    /// Writes packets into `out` (length-delimited `Packet`s, the plaintext
    /// stream) until about `limit` bytes were added or nothing more may be
    /// sent now. Control packets (pong, ping when due, credit grants, ack)
    /// go first and bypass the send-rate limit and the in-flight window; data packets are chosen by the
    /// scheduler. Returns the number of bytes added.
    pub fn fill(&mut self, now: Instant, out: &mut BytesMut, limit: usize) -> usize {
        self.fill_with_cuts(now, out, limit, &mut Vec::new())
    }

    /// As [`MConnCore::fill`], also pushing to `cuts` the offset in `out`
    /// where each packet ends, so the writer can cut Noise frames at packet
    /// boundaries ([`crate::secret::SecretWriter::write_stream`]).
    pub fn fill_with_cuts(
        &mut self,
        now: Instant,
        out: &mut BytesMut,
        limit: usize,
        cuts: &mut Vec<usize>,
    ) -> usize {
        let start_len = out.len();
        if self.pong_pending {
            encode(out, Sum::Pong(PacketPong {}));
            cuts.push(out.len());
            self.pong_pending = false;
        }
        if self.ping_sent.is_none() && now >= self.next_ping {
            encode(out, Sum::Ping(PacketPing {}));
            cuts.push(out.len());
            self.ping_sent = Some(now);
            self.next_ping = now + self.config.ping_interval;
        }
        for (i, ch) in self.recv.iter_mut().enumerate() {
            if ch.grant > 0 {
                let channel_id = self.send[i].desc.id as i32;
                encode(out, Sum::Credit(PacketCredit { channel_id, bytes: ch.grant }));
                cuts.push(out.len());
                ch.grant = 0;
            }
        }
        if self.ack_owed > 0 {
            encode(out, Sum::Ack(PacketAck { bytes: self.ack_owed }));
            cuts.push(out.len());
            self.ack_owed = 0;
        }
        if let Some(t) = self.rate_blocked_until {
            if now < t {
                return self.account_sent(now, out.len() - start_len);
            }
            self.rate_blocked_until = None;
        }
        while out.len() - start_len < limit && !self.window_full() {
            let Some((i, len, start)) = self.pick() else { break };
            if let Some(rl) = self.send_limit.as_mut() {
                if let Err(until) = rl.try_take(now, len + PACKET_OVERHEAD) {
                    self.rate_blocked_until = Some(until);
                    break;
                }
            }
            let cost = len as u64 + PACKET_MSG_COST;
            let ch = &mut self.send[i];
            let msg = ch.queue.front().expect("pick returns channels with a message");
            let eof = ch.offset + len == msg.len();
            let data = msg.slice(ch.offset..ch.offset + len);
            let before = out.len();
            encode(out, Sum::Msg(PacketMsg { channel_id: ch.desc.id as i32, eof, data }));
            // The peer may answer this packet with an ack or a credit grant.
            self.control_earned = (self.control_earned + 2).min(CONTROL_EARNED_MAX);
            cuts.push(out.len());
            self.unacked += (out.len() - before) as u64;
            ch.credit -= cost;
            ch.finish = start + (cost as u128 * VT_SCALE) / ch.desc.priority as u128;
            ch.bytes_sent += len as u64;
            self.vtime = start;
            if eof {
                let msg = ch.queue.pop_front().expect("front exists");
                ch.queued_bytes -= msg.len();
                self.queued_total -= msg.len();
                if let Some(b) = &self.shared {
                    b.give(msg.len());
                }
                ch.offset = 0;
                ch.msgs_sent += 1;
                self.freed.push(i);
            } else {
                ch.offset += len;
            }
        }
        self.account_sent(now, out.len() - start_len)
    }

    /// Whether `max_unacked_bytes` of data are in flight.
    fn window_full(&self) -> bool {
        let max = self.config.max_unacked_bytes;
        max != 0 && self.unacked >= max
    }

    fn account_sent(&mut self, now: Instant, n: usize) -> usize {
        self.send_meter.add(now, n);
        n
    }

    /// Whether [`MConnCore::fill`] would write anything at `now`.
    pub fn wants_to_send(&self, now: Instant) -> bool {
        if self.pong_pending
            || self.ack_owed > 0
            || (self.ping_sent.is_none() && now >= self.next_ping)
            || self.recv.iter().any(|c| c.grant > 0)
        {
            return true;
        }
        if matches!(self.rate_blocked_until, Some(t) if now < t) || self.window_full() {
            return false;
        }
        (0..self.send.len()).any(|i| self.chunk_len(i).is_some())
    }

    /// The next instant at which [`MConnCore::handle_timeout`] or
    /// [`MConnCore::fill`] has something to do: a ping, the pong deadline,
    /// or the end of a send-rate wait.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = match self.ping_sent {
            Some(sent) => sent + self.config.pong_timeout,
            None => self.next_ping,
        };
        if let Some(r) = self.rate_blocked_until {
            t = t.min(r);
        }
        t
    }

    /// The instant past which a writer stuck on a full socket should give
    /// up: the pong deadline of the outstanding ping, or `pong_timeout`
    /// after the ping that could not be sent.
    pub fn stall_deadline(&self) -> Instant {
        self.ping_sent.unwrap_or(self.next_ping) + self.config.pong_timeout
    }

    /// Checks the keepalive timers.
    ///
    /// # Errors
    /// [`MConnError::PongTimeout`] when a ping has gone unanswered for
    /// `pong_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), MConnError> {
        if let Some(sent) = self.ping_sent {
            if now >= sent + self.config.pong_timeout {
                return Err(MConnError::PongTimeout(self.config.pong_timeout));
            }
        }
        self.recv_meter.roll(now);
        self.send_meter.roll(now);
        Ok(())
    }

    // -------------------------------------------------------------- receive

    /// Decodes every complete packet at the front of `input` (the decrypted
    /// byte stream), leaving a partial packet in place. Whole messages are
    /// appended to `out`; pings, pongs and credit are handled inside.
    /// Returns true if the core now wants to send (a pong or a grant is
    /// owed, or new credit lets data go).
    ///
    /// # Errors
    /// Every peer-facing violation closes the connection:
    /// [`MConnError::PacketTooLarge`], [`MConnError::Malformed`],
    /// [`MConnError::EmptyPacket`], [`MConnError::UnknownChannel`],
    /// [`MConnError::MessageTooLarge`], [`MConnError::CreditExceeded`].
    pub fn receive(
        &mut self,
        now: Instant,
        input: &mut BytesMut,
        out: &mut Vec<Delivery>,
    ) -> Result<bool, MConnError> {
        let mut wake = false;
        while let Some((prefix, len)) = self.next_packet(input)? {
            if input.len() < prefix + len {
                input.reserve(prefix + len - input.len());
                break;
            }
            input.advance(prefix);
            let packet = input.split_to(len).freeze();
            wake |= self.handle_packet(now, prefix + len, packet, out)?;
        }
        Ok(wake || self.control_owed())
    }

    /// As [`MConnCore::receive`], for one decrypted Noise frame. When the
    /// frame holds whole packets (Plexus senders cut frames at packet ends),
    /// packets are decoded straight from it without a copy; a packet split
    /// across frames is stitched together in an internal buffer.
    ///
    /// # Errors
    /// As [`MConnCore::receive`].
    pub fn receive_frame(
        &mut self,
        now: Instant,
        mut frame: Bytes,
        out: &mut Vec<Delivery>,
    ) -> Result<bool, MConnError> {
        if frame.is_empty() {
            // An empty frame carries nothing: it costs a control token.
            self.take_control(now)?;
            return Ok(self.control_owed());
        }
        if !self.stitch.is_empty() {
            let mut stitch = std::mem::take(&mut self.stitch);
            stitch.extend_from_slice(&frame);
            let res = self.receive(now, &mut stitch, out);
            self.stitch = stitch;
            return res;
        }
        let mut wake = false;
        while let Some((prefix, len)) = self.next_packet(&frame)? {
            if frame.len() < prefix + len {
                break;
            }
            frame.advance(prefix);
            let packet = frame.split_to(len);
            wake |= self.handle_packet(now, prefix + len, packet, out)?;
        }
        if !frame.is_empty() {
            self.stitch.extend_from_slice(&frame);
        }
        Ok(wake || self.control_owed())
    }

    /// The length prefix at the front of `input`, checked against the
    /// largest packet accepted.
    fn next_packet(&self, input: &[u8]) -> Result<Option<(usize, usize)>, MConnError> {
        let Some((prefix, len)) = peek_length(input)? else { return Ok(None) };
        let max = self.max_recv_packet;
        if len > max {
            return Err(MConnError::PacketTooLarge { len, max });
        }
        Ok(Some((prefix, len)))
    }

    /// Spends one control token (earned ones first).
    ///
    /// # Errors
    /// [`MConnError::ControlFlood`] when none is left.
    fn take_control(&mut self, now: Instant) -> Result<(), MConnError> {
        if self.control_earned > 0 {
            self.control_earned -= 1;
            return Ok(());
        }
        let rate = f64::from(self.config.control_rate);
        let burst = f64::from(self.config.control_burst);
        let dt = now.saturating_duration_since(self.control_refilled).as_secs_f64();
        self.control_base = (self.control_base + dt * rate).min(burst);
        self.control_refilled = now;
        if self.control_base < 1.0 {
            return Err(MConnError::ControlFlood { rate: self.config.control_rate });
        }
        self.control_base -= 1.0;
        Ok(())
    }

    fn control_owed(&self) -> bool {
        self.ack_owed > 0 || self.recv.iter().any(|c| c.grant > 0)
    }

    /// Handles one packet of `wire_len` bytes (prefix included). Returns
    /// true if the writer has something new to do.
    fn handle_packet(
        &mut self,
        now: Instant,
        wire_len: usize,
        bytes: Bytes,
        out: &mut Vec<Delivery>,
    ) -> Result<bool, MConnError> {
        self.recv_meter.add(now, wire_len);
        let packet = Packet::decode(bytes).map_err(|e| MConnError::Malformed(e.to_string()))?;
        let sum = packet.sum.ok_or(MConnError::EmptyPacket)?;
        if !matches!(sum, Sum::Msg(_)) {
            self.take_control(now)?;
        }
        match sum {
            Sum::Ping(_) => {
                self.pong_pending = true;
                return Ok(true);
            }
            Sum::Pong(_) => {
                // An unsolicited pong is harmless; it is ignored.
                if let Some(sent) = self.ping_sent.take() {
                    let rtt = now.saturating_duration_since(sent);
                    self.last_rtt = Some(rtt);
                    self.min_rtt = Some(self.min_rtt.map_or(rtt, |m| m.min(rtt)));
                }
            }
            Sum::Credit(c) => {
                // Credit for a channel only the peer declared is harmless:
                // we never send on it.
                let id = u8::try_from(c.channel_id)
                    .map_err(|_| MConnError::UnknownChannel(c.channel_id))?;
                if let Some(i) = self.channel_index(id) {
                    let ch = &mut self.send[i];
                    ch.credit = ch.credit.saturating_add(c.bytes);
                    return Ok(true);
                }
            }
            Sum::Ack(a) => {
                if a.bytes > self.unacked {
                    return Err(MConnError::Malformed(format!(
                        "ack of {} bytes exceeds the {} bytes in flight",
                        a.bytes, self.unacked
                    )));
                }
                self.unacked -= a.bytes;
                return Ok(true);
            }
            Sum::Msg(m) => {
                self.to_ack += wire_len as u64;
                if self.to_ack >= ACK_EVERY {
                    self.ack_owed += self.to_ack;
                    self.to_ack = 0;
                }
                if let Some(d) = self.receive_msg(m)? {
                    out.push(d);
                }
            }
        }
        Ok(false)
    }

    fn lookup(&self, channel_id: i32) -> Result<usize, MConnError> {
        u8::try_from(channel_id)
            .ok()
            .and_then(|id| self.channel_index(id))
            .ok_or(MConnError::UnknownChannel(channel_id))
    }

    fn receive_msg(&mut self, m: PacketMsg) -> Result<Option<Delivery>, MConnError> {
        let i = self.lookup(m.channel_id)?;
        let cap = self.send[i].desc.recv_message_capacity;
        let ch = &mut self.recv[i];
        let cost = m.data.len() as u64 + PACKET_MSG_COST;
        if cost > ch.window {
            return Err(MConnError::CreditExceeded {
                channel: m.channel_id as u8,
                cost,
                window: ch.window,
            });
        }
        ch.window -= cost;
        let len = ch.partial_len + m.data.len();
        if len > cap {
            return Err(MConnError::MessageTooLarge { channel: m.channel_id as u8, len, max: cap });
        }
        ch.bytes_recv += m.data.len() as u64;
        if !m.eof {
            ch.partial.push(detach_small(m.data));
            ch.partial_len = len;
            ch.partial_cost += cost;
            ch.in_partial = true;
            self.maybe_grant(i);
            return Ok(None);
        }
        let msg = if ch.in_partial {
            let mut whole = BytesMut::with_capacity(len);
            for chunk in ch.partial.drain(..) {
                whole.extend_from_slice(&chunk);
            }
            whole.extend_from_slice(&m.data);
            whole.freeze()
        } else {
            detach_small(m.data)
        };
        let cost = ch.partial_cost + cost;
        ch.partial_len = 0;
        ch.partial_cost = 0;
        ch.in_partial = false;
        ch.msgs_recv += 1;
        ch.pending_msgs += 1;
        ch.pending_bytes += msg.len();
        Ok(Some(Delivery { index: i, msg, cost }))
    }

    /// The application took a message of `len` bytes that used `cost`
    /// credit from channel `index` (or it was discarded because nobody
    /// listens). Returns true if a grant is now owed (see
    /// [`MConnCore::maybe_grant`]).
    pub fn consumed(&mut self, index: usize, len: usize, cost: u64) -> bool {
        let ch = &mut self.recv[index];
        ch.pending_msgs = ch.pending_msgs.saturating_sub(1);
        ch.pending_bytes = ch.pending_bytes.saturating_sub(len);
        ch.consumed += cost;
        self.maybe_grant(index)
    }

    /// Grants consumed credit back to the peer once a quarter of the window
    /// has been consumed, or as soon as the application has taken every
    /// delivered message while the peer could otherwise be stuck: a message
    /// is half received, or the peer's remaining credit is below one chunk
    /// of the largest message (`recv_message_capacity + 64`). Chatty
    /// traffic thus costs one grant per quarter window, and no sender ever
    /// waits for credit that an idle receiver holds back.
    fn maybe_grant(&mut self, index: usize) -> bool {
        let desc = &self.send[index].desc;
        let window = desc.recv_buffer_capacity as u64;
        let one_chunk = desc.recv_message_capacity as u64 + PACKET_MSG_COST;
        let ch = &mut self.recv[index];
        let idle = ch.pending_msgs == 0 && (ch.in_partial || ch.window < one_chunk);
        if ch.consumed > 0 && (ch.consumed >= (window / 4).max(1) || idle) {
            ch.window += ch.consumed;
            ch.grant += ch.consumed;
            ch.consumed = 0;
            true
        } else {
            false
        }
    }

    // ---------------------------------------------------------------- stats

    /// A snapshot of per-channel and connection statistics at `now`.
    pub fn stats(&self, now: Instant) -> ConnectionStats {
        let mut send_meter = self.send_meter;
        let mut recv_meter = self.recv_meter;
        send_meter.roll(now);
        recv_meter.roll(now);
        ConnectionStats {
            send_rate: send_meter.rate,
            recv_rate: recv_meter.rate,
            last_rtt: self.last_rtt,
            min_rtt: self.min_rtt,
            send_queue_bytes: self.queued_total,
            channels: self
                .send
                .iter()
                .zip(&self.recv)
                .map(|(s, r)| ChannelStats {
                    id: s.desc.id,
                    bytes_sent: s.bytes_sent,
                    msgs_sent: s.msgs_sent,
                    bytes_recv: r.bytes_recv,
                    msgs_recv: r.msgs_recv,
                    send_queue_len: s.queue.len(),
                    send_queue_bytes: s.queued_bytes,
                    recv_queue_len: r.pending_msgs,
                    recv_queue_bytes: r.pending_bytes,
                    send_credit: s.credit,
                })
                .collect(),
        }
    }
}

/// Data below [`ZERO_COPY_MIN`] is copied out of the read buffer: a slice
/// would keep the whole buffer alive for a few bytes (of credit) as long as
/// the chunk or message is held.
fn detach_small(data: Bytes) -> Bytes {
    if data.len() < ZERO_COPY_MIN {
        Bytes::copy_from_slice(&data)
    } else {
        data
    }
}

fn encode(out: &mut BytesMut, sum: Sum) {
    Packet { sum: Some(sum) }.encode_length_delimited(out).expect("BytesMut grows as needed");
}

/// Reads the uvarint length prefix at the front of `input` without
/// consuming it: `Some((prefix_len, value))`, or `None` if incomplete.
fn peek_length(input: &[u8]) -> Result<Option<(usize, usize)>, MConnError> {
    let mut value: u64 = 0;
    for (i, &b) in input.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((i + 1, usize::try_from(value).unwrap_or(usize::MAX))));
        }
        // Any packet we accept has a length prefix of at most 5 bytes.
        if i >= 4 {
            return Err(MConnError::Malformed("packet length prefix longer than 5 bytes".into()));
        }
    }
    Ok(None)
}

impl Drop for MConnCore {
    /// What is still queued goes back to the shared budget.
    fn drop(&mut self) {
        if let Some(b) = &self.shared {
            b.give(self.queued_total);
        }
    }
}

#[cfg(test)]
mod tests;
