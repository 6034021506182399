//! Token-bucket rate limiting of a device's I/O, in bytes and in operations
//! (frames, requests), as Firecracker's `rate_limiter` does.
//!
//! A [`TokenBucket`] holds up to `size` tokens and refills completely in
//! `refill_time`; an optional one-time burst is spent first and never
//! refilled (a fast start, e.g. a boot's first reads). A [`RateLimiter`]
//! has up to two buckets, one for bytes and one for operations; an I/O
//! passes only if both have room, and then takes from both.
//!
//! When the limiter refuses, the device stops that queue and arms the
//! limiter's timerfd ([`RateLimiter::timer`]) for the moment enough tokens
//! will be back; the event loop then calls the device again. Nothing
//! sleeps and nothing spins.
//!
//! An I/O larger than a whole bucket (a 64 KiB frame against a 4 KiB
//! bucket) is let through when the bucket is full and leaves a debt that
//! later refills pay first, so the average rate holds for any bucket size.
//! Hand-written (no crate of the rust-vmm family ships one on its own);
//! the semantics follow Firecracker's so that its documentation applies.

use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// A bucket with a zero size or refill time would never pass anything.
    #[error("a token bucket needs a non-zero size and refill time (got size {size}, refill time {refill_time_ms} ms)")]
    ZeroBucket {
        /// Tokens.
        size: u64,
        /// Milliseconds.
        refill_time_ms: u64,
    },
    /// The timerfd could not be created.
    #[error("cannot create the rate limiter's timerfd: {0}")]
    Timer(#[source] io::Error),
}

/// How to build one token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketConfig {
    /// Tokens the bucket holds when full (bytes or operations).
    pub size: u64,
    /// Tokens available once at start, on top of `size`, never refilled.
    pub one_time_burst: u64,
    /// Time for an empty bucket to fill completely, in milliseconds.
    pub refill_time_ms: u64,
}

/// How to build a rate limiter: either bucket may be absent (no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimiterConfig {
    /// Bytes.
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations (frames, requests).
    pub ops: Option<TokenBucketConfig>,
}

/// One token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    size: u64,
    refill_ns: u128,
    /// Tokens available; negative while a debt is being paid.
    budget: i128,
    one_time_burst: u64,
    last_update: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(cfg: TokenBucketConfig, now: Instant) -> Result<Self, RateLimiterError> {
        if cfg.size == 0 || cfg.refill_time_ms == 0 {
            return Err(RateLimiterError::ZeroBucket {
                size: cfg.size,
                refill_time_ms: cfg.refill_time_ms,
            });
        }
        Ok(Self {
            size: cfg.size,
            refill_ns: u128::from(cfg.refill_time_ms) * 1_000_000,
            budget: i128::from(cfg.size),
            one_time_burst: cfg.one_time_burst,
            last_update: now,
        })
    }

    /// Adds the tokens earned since the last update, up to `size`.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_update).as_nanos();
        // Tokens earned, rounded down; the remainder is kept by advancing
        // last_update only by the time those tokens took.
        let earned = elapsed * u128::from(self.size) / self.refill_ns;
        if earned == 0 {
            return;
        }
        let size = i128::from(self.size);
        if self.budget + earned as i128 >= size {
            self.budget = size;
            self.last_update = now;
        } else {
            self.budget += earned as i128;
            let used_ns = earned * self.refill_ns / u128::from(self.size);
            self.last_update += Duration::from_nanos(u64::try_from(used_ns).unwrap_or(u64::MAX));
        }
    }

    /// Whether `tokens` could be taken now (without taking them).
    fn can_consume(&mut self, tokens: u64, now: Instant) -> bool {
        self.refill(now);
        let burst = self.one_time_burst.min(tokens);
        let rest = i128::from(tokens - burst);
        rest == 0 || rest <= self.budget || self.budget == i128::from(self.size)
    }

    /// Takes `tokens` (call only after `can_consume` said yes).
    fn consume(&mut self, tokens: u64) {
        let burst = self.one_time_burst.min(tokens);
        self.one_time_burst -= burst;
        self.budget -= i128::from(tokens - burst);
    }

    /// Time until `tokens` can be taken.
    fn wait_for(&self, tokens: u64, now: Instant) -> Duration {
        let want =
            i128::from(tokens.saturating_sub(self.one_time_burst)).min(i128::from(self.size));
        let missing = want - self.budget;
        if missing <= 0 {
            return Duration::ZERO;
        }
        let ns = (missing as u128 * self.refill_ns).div_ceil(u128::from(self.size));
        let since = now.saturating_duration_since(self.last_update).as_nanos();
        Duration::from_nanos(u64::try_from(ns.saturating_sub(since)).unwrap_or(u64::MAX))
    }

    /// Tokens available now (the one-time burst included).
    pub fn available(&mut self, now: Instant) -> i128 {
        self.refill(now);
        self.budget + i128::from(self.one_time_burst)
    }
}

