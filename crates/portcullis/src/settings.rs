//! The one validation step. [`Settings::validate`] turns the configuration (plain data, as
//! written) into typed settings, every value parsed and checked once, or into every value
//! that is wrong, each with its fix. `check` reports those beside its policy rules
//! ([`rules`](../rules/index.html)); `serve` builds the gateway from the settings, so no
//! constructor parses a value again and nothing a constructor could refuse can disagree
//! with `check`.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use crate::config::{
    Config, CredentialConfig, HttpVersion, RouteConfig, RouteLimitConfig, RoutePreset,
};
use crate::cors::{CorsPolicy, OriginAllowlist, exact_origin};
use crate::headers::SecurityHeadersPolicy;
use crate::hygiene::{AllowedHosts, LOOPBACK_NAMES, check_path};
use crate::ratelimit::RedisBackend;
use crate::routes::ResponseRules;
use crate::streams::StreamLimits;
use crate::upstream::{
    BreakerSettings, Credential, HealthCheckSettings, OutlineAccess, Resilience, RetrySettings,
    Transport, Upstream, UpstreamShared, UpstreamTarget, UpstreamTls, parse_cert_pin,
    parse_spki_pin, split_keys,
};
use crate::websocket::WebSocketPolicy;
use secrecy::SecretString;

/// A configuration, validated: what the gateway is built from.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Every upstream, in name order.
    pub upstreams: Vec<UpstreamSettings>,
    /// Every route, in configuration order.
    pub routes: Vec<RouteSettings>,
    /// The CORS allowlist (empty: CORS off).
    pub cors: CorsPolicy,
    /// The hosts requests may name; none for any valid host.
    pub allowed_hosts: Option<AllowedHosts>,
    /// The security headers.
    pub security_headers: SecurityHeadersPolicy,
    /// The Redis that keeps rate limits and bans for every replica, if any.
    pub redis: Option<redis::Client>,
}

/// One upstream, its URL parsed.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Its name in the configuration.
    pub name: String,
    /// Where it is.
    pub target: UpstreamTarget,
    /// How connections to it are opened: the connect timeout and the TLS client.
    pub transport: Transport,
    /// What the gateway adds to its requests, if anything.
    pub credential: Option<Arc<Credential>>,
    /// Its circuit breaker, retries and total timeout.
    pub resilience: Resilience,
    /// Time it has to answer with a response head.
    pub timeout: Duration,
    /// At most this many requests in flight to it, across workers.
    pub max_in_flight: Option<usize>,
    /// How long a request waits for an in-flight slot.
    pub queue_timeout: Duration,
}

impl UpstreamSettings {
    /// A copy of this upstream with connections of its own (one per worker, and one for
    /// its health checks), around `shared`, what every copy shares.
    pub fn instance(&self, shared: &Arc<UpstreamShared>) -> Arc<Upstream> {
        Upstream::new(&self.target, &self.transport, self.timeout, shared.clone())
    }
}

/// One route, its values parsed.
#[derive(Debug, Clone)]
pub struct RouteSettings {
    /// The route as configured (its plain values: prefix, auth, address rules).
    pub config: RouteConfig,
    /// The scope each listed method needs.
    pub scopes: Vec<(Method, String)>,
    /// The headers set on its responses.
    pub response_rules: ResponseRules,
    /// Its rate limits (its own, or the default).
    pub limits: Vec<RouteLimitConfig>,
    /// The methods held until their admission event is durable (audit strict mode): the
    /// route's own list or `[audit] strict_methods`; none with the audit log off.
    pub strict_methods: Vec<Method>,
    /// How many bytes of each body the audit log keeps, when it keeps them (the route's
    /// `audit_bodies`, with the audit log on).
    pub body_sample: Option<usize>,
    /// Its WebSockets, when it lets them through (`websocket = true`).
    pub websocket: Option<WebSocketPolicy>,
    /// The origins every request with an `Origin` must come from (the MCP preset).
    pub origin_check: Option<OriginAllowlist>,
    /// The limits its open streams are held to.
    pub stream_limits: StreamLimits,
}

/// One value the gateway cannot be built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Stable rule id, e.g. `upstreams.url`.
    pub rule: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// The methods a route's `scopes` table may name.
/// (`HEAD` is not one: it needs what `GET` needs, as servers answer it with the GET handler.)
const SCOPE_METHODS: [&str; 6] = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

