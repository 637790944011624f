//! Upstreams: where requests go, and how they are sent there.
//!
//! Each [`Upstream`] owns its connection pool, so per-upstream transport settings (pinned
//! certificates, concurrency caps, circuit breaking) have one place to live.

mod breaker;
mod credential;
mod forward;
mod health_check;
mod in_flight;
mod negotiating;
mod outline;
mod pool;
mod retry;
mod tls;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;

pub use breaker::{
    Breaker, BreakerSettings, CallCounts, CallStats, CircuitOpen, CircuitState, Outcome,
};
pub use credential::{
    Bench, Credential, CredentialError, KeyPool, KeysExhausted, PoolStatus, split_keys,
};
pub use forward::{HeaderRules, prepare_request_headers, remove_hop_by_hop_and_proxies};
pub use health_check::{
    CheckFailed, HealthCheckSettings, HealthState, UpstreamHealth, check_forever,
};
pub use in_flight::{Busy, InFlightLimit};
pub use outline::{OutlineAccess, OutlineAccessError};
pub use pool::PoolError;
pub use retry::{REPLAYABLE_BODY_MAX, RetryPolicy, RetrySettings};
pub use tls::{
    CertificateSeen, PinMismatch, TlsSetupError, UpstreamTls, certificate_expiry, parse_cert_pin,
    parse_spki_pin, pem_certificates,
};

use crate::base::body::{HoldingBody, RequestBody, ResponseBody, is_framed_plainly};
use crate::config::HttpVersion;
use crate::hygiene::{BodyTooLarge, ClientBodyError, LimitedBody};
use crate::streams::{UpstreamStreams, is_stream};

/// The body the gateway sends upstream: the client's, limited as it streams, or one the
/// gateway holds whole (an empty one, to send a request again with another key).
pub type UpstreamBody = LimitedBody<Either<RequestBody, Full<Bytes>>>;

/// A configuration an [`Upstream`] cannot be built from.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The URL does not parse, or is not an absolute http(s) URL with a host. Not quoted:
    /// its path may be a secret (an Outline management URL's).
    #[error(
        "upstream {name:?}: its url is not an absolute http:// or https:// URL with a host and no query"
    )]
    InvalidUrl {
        /// The upstream's name.
        name: String,
    },
    /// The URL carries credentials, which would end up in logs.
    #[error("upstream {name:?}: the URL must not contain a user name or password")]
    CredentialsInUrl {
        /// The upstream's name.
        name: String,
    },
}

