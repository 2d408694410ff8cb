//! [`SharedBudget`]: one byte budget shared by the send queues of many
//! MConnections (the node-wide memory budget for peers, rust-libp2p's
//! memory connection limits in spirit). Each connection adds what it queues
//! and subtracts what it sends or drops; a push that would pass the limit
//! is refused (the queue is full for now) and the owner is told, so it can
//! drop the heaviest peer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

#[derive(Debug)]
struct Inner {
    limit: usize,
    used: AtomicUsize,
    /// Woken when a push was refused for this budget.
    exhausted: Notify,
    /// Woken when bytes were given back.
    freed: Notify,
}

/// A byte budget shared by connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedBudget(Arc<Inner>);

impl SharedBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        SharedBudget(Arc::new(Inner {
            limit,
            used: AtomicUsize::new(0),
            exhausted: Notify::new(),
            freed: Notify::new(),
        }))
    }

    /// The limit, bytes.
    pub fn limit(&self) -> usize {
        self.0.limit
    }

    /// Bytes in use now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }

    /// Bytes left now.
    pub fn left(&self) -> usize {
        self.limit().saturating_sub(self.used())
    }

    /// Takes `n` bytes if they fit (or nothing is in use: one message may
    /// always be queued); otherwise tells the owner and returns false.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        let mut cur = self.0.used.load(Ordering::Relaxed);
        loop {
            if cur != 0 && cur + n > self.0.limit {
                self.0.exhausted.notify_waiters();
                return false;
            }
            match self.0.used.compare_exchange_weak(
                cur,
                cur + n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Gives `n` bytes back.
    pub(crate) fn give(&self, n: usize) {
        if n > 0 {
            self.0.used.fetch_sub(n, Ordering::Relaxed);
            self.0.freed.notify_waiters();
        }
    }

    /// Holds `n` bytes of the budget while an answer of about that size is
    /// built (so builders cannot together pass the limit before anything is
    /// queued); `None` if they do not fit now. Dropping it gives them back.
    pub fn reserve(&self, n: usize) -> Option<Reservation> {
        self.try_take(n).then(|| Reservation { budget: Some(self.clone()), n, owner: None })
    }

    /// Takes `n` bytes whatever is in use (bytes already held, such as a
    /// batch being written, which must be counted but cannot be refused);
    /// given back when the reservation drops.
    pub(crate) fn charge(&self, n: usize) -> Reservation {
        self.0.used.fetch_add(n, Ordering::Relaxed);
        Reservation { budget: Some(self.clone()), n, owner: None }
    }

    /// Resolves when a push was refused for this budget.
    pub async fn exhausted(&self) {
        self.0.exhausted.notified().await
    }

    /// A future resolving when bytes are given back (register it before
    /// checking for room, as with any `Notify`).
    pub(crate) fn freed(&self) -> tokio::sync::futures::Notified<'_> {
        self.0.freed.notified()
    }
}

/// Bytes of a [`SharedBudget`] held while an answer is built; given back
/// when dropped (drop it just before queuing the answer).
#[derive(Debug)]
#[must_use = "the bytes are held only while the reservation lives"]
pub struct Reservation {
    budget: Option<SharedBudget>,
    n: usize,
    /// The connection the bytes are held for, if any: its count of held
    /// bytes follows this reservation (so the switch can tell which peer
    /// holds the budget).
    owner: Option<Arc<AtomicUsize>>,
}

impl Reservation {
    /// A reservation of nothing (a connection without a shared budget).
    pub fn none() -> Self {
        Reservation { budget: None, n: 0, owner: None }
    }

    /// Counts this reservation's bytes in `owner` (a connection's held
    /// bytes) for as long as it holds them.
    pub(crate) fn owned_by(mut self, owner: Arc<AtomicUsize>) -> Self {
        owner.fetch_add(self.n, Ordering::Relaxed);
        self.owner = Some(owner);
        self
    }

    /// Bytes still held.
    pub fn bytes(&self) -> usize {
        self.n
    }

    /// Hands up to `n` of the held bytes over to a queue (they stay taken
    /// in the budget, now owned by what was queued); returns how many.
    pub(crate) fn hand_over(&mut self, n: usize) -> usize {
        let moved = n.min(self.n);
        self.n -= moved;
        if let Some(o) = &self.owner {
            o.fetch_sub(moved, Ordering::Relaxed);
        }
        moved
    }

    /// Takes back bytes [`Reservation::hand_over`] gave.
    pub(crate) fn take_back(&mut self, n: usize) {
        self.n += n;
        if let Some(o) = &self.owner {
            o.fetch_add(n, Ordering::Relaxed);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give(self.n);
        }
        if let Some(o) = &self.owner {
            o.fetch_sub(self.n, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reservation counts in its owner's held bytes until it hands them
    /// to a queue or drops; the budget follows the same way.
    #[test]
    fn held_bytes_follow_the_reservation() {
        let b = SharedBudget::new(100);
        let held = Arc::new(AtomicUsize::new(0));
        let mut r = b.reserve(60).unwrap().owned_by(held.clone());
        assert_eq!((b.used(), held.load(Ordering::Relaxed)), (60, 60));
        assert!(b.reserve(50).is_none(), "past the limit");
        assert_eq!(r.hand_over(25), 25);
        // Handed over: still in the budget (now the queue's), no longer held.
        assert_eq!((b.used(), held.load(Ordering::Relaxed)), (60, 35));
        r.take_back(5);
        assert_eq!(held.load(Ordering::Relaxed), 40);
        drop(r);
        // What the queue took stays used until the queue gives it back.
        assert_eq!((b.used(), held.load(Ordering::Relaxed)), (20, 0));
        b.give(20);
        assert_eq!(b.used(), 0);
    }
}