impl Settings {
    /// Parses and checks every value of `config` that the gateway is built from; on
    /// failure, every value that is wrong, in the order the checks run.
    pub fn validate(config: &Config) -> Result<Self, Vec<Invalid>> {
        let mut invalid = Invalid::list();
        let upstreams = upstreams(config, &mut invalid);
        let cors = cors(config, &mut invalid);
        let routes = routes(config, &cors, &mut invalid);
        let allowed_hosts = allowed_hosts(config, &mut invalid);
        if config.limits.max_streams_per_principal == Some(0) {
            invalid.add(
                "limits.max_streams_per_principal",
                "limits.max_streams_per_principal must be at least 1".to_owned(),
                "leave it out for no cap",
            );
        }
        let security_headers = security_headers(config, &mut invalid);
        let redis = config.rate_limit.redis_url.as_ref().and_then(|url| {
            match RedisBackend::validate_url(url) {
                Ok(client) => Some(client),
                Err(error) => {
                    invalid.add(
                        "rate_limit.redis_url",
                        error.to_string(),
                        "set PORTCULLIS_REDIS_URL to redis://[:password@]host:port[/db]",
                    );
                    None
                }
            }
        });
        if !invalid.0.is_empty() {
            return Err(invalid.0);
        }
        Ok(Self {
            upstreams,
            routes,
            cors,
            allowed_hosts,
            security_headers,
            redis,
        })
    }

    /// The upstream called `name`.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamSettings> {
        self.upstreams.iter().find(|upstream| upstream.name == name)
    }
}

/// The values found wrong so far.
struct InvalidList(Vec<Invalid>);

impl Invalid {
    fn list() -> InvalidList {
        InvalidList(Vec::new())
    }
}

impl InvalidList {
    fn add(&mut self, rule: &'static str, message: impl Into<String>, fix: impl Into<String>) {
        self.0.push(Invalid {
            rule,
            message: message.into(),
            fix: fix.into(),
        });
    }
}

fn upstreams(config: &Config, invalid: &mut InvalidList) -> Vec<UpstreamSettings> {
    let mut upstreams = Vec::new();
    for (name, upstream) in &config.upstreams {
        let outline = match &upstream.outline_access {
            None => None,
            Some(path) => match outline_access(name, upstream, path, invalid) {
                Some(access) => Some(access),
                None => continue,
            },
        };
        let url = outline
            .as_ref()
            .map_or(upstream.url.as_str(), |o| &o.origin);
        if upstream.max_streams == Some(0) {
            invalid.add(
                "upstreams.max_streams",
                format!("upstream {name:?}: max_streams must be at least 1"),
                "leave it out for no cap",
            );
        }
        if upstream.preserve_host && upstream.http_version != HttpVersion::Http1 {
            invalid.add(
                "upstreams.preserve_host",
                format!("upstream {name:?}: preserve_host works with http_version = \"1.1\" only"),
                "over HTTP/2 the host is the connection's :authority; remove preserve_host or use HTTP/1.1",
            );
        }
        let target = match UpstreamTarget::parse(name, url) {
            Ok(target) => target.preserving_host(upstream.preserve_host),
            Err(error) => {
                invalid.add(
                    "upstreams.url",
                    error.to_string(),
                    "use a URL like http://127.0.0.1:9000 or https://api.internal/base",
                );
                continue;
            }
        };
        let resilience = Resilience {
            breaker: upstream
                .circuit
                .and_then(|circuit| breaker(name, circuit, invalid)),
            retry: upstream
                .retry
                .as_ref()
                .and_then(|retry| retries(name, retry, invalid)),
            total_timeout: upstream.total_timeout,
            // Streams hold no in-flight slot: an upstream capped in flight is capped in
            // streams too, to the same number, unless it says otherwise.
            max_streams: upstream.max_streams.or(upstream.max_in_flight),
            health_check: upstream
                .health_check
                .as_ref()
                .and_then(|check| health_check(name, check, invalid)),
        };
        let Some((transport, credential)) = transport(name, upstream, &target, outline, invalid)
        else {
            continue;
        };
        upstreams.push(UpstreamSettings {
            name: name.clone(),
            target,
            transport,
            credential: credential.map(Arc::new),
            resilience,
            timeout: config.timeout_for(upstream),
            max_in_flight: upstream.max_in_flight,
            queue_timeout: upstream.queue_timeout,
        });
    }
    upstreams
}

