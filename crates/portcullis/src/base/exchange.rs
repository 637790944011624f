//! The exchange record: one per request, created when its head is read, filled by the
//! stages as the request goes, and finished in one place (the recorder, above this module).
//! Clients see problem+json; the record keeps the precise internal [`Decision`].

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What the gateway decided about a request, or what became of it: one stable
/// `snake_case` code each, kept inside the gateway (clients see the same 401 for an
/// unknown, an expired and a revoked token; the record tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decision {
    /// Forwarded (or answered by the gateway itself, as `/health` is), whatever the
    /// upstream then answered.
    #[default]
    Allowed,
    /// No credential was sent.
    AuthMissing,
    /// The `Authorization` header is not one well-formed bearer token.
    AuthMalformed,
    /// A well-formed token that no store or static list knows.
    AuthUnknown,
    /// A managed token past its expiry (or its rotation overlap).
    AuthExpired,
    /// A revoked managed token.
    AuthRevoked,
    /// A capability path with no live capability in it.
    CapabilityUnknown,
    /// The caller lacks the route's scope for the method.
    Scope,
    /// The route's address rules refuse the client.
    IpDenied,
    /// The client's address is banned after failed authentications.
    Banned,
    /// Over a rate limit.
    RateLimited,
    /// A CORS preflight refused, or answered.
    CorsRefused,
    /// A preflight the gateway answered itself.
    CorsPreflight,
    /// The path breaks a hygiene rule.
    PathRefused,
    /// The method is refused (`TRACE`, `CONNECT`, or not a standard one).
    MethodRefused,
    /// The request target is too long.
    UriTooLong,
    /// Too many header fields, or too many bytes of them.
    HeadersTooLarge,
    /// The body is larger than the limit, declared or streamed.
    BodyTooLarge,
    /// The request is malformed: its host, its transfer coding, its `Content-Length`.
    BadRequest,
    /// The request named a host not in `allowed_hosts`.
    HostRefused,
    /// A WebSocket handshake on a route that does not allow WebSockets.
    UpgradeRefused,
    /// A WebSocket handshake from a browser origin that is not allowed (cross-site
    /// WebSocket hijacking).
    OriginRefused,
    /// An open WebSocket was closed for carrying nothing for `stream_idle_timeout`.
    StreamIdle,
    /// An open WebSocket was closed at `stream_max_lifetime`.
    StreamLifetime,
    /// An open WebSocket was closed for a message over `max_message_bytes` (1009).
    MessageTooLarge,
    /// An open WebSocket was closed at the end of the server's shutdown grace period.
    StreamShutdown,
    /// An open WebSocket was closed because its credential is no longer live or its
    /// client was banned.
    StreamRevoked,
    /// A stream (a WebSocket, a response streaming after its head) would have gone over
    /// the upstream's `max_streams` or the caller's `max_streams_per_principal`.
    StreamsExhausted,
    /// The request head did not arrive in time.
    HeadTimeout,
    /// The client's body could not be read: malformed chunked framing, cut short, or too
    /// slow to arrive.
    ClientBodyError,
    /// The client went away before its response was sent whole.
    ClientAborted,
    /// No route covers the path.
    NoRoute,
    /// The credential store could not be asked.
    StoreUnavailable,
    /// The shared rate-limit backend could not be asked, and limited routes are refused.
    RateLimitUnavailable,
    /// The upstream's in-flight cap was reached.
    UpstreamBusy,
    /// The upstream could not be reached, or failed mid-request.
    UpstreamConnect,
    /// The upstream did not answer an attempt in time (no response head within
    /// `timeout`).
    UpstreamTimeout,
    /// No connection to the upstream could be opened within `connect_timeout`.
    UpstreamConnectTimeout,
    /// The attempts and pauses together ran past `total_timeout`.
    UpstreamTotalTimeout,
    /// The upstream answered with something the gateway cannot relay.
    UpstreamProtocol,
    /// The upstream's certificate matched none of its pins; nothing was sent to it.
    UpstreamPinMismatch,
    /// Every key of the upstream's credential is benched (refused or rate-limited).
    UpstreamKeysExhausted,
    /// The upstream's circuit breaker is open; it was not called.
    UpstreamCircuitOpen,
    /// The upstream fails its active health checks; it was not called.
    UpstreamUnhealthy,
    /// `/ready` found something unreachable.
    NotReady,
    /// Audit strict mode: the admission event could not be made durable, so the request
    /// was refused rather than forwarded unrecorded.
    AuditUnavailable,
    /// The gateway failed on its own.
    Internal,
}

