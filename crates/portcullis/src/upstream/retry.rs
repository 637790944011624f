//! Retries of one upstream's failed calls: which requests may go again (the methods the
//! policy names, with a body the gateway holds whole), when (a connection error, a
//! per-attempt timeout, a 502, 503 or 504), how often (at most `attempts` in all, and only
//! while the retries of the last [`WINDOW`] stay within `budget` of its requests, so that
//! retries cannot multiply an outage), and after what pause (exponential backoff with full
//! jitter).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use rand::Rng;

/// The window the retry budget is counted over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Retries always allowed per window, so that an upstream with little traffic can still be
/// retried.
const MIN_RETRIES_PER_WINDOW: u64 = 10;

/// The largest body held whole so that it can be sent again.
pub const REPLAYABLE_BODY_MAX: u64 = 64 * 1024;

/// How an upstream's calls are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// The share of requests that may be retries, in thousandths.
    pub budget_permille: u32,
    /// The first pause's upper bound.
    pub backoff: Duration,
    /// The largest pause's upper bound.
    pub max_backoff: Duration,
    /// The methods retried.
    pub methods: Vec<Method>,
}

/// One bucket of a second of the window.
#[derive(Debug, Default)]
struct Bucket {
    /// The second (since the policy began) the counts are for.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// One bucket per second of the window.
const BUCKETS: usize = WINDOW.as_secs() as usize;

/// An upstream's retry policy, with its budget's counts, shared by every worker.
#[derive(Debug)]
pub struct RetryPolicy {
    settings: RetrySettings,
    epoch: Instant,
    buckets: [Bucket; BUCKETS],
}

impl RetryPolicy {
    /// A policy with an empty window.
    pub fn new(settings: RetrySettings) -> Self {
        Self {
            settings,
            epoch: Instant::now(),
            buckets: Default::default(),
        }
    }

    /// Whether `method` may be retried.
    pub fn covers(&self, method: &Method) -> bool {
        self.settings.attempts > 1 && self.settings.methods.contains(method)
    }

    /// The most attempts, the first included.
    pub fn attempts(&self) -> u32 {
        self.settings.attempts
    }

    /// The bucket of this second, emptied if it held an older second's counts.
    fn bucket(&self) -> &Bucket {
        let second = self.epoch.elapsed().as_secs() + 1;
        let bucket = &self.buckets[(second % BUCKETS as u64) as usize];
        let held = bucket.second.load(Ordering::Relaxed);
        if held != second
            && bucket
                .second
                .compare_exchange(held, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        bucket
    }

    /// Counts a request that may be retried.
    pub fn count_request(&self) {
        self.bucket().requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a retry from the budget, if the window has room for one.
    pub fn try_retry(&self) -> bool {
        let now = self.epoch.elapsed().as_secs() + 1;
        let (mut requests, mut retries) = (0, 0);
        for bucket in &self.buckets {
            let second = bucket.second.load(Ordering::Relaxed);
            if second + BUCKETS as u64 > now {
                requests += bucket.requests.load(Ordering::Relaxed);
                retries += bucket.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = (requests * u64::from(self.settings.budget_permille) / 1000)
            .max(MIN_RETRIES_PER_WINDOW);
        if retries >= allowed {
            return false;
        }
        self.bucket().retries.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// The pause before retry number `retry` (1 for the first): uniformly random up to
    /// `backoff * 2^(retry - 1)`, at most `max_backoff` ("full jitter").
    pub fn pause(&self, retry: u32) -> Duration {
        let ceiling = self
            .settings
            .backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.settings.max_backoff);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(budget_permille: u32) -> RetryPolicy {
        RetryPolicy::new(RetrySettings {
            attempts: 3,
            budget_permille,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(300),
            methods: vec![Method::GET],
        })
    }

    #[test]
    fn the_budget_allows_its_share_of_requests_and_a_floor() {
        let policy = policy(200);
        for _ in 0..100 {
            policy.count_request();
        }
        // 20% of 100 requests: 20 retries, then no more.
        let granted = (0..50).filter(|_| policy.try_retry()).count();
        assert_eq!(granted, 20);
        // With little traffic, the floor still allows a few.
        let quiet = super::RetryPolicy::new(policy.settings.clone());
        quiet.count_request();
        assert_eq!((0..50).filter(|_| quiet.try_retry()).count(), 10);
    }

    #[test]
    fn pauses_grow_with_full_jitter_up_to_the_cap() {
        let policy = policy(200);
        for _ in 0..100 {
            assert!(policy.pause(1) <= Duration::from_millis(50));
            assert!(policy.pause(2) <= Duration::from_millis(100));
            assert!(policy.pause(10) <= Duration::from_millis(300));
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| policy.pause(3)).collect();
        assert!(spread.len() > 1, "jittered");
    }

    #[test]
    fn only_the_listed_methods_are_retried() {
        let policy = policy(200);
        assert!(policy.covers(&Method::GET));
        assert!(!policy.covers(&Method::POST));
    }
}
