//! Routes and routing policy: which route serves a path (the longest path prefix wins, on
//! the path as the upstream will understand it, folded by `fold` as its framework would),
//! what the route asks of a caller (authentication, scopes, address rules, rate limits),
//! and how its upstream's `Location` answers map back to the public path.

mod fold;
mod location;

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, header};

use crate::cors::OriginAllowlist;
use crate::headers::path_has_prefix;
use crate::hygiene::{PathError, check_folded_path};
use crate::ip_rules::IpRules;
use crate::ratelimit::RouteLimits;
use crate::streams::StreamLimits;
use crate::upstream::{HeaderRules, Upstream};
use crate::websocket::WebSocketPolicy;
use location::PathMap;

/// The scope each method needs on a route: `read` for GET, HEAD and OPTIONS and `write`
/// for the rest, unless the route names another for a method.
#[derive(Debug, Clone, Default)]
pub struct RouteScopes {
    by_method: Vec<(Method, String)>,
}

impl RouteScopes {
    /// The defaults, with `overrides` taking precedence for their methods.
    pub fn new(overrides: Vec<(Method, String)>) -> Self {
        Self {
            by_method: overrides,
        }
    }

    /// The scope a request with `method` needs; HEAD needs what GET needs, since
    /// servers answer HEAD with the GET handler.
    pub fn required(&self, method: &Method) -> &str {
        let lookup = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        if let Some((_, scope)) = self.by_method.iter().find(|(m, _)| m == lookup) {
            return scope;
        }
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            "read"
        } else {
            "write"
        }
    }
}

pub use crate::config::RouteAuth;

/// Headers a route sets on every response it gives, replacing the upstream's and the
/// security set's values.
#[derive(Debug, Clone, Default)]
pub struct ResponseRules {
    /// `Cache-Control`, e.g. `private, no-store` where the URL itself is a secret.
    pub cache_control: Option<HeaderValue>,
    /// `Referrer-Policy`, e.g. `no-referrer` where the URL itself is a secret.
    pub referrer_policy: Option<HeaderValue>,
}

impl ResponseRules {
    /// Sets the route's headers on a response.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if let Some(value) = &self.cache_control {
            headers.insert(header::CACHE_CONTROL, value.clone());
        }
        if let Some(value) = &self.referrer_policy {
            headers.insert(header::REFERRER_POLICY, value.clone());
        }
    }
}

/// A path prefix served by one upstream.
#[derive(Debug, Clone)]
pub struct Route {
    prefix: String,
    /// The prefix as records name the route (`/` for the root route), shared with every
    /// record rather than copied into each.
    name: Arc<str>,
    upstream: Arc<Upstream>,
    strip_prefix: bool,
    auth: RouteAuth,
    scopes: RouteScopes,
    ip_rules: IpRules,
    rate_limits: Option<Arc<RouteLimits>>,
    header_rules: HeaderRules,
    response_rules: ResponseRules,
    /// Methods whose admission event must be durable before the request is forwarded.
    strict_methods: Vec<http::Method>,
    /// How many bytes of each body the audit log keeps, if it keeps them.
    body_sample: Option<usize>,
    /// Its WebSockets, when it lets them through.
    websocket: Option<WebSocketPolicy>,
    /// The origins every request with an `Origin` must come from, when it checks them.
    origin_check: Option<OriginAllowlist>,
    /// The limits its open streams are held to.
    stream_limits: StreamLimits,
}

impl Route {
    /// Paths at or below `prefix` (on a segment boundary) go to `upstream`; with
    /// `strip_prefix` the prefix is removed from the path sent upstream.
    pub fn new(prefix: &str, upstream: Arc<Upstream>, strip_prefix: bool) -> Self {
        let prefix = prefix.trim_end_matches('/');
        Self {
            prefix: prefix.to_owned(),
            name: Arc::from(if prefix.is_empty() { "/" } else { prefix }),
            upstream,
            strip_prefix,
            auth: RouteAuth::default(),
            scopes: RouteScopes::default(),
            ip_rules: IpRules::default(),
            rate_limits: None,
            header_rules: HeaderRules::default(),
            response_rules: ResponseRules::default(),
            strict_methods: Vec::new(),
            body_sample: None,
            websocket: None,
            origin_check: None,
            stream_limits: StreamLimits {
                idle_timeout: std::time::Duration::from_secs(5 * 60),
                max_lifetime: std::time::Duration::from_secs(24 * 60 * 60),
                max_message_bytes: 1024 * 1024,
            },
        }
    }

