//! The admin API: create, list, show, revoke and rotate tokens over HTTP, on a listener
//! of its own (127.0.0.1:9901 by default), for callers holding the `admin` scope. It serves
//! its OpenAPI document at `/openapi.json` and a docs page at `/docs`.

mod docs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};
use utoipa::{OpenApi, ToSchema};

use crate::config::Config;
use crate::credentials::{CredentialError, CredentialKind, NewToken, TokenRecord, TokenVerifier};
use crate::pipeline::auth::{Authenticator, StaticTokens, insufficient_scope};
use crate::pipeline::context::{X_REQUEST_ID, request_id};
use crate::pipeline::headers::{ResponseHeaders, SecurityHeadersPolicy};
use crate::pipeline::problem::{Problem, ProblemKind};
use crate::ratelimit::{RateLimits, Snapshot};
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
    /// reporting on `rate_limits`.
    pub async fn bind(
        config: &Config,
        tokens: Arc<TokenVerifier>,
        rate_limits: Arc<RateLimits>,
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
        let auth = Authenticator::new(StaticTokens::new(&config.api_tokens), Some(tokens.clone()));
        let headers = ResponseHeaders::new(&SecurityHeadersPolicy {
            enabled: true,
            content_security_policy: HeaderValue::from_static(
                crate::pipeline::headers::DEFAULT_CSP,
            ),
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
                    rate_limits,
                },
                Arc::new(headers),
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
            let service = TowerToHyperService::new(self.router.clone());
            let tls = self.tls.clone();
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

fn router(state: AdminState, headers: Arc<ResponseHeaders>) -> Router {
    let tokens = Router::new()
        .route("/v1/tokens", get(list_tokens).post(create_token))
        .route("/v1/tokens/{id}", get(show_token))
        .route("/v1/tokens/{id}/revoke", post(revoke_token))
        .route("/v1/tokens/{id}/rotate", post(rotate_token))
        .route("/v1/rate-limits", get(rate_limits))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin))
        .with_state(state);
    Router::new()
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .route("/docs", get(|| async { docs::page(&ApiDoc::openapi()) }))
        .merge(tokens)
        .fallback(
            |RequestId(id): RequestId| async move { problem(ProblemKind::NotFound.into(), &id) },
        )
        .layer(middleware::from_fn_with_state(headers, respond))
}

/// The request's id: the client's `X-Request-ID` when well-formed, else a new one.
#[derive(Debug, Clone)]
struct RequestId(HeaderValue);

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId(request_id(&parts.headers))))
    }
}

/// Gives every request an id and every response the security headers and that id.
async fn respond(
    State(headers): State<Arc<ResponseHeaders>>,
    mut request: Request,
    next: Next,
) -> Response {
    let id = request_id(request.headers());
    request.extensions_mut().insert(RequestId(id.clone()));
    let csp = headers.csp_for(request.uri().path()).clone();
    let mut response = next.run(request).await;
    let out = response.headers_mut();
    headers.apply(out, &csp, false);
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    out.insert(X_REQUEST_ID.clone(), id);
    response
}

/// Token endpoints need a credential with the `admin` scope.
async fn require_admin(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    request: Request,
    next: Next,
) -> Response {
    match state.auth.authenticate(request.headers()).await {
        Ok(principal) if principal.has_scope("admin") => next.run(request).await,
        Ok(_) => problem(insufficient_scope("admin"), &id),
        Err(refusal) => problem(refusal, &id),
    }
}

fn problem(problem: Problem, id: &HeaderValue) -> Response {
    problem.into_response(id).map(axum::body::Body::new)
}

fn credential_problem(error: CredentialError, id: &HeaderValue) -> Response {
    let problem = match &error {
        CredentialError::NotFound(_) => {
            Problem::new(ProblemKind::NotFound).with_detail("no token has this id")
        }
        CredentialError::Store(_) => {
            tracing::warn!(%error, "admin API: store failed");
            Problem::new(ProblemKind::StoreUnavailable)
                .with_detail("the credential store cannot be reached")
        }
        CredentialError::Pepper(_) | CredentialError::Secret(_) => {
            Problem::new(ProblemKind::StoreUnavailable)
        }
        _ => Problem::new(ProblemKind::BadRequest).with_detail(error.to_string()),
    };
    self::problem(problem, id)
}