/// Retry settings: 1 to 10 attempts, a budget between 0 and 1, idempotent methods only
/// (RFC 9110 §9.2.2).
fn retries(
    name: &str,
    retry: &crate::config::RetryConfig,
    invalid: &mut InvalidList,
) -> Option<RetrySettings> {
    const RULE: &str = "upstreams.retry";
    let before = invalid.0.len();
    if !(1..=10).contains(&retry.attempts) {
        invalid.add(
            RULE,
            format!("upstream {name:?}: retry attempts must be 1 to 10"),
            "attempts = 3 (the first included)",
        );
    }
    if !(0.0..=1.0).contains(&retry.budget) {
        invalid.add(
            RULE,
            format!("upstream {name:?}: the retry budget must be between 0 and 1"),
            "budget = 0.2 (a fifth of requests may be retries)",
        );
    }
    if retry.backoff > retry.max_backoff {
        invalid.add(
            RULE,
            format!("upstream {name:?}: backoff is longer than max_backoff"),
            "backoff = \"50ms\", max_backoff = \"2s\"",
        );
    }
    let mut methods = Vec::new();
    for method in &retry.methods {
        match Method::from_bytes(method.as_bytes()) {
            Ok(parsed) if parsed.is_idempotent() => methods.push(parsed),
            _ => invalid.add(
                RULE,
                format!("upstream {name:?}: {method:?} is not an idempotent method, so it is never retried"),
                "methods = [\"GET\", \"HEAD\", \"OPTIONS\"] (PUT and DELETE too, if the upstream makes them idempotent)",
            ),
        }
    }
    if invalid.0.len() > before {
        return None;
    }
    Some(RetrySettings {
        attempts: retry.attempts,
        budget_permille: (retry.budget * 1000.0).round() as u32,
        backoff: retry.backoff,
        max_backoff: retry.max_backoff,
        methods,
    })
}

/// Health check settings: a path of its own, at least a second between checks, each
/// check done before the next is due, thresholds at least 1.
fn health_check(
    name: &str,
    check: &crate::config::HealthCheckConfig,
    invalid: &mut InvalidList,
) -> Option<HealthCheckSettings> {
    const RULE: &str = "upstreams.health_check";
    const FIX: &str = "health_check = { path = \"/health\", interval = \"10s\", timeout = \"2s\", unhealthy_threshold = 2, healthy_threshold = 2 }";
    let usable_path = check.path.starts_with('/')
        && http::uri::PathAndQuery::try_from(check.path.as_str())
            .is_ok_and(|path| path.query().is_none());
    let problem = if !usable_path {
        Some(
            "the path must start with /, hold no query, and be valid in a URL (percent-encode the rest)",
        )
    } else if check.interval < Duration::from_secs(1) {
        Some("the interval must be at least 1s")
    } else if check.timeout.is_zero() || check.timeout > check.interval {
        Some("the timeout must be above zero and at most the interval")
    } else if check.unhealthy_threshold == 0 || check.healthy_threshold == 0 {
        Some("unhealthy_threshold and healthy_threshold must be at least 1")
    } else {
        None
    };
    if let Some(problem) = problem {
        invalid.add(RULE, format!("upstream {name:?}: {problem}"), FIX);
        return None;
    }
    Some(HealthCheckSettings {
        path: check.path.clone(),
        interval: check.interval,
        timeout: check.timeout,
        unhealthy_threshold: check.unhealthy_threshold,
        healthy_threshold: check.healthy_threshold,
    })
}

/// A breaker's settings, each threshold at least 1.
fn breaker(
    name: &str,
    circuit: crate::config::CircuitConfig,
    invalid: &mut InvalidList,
) -> Option<BreakerSettings> {
    if circuit.failure_threshold == 0
        || circuit.success_threshold == 0
        || circuit.half_open_probes == 0
    {
        invalid.add(
            "upstreams.circuit",
            format!("upstream {name:?}: failure_threshold, success_threshold and half_open_probes must be at least 1"),
            "circuit = { failure_threshold = 5, recovery_timeout = \"60s\", success_threshold = 2, half_open_probes = 1 }",
        );
        return None;
    }
    Some(BreakerSettings {
        failure_threshold: circuit.failure_threshold,
        recovery_timeout: circuit.recovery_timeout,
        success_threshold: circuit.success_threshold,
        half_open_probes: circuit.half_open_probes,
    })
}