    /// The same route, letting WebSockets through under `policy`, if any.
    pub fn with_websocket(mut self, policy: Option<WebSocketPolicy>) -> Self {
        self.websocket = policy;
        self
    }

    /// The same route, its open streams held to `limits`.
    pub fn with_stream_limits(mut self, limits: StreamLimits) -> Self {
        self.stream_limits = limits;
        self
    }

    /// The limits its open streams are held to.
    pub fn stream_limits(&self) -> StreamLimits {
        self.stream_limits
    }

    /// The same route, refusing requests from browser origins `origins` does not list.
    pub fn with_origin_check(mut self, origins: Option<OriginAllowlist>) -> Self {
        self.origin_check = origins;
        self
    }

    /// The origins a request must come from, if it carries `Origin`: the route's own
    /// check, or for a WebSocket `handshake` its WebSockets' origins.
    pub fn origins_checked(&self, handshake: bool) -> Option<&OriginAllowlist> {
        self.origin_check.as_ref().or(self
            .websocket
            .as_ref()
            .filter(|_| handshake)
            .map(WebSocketPolicy::origins))
    }

    /// Its WebSockets' policy, when it lets WebSockets through.
    pub fn websocket(&self) -> Option<&WebSocketPolicy> {
        self.websocket.as_ref()
    }

    /// The same route, its bodies' first `limit` bytes kept by the audit log, if any.
    pub fn with_body_sample(mut self, limit: Option<usize>) -> Self {
        self.body_sample = limit;
        self
    }

    /// How many bytes of each body the audit log keeps, if it keeps them.
    pub fn body_sample(&self) -> Option<usize> {
        self.body_sample
    }

    /// The same route, holding requests with one of `methods` until their admission event
    /// is durable (audit strict mode).
    pub fn with_strict_methods(mut self, methods: Vec<http::Method>) -> Self {
        self.strict_methods = methods;
        self
    }

    /// Whether a `method` request must be durably audited before it is forwarded.
    pub fn audits_before_forwarding(&self, method: &http::Method) -> bool {
        self.strict_methods.contains(method)
    }

    /// The same route, rewriting request headers by `rules`.
    pub fn with_header_rules(mut self, rules: HeaderRules) -> Self {
        self.header_rules = rules;
        self
    }

    /// How this route's request headers are rewritten for the upstream.
    pub fn header_rules(&self) -> HeaderRules {
        self.header_rules
    }

    /// The same route, setting `rules` on its responses.
    pub fn with_response_rules(mut self, rules: ResponseRules) -> Self {
        self.response_rules = rules;
        self
    }

    /// The headers this route sets on its responses.
    pub fn response_rules(&self) -> &ResponseRules {
        &self.response_rules
    }

    /// The same route, limited by `limits` (shared by every worker's copy of the route).
    pub fn with_rate_limits(mut self, limits: Option<Arc<RouteLimits>>) -> Self {
        self.rate_limits = limits;
        self
    }

    /// The route's rate limits, if it has any.
    pub fn rate_limits(&self) -> Option<&Arc<RouteLimits>> {
        self.rate_limits.as_ref()
    }

    /// The same route, authenticated by `auth`.
    pub fn with_auth(mut self, auth: RouteAuth) -> Self {
        self.auth = auth;
        self
    }

    /// How callers of this route authenticate.
    pub fn auth(&self) -> RouteAuth {
        self.auth
    }

