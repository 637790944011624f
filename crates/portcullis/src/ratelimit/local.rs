//! The in-memory backend: governor's GCRA over a key table with a hard size bound.
//!
//! Keys are 64-bit hashes of the principal, address or route, so an entry costs the same
//! whatever the key. When the table is full, idle keys (whose bucket has refilled) are
//! evicted, at most once per [`SWEEP_INTERVAL`]; a new key that still finds no room shares
//! one overflow bucket, so a flood of distinct clients costs bounded memory (the cap, plus
//! the few keys workers add at the same instant) and gets, all together, one client's
//! allowance.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use super::{LimitStatus, RateSpec};
use crate::config::rate::{MAX_BURST, MAX_PERIOD};

/// The key every new client shares while the table is full of active ones.
const OVERFLOW_KEY: u64 = u64::MAX;
/// Eviction of idle keys runs at most this often while the table is full.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A key table that stops taking new keys at `max_keys` entries (plus the overflow bucket).
#[derive(Debug)]
struct BoundedStore {
    states: DashMapStateStore<u64>,
    max_keys: usize,
    /// Set when a new key found no room; shared with the [`LocalLimiter`] that sweeps.
    full: Arc<AtomicBool>,
}

impl StateStore for BoundedStore {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.states.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        let key = if self.states.len() < self.max_keys {
            *key
        } else {
            self.full.store(true, Ordering::Relaxed);
            OVERFLOW_KEY
        };
        self.states
            .entry(key)
            .or_default()
            .measure_and_replace(&NotKeyed::NonKey, f)
    }
}

/// One limit's buckets in memory, shared by every worker.
pub struct LocalLimiter<C: Clock = DefaultClock> {
    limiter: RateLimiter<u64, BoundedStore, C, StateInformationMiddleware>,
    emission: Duration,
    burst: u32,
    full: Arc<AtomicBool>,
    start: C::Instant,
    /// When the next sweep may run, in nanoseconds since `start`.
    next_sweep: AtomicU64,
}

impl<C: Clock> std::fmt::Debug for LocalLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLimiter")
            .field("emission", &self.emission)
            .field("burst", &self.burst)
            .field("keys", &self.len())
            .finish()
    }
}

impl LocalLimiter {
    /// `rate` with `burst` requests allowed at once, tracking at most `max_keys` keys.
    pub fn new(rate: RateSpec, burst: NonZeroU32, max_keys: usize) -> Self {
        Self::with_clock(rate, burst, max_keys, DefaultClock::default())
    }
}

impl<C: Clock> LocalLimiter<C> {
    /// As [`LocalLimiter::new`], reading time from `clock`. The burst is capped so that a
    /// full bucket refills within [`MAX_PERIOD`] (`portcullis check` refuses more).
    pub fn with_clock(rate: RateSpec, burst: NonZeroU32, max_keys: usize, clock: C) -> Self {
        let emission = rate.emission_interval().max(Duration::from_nanos(1));
        let refill_cap = (MAX_PERIOD.as_nanos() / emission.as_nanos()).clamp(1, MAX_BURST.into());
        let burst = NonZeroU32::new(burst.get().min(refill_cap as u32)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(emission)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        let full = Arc::new(AtomicBool::new(false));
        let store = BoundedStore {
            states: DashMapStateStore::default(),
            max_keys: max_keys.max(1),
            full: full.clone(),
        };
        Self {
            start: clock.now(),
            limiter: RateLimiter::new(quota, store, clock),
            full,
            emission,
            burst: burst.get(),
            next_sweep: AtomicU64::new(0),
        }
    }

    /// Counts one request for `key` if the limit allows it.
    pub fn check(&self, key: u64) -> LimitStatus {
        let status = match self.limiter.check_key(&key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                LimitStatus {
                    remaining,
                    // The bucket refills one request per emission interval.
                    reset: self.emission * (self.burst - remaining.min(self.burst)),
                    retry_after: None,
                }
            }
            Err(not_until) => {
                let retry = not_until.wait_time_from(self.limiter.clock().now());
                LimitStatus {
                    remaining: 0,
                    reset: retry + self.emission * (self.burst - 1),
                    retry_after: Some(retry),
                }
            }
        };
        self.sweep_if_full();
        status
    }

