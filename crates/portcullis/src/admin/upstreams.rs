//! `GET /v1/upstreams`: each upstream's circuit breaker, health checks, the counts of its
//! calls, and its key pool (counts only, never a key), as this instance sees them.

use std::time::SystemTime;

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use super::AdminState;
use crate::upstream::{CircuitState, HealthState, PoolStatus, UpstreamShared};

/// Every upstream, in name order, and the listener's own certificate.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamsView {
    /// One entry per upstream.
    pub upstreams: Vec<UpstreamView>,
    /// When the main listener's TLS certificate expires (RFC 3339); null without TLS.
    pub listener_certificate_expires: Option<String>,
    /// Whole days until then (negative once past); null without TLS.
    pub listener_certificate_days_left: Option<i64>,
}

/// One upstream.
#[derive(Debug, Serialize, ToSchema)]
pub struct UpstreamView {
    /// Its name in the configuration.
    pub name: String,
    /// Its circuit breaker; null when it has none.
    pub circuit: Option<CircuitView>,
    /// What its active health checks found; null when it has none.
    pub health: Option<HealthView>,
    /// Calls it answered with less than a 5xx.
    pub succeeded: u64,
    /// Calls that failed: unreachable, too slow, or a 5xx.
    pub failed: u64,
    /// `succeeded` over all calls counted; null before the first.
    pub success_rate: Option<f64>,
    /// When the last call succeeded (RFC 3339), if one has.
    pub last_success: Option<String>,
    /// When the last call failed (RFC 3339), if one has.
    pub last_failure: Option<String>,
    /// Its credential's key pool; null when it has none.
    pub keys: Option<PoolStatus>,
    /// When the certificate it last presented expires (RFC 3339); null before the first
    /// TLS handshake, and for plain HTTP.
    pub certificate_expires: Option<String>,
    /// Whole days until then (negative once past).
    pub certificate_days_left: Option<i64>,
}

/// A circuit breaker's state and settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct CircuitView {
    /// `closed`, `open` or `half_open`.
    pub state: CircuitState,
    /// How many times it has changed state.
    pub state_changes: u64,
    /// Consecutive failures counted while closed.
    pub consecutive_failures: u32,
    /// Consecutive failures that open it.
    pub failure_threshold: u32,
    /// Seconds it stays open before probes go through.
    pub recovery_timeout_seconds: u64,
    /// Probe successes that close it.
    pub success_threshold: u32,
    /// Probes let through at once while half-open.
    pub half_open_probes: u32,
}

/// What an upstream's active health checks found, and how they run.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthView {
    /// `unknown` (not checked yet), `healthy` or `unhealthy`.
    pub state: HealthState,
    /// When the last check ended (RFC 3339), if one has.
    pub last_check: Option<String>,
    /// The path checked (below the upstream's URL).
    pub path: String,
    /// Seconds between checks.
    pub interval_seconds: f64,
    /// Consecutive failed checks that make it unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that make it healthy again.
    pub healthy_threshold: u32,
}

impl UpstreamView {
    fn of(upstream: &UpstreamShared) -> Self {
        let calls = upstream.calls();
        let total = calls.succeeded + calls.failed;
        let time =
            |at: Option<SystemTime>| at.map(|at| humantime::format_rfc3339_millis(at).to_string());
        let expires = upstream.certificate_expires();
        Self {
            name: upstream.name().to_owned(),
            circuit: upstream.breaker().map(|breaker| {
                let settings = breaker.settings();
                CircuitView {
                    state: breaker.state(),
                    state_changes: breaker.changes(),
                    consecutive_failures: breaker.consecutive_failures(),
                    failure_threshold: settings.failure_threshold,
                    recovery_timeout_seconds: settings.recovery_timeout.as_secs(),
                    success_threshold: settings.success_threshold,
                    half_open_probes: settings.half_open_probes,
                }
            }),
            health: upstream.health().map(|health| {
                let settings = health.settings();
                HealthView {
                    state: health.state(),
                    last_check: time(health.last_check()),
                    path: settings.path.clone(),
                    interval_seconds: settings.interval.as_secs_f64(),
                    unhealthy_threshold: settings.unhealthy_threshold,
                    healthy_threshold: settings.healthy_threshold,
                }
            }),
            succeeded: calls.succeeded,
            failed: calls.failed,
            success_rate: (total > 0).then(|| calls.succeeded as f64 / total as f64),
            last_success: time(calls.last_success),
            last_failure: time(calls.last_failure),
            keys: upstream.keys(),
            certificate_expires: expires.map(|at| humantime::format_rfc3339(at).to_string()),
            certificate_days_left: expires.map(days_left),
        }
    }
}

