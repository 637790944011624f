//! The request path. [`Gateway::handle`] runs the stages in order; each stage is a plain
//! value from its own module, built once from the configuration.

mod record;
mod stream_watch;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version, header};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use secrecy::SecretString;

use crate::base::body::{self, ChunkedEnd, Parking, RequestBody};
use std::time::Duration;
use tracing::warn;

use crate::audit::AuditHealth;
use crate::audit::store::AuditStore;
use crate::auth::{Authenticator, StaticTokens};
use crate::base::body::{HoldingBody, ResponseBody};
use crate::base::context::{ConnInfo, RequestContext, X_REQUEST_ID};
use crate::base::exchange::{BodySample, Decision};
use crate::base::problem::{Problem, ProblemKind};
use crate::config::Config;
use crate::cors::Cors;
use crate::credentials::TokenVerifier;
use crate::headers::ResponseHeaders;
use crate::health::{Health, Probe};
use crate::hygiene::{Hygiene, LimitedBody, Limits};
use crate::identity::ClientIdentity;
use crate::ip_rules::IpRules;
use crate::ratelimit::{Limiter, Quota, RateLimits, address_block};
use crate::recorder::Recorder;
use crate::redact::Redactor;
use crate::routes::{Route, RouteAuth, RouteScopes, Router};
use crate::settings::Settings;
use crate::store::Store;
use crate::streams::{self, CallerStreams, Exhausted, Revoked, StreamSlots, WatchedStream};
use crate::upstream::{
    ForwardError, HeaderRules, InFlightLimit, Upstream, UpstreamShared, prepare_request_headers,
};
use crate::websocket::{Handshake, Tunnel};
use crate::{auth, cors, headers, websocket};
use record::PendingRecord;

/// State built once and shared by every worker's pipeline.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Managed-token verification, when there is a store.
    pub tokens: Option<Arc<TokenVerifier>>,
    /// The store, for readiness.
    pub store: Option<Store>,
    /// Rate limits and bans, and their backend.
    pub rate_limits: Arc<RateLimits>,
    /// What every worker's copy of each upstream shares (its in-flight cap, breaker, call
    /// counts and credential), in the order of `settings.upstreams`.
    pub upstreams: Vec<Arc<UpstreamShared>>,
    /// Where finished exchange records go; none when no sink wants them (then no record
    /// is made at all).
    pub recorder: Option<Recorder>,
    /// What records may show of queries.
    pub redactor: Arc<Redactor>,
    /// Whether the audit log's store takes its writes, when the audit log is on.
    pub audit: Option<AuditHealth>,
    /// The audit log's store, for the admin API's searches, when the audit log is on.
    pub audit_store: Option<AuditStore>,
    /// Open streams per caller, when they are capped.
    pub caller_streams: Option<Arc<CallerStreams>>,
}

impl Shared {
    /// Shared state for `config`, validated as `settings`, without a store.
    pub fn new(config: &Config, settings: &Settings) -> Self {
        Self {
            tokens: None,
            store: None,
            rate_limits: Arc::new(RateLimits::new(config, settings.redis.clone())),
            upstreams: settings
                .upstreams
                .iter()
                .map(|upstream| {
                    let in_flight = upstream
                        .max_in_flight
                        .map(|max| InFlightLimit::new(max, upstream.queue_timeout));
                    UpstreamShared::new(
                        &upstream.name,
                        in_flight,
                        upstream.resilience.clone(),
                        upstream.credential.clone(),
                        upstream
                            .target
                            .is_https()
                            .then(|| upstream.transport.certificate().clone()),
                    )
                })
                .collect(),
            recorder: None,
            redactor: Arc::new(Redactor::new(&config.log.redact_query_params).knowing(
                settings.upstreams.iter().flat_map(|upstream| {
                    let path = SecretString::from(upstream.target.base_path());
                    let credential = upstream.credential.iter().flat_map(|c| c.secrets());
                    credential.cloned().chain([path])
                }),
            )),
            audit: None,
            audit_store: None,
            caller_streams: config
                .limits
                .max_streams_per_principal
                .map(|max| Arc::new(CallerStreams::new(max))),
        }
    }
}