/// The Outline server's access the file at `path` gives; never quoting the file, which
/// holds the secret.
fn outline_access(
    name: &str,
    upstream: &crate::config::UpstreamConfig,
    path: &std::path::Path,
    invalid: &mut InvalidList,
) -> Option<OutlineAccess> {
    const RULE: &str = "upstreams.outline_access";
    if !upstream.url.is_empty() {
        invalid.add(
            RULE,
            format!("upstream {name:?}: url and outline_access both say where it is"),
            "remove url: outline_access sets it",
        );
        return None;
    }
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => {
            invalid.add(
                RULE,
                format!("upstream {name:?}: cannot read {}: {error}", path.display()),
                "point outline_access at the Outline server's access.txt, or a file holding what its installer printed",
            );
            return None;
        }
    };
    match OutlineAccess::parse(&text) {
        Ok(access) => Some(access),
        Err(error) => {
            invalid.add(
                RULE,
                format!("upstream {name:?}: {}: {error}", path.display()),
                "the file must hold the installer's {\"apiUrl\":...,\"certSha256\":...} line, or apiUrl: and certSha256: lines",
            );
            None
        }
    }
}

/// The upstream's transport: its pins parsed, its CA and client certificate read, its TLS
/// client built.
fn transport(
    name: &str,
    upstream: &crate::config::UpstreamConfig,
    target: &UpstreamTarget,
    outline: Option<OutlineAccess>,
    invalid: &mut InvalidList,
) -> Option<(Transport, Option<Credential>)> {
    let before = invalid.0.len();
    let mut tls = UpstreamTls {
        ca_file: upstream.ca_file.clone(),
        ..UpstreamTls::default()
    };
    let outline_path = outline.map(|access| {
        tls.cert_pins.push(access.pin);
        access.secret_path
    });
    for (i, pin) in upstream.pin_sha256.iter().enumerate() {
        match parse_cert_pin(pin) {
            Some(pin) => tls.cert_pins.push(pin),
            None => invalid.add(
                "upstreams.pin_sha256",
                format!("upstream {name:?}: pin_sha256[{i}] is not 64 hex digits (32 bytes)"),
                "give the SHA-256 of the certificate's DER in hex: openssl x509 -noout -fingerprint -sha256 -in cert.pem",
            ),
        }
    }
    for (i, pin) in upstream.pin_spki_sha256.iter().enumerate() {
        match parse_spki_pin(pin) {
            Some(pin) => tls.spki_pins.push(pin),
            None => invalid.add(
                "upstreams.pin_spki_sha256",
                format!("upstream {name:?}: pin_spki_sha256[{i}] is not the base64 of 32 bytes"),
                "openssl x509 -in cert.pem -noout -pubkey | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            ),
        }
    }
    match (&upstream.client_cert, &upstream.client_key) {
        (Some(cert), Some(key)) => tls.client_identity = Some((cert.clone(), key.clone())),
        (None, None) => {}
        _ => invalid.add(
            "upstreams.client_cert",
            format!("upstream {name:?}: client_cert and client_key go together"),
            "set both, or neither",
        ),
    }
    let tls_options = tls.is_pinned() || tls.ca_file.is_some() || tls.client_identity.is_some();
    if tls_options && !target.is_https() {
        invalid.add(
            "upstreams.tls",
            format!(
                "upstream {name:?}: pins, ca_file and client certificates need an https:// URL"
            ),
            "use https://, or remove the TLS settings",
        );
    }
    let credential = match (&upstream.credential, outline_path) {
        (None, None) => None,
        (None, Some(path)) => {
            match Credential::new(None, Some(path)) {
                Ok(credential) => Some(credential),
                Err(_) => {
                    invalid.add(
                    "upstreams.outline_access",
                    format!("upstream {name:?}: the apiUrl's secret path is not usable as a path prefix"),
                    "give the access file exactly as the Outline installer wrote it",
                );
                    None
                }
            }
        }
        (Some(config), path) => credential(name, config, path, invalid),
    };
    if invalid.0.len() > before {
        return None;
    }
    match Transport::new(upstream.connect_timeout, upstream.http_version, &tls) {
        Ok(transport) => Some((transport, credential)),
        Err(error) => {
            invalid.add(
                "upstreams.tls",
                format!("upstream {name:?}: {error}"),
                "give readable PEM files: a CA certificate for ca_file, a certificate chain and its private key for client_cert and client_key",
            );
            None
        }
    }
}

/// The upstream's credential, its variables read; never a value in what is reported.
fn credential(
    name: &str,
    config: &CredentialConfig,
    outline_path: Option<SecretString>,
    invalid: &mut InvalidList,
) -> Option<Credential> {
    const RULE: &str = "upstreams.credential";
    if outline_path.is_some() && config.path_prefix_env.is_some() {
        invalid.add(
            RULE,
            format!(
                "upstream {name:?}: path_prefix_env and outline_access both give the secret path"
            ),
            "remove path_prefix_env: outline_access sets it",
        );
        return None;
    }
    if config.keys_env.is_none() && config.path_prefix_env.is_none() && outline_path.is_none() {
        invalid.add(
            RULE,
            format!("upstream {name:?}: the credential names neither keys_env nor path_prefix_env"),
            "name the variable that holds the key (keys_env) or the secret path (path_prefix_env)",
        );
        return None;
    }
    let unset = |var: &str| {
        (
            format!("upstream {name:?}: {var} (or {var}_FILE) is unset or empty"),
            format!("set {var}, or {var}_FILE to a file that holds it"),
        )
    };
    let mut usable = true;
    let keys = match (&config.keys_env, &config.keys) {
        (None, _) => None,
        (Some(var), value) => {
            let keys = value.as_ref().map(split_keys).unwrap_or_default();
            if keys.is_empty() {
                let (message, fix) = unset(var);
                invalid.add(RULE, message, fix);
                usable = false;
            }
            Some(keys)
        }
    };
    let path_prefix = match (&config.path_prefix_env, &config.path_prefix) {
        (None, _) => outline_path,
        (Some(_), Some(prefix)) if !secrecy::ExposeSecret::expose_secret(prefix).is_empty() => {
            Some(prefix.clone())
        }
        (Some(var), _) => {
            let (message, fix) = unset(var);
            invalid.add(RULE, message, fix);
            usable = false;
            None
        }
    };
    if !usable {
        return None;
    }
    let header = keys.map(|keys| (config.header.as_str(), config.format.as_str(), keys));
    match Credential::new(header, path_prefix) {
        Ok(credential) => Some(credential),
        Err(error) => {
            invalid.add(
                RULE,
                format!("upstream {name:?}: credential: {error}"),
                "header = \"Authorization\", format = \"Bearer {key}\", keys_env = \"VAR\" (keys without line breaks); a path prefix of plain path segments",
            );
            None
        }
    }
}

fn routes(config: &Config, cors: &CorsPolicy, invalid: &mut InvalidList) -> Vec<RouteSettings> {
    let mut routes = Vec::new();
    for (index, route) in config.routes.iter().enumerate() {
        let prefix = &route.path_prefix;
        // The router takes the first of two routes that match the same paths: the second's
        // rules (its IP rules, scopes, limits) would never apply.
        let matched = route.matched_prefix();
        if let Some(first) = config.routes[..index]
            .iter()
            .find(|earlier| earlier.matched_prefix() == matched)
        {
            invalid.add(
                "routes.duplicate",
                format!(
                    "routes {:?} and {prefix:?} match the same paths (prefixes are matched in either case, with or without a trailing slash): the second would never apply",
                    first.path_prefix
                ),
                "merge them into one route",
            );
        }
        if !config.upstreams.contains_key(&route.upstream) {
            invalid.add(
                "routes.upstream",
                format!(
                    "route {prefix:?} names upstream {:?}, which is not defined",
                    route.upstream
                ),
                format!(
                    "add [upstreams.{}] with a url, or fix the route's upstream",
                    route.upstream
                ),
            );
        }
        let mut scopes = Vec::new();
        // Every spelling seen so far, valid or not: `GET` and `get` are one method.
        let mut named = Vec::new();
        for (method, scope) in &route.scopes {
            let upper = method.to_ascii_uppercase();
            let repeated = named.contains(&upper);
            named.push(upper.clone());
            match Method::from_bytes(upper.as_bytes()) {
                Ok(Method::HEAD) => invalid.add(
                    "routes.scopes",
                    format!("route {prefix:?} gives HEAD a scope of its own, which would never be asked: HEAD needs what GET needs"),
                    "give GET the scope instead",
                ),
                Ok(_) if repeated => invalid.add(
                    "routes.scopes",
                    format!("route {prefix:?} gives {upper} a scope twice, in two spellings"),
                    "keep one entry for each method",
                ),
                Ok(parsed) if SCOPE_METHODS.contains(&upper.as_str()) && is_scope_name(scope) => {
                    scopes.push((parsed, scope.clone()));
                }
                _ => invalid.add(
                    "routes.scopes",
                    format!("route {prefix:?} has an invalid scope entry {method:?} = {scope:?}"),
                    "use a method name and a scope of letters, digits and : . _ - (e.g. POST = \"reports:run\")",
                ),
            }
        }
        let (cache_control, referrer_policy) = route.response_headers();
        let mut header = |key: &str, value: Option<&str>| {
            let value = value?;
            let parsed = HeaderValue::from_str(value).ok();
            if parsed.is_none() {
                invalid.add(
                    "routes.response_headers",
                    format!("route {prefix:?} has a {key} that is not a valid header value"),
                    "use printable ASCII, e.g. cache_control = \"private, no-store\"",
                );
            }
            parsed
        };
        let response_rules = ResponseRules {
            cache_control: header("cache_control", cache_control),
            referrer_policy: header("referrer_policy", referrer_policy),
        };
        if check_path(prefix).is_err() {
            invalid.add(
                "routes.path_prefix",
                format!("route path_prefix {prefix:?} is not a clean absolute path"),
                "start it with / and use no dot segments, backslashes or percent-escapes that decode to them",
            );
        }
        let strict = route
            .audit_strict_methods
            .as_ref()
            .unwrap_or(&config.audit.strict_methods);
        let mut strict_methods = Vec::new();
        for method in strict {
            match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(parsed) if config.audit.enabled => strict_methods.push(parsed),
                Ok(_) => {}
                Err(_) => invalid.add(
                    "audit.strict_methods",
                    format!("route {prefix:?}: {method:?} is not an HTTP method"),
                    "list method names, e.g. strict_methods = [\"POST\", \"DELETE\"], or [] for none",
                ),
            }
        }
        let origins = route_origins(route, cors, invalid);
        let limits = stream_limits(route, invalid);
        routes.push(RouteSettings {
            config: route.clone(),
            scopes,
            response_rules,
            limits: config.limits_for(route),
            strict_methods,
            body_sample: (route.audit_bodies && config.audit.enabled)
                .then_some(config.audit.max_body_bytes),
            websocket: route
                .websocket
                .then(|| WebSocketPolicy::new(origins.clone())),
            stream_limits: limits,
            origin_check: (route.preset == Some(RoutePreset::Mcp)).then_some(origins),
        });
    }
    routes
}

