//! `/health` (liveness) and `/ready` (readiness), the only routes that need no credential.
//! Their answers say up or not, never why in terms of versions, hosts or configuration.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Response, StatusCode, header};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::audit::{AuditHealth, AuditState};
use crate::base::body::{self, ResponseBody};
use crate::base::problem::{Problem, ProblemKind};
use crate::json_line::Line;
use crate::ratelimit::{BackendState, Limiter};
use crate::store::Store;
use crate::upstream::{HealthState, Upstream, UpstreamHealth};

/// How long one upstream connection attempt may take during a readiness check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a readiness result is reused, so a flood of `/ready` cannot become a flood
/// of connections to the upstreams: with one check in flight per worker at a time, an
/// anonymous client can cause at most one check per worker per second.
const PROBE_CACHE: Duration = Duration::from_secs(1);

/// Which probe a path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// `GET /health`: the process is up.
    Liveness,
    /// `GET /ready`: the upstreams are reachable (or pass their health checks).
    Readiness,
}

impl Probe {
    /// The probe `path` asks for, if any.
    pub fn for_path(path: &str) -> Option<Self> {
        match path {
            "/health" => Some(Self::Liveness),
            "/ready" => Some(Self::Readiness),
            _ => None,
        }
    }
}

/// Answers the probes.
#[derive(Debug)]
pub struct Health {
    upstreams: Vec<Arc<Upstream>>,
    store: Option<Store>,
    audit: Option<AuditHealth>,
    last_readiness: CheckCache<Readiness>,
}

/// The outcome of a readiness check.
#[derive(Debug, Clone, Copy)]
struct Readiness {
    /// Why the gateway is not ready, if it is not.
    unready: Option<&'static str>,
    /// Where rate limits are kept, when a shared backend is configured.
    rate_limit_backend: Option<BackendState>,
    /// Where audit events go, when the audit log is on.
    audit: Option<AuditState>,
}

impl Health {
    /// Readiness depends on reaching every one of `upstreams` and the store, if any, and on
    /// the audit log's store taking its writes, if the audit log is on.
    pub fn new(
        upstreams: Vec<Arc<Upstream>>,
        store: Option<Store>,
        audit: Option<AuditHealth>,
    ) -> Self {
        Self {
            upstreams,
            store,
            audit,
            last_readiness: CheckCache::default(),
        }
    }

