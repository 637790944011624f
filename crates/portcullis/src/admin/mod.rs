//! The admin API: create, list, show, revoke and rotate tokens over HTTP, on a listener
//! of its own (127.0.0.1:9901 by default), for callers holding the `admin` scope. It serves
//! its OpenAPI document at `/openapi.json` and a docs page at `/docs`. Every error it sends,
//! down to a body it cannot read or a method a path does not take, is problem+json.

mod audit;
mod docs;
mod extract;
mod openapi;
mod upstreams;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};
use utoipa::ToSchema;

use self::extract::{JsonBody, OptionalJsonBody, RequestId, TokenId, problem};
use crate::audit::store::AuditStore;
use crate::auth::{Authenticator, StaticTokens, insufficient_scope};
use crate::base::body::BoxError;
use crate::base::context::{ConnInfo, X_REQUEST_ID, request_id};
use crate::base::exchange::{AdminAction, Caller, Decision, Exchange, protocol};
use crate::base::problem::{Problem, ProblemKind};
use crate::config::Config;
use crate::credentials::{CredentialError, CredentialKind, NewToken, TokenRecord, TokenVerifier};
use crate::headers::{ResponseHeaders, SecurityHeadersPolicy};
use crate::pipeline::Shared;
use crate::ratelimit::{Limiter, RateLimits, Snapshot};
use crate::recorder::{RecordedBody, Recorder};
use crate::redact::Redactor;
use crate::server::tls;

/// The CSP of the docs page: its own inline styles, nothing else.
pub const DOCS_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'";

/// Time an admin client has for its TLS handshake and for each request head.
const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The address could not be bound.
    #[error("cannot listen on {addr} for the admin API: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The admin TLS files could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

#[derive(Clone)]
struct AdminState {
    auth: Arc<Authenticator>,
    tokens: Arc<TokenVerifier>,
    rate_limits: Arc<RateLimits>,
    /// The bans of the main listener, checked and added to here too.
    bans: Arc<Limiter>,
    recorder: Option<Recorder>,
    /// The audit log's store, for searches; none with the audit log off.
    audit: Option<AuditStore>,
    /// What the workers share of each upstream: breakers, call counts, key pools.
    upstreams: Vec<Arc<crate::upstream::UpstreamShared>>,
    /// When the main listener's TLS certificate expires, if it has one.
    listener_certificate: Option<std::time::SystemTime>,
}

/// A bound admin listener.
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    router: Router,
}

