//! The tokio driver of [`MConnCore`]: a reader task and a writer task per
//! connection, a send handle and per-channel receivers.

use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::core::{Delivery, MConnCore, PushError};
use super::{ChannelDescriptor, ConnectionStats, MConnConfig, MConnError};
use crate::key::NodeId;
use crate::rate::RateLimit;
use crate::secret::{SecretConnection, SecretError, SecretReader, SecretWriter};

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Why [`MConnection::send`] failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// No channel with this id was declared on this connection.
    #[error("unknown channel id {0:#04x}")]
    UnknownChannel(u8),
    /// The message exceeds the channel's `recv_message_capacity`: a peer
    /// declaring the same channel would refuse it, and it could never fit
    /// the peer's window.
    #[error("message of {len} bytes exceeds the channel's capacity of {max} bytes")]
    TooLarge {
        /// Message length, bytes.
        len: usize,
        /// The channel's `recv_message_capacity`, bytes.
        max: usize,
    },
    /// The queue stayed full for `send_timeout`.
    #[error("send queue full for the whole send timeout")]
    Timeout,
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
}

/// Why [`MConnection::try_send`] failed. `Full` gives the message back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrySendError {
    /// No channel with this id was declared on this connection.
    #[error("unknown channel id {0:#04x}")]
    UnknownChannel(u8),
    /// The message exceeds the channel's `recv_message_capacity`.
    #[error("message of {len} bytes exceeds the channel's capacity of {max} bytes")]
    TooLarge {
        /// Message length, bytes.
        len: usize,
        /// The channel's `recv_message_capacity`, bytes.
        max: usize,
    },
    /// The channel's send queue is full.
    #[error("send queue full")]
    Full(Bytes),
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
}

/// One try of [`MConnection::retry`]: finished, or wait for room on a
/// channel (by index).
enum Attempt<T> {
    Done(Result<T, SendError>),
    Wait(usize),
}

struct Shared {
    core: Mutex<MConnCore>,
    writer_wake: Notify,
    room: Vec<Notify>,
    cancel: CancellationToken,
    reason: OnceLock<MConnError>,
    remote_id: NodeId,
    /// The node-wide budget the send queues count against, if any.
    budget: Option<super::SharedBudget>,
    /// Bytes of the batch the writer is writing: taken out of the queues,
    /// still held until the socket takes them (a peer that reads slowly
    /// holds them), so counted with the queued bytes and in the budget.
    writing: AtomicUsize,
    /// Bytes of the node-wide budget reserved for this connection's
    /// answers being built (`reserve`, `reserve_wait`).
    held: Arc<AtomicUsize>,
}

impl Shared {
    fn close(&self, reason: MConnError) {
        let first = self.reason.set(reason.clone()).is_ok();
        if first {
            tracing::debug!(peer = %self.remote_id, %reason, "mconnection closed");
        }
        self.cancel.cancel();
        // Nothing more will be sent: what is queued goes (and gives its
        // bytes back to a shared budget at once).
        self.core.lock().drop_queued();
        self.writing.store(0, Ordering::Relaxed);
        for n in &self.room {
            n.notify_waiters();
        }
    }

    /// Closes with the reason a task ended: its error, or `Stopped`.
    fn close_with(&self, ended: Result<(), MConnError>) {
        self.close(ended.err().unwrap_or(MConnError::Stopped));
    }

    fn consumed(&self, d: &Delivery) {
        if self.core.lock().consumed(d.index, d.msg.len(), d.cost) {
            self.writer_wake.notify_one();
        }
    }
}

/// A running multiplexed connection (CometBFT's `MConnection`).
///
/// Made by [`MConnection::new`] from an established
/// [`SecretConnection`]; it spawns a reader and a writer task on the current
/// tokio runtime. Sending goes through this handle; each channel's messages
/// arrive on its own [`ChannelReceiver`], so a slow consumer of one channel
/// never holds up another (credit-based flow control, see
/// [`super::core`]). Dropping the handle stops the connection at once.
pub struct MConnection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MConnection").field("remote_id", &self.shared.remote_id).finish()
    }
}