/// Up to two token buckets and the timer that wakes the device when a
/// refused I/O can go.
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with full buckets.
    pub fn new(cfg: RateLimiterConfig) -> Result<Self, RateLimiterError> {
        let now = Instant::now();
        let bandwidth = cfg
            .bandwidth
            .map(|b| TokenBucket::new(b, now))
            .transpose()?;
        let ops = cfg.ops.map(|b| TokenBucket::new(b, now)).transpose()?;
        Ok(Self {
            bandwidth,
            ops,
            timer: nonblocking_timer().map_err(RateLimiterError::Timer)?,
            blocked: false,
        })
    }

    /// Tries to take `bytes` and one operation. On refusal nothing is
    /// taken, the limiter is blocked and its timer is armed for when the
    /// I/O would pass.
    pub fn consume(&mut self, bytes: u64, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        let ok_bytes = self
            .bandwidth
            .as_mut()
            .is_none_or(|b| b.can_consume(bytes, now));
        let ok_ops = self.ops.as_mut().is_none_or(|b| b.can_consume(1, now));
        if ok_bytes && ok_ops {
            if let Some(b) = &mut self.bandwidth {
                b.consume(bytes);
            }
            if let Some(b) = &mut self.ops {
                b.consume(1);
            }
            return true;
        }
        let wait = [
            self.bandwidth.as_ref().map(|b| b.wait_for(bytes, now)),
            self.ops.as_ref().map(|b| b.wait_for(1, now)),
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default()
        // A zero duration would disarm the timer.
        .max(Duration::from_millis(1));
        self.blocked = true;
        if self.timer.reset(wait, None).is_err() {
            // Without a timer nothing would wake the device: let the next
            // attempt through rather than stall the queue for good.
            self.blocked = false;
        }
        false
    }

    /// Whether an I/O was refused and the timer has not fired yet.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// Call when the timer fired: the device may try again.
    pub fn timer_fired(&mut self) {
        let _ = self.timer.wait();
        self.blocked = false;
    }

    /// The timerfd to watch (readable when a refused I/O may go).
    pub fn timer(&self) -> &TimerFd {
        &self.timer
    }

    /// Bytes the bandwidth bucket holds now (for tests and diagnostics).
    pub fn bandwidth_available(&mut self, now: Instant) -> Option<i128> {
        self.bandwidth.as_mut().map(|b| b.available(now))
    }
}

/// A timerfd whose read never blocks: a stale readiness report must not
/// stall the event loop.
pub(crate) fn nonblocking_timer() -> io::Result<TimerFd> {
    let t = TimerFd::new()?;
    let fd = t.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with valid flag arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, burst: u64, ms: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time_ms: ms,
        }
    }

    #[test]
    fn zero_buckets_are_refused() {
        let now = Instant::now();
        assert!(TokenBucket::new(bucket(0, 0, 10), now).is_err());
        assert!(TokenBucket::new(bucket(10, 0, 0), now).is_err());
    }

    #[test]
    fn bucket_empties_and_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bucket(1000, 0, 1000), t0).unwrap();
        assert!(b.can_consume(600, t0));
        b.consume(600);
        assert!(!b.can_consume(600, t0), "400 left");
        assert_eq!(b.wait_for(600, t0), Duration::from_millis(200));
        // 100 ms later: 100 more tokens.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.available(t1), 500);
        let t2 = t0 + Duration::from_millis(200);
        assert!(b.can_consume(600, t2));
        // Never above size.
        assert_eq!(b.available(t0 + Duration::from_secs(60)), 1000);
    }

    #[test]
    fn one_time_burst_is_spent_first_and_not_refilled() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bucket(100, 1000, 1000), t0).unwrap();
        assert!(b.can_consume(900, t0));
        b.consume(900);
        assert_eq!(b.available(t0), 200, "100 burst + 100 bucket");
        b.consume(150);
        assert_eq!(b.available(t0 + Duration::from_secs(10)), 100);
    }

    #[test]
    fn oversized_io_passes_on_a_full_bucket_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(bucket(100, 0, 1000), t0).unwrap();
        assert!(b.can_consume(1000, t0), "full bucket: let it through");
        b.consume(1000);
        assert_eq!(b.available(t0), -900);
        assert!(!b.can_consume(1, t0 + Duration::from_secs(5)));
        assert!(b.can_consume(1000, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn limiter_needs_both_buckets_and_arms_its_timer() {
        let mut l = RateLimiter::new(RateLimiterConfig {
            bandwidth: Some(bucket(10_000, 0, 1000)),
            ops: Some(bucket(2, 0, 1000)),
        })
        .unwrap();
        let now = Instant::now();
        assert!(l.consume(100, now));
        assert!(l.consume(100, now));
        assert!(!l.consume(100, now), "ops bucket is empty");
        assert!(l.is_blocked());
        assert!(!l.consume(1, now), "blocked until the timer fires");
        assert_eq!(l.bandwidth_available(now), Some(9800), "nothing taken");
        // The timer fires within about 500 ms (one op per 500 ms); a loaded
        // machine may take longer.
        let mut pfd = libc::pollfd {
            fd: l.timer().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(n, 1, "the timer fired");
        l.timer_fired();
        assert!(!l.is_blocked());
        assert!(l.consume(100, Instant::now()));
    }

    #[test]
    fn no_buckets_means_no_limit() {
        let mut l = RateLimiter::new(RateLimiterConfig::default()).unwrap();
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(l.consume(1 << 20, now));
        }
    }
}