/// A token as the admin API shows it; never the token itself.
#[derive(Debug, Serialize, ToSchema)]
struct TokenView {
    id: String,
    /// `token` or `capability`.
    kind: String,
    name: String,
    public_prefix: String,
    scopes: Vec<String>,
    tenant: Option<String>,
    /// `live`, `rotating`, `expired` or `revoked`.
    state: String,
    /// Unix seconds.
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
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
    token: String,
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
    name: String,
    /// Mint a capability (a secret path segment) instead of a bearer token.
    #[serde(default)]
    capability: bool,
    scopes: Vec<String>,
    tenant: Option<String>,
    /// A duration such as `90d` or `12h`; absent for no expiry.
    expires_in: Option<String>,
}

/// The body of `POST /v1/tokens/{id}/rotate`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the old token keeps working, e.g. `24h` (the default).
    overlap: Option<String>,
}

fn duration(text: Option<&str>) -> Result<Option<Duration>, Problem> {
    text.map(humantime::parse_duration)
        .transpose()
        .map_err(|_| {
            Problem::new(ProblemKind::BadRequest).with_detail("durations look like 90d, 12h or 30m")
        })
}

#[utoipa::path(post, path = "/v1/tokens", request_body = CreateRequest,
    responses((status = 201, body = MintedView), (status = 400), (status = 401), (status = 403)))]
async fn create_token(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    body: Result<Json<CreateRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return problem(
            Problem::new(ProblemKind::BadRequest)
                .with_detail("the body must be a JSON token request"),
            &id,
        );
    };
    let expires_in = match duration(body.expires_in.as_deref()) {
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
            (StatusCode::CREATED, Json(MintedView::new(record, &secret))).into_response()
        }
        Err(error) => credential_problem(error, &id),
    }
}

#[utoipa::path(get, path = "/v1/tokens", responses((status = 200, body = [TokenView]), (status = 401), (status = 403)))]
async fn list_tokens(State(state): State<AdminState>, RequestId(id): RequestId) -> Response {
    match state.tokens.credentials().list().await {
        Ok(records) => {
            Json(records.into_iter().map(TokenView::from).collect::<Vec<_>>()).into_response()
        }
        Err(error) => credential_problem(error, &id),
    }
}

#[utoipa::path(get, path = "/v1/tokens/{id}", params(("id" = String, Path)),
    responses((status = 200, body = TokenView), (status = 404)))]
async fn show_token(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    Path(token_id): Path<String>,
) -> Response {
    match state.tokens.credentials().show(&token_id).await {
        Ok(record) => Json(TokenView::from(record)).into_response(),
        Err(error) => credential_problem(error, &id),
    }
}

#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", params(("id" = String, Path)),
    responses((status = 200, body = TokenView), (status = 404)))]
async fn revoke_token(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    Path(token_id): Path<String>,
) -> Response {
    match state.tokens.credentials().revoke(&token_id).await {
        Ok(record) => {
            // Revocation applies at once on this instance; others see it within the
            // cache window.
            state.tokens.forget_cached();
            Json(TokenView::from(record)).into_response()
        }
        Err(error) => credential_problem(error, &id),
    }
}

#[utoipa::path(post, path = "/v1/tokens/{id}/rotate", params(("id" = String, Path)), request_body = RotateRequest,
    responses((status = 201, body = MintedView), (status = 400), (status = 404)))]
async fn rotate_token(
    State(state): State<AdminState>,
    RequestId(id): RequestId,
    Path(token_id): Path<String>,
    body: Option<Json<RotateRequest>>,
) -> Response {
    let body = body.map(|Json(body)| body).unwrap_or_default();
    let overlap = match duration(body.overlap.as_deref()) {
        Ok(overlap) => overlap.unwrap_or(Duration::from_secs(24 * 3600)),
        Err(refusal) => return problem(refusal, &id),
    };
    match state.tokens.credentials().rotate(&token_id, overlap).await {
        Ok((record, secret)) => {
            state.tokens.forget_cached();
            (StatusCode::CREATED, Json(MintedView::new(record, &secret))).into_response()
        }
        Err(error) => credential_problem(error, &id),
    }
}

#[utoipa::path(get, path = "/v1/rate-limits",
    responses((status = 200, body = Snapshot), (status = 401), (status = 403)))]
async fn rate_limits(State(state): State<AdminState>) -> Json<Snapshot> {
    Json(state.rate_limits.snapshot())
}

/// The rate-limit counters in the Prometheus text format.
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
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "portcullis admin API",
        description = "Manage the gateway's bearer tokens. Every /v1 endpoint needs a bearer token with the admin scope."
    ),
    paths(
        create_token,
        list_tokens,
        show_token,
        revoke_token,
        rotate_token,
        rate_limits
    ),
    components(schemas(TokenView, MintedView, CreateRequest, RotateRequest, Snapshot))
)]
struct ApiDoc;