/// Why a request could not be completed upstream. The gateway turns each into a problem
/// that says which, and nothing more.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No response headers within the timeout of an attempt.
    #[error("upstream did not answer within {0:?}")]
    Timeout(Duration),
    /// The attempts and pauses together took longer than the total timeout.
    #[error("upstream calls took longer than the total timeout of {0:?}")]
    TotalTimeout(Duration),
    /// The client's body did not arrive in time: the attempt timed out while the body was
    /// still being sent, or it could not be read whole in time to be held for a resend.
    #[error("the client's request body did not arrive in time")]
    ClientBodyTimeout,
    /// No TCP connection could be opened within the connect timeout.
    #[error("no connection to the upstream within the connect timeout")]
    ConnectTimeout(#[source] PoolError),
    /// The client's streamed body went over the limit.
    #[error(transparent)]
    BodyTooLarge(#[from] BodyTooLarge),
    /// The client's body could not be read (malformed framing, cut short): the call
    /// failed with a [`ClientBodyError`] in its causes.
    #[error("the client's request body could not be read")]
    ClientBody(#[source] crate::base::body::BoxError),
    /// Connection refused, reset, TLS failure or a malformed response.
    #[error("upstream request failed")]
    Unavailable(#[source] PoolError),
    /// Every key of the upstream's credential is benched.
    #[error(transparent)]
    KeysExhausted(#[from] KeysExhausted),
    /// The upstream's circuit breaker is open.
    #[error(transparent)]
    CircuitOpen(#[from] CircuitOpen),
    /// The upstream fails its health checks; it cannot pass them sooner than this.
    #[error("the upstream fails its health checks")]
    Unhealthy(Duration),

    /// The upstream's certificate matches none of its pins: the handshake failed before
    /// any request byte was sent.
    #[error(transparent)]
    PinMismatch(PinMismatch),
    /// The upstream switched protocols (101) on a request the gateway did not upgrade.
    #[error("upstream answered 101 Switching Protocols to a request that asked for no upgrade")]
    UnexpectedUpgrade,
    /// The upstream framed its response with a transfer coding other than `chunked`
    /// alone, which the gateway would relay undecoded.
    #[error("upstream framed its response with a transfer coding other than chunked")]
    UnknownTransferCoding,
    /// The upstream's in-flight cap is reached and no slot freed in time.
    #[error(transparent)]
    Busy(#[from] Busy),
}

/// Where an upstream URL points: an absolute `http://` or `https://` URL with a host, no
/// credentials and no query.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    scheme: Scheme,
    authority: Authority,
    base_path: String,
    host: HeaderValue,
    /// `scheme://authority/`, what the connection pool connects to.
    origin: Uri,
    /// Requests carry the client's `Host` rather than this one's.
    preserve_host: bool,
}

impl UpstreamTarget {
    /// The path every request to it starts with (no trailing `/`; empty for none). It may
    /// be a secret: an Outline management URL's path is.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Parses the URL `url` of the upstream `name`.
    pub fn parse(name: &str, url: &str) -> Result<Self, UpstreamError> {
        let invalid = || UpstreamError::InvalidUrl {
            name: name.to_owned(),
        };
        let uri: Uri = url.parse().map_err(|_| invalid())?;
        let scheme = uri.scheme().cloned().ok_or_else(invalid)?;
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return Err(invalid());
        }
        let authority = uri.authority().cloned().ok_or_else(invalid)?;
        if authority.as_str().contains('@') {
            return Err(UpstreamError::CredentialsInUrl {
                name: name.to_owned(),
            });
        }
        if authority.host().is_empty() || uri.query().is_some() {
            return Err(invalid());
        }
        let origin = Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority.clone());
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            parts
        })
        .map_err(|_| invalid())?;
        Ok(Self {
            host: HeaderValue::from_str(authority.as_str()).map_err(|_| invalid())?,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            scheme,
            authority,
            origin,
            preserve_host: false,
        })
    }

    /// The same target; with `preserve`, requests carry the client's own `Host` (as
    /// hygiene validated it) instead of the upstream's: for virtual-hosted upstreams, and
    /// those that check `Host` themselves.
    pub fn preserving_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
        self
    }
}

impl UpstreamTarget {
    /// Whether connections to it are TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == Scheme::HTTPS
    }
}

/// How connections to an upstream are opened: the TCP connect timeout and the TLS client
/// (its trust, its pins, its client certificate), built once for every worker.
#[derive(Debug, Clone)]
pub struct Transport {
    connect_timeout: Duration,
    version: HttpVersion,
    tls: Arc<rustls::ClientConfig>,
    certificate: Arc<CertificateSeen>,
}

impl Transport {
    /// A transport that gives up connecting after `connect_timeout`, speaks `version`,
    /// with TLS as `tls` says (used only for `https://` upstreams).
    pub fn new(
        connect_timeout: Duration,
        version: HttpVersion,
        tls: &UpstreamTls,
    ) -> Result<Self, TlsSetupError> {
        let certificate = Arc::new(CertificateSeen::default());
        Ok(Self {
            connect_timeout,
            version,
            tls: Arc::new(tls.client_config(certificate.clone())?),
            certificate,
        })
    }

    /// When the certificate the upstream last presented expires, once one was accepted.
    pub fn certificate(&self) -> &Arc<CertificateSeen> {
        &self.certificate
    }
}

/// How an upstream's calls are guarded: its circuit breaker, its retries, the time all
/// attempts together may take, its health checks, and how many streams it may carry.
#[derive(Debug, Clone, Default)]
pub struct Resilience {
    /// The breaker's settings; none for no breaker.
    pub breaker: Option<BreakerSettings>,
    /// The retries' settings; none for no retries.
    pub retry: Option<RetrySettings>,
    /// All attempts and pauses together; none for no bound beyond each attempt's.
    pub total_timeout: Option<Duration>,
    /// Its active health checks; none for none.
    pub health_check: Option<HealthCheckSettings>,
    /// Most streams open to it at once, over every worker; none for no cap.
    pub max_streams: Option<usize>,
}

/// What every worker's copy of one upstream shares: its in-flight cap, its circuit
/// breaker, its retry budget, the counts of its calls and its credential; what the admin
/// API reports.
#[derive(Debug)]
pub struct UpstreamShared {
    name: Arc<str>,
    in_flight: Option<Arc<InFlightLimit>>,
    breaker: Option<Breaker>,
    retry: Option<RetryPolicy>,
    total_timeout: Option<Duration>,
    health: Option<UpstreamHealth>,
    streams: Option<UpstreamStreams>,
    calls: CallStats,
    credential: Option<Arc<Credential>>,
    certificate: Option<Arc<CertificateSeen>>,
}