    /// Evicts idle keys when the table has filled up, at most once per sweep interval.
    fn sweep_if_full(&self) {
        if !self.full.load(Ordering::Relaxed) {
            return;
        }
        let now_ns = self
            .limiter
            .clock()
            .now()
            .duration_since(self.start)
            .as_u64();
        let due = self.next_sweep.load(Ordering::Relaxed);
        let next = now_ns + SWEEP_INTERVAL.as_nanos() as u64;
        if now_ns < due
            || self
                .next_sweep
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.full.store(false, Ordering::Relaxed);
        self.limiter.retain_recent();
    }

    /// How many keys are tracked.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl governor::state::keyed::ShrinkableKeyedStateStore<u64> for BoundedStore {
    fn retain_recent(&self, drop_below: Nanos) {
        self.states.retain_recent(drop_below);
    }

    fn shrink_to_fit(&self) {
        self.states.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.states.len()
    }

    fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn limiter(
        rate: &str,
        burst: u32,
        max_keys: usize,
    ) -> (LocalLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let limiter = LocalLimiter::with_clock(
            rate.parse().unwrap(),
            NonZeroU32::new(burst).unwrap(),
            max_keys,
            clock.clone(),
        );
        (limiter, clock)
    }

    #[test]
    fn exactly_the_burst_passes_then_one_per_interval() {
        let (limiter, clock) = limiter("60/min", 10, 100);
        for expected_remaining in (0..10).rev() {
            let status = limiter.check(1);
            assert!(status.allowed());
            assert_eq!(status.remaining, expected_remaining);
        }
        let refused = limiter.check(1);
        assert!(!refused.allowed(), "the 11th request is limited");
        assert_eq!(refused.retry_after, Some(Duration::from_secs(1)));
        assert_eq!(refused.reset, Duration::from_secs(10));

        clock.advance(Duration::from_millis(999));
        assert!(
            !limiter.check(1).allowed(),
            "not before the documented time"
        );
        clock.advance(Duration::from_millis(1));
        let recovered = limiter.check(1);
        assert!(recovered.allowed(), "one request back after 1 s");
        assert_eq!(recovered.remaining, 0);
        assert!(!limiter.check(1).allowed());

        clock.advance(Duration::from_secs(10));
        assert_eq!(limiter.check(1).remaining, 9, "full again after 10 s");
        assert_eq!(limiter.check(2).remaining, 9, "keys are independent");
    }

    #[test]
    fn the_default_burst_is_the_rate_with_no_edge_bursts() {
        let (limiter, clock) = limiter("3/min", 3, 100);
        assert!((0..3).all(|_| limiter.check(7).allowed()));
        let refused = limiter.check(7);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(20)));
        // A fixed window would refill all three at the minute boundary; GCRA gives back one
        // request every 20 s.
        clock.advance(Duration::from_secs(20));
        assert!(limiter.check(7).allowed());
        assert!(!limiter.check(7).allowed());
        clock.advance(Duration::from_secs(40));
        assert!(limiter.check(7).allowed());
        assert!(limiter.check(7).allowed());
        assert!(!limiter.check(7).allowed());
    }

    #[test]
    fn a_million_distinct_keys_stay_within_the_bound() {
        let (limiter, clock) = limiter("1/min", 1, 10_000);
        let mut allowed = 0;
        for key in 0..1_000_000u64 {
            if limiter.check(key).allowed() {
                allowed += 1;
            }
            if key % 100_000 == 0 {
                clock.advance(Duration::from_millis(1));
            }
        }
        assert!(limiter.len() <= 10_001, "{} keys tracked", limiter.len());
        // Every tracked key had its one request, and the overflow bucket one more.
        assert_eq!(allowed, 10_001);
    }

    #[test]
    fn an_oversized_burst_is_capped_instead_of_overflowing() {
        let (limiter, _clock) = limiter("1/day", 1_000_000, 10);
        // 1 000 000 days would not fit governor's clock; the bucket is capped at a year.
        assert_eq!(limiter.check(1).remaining, 365);
    }

    #[test]
    fn idle_keys_are_evicted_to_make_room() {
        let (limiter, clock) = limiter("1/s", 1, 100);
        for key in 0..100 {
            assert!(limiter.check(key).allowed());
        }
        assert!(
            limiter.check(1000).allowed(),
            "the overflow bucket's first request"
        );
        assert!(
            !limiter.check(1001).allowed(),
            "newcomers share the overflow bucket"
        );
        clock.advance(Duration::from_secs(2));
        limiter.check(1002);
        assert!(
            limiter.len() <= 2,
            "idle keys were evicted: {}",
            limiter.len()
        );
        assert!(
            limiter.check(1003).allowed(),
            "new keys get their own bucket again"
        );
        assert!(limiter.check(1004).allowed());
    }
}
