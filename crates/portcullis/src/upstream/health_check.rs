//! Active health checks: one task per upstream (not per worker) sends `GET path` every
//! `interval`, over the upstream's own TLS and with its credential, bypassing its in-flight
//! cap, breaker and retries. A check passes on a 2xx answer within `timeout`.
//! `unhealthy_threshold` consecutive failures make the upstream unhealthy: requests to it
//! are refused with 503 without calling it, and `/ready` fails; `healthy_threshold`
//! consecutive passes make it healthy again. Until the first check ends it is `unknown`:
//! requests go through, `/ready` waits; the first check decides at once, and until it has
//! been healthy once, one pass makes it so (as Envoy does: an upstream that starts slowly
//! is not kept out for several intervals).
//!
//! The checks feed the breaker too ([`super::breaker::Breaker::checked`]): a failed check
//! counts as a failed call and keeps an open breaker open; a passed one ends an open
//! breaker's wait, so that the next request probes at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{info, warn};

use super::Upstream;

/// An upstream's health check settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSettings {
    /// The path checked, below the upstream's base path.
    pub path: String,
    /// How often.
    pub interval: Duration,
    /// How long one check may take, its (small) answer read whole.
    pub timeout: Duration,
    /// Consecutive failed checks that make it unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that make it healthy again.
    pub healthy_threshold: u32,
}

/// What the checks say of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// No check has ended yet.
    Unknown,
    /// Passing.
    Healthy,
    /// Failing: requests are refused without calling it.
    Unhealthy,
}

const UNKNOWN: u8 = 0;
const HEALTHY: u8 = 1;
const UNHEALTHY: u8 = 2;

/// An upstream's health as its checks found it, shared by every worker. Written by its one
/// checker task only.
#[derive(Debug)]
pub struct UpstreamHealth {
    settings: HealthCheckSettings,
    state: AtomicU8,
    /// Consecutive passes (positive) or failures (negative) up to the last check.
    streak: AtomicI32,
    /// Whether it has ever been healthy.
    was_healthy: AtomicBool,
    /// When the last check ended, Unix milliseconds; 0 for never.
    last_check_ms: AtomicU64,
}