impl UpstreamShared {
    /// The shared state of the upstream `name`; `certificate` notes the expiry of the
    /// certificate its TLS connections accept.
    pub fn new(
        name: &str,
        in_flight: Option<Arc<InFlightLimit>>,
        resilience: Resilience,
        credential: Option<Arc<Credential>>,
        certificate: Option<Arc<CertificateSeen>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name: Arc::from(name),
            in_flight,
            breaker: resilience.breaker.map(Breaker::new),
            retry: resilience.retry.map(RetryPolicy::new),
            total_timeout: resilience.total_timeout,
            health: resilience.health_check.map(UpstreamHealth::new),
            streams: resilience.max_streams.map(UpstreamStreams::new),
            calls: CallStats::default(),
            credential,
            certificate,
        })
    }

    /// When the certificate it last presented expires, once one was accepted over TLS.
    pub fn certificate_expires(&self) -> Option<std::time::SystemTime> {
        self.certificate.as_ref()?.expires()
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its circuit breaker, if it has one.
    pub fn breaker(&self) -> Option<&Breaker> {
        self.breaker.as_ref()
    }

    /// What its health checks found, when it has them.
    pub fn health(&self) -> Option<&UpstreamHealth> {
        self.health.as_ref()
    }

    /// How its calls went.
    pub fn calls(&self) -> CallCounts {
        self.calls.counts()
    }

    /// Its credential's key pool, if it has one: counts only, never a key.
    pub fn keys(&self) -> Option<PoolStatus> {
        let (_, pool) = self.credential.as_ref()?.header()?;
        Some(pool.status())
    }
}

/// A named upstream service.
pub struct Upstream {
    scheme: Scheme,
    authority: Authority,
    /// The URL's path and the credential's secret path prefix: never shown.
    base_path: String,
    host: HeaderValue,
    timeout: Duration,
    connections: Connections,
    /// Where requests that upgrade their connection go (over HTTP/1.1, never pooled).
    upgrades: Arc<pool::Pool>,
    /// Requests carry the client's `Host` rather than the upstream's.
    preserve_host: bool,
    shared: Arc<UpstreamShared>,
}

