//! The circuit breaker of one upstream, shared by every worker: after
//! `failure_threshold` consecutive failures (connection errors, timeouts, 5xx answers,
//! failed health checks; never a client's fault) it opens, and requests are refused without calling the upstream
//! for `recovery_timeout`; then up to `half_open_probes` requests go through at a time,
//! and `success_threshold` successes close it again while any failure reopens it.
//!
//! While closed, a request costs an atomic load to admit and one to record; the lock is
//! taken only to change state.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open it.
    pub failure_threshold: u32,
    /// How long it stays open before letting probes through.
    pub recovery_timeout: Duration,
    /// Probe successes that close it.
    pub success_threshold: u32,
    /// Probes allowed through at once while half-open.
    pub half_open_probes: u32,
}

/// The state a breaker is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests go through.
    Closed,
    /// Requests are refused without calling the upstream.
    Open,
    /// A few probes go through to see whether the upstream is back.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// What became of a call, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered, with less than a 5xx.
    Success,
    /// It could not be reached, did not answer in time, or answered 5xx.
    Failure,
    /// Not the upstream's doing either way (the client's body was refused, the client
    /// went away): not counted.
    Neither,
}

/// The breaker is open: the upstream is not called.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the upstream's circuit is open")]
pub struct CircuitOpen {
    /// How long until probes are let through.
    pub retry_after: Duration,
}

/// One upstream's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    changes: AtomicU64,
    /// The state's details, changed under the lock.
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// When an open breaker lets probes through.
    open_until: Instant,
    /// Probes in flight while half-open.
    probes: u32,
    /// Probe successes while half-open.
    successes: u32,
    /// How many times it has opened: a probe let through before the last opening belongs
    /// to an earlier half-open period, and its outcome no longer counts.
    openings: u64,
}

/// Leave to call the upstream once; record the outcome with [`Breaker::record`]. Dropped
/// unrecorded (the request was abandoned), it counts as neither.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// For a probe, the opening whose half-open period let it through.
    probe: Option<u64>,
    recorded: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            changes: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                open_until: Instant::now(),
                probes: 0,
                successes: 0,
                openings: 0,
            }),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> BreakerSettings {
        self.settings
    }

    /// The state it is in now.
    pub fn state(&self) -> CircuitState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => CircuitState::Closed,
            OPEN => CircuitState::Open,
            _ => CircuitState::HalfOpen,
        }
    }

    /// How many times it has changed state.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    /// Consecutive failures counted while closed.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Leave to call the upstream, or how long until it is given again.
    pub fn admit(&self) -> Result<Permit<'_>, CircuitOpen> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(self.permit(None));
        }
        let mut inner = self.lock();
        match self.state.load(Ordering::Acquire) {
            CLOSED => Ok(self.permit(None)),
            OPEN => {
                let now = Instant::now();
                if now < inner.open_until {
                    return Err(CircuitOpen {
                        retry_after: inner.open_until - now,
                    });
                }
                self.set(HALF_OPEN);
                inner.probes = 1;
                inner.successes = 0;
                Ok(self.permit(Some(inner.openings)))
            }
            _ if inner.probes < self.settings.half_open_probes => {
                inner.probes += 1;
                Ok(self.permit(Some(inner.openings)))
            }
            // Probes are out; their results decide soon.
            _ => Err(CircuitOpen {
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    fn permit(&self, probe: Option<u64>) -> Permit<'_> {
        Permit {
            breaker: self,
            probe,
            recorded: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock holds plain counters, still consistent enough to go on with.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::Release);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }

    fn open(&self, inner: &mut Inner) {
        inner.open_until = Instant::now() + self.settings.recovery_timeout;
        inner.probes = 0;
        inner.successes = 0;
        inner.openings += 1;
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.set(OPEN);
    }

    fn outcome(&self, probe: Option<u64>, outcome: Outcome) {
        let Some(opening) = probe else {
            match outcome {
                Outcome::Success => {
                    if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                        self.consecutive_failures.store(0, Ordering::Relaxed);
                    }
                }
                Outcome::Failure => {
                    let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    if failures >= self.settings.failure_threshold {
                        let mut inner = self.lock();
                        if self.state.load(Ordering::Acquire) == CLOSED {
                            self.open(&mut inner);
                        }
                    }
                }
                Outcome::Neither => {}
            }
            return;
        };
        let mut inner = self.lock();
        if opening != inner.openings {
            return;
        }
        inner.probes = inner.probes.saturating_sub(1);
        if self.state.load(Ordering::Acquire) != HALF_OPEN {
            return;
        }
        match outcome {
            Outcome::Success => {
                inner.successes += 1;
                if inner.successes >= self.settings.success_threshold {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                    self.set(CLOSED);
                }
            }
            Outcome::Failure => self.open(&mut inner),
            Outcome::Neither => {}
        }
    }
}