impl Decision {
    /// The code, as the access log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::AuthMissing => "auth_missing",
            Self::AuthMalformed => "auth_malformed",
            Self::AuthUnknown => "auth_unknown",
            Self::AuthExpired => "auth_expired",
            Self::AuthRevoked => "auth_revoked",
            Self::CapabilityUnknown => "capability_unknown",
            Self::Scope => "scope",
            Self::IpDenied => "ip_denied",
            Self::Banned => "banned",
            Self::RateLimited => "rate_limited",
            Self::CorsRefused => "cors_refused",
            Self::CorsPreflight => "cors_preflight",
            Self::PathRefused => "path_refused",
            Self::MethodRefused => "method_refused",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::BadRequest => "bad_request",
            Self::HostRefused => "host_refused",
            Self::UpgradeRefused => "upgrade_refused",
            Self::OriginRefused => "origin_refused",
            Self::StreamIdle => "stream_idle",
            Self::StreamLifetime => "stream_lifetime",
            Self::MessageTooLarge => "message_too_large",
            Self::StreamShutdown => "stream_shutdown",
            Self::StreamRevoked => "stream_revoked",
            Self::StreamsExhausted => "streams_exhausted",
            Self::HeadTimeout => "head_timeout",
            Self::ClientBodyError => "client_body_error",
            Self::ClientAborted => "client_aborted",
            Self::NoRoute => "no_route",
            Self::StoreUnavailable => "store_unavailable",
            Self::RateLimitUnavailable => "rate_limit_unavailable",
            Self::UpstreamBusy => "upstream_busy",
            Self::UpstreamConnect => "upstream_connect",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamConnectTimeout => "upstream_connect_timeout",
            Self::UpstreamTotalTimeout => "upstream_total_timeout",
            Self::UpstreamProtocol => "upstream_protocol",
            Self::UpstreamPinMismatch => "upstream_pin_mismatch",
            Self::UpstreamKeysExhausted => "upstream_keys_exhausted",
            Self::UpstreamCircuitOpen => "upstream_circuit_open",
            Self::UpstreamUnhealthy => "upstream_unhealthy",
            Self::NotReady => "not_ready",
            Self::AuditUnavailable => "audit_unavailable",
            Self::Internal => "internal",
        }
    }
}

/// Who made a request, as the record keeps it: never a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `static`, `token` or `capability`.
    pub kind: &'static str,
    /// The managed credential's id; none for a static token.
    pub id: Option<String>,
    /// The name rate limits and logs know the caller by.
    pub name: std::borrow::Cow<'static, str>,
    /// The tenant, if any.
    pub tenant: Option<String>,
}

/// One request, as it went.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request's id: `[A-Za-z0-9._-]`, 1 to 128 characters (a shared copy of the
    /// header's bytes).
    pub request_id: http::HeaderValue,
    /// When the head was read.
    pub started: SystemTime,
    /// The same moment, for durations.
    pub started_at: Instant,
    /// The client's address, when known (behind trusted proxies it may not be).
    pub client_ip: Option<IpAddr>,
    /// The TCP peer the request came through.
    pub peer: IpAddr,
    /// The method; none when the head never arrived whole.
    pub method: Option<http::Method>,
    /// The route's configured prefix (never the raw path), once matched.
    pub route: Option<Arc<str>>,
    /// The path, with a capability segment masked.
    pub path: String,
    /// The query, with sensitive values masked.
    pub query: Option<String>,
    /// Who called, once authenticated.
    pub caller: Option<Caller>,
    /// The upstream's name, once forwarded.
    pub upstream: Option<Arc<str>>,
    /// The status sent.
    pub status: u16,
    /// What the gateway decided.
    pub decision: Decision,
    /// Request body bytes read from the client.
    pub bytes_in: Arc<AtomicU64>,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From the head read to the response head.
    pub to_head: Duration,
    /// From the head read to the last byte (or the client going away).
    pub duration: Duration,
    /// `HTTP/1.1` or `HTTP/2`, with `+tls` when the connection is TLS.
    pub protocol: &'static str,
    /// The `User-Agent` as sent (a shared copy of the header's bytes); sinks show at most
    /// [`USER_AGENT_MAX`] characters of it.
    pub user_agent: Option<http::HeaderValue>,
    /// Served by the admin API rather than the main listener.
    pub admin: bool,
    /// The admin action the request carried out, if any.
    pub action: Option<AdminAction>,
    /// The bodies' first bytes, on routes whose bodies the audit log keeps.
    pub samples: Option<Box<Samples>>,
}

/// The first bytes of a request's and its response's bodies, for the audit log.
#[derive(Debug, Clone)]
pub struct Samples {
    /// The request body's, filled as it streams to the upstream.
    pub request: Arc<Mutex<BodySample>>,
    /// The response body's, filled as it streams to the client.
    pub response: BodySample,
}