impl AdminServer {
    /// Binds the admin listener of `config`, managing the tokens `tokens` verifies and
    /// reporting on the rate limits and the recorder of `shared`; its requests are recorded
    /// through that recorder too, marked as admin.
    pub async fn bind(
        config: &Config,
        tokens: Arc<TokenVerifier>,
        shared: &Shared,
    ) -> Result<Self, AdminError> {
        let admin = &config.admin;
        let tls = match &admin.tls {
            // The admin API speaks HTTP/1.1 only, so it must not offer h2.
            Some(files) => Some(TlsAcceptor::from(tls::load_with_alpn(
                &files.cert,
                &files.key,
                &[b"http/1.1"],
            )?)),
            None => None,
        };
        let listener =
            TcpListener::bind(admin.listen)
                .await
                .map_err(|source| AdminError::Bind {
                    addr: admin.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| AdminError::Bind {
            addr: admin.listen,
            source,
        })?;
        let document = openapi::document(tokens.credentials().known_scopes());
        let auth = Authenticator::new(StaticTokens::new(&config.api_tokens), Some(tokens.clone()));
        let headers = ResponseHeaders::new(&SecurityHeadersPolicy {
            enabled: true,
            content_security_policy: HeaderValue::from_static(crate::headers::DEFAULT_CSP),
            csp_overrides: vec![("/docs".to_owned(), HeaderValue::from_static(DOCS_CSP))],
            strict_transport_security: HeaderValue::from_static(
                "max-age=31536000; includeSubDomains",
            ),
        });
        Ok(Self {
            listener,
            local_addr,
            tls,
            router: router(
                AdminState {
                    auth: Arc::new(auth),
                    tokens,
                    rate_limits: shared.rate_limits.clone(),
                    bans: Arc::new(Limiter::new(shared.rate_limits.clone())),
                    recorder: shared.recorder.clone(),
                    audit: shared.audit_store.clone(),
                    upstreams: shared.upstreams.clone(),
                    listener_certificate: config
                        .tls
                        .as_ref()
                        .and_then(|files| crate::server::tls::certificate_expiry(&files.cert)),
                },
                Arc::new(Front {
                    headers,
                    recorder: shared.recorder.clone(),
                    redactor: shared.redactor.clone(),
                }),
                Arc::new(Published::new(&document)),
            ),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        info!(addr = %self.local_addr, tls = self.tls.is_some(), "admin API listening");
        loop {
            let Ok((stream, peer)) = self.listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let tls = self.tls.clone();
            let conn = ConnInfo {
                peer,
                tls: tls.is_some(),
            };
            let router = self.router.clone();
            // Each request carries its connection, for its record.
            let service = service_fn(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(conn);
                // A Router is always ready.
                tower_service::Service::call(&mut router.clone(), request)
            });
            tokio::spawn(async move {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(ADMIN_HEAD_TIMEOUT);
                let served = match tls {
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(ADMIN_HEAD_TIMEOUT, acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(stream)) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            Ok(Err(error)) => {
                                return debug!(%peer, %error, "admin TLS handshake failed");
                            }
                            Err(_) => return debug!(%peer, "admin TLS handshake timed out"),
                        }
                    }
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
                if let Err(error) = served {
                    debug!(%peer, %error, "admin connection ended with an error");
                }
            });
        }
    }
}

fn router(state: AdminState, front: Arc<Front>, published: Arc<Published>) -> Router {
    let tokens = Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", get(show_token))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/tokens/{id}/rotate", post(rotate_token))
        .route("/v1/rate-limits", get(rate_limits))
        .route("/v1/audit", get(audit::audit_events))
        .route("/v1/upstreams", get(upstreams::upstreams))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .with_state(state);
    Router::new()
        .route("/openapi.json", get(openapi_json))
        .route("/docs", get(docs_page))
        .with_state(published)
        .merge(tokens)
        .fallback(
            |RequestId(id): RequestId| async move { problem(ProblemKind::NotFound.into(), &id) },
        )
        // After every route, so that it reaches them all; axum still adds `Allow`.
        .method_not_allowed_fallback(|RequestId(id): RequestId| async move {
            problem(
                Problem::new(ProblemKind::MethodNotAllowed)
                    .with_detail("the Allow header lists the methods this path takes"),
                &id,
            )
        })
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(middleware::from_fn_with_state(front, uncancellable))
}

/// The OpenAPI document, serialised once, and the docs page made from it.
struct Published {
    json: Bytes,
    page: Html<String>,
}

impl Published {
    fn new(document: &utoipa::openapi::OpenApi) -> Self {
        Self {
            // Serialising a JSON value cannot fail.
            json: Bytes::from(serde_json::to_vec(&openapi::to_json(document)).unwrap_or_default()),
            page: docs::page(document),
        }
    }
}

/// What the outermost layer needs: the response headers, and where records go.
struct Front {
    headers: ResponseHeaders,
    recorder: Option<Recorder>,
    redactor: Arc<Redactor>,
}