impl Breaker {
    /// Takes an active health check's result. A failed check counts as a failed call
    /// while closed, keeps an open breaker open for another `recovery_timeout` (no probe
    /// goes to an upstream that fails its checks) and reopens a half-open one; a passed
    /// check ends an open breaker's wait, so that the next request probes at once (probes
    /// still decide whether it closes: a passing check does not prove the API works).
    pub fn checked(&self, passed: bool) {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            if !passed {
                self.outcome(None, Outcome::Failure);
            }
            return;
        }
        let mut inner = self.lock();
        match (self.state.load(Ordering::Acquire), passed) {
            (OPEN, true) => inner.open_until = Instant::now(),
            (OPEN, false) => {
                inner.open_until = Instant::now() + self.settings.recovery_timeout;
            }
            (HALF_OPEN, false) => self.open(&mut inner),
            _ => {}
        }
    }
}

impl Permit<'_> {
    /// Records what became of the call.
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.outcome(self.probe, outcome);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.outcome(self.probe, Outcome::Neither);
        }
    }
}

/// Counts of one upstream's calls, kept whether or not it has a breaker.
#[derive(Debug, Default)]
pub struct CallStats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Milliseconds since the Unix epoch; 0 for never.
    last_success_ms: AtomicU64,
    last_failure_ms: AtomicU64,
}

/// [`CallStats`], read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallCounts {
    /// Calls the upstream answered with less than a 5xx.
    pub succeeded: u64,
    /// Calls that failed: unreachable, too slow, or a 5xx.
    pub failed: u64,
    /// When the last success was, if any.
    pub last_success: Option<SystemTime>,
    /// When the last failure was, if any.
    pub last_failure: Option<SystemTime>,
}