impl UpstreamHealth {
    /// An upstream not checked yet.
    pub fn new(settings: HealthCheckSettings) -> Self {
        Self {
            settings,
            state: AtomicU8::new(UNKNOWN),
            streak: AtomicI32::new(0),
            was_healthy: AtomicBool::new(false),
            last_check_ms: AtomicU64::new(0),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &HealthCheckSettings {
        &self.settings
    }

    /// What the checks say now.
    pub fn state(&self) -> HealthState {
        match self.state.load(Ordering::Acquire) {
            UNKNOWN => HealthState::Unknown,
            HEALTHY => HealthState::Healthy,
            _ => HealthState::Unhealthy,
        }
    }

    /// Whether requests to it are refused.
    pub fn is_unhealthy(&self) -> bool {
        self.state.load(Ordering::Acquire) == UNHEALTHY
    }

    /// The soonest it can be healthy again: as many intervals as passes it needs.
    pub fn soonest_healthy(&self) -> Duration {
        let passes = if self.was_healthy.load(Ordering::Relaxed) {
            self.settings.healthy_threshold
        } else {
            1
        };
        self.settings.interval.saturating_mul(passes)
    }

    /// When the last check ended.
    pub fn last_check(&self) -> Option<SystemTime> {
        match self.last_check_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// Counts one check; returns the new state when this check changed it.
    fn observe(&self, passed: bool) -> Option<HealthState> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |since| u64::try_from(since.as_millis()).unwrap_or(1));
        self.last_check_ms.store(now.max(1), Ordering::Relaxed);
        let streak = match (passed, self.streak.load(Ordering::Relaxed)) {
            (true, before) if before > 0 => before.saturating_add(1),
            (true, _) => 1,
            (false, before) if before < 0 => before.saturating_sub(1),
            (false, _) => -1,
        };
        self.streak.store(streak, Ordering::Relaxed);
        let streak = streak.unsigned_abs();
        let current = self.state.load(Ordering::Acquire);
        let (next, threshold) = match (passed, current) {
            (_, UNKNOWN) => (if passed { HEALTHY } else { UNHEALTHY }, 1),
            (true, _) if !self.was_healthy.load(Ordering::Relaxed) => (HEALTHY, 1),
            (true, _) => (HEALTHY, self.settings.healthy_threshold),
            (false, _) => (UNHEALTHY, self.settings.unhealthy_threshold),
        };
        if current == next || streak < threshold {
            return None;
        }
        self.state.store(next, Ordering::Release);
        if next == HEALTHY {
            self.was_healthy.store(true, Ordering::Relaxed);
        }
        Some(self.state())
    }
}

/// Checks `upstream` (which has a health check) forever: run it as a task of its own, and
/// drop it to stop.
pub async fn check_forever(upstream: Arc<Upstream>) {
    let Some(health) = upstream.shared.health.as_ref() else {
        return;
    };
    let settings = health.settings().clone();
    let mut ticks = tokio::time::interval(settings.interval);
    // A check that took long is not followed by a burst of them.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let verdict = upstream.check(&settings.path, settings.timeout).await;
        if let Err(unsent @ CheckFailed::Unsent) = &verdict {
            tracing::debug!(upstream = %upstream.shared.name, cause = %unsent, "upstream health check skipped");
            continue;
        }
        let passed = verdict.is_ok();
        if let Some(breaker) = &upstream.shared.breaker {
            breaker.checked(passed);
        }
        let name = &upstream.shared.name;
        match (health.observe(passed), verdict) {
            (Some(HealthState::Unhealthy), Err(cause)) => {
                warn!(upstream = %name, %cause, "upstream failed its health checks; requests to it are refused until it passes again");
            }
            (Some(HealthState::Healthy), _) => {
                info!(upstream = %name, "upstream passes its health checks");
            }
            (_, Err(cause)) => {
                tracing::debug!(upstream = %name, %cause, "upstream health check failed");
            }
            _ => {}
        }
    }
}

/// Why a health check failed, as logged: the status or the kind of failure, never a URL
/// (which may hold a secret path prefix).
#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    /// It answered, with something else than a 2xx.
    #[error("answered {0}")]
    Status(http::StatusCode),
    /// No answer within the check's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// It could not be called.
    #[error("{0}")]
    Call(#[from] super::ForwardError),
    /// It was not sent: every upstream key is resting after the upstream refused it, so
    /// nothing is learnt of the upstream's health, either way.
    #[error("not sent: every upstream key is resting")]
    Unsent,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(unhealthy: u32, healthy: u32) -> UpstreamHealth {
        UpstreamHealth::new(HealthCheckSettings {
            path: "/health".to_owned(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
        })
    }

    #[test]
    fn the_first_check_decides_then_thresholds_do() {
        let health = health(2, 3);
        assert_eq!(health.state(), HealthState::Unknown);
        assert!(health.last_check().is_none());
        assert_eq!(health.observe(true), Some(HealthState::Healthy));
        assert!(health.last_check().is_some());
        // One failure is not enough; a pass resets the count.
        assert_eq!(health.observe(false), None);
        assert_eq!(health.observe(true), None);
        assert_eq!(health.observe(false), None);
        assert_eq!(health.observe(false), Some(HealthState::Unhealthy));
        assert!(health.is_unhealthy());
        assert_eq!(health.observe(false), None);
        // Three passes in a row bring it back.
        assert_eq!(health.observe(true), None);
        assert_eq!(health.observe(true), None);
        assert_eq!(health.observe(true), Some(HealthState::Healthy));
        assert!(!health.is_unhealthy());
    }

    #[test]
    fn an_upstream_never_healthy_needs_one_pass() {
        let health = health(3, 3);
        assert_eq!(health.observe(false), Some(HealthState::Unhealthy));
        assert_eq!(health.observe(false), None);
        assert_eq!(health.observe(true), Some(HealthState::Healthy));
    }
}
