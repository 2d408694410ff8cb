//! [`RateLimit`]: a token bucket in bytes with injected time, backed by the
//! `governor` crate's GCRA (equivalent to a token bucket of rate `r` and
//! depth `burst`). Used by the MConnection for `send_rate` / `recv_rate`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::clock::FakeRelativeClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A byte-rate limiter driven by the caller's clock (sans-IO): every call
/// passes `now`, so tests control time and tokio drives it in production.
pub struct RateLimit {
    limiter: RateLimiter<
        NotKeyed,
        InMemoryState,
        FakeRelativeClock,
        NoOpMiddleware<governor::nanos::Nanos>,
    >,
    clock: FakeRelativeClock,
    origin: Instant,
    elapsed: Duration,
    burst: u32,
}

impl std::fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit").field("burst", &self.burst).finish()
    }
}

impl RateLimit {
    /// A limiter of `rate` bytes/s with a bucket of `burst` bytes, full at
    /// `now`. Returns `None` when `rate` is 0 (unlimited). `rate` and
    /// `burst` are clamped to `u32::MAX` (about 4.29 GB/s).
    pub fn new(rate: u64, burst: u64, now: Instant) -> Option<RateLimit> {
        let rate = NonZeroU32::new(rate.min(u32::MAX as u64) as u32)?;
        let burst =
            NonZeroU32::new(burst.clamp(1, u32::MAX as u64) as u32).expect("clamped to >= 1");
        let quota = Quota::per_second(rate).allow_burst(burst);
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::direct_with_clock(quota, clock.clone());
        Some(RateLimit { limiter, clock, origin: now, elapsed: Duration::ZERO, burst: burst.get() })
    }

    /// Bucket depth in bytes.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    fn advance(&mut self, now: Instant) {
        let t = now.saturating_duration_since(self.origin);
        if t > self.elapsed {
            self.clock.advance(t - self.elapsed);
            self.elapsed = t;
        }
    }

    /// Takes `n` bytes from the bucket if they are there now (`Ok`), or
    /// tells when they will be (`Err(instant)`) without taking anything.
    /// `n` above the burst is taken as the burst, so a large item waits for
    /// a full bucket instead of forever.
    pub fn try_take(&mut self, now: Instant, n: usize) -> Result<(), Instant> {
        self.advance(now);
        let n = (n.min(self.burst as usize) as u32).max(1);
        let n = NonZeroU32::new(n).expect("n >= 1");
        match self.limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(&self.clock));
                Err(now + wait)
            }
            Err(_) => unreachable!("n is clamped to the burst"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_is_unlimited() {
        assert!(RateLimit::new(0, 100, Instant::now()).is_none());
    }

    #[test]
    fn long_run_average_matches_rate() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(100_000, 10_000, t0).unwrap();
        let mut now = t0;
        let mut sent = 0usize;
        while now < t0 + Duration::from_secs(10) {
            match rl.try_take(now, 1_000) {
                Ok(()) => sent += 1_000,
                Err(until) => now = until,
            }
        }
        // 10 s at 100 kB/s plus the initial 10 kB burst.
        assert!((1_000_000..=1_011_000).contains(&sent), "sent {sent}");
    }

    #[test]
    fn burst_is_available_at_once_then_waits() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(1_000, 500, t0).unwrap();
        assert!(rl.try_take(t0, 500).is_ok());
        let until = rl.try_take(t0, 100).unwrap_err();
        let wait = until - t0;
        assert!(
            wait >= Duration::from_millis(99) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        assert!(rl.try_take(until, 100).is_ok());
    }
}