impl CallStats {
    /// Counts `outcome`.
    pub fn count(&self, outcome: Outcome) {
        let (count, last) = match outcome {
            Outcome::Success => (&self.succeeded, &self.last_success_ms),
            Outcome::Failure => (&self.failed, &self.last_failure_ms),
            Outcome::Neither => return,
        };
        count.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        last.store(now, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn counts(&self) -> CallCounts {
        let at = |ms: &AtomicU64| match ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        };
        CallCounts {
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            last_success: at(&self.last_success_ms),
            last_failure: at(&self.last_failure_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(recovery: Duration) -> Breaker {
        Breaker::new(BreakerSettings {
            failure_threshold: 3,
            recovery_timeout: recovery,
            success_threshold: 2,
            half_open_probes: 1,
        })
    }

    fn call(breaker: &Breaker, outcome: Outcome) -> bool {
        match breaker.admit() {
            Ok(permit) => {
                permit.record(outcome);
                true
            }
            Err(_) => false,
        }
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let breaker = breaker(Duration::from_secs(60));
        call(&breaker, Outcome::Failure);
        call(&breaker, Outcome::Failure);
        call(&breaker, Outcome::Success);
        call(&breaker, Outcome::Failure);
        call(&breaker, Outcome::Neither);
        call(&breaker, Outcome::Failure);
        assert_eq!(breaker.state(), CircuitState::Closed);
        call(&breaker, Outcome::Failure);
        assert_eq!(breaker.state(), CircuitState::Open);
        let refused = breaker.admit().unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(59));
        assert_eq!(breaker.changes(), 1);
    }

    #[test]
    fn half_open_lets_probes_through_and_closes_or_reopens() {
        let breaker = breaker(Duration::ZERO);
        for _ in 0..3 {
            call(&breaker, Outcome::Failure);
        }
        assert_eq!(breaker.state(), CircuitState::Open);
        // Recovery is over: one probe at a time.
        let probe = breaker.admit().unwrap();
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(breaker.admit().is_err(), "a second probe at once");
        probe.record(Outcome::Success);
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(call(&breaker, Outcome::Success));
        assert_eq!(breaker.state(), CircuitState::Closed);
        // Open again; a failed probe reopens it.
        for _ in 0..3 {
            call(&breaker, Outcome::Failure);
        }
        assert!(call(&breaker, Outcome::Failure));
        assert_eq!(breaker.state(), CircuitState::Open);
        // An abandoned probe frees its place without deciding anything.
        drop(breaker.admit().unwrap());
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        assert!(breaker.admit().is_ok());
        assert_eq!(breaker.changes(), 7);
    }

    #[test]
    fn calls_are_counted_with_their_last_times() {
        let stats = CallStats::default();
        assert_eq!(stats.counts().last_failure, None);
        stats.count(Outcome::Success);
        stats.count(Outcome::Failure);
        stats.count(Outcome::Neither);
        let counts = stats.counts();
        assert_eq!((counts.succeeded, counts.failed), (1, 1));
        assert!(counts.last_failure.is_some() && counts.last_success.is_some());
    }

    #[test]
    fn health_checks_count_as_calls_and_move_the_wait() {
        let breaker = breaker(Duration::from_secs(60));
        // Closed: failed checks count like failed calls, passed ones not at all.
        breaker.checked(false);
        breaker.checked(true);
        assert_eq!(breaker.consecutive_failures(), 1);
        breaker.checked(false);
        breaker.checked(false);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert!(breaker.admit().is_err());
        // A passed check ends the wait: the next request is a probe.
        breaker.checked(true);
        assert_eq!(breaker.state(), CircuitState::Open);
        let probe = breaker.admit().unwrap();
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        // A failed check while half-open reopens it; the probe then counts for nothing.
        breaker.checked(false);
        assert_eq!(breaker.state(), CircuitState::Open);
        probe.record(Outcome::Success);
        assert_eq!(breaker.state(), CircuitState::Open);
        // A failed check while open keeps it open for the whole recovery timeout.
        breaker.checked(true);
        breaker.checked(false);
        let refused = breaker.admit().unwrap_err();
        assert!(refused.retry_after > Duration::from_secs(59));
    }

    /// A probe from an earlier half-open period, finishing after the breaker opened and
    /// half-opened again, decides nothing in the new period.
    #[test]
    fn a_stale_probe_counts_for_nothing() {
        let breaker = breaker(Duration::ZERO);
        for _ in 0..3 {
            call(&breaker, Outcome::Failure);
        }
        let stale = Breaker::admit(&breaker).unwrap();
        // Meanwhile: reopened by the other half-open period's failure, then half-open again.
        {
            let mut inner = breaker.lock();
            breaker.open(&mut inner);
        }
        let fresh = breaker.admit().unwrap();
        stale.record(Outcome::Success);
        assert!(
            breaker.admit().is_err(),
            "the stale probe freed the fresh one's place"
        );
        fresh.record(Outcome::Success);
        assert_eq!(
            breaker.state(),
            CircuitState::HalfOpen,
            "two successes needed"
        );
    }
}
