//! `/health` (liveness) and `/ready` (readiness), the only routes that need no credential.
//! Their answers say up or not, never why in terms of versions, hosts or configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Response, StatusCode, header};
use tokio::sync::Mutex;

use super::problem::{Problem, ProblemKind};
use crate::body::{self, ResponseBody};
use crate::ratelimit::{BackendState, Limiter};
use crate::store::Store;
use crate::upstream::Upstream;

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
    /// `GET /ready`: the upstreams are reachable.
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
    /// The last result and when it was found; held across the check, so concurrent
    /// probes wait for the one in flight instead of starting their own.
    last_readiness: Mutex<Option<(Instant, Readiness)>>,
}

/// The outcome of a readiness check.
#[derive(Debug, Clone, Copy)]
struct Readiness {
    /// Why the gateway is not ready, if it is not.
    unready: Option<&'static str>,
    /// Where rate limits are kept, when a shared backend is configured.
    rate_limit_backend: Option<BackendState>,
}

impl Health {
    /// Readiness depends on reaching every one of `upstreams` and the store, if any.
    pub fn new(upstreams: Vec<Arc<Upstream>>, store: Option<Store>) -> Self {
        Self {
            upstreams,
            store,
            last_readiness: Mutex::new(None),
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
            Probe::Liveness => r#"{"status":"ok"}"#.to_owned(),
            Probe::Readiness => {
                let readiness = self.readiness(limiter).await;
                if let Some(reason) = readiness.unready {
                    return Err(Problem::new(ProblemKind::NotReady).with_detail(reason));
                }
                match readiness.rate_limit_backend {
                    // `fallback` tells the operator that limits are per instance for now,
                    // `unavailable` that limited routes are refused. Neither fails the
                    // probe: a Redis outage would otherwise take every replica out at once,
                    // unlimited routes included.
                    Some(backend) => format!(
                        r#"{{"status":"ready","rate_limit_backend":"{}"}}"#,
                        backend.as_str()
                    ),
                    None => r#"{"status":"ready"}"#.to_owned(),
                }
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
        let mut last = self.last_readiness.lock().await;
        if let Some((at, readiness)) = *last
            && at.elapsed() < PROBE_CACHE
        {
            return readiness;
        }
        let readiness = self.check_readiness(limiter).await;
        *last = Some((Instant::now(), readiness));
        readiness
    }

    async fn check_readiness(&self, limiter: &Limiter) -> Readiness {
        let rate_limit_backend = match limiter.is_shared() {
            true => Some(limiter.backend_state().await),
            false => None,
        };
        let mut readiness = Readiness {
            unready: None,
            rate_limit_backend,
        };
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
            if !upstream.is_reachable(PROBE_TIMEOUT).await {
                readiness.unready = Some("an upstream is unreachable");
                return readiness;
            }
        }
        readiness
    }
}
