//! CORS: an allowlist of origins, with preflights answered by the gateway.
//!
//! Written here rather than taken from tower-http's `CorsLayer` because the gateway's
//! stages are plain values called in order by the pipeline's `Gateway`: preflights must be
//! answered before authentication, refused preflights must be problem+json like every
//! other refusal, and the headers must also land on responses the gateway makes itself.
//! The gateway owns CORS: any `Access-Control-*` header an upstream sends is dropped.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};

use crate::base::body::{self, ResponseBody};
use crate::base::problem::{Problem, ProblemKind};
use crate::hygiene::is_loopback_host;

/// CORS settings, as configured.
#[derive(Debug, Clone)]
pub struct CorsPolicy {
    /// Exact origins (`scheme://host[:port]`, lowercase, as [`normalize_origin`] makes
    /// them) allowed to call.
    pub allowed_origins: Vec<HeaderValue>,
    /// Methods a cross-origin request may use.
    pub allowed_methods: Vec<Method>,
    /// Request headers a cross-origin request may send.
    pub allowed_headers: Vec<HeaderName>,
    /// Response headers the browser may show to the calling script.
    pub expose_headers: Vec<HeaderName>,
    /// How long a browser may cache a preflight answer.
    pub max_age: Duration,
    /// Whether to send `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: bool,
}

/// The CORS stage, built once from a [`CorsPolicy`].
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<HeaderValue>,
    methods: Vec<Method>,
    allowed_headers: Vec<HeaderName>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: Option<HeaderValue>,
    max_age: HeaderValue,
    allow_credentials: bool,
}

impl Cors {
    /// Builds the stage; `None` when no origin is allowed, which turns CORS off.
    pub fn new(policy: &CorsPolicy) -> Option<Self> {
        if policy.allowed_origins.is_empty() {
            return None;
        }
        let origins = policy.allowed_origins.clone();
        let join = |items: Vec<&str>| HeaderValue::from_str(&items.join(", "));
        let allow_methods = join(policy.allowed_methods.iter().map(Method::as_str).collect())
            .unwrap_or(HeaderValue::from_static("GET"));
        let allow_headers = join(
            policy
                .allowed_headers
                .iter()
                .map(HeaderName::as_str)
                .collect(),
        )
        .unwrap_or(HeaderValue::from_static(""));
        let expose_headers = (!policy.expose_headers.is_empty())
            .then(|| {
                join(
                    policy
                        .expose_headers
                        .iter()
                        .map(HeaderName::as_str)
                        .collect(),
                )
                .ok()
            })
            .flatten();
        Some(Self {
            origins,
            methods: policy.allowed_methods.clone(),
            allowed_headers: policy.allowed_headers.clone(),
            allow_methods,
            allow_headers,
            expose_headers,
            max_age: HeaderValue::from(policy.max_age.as_secs()),
            allow_credentials: policy.allow_credentials,
        })
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.origins.iter().any(|allowed| allowed == origin)
    }

    /// Answers `request` if it is a CORS preflight: 204 with the allowed methods and
    /// headers, or 403 when the origin, method or a requested header is not allowed.
    /// `None` for any other request.
    pub fn preflight<B>(
        &self,
        request: &Request<B>,
    ) -> Option<Result<Response<ResponseBody>, Problem>> {
        let headers = request.headers();
        if request.method() != Method::OPTIONS {
            return None;
        }
        let origin = headers.get(header::ORIGIN)?;
        let requested_method = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD)?;
        Some(self.answer_preflight(origin, requested_method, headers))
    }

    fn answer_preflight(
        &self,
        origin: &HeaderValue,
        requested_method: &HeaderValue,
        headers: &HeaderMap,
    ) -> Result<Response<ResponseBody>, Problem> {
        let denied =
            |detail: &'static str| Problem::new(ProblemKind::CorsDenied).with_detail(detail);
        if !self.allows(origin) {
            return Err(denied("the origin is not allowed"));
        }
        let method_allowed = Method::from_bytes(requested_method.as_bytes())
            .is_ok_and(|m| self.methods.contains(&m));
        if !method_allowed {
            return Err(denied("the requested method is not allowed"));
        }
        for value in headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            let Ok(list) = value.to_str() else {
                return Err(denied("a requested header is not allowed"));
            };
            let all_allowed = list
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .all(|name| {
                    self.allowed_headers
                        .iter()
                        .any(|h| h.as_str().eq_ignore_ascii_case(name))
                });
            if !all_allowed {
                return Err(denied("a requested header is not allowed"));
            }
        }
        let mut response = Response::new(body::empty());
        *response.status_mut() = StatusCode::NO_CONTENT;
        let out = response.headers_mut();
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            self.allow_methods.clone(),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            self.allow_headers.clone(),
        );
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
        Ok(response)
    }

    /// Adds the CORS response headers for a request from `origin` (any response,
    /// preflight or not); an origin that is not allowed gets none of them.
    pub fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        // Caches must not serve one origin's answer to another.
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(expose) = &self.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }
}