/// Where one worker's requests to an upstream go: the HTTP/1.1 pool, or hyper-util's
/// client for HTTP/2 and versions TLS negotiates.
enum Connections {
    Http1(Arc<pool::Pool>),
    Negotiating(Arc<negotiating::NegotiatingPool>),
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.shared.name)
            .field("authority", &self.authority)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// One worker's copy of the upstream `shared` describes, at `target`, reached over
    /// `transport`, whose requests must produce response headers within `timeout`.
    pub fn new(
        target: &UpstreamTarget,
        transport: &Transport,
        timeout: Duration,
        shared: Arc<UpstreamShared>,
    ) -> Arc<Self> {
        let UpstreamTarget {
            scheme,
            authority,
            base_path,
            host,
            origin,
            preserve_host,
        } = target.clone();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(transport.connect_timeout));
        // What TLS offers by ALPN follows the version: h2 and http/1.1 for `auto`.
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config((*transport.tls).clone())
            .https_or_http();
        // Plain TCP negotiates nothing: `auto` is HTTP/1.1 there.
        let version = match transport.version {
            HttpVersion::Auto if scheme != Scheme::HTTPS => HttpVersion::Http1,
            version => version,
        };
        // Upgrades (WebSockets) always go over HTTP/1.1, on connections of their own.
        let http1 = || {
            let builder = HttpsConnectorBuilder::new()
                .with_tls_config((*transport.tls).clone())
                .https_or_http();
            pool::Pool::new(
                builder.enable_http1().wrap_connector(http.clone()),
                origin.clone(),
            )
        };
        let (connections, upgrades) = match version {
            HttpVersion::Http1 => {
                let pool = http1();
                (Connections::Http1(pool.clone()), pool)
            }
            HttpVersion::Http2 => (
                Connections::Negotiating(negotiating::NegotiatingPool::new(
                    builder.enable_http2().wrap_connector(http.clone()),
                    origin.clone(),
                    version,
                )),
                http1(),
            ),
            HttpVersion::Auto => (
                Connections::Negotiating(negotiating::NegotiatingPool::new(
                    builder.enable_all_versions().wrap_connector(http.clone()),
                    origin.clone(),
                    version,
                )),
                http1(),
            ),
        };
        let mut base_path = base_path;
        if let Some(prefix) = shared.credential.as_ref().and_then(|c| c.path_prefix()) {
            base_path.push_str(secrecy::ExposeSecret::expose_secret(prefix));
        }
        Arc::new(Self {
            scheme,
            authority,
            base_path,
            host,
            timeout,
            connections,
            upgrades,
            preserve_host,
            shared,
        })
    }

    /// The name it was configured under.
    pub fn name(&self) -> &Arc<str> {
        // Shared with every record rather than copied into each.
        &self.shared.name
    }

    /// What its health checks found, when it has them.
    pub fn health(&self) -> Option<&UpstreamHealth> {
        self.shared.health()
    }

    /// Its cap on open streams, when it has one.
    pub fn streams(&self) -> Option<&UpstreamStreams> {
        self.shared.streams.as_ref()
    }

    /// How long it has for its response head, and for each next piece of a body that does
    /// not stream.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The `Host` header value requests to it carry, unless it [preserves the
    /// client's](Self::preserves_host).
    pub fn host(&self) -> &HeaderValue {
        &self.host
    }

    /// Whether requests carry the `Host` the client named instead of [`Self::host`].
    pub fn preserves_host(&self) -> bool {
        self.preserve_host
    }

    /// The path every request to it starts with (no trailing `/`; empty for none),
    /// secret path prefix included: for mapping its locations back, never to show.
    pub fn base_path(&self) -> &str {
        &self.base_path
    }

    /// Whether a URL's `authority` names this upstream: its host, in any case, with its
    /// own port, no port, or either scheme's default port. The scheme does not matter: an
    /// upstream told `X-Forwarded-Proto: https` redirects to `https://` and its own host,
    /// which reveals the host as much as its real address would.
    pub fn is_origin(&self, authority: &str) -> bool {
        let host_port = authority.rsplit('@').next().unwrap_or(authority);
        let (host, port) = match host_port.rfind(':') {
            Some(colon) if !host_port[colon..].contains(']') => {
                (&host_port[..colon], Some(&host_port[colon + 1..]))
            }
            _ => (host_port, None),
        };
        let port_matches = match port.map(str::parse::<u16>) {
            None => true,
            Some(Ok(port)) => port == self.port() || port == 80 || port == 443,
            Some(Err(_)) => false,
        };
        port_matches && host.eq_ignore_ascii_case(self.authority.host())
    }

    /// The port connections go to.
    fn port(&self) -> u16 {
        let default = if self.scheme == Scheme::HTTPS {
            443
        } else {
            80
        };
        self.authority.port_u16().unwrap_or(default)
    }

    /// The origin-form target (`/base/path?query`) for `path`, below the upstream's own
    /// base path; `path` is already stripped of a route prefix when the route says so.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Uri {
        let mut target = String::with_capacity(
            self.base_path.len() + path.len() + 2 + query.map_or(0, str::len),
        );
        target.push_str(&self.base_path);
        if !path.starts_with('/') {
            target.push('/');
        }
        target.push_str(path);
        if let Some(query) = query {
            target.push('?');
            target.push_str(query);
        }
        // The path passed hygiene, so it is a valid request target.
        Uri::try_from(target).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Sends `request` (already addressed with [`Self::uri_for`]) and returns the response
    /// with hop-by-hop headers removed, in the gateway's own HTTP version (whatever the
    /// upstream spoke), and its body streaming.
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, ForwardError> {
        use http_body_util::BodyExt;

        let shared = &self.shared;
        let upgrade = request.headers().get(http::header::UPGRADE).cloned();
        // A body to be held for resending is read first, before the request takes an
        // in-flight slot or a breaker probe: a slow client holds neither.
        let outgoing = self.prepare(request).await?;
        if let Some(health) = shared.health.as_ref().filter(|h| h.is_unhealthy()) {
            return Err(ForwardError::Unhealthy(health.soonest_healthy()));
        }
        let slot = match &shared.in_flight {
            Some(limit) => Some(limit.acquire().await?),
            None => None,
        };
        let permit = match &shared.breaker {
            Some(breaker) => Some(breaker.admit()?),
            None => None,
        };
        // One timer per attempt, set to whichever ends first: the attempt's timeout or
        // what is left of the total.
        let deadline = shared
            .total_timeout
            .map(|total| (tokio::time::Instant::now() + total, total));
        let sent = match self.send_with_retries(outgoing, deadline).await {
            Ok(response)
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS
                    && !switches_as_asked(upgrade.as_ref(), response.headers()) =>
            {
                Err(ForwardError::UnexpectedUpgrade)
            }
            Ok(response) if !is_framed_plainly(response.headers()) => {
                Err(ForwardError::UnknownTransferCoding)
            }
            sent => sent,
        };
        // The upstream, or one behind it, could not serve (502, 503, 504): as Envoy's
        // gateway failures. A 500 is an answer, often to what the client sent: counted as
        // a failure, a client's bad input could hold the circuit open for everyone.
        let outcome = match &sent {
            Ok(response) if matches!(response.status().as_u16(), 502..=504) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(error) => error.outcome(),
        };
        shared.calls.count(outcome);
        if let Some(permit) = permit {
            permit.record(outcome);
        }
        let response = sent?;
        let (mut parts, body) = response.into_parts();
        // An HTTP/1.0 upstream must not turn the client's status line into HTTP/1.0.
        parts.version = http::Version::HTTP_11;
        // The body was read by its chunks, whatever length the upstream also declared; the
        // client's connection frames it anew (RFC 9112 §6.3 ¶3).
        if parts.headers.contains_key(http::header::TRANSFER_ENCODING) {
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        remove_hop_by_hop_and_proxies(&mut parts.headers);
        let body = body.map_err(Into::into).boxed_unsync();
        // The request stays in flight until its response body has been sent, unless the
        // response is a stream: that is capped as one (`max_streams`), not as a request.
        let length = http_body::Body::size_hint(&body).exact();
        let body = match slot {
            Some(slot) if !is_stream(&parts.headers, length) => {
                HoldingBody::new(body, slot).boxed_unsync()
            }
            _ => body,
        };
        Ok(Response::from_parts(parts, body))
    }

    /// The request as it will go: streaming, or with its body held whole so that it can
    /// be sent again, when the retry policy covers it and the body is declared at most
    /// [`REPLAYABLE_BODY_MAX`] bytes (one declared longer, or not declared at all, streams
    /// once and is not retried). Reading the body is bounded by the attempt timeout.
    async fn prepare(&self, request: Request<UpstreamBody>) -> Result<Outgoing, ForwardError> {
        let covered = self
            .shared
            .retry
            .as_ref()
            .is_some_and(|policy| policy.covers(request.method()));
        let declared = http_body::Body::size_hint(request.body()).exact();
        if !covered || declared.is_none_or(|length| length > REPLAYABLE_BODY_MAX) {
            return Ok(Outgoing::Streaming(request));
        }
        let (head, body) = request.into_parts();
        match tokio::time::timeout(self.timeout, read_whole(body)).await {
            Ok(body) => Ok(Outgoing::Held(Request::from_parts(head, ()), body?)),
            Err(_) => Err(ForwardError::ClientBodyTimeout),
        }
    }

    /// Sends `outgoing`, again after a failure while the retry policy allows (a held body
    /// only). One call of [`Self::send_once`] in the loop, not one for each case: each call
    /// written out is a future of its own inside this one, which is moved whole (about a
    /// kilobyte each; bench/RESULTS.md, 2026-11-29).
    async fn send_with_retries(
        &self,
        outgoing: Outgoing,
        deadline: Deadline,
    ) -> Result<Response<pool::PooledBody>, ForwardError> {
        let (mut request, held) = match outgoing {
            Outgoing::Streaming(request) => (request, None),
            Outgoing::Held(head, body) => (resend(&head, body.clone()), Some((head, body))),
        };
        let policy = held.as_ref().and(self.shared.retry.as_ref());
        if let Some(policy) = policy {
            policy.count_request();
        }
        let mut attempt = 1;
        loop {
            let sent = self.send_once(request, deadline).await;
            let (Some(policy), Some((head, body))) = (policy, &held) else {
                return sent;
            };
            let retryable = match &sent {
                Ok(response) => matches!(response.status().as_u16(), 502..=504),
                Err(
                    ForwardError::Timeout(_)
                    | ForwardError::ConnectTimeout(_)
                    | ForwardError::Unavailable(_),
                ) => true,
                Err(_) => false,
            };
            if !retryable || attempt >= policy.attempts() {
                return sent;
            }
            let resume = tokio::time::Instant::now() + policy.pause(attempt);
            // A retry that could not start before the total timeout is not made.
            if deadline.is_some_and(|(end, _)| resume >= end) || !policy.try_retry() {
                return sent;
            }
            // The failed answer's body is not wanted: its connection closes with it.
            drop(sent);
            tokio::time::sleep_until(resume).await;
            attempt += 1;
            tracing::debug!(upstream = %self.shared.name, attempt, "retrying the upstream call");
            request = resend(head, body.clone());
        }
    }

    /// Sends `request` once, with the next key of the credential's pool if it has one.
    async fn send_once(
        &self,
        request: Request<UpstreamBody>,
        deadline: Deadline,
    ) -> Result<Response<pool::PooledBody>, ForwardError> {
        match self.shared.credential.as_ref().and_then(|c| c.header()) {
            Some((name, keys)) => self.send_with_key(request, name, keys, deadline).await,
            None => self.attempt(request, deadline).await,
        }
    }

    /// One exchange, which must bring a response head within the timeout.
    async fn attempt(
        &self,
        request: Request<UpstreamBody>,
        deadline: Deadline,
    ) -> Result<Response<pool::PooledBody>, ForwardError> {
        let own = tokio::time::Instant::now() + self.timeout;
        let (until, total) = match deadline {
            Some((end, total)) if end < own => (end, Some(total)),
            _ => (own, None),
        };
        let body_sent = Arc::new(pool::BodyProgress::default());
        let exchange = async {
            match &self.connections {
                _ if request.headers().contains_key(http::header::UPGRADE) => {
                    self.upgrades.send_upgrade(request, body_sent.clone()).await
                }
                Connections::Http1(pool) => pool.send(request, body_sent.clone()).await,
                Connections::Negotiating(pool) => pool.send(request, body_sent.clone()).await,
            }
        };
        match tokio::time::timeout_at(until, exchange).await {
            // A body the upstream was waiting for when time ran out is the client's
            // slowness: the upstream cannot answer a request it has not had whole. One the
            // upstream had stopped taking is the upstream's.
            Err(_) if body_sent.awaits_client() => Err(ForwardError::ClientBodyTimeout),
            Err(_) => Err(match total {
                Some(total) => ForwardError::TotalTimeout(total),
                None => ForwardError::Timeout(self.timeout),
            }),
            Ok(Err(error)) => Err(classify(error)),
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// Sends `request` with the next healthy key in `name`. A key the upstream refuses
    /// (401) or rate-limits (429) is benched ([`KeyPool::bench`]), and a request that can be
    /// sent again (an idempotent method, no body) is, once, with the next healthy key. One call of
    /// [`Self::attempt`], in the loop, as in [`Self::send_with_retries`].
    async fn send_with_key(
        &self,
        mut request: Request<UpstreamBody>,
        name: &http::HeaderName,
        keys: &KeyPool,
        deadline: Deadline,
    ) -> Result<Response<pool::PooledBody>, ForwardError> {
        let mut key = keys.pick()?;
        forward::remove_underscore_spellings(request.headers_mut(), name);
        request
            .headers_mut()
            .insert(name.clone(), key.value.clone());
        let mut again = (request.method().is_idempotent()
            && http_body::Body::is_end_stream(request.body()))
        .then(|| empty_copy(&request));
        let mut resent = false;
        loop {
            let response = self.attempt(request, deadline).await?;
            let Some(bench) = bench_for(&response) else {
                return Ok(response);
            };
            let benched = keys.bench(&key, bench);
            if benched {
                tracing::warn!(upstream = %self.shared.name, ?bench, status = response.status().as_u16(), "upstream refused a key; it is benched");
            }
            if resent || !benched {
                return Ok(response);
            }
            // The next key is taken only for a request that can go again, and, with a
            // retry policy, only while its budget allows: a resend is a retry too.
            let Some(mut copy) = again.take() else {
                return Ok(response);
            };
            if self
                .shared
                .retry
                .as_ref()
                .is_some_and(|policy| !policy.try_retry())
            {
                return Ok(response);
            }
            let Ok(next) = keys.pick() else {
                return Ok(response);
            };
            drop(response);
            copy.headers_mut().insert(name.clone(), next.value.clone());
            (request, key, resent) = (copy, next, true);
        }
    }

    /// One health check: `GET path` (below the base path, with a key of the credential),
    /// passing on a 2xx answer within `timeout`. Bypasses the in-flight cap, the breaker and
    /// retries, and never benches a key: many health endpoints answer 401 to anyone.
    pub async fn check(&self, path: &str, timeout: Duration) -> Result<(), CheckFailed> {
        let mut request = resend(&Request::new(()), Bytes::new());
        *request.uri_mut() = self.uri_for(path, None);
        let headers = request.headers_mut();
        headers.insert(http::header::HOST, self.host.clone());
        headers.insert(
            http::header::USER_AGENT,
            HeaderValue::from_static("portcullis-health-check"),
        );
        if let Some((name, keys)) = self.shared.credential.as_ref().and_then(|c| c.header()) {
            let key = keys.pick().map_err(|_| CheckFailed::Unsent)?;
            headers.insert(name.clone(), key.value.clone());
        }
        let checked = async {
            let answer = self.attempt(request, None).await?;
            let status = answer.status();
            // Read whole (a health answer is small), so that the next check finds the
            // connection kept alive; a large one is cut off, and its connection closed.
            let body = http_body_util::Limited::new(answer.into_body(), HEALTH_BODY_MAX);
            let _ = http_body_util::BodyExt::collect(body).await;
            Ok::<_, CheckFailed>(status)
        };
        let status = tokio::time::timeout(timeout, checked)
            .await
            .map_err(|_| CheckFailed::Timeout(timeout))??;
        if status.is_success() {
            Ok(())
        } else {
            Err(CheckFailed::Status(status))
        }
    }

    /// Whether a TCP connection to the upstream can be opened within `timeout`.
    pub async fn is_reachable(&self, timeout: Duration) -> bool {
        let port = self.port();
        let host = self
            .authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let connect = tokio::net::TcpStream::connect((host, port));
        matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)))
    }
}