    /// On a capability route, the secret segment right below the prefix in `path`.
    pub fn capability_secret<'a>(&self, path: &'a str) -> Option<&'a str> {
        self.capability_secret_at(path).map(|(_, secret)| secret)
    }

    /// The configured prefix (`/` for the root route), as records name the route.
    pub fn prefix(&self) -> &Arc<str> {
        &self.name
    }

    /// `path` as records may show it: on a capability route, the secret segment masked.
    pub fn masked_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        match self.capability_secret_at(path) {
            Some((start, secret)) if self.auth == RouteAuth::Capability => {
                let end = start + secret.len();
                std::borrow::Cow::Owned(format!("{}***{}", &path[..start], &path[end..]))
            }
            _ => std::borrow::Cow::Borrowed(path),
        }
    }

    /// Where the segment below the prefix starts in `path`, and that segment.
    fn capability_secret_at<'a>(&self, path: &'a str) -> Option<(usize, &'a str)> {
        let below = path.get(self.prefix.len()..)?.strip_prefix('/')?;
        let secret = below.split('/').next()?;
        (!secret.is_empty()).then_some((self.prefix.len() + 1, secret))
    }

    /// The same route, with `rules` deciding which addresses may use it.
    pub fn with_ip_rules(mut self, rules: IpRules) -> Self {
        self.ip_rules = rules;
        self
    }

    /// Which addresses may use this route.
    pub fn ip_rules(&self) -> &IpRules {
        &self.ip_rules
    }

    /// The same route, with `scopes` deciding what each method needs.
    pub fn with_scopes(mut self, scopes: RouteScopes) -> Self {
        self.scopes = scopes;
        self
    }

    /// The scope a request with `method` needs on this route.
    pub fn required_scope(&self, method: &Method) -> &str {
        self.scopes.required(method)
    }

    /// The upstream that serves this route.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Where a request for `uri` on this route goes: without the capability segment on a
    /// capability route, and without the prefix when the route strips it. A prefix kept is
    /// kept as the client spelled it (`/ADMIN` for the route `/admin`): paths are not
    /// rewritten.
    pub fn upstream_uri(&self, uri: &Uri) -> Uri {
        let path = uri.path();
        let spelled = path.get(..self.prefix.len()).unwrap_or(&self.prefix);
        let mut below = path.get(self.prefix.len()..).unwrap_or_default();
        if self.auth == RouteAuth::Capability {
            let after_secret = below
                .strip_prefix('/')
                .and_then(|rest| rest.find('/').map(|i| &rest[i..]));
            below = after_secret.unwrap_or_default();
        }
        if self.strip_prefix {
            self.upstream.uri_for(below, uri.query())
        } else {
            self.upstream
                .uri_for(&format!("{spelled}{below}"), uri.query())
        }
    }

    /// Rewrites the upstream's URLs in its response headers that point at the upstream (its
    /// address, or its base path) to the public path they stand for, below the prefix the
    /// client used in `client_path`: `Location` and `Content-Location`, `Refresh`'s URL,
    /// `Link`'s targets, and `Set-Cookie`'s `Path` (its `Domain` left out when it names the
    /// upstream's host).
    pub fn rewrite_locations(&self, headers: &mut HeaderMap, client_path: &str) {
        // Most responses carry none of them: one pass over the names, not five lookups.
        let carries_urls = headers.keys().any(|name| {
            [
                header::LOCATION,
                header::CONTENT_LOCATION,
                header::LINK,
                header::SET_COOKIE,
            ]
            .contains(name)
                || name.as_str() == "refresh"
        });
        if !carries_urls {
            return;
        }
        let map = PathMap {
            base: self.upstream.base_path(),
            kept_prefix: if self.strip_prefix { "" } else { &self.prefix },
            public_base: self.public_base(client_path),
        };
        let origin = |authority: &str| self.upstream.is_origin(authority);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            rewrite_each(headers, name, |value| location::rewrite(value, map, origin));
        }
        rewrite_each(headers, HeaderName::from_static("refresh"), |value| {
            location::rewrite_refresh(value, map, origin)
        });
        rewrite_each(headers, header::LINK, |value| {
            location::rewrite_link(value, map, origin)
        });
        rewrite_each(headers, header::SET_COOKIE, |value| {
            location::rewrite_set_cookie(value, map, origin)
        });
    }

    /// The prefix as the client spelled it in `path`, with the capability segment on a
    /// capability route.
    fn public_base<'a>(&self, path: &'a str) -> &'a str {
        let mut end = self.prefix.len();
        if self.auth == RouteAuth::Capability
            && let Some(secret) = self.capability_secret(path)
        {
            end += 1 + secret.len();
        }
        path.get(..end).unwrap_or(path)
    }
}