/// Serves a request to the end even when its client goes away: an action that reached the
/// store (a token revoked, then the client gone before the answer) must still leave its
/// record, which [`respond`] makes.
async fn uncancellable(State(front): State<Arc<Front>>, request: Request, next: Next) -> Response {
    let served = tokio::spawn(respond(front, request, next));
    match served.await {
        Ok(response) => response,
        Err(_) => {
            let mut response = problem(
                Problem::new(ProblemKind::Internal),
                &crate::base::context::new_request_id(),
            );
            // Whatever the request left unread stays so: see `respond` on chunked bodies.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// Gives every request an id and every response the security headers and that id, and
/// hands each request's exchange record, marked as admin, to the response body, which
/// finishes it when it ends (or is dropped unsent).
async fn respond(front: Arc<Front>, mut request: Request, next: Next) -> Response {
    let id = request_id(request.headers());
    request.extensions_mut().insert(RequestId(id.clone()));
    let record = front.recorder.as_ref().map(|recorder| {
        (
            begin_record(&request, &id, &front.redactor),
            recorder.clone(),
        )
    });
    if let Some((exchange, _)) = &record {
        let counted = exchange.bytes_in.clone();
        request = request.map(|body| {
            Body::new(body.map_frame(move |frame| {
                if let Some(data) = frame.data_ref() {
                    counted.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                frame
            }))
        });
    }
    let csp = front.headers.csp_for(request.uri().path()).clone();
    // A chunked HTTP/1.1 request ends its connection: the parser could read a trailer
    // section otherwise than a front proxy (see `base::body::ChunkedEnd`); the admin API's
    // few uploads can afford it.
    let chunked = request.version() < http::Version::HTTP_2
        && request.headers().contains_key(header::TRANSFER_ENCODING);
    let mut response = next.run(request).await;
    let out = response.headers_mut();
    if chunked {
        out.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    front.headers.apply(out, &csp, false);
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out.insert(X_REQUEST_ID.clone(), id);
    let Some((mut exchange, recorder)) = record else {
        return response;
    };
    exchange.status = response.status().as_u16();
    let extensions = response.extensions_mut();
    exchange.decision = extensions.remove::<Decision>().unwrap_or_default();
    exchange.caller = extensions.remove::<Caller>();
    exchange.action = extensions.remove::<AdminAction>();
    exchange.to_head = exchange.started_at.elapsed();
    response.map(|body| {
        let body = body.map_err(|error| Box::new(error) as BoxError);
        Body::new(RecordedBody::new(body, Box::new(exchange), recorder))
    })
}

/// The record of an admin request: the route is the matched pattern (`/v1/tokens/{id}`).
fn begin_record(request: &Request, id: &HeaderValue, redactor: &Redactor) -> Exchange {
    let conn = request.extensions().get::<ConnInfo>();
    let peer = conn.map_or(IpAddr::from([0, 0, 0, 0]), |conn| {
        conn.peer.ip().to_canonical()
    });
    let uri = request.uri();
    Exchange {
        client_ip: conn.map(|_| peer),
        method: Some(request.method().clone()),
        route: request
            .extensions()
            .get::<MatchedPath>()
            .map(|matched| Arc::from(matched.as_str())),
        path: redactor.path(uri.path()).into_owned(),
        query: uri.query().map(|query| redactor.query(query)),
        user_agent: request.headers().get(header::USER_AGENT).cloned(),
        admin: true,
        ..Exchange::begin(
            id.clone(),
            peer,
            protocol(request.version(), conn.is_some_and(|conn| conn.tls)),
        )
    }
}

/// Token endpoints need a credential with the `admin` scope. The main listener's bans
/// hold here too, and failed credentials here count towards them: a guess at the admin
/// token is a failed authentication like any other.
async fn require_admin(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    request: Request,
    next: Next,
) -> Response {
    let client = request
        .extensions()
        .get::<ConnInfo>()
        .map(|conn| conn.peer.ip().to_canonical());
    if let Some(client) = client
        && let Err(refusal) = state.bans.check_ban(client).await
    {
        return problem(refusal, &id);
    }
    let principal = match state.auth.authenticate(request.headers()).await {
        Ok(principal) => principal,
        Err(refusal) => {
            if refusal.kind() == ProblemKind::Unauthorized
                && let Some(client) = client
            {
                state.bans.record_failure(client).await;
            }
            return problem(refusal, &id);
        }
    };
    let mut response = if principal.has_scope("admin") {
        next.run(request).await
    } else {
        problem(insufficient_scope("admin"), &id)
    };
    response.extensions_mut().insert(principal.caller());
    response
}

/// The problem for a failed credential operation. The details are written here: the
/// errors' own messages quote the client's input.
fn credential_problem(error: CredentialError, id: &HeaderValue) -> Response {
    let problem = match &error {
        CredentialError::NotFound(_) => extract::not_found(),
        CredentialError::DuplicateName(_) => Problem::new(ProblemKind::Conflict).with_detail(
            "a live token already has this name, or one that looks like it; revoke it or choose another name",
        ),
        CredentialError::ReservedName(_) => Problem::new(ProblemKind::Conflict).with_detail(
            "the name looks like a principal of the gateway's own (static, cli); choose another name",
        ),
        CredentialError::NotLive(_) => Problem::new(ProblemKind::Conflict)
            .with_detail("the token is not live (revoked, expired or already rotated)"),
        CredentialError::UnknownScope(_, known) => Problem::new(ProblemKind::BadRequest)
            .with_detail(format!("every scope must be one of: {known}")),
        CredentialError::NoScopes
        | CredentialError::InvalidName
        | CredentialError::InvalidTenant
        | CredentialError::ExpiryInPast => {
            Problem::new(ProblemKind::BadRequest).with_detail(error.to_string())
        }
        CredentialError::Store(_) | CredentialError::StoreDown => {
            tracing::warn!(%error, "admin API: store failed");
            Problem::new(ProblemKind::StoreUnavailable)
                .with_detail("the credential store cannot be reached")
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
        }
        CredentialError::Pepper(_) | CredentialError::Secret(_) => {
            tracing::warn!(%error, "admin API: the token pepper is unavailable");
            Problem::new(ProblemKind::StoreUnavailable)
        }
    };
    extract::problem(problem, id)
}

/// A token as the admin API shows it; never the token itself.
#[derive(Debug, Serialize, ToSchema)]
struct TokenView {
    /// Stable id, e.g. `tok_4fQ9zX1bK2mN0`.
    id: String,
    /// `token` or `capability`.
    #[schema(pattern = "^(token|capability)$")]
    kind: String,
    /// Unique among live tokens.
    name: String,
    /// The token's first characters, to recognise it.
    public_prefix: String,
    /// What the token may do.
    scopes: Vec<String>,
    /// The tenant the token belongs to, if any.
    tenant: Option<String>,
    /// `live`, `rotating`, `expired` or `revoked`.
    #[schema(pattern = "^(live|rotating|expired|revoked)$")]
    state: String,
    /// Unix seconds.
    created_at: i64,
    /// Unix seconds; none for no expiry.
    expires_at: Option<i64>,
    /// Unix seconds.
    revoked_at: Option<i64>,
    /// Unix seconds, updated at most once a minute.
    last_used_at: Option<i64>,
    /// The id of the token that replaced this one by rotation.
    superseded_by: Option<String>,
}

impl From<TokenRecord> for TokenView {
    fn from(record: TokenRecord) -> Self {
        Self {
            state: record.state(crate::store::now()).to_owned(),
            kind: record.kind.as_str().to_owned(),
            id: record.id,
            name: record.name,
            public_prefix: record.public_prefix,
            scopes: record.scopes,
            tenant: record.tenant,
            created_at: record.created_at,
            expires_at: record.expires_at,
            revoked_at: record.revoked_at,
            last_used_at: record.last_used_at,
            superseded_by: record.superseded_by,
        }
    }
}

/// A newly minted token: shown in this response only.
#[derive(Debug, Serialize, ToSchema)]
struct MintedView {
    /// The token itself, shown this once.
    token: String,
    /// What is stored about it.
    record: TokenView,
}

impl MintedView {
    fn new(record: TokenRecord, secret: &SecretString) -> Self {
        Self {
            token: secret.expose_secret().to_owned(),
            record: record.into(),
        }
    }
}

/// The body of `POST /v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    /// Unique among live tokens: 1 to 100 characters, not only spaces, no control
    /// characters.
    #[schema(value_type = openapi::Label)]
    name: String,
    /// Mint a capability (a secret path segment) instead of a bearer token.
    #[serde(default)]
    capability: bool,
    /// At least one; `admin` implies every scope.
    #[schema(value_type = Vec<openapi::Scope>, min_items = 1)]
    scopes: Vec<String>,
    /// The tenant the token belongs to, if any: a label like the name.
    #[schema(value_type = Option<openapi::Label>)]
    tenant: Option<String>,
    /// How long the token lives, e.g. `90d` or `12h`; absent or null for no expiry.
    #[schema(value_type = Option<openapi::ExpiresIn>)]
    expires_in: Option<String>,
}

/// The body of `POST /v1/tokens/{id}/rotate`; it may be left out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the old token keeps working, e.g. `24h` (the default) or `0s`.
    #[schema(value_type = Option<openapi::Overlap>)]
    overlap: Option<String>,
}

/// Parses an admin API duration ([`openapi::EXPIRES_IN_PATTERN`], or with `zero_allowed`
/// [`openapi::OVERLAP_PATTERN`]).
fn parse_duration(text: &str, zero_allowed: bool) -> Option<Duration> {
    crate::base::duration::parse_whole(text, zero_allowed)
}

/// `text` as a duration, or the 400 that says what durations look like.
fn duration(text: Option<&str>, zero_allowed: bool) -> Result<Option<Duration>, Problem> {
    text.map(|text| {
        parse_duration(text, zero_allowed).ok_or_else(|| {
            Problem::new(ProblemKind::BadRequest).with_detail(if zero_allowed {
                "durations are a whole number and a unit (s, m, h, d or w), e.g. 0s, 30m or 24h"
            } else {
                "durations are a positive whole number and a unit (s, m, h, d or w), e.g. 30m, 12h or 90d"
            })
        })
    })
    .transpose()
}

/// Create a token (or a capability). The token is in this response only.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateRequest,
    responses(
        (status = 201, description = "Created; the token is shown this once", body = MintedView),
        (status = 400, response = openapi::BadRequest),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::TooLarge),
        (status = 415, response = openapi::NotJson),
    ))]