/// What the stages learned about a request that the respond stage and the record need.
#[derive(Default)]
struct Progress<'g> {
    /// The route the path matched, once it is known.
    route: Option<&'g Route>,
    /// Where the request stands against its route's rate limits, once checked.
    quota: Option<Quota>,
    /// What became of a request answered without a refusal (`allowed`, unless the gateway
    /// answered it itself, as a CORS preflight).
    decision: Decision,
    /// The request's record, when one is kept: the caller and upstream go into it.
    record: Option<PendingRecord>,
    /// The WebSocket handshake the request is, if it is one.
    handshake: Option<Handshake>,
    /// The WebSocket the upstream accepted, relayed once the client has its answer.
    tunnel: Option<Tunnel>,
}

/// Every stage of the request path, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    identity: ClientIdentity,
    hygiene: Hygiene,
    health: Health,
    limiter: Arc<Limiter>,
    cors: Option<Cors>,
    auth: Authenticator,
    router: Router,
    response_headers: ResponseHeaders,
    recorder: Option<Recorder>,
    /// Whether the audit log takes its events, when it is on: strict mode refuses at once
    /// while it cannot.
    audit: Option<AuditHealth>,
    redactor: Arc<Redactor>,
    caller_streams: Option<Arc<CallerStreams>>,
    /// Turns true when open WebSockets must close (the server's grace period is over).
    closing_tunnels: tokio::sync::watch::Receiver<bool>,
}

impl Gateway {
    /// Builds every stage from `config`, validated as `settings`, around the state every
    /// worker shares.
    pub fn new(config: &Config, settings: &Settings, shared: &Shared) -> Self {
        let mut upstreams: Vec<(&str, Arc<Upstream>)> = Vec::new();
        for (upstream, state) in settings.upstreams.iter().zip(&shared.upstreams) {
            upstreams.push((&upstream.name, upstream.instance(state)));
        }
        let routes = settings
            .routes
            .iter()
            .filter_map(|route| {
                let config = &route.config;
                // Validation saw to it that every route's upstream exists.
                let (_, upstream) = upstreams
                    .iter()
                    .find(|(name, _)| *name == config.upstream)?;
                let capability = config.auth == RouteAuth::Capability;
                Some(
                    Route::new(&config.path_prefix, upstream.clone(), config.strip_prefix)
                        .with_scopes(RouteScopes::new(route.scopes.clone()))
                        .with_ip_rules(IpRules::new(
                            config.allow_ips.clone(),
                            config.deny_ips.clone(),
                        ))
                        .with_auth(config.auth)
                        .with_rate_limits(shared.rate_limits.for_route(&config.path_prefix))
                        .with_header_rules(HeaderRules {
                            allow_underscores: config.allow_underscores_in_headers,
                            drop_referer: capability,
                        })
                        .with_response_rules(route.response_rules.clone())
                        .with_strict_methods(route.strict_methods.clone())
                        .with_body_sample(route.body_sample)
                        .with_websocket(route.websocket.clone())
                        .with_origin_check(route.origin_check.clone())
                        .with_stream_limits(route.stream_limits),
                )
            })
            .collect();
        let router = Router::new(routes);

        let limits = &config.limits;
        Self {
            identity: ClientIdentity::new(config.trusted_proxies.clone()),
            hygiene: Hygiene::new(Limits {
                max_body_bytes: limits.max_body_bytes,
                max_uri_bytes: limits.max_uri_bytes,
                max_header_bytes: limits.max_header_bytes,
                max_headers: limits.max_headers,
            })
            .with_allowed_hosts(settings.allowed_hosts.clone()),
            health: Health::new(
                router.upstreams(),
                shared.store.clone(),
                shared.audit.clone(),
            ),
            limiter: Arc::new(Limiter::new(shared.rate_limits.clone())),
            cors: Cors::new(&settings.cors),
            auth: Authenticator::new(StaticTokens::new(&config.api_tokens), shared.tokens.clone()),
            router,
            response_headers: ResponseHeaders::new(&settings.security_headers),
            recorder: shared.recorder.clone(),
            audit: shared.audit.clone(),
            redactor: shared.redactor.clone(),
            caller_streams: shared.caller_streams.clone(),
            closing_tunnels: tokio::sync::watch::channel(false).1,
        }
    }