/// Every route, searched longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// A router over `routes`, in any order.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Self { routes }
    }

    /// The route whose prefix is the longest that covers `path`, letters compared in
    /// either ASCII case. A path that a Unicode-aware upstream would fold into another
    /// route's prefix (`/adm%C4%B1n` for `/admin`, see the `fold` module) is refused: the gateway
    /// would apply one route's rules while the upstream serves another's.
    ///
    /// So is a path that upstreams commonly read as another route's: its escapes decoded
    /// once or twice (`/v1/reports%3Arun` for `/v1/reports:run`: RFC 3986 §2.2 leaves
    /// escaped reserved characters to the application, and most decode them before they
    /// route), or its segments trimmed of surrounding whitespace (Spring's `trimTokens`:
    /// `/admin%20`, `/admin%C2%A0`) and of trailing dots (IIS: `/admin.`), or cut at a
    /// decoded `?` or `#` (`/admin%3Fx=1`: a proxy that decodes the path and sends it on,
    /// as nginx's `proxy_pass ...$uri` does, makes it `/admin` and a query).
    pub fn find(&self, path: &str) -> Result<Option<&Route>, PathError> {
        let route = self.longest_match(path);
        // Raw whitespace never gets here (hygiene refuses it): only escapes and trailing
        // dots can make another reading.
        if path.contains('%') || path.split('/').any(|segment| segment.ends_with('.')) {
            let once = percent_decoded(path);
            let twice = percent_decoded(&once);
            for decoded in [&once, &twice] {
                let cut = before_query(decoded);
                for read in [decoded, cut] {
                    for read in [read, &trimmed_segments(read)] {
                        if self.longest_match(read).map(|r| &r.prefix) != route.map(|r| &r.prefix) {
                            return Err(PathError::ReadsAsAnotherRoute);
                        }
                    }
                }
            }
        }
        if fold::has_encoded_non_ascii(path) {
            for folded in fold::ascii_folded_forms(path) {
                check_folded_path(&folded)?;
                let other = self.longest_match(&folded);
                if other.map(|r| &r.prefix) != route.map(|r| &r.prefix) {
                    return Err(PathError::FoldsIntoAnotherRoute);
                }
            }
        }
        Ok(route)
    }

    /// `path` as records may show it: with the capability segment masked when the route
    /// that covers it takes capabilities.
    pub fn masked_path<'a>(&self, path: &'a str) -> std::borrow::Cow<'a, str> {
        match self.longest_match(path) {
            Some(route) => route.masked_path(path),
            None => std::borrow::Cow::Borrowed(path),
        }
    }

    fn longest_match(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| path_has_prefix(path, &route.prefix))
    }

    /// Every upstream some route sends to, each once.
    pub fn upstreams(&self) -> Vec<Arc<Upstream>> {
        let mut upstreams: Vec<Arc<Upstream>> = Vec::new();
        for route in &self.routes {
            if !upstreams.iter().any(|u| Arc::ptr_eq(u, &route.upstream)) {
                upstreams.push(route.upstream.clone());
            }
        }
        upstreams
    }
}

/// Replaces each value of `name` in `headers` that `rewrite` changes. Values are read as
/// UTF-8 (lossily), not as visible ASCII only: one with raw non-ASCII bytes must not slip
/// past the rewrite.
fn rewrite_each(
    headers: &mut HeaderMap,
    name: HeaderName,
    rewrite: impl Fn(&str) -> Option<String>,
) {
    if !headers.contains_key(&name) {
        return;
    }
    let values: Vec<HeaderValue> = headers
        .get_all(&name)
        .iter()
        .map(|value| {
            rewrite(&String::from_utf8_lossy(value.as_bytes()))
                .and_then(|rewritten| HeaderValue::try_from(rewritten).ok())
                .unwrap_or_else(|| value.clone())
        })
        .collect();
    headers.remove(&name);
    for value in values {
        headers.append(name.clone(), value);
    }
}

/// `path` up to its first `?` or `#`: what a server reads as the path when a decoded path
/// is sent on as a request target.
fn before_query(path: &str) -> &str {
    path.find(['?', '#']).map_or(path, |end| &path[..end])
}

/// `path` with every escape decoded (bad ones kept), as text.
fn percent_decoded(path: &str) -> String {
    percent_encoding::percent_decode_str(path)
        .decode_utf8_lossy()
        .into_owned()
}

