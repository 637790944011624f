//! RFC 9457 problem details: the only shape of error portcullis itself sends.
//!
//! A [`Problem`] names what went wrong in terms the client can act on. It never carries
//! an upstream's body, an OS error, an internal address or a stack trace: the `detail`
//! strings are written here or at the refusal site, never copied from an error.

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use super::body::{self, ResponseBody};
use super::exchange::Decision;

/// The media type of every error body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// Each refusal or failure the gateway can report, with a stable `type` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// The path has dot segments, NUL, backslash or bad percent-encoding.
    InvalidPath,
    /// A malformed request the gateway will not forward (e.g. a bad `Content-Length`).
    BadRequest,
    /// The request names a host the gateway does not serve (`allowed_hosts`).
    MisdirectedRequest,
    /// A known method that the gateway never forwards (`TRACE`, `CONNECT`).
    MethodNotAllowed,
    /// A method outside the standard set.
    MethodNotImplemented,
    /// A transfer coding other than `chunked`.
    TransferCodingNotImplemented,
    /// The body is larger than the configured limit.
    BodyTooLarge,
    /// The body is not in a media type the endpoint reads (the admin API reads JSON).
    UnsupportedMediaType,
    /// The request conflicts with the current state (a name taken, a token no longer live).
    Conflict,
    /// The request target is longer than the configured limit.
    UriTooLong,
    /// Too many header fields, or too many bytes of them.
    HeadersTooLarge,
    /// No valid credential was presented.
    Unauthorized,
    /// The credential lacks the scope the route needs for the method.
    InsufficientScope,
    /// The credential store cannot be reached, so a credential cannot be verified.
    StoreUnavailable,
    /// The client's address is not allowed on this route.
    IpDenied,
    /// The client's address is banned for repeated authentication failures.
    Banned,
    /// A rate limit of the route is exhausted.
    RateLimited,
    /// The caller has as many streams open as it may.
    TooManyStreams,
    /// The shared rate-limit backend is unreachable and configured to refuse.
    RateLimitUnavailable,
    /// The upstream has as many requests in flight as it may, and none finished in time.
    UpstreamBusy,
    /// The gateway will not call the upstream for a while (its circuit is open, or every
    /// key of its credential is benched); `Retry-After` says when to try again. The same
    /// type as [`Self::UpstreamUnavailable`], answered 503 rather than 502: nothing failed
    /// on this request, it was held back.
    UpstreamSuspended,
    /// A CORS preflight from an origin, or for a method or header, that is not allowed.
    CorsDenied,
    /// A WebSocket handshake on a route that does not allow WebSockets.
    UpgradeRefused,
    /// A WebSocket handshake from a browser origin that is not allowed.
    OriginRefused,
    /// No route matches the path.
    NotFound,
    /// The client did not send its request head in time.
    RequestTimeout,
    /// The upstream could not be reached or failed mid-exchange.
    UpstreamUnavailable,
    /// The upstream did not answer within the request timeout.
    UpstreamTimeout,
    /// The gateway or an upstream it depends on is not ready.
    NotReady,
    /// Audit strict mode could not make the request's admission event durable, so the
    /// request was not forwarded.
    AuditUnavailable,
    /// The gateway failed on its own (a bug): nothing the client can fix.
    Internal,
}