/// The limits a route's open streams (WebSockets, streaming responses) are held to.
fn stream_limits(route: &RouteConfig, invalid: &mut InvalidList) -> StreamLimits {
    let prefix = &route.path_prefix;
    let limits = StreamLimits {
        idle_timeout: route.stream_idle_timeout,
        max_lifetime: route.stream_max_lifetime,
        max_message_bytes: route.max_message_bytes,
    };
    // A year at most: timers past the clock's range would not fire.
    let longest = Duration::from_secs(366 * 24 * 60 * 60);
    if limits.idle_timeout.is_zero()
        || limits.max_lifetime.is_zero()
        || limits.max_message_bytes == 0
        || limits.idle_timeout > longest
        || limits.max_lifetime > longest
    {
        invalid.add(
            "routes.streams",
            format!("route {prefix:?}: stream_idle_timeout and stream_max_lifetime must be more than zero and at most a year, and max_message_bytes more than zero"),
            "leave them out for the defaults (5m, 24h, 1048576)",
        );
    }
    limits
}

/// The browser origins a route admits where it checks them (WebSocket handshakes, and
/// every request with the MCP preset): its own `allowed_origins`, or the CORS allowlist's.
fn route_origins(
    route: &RouteConfig,
    cors: &CorsPolicy,
    invalid: &mut InvalidList,
) -> OriginAllowlist {
    let prefix = &route.path_prefix;
    let Some(listed) = &route.allowed_origins else {
        return OriginAllowlist::new(cors.allowed_origins.clone());
    };
    let mut origins = Vec::new();
    for origin in listed {
        match exact_origin(origin) {
            Some(exact) => origins.push(exact),
            None => invalid.add(
                "routes.allowed_origins",
                format!("route {prefix:?}: origin {origin:?} is not an origin as browsers send it (wildcards, null, paths and default ports are refused)"),
                "list each origin as a browser's Origin header shows it, e.g. allowed_origins = [\"https://app.example\"]",
            ),
        }
    }
    OriginAllowlist::new(origins)
}