async fn create_token(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    JsonBody(body): JsonBody<CreateRequest>,
) -> Response {
    let expires_in = match duration(body.expires_in.as_deref(), false) {
        Ok(expires_in) => expires_in,
        Err(refusal) => return problem(refusal, &id),
    };
    let new = NewToken {
        kind: if body.capability {
            CredentialKind::Capability
        } else {
            CredentialKind::Token
        },
        name: body.name,
        scopes: body.scopes,
        tenant: body.tenant,
        expires_in,
    };
    match state.tokens.credentials().create(new).await {
        Ok((record, secret)) => {
            let target = record.id.clone();
            let minted = (StatusCode::CREATED, Json(MintedView::new(record, &secret)));
            let action = AdminAction::on("token_created", target);
            acted(action, minted.into_response())
        }
        Err(error) => credential_problem(error, &id),
    }
}

/// `response`, carrying the admin action it reports for the request's record.
fn acted(action: AdminAction, mut response: Response) -> Response {
    response.extensions_mut().insert(action);
    response
}

/// List every token, newest first (never the tokens themselves).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses((status = 200, description = "Every token", body = [TokenView])))]
async fn list_tokens(State(state): State<AdminState>, RequestId(id): RequestId) -> Response {
    match state.tokens.credentials().list().await {
        Ok(records) => {
            Json(records.into_iter().map(TokenView::from).collect::<Vec<_>>()).into_response()
        }
        Err(error) => credential_problem(error, &id),
    }
}