impl ProblemKind {
    /// The HTTP status this kind is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidPath | Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::MethodNotImplemented | Self::TransferCodingNotImplemented => {
                StatusCode::NOT_IMPLEMENTED
            }
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Conflict => StatusCode::CONFLICT,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::CorsDenied
            | Self::UpgradeRefused
            | Self::OriginRefused
            | Self::InsufficientScope
            | Self::IpDenied => StatusCode::FORBIDDEN,
            Self::Banned | Self::RateLimited | Self::TooManyStreams => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::RateLimitUnavailable | Self::UpstreamBusy | Self::UpstreamSuspended => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::NotReady | Self::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The last part of the `type` URI, e.g. `invalid-path`.
    pub fn slug(self) -> &'static str {
        match self {
            Self::InvalidPath => "invalid-path",
            Self::BadRequest => "bad-request",
            Self::MisdirectedRequest => "misdirected-request",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::MethodNotImplemented => "method-not-implemented",
            Self::TransferCodingNotImplemented => "transfer-coding-not-implemented",
            Self::BodyTooLarge => "body-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Conflict => "conflict",
            Self::UriTooLong => "uri-too-long",
            Self::HeadersTooLarge => "headers-too-large",
            Self::Unauthorized => "unauthorized",
            Self::CorsDenied => "cors-denied",
            Self::UpgradeRefused => "upgrade-refused",
            Self::OriginRefused => "origin-refused",
            Self::InsufficientScope => "insufficient-scope",
            Self::IpDenied => "ip-denied",
            Self::Banned => "banned",
            Self::RateLimited => "rate-limited",
            Self::TooManyStreams => "too-many-streams",
            Self::RateLimitUnavailable => "rate-limit-unavailable",
            Self::UpstreamBusy => "upstream-busy",
            Self::UpstreamSuspended => "upstream-unavailable",
            Self::StoreUnavailable => "store-unavailable",
            Self::NotFound => "not-found",
            Self::RequestTimeout => "request-timeout",
            Self::UpstreamUnavailable => "upstream-unavailable",
            Self::UpstreamTimeout => "upstream-timeout",
            Self::NotReady => "not-ready",
            Self::AuditUnavailable => "audit-unavailable",
            Self::Internal => "internal-error",
        }
    }

    /// A short, human-readable summary that does not change between occurrences.
    pub fn title(self) -> &'static str {
        match self {
            Self::InvalidPath => "The request path is not allowed",
            Self::BadRequest => "The request is malformed",
            Self::MisdirectedRequest => "This host is not served here",
            Self::MethodNotAllowed => "Method not allowed",
            Self::MethodNotImplemented => "Method not implemented",
            Self::TransferCodingNotImplemented => "Transfer coding not implemented",
            Self::BodyTooLarge => "Request body too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::Conflict => "Conflict with the current state",
            Self::UriTooLong => "Request URI too long",
            Self::HeadersTooLarge => "Request header fields too large",
            Self::Unauthorized => "Authentication required",
            Self::CorsDenied => "Cross-origin request not allowed",
            Self::UpgradeRefused => "WebSocket not allowed here",
            Self::OriginRefused => "Origin not allowed",
            Self::InsufficientScope => "Insufficient scope",
            Self::IpDenied => "Address not allowed",
            Self::Banned => "Address temporarily banned",
            Self::RateLimited => "Too many requests",
            Self::TooManyStreams => "Too many open streams",
            Self::RateLimitUnavailable => "Rate limiting unavailable",
            Self::UpstreamBusy => "Upstream busy",
            Self::UpstreamSuspended => "Upstream unavailable",
            Self::StoreUnavailable => "Credential store unavailable",
            Self::NotFound => "Not found",
            Self::RequestTimeout => "Request timeout",
            Self::UpstreamUnavailable => "Upstream unavailable",
            Self::UpstreamTimeout => "Upstream timeout",
            Self::NotReady => "Not ready",
            Self::AuditUnavailable => "Audit log unavailable",
            Self::Internal => "Internal error",
        }
    }

    /// The decision the record keeps for a problem of this kind, unless the stage that
    /// refused knew more ([`Problem::with_decision`]).
    pub fn decision(self) -> Decision {
        match self {
            Self::InvalidPath => Decision::PathRefused,
            Self::BadRequest
            | Self::TransferCodingNotImplemented
            | Self::UnsupportedMediaType
            | Self::Conflict => Decision::BadRequest,
            Self::MethodNotAllowed | Self::MethodNotImplemented => Decision::MethodRefused,
            Self::BodyTooLarge => Decision::BodyTooLarge,
            Self::UriTooLong => Decision::UriTooLong,
            Self::HeadersTooLarge => Decision::HeadersTooLarge,
            Self::Unauthorized => Decision::AuthUnknown,
            Self::InsufficientScope => Decision::Scope,
            Self::StoreUnavailable => Decision::StoreUnavailable,
            Self::IpDenied => Decision::IpDenied,
            Self::Banned => Decision::Banned,
            Self::MisdirectedRequest => Decision::HostRefused,
            Self::RateLimited => Decision::RateLimited,
            Self::TooManyStreams => Decision::StreamsExhausted,
            Self::RateLimitUnavailable => Decision::RateLimitUnavailable,
            Self::UpstreamBusy => Decision::UpstreamBusy,
            Self::UpstreamSuspended => Decision::UpstreamKeysExhausted,
            Self::CorsDenied => Decision::CorsRefused,
            Self::UpgradeRefused => Decision::UpgradeRefused,
            Self::OriginRefused => Decision::OriginRefused,
            Self::NotFound => Decision::NoRoute,
            Self::RequestTimeout => Decision::HeadTimeout,
            Self::UpstreamUnavailable => Decision::UpstreamConnect,
            Self::UpstreamTimeout => Decision::UpstreamTimeout,
            Self::NotReady => Decision::NotReady,
            Self::AuditUnavailable => Decision::AuditUnavailable,
            Self::Internal => Decision::Internal,
        }
    }

    /// The `type` member: a URN that names the problem without pointing anywhere.
    pub fn type_uri(self) -> String {
        format!("urn:portcullis:problem:{}", self.slug())
    }
}