/// Whether `scope` is 1 to 64 characters of letters, digits and `: . _ -`.
pub fn is_scope_name(scope: &str) -> bool {
    (1..=64).contains(&scope.len())
        && scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'))
}

/// The request headers MCP's Streamable HTTP transport sends, which CORS must let browsers
/// send when a route has the MCP preset.
const MCP_REQUEST_HEADERS: [&str; 4] = [
    "mcp-protocol-version",
    "mcp-session-id",
    "last-event-id",
    "accept",
];

/// The hosts requests may name, each a `host[:port]`; none when the list is empty.
fn allowed_hosts(config: &Config, invalid: &mut InvalidList) -> Option<AllowedHosts> {
    if config.allowed_hosts.is_empty() {
        // An MCP server on a loopback listener answers to its loopback names only (the MCP
        // transport's defence against DNS rebinding), unless told otherwise.
        let mcp = config
            .routes
            .iter()
            .any(|route| route.preset == Some(RoutePreset::Mcp));
        return (mcp && config.listen.ip().is_loopback())
            .then(|| AllowedHosts::parse(&LOOPBACK_NAMES.map(String::from)).ok())
            .flatten();
    }
    match AllowedHosts::parse(&config.allowed_hosts) {
        Ok(allowed) => Some(allowed),
        Err(entry) => {
            invalid.add(
                "allowed_hosts",
                format!("allowed host {entry:?} is not a host or host:port"),
                "list names as requests carry them, e.g. allowed_hosts = [\"localhost:8080\", \"127.0.0.1:8080\", \"mcp.example.com\"]",
            );
            None
        }
    }
}