/// Receives the whole messages of one channel, in order.
///
/// Taking a message returns its credit to the peer; while the application
/// does not take messages, the peer can send at most the channel's
/// `recv_buffer_capacity` more.
pub struct ChannelReceiver {
    id: u8,
    rx: mpsc::UnboundedReceiver<Delivery>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ChannelReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelReceiver").field("id", &self.id).finish()
    }
}

impl ChannelReceiver {
    /// The channel id.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The next whole message, or `None` once the connection has closed and
    /// every message received before has been taken.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let d = self.rx.recv().await?;
        self.shared.consumed(&d);
        Some(d.msg)
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Bytes> {
        let d = self.rx.try_recv().ok()?;
        self.shared.consumed(&d);
        Some(d.msg)
    }
}

impl Drop for ChannelReceiver {
    /// Messages still queued are discarded and their credit returned, so
    /// the peer is not blocked by a receiver nobody reads.
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(d) = self.rx.try_recv() {
            self.shared.consumed(&d);
        }
    }
}

impl MConnection {
    /// Starts an MConnection over `conn` with `channels` (in priority-free
    /// declaration order; receivers come back in the same order).
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`MConnError::Config`] for an invalid config or descriptor list.
    pub fn new<S>(
        conn: SecretConnection<S>,
        channels: &[ChannelDescriptor],
        config: MConnConfig,
    ) -> Result<(MConnection, Vec<ChannelReceiver>), MConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::with_budget(conn, channels, config, None)
    }

    /// As [`MConnection::new`], with the send queues also counted against
    /// `budget`, a byte budget shared with other connections (the switch's
    /// node-wide memory budget for peers).
    ///
    /// # Errors
    /// [`MConnError::Config`] for an invalid config or descriptor list.
    pub fn with_budget<S>(
        conn: SecretConnection<S>,
        channels: &[ChannelDescriptor],
        config: MConnConfig,
        budget: Option<super::SharedBudget>,
    ) -> Result<(MConnection, Vec<ChannelReceiver>), MConnError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let t = now();
        let recv_limit = RateLimit::new(config.recv_rate, config.rate_burst(), t);
        let batch = config.write_batch_size;
        let throttle = config.flush_throttle;
        let mut core = MConnCore::new(channels, config, t)?;
        if let Some(b) = &budget {
            core.set_shared_budget(b.clone());
        }
        let remote_id = conn.remote_id();
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            writer_wake: Notify::new(),
            room: channels.iter().map(|_| Notify::new()).collect(),
            cancel: CancellationToken::new(),
            reason: OnceLock::new(),
            remote_id,
            budget,
            writing: AtomicUsize::new(0),
            held: Arc::new(AtomicUsize::new(0)),
        });
        let mut senders = Vec::with_capacity(channels.len());
        let mut receivers = Vec::with_capacity(channels.len());
        for d in channels {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            receivers.push(ChannelReceiver { id: d.id, rx, shared: shared.clone() });
        }
        let (reader, writer) = conn.split();
        let s = shared.clone();
        tokio::spawn(
            async move { s.close_with(reader_loop(&s, reader, senders, recv_limit).await) },
        );
        let s = shared.clone();
        tokio::spawn(async move { s.close_with(writer_loop(&s, writer, batch, throttle).await) });
        Ok((MConnection { shared }, receivers))
    }

    /// The authenticated id of the remote node.
    pub fn remote_id(&self) -> NodeId {
        self.shared.remote_id
    }

    /// Queues `msg` on channel `ch`, waiting up to `send_timeout` for room.
    ///
    /// # Errors
    /// [`SendError::UnknownChannel`], [`SendError::TooLarge`],
    /// [`SendError::Timeout`], [`SendError::Closed`].
    pub async fn send(&self, ch: u8, msg: impl Into<Bytes>) -> Result<(), SendError> {
        self.send_from(ch, msg.into(), None).await
    }

    /// As [`MConnection::send`], charging the node-wide budget from
    /// `held` first (the bytes reserved while the message was built): the
    /// message is counted from the moment it exists until it is written.
    ///
    /// # Errors
    /// As [`MConnection::send`].
    pub async fn send_reserved(
        &self,
        ch: u8,
        msg: impl Into<Bytes>,
        held: &mut super::Reservation,
    ) -> Result<(), SendError> {
        self.send_from(ch, msg.into(), Some(held)).await
    }

    async fn send_from(
        &self,
        ch: u8,
        msg: Bytes,
        mut held: Option<&mut super::Reservation>,
    ) -> Result<(), SendError> {
        let mut msg = Some(msg);
        self.retry(|core| {
            match core.push_from(ch, msg.take().expect("kept while waiting"), held.as_deref_mut()) {
                Ok(()) => {
                    self.shared.writer_wake.notify_one();
                    Attempt::Done(Ok(()))
                }
                Err(PushError::UnknownChannel(id)) => {
                    Attempt::Done(Err(SendError::UnknownChannel(id)))
                }
                Err(PushError::Closing(_)) => Attempt::Done(Err(SendError::Closed)),
                Err(PushError::TooLarge { len, max }) => {
                    Attempt::Done(Err(SendError::TooLarge { len, max }))
                }
                Err(PushError::Full(m)) => {
                    msg = Some(m);
                    Attempt::Wait(core.channel_index(ch).expect("push found the channel"))
                }
            }
        })
        .await
    }

    /// Runs `attempt` under the core lock until it is done, waiting between
    /// tries for room on the channel it names (and, when the node-wide
    /// budget is what blocks it, for bytes given back), at most
    /// `send_timeout`.
    async fn retry<T>(
        &self,
        mut attempt: impl FnMut(&mut MConnCore) -> Attempt<T>,
    ) -> Result<T, SendError> {
        let timeout = self.shared.core.lock().config().send_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.cancel.is_cancelled() {
                return Err(SendError::Closed);
            }
            // Registered before the check, so bytes freed in between wake us.
            let mut freed = self.shared.budget.as_ref().map(|b| Box::pin(b.freed()));
            if let Some(f) = freed.as_mut() {
                f.as_mut().enable();
            }
            let mut notified = {
                let mut core = self.shared.core.lock();
                let i = match attempt(&mut core) {
                    Attempt::Done(r) => return r,
                    Attempt::Wait(i) => i,
                };
                if !core.limited_by_shared(i) {
                    // Only this connection's own queue can help.
                    freed = None;
                }
                let mut n = Box::pin(self.shared.room[i].notified());
                // Register before unlocking so a wake-up in between is kept.
                n.as_mut().enable();
                n
            };
            tokio::select! {
                _ = notified.as_mut() => {}
                _ = async { freed.as_mut().expect("guarded").as_mut().await }, if freed.is_some() => {}
                _ = self.shared.cancel.cancelled() => return Err(SendError::Closed),
                _ = tokio::time::sleep_until(deadline) => return Err(SendError::Timeout),
            }
        }
    }

    /// Queues `msg` on channel `ch` if there is room now.
    ///
    /// # Errors
    /// [`TrySendError::Full`] (with the message), [`TrySendError::UnknownChannel`],
    /// [`TrySendError::Closed`].
    pub fn try_send(&self, ch: u8, msg: impl Into<Bytes>) -> Result<(), TrySendError> {
        if self.shared.cancel.is_cancelled() {
            return Err(TrySendError::Closed);
        }
        let res = self.shared.core.lock().push(ch, msg.into());
        match res {
            Ok(()) => {
                self.shared.writer_wake.notify_one();
                Ok(())
            }
            Err(PushError::UnknownChannel(id)) => Err(TrySendError::UnknownChannel(id)),
            Err(PushError::Full(m)) => Err(TrySendError::Full(m)),
            Err(PushError::Closing(_)) => Err(TrySendError::Closed),
            Err(PushError::TooLarge { len, max }) => Err(TrySendError::TooLarge { len, max }),
        }
    }

    /// The largest message channel `ch` takes now, bytes (0: none, or an
    /// unknown channel): what is left of the channel's `send_queue_bytes`
    /// and the connection's `max_send_queue_bytes`. A reactor answering a
    /// request builds at most this much.
    pub fn room(&self, ch: u8) -> usize {
        let core = self.shared.core.lock();
        core.channel_index(ch).map_or(0, |i| core.room(i))
    }

    /// Holds `n` bytes of the shared budget while an answer is built
    /// ([`SharedBudget::reserve`]); `None` if they do not fit now. Without
    /// a shared budget, an empty reservation.
    pub fn reserve(&self, n: usize) -> Option<super::Reservation> {
        match &self.shared.budget {
            Some(b) => b.reserve(n).map(|r| r.owned_by(self.shared.held.clone())),
            None => Some(super::Reservation::none()),
        }
    }

    /// Bytes of the node-wide budget reserved now for answers to this
    /// peer that are being built or wait for room (see
    /// [`MConnection::reserve`]).
    pub fn held_bytes(&self) -> usize {
        self.shared.held.load(Ordering::Relaxed)
    }

    /// As [`MConnection::reserve`], waiting for bytes to be given back, at
    /// most `send_timeout`.
    ///
    /// # Errors
    /// [`SendError::Timeout`], [`SendError::Closed`].
    pub async fn reserve_wait(&self, n: usize) -> Result<super::Reservation, SendError> {
        let Some(b) = self.shared.budget.clone() else { return Ok(super::Reservation::none()) };
        let timeout = self.shared.core.lock().config().send_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let freed = b.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(r) = b.reserve(n) {
                return Ok(r.owned_by(self.shared.held.clone()));
            }
            tokio::select! {
                _ = freed => {}
                _ = self.shared.cancel.cancelled() => return Err(SendError::Closed),
                _ = tokio::time::sleep_until(deadline) => return Err(SendError::Timeout),
            }
        }
    }

    /// Bytes waiting in all send queues of the connection.
    /// With the batch being written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.shared.core.lock().queued_bytes() + self.shared.writing.load(Ordering::Relaxed)
    }

    /// Waits until channel `ch` has room for a message, at most
    /// `send_timeout`.
    ///
    /// # Errors
    /// [`SendError::UnknownChannel`], [`SendError::Timeout`] (the peer is
    /// not taking what we send), [`SendError::Closed`].
    pub async fn ready(&self, ch: u8) -> Result<(), SendError> {
        self.retry(|core| match core.channel_index(ch) {
            None => Attempt::Done(Err(SendError::UnknownChannel(ch))),
            Some(i) if core.has_room(i) => Attempt::Done(Ok(())),
            Some(i) => Attempt::Wait(i),
        })
        .await
    }

    /// Whether channel `ch` has room for a message now (`false` for an
    /// unknown channel).
    pub fn can_send(&self, ch: u8) -> bool {
        let core = self.shared.core.lock();
        core.channel_index(ch).is_some_and(|i| core.has_room(i))
    }

    /// Statistics per channel and for the connection.
    pub fn stats(&self) -> ConnectionStats {
        let mut st = self.shared.core.lock().stats(now());
        st.send_queue_bytes += self.shared.writing.load(Ordering::Relaxed);
        st
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.cancel.is_cancelled()
    }

    /// Waits until the connection closes and returns why.
    pub async fn closed(&self) -> MConnError {
        self.shared.cancel.cancelled().await;
        self.shared.reason.get().cloned().unwrap_or(MConnError::Stopped)
    }

    /// Closes at once; queued messages are dropped.
    pub fn stop(&self) {
        self.shared.close(MConnError::Stopped);
    }

    /// Sends everything queued, closes the write side, and waits for the
    /// peer to close its side (CometBFT's `FlushStop`). Waits at most
    /// `send_timeout` in all (the peer may withhold credit or never close),
    /// then stops anyway. Returns the
    /// reason the connection ended: [`MConnError::Stopped`] after a clean
    /// flush.
    pub async fn flush_stop(&self) -> MConnError {
        let timeout = {
            let mut core = self.shared.core.lock();
            core.start_closing();
            core.config().send_timeout
        };
        self.shared.writer_wake.notify_one();
        if tokio::time::timeout(timeout, self.shared.cancel.cancelled()).await.is_err() {
            self.stop();
        }
        self.shared.reason.get().cloned().unwrap_or(MConnError::Stopped)
    }
}