/// Show one token.
#[utoipa::path(get, path = "/v1/tokens/{id}", tag = "tokens", params(openapi::TokenIdParam),
    responses(
        (status = 200, description = "The token", body = TokenView),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound),
    ))]
async fn show_token(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    TokenId(token_id): TokenId,
) -> Response {
    match state.tokens.credentials().show(&token_id).await {
        Ok(record) => Json(TokenView::from(record)).into_response(),
        Err(error) => credential_problem(error, &id),
    }
}

/// Revoke a token, at once on this instance (revoking twice keeps the first time).
#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "tokens", params(openapi::TokenIdParam),
    responses(
        (status = 200, description = "The revoked token", body = TokenView),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound),
    ))]
async fn revoke_token(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    TokenId(token_id): TokenId,
) -> Response {
    match state.tokens.credentials().revoke(&token_id).await {
        Ok(revoked) => {
            // Revocation applies at once on this instance; others see it within the
            // cache window.
            state.tokens.forget_cached();
            let response = Json(TokenView::from(revoked.record)).into_response();
            // Revoking again changes nothing, and is no admin action to audit.
            match revoked.now {
                true => acted(AdminAction::on("token_revoked", token_id), response),
                false => response,
            }
        }
        Err(error) => credential_problem(error, &id),
    }
}

/// Mint a successor to a live token; the old one keeps working for the overlap.
#[utoipa::path(post, path = "/v1/tokens/{id}/rotate", tag = "tokens", params(openapi::TokenIdParam),
    request_body(content = RotateRequest, description = "May be left out: the overlap is then 24h"),
    responses(
        (status = 201, description = "The successor; its token is shown this once", body = MintedView),
        (status = 400, response = openapi::BadRequest),
        (status = 404, response = openapi::NotFound),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::TooLarge),
        (status = 415, response = openapi::NotJson),
    ))]