/// `path` with each segment trimmed of surrounding whitespace (Unicode's, so a no-break
/// space too) and of trailing dots.
fn trimmed_segments(path: &str) -> String {
    let segments: Vec<&str> = path
        .split('/')
        .map(|segment| {
            segment
                .trim_start()
                .trim_end_matches(|c: char| c == '.' || c.is_whitespace())
        })
        .collect();
    segments.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Resilience, Transport, UpstreamShared, UpstreamTarget, UpstreamTls};
    use std::time::Duration;

    fn transport() -> Transport {
        Transport::new(
            Duration::from_secs(1),
            crate::config::HttpVersion::default(),
            &UpstreamTls::default(),
        )
        .unwrap()
    }

    fn upstream(name: &str) -> Arc<Upstream> {
        let target = UpstreamTarget::parse(name, "http://127.0.0.1:1").unwrap();
        Upstream::new(
            &target,
            &transport(),
            Duration::from_secs(1),
            UpstreamShared::new(name, None, Resilience::default(), None, None),
        )
    }

    #[tokio::test]
    async fn longest_prefix_wins_on_segment_boundaries() {
        let router = Router::new(vec![
            Route::new("/", upstream("root"), false),
            Route::new("/api", upstream("api"), false),
            Route::new("/api/admin/", upstream("admin"), false),
        ]);
        let name = |path| {
            router
                .find(path)
                .unwrap()
                .map(|r| r.upstream().name().to_owned())
        };
        assert_eq!(name("/api/admin/users").as_deref(), Some("admin"));
        assert_eq!(name("/api/admin").as_deref(), Some("admin"));
        assert_eq!(name("/api/x").as_deref(), Some("api"));
        assert_eq!(name("/apix").as_deref(), Some("root"));
        assert_eq!(router.upstreams().len(), 3);
    }

    #[test]
    fn scopes_default_to_read_and_write_with_overrides() {
        let scopes = RouteScopes::new(vec![(Method::POST, "reports:run".into())]);
        assert_eq!(scopes.required(&Method::GET), "read");
        assert_eq!(scopes.required(&Method::OPTIONS), "read");
        assert_eq!(scopes.required(&Method::DELETE), "write");
        assert_eq!(scopes.required(&Method::POST), "reports:run");
        let guarded = RouteScopes::new(vec![(Method::GET, "admin".into())]);
        assert_eq!(
            guarded.required(&Method::HEAD),
            "admin",
            "HEAD runs the GET handler"
        );
    }

    #[tokio::test]
    async fn capability_segments_are_found_and_never_forwarded() {
        let route = Route::new("/outline", upstream("o"), true).with_auth(RouteAuth::Capability);
        let uri: Uri = "/outline/pcl_secret/access-keys?x=1".parse().unwrap();
        assert_eq!(route.capability_secret(uri.path()), Some("pcl_secret"));
        assert_eq!(route.upstream_uri(&uri), "/access-keys?x=1");
        let bare: Uri = "/outline/pcl_secret".parse().unwrap();
        assert_eq!(route.upstream_uri(&bare), "/");
        assert_eq!(route.capability_secret("/outline"), None);
        assert_eq!(route.capability_secret("/outline/"), None);

        let kept = Route::new("/outline", upstream("o"), false).with_auth(RouteAuth::Capability);
        assert_eq!(kept.upstream_uri(&uri), "/outline/access-keys?x=1");
    }

    #[tokio::test]
    async fn no_route_without_a_covering_prefix() {
        let router = Router::new(vec![Route::new("/api", upstream("api"), false)]);
        assert!(router.find("/other").unwrap().is_none());
    }

    #[tokio::test]
    async fn paths_that_fold_into_another_route_are_refused() {
        let router = Router::new(vec![
            Route::new("/", upstream("open"), false),
            Route::new("/admin", upstream("guarded"), false),
        ]);
        for path in [
            "/adm%C4%B1n/users",
            "/%EF%BD%81dmin",
            "/ADM%25C4%25B1N/users",
        ] {
            assert_eq!(
                router.find(path).unwrap_err(),
                PathError::FoldsIntoAnotherRoute,
                "{path}"
            );
        }
        // Fullwidth punctuation folds to what hygiene refuses in the path itself.
        for (path, error) in [
            ("/x/%EF%BC%8E%EF%BC%8E/admin", PathError::DotSegment),
            ("/admin%EF%BC%9Bx", PathError::PathParameter),
            ("/x%EF%BC%BCy", PathError::Backslash),
            ("/%EF%BC%8561dmin", PathError::EncodedUnreserved),
        ] {
            assert_eq!(router.find(path).unwrap_err(), error, "{path}");
        }
        let within = router.find("/admin/caf%C3%A9").unwrap().unwrap();
        assert_eq!(&**within.upstream().name(), "guarded");
        let elsewhere = router.find("/caf%C3%A9/%C4%B1").unwrap().unwrap();
        assert_eq!(
            &**elsewhere.upstream().name(),
            "open",
            "folding that reaches no other route is fine"
        );
    }

    /// RFC 3986 §2.2: an escaped reserved character is left to the application, and most
    /// decode it before routing.
    #[tokio::test]
    async fn paths_that_upstreams_read_as_another_route_are_refused() {
        let router = Router::new(vec![
            Route::new("/", upstream("open"), false),
            Route::new("/v1/reports:run", upstream("guarded"), false),
        ]);
        for path in [
            "/v1/reports%3Arun",
            "/v1/reports%3arun/x",
            "/v1/reports%253Arun",
            "/v1%2Freports:run",
            "/v1/reports:run%20",
            "/v1/reports:run%09/x",
            "/v1/reports:run%C2%A0",
            "/v1/reports:run.",
            "/v1/reports:run.%20./x",
            "/v1/reports:run%3Fdelete=1",
            "/v1/reports:run%23",
            "/v1/reports:run%253F",
            "/v1/reports%3Arun%3F",
            "/v1/reports:run%20%3Fx",
        ] {
            assert_eq!(
                router.find(path).unwrap_err(),
                PathError::ReadsAsAnotherRoute,
                "{path}"
            );
        }
        let within = router.find("/v1/reports:run/a%3Ab").unwrap().unwrap();
        assert_eq!(&**within.upstream().name(), "guarded");
        let within = router
            .find("/v1/reports:run/what%3F%23.txt")
            .unwrap()
            .unwrap();
        assert_eq!(&**within.upstream().name(), "guarded");
        for elsewhere in [
            "/v1/reports%3Alist",
            "/v1/reports:run.json",
            "/v1/a.b/c%20d",
            "/v1/what%3F.txt",
            "/v1/reports:runs%3F",
        ] {
            let route = router.find(elsewhere).unwrap().unwrap();
            assert_eq!(
                &**route.upstream().name(),
                "open",
                "{elsewhere}: what reaches no other route is fine"
            );
        }
    }

    #[tokio::test]
    async fn locations_map_back_to_the_public_prefix() {
        let target = UpstreamTarget::parse("o", "http://10.0.0.5:9000/SECRET").unwrap();
        let shared = UpstreamShared::new("o", None, Resilience::default(), None, None);
        let based = Upstream::new(&target, &transport(), Duration::from_secs(1), shared);
        let route = Route::new("/outline", based, true).with_auth(RouteAuth::Capability);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_static("http://10.0.0.5:9000/SECRET/access-keys/7"),
        );
        headers.insert(
            header::CONTENT_LOCATION,
            HeaderValue::from_static("/SECRET/access-keys"),
        );
        route.rewrite_locations(&mut headers, "/Outline/pcl_cap/access-keys");
        assert_eq!(headers[header::LOCATION], "/Outline/pcl_cap/access-keys/7");
        assert_eq!(
            headers[header::CONTENT_LOCATION],
            "/Outline/pcl_cap/access-keys"
        );
    }

    #[tokio::test]
    async fn strips_the_prefix_when_asked() {
        let route = Route::new("/inventory", upstream("inv"), true);
        let uri: Uri = "/inventory/v1/positions?x=1".parse().unwrap();
        assert_eq!(route.upstream_uri(&uri), "/v1/positions?x=1");
        let kept = Route::new("/inventory", upstream("inv"), false);
        assert_eq!(kept.upstream_uri(&uri), "/inventory/v1/positions?x=1");
        // A kept prefix is forwarded as the client spelled it, and its locations map back.
        let shouted: Uri = "/INVENTORY/v1?x=1".parse().unwrap();
        assert_eq!(kept.upstream_uri(&shouted), "/INVENTORY/v1?x=1");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::LOCATION,
            HeaderValue::from_static("/INVENTORY/v1/7"),
        );
        kept.rewrite_locations(&mut headers, "/INVENTORY/v1");
        assert_eq!(headers[header::LOCATION], "/INVENTORY/v1/7");
    }
}