fn cors(config: &Config, invalid: &mut InvalidList) -> CorsPolicy {
    let cors = &config.cors;
    let mut allowed_origins = Vec::new();
    for origin in &cors.allowed_origins {
        match exact_origin(origin) {
            Some(exact) => allowed_origins.push(exact),
            None => invalid.add(
                "cors.origins",
                format!("CORS origin {origin:?} is not an origin as browsers send it (wildcards, null, paths and default ports are refused)"),
                "list each origin as a browser's Origin header shows it, e.g. PORTCULLIS_CORS_ALLOWED_ORIGINS=https://a.example,https://b.example:8443",
            ),
        }
    }
    let mut allowed_methods = Vec::new();
    for method in &cors.allowed_methods {
        match Method::from_bytes(method.as_bytes()) {
            Ok(method) => allowed_methods.push(method),
            Err(_) => invalid.add(
                "cors.methods",
                format!("CORS method {method:?} is not a method"),
                "use names like GET or POST",
            ),
        }
    }
    let mut names = |list: &[String]| {
        let mut parsed = Vec::new();
        for name in list {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => parsed.push(name),
                Err(_) => invalid.add(
                    "cors.headers",
                    format!("CORS header {name:?} is not a header name"),
                    "use names like content-type",
                ),
            }
        }
        parsed
    };
    let mut allowed_headers = names(&cors.allowed_headers);
    let mut expose_headers = names(&cors.expose_headers);
    if config
        .routes
        .iter()
        .any(|route| route.preset == Some(RoutePreset::Mcp))
    {
        // What the MCP transport needs of browsers: its headers sent, its session id read,
        // and DELETE to end a session.
        for name in MCP_REQUEST_HEADERS {
            let name = HeaderName::from_static(name);
            if !allowed_headers.contains(&name) {
                allowed_headers.push(name);
            }
        }
        let session = HeaderName::from_static("mcp-session-id");
        if !expose_headers.contains(&session) {
            expose_headers.push(session);
        }
        for method in [Method::GET, Method::POST, Method::DELETE] {
            if !allowed_methods.contains(&method) {
                allowed_methods.push(method);
            }
        }
    }
    CorsPolicy {
        allowed_origins,
        allowed_methods,
        allowed_headers,
        expose_headers,
        max_age: cors.max_age,
        allow_credentials: cors.allow_credentials,
    }
}