/// The problem+json document as sent: the RFC 9457 members and the request's id. The admin
/// API's OpenAPI document describes it as `ProblemDetails`, from this very type.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = ProblemDetails)]
pub struct ProblemDocument<'a> {
    /// A URN naming the kind of problem, e.g. `urn:portcullis:problem:not-found`.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:portcullis:problem:[a-z-]+$")]
    pub type_uri: String,
    /// A summary that does not change between occurrences of the kind.
    pub title: &'static str,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong this time, when there is more to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<&'a str>,
    /// The request's id, also in `X-Request-ID`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub request_id: &'a str,
}

/// A refusal or failure, on its way to becoming a problem+json response.
#[derive(Debug, Clone)]
pub struct Problem {
    kind: ProblemKind,
    /// The precise decision, when the stage knew more than the kind says.
    decision: Option<Decision>,
    detail: Option<Cow<'static, str>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Problem {
    /// A problem of `kind` with no detail.
    pub fn new(kind: ProblemKind) -> Self {
        Self {
            kind,
            decision: None,
            detail: None,
            headers: Vec::new(),
        }
    }

    /// Adds a `detail` member: an explanation specific to this occurrence.
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a response header, such as `WWW-Authenticate` or `Allow`.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Adds `Retry-After` for `wait`, in whole seconds rounded up and at least 1, so that a
    /// client that waits as told is not refused again for the same reason.
    pub fn with_retry_after(self, wait: Duration) -> Self {
        let seconds = whole_seconds(wait).max(1);
        self.with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
    }

    /// Records `decision` rather than the kind's own (`auth_expired` rather than
    /// `auth_unknown`); the client sees the same problem either way.
    pub fn with_decision(mut self, decision: Decision) -> Self {
        self.decision = Some(decision);
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// What the record keeps about it.
    pub fn decision(&self) -> Decision {
        self.decision.unwrap_or(self.kind.decision())
    }

    /// The problem+json document for this problem.
    pub fn to_json(&self, request_id: &str) -> Vec<u8> {
        let document = ProblemDocument {
            type_uri: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.kind.status().as_u16(),
            detail: self.detail.as_deref(),
            request_id,
        };
        // Serialising a struct of strings and integers cannot fail.
        serde_json::to_vec(&document).unwrap_or_default()
    }

    /// The response that carries this problem.
    pub fn into_response(self, request_id: &HeaderValue) -> Response<ResponseBody> {
        let json = self.to_json(request_id.to_str().unwrap_or_default());
        let mut response = Response::new(body::full(json));
        *response.status_mut() = self.kind.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            headers.insert(name, value);
        }
        response
    }
}

/// `duration` in whole seconds, rounded up.
pub fn whole_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

impl From<ProblemKind> for Problem {
    fn from(kind: ProblemKind) -> Self {
        Self::new(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_rfc_9457_members_and_the_request_id() {
        let problem =
            Problem::new(ProblemKind::Unauthorized).with_detail("a bearer token is required");
        let value: serde_json::Value = serde_json::from_slice(&problem.to_json("req-1")).unwrap();
        assert_eq!(value["type"], "urn:portcullis:problem:unauthorized");
        assert_eq!(value["title"], "Authentication required");
        assert_eq!(value["status"], 401);
        assert_eq!(value["detail"], "a bearer token is required");
        assert_eq!(value["request_id"], "req-1");
    }

    #[test]
    fn detail_is_omitted_when_absent() {
        let json = Problem::new(ProblemKind::NotFound).to_json("x");
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(value.get("detail").is_none());
    }

    #[test]
    fn response_carries_status_media_type_and_extra_headers() {
        let response = Problem::new(ProblemKind::MethodNotAllowed)
            .with_header(header::ALLOW, HeaderValue::from_static("GET"))
            .into_response(&HeaderValue::from_static("r"));
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        assert_eq!(response.headers()[header::ALLOW], "GET");
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    }
}