impl Drop for MConnection {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn reader_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    mut reader: SecretReader<R>,
    senders: Vec<mpsc::UnboundedSender<Delivery>>,
    mut recv_limit: Option<RateLimit>,
) -> Result<(), MConnError> {
    let mut frames = Vec::new();
    let mut out = Vec::new();
    loop {
        let n = tokio::select! {
            res = reader.read_frames(&mut frames) => match res {
                Ok(n) => n,
                // The peer closing after our graceful flush is the end we
                // waited for.
                Err(SecretError::Closed) if shared.core.lock().is_closing() => return Ok(()),
                Err(e) => return Err(e.into()),
            },
            _ = shared.cancel.cancelled() => return Ok(()),
        };
        let mut wake = false;
        {
            let mut core = shared.core.lock();
            let t = now();
            for frame in frames.drain(..) {
                wake |= core.receive_frame(t, frame, &mut out)?;
            }
        }
        for d in out.drain(..) {
            let index = d.index;
            if let Err(mpsc::error::SendError(d)) = senders[index].send(d) {
                // Nobody listens on this channel any more: give the credit
                // back so the peer is not blocked by a dropped receiver.
                tracing::trace!(channel = index, "message for a dropped receiver discarded");
                wake |= shared.core.lock().consumed(index, d.msg.len(), d.cost);
            }
        }
        if wake {
            shared.writer_wake.notify_one();
        }
        if let Some(rl) = recv_limit.as_mut() {
            // Pay for what was just read and handled (pings included, so
            // they are answered at once) before reading more; the peer is
            // held back by TCP flow control meanwhile.
            let mut left = n;
            while left > 0 {
                let piece = left.min(rl.burst() as usize);
                match rl.try_take(now(), piece) {
                    Ok(()) => left -= piece,
                    Err(until) => tokio::select! {
                        _ = tokio::time::sleep_until(until.into()) => {}
                        _ = shared.cancel.cancelled() => return Ok(()),
                    },
                }
            }
        }
        if n >= YIELD_AFTER_READ {
            // As in the writer: a busy socket never suspends the read.
            tokio::task::yield_now().await;
        }
    }
}