fn security_headers(config: &Config, invalid: &mut InvalidList) -> SecurityHeadersPolicy {
    let headers = &config.security_headers;
    let mut value = |text: &str| {
        HeaderValue::from_str(text).unwrap_or_else(|_| {
            invalid.add(
                "security_headers.values",
                format!("{text:?} is not a valid header value"),
                "remove control characters and line breaks",
            );
            HeaderValue::from_static("")
        })
    };
    let content_security_policy = value(&headers.content_security_policy);
    let strict_transport_security = value(&headers.strict_transport_security);
    let mut csp_overrides = Vec::new();
    for o in &headers.csp_overrides {
        csp_overrides.push((o.path_prefix.clone(), value(&o.content_security_policy)));
    }
    for o in &headers.csp_overrides {
        if !o.path_prefix.starts_with('/') {
            invalid.add(
                "security_headers.csp_overrides",
                format!(
                    "CSP override path_prefix {:?} does not start with /",
                    o.path_prefix
                ),
                "use an absolute path prefix such as /docs",
            );
        }
    }
    SecurityHeadersPolicy {
        enabled: headers.enabled,
        content_security_policy,
        csp_overrides,
        strict_transport_security,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Config {
        Config::from_toml(toml, std::path::Path::new("t.toml")).unwrap()
    }

    #[test]
    fn every_wrong_value_is_reported_with_its_rule() {
        let config = config(
            r#"
[limits]
max_streams_per_principal = 0
[upstreams.api]
url = "ftp://x"
http_version = "2"
preserve_host = true
max_streams = 0
[[routes]]
path_prefix = "/api/../x"
upstream = "missing"
scopes = { FETCH = "read" }
cache_control = "a\nb"
audit_strict_methods = ["PO ST"]
websocket = true
allowed_origins = ["https://*.example"]
stream_idle_timeout = "0s"
[cors]
allowed_origins = ["*"]
allowed_methods = ["GE T"]
allowed_headers = ["bad header"]
[security_headers]
content_security_policy = "default-src\u0001"
"#,
        );
        let rules: Vec<&str> = Settings::validate(&config)
            .unwrap_err()
            .iter()
            .map(|invalid| invalid.rule)
            .collect();
        assert_eq!(
            rules,
            [
                "upstreams.max_streams",
                "upstreams.preserve_host",
                "upstreams.url",
                "cors.origins",
                "cors.methods",
                "cors.headers",
                "routes.upstream",
                "routes.scopes",
                "routes.response_headers",
                "routes.path_prefix",
                "audit.strict_methods",
                "routes.allowed_origins",
                "routes.streams",
                "limits.max_streams_per_principal",
                "security_headers.values",
            ]
        );
    }

    /// A scope for HEAD would never be asked (HEAD needs GET's), and a method given twice in
    /// two spellings would keep one scope silently: both are refused, not ignored.
    #[test]
    fn scopes_that_would_be_ignored_are_refused() {
        for (scopes, said) in [
            (r#"{ HEAD = "admin" }"#, "HEAD needs what GET needs"),
            (r#"{ get = "a", GET = "b" }"#, "gives GET a scope twice"),
        ] {
            let config = config(&format!(
                "[upstreams.api]\nurl = \"http://127.0.0.1:9000\"\n[[routes]]\npath_prefix = \"/api\"\nupstream = \"api\"\nscopes = {scopes}\n"
            ));
            let invalid = Settings::validate(&config).unwrap_err();
            assert_eq!(invalid.len(), 1, "{scopes}");
            assert_eq!(invalid[0].rule, "routes.scopes");
            assert!(invalid[0].message.contains(said), "{}", invalid[0].message);
        }
    }

    #[test]
    fn a_valid_configuration_becomes_typed_settings() {
        let config = config(
            r#"
[upstreams.api]
url = "http://127.0.0.1:9000/base/"
[[routes]]
path_prefix = "/api"
upstream = "api"
scopes = { post = "reports:run" }
[cors]
allowed_origins = ["HTTPS://App.Example"]
"#,
        );
        let settings = Settings::validate(&config).unwrap();
        assert_eq!(
            settings.routes[0].scopes,
            [(Method::POST, "reports:run".into())]
        );
        assert_eq!(settings.cors.allowed_origins, ["https://app.example"]);
        assert!(settings.upstream("api").is_some());
        assert!(settings.redis.is_none());
    }

    #[test]
    fn strict_methods_come_from_the_route_or_the_audit_table_and_need_the_audit_log() {
        let routes = r#"
[upstreams.api]
url = "http://127.0.0.1:9000"
[[routes]]
path_prefix = "/api"
upstream = "api"
[[routes]]
path_prefix = "/bulk"
upstream = "api"
audit_strict_methods = ["post"]
"#;
        let strict = |toml: &str| -> Vec<Vec<Method>> {
            Settings::validate(&config(toml))
                .unwrap()
                .routes
                .into_iter()
                .map(|route| route.strict_methods)
                .collect()
        };
        assert_eq!(
            strict(routes),
            [
                vec![Method::POST, Method::PUT, Method::PATCH, Method::DELETE],
                vec![Method::POST]
            ]
        );
        let none = format!("{routes}[audit]\nstrict_methods = []\n");
        assert_eq!(strict(&none), [Vec::<Method>::new(), vec![Method::POST]]);
        let off = format!("{routes}[audit]\nenabled = false\n");
        assert!(strict(&off).iter().all(Vec::is_empty));
    }
}