    /// The same gateway, its open WebSockets closed when `closing` turns true.
    pub fn closing_tunnels_on(mut self, closing: tokio::sync::watch::Receiver<bool>) -> Self {
        self.closing_tunnels = closing;
        self
    }

    /// Serves one request, in the order of the request path. Never fails: every refusal
    /// is a problem+json response, and every response leaves through the respond stage.
    pub async fn handle(
        &self,
        request: Request<Incoming>,
        conn: &ConnInfo,
    ) -> Response<ResponseBody> {
        // An HTTP/2 request body refused before its end is kept until the answer is sent.
        let parking = (request.version() == Version::HTTP_2).then(Parking::default);
        let chunked_end = (request.version() < Version::HTTP_2
            && request.headers().contains_key(header::TRANSFER_ENCODING))
        .then(ChunkedEnd::default);
        let mut request =
            request.map(|body| RequestBody::new(body, parking.clone(), chunked_end.clone()));
        let handshake = Handshake::detect(&mut request);
        let ctx = self.identity.resolve(&request, conn);
        let origin = request.headers().get(header::ORIGIN).cloned();
        let csp = self.response_headers.csp_for(request.uri().path());

        let mut progress = Progress {
            record: self.recorder.as_ref().map(|recorder| {
                PendingRecord::begin(recorder, &request, &ctx, conn, &self.router, &self.redactor)
            }),
            handshake,
            ..Progress::default()
        };
        let (mut response, decision) = match self.process(request, &ctx, &mut progress).await {
            Ok(response) => (response, progress.decision),
            Err(problem) => {
                let decision = problem.decision();
                (problem.into_response(&ctx.request_id), decision)
            }
        };

        let headers = response.headers_mut();
        self.response_headers.apply(headers, csp, ctx.https);
        if let Some(route) = progress.route {
            route.response_rules().apply(headers);
        }
        if let Some(quota) = progress.quota {
            quota.apply(headers);
        }
        // A refused preflight (an allowed origin asking for a method or header that is
        // not) says nothing that would let a browser go on, but for `Vary: Origin`.
        if let Some(cors) = &self.cors {
            let origin = origin
                .as_ref()
                .filter(|_| decision != Decision::CorsRefused);
            cors.apply(origin, headers);
        }
        // Never indexed by HTTP/2 header compression, so every answer of the gateway's
        // carries it in full: the connection tells h2's own bare 431 apart by its size.
        let mut request_id = ctx.request_id;
        request_id.set_sensitive(true);
        headers.insert(X_REQUEST_ID.clone(), request_id);
        // See `ChunkedEnd`: refusals included, whatever the body's fate.
        if chunked_end.is_some_and(|end| !end.ended_plainly()) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(unread) = parking.as_ref().and_then(Parking::take) {
            let draining = body::drain_after_response(unread);
            response = response.map(|body| HoldingBody::new(body, draining).boxed_unsync());
        }
        let record = progress.record.take();
        if let Some(tunnel) = progress.tunnel.take() {
            let closing = self.closing_tunnels.clone();
            return open_tunnel(tunnel, response, record, progress.route, closing);
        }
        match record {
            Some(record) => record.respond(response, decision, progress.route),
            None => response,
        }
    }