/// The most of a health check's answer read (to keep its connection); more closes it.
const HEALTH_BODY_MAX: usize = 64 * 1024;

/// Whether a 101 switches to the protocol the request asked for in `Upgrade` (RFC 9110
/// §7.8), and the request asked for one at all.
fn switches_as_asked(asked: Option<&HeaderValue>, answer: &http::HeaderMap) -> bool {
    let switched = answer.get(http::header::UPGRADE);
    asked
        .zip(switched)
        .is_some_and(|(asked, switched)| asked.as_bytes().eq_ignore_ascii_case(switched.as_bytes()))
}

/// Whether the upstream's answer benches the key it was sent with: refused (401), or
/// rate-limited (429) for its `Retry-After`. Not a 403: see [`credential`].
fn bench_for<B>(response: &Response<B>) -> Option<Bench> {
    match response.status().as_u16() {
        401 => Some(Bench::Refused),
        429 => Some(Bench::RateLimited(credential::retry_after(
            response.headers().get(http::header::RETRY_AFTER),
        ))),
        _ => None,
    }
}

/// A request about to go upstream.
enum Outgoing {
    /// With the client's body streaming through: sent once.
    Streaming(Request<UpstreamBody>),
    /// With its body held whole: it can be sent again.
    Held(Request<()>, Bytes),
}