    /// The answer to `probe` for a request with `method`; readiness also asks `limiter`
    /// where rate limits are kept.
    pub async fn answer(
        &self,
        probe: Probe,
        method: &Method,
        limiter: &Limiter,
    ) -> Result<Response<ResponseBody>, Problem> {
        if method != Method::GET && method != Method::HEAD {
            return Err(Problem::new(ProblemKind::MethodNotAllowed)
                .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD")));
        }
        let body = match probe {
            Probe::Liveness => br#"{"status":"ok"}"#.to_vec(),
            Probe::Readiness => {
                let readiness = self.readiness(limiter).await;
                if let Some(reason) = readiness.unready {
                    return Err(Problem::new(ProblemKind::NotReady).with_detail(reason));
                }
                let mut body = Vec::with_capacity(64);
                let mut line = Line::start(&mut body);
                line.text("status", Some("ready"));
                // `fallback` tells the operator that limits are per instance for now,
                // `unavailable` that limited routes are refused. Neither fails the probe:
                // a Redis outage would otherwise take every replica out at once, unlimited
                // routes included.
                if let Some(backend) = readiness.rate_limit_backend {
                    line.text("rate_limit_backend", Some(backend.as_str()));
                }
                // The audit store down but the spool taking its events: ready, degraded.
                if let Some(audit) = readiness.audit {
                    let state = match audit {
                        AuditState::Degraded => "degraded",
                        AuditState::Ok => "ok",
                        // Not ready, answered above.
                        AuditState::Failing => "failing",
                    };
                    line.text("audit", Some(state));
                }
                line.close();
                body
            }
        };
        let mut response = Response::new(body::full(body));
        *response.status_mut() = StatusCode::OK;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(response)
    }

    async fn readiness(&self, limiter: &Limiter) -> Readiness {
        self.last_readiness
            .get_or_check(self.check_readiness(limiter))
            .await
    }

    async fn check_readiness(&self, limiter: &Limiter) -> Readiness {
        let rate_limit_backend = match limiter.is_shared() {
            true => Some(limiter.backend_state().await),
            false => None,
        };
        let mut readiness = Readiness {
            unready: None,
            rate_limit_backend,
            audit: self.audit.as_ref().map(AuditHealth::state),
        };
        // Records pile up in memory while neither the audit store nor the spool takes
        // them, until the gateway has to stop serving: load balancers should move traffic
        // away before that.
        if readiness.audit == Some(AuditState::Failing) {
            readiness.unready = Some("the audit log's store and spool refuse writes");
            return readiness;
        }
        if let Some(store) = &self.store {
            let reachable = tokio::time::timeout(PROBE_TIMEOUT, store.is_reachable())
                .await
                .unwrap_or(false);
            if !reachable {
                readiness.unready = Some("the credential store is unreachable");
                return readiness;
            }
        }
        for upstream in &self.upstreams {
            // An upstream with health checks is as they found it; another, as a TCP
            // connection finds it now.
            let unready = match upstream.health().map(UpstreamHealth::state) {
                Some(HealthState::Healthy) => None,
                Some(HealthState::Unhealthy) => Some("an upstream fails its health checks"),
                Some(HealthState::Unknown) => Some("an upstream has not been checked yet"),
                None if upstream.is_reachable(PROBE_TIMEOUT).await => None,
                None => Some("an upstream is unreachable"),
            };
            if unready.is_some() {
                readiness.unready = unready;
                return readiness;
            }
        }
        readiness
    }
}

/// One check at a time, its result reused for [`PROBE_CACHE`] from when the check started.
/// The lock is held across the check, so concurrent callers wait for the one in flight
/// instead of starting their own; and a check whose caller went away (a client that resets
/// its probes) still counts as started, so cancelled probes cannot start one check after
/// another: until the next check is due, the last result found is the answer.
#[derive(Debug)]
struct CheckCache<T> {
    state: Mutex<CheckState<T>>,
}

#[derive(Debug)]
struct CheckState<T> {
    /// When the last check started, whether it finished or not.
    started: Option<Instant>,
    /// What the last finished check found.
    found: Option<T>,
}

impl<T> Default for CheckCache<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(CheckState {
                started: None,
                found: None,
            }),
        }
    }
}

impl<T: Copy> CheckCache<T> {
    /// The last result while it is fresh, else what `check` finds.
    async fn get_or_check(&self, check: impl Future<Output = T>) -> T {
        let mut state = self.state.lock().await;
        if let (Some(started), Some(found)) = (state.started, state.found)
            && started.elapsed() < PROBE_CACHE
        {
            return found;
        }
        state.started = Some(Instant::now());
        let found = check.await;
        state.found = Some(found);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn checks_run_one_at_a_time_and_cancelled_ones_still_count() {
        let cache = CheckCache::default();
        let runs = AtomicU32::new(0);
        let check = |value: u32, takes: Duration| {
            let runs = &runs;
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(takes).await;
                value
            }
        };
        let short = Duration::from_millis(10);

        // Concurrent callers share the check in flight.
        let (a, b) = tokio::join!(
            cache.get_or_check(check(1, short)),
            cache.get_or_check(check(2, short))
        );
        assert_eq!((a, b), (1, 1));
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        // Due again, a check starts and its caller goes away; the next caller within the
        // second gets the last result instead of a new check.
        tokio::time::sleep(PROBE_CACHE).await;
        let cancelled =
            tokio::time::timeout(short, cache.get_or_check(check(3, Duration::from_secs(5))));
        assert!(cancelled.await.is_err());
        assert_eq!(cache.get_or_check(check(4, short)).await, 1);
        assert_eq!(runs.load(Ordering::SeqCst), 2);

        tokio::time::sleep(PROBE_CACHE).await;
        assert_eq!(cache.get_or_check(check(5, short)).await, 5);
    }
}