impl Samples {
    /// Samples of at most `limit` bytes each; `content_type` is the request's.
    pub fn new(limit: usize, content_type: Option<http::HeaderValue>) -> Self {
        Self {
            request: Arc::new(Mutex::new(BodySample::new(limit, content_type))),
            response: BodySample::new(limit, None),
        }
    }
}

/// A body's first bytes, its total length and its content type.
#[derive(Debug, Clone, Default)]
pub struct BodySample {
    /// At most `limit` bytes from the start.
    pub bytes: Vec<u8>,
    /// The most bytes kept.
    pub limit: usize,
    /// Bytes seen in all.
    pub total: u64,
    /// The body's `Content-Type`.
    pub content_type: Option<http::HeaderValue>,
}

impl BodySample {
    /// An empty sample keeping at most `limit` bytes.
    pub fn new(limit: usize, content_type: Option<http::HeaderValue>) -> Self {
        Self {
            bytes: Vec::new(),
            limit,
            total: 0,
            content_type,
        }
    }

    /// Takes the next `data` of the body.
    pub fn take(&mut self, data: &[u8]) {
        let room = self.limit.saturating_sub(self.bytes.len());
        self.bytes.extend_from_slice(&data[..room.min(data.len())]);
        self.total += data.len() as u64;
    }

    /// Whether the sample holds the whole body.
    pub fn is_whole(&self) -> bool {
        self.total == self.bytes.len() as u64
    }
}

/// An admin action, as the audit log records it: what was done, to what (never a token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAction {
    /// `token_created`, `token_revoked` or `token_rotated`.
    pub action: &'static str,
    /// The id of the token acted on.
    pub target: String,
    /// The id of the token it was rotated into (`token_rotated` only), so that what the
    /// successor does later traces back to the rotation.
    pub successor: Option<String>,
}

impl AdminAction {
    /// `action` (`token_created` or `token_revoked`) done to the token `target`.
    pub fn on(action: &'static str, target: String) -> Self {
        Self {
            action,
            target,
            successor: None,
        }
    }

    /// The token `target` rotated into the token `successor`.
    pub fn rotated(target: String, successor: String) -> Self {
        Self {
            action: "token_rotated",
            target,
            successor: Some(successor),
        }
    }
}

/// The most characters of a `User-Agent` a record keeps.
pub const USER_AGENT_MAX: usize = 200;

impl Exchange {
    /// A record begun now, for a request `request_id` from `peer` over `protocol`, with
    /// nothing else known yet: no method (the head may never have been read whole), path,
    /// caller or status, and the decision `client_aborted` until one is made.
    pub fn begin(request_id: http::HeaderValue, peer: IpAddr, protocol: &'static str) -> Self {
        Self {
            request_id,
            started: SystemTime::now(),
            started_at: Instant::now(),
            client_ip: None,
            peer,
            method: None,
            route: None,
            path: String::new(),
            query: None,
            caller: None,
            upstream: None,
            status: 0,
            decision: Decision::ClientAborted,
            bytes_in: Arc::default(),
            bytes_out: 0,
            to_head: Duration::ZERO,
            duration: Duration::ZERO,
            protocol,
            user_agent: None,
            admin: false,
            action: None,
            samples: None,
        }
    }
}

impl Exchange {
    /// The request's id, as text.
    pub fn request_id(&self) -> &str {
        // Request ids are checked (or made) as ASCII letters, digits and `._-`.
        self.request_id.to_str().unwrap_or_default()
    }
}

/// How a record names a request's protocol: `HTTP/1.1` or `HTTP/2` (`HTTP/1.0` when the
/// client spoke it), with `+tls` over TLS.
pub fn protocol(version: http::Version, tls: bool) -> &'static str {
    use http::Version;
    match (version, tls) {
        (Version::HTTP_2, false) => "HTTP/2",
        (Version::HTTP_2, true) => "HTTP/2+tls",
        (Version::HTTP_10, false) => "HTTP/1.0",
        (Version::HTTP_10, true) => "HTTP/1.0+tls",
        (_, false) => "HTTP/1.1",
        (_, true) => "HTTP/1.1+tls",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_snake_case_and_distinct() {
        let all = [
            Decision::Allowed,
            Decision::AuthMissing,
            Decision::AuthMalformed,
            Decision::AuthUnknown,
            Decision::AuthExpired,
            Decision::AuthRevoked,
            Decision::CapabilityUnknown,
            Decision::Scope,
            Decision::ClientBodyError,
            Decision::UpstreamConnect,
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(|d| d.as_str()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(
            codes
                .iter()
                .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }
}