/// When the total timeout ends, and how long it is; none without one.
type Deadline = Option<(tokio::time::Instant, Duration)>;

/// A copy of `request`'s head with an empty body, to send it again.
fn empty_copy<B>(request: &Request<B>) -> Request<UpstreamBody> {
    resend(request, Bytes::new())
}

/// A request with `head`'s method, target, version and fields, and `body`, held whole.
fn resend<B>(head: &Request<B>, body: Bytes) -> Request<UpstreamBody> {
    let length = body.len() as u64;
    let mut copy = Request::new(LimitedBody::new(Either::Right(Full::new(body)), length));
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.version_mut() = head.version();
    *copy.headers_mut() = head.headers().clone();
    copy
}

/// The client's body, read whole (it was declared short enough to hold).
async fn read_whole(body: UpstreamBody) -> Result<Bytes, ForwardError> {
    use http_body_util::BodyExt;
    if http_body::Body::is_end_stream(&body) {
        return Ok(Bytes::new());
    }
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) => {
            // Over the limit, or broken: the client's fault either way.
            let too_large = std::iter::successors(
                Some(&*error as &(dyn std::error::Error + 'static)),
                |current| current.source(),
            )
            .find_map(|current| current.downcast_ref::<BodyTooLarge>().copied());
            Err(match too_large {
                Some(too_large) => ForwardError::BodyTooLarge(too_large),
                None => ForwardError::ClientBody(error),
            })
        }
    }
}