/// Plaintext bytes after which the reader yields to the scheduler (one
/// full Noise frame): bulk reads yield, single small messages do not.
const YIELD_AFTER_READ: usize = crate::secret::MAX_FRAME_PAYLOAD;

async fn writer_loop<W: AsyncWrite + Unpin>(
    shared: &Shared,
    mut writer: SecretWriter<W>,
    batch: usize,
    throttle: std::time::Duration,
) -> Result<(), MConnError> {
    let mut buf = BytesMut::with_capacity(IDLE_WRITE_BUF);
    let mut idle_since: Option<Instant> = None;
    let pong_timeout = shared.core.lock().config().pong_timeout;
    let mut cuts = Vec::new();
    loop {
        let (next, finished, stall) = {
            let mut core = shared.core.lock();
            let t = now();
            core.handle_timeout(t)?;
            core.fill_with_cuts(t, &mut buf, batch, &mut cuts);
            // The connection-wide budget is shared: a message freed on
            // one channel may make room on every other.
            if core.take_freed().count() > 0 {
                shared.room.iter().for_each(|r| r.notify_waiters());
            }
            (core.poll_timeout(), core.is_closing() && core.is_drained(), core.stall_deadline())
        };
        if !throttle.is_zero() && !buf.is_empty() && buf.len() < batch {
            // Light load: wait up to flush_throttle to gather more packets.
            tokio::select! {
                _ = tokio::time::sleep(throttle) => {}
                _ = shared.cancel.cancelled() => return Ok(()),
            }
            let mut core = shared.core.lock();
            let room = batch - buf.len();
            core.fill_with_cuts(now(), &mut buf, room, &mut cuts);
            // The connection-wide budget is shared: a message freed on
            // one channel may make room on every other.
            if core.take_freed().count() > 0 {
                shared.room.iter().for_each(|r| r.notify_waiters());
            }
        }
        if !buf.is_empty() {
            // Held until written: counted with the queues (and the node's
            // budget) meanwhile.
            let held = shared.budget.as_ref().map(|b| b.charge(buf.capacity()));
            shared.writing.store(buf.len(), Ordering::Relaxed);
            // A peer that stops reading blocks the write; the keepalive
            // deadline still applies to it.
            tokio::select! {
                res = async {
                    writer.write_stream(&mut buf, &cuts).await?;
                    writer.flush().await
                } => res?,
                _ = shared.cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep_until(stall.into()) => {
                    return Err(MConnError::PongTimeout(pong_timeout));
                }
            }
            shared.writing.store(0, Ordering::Relaxed);
            drop(held);
            let full = buf.len() >= batch;
            idle_since = None;
            buf.clear();
            cuts.clear();
            if full && buf.capacity() < batch + BATCH_SLACK {
                // Bulk: size the buffer for a whole batch once, rather than
                // doubling past it while filling.
                buf.reserve(batch + BATCH_SLACK);
            }
            // A writable socket completes writes without suspending; after a
            // full batch, yield so the tasks that feed the queues (and other
            // connections on this worker) run between batches instead of
            // every 128 writes. After a short batch the queues are empty and
            // the next wait suspends anyway.
            if full {
                tokio::task::yield_now().await;
            }
            continue;
        }
        if finished {
            let _ = writer.flush().await;
            let _ = writer.shutdown().await;
            // Keep the reader running until the peer closes its side too
            // (or `flush_stop`'s timeout), so data still arriving is read
            // rather than answered with a reset that could destroy what we
            // just flushed.
            shared.cancel.cancelled().await;
            return Ok(());
        }
        let wake = pin!(shared.writer_wake.notified());
        let waited = *idle_since.get_or_insert_with(now);
        tokio::select! {
            _ = wake => {}
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = shared.cancel.cancelled() => return Ok(()),
        }
        if now().saturating_duration_since(waited) >= SHRINK_AFTER_IDLE {
            // Idle for a while: an idle connection keeps a small buffer,
            // not the high-water mark of its last burst.
            if buf.capacity() > 4 * IDLE_WRITE_BUF {
                buf = BytesMut::with_capacity(IDLE_WRITE_BUF);
            }
            idle_since = None;
        }
    }
}

/// A batch may pass `write_batch_size` by one packet (a packet's data is
/// at most 64 KiB).
const BATCH_SLACK: usize = 68 * 1024;

/// The writer's buffer while the connection is idle; it grows to a batch
/// under load.
const IDLE_WRITE_BUF: usize = 16 * 1024;

/// A writer that waited this long for work drops a grown buffer.
const SHRINK_AFTER_IDLE: std::time::Duration = std::time::Duration::from_secs(1);