/// Whole days from now until `at`, negative once past.
fn days_left(at: SystemTime) -> i64 {
    let seconds = match at.duration_since(SystemTime::now()) {
        Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap_or(i64::MAX),
        Err(past) => -i64::try_from(past.duration().as_secs()).unwrap_or(i64::MAX),
    };
    seconds / 86_400
}

/// Seconds since the Unix epoch, as Prometheus takes times.
fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Each upstream's circuit breaker, call counts and key pool, on this instance.
#[utoipa::path(get, path = "/v1/upstreams", tag = "upstreams",
    responses((status = 200, description = "Every upstream's state", body = UpstreamsView)))]
pub async fn upstreams(State(state): State<AdminState>) -> Json<UpstreamsView> {
    let mut upstreams: Vec<UpstreamView> = state
        .upstreams
        .iter()
        .map(|upstream| UpstreamView::of(upstream))
        .collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    let listener = state.listener_certificate;
    Json(UpstreamsView {
        upstreams,
        listener_certificate_expires: listener.map(|at| humantime::format_rfc3339(at).to_string()),
        listener_certificate_days_left: listener.map(days_left),
    })
}

/// The upstreams' lines of `/metrics`, in the Prometheus text format, with the listener
/// certificate's expiry.
pub fn metrics(
    upstreams: &[std::sync::Arc<UpstreamShared>],
    listener_certificate: Option<SystemTime>,
    text: &mut String,
) {
    use std::fmt::Write;
    text.push_str(
        "# HELP portcullis_upstream_certificate_expiry_timestamp_seconds When the certificate each upstream last presented expires.\n\
         # TYPE portcullis_upstream_certificate_expiry_timestamp_seconds gauge\n",
    );
    for upstream in upstreams {
        if let Some(expires) = upstream.certificate_expires() {
            let _ = writeln!(
                text,
                "portcullis_upstream_certificate_expiry_timestamp_seconds{{upstream=\"{}\"}} {}",
                label(upstream.name()),
                unix_seconds(expires)
            );
        }
    }
    if let Some(expires) = listener_certificate {
        let _ = writeln!(
            text,
            "# HELP portcullis_listener_certificate_expiry_timestamp_seconds When the main listener's TLS certificate expires.\n\
             # TYPE portcullis_listener_certificate_expiry_timestamp_seconds gauge\n\
             portcullis_listener_certificate_expiry_timestamp_seconds {}",
            unix_seconds(expires)
        );
    }
    text.push_str(
        "# HELP portcullis_upstream_calls_total Calls to each upstream, by outcome.\n\
         # TYPE portcullis_upstream_calls_total counter\n",
    );
    for upstream in upstreams {
        let calls = upstream.calls();
        let name = label(upstream.name());
        for (outcome, count) in [("success", calls.succeeded), ("failure", calls.failed)] {
            let _ = writeln!(
                text,
                "portcullis_upstream_calls_total{{upstream=\"{name}\",outcome=\"{outcome}\"}} {count}"
            );
        }
    }
    text.push_str(
        "# HELP portcullis_upstream_circuit_state Each upstream's circuit breaker: 1 for its current state.\n\
         # TYPE portcullis_upstream_circuit_state gauge\n",
    );
    for upstream in upstreams {
        if let Some(breaker) = upstream.breaker() {
            let name = label(upstream.name());
            for (state, value) in [
                ("closed", CircuitState::Closed),
                ("open", CircuitState::Open),
                ("half_open", CircuitState::HalfOpen),
            ] {
                let on = u8::from(breaker.state() == value);
                let _ = writeln!(
                    text,
                    "portcullis_upstream_circuit_state{{upstream=\"{name}\",state=\"{state}\"}} {on}"
                );
            }
        }
    }
    text.push_str(
        "# HELP portcullis_upstream_healthy Each upstream with health checks: 1 while it passes them (0 before the first).\n\
         # TYPE portcullis_upstream_healthy gauge\n",
    );
    for upstream in upstreams {
        if let Some(health) = upstream.health() {
            let healthy = u8::from(health.state() == HealthState::Healthy);
            let _ = writeln!(
                text,
                "portcullis_upstream_healthy{{upstream=\"{}\"}} {healthy}",
                label(upstream.name())
            );
        }
    }
    text.push_str(
        "# HELP portcullis_upstream_keys Each upstream's credential keys, by state.\n\
         # TYPE portcullis_upstream_keys gauge\n",
    );
    for upstream in upstreams {
        if let Some(keys) = upstream.keys() {
            let name = label(upstream.name());
            for (state, count) in [
                ("healthy", keys.healthy),
                ("refused", keys.refused),
                ("rate_limited", keys.rate_limited),
            ] {
                let _ = writeln!(
                    text,
                    "portcullis_upstream_keys{{upstream=\"{name}\",state=\"{state}\"}} {count}"
                );
            }
        }
    }
}

/// A Prometheus label value: backslashes, quotes and line breaks escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