/// A body that went over the limit surfaces deep in the client's error chain.
impl ForwardError {
    /// What the failure says of the upstream: its fault, or nobody's (a client's body
    /// refused, a request held back before it was sent).
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Timeout(_)
            | Self::TotalTimeout(_)
            | Self::ConnectTimeout(_)
            | Self::Unavailable(_)
            | Self::PinMismatch(_)
            | Self::UnexpectedUpgrade
            | Self::UnknownTransferCoding => Outcome::Failure,
            Self::BodyTooLarge(_)
            | Self::ClientBody(_)
            | Self::ClientBodyTimeout
            | Self::KeysExhausted(_)
            | Self::CircuitOpen(_)
            | Self::Unhealthy(_)
            | Self::Busy(_) => Outcome::Neither,
        }
    }

    /// Whether the client went away mid-upload (rather than sending a malformed body).
    pub fn client_left(&self) -> bool {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(current) = source {
            if let Some(body) = current.downcast_ref::<ClientBodyError>() {
                return body.aborted;
            }
            source = current.source();
        }
        false
    }
}

/// What a failed upstream call was: the client's body's fault when the failure comes from
/// reading it (over the limit, or broken), else the upstream's.
fn classify(error: PoolError) -> ForwardError {
    if let Some(mismatch) = pin_mismatch(&error) {
        return ForwardError::PinMismatch(mismatch);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut timed_out = false;
    while let Some(current) = source {
        if let Some(too_large) = current.downcast_ref::<BodyTooLarge>() {
            return ForwardError::BodyTooLarge(*too_large);
        }
        // The connector's own timeout surfaces as an I/O error that timed out.
        timed_out |= current
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        if current.is::<ClientBodyError>() {
            return ForwardError::ClientBody(Box::new(error));
        }
        source = current.source();
    }
    if timed_out && matches!(error, PoolError::Connect(_)) {
        return ForwardError::ConnectTimeout(error);
    }
    ForwardError::Unavailable(error)
}

/// The pin mismatch that failed a connection's handshake, if that is what happened. It
/// lies inside the rustls error that I/O errors (one in another) carry, and
/// `io::Error::source` skips the error it wraps, so each I/O error is opened by hand.
fn pin_mismatch(error: &PoolError) -> Option<PinMismatch> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            current.downcast_ref::<rustls::Error>()
        {
            return other.0.downcast_ref::<PinMismatch>().cloned();
        }
        source = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Result<Arc<Upstream>, UpstreamError> {
        let transport = Transport::new(
            Duration::from_secs(1),
            crate::config::HttpVersion::default(),
            &UpstreamTls::default(),
        )
        .unwrap();
        Ok(Upstream::new(
            &UpstreamTarget::parse("u", url)?,
            &transport,
            Duration::from_secs(1),
            UpstreamShared::new("u", None, Resilience::default(), None, None),
        ))
    }

    #[tokio::test]
    async fn accepts_http_and_https_urls() {
        assert!(upstream("http://127.0.0.1:9000").is_ok());
        assert!(upstream("https://api.example/base/").is_ok());
    }

    #[tokio::test]
    async fn refuses_unusable_urls() {
        for url in [
            "127.0.0.1:9000",
            "ftp://a.example",
            "/relative",
            "http://a.example/?q=1",
            "not a url",
        ] {
            assert!(
                matches!(upstream(url), Err(UpstreamError::InvalidUrl { .. })),
                "{url}"
            );
        }
        assert!(matches!(
            upstream("http://user:pw@a.example"),
            Err(UpstreamError::CredentialsInUrl { .. })
        ));
        // The message names the upstream, never the URL: its path may be the secret.
        let Err(error) = upstream("https://a.example:12345/OUTLINE-SECRET?x=1") else {
            panic!("a URL with a query");
        };
        assert!(!error.to_string().contains("OUTLINE-SECRET"), "{error}");
    }

    #[tokio::test]
    async fn builds_uris_below_the_base_path() {
        let plain = upstream("http://127.0.0.1:9000").unwrap();
        assert_eq!(plain.uri_for("/v1/x", Some("a=1")), "/v1/x?a=1");
        let based = upstream("http://127.0.0.1:9000/base/").unwrap();
        assert_eq!(based.uri_for("/v1", None), "/base/v1");
        assert_eq!(based.uri_for("", None), "/base/");
        assert_eq!(based.host(), "127.0.0.1:9000");
    }

    #[tokio::test]
    async fn recognises_its_own_origin_with_default_ports_and_any_case() {
        let plain = upstream("http://Backend.internal").unwrap();
        assert!(plain.is_origin("backend.INTERNAL:80"));
        assert!(plain.is_origin("backend.internal"));
        assert!(plain.is_origin("user@backend.internal"));
        assert!(
            plain.is_origin("backend.internal:443"),
            "https:// to the same host"
        );
        assert!(!plain.is_origin("backend.internal:8080"), "another service");
        assert!(!plain.is_origin("public.example"));
        let v6 = upstream("https://[::1]:9443").unwrap();
        assert!(v6.is_origin("[::1]:9443"));
        assert!(v6.is_origin("[::1]"));
        assert!(!v6.is_origin("[::1]:9444"));
    }
}
