//! `/health` (liveness) and `/ready` (readiness), the only routes that need no credential.
//! Their answers say up or not, never why in terms of versions, hosts or configuration.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method, Response, StatusCode, header};

use super::problem::{Problem, ProblemKind};
use crate::body::{self, ResponseBody};
use crate::store::Store;
use crate::upstream::Upstream;

/// How long one upstream connection attempt may take during a readiness check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a readiness result is reused, so a flood of `/ready` cannot become a flood
/// of connections to the upstreams.
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
    last_readiness: Mutex<Option<(Instant, bool)>>,
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

    /// The answer to `probe` for a request with `method`.
    pub async fn answer(
        &self,
        probe: Probe,
        method: &Method,
    ) -> Result<Response<ResponseBody>, Problem> {
        if method != Method::GET && method != Method::HEAD {
            return Err(Problem::new(ProblemKind::MethodNotAllowed)
                .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD")));
        }
        if probe == Probe::Readiness && !self.ready().await {
            return Err(
                Problem::new(ProblemKind::NotReady).with_detail("an upstream is unreachable")
            );
        }
        let body = if probe == Probe::Liveness {
            r#"{"status":"ok"}"#
        } else {
            r#"{"status":"ready"}"#
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

    async fn ready(&self) -> bool {
        if let Ok(guard) = self.last_readiness.lock()
            && let Some((at, ready)) = *guard
            && at.elapsed() < PROBE_CACHE
        {
            return ready;
        }
        let mut ready = match &self.store {
            Some(store) => tokio::time::timeout(PROBE_TIMEOUT, store.is_reachable())
                .await
                .unwrap_or(false),
            None => true,
        };
        for upstream in &self.upstreams {
            if !ready {
                break;
            }
            ready = upstream.is_reachable(PROBE_TIMEOUT).await;
        }
        if let Ok(mut guard) = self.last_readiness.lock() {
            *guard = Some((Instant::now(), ready));
        }
        ready
    }
}