    /// The stages up to and including forwarding; `progress` receives what the respond
    /// stage needs to know (the route, and where the request stands against its limits).
    async fn process<'g>(
        &'g self,
        mut request: Request<RequestBody>,
        ctx: &RequestContext,
        progress: &mut Progress<'g>,
    ) -> Result<Response<ResponseBody>, Problem> {
        self.hygiene.check(&request)?;
        // A handshake's body would reach the upstream after the switch, as WebSocket bytes.
        if progress.handshake.is_some() && !http_body::Body::is_end_stream(request.body()) {
            return Err(Problem::new(ProblemKind::BadRequest)
                .with_detail("a WebSocket handshake carries no body"));
        }
        if let Some(probe) = Probe::for_path(request.uri().path()) {
            return self
                .health
                .answer(probe, request.method(), &self.limiter)
                .await;
        }
        let route = self.router.find(request.uri().path())?;
        progress.route = route;
        if let Some(client) = ctx.known_client_ip() {
            self.limiter.check_ban(client).await?;
        }
        if let Some(route) = route {
            route.ip_rules().check(ctx.known_client_ip())?;
        }
        // Before authentication: a hijacking page must not even count towards a ban of
        // its victim's address.
        if let Some(origins) = route.and_then(|r| r.origins_checked(progress.handshake.is_some())) {
            let host = match request.uri().authority() {
                Some(authority) => Some(authority.as_str()),
                None => request
                    .headers()
                    .get(header::HOST)
                    .and_then(|host| host.to_str().ok()),
            };
            origins.check(request.headers(), host)?;
        }
        if let Some(cors) = &self.cors
            && let Some(answer) = cors.preflight(&request)
        {
            progress.decision = Decision::CorsPreflight;
            return answer;
        }
        let principal = self.authenticate(&request, route, ctx).await?;
        if let Some(record) = &mut progress.record {
            record.caller(&principal);
        }
        // Only an authenticated caller learns whether a path is routed.
        let route = route.ok_or(ProblemKind::NotFound)?;
        let scope = route.required_scope(request.method());
        if !principal.has_scope(scope) {
            return Err(auth::insufficient_scope(scope));
        }
        if progress.handshake.is_some() && route.websocket().is_none() {
            return Err(websocket::upgrade_refused());
        }
        if let Some(limits) = route.rate_limits() {
            let checked = self.limiter.check(limits, &principal, ctx).await?;
            let admitted = checked.admit();
            progress.quota = Some(checked);
            admitted?;
        }
        if let Some(record) = &mut progress.record {
            record.routed(route);
        }
        let sample = match (route.body_sample(), &mut progress.record) {
            (Some(limit), Some(record)) => Some(record.sample_bodies(limit, &request)),
            _ => None,
        };
        if route.audits_before_forwarding(request.method()) {
            // With no record kept there is no audit log to wait for, and while the audit
            // log can neither store nor spool events none would be admitted (the writer
            // retries its batch, and the request would wait out the admission's timeout):
            // refused at once, not forwarded unrecorded.
            let refusing = self.audit.as_ref().is_some_and(AuditHealth::refuses_writes);
            match &progress.record {
                Some(record) if !refusing => record.admit(route).await?,
                _ => return Err(record::not_admitted()),
            }
        }
        let bytes_in = progress.record.as_ref().map(PendingRecord::bytes_in);
        let Some(handshake) = progress.handshake else {
            let safe = request.method().is_safe();
            let response = self
                .forward(request, route, ctx, bytes_in, sample, None)
                .await?;
            return self.watch_stream(response, route, &principal, ctx, safe);
        };
        let slots = self.open_stream(route, &principal, ctx)?;
        let safe = request.method().is_safe();
        let client_side = hyper::upgrade::on(&mut request);
        let mut response = self
            .forward(request, route, ctx, None, None, Some(handshake))
            .await?;
        // An HTTP/2 client's handshake answered 2xx without switching would read as an open
        // WebSocket there (a 2xx to CONNECT opens the tunnel): it is not one.
        if matches!(handshake, Handshake::ExtendedConnect(_)) && response.status().is_success() {
            warn!(request_id = ?ctx.request_id, upstream = %route.upstream().name(), status = response.status().as_u16(), "upstream answered a WebSocket handshake without switching");
            return Err(Problem::new(ProblemKind::UpstreamUnavailable)
                .with_detail("the upstream did not open the WebSocket")
                .with_decision(Decision::UpstreamProtocol));
        }
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Not switched: an answer like any other, which may stream (events) and is held
            // to the same caps and limits as one.
            drop(slots);
            return self.watch_stream(response, route, &principal, ctx, safe);
        }
        // A 101 whose accept does not answer the key the gateway sent for an HTTP/2 client
        // is no WebSocket server's (RFC 6455 §4.1: the client fails the connection).
        if !handshake.switched_as_asked(response.headers()) {
            warn!(request_id = ?ctx.request_id, upstream = %route.upstream().name(), "upstream switched protocols without answering the WebSocket key");
            return Err(Problem::new(ProblemKind::UpstreamUnavailable)
                .with_detail("the upstream did not open the WebSocket")
                .with_decision(Decision::UpstreamProtocol));
        }
        let upstream_side = hyper::upgrade::on(&mut response);
        handshake.answer_client(&mut response);
        let revoked = self.stream_revoked(&principal, ctx);
        let limits = route.stream_limits();
        let (tunnel, open) = Tunnel::new(client_side, upstream_side, limits, revoked, slots);
        response.extensions_mut().insert(open);
        progress.tunnel = Some(tunnel);
        Ok(response)
    }

    /// Slots for a stream on `route` by `principal`: refused 503 at the upstream's
    /// `max_streams`, 429 at the caller's `max_streams_per_principal` (Retry-After: streams
    /// last, so not at once).
    fn open_stream(
        &self,
        route: &Route,
        principal: &auth::Principal,
        ctx: &RequestContext,
    ) -> Result<StreamSlots, Problem> {
        if self.caller_streams.is_none() && route.upstream().streams().is_none() {
            return Ok(StreamSlots::default());
        }
        let caller = match (principal.managed_id(), ctx.known_client_ip()) {
            (Some(id), _) => std::borrow::Cow::Borrowed(id),
            // Static tokens are one principal: their streams are counted by address (an
            // IPv6 address by its /64, as for bans and limits).
            (None, Some(ip)) => std::borrow::Cow::Owned(address_block(ip).to_string()),
            (None, None) => std::borrow::Cow::Borrowed("static"),
        };
        let retry = Duration::from_secs(5);
        streams::open(
            route.upstream().streams(),
            self.caller_streams.as_deref(),
            &caller,
        )
        .map_err(|exhausted| match exhausted {
            Exhausted::Upstream => Problem::new(ProblemKind::UpstreamBusy)
                .with_detail("the upstream has as many streams open as it may")
                .with_decision(Decision::StreamsExhausted)
                .with_retry_after(retry),
            Exhausted::Caller => Problem::new(ProblemKind::TooManyStreams)
                .with_detail("this caller has as many streams open as it may")
                .with_retry_after(retry),
        })
    }

    /// A response that streams (Server-Sent Events, or a body of no length) is held to the
    /// route's stream limits and closed when its credential or client address is no longer
    /// good ([`WatchedStream`]), and holds its stream slots until it ends. With none free,
    /// the answer to a `safe` request (`GET`, `HEAD`, `OPTIONS`) is dropped unread and the
    /// client refused; an unsafe one's is not, since the upstream has acted on it already
    /// (a `POST` answered with events): it goes through uncounted. Other responses must
    /// keep coming: their upstream has its `timeout` for each next piece ([`PacedBody`]).
    ///
    /// [`PacedBody`]: body::PacedBody
    fn watch_stream(
        &self,
        response: Response<ResponseBody>,
        route: &Route,
        principal: &auth::Principal,
        ctx: &RequestContext,
        safe: bool,
    ) -> Result<Response<ResponseBody>, Problem> {
        let length = http_body::Body::size_hint(response.body()).exact();
        if !streams::is_stream(response.headers(), length) {
            // Its upstream has `timeout` for each next piece, as for the head.
            let timeout = route.upstream().timeout();
            return Ok(response.map(|body| body::PacedBody::new(body, timeout).boxed_unsync()));
        }
        let slots = match self.open_stream(route, principal, ctx) {
            Ok(slots) => slots,
            Err(refusal) if safe => return Err(refusal),
            Err(_) => {
                tracing::debug!(request_id = ?ctx.request_id, "an unsafe request's answer streams past a stream cap; let through");
                StreamSlots::default()
            }
        };
        let revoked = self.stream_revoked(principal, ctx);
        let limits = route.stream_limits();
        Ok(response.map(|body| WatchedStream::new(body, limits, revoked, slots).boxed_unsync()))
    }

    /// What closes a stream `principal` opened: its credential no longer live, its
    /// client's address banned.
    fn stream_revoked(&self, principal: &auth::Principal, ctx: &RequestContext) -> Revoked {
        Box::pin(stream_watch::revoked(
            self.limiter.clone(),
            self.auth.verifier().cloned(),
            principal,
            ctx.known_client_ip(),
        ))
    }

    /// Who is calling: a capability on capability routes, a bearer token elsewhere. Each
    /// failed attempt counts towards a ban of the address.
    async fn authenticate(
        &self,
        request: &Request<RequestBody>,
        route: Option<&Route>,
        ctx: &RequestContext,
    ) -> Result<auth::Principal, Problem> {
        let attempt = match route.filter(|r| r.auth() == RouteAuth::Capability) {
            Some(route) => {
                let secret = route.capability_secret(request.uri().path());
                self.auth.authenticate_capability(secret).await
            }
            None => self.auth.authenticate(request.headers()).await,
        };
        let failed = attempt.as_ref().is_err_and(|refusal| {
            matches!(
                refusal.kind(),
                ProblemKind::Unauthorized | ProblemKind::NotFound
            )
        });
        if failed && let Some(client) = ctx.known_client_ip() {
            self.limiter.record_failure(client).await;
        }
        attempt
    }

    async fn forward(
        &self,
        request: Request<RequestBody>,
        route: &Route,
        ctx: &RequestContext,
        bytes_in: Option<Arc<AtomicU64>>,
        sample: Option<Arc<std::sync::Mutex<BodySample>>>,
        handshake: Option<Handshake>,
    ) -> Result<Response<ResponseBody>, Problem> {
        let (mut parts, body) = request.into_parts();
        let upstream_uri = route.upstream_uri(&parts.uri);
        let public_uri = std::mem::replace(&mut parts.uri, upstream_uri);
        parts.version = Version::HTTP_11;
        let upstream = route.upstream();
        // The host the client named, which hygiene validated (and `allowed_hosts` admitted).
        let client_host = match upstream.preserves_host() {
            true => match public_uri.authority() {
                Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
                None => parts.headers.get(header::HOST).cloned(),
            },
            false => None,
        };
        let host = client_host.as_ref().unwrap_or_else(|| upstream.host());
        prepare_request_headers(&mut parts.headers, host, ctx, route.header_rules());
        let max_body_bytes = self.hygiene.limits().max_body_bytes;
        let body = match handshake {
            // An extended CONNECT's body is the WebSocket itself, relayed once open.
            Some(handshake) => {
                handshake.address_upstream(&mut parts.headers);
                LimitedBody::new(Either::Right(Full::new(Bytes::new())), max_body_bytes)
            }
            None => {
                // A body of no declared length on a GET or HEAD would go as none: the
                // upstream client chunks only methods that usually carry one, unless asked
                // by name (an HTTP/2 upstream's client drops the header again).
                if !http_body::Body::is_end_stream(&body)
                    && !parts.headers.contains_key(header::CONTENT_LENGTH)
                {
                    parts.headers.insert(
                        header::TRANSFER_ENCODING,
                        HeaderValue::from_static("chunked"),
                    );
                }
                LimitedBody::new(Either::Left(body), max_body_bytes)
                    .counting(bytes_in)
                    .sampling(sample)
            }
        };

        let request = Request::from_parts(parts, body);
        // Boxed: the upstream call's state (retries, keys, timers) is large, and hyper moves
        // the whole request future when it starts it; on the heap it is moved as a pointer.
        let mut response = Box::pin(route.upstream().send(request))
            .await
            .map_err(|error| self.forward_problem(error, route.upstream().name(), ctx))?;
        // What the upstream says about itself, or about cross-origin access, is not for
        // clients: the gateway's own headers replace it in the respond stage.
        headers::strip_fingerprints(response.headers_mut());
        cors::strip_upstream_cors(response.headers_mut());
        route.rewrite_locations(response.headers_mut(), public_uri.path());
        Ok(response)
    }

    /// The problem a failed upstream exchange becomes; the cause goes to the operator's log
    /// only.
    fn forward_problem(
        &self,
        error: ForwardError,
        upstream: &str,
        ctx: &RequestContext,
    ) -> Problem {
        match error {
            ForwardError::BodyTooLarge(_) => self.hygiene.body_too_large(),
            ForwardError::ClientBody(_) => {
                // The client's doing, and common enough (clients that give up mid-upload):
                // not a warning, and not the upstream's failure.
                let cause = error_chain(&error);
                tracing::debug!(request_id = ?ctx.request_id, upstream, error = %cause, "client body failed");
                Problem::new(ProblemKind::BadRequest)
                    .with_detail("the request body is malformed or was cut short")
                    .with_decision(if error.client_left() {
                        Decision::ClientAborted
                    } else {
                        Decision::ClientBodyError
                    })
            }
            ForwardError::Timeout(_) => {
                warn!(request_id = ?ctx.request_id, upstream, %error, "upstream timed out");
                Problem::new(ProblemKind::UpstreamTimeout)
                    .with_detail("the upstream did not respond in time")
            }
            ForwardError::ClientBodyTimeout => {
                tracing::debug!(request_id = ?ctx.request_id, upstream, "client body too slow");
                Problem::new(ProblemKind::RequestTimeout)
                    .with_detail("the request body was not received in time")
                    .with_decision(Decision::ClientBodyError)
            }
            ForwardError::TotalTimeout(_) => {
                warn!(request_id = ?ctx.request_id, upstream, %error, "upstream timed out");
                Problem::new(ProblemKind::UpstreamTimeout)
                    .with_detail("the upstream did not respond in time")
                    .with_decision(Decision::UpstreamTotalTimeout)
            }
            ForwardError::ConnectTimeout(_) => {
                warn!(request_id = ?ctx.request_id, upstream, %error, "upstream connect timed out");
                Problem::new(ProblemKind::UpstreamTimeout)
                    .with_detail("the upstream did not respond in time")
                    .with_decision(Decision::UpstreamConnectTimeout)
            }
            ForwardError::Busy(_) => {
                // Not a warning each: they come in floods exactly when the upstream is slow.
                tracing::debug!(request_id = ?ctx.request_id, upstream, %error, "upstream at its in-flight cap");
                Problem::new(ProblemKind::UpstreamBusy)
                    .with_detail("the upstream is at capacity; retry shortly")
                    .with_retry_after(std::time::Duration::from_secs(1))
            }
            ForwardError::UnexpectedUpgrade | ForwardError::UnknownTransferCoding => {
                warn!(request_id = ?ctx.request_id, upstream, %error, "upstream broke the protocol");
                Problem::new(ProblemKind::UpstreamUnavailable)
                    .with_detail("the upstream sent a response the gateway cannot relay")
                    .with_decision(Decision::UpstreamProtocol)
            }
            ForwardError::CircuitOpen(open) => {
                // Not a warning each: while open, every request meets it.
                tracing::debug!(request_id = ?ctx.request_id, upstream, "upstream circuit open");
                Problem::new(ProblemKind::UpstreamSuspended)
                    .with_detail("the upstream is failing; the gateway is not calling it for now")
                    .with_decision(Decision::UpstreamCircuitOpen)
                    .with_retry_after(open.retry_after.max(Duration::from_secs(1)))
            }
            ForwardError::Unhealthy(back_in) => {
                tracing::debug!(request_id = ?ctx.request_id, upstream, "upstream unhealthy");
                Problem::new(ProblemKind::UpstreamSuspended)
                    .with_detail("the upstream fails its health checks; the gateway is not calling it for now")
                    .with_decision(Decision::UpstreamUnhealthy)
                    .with_retry_after(back_in.max(Duration::from_secs(1)))
            }
            ForwardError::KeysExhausted(exhausted) => {
                warn!(request_id = ?ctx.request_id, upstream, "every upstream key is benched");
                let problem = Problem::new(ProblemKind::UpstreamSuspended)
                    .with_detail("the upstream cannot be called now; retry later")
                    .with_decision(Decision::UpstreamKeysExhausted);
                // A key refused for good comes back only with new keys: a minute, then ask.
                let wait = exhausted.retry_after.unwrap_or(Duration::from_secs(60));
                problem.with_retry_after(wait.max(Duration::from_secs(1)))
            }
            ForwardError::PinMismatch(mismatch) => {
                // What was presented is logged (certificate hashes are not secret), so the
                // operator can tell a rotated certificate from an interception.
                warn!(
                    request_id = ?ctx.request_id,
                    upstream,
                    presented_sha256 = %mismatch.cert,
                    presented_spki_sha256 = %mismatch.spki,
                    "upstream certificate matches no pin; nothing was sent"
                );
                Problem::new(ProblemKind::UpstreamUnavailable)
                    .with_detail("the upstream could not be reached")
                    .with_decision(Decision::UpstreamPinMismatch)
            }
            ForwardError::Unavailable(_) => {
                let cause = error_chain(&error);
                warn!(request_id = ?ctx.request_id, upstream, error = %cause, "upstream failed");
                // Which it was is for the operator's log: it may name the upstream.
                Problem::new(ProblemKind::UpstreamUnavailable)
                    .with_detail("the upstream gave no valid response")
            }
        }
    }

    /// The 408 for a client that did not finish its request head in time, with the same
    /// headers as any other refusal; the connection writes it out itself.
    pub fn head_timeout_reply(&self, conn: &ConnInfo) -> Response<Bytes> {
        let https = conn.tls;
        let request_id = crate::base::context::new_request_id();
        self.record_refused_head(
            conn,
            &request_id,
            http::Version::HTTP_11,
            Some(ProblemKind::RequestTimeout.status()),
            Decision::HeadTimeout,
        );
        let problem = Problem::new(ProblemKind::RequestTimeout)
            .with_detail("the request head was not received in time");
        let body = problem.to_json(request_id.to_str().unwrap_or_default());
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::base::problem::CONTENT_TYPE),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        self.response_headers
            .apply(&mut headers, self.response_headers.csp_for("/"), https);
        headers.insert(X_REQUEST_ID.clone(), request_id);
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = ProblemKind::RequestTimeout.status();
        *response.headers_mut() = headers;
        response
    }

    /// Records a request head the connection refused before the pipeline saw it (the HTTP
    /// parser's 400, 414 or 431, the connection's own 408, or an HTTP/2 stream h2 reset:
    /// `status` is what the client was answered, none for a reset).
    pub fn record_refused_head(
        &self,
        conn: &ConnInfo,
        request_id: &HeaderValue,
        version: http::Version,
        status: Option<http::StatusCode>,
        decision: Decision,
    ) {
        if let Some(recorder) = &self.recorder {
            let client = self.identity.client_of_connection(conn);
            let head = record::RefusedHead {
                version,
                status,
                decision,
            };
            record::refused_head(recorder, conn, client, request_id, head);
        }
    }
}

/// Relays an open WebSocket (`response` is the answer that opened it), finishing its
/// record, if one is kept, when it closes.
fn open_tunnel(
    tunnel: Tunnel,
    response: Response<ResponseBody>,
    record: Option<PendingRecord>,
    route: Option<&Route>,
    closing: tokio::sync::watch::Receiver<bool>,
) -> Response<ResponseBody> {
    let (response, on_close) = match record {
        Some(record) => record.open_tunnel(response, route),
        None => (response, None),
    };
    let on_close = on_close.unwrap_or_else(|| Box::new(|_| {}));
    tokio::spawn(tunnel.run(closing, on_close));
    response
}

/// An error and its causes on one line, for the server's own log.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