/// Removes every `Access-Control-*` header (those of the Fetch standard and any other,
/// `Access-Control-Allow-Private-Network` included), so only the gateway's policy reaches
/// clients.
pub fn strip_upstream_cors(headers: &mut HeaderMap) {
    let upstreams: Vec<http::HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in upstreams {
        headers.remove(name);
    }
}

/// The browser origins a route admits on requests that carry `Origin`, against cross-site
/// use from a page the user happens to visit (WebSocket hijacking, DNS rebinding): a
/// request without `Origin` is not from a browser page, and is let through; `null` (a
/// sandboxed or local page) is refused.
#[derive(Debug, Clone, Default)]
pub struct OriginAllowlist {
    /// Exact origins, lowercase.
    origins: Vec<HeaderValue>,
}

impl OriginAllowlist {
    /// Admits `origins` (exact, lowercase, as [`normalize_origin`] makes them).
    pub fn new(origins: Vec<HeaderValue>) -> Self {
        Self { origins }
    }

    /// Refuses, 403 `origin-refused`, a request with an `Origin` not listed, unless it is
    /// the very origin of a request to a loopback name (`host`, the one the request names):
    /// a page the gateway itself serves on `localhost`. A rebound page names its own host,
    /// never a loopback one, so this lets nothing of DNS rebinding through.
    pub fn check(&self, headers: &HeaderMap, host: Option<&str>) -> Result<(), Problem> {
        let allowed = headers.get_all(header::ORIGIN).iter().all(|origin| {
            let exact = origin.to_str().ok().and_then(normalize_origin);
            exact.is_some_and(|exact| {
                self.origins
                    .iter()
                    .any(|listed| listed.as_bytes() == exact.as_bytes())
                    || host.is_some_and(|host| is_loopback_origin_of(&exact, host))
            })
        });
        if allowed {
            Ok(())
        } else {
            Err(Problem::new(ProblemKind::OriginRefused)
                .with_detail("requests from this origin are not allowed here"))
        }
    }
}

/// Whether `origin` (normalized) is `http(s)://host` for a `host[:port]` whose name is a
/// loopback one.
fn is_loopback_origin_of(origin: &str, host: &str) -> bool {
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    is_loopback_host(host.as_bytes())
        && authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host))
}

/// `origin` as the header value an allowlist holds ([`normalize_origin`]'s form), or `None`
/// when it is not an exact http(s) origin.
pub fn exact_origin(origin: &str) -> Option<HeaderValue> {
    normalize_origin(origin).and_then(|exact| HeaderValue::from_str(&exact).ok())
}