async fn rotate_token(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    TokenId(token_id): TokenId,
    OptionalJsonBody(body): OptionalJsonBody<RotateRequest>,
) -> Response {
    let body = body.unwrap_or_default();
    let overlap = match duration(body.overlap.as_deref(), true) {
        Ok(overlap) => overlap.unwrap_or(Duration::from_secs(24 * 3600)),
        Err(refusal) => return problem(refusal, &id),
    };
    match state.tokens.credentials().rotate(&token_id, overlap).await {
        Ok((record, secret)) => {
            state.tokens.forget_cached();
            let action = AdminAction::rotated(token_id, record.id.clone());
            let minted = (StatusCode::CREATED, Json(MintedView::new(record, &secret)));
            acted(action, minted.into_response())
        }
        Err(error) => credential_problem(error, &id),
    }
}

/// Where rate limits are kept, and each route's limits and counts on this instance.
#[utoipa::path(get, path = "/v1/rate-limits", tag = "rate limits",
    responses((status = 200, description = "The rate-limit state", body = Snapshot)))]
async fn rate_limits(State(state): State<AdminState>) -> Json<Snapshot> {
    Json(state.rate_limits.snapshot())
}

/// The rate-limit counters in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "rate limits",
    responses((status = 200, description = "Prometheus text format 0.0.4",
        content_type = "text/plain", body = String)))]
async fn metrics(State(state): State<AdminState>) -> Response {
    let snapshot = state.rate_limits.snapshot();
    let mut text = String::from(
        "# HELP portcullis_rate_limit_requests_total Requests checked against a route's rate limits, by decision.\n\
         # TYPE portcullis_rate_limit_requests_total counter\n",
    );
    for route in &snapshot.routes {
        let label = route.path_prefix.replace('\\', "\\\\").replace('"', "\\\"");
        for (decision, count) in [("allowed", route.allowed), ("limited", route.limited)] {
            text.push_str(&format!(
                "portcullis_rate_limit_requests_total{{route=\"{label}\",decision=\"{decision}\"}} {count}\n"
            ));
        }
    }
    text.push_str(&format!(
        "# HELP portcullis_rate_limit_backend Where rate limits are kept: 1 for the current state.\n\
         # TYPE portcullis_rate_limit_backend gauge\n\
         portcullis_rate_limit_backend{{state=\"{}\"}} 1\n\
         # HELP portcullis_rate_limit_backend_errors_total Redis calls that failed or timed out.\n\
         # TYPE portcullis_rate_limit_backend_errors_total counter\n\
         portcullis_rate_limit_backend_errors_total {}\n\
         # HELP portcullis_rate_limit_fallback_decisions_total Decisions made in memory because Redis was unreachable.\n\
         # TYPE portcullis_rate_limit_fallback_decisions_total counter\n\
         portcullis_rate_limit_fallback_decisions_total {}\n",
        snapshot.backend.as_str(),
        snapshot.backend_errors,
        snapshot.fallback_decisions,
    ));
    upstreams::metrics(&state.upstreams, state.listener_certificate, &mut text);
    if let Some(recorder) = &state.recorder {
        text.push_str(&format!(
            "# HELP portcullis_records_dropped_total Request records dropped because the access log could not keep up (never with the audit log on).\n\
             # TYPE portcullis_records_dropped_total counter\n\
             portcullis_records_dropped_total {}\n",
            recorder.dropped()
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", tag = "docs",
    responses((status = 200, description = "The OpenAPI 3.1 document",
        content_type = "application/json", body = Object)))]
async fn openapi_json(State(published): State<Arc<Published>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        published.json.clone(),
    )
        .into_response()
}

/// A page listing the endpoints, without scripts.
#[utoipa::path(get, path = "/docs", tag = "docs",
    responses((status = 200, description = "The docs page", content_type = "text/html", body = String)))]
async fn docs_page(State(published): State<Arc<Published>>) -> Html<String> {
    published.page.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex_automata::meta::Regex;

    proptest! {
        #[test]
        fn the_duration_patterns_agree_with_the_parser(text in "[0-9]{0,8}[smhdwSx ]?|\\PC{0,4}") {
            let expires_in = Regex::new(openapi::EXPIRES_IN_PATTERN).unwrap();
            let overlap = Regex::new(openapi::OVERLAP_PATTERN).unwrap();
            prop_assert_eq!(parse_duration(&text, false).is_some(), expires_in.is_match(&text));
            prop_assert_eq!(parse_duration(&text, true).is_some(), overlap.is_match(&text));
        }
    }
}