/// `scheme://host[:port]` in lowercase, or `None` when `origin` is not an exact http(s)
/// origin as a browser sends it (a wildcard, `null`, a path, userinfo, a missing host; a
/// port that browsers leave out or write otherwise, `:443` for https, `:080`: RFC 6454
/// §6.2, no `Origin` header ever holds it, so listed it would match nothing).
pub fn normalize_origin(origin: &str) -> Option<String> {
    let lower = origin.trim().to_ascii_lowercase();
    let (rest, default_port) = match lower.strip_prefix("https://") {
        Some(rest) => (rest, 443),
        None => (lower.strip_prefix("http://")?, 80),
    };
    let authority: http::uri::Authority = rest.parse().ok()?;
    let port = authority.as_str().get(authority.host().len() + 1..);
    let port_as_sent = port.is_none_or(|port| {
        !port.starts_with('0') && authority.port_u16().is_some_and(|n| n != default_port)
    });
    let exact = !rest.contains(['@', '*']) && !authority.host().is_empty() && port_as_sent;
    exact.then_some(lower)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors() -> Cors {
        Cors::new(&CorsPolicy {
            allowed_origins: vec![
                HeaderValue::from_static("https://a.example"),
                HeaderValue::from_static("https://b.example:8443"),
            ],
            allowed_methods: vec![Method::GET, Method::POST],
            allowed_headers: vec![header::AUTHORIZATION, header::CONTENT_TYPE],
            expose_headers: vec![HeaderName::from_static("x-request-id")],
            max_age: Duration::from_secs(600),
            allow_credentials: false,
        })
        .unwrap()
    }

    fn preflight(origin: &str, method: &str, headers: Option<&str>) -> Request<()> {
        let mut builder = Request::builder()
            .method(Method::OPTIONS)
            .uri("/x")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, method);
        if let Some(h) = headers {
            builder = builder.header(header::ACCESS_CONTROL_REQUEST_HEADERS, h);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn off_when_no_origin_is_listed() {
        let policy = CorsPolicy {
            allowed_origins: vec![],
            allowed_methods: vec![],
            allowed_headers: vec![],
            expose_headers: vec![],
            max_age: Duration::ZERO,
            allow_credentials: false,
        };
        assert!(Cors::new(&policy).is_none());
    }

    #[test]
    fn allowed_preflight_is_answered() {
        let answer = cors()
            .preflight(&preflight(
                "https://a.example",
                "POST",
                Some("content-type, Authorization"),
            ))
            .unwrap()
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            answer.headers()[header::ACCESS_CONTROL_ALLOW_METHODS],
            "GET, POST"
        );
        assert_eq!(answer.headers()[header::ACCESS_CONTROL_MAX_AGE], "600");
    }

    #[test]
    fn disallowed_preflights_are_refused() {
        let c = cors();
        for req in [
            preflight("https://evil.example", "GET", None),
            preflight("https://a.example", "DELETE", None),
            preflight("https://a.example", "GET", Some("x-secret")),
        ] {
            let problem = c.preflight(&req).unwrap().unwrap_err();
            assert_eq!(problem.kind(), ProblemKind::CorsDenied);
        }
    }

    #[test]
    fn non_preflights_pass_through() {
        let get = Request::builder()
            .uri("/")
            .header(header::ORIGIN, "https://a.example")
            .body(())
            .unwrap();
        assert!(cors().preflight(&get).is_none());
        let bare_options = Request::builder()
            .method(Method::OPTIONS)
            .uri("/")
            .body(())
            .unwrap();
        assert!(cors().preflight(&bare_options).is_none());
    }

    #[test]
    fn allow_origin_only_for_listed_origins() {
        let c = cors();
        let mut allowed = HeaderMap::new();
        c.apply(
            Some(&HeaderValue::from_static("https://b.example:8443")),
            &mut allowed,
        );
        assert_eq!(
            allowed[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://b.example:8443"
        );
        assert_eq!(
            allowed[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "x-request-id"
        );
        assert_eq!(allowed[header::VARY], "Origin");

        let mut denied = HeaderMap::new();
        c.apply(
            Some(&HeaderValue::from_static("https://a.example.evil")),
            &mut denied,
        );
        assert!(denied.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }

    #[test]
    fn origin_normalization() {
        assert_eq!(
            normalize_origin("https://A.example"),
            Some("https://a.example".into())
        );
        assert_eq!(
            normalize_origin("http://localhost:3000"),
            Some("http://localhost:3000".into())
        );
        assert_eq!(
            normalize_origin("http://[::1]:3000"),
            Some("http://[::1]:3000".into())
        );
        // Another scheme's default port is a port like any other.
        assert_eq!(
            normalize_origin("http://a.example:443"),
            Some("http://a.example:443".into())
        );
        for bad in [
            "*",
            "null",
            "https://*.example",
            "https://a.example/",
            "ftp://a",
            "https://",
            "https://u@a",
            "https://a:x",
            "https://a.example:443",
            "http://a.example:80",
            "http://a.example:080",
            "http://a.example:0",
            "http://a.example:",
        ] {
            assert_eq!(normalize_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_listed_origins_or_none_pass_the_origin_check() {
        let origins = OriginAllowlist::new(vec![HeaderValue::from_static("https://app.example")]);
        let with = |origin: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            origins.check(&headers, Some("gw.example"))
        };
        assert!(origins.check(&HeaderMap::new(), None).is_ok());
        assert!(with("https://app.example").is_ok());
        assert!(with("HTTPS://App.Example").is_ok());
        for refused in [
            "https://evil.example",
            "null",
            "https://app.example.evil",
            "http://app.example",
        ] {
            let problem = with(refused).unwrap_err();
            assert_eq!(problem.kind(), ProblemKind::OriginRefused, "{refused}");
        }
    }

    #[test]
    fn a_loopback_host_admits_its_own_origin_only() {
        let origins = OriginAllowlist::default();
        let check = |origin: &str, host: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
            origins.check(&headers, Some(host)).is_ok()
        };
        assert!(check("http://localhost:8080", "localhost:8080"));
        assert!(check("http://127.0.0.1:8080", "127.0.0.1:8080"));
        assert!(check("http://[::1]:8080", "[::1]:8080"));
        assert!(
            !check("http://localhost:3000", "localhost:8080"),
            "another port"
        );
        assert!(
            !check("http://evil.example:8080", "evil.example:8080"),
            "rebound"
        );
        assert!(!check("http://localhost:8080", "evil.example:8080"));
    }
}
