//! Configuration: the TOML schema, and loading it with precedence file < environment <
//! flags. Secrets come only from the environment, as `NAME` or `NAME_FILE`.

mod ip_range;
mod overrides;
pub mod rate;
mod secret;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use secrecy::SecretString;
use serde::Deserialize;

pub use overrides::{Overrides, StoreArgs};
pub use rate::{LimitKey, RateSpec};
pub use secret::{SecretError, key_from_data_dir, read_secret, variable_not_text};

/// The environment variable that holds the static bearer tokens.
pub const API_TOKENS_VAR: &str = "PORTCULLIS_API_TOKENS";
/// The environment variable that holds a PostgreSQL URL for the store.
pub const DATABASE_URL_VAR: &str = "PORTCULLIS_DATABASE_URL";
/// The environment variable that holds the Redis URL of a shared rate-limit backend.
pub const REDIS_URL_VAR: &str = "PORTCULLIS_REDIS_URL";

/// Everything `serve` needs to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gateway listens on.
    pub listen: SocketAddr,
    /// Certificate and key for a TLS listener; plain HTTP when absent.
    pub tls: Option<TlsFiles>,
    /// Worker threads, each serving its share of connections; 0 means one per core.
    pub workers: usize,
    /// Peers whose `X-Forwarded-*` headers are believed.
    #[serde(deserialize_with = "ip_range::ip_ranges")]
    pub trusted_proxies: Vec<IpNet>,
    /// The hosts requests may name (`Host`, `:authority` or an absolute target):
    /// `host` (any port) or `host:port`, any case; empty for any valid host.
    pub allowed_hosts: Vec<String>,
    /// Size limits and timeouts.
    pub limits: LimitsConfig,
    /// Cross-origin access; off unless origins are listed.
    pub cors: CorsConfig,
    /// The security headers added to every response.
    pub security_headers: SecurityHeadersConfig,
    /// Named upstream services.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Which upstream serves which path prefix.
    pub routes: Vec<RouteConfig>,
    /// How long a verified managed token may be trusted without asking the store again
    /// (at most 30 s): a revocation made on another instance applies within this time.
    #[serde(with = "humantime_serde")]
    pub token_cache_ttl: Duration,
    /// The admin API's listener.
    pub admin: AdminConfig,
    /// Bans for addresses that keep failing authentication.
    pub bans: BansConfig,
    /// Rate limiting: the default limit, the backend and its failure mode.
    pub rate_limit: RateLimitConfig,
    /// The access log.
    pub log: LogConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// Static bearer tokens; only ever from the environment.
    #[serde(skip)]
    pub api_tokens: Vec<SecretString>,
}

/// Logging settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Where the access log goes: `off` (the default), `stdout`, `stderr` or a file path.
    pub access: AccessLogTarget,
    /// How the operational log is written.
    pub format: LogFormat,
    /// Query parameter names whose values are hidden, besides the built-in list.
    pub redact_query_params: Vec<String>,
}

/// Where the access log goes: `off` (the default), `stdout`, `stderr` or a file path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AccessLogTarget {
    /// Nowhere: no record is made at all.
    #[default]
    Off,
    /// Standard output.
    Stdout,
    /// Standard error, beside the operational log.
    Stderr,
    /// A file, appended to (created when missing).
    File(PathBuf),
}

impl std::str::FromStr for AccessLogTarget {
    type Err = std::convert::Infallible;

    /// `off`, `stdout`, `stderr`, or a path.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "off" | "" => Self::Off,
            "stdout" | "-" => Self::Stdout,
            "stderr" => Self::Stderr,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

impl<'de> serde::Deserialize<'de> for AccessLogTarget {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How the operational log is written: `text` (the default) for people, `json` (one object
/// per line) for log shippers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the store lives.
#[derive(Debug, Clone)]
pub enum StoreLocation {
    /// A SQLite file inside this directory (created with mode 0700).
    DataDir(PathBuf),
    /// A PostgreSQL database; the URL may hold a password, so it is a secret.
    Postgres(SecretString),
}

/// The audit log: every finished request and admin action, chained so that an edit, a
/// deletion or a cut shows.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// On by default; `PORTCULLIS_AUDIT=off` turns it off (with a warning, and a failure of
    /// `check --production`).
    pub enabled: bool,
    /// Strict mode: an allowed request with one of these methods is held until its
    /// admission event is durable, and refused (503) when it cannot be; `[]` for none. A
    /// route's `audit_strict_methods` overrides it.
    pub strict_methods: Vec<String>,
    /// How long events are kept (`90d` by default); `0` keeps everything.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// The variable (or `NAME_FILE`) holding the URL of a PostgreSQL database of the audit
    /// log's own; unset: the audit log is kept beside the token store.
    pub database_url_env: Option<String>,
    /// The most bytes of each body kept on routes with `audit_bodies` (4096 by default).
    pub max_body_bytes: usize,
}

impl AuditConfig {
    /// Where the audit log is kept: the PostgreSQL database `database_url_env` names, or
    /// else beside the token store, at `store`.
    pub fn location(
        &self,
        store: &StoreLocation,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<StoreLocation, ConfigError> {
        use secrecy::ExposeSecret;
        let Some(var) = &self.database_url_env else {
            return Ok(store.clone());
        };
        match read_secret(var, env)? {
            Some(url)
                if ["postgres://", "postgresql://"]
                    .iter()
                    .any(|scheme| url.expose_secret().starts_with(scheme)) =>
            {
                Ok(StoreLocation::Postgres(url))
            }
            Some(_) => Err(ConfigError::AuditDatabaseUrl(var.clone())),
            None => Err(ConfigError::AuditDatabaseUrlMissing(var.clone())),
        }
    }
}

/// How long audit events are kept by default.
pub const AUDIT_RETENTION: Duration = Duration::from_secs(90 * 86_400);

/// The methods strict mode covers by default: those that change things.
pub const STRICT_METHODS: [&str; 4] = ["POST", "PUT", "PATCH", "DELETE"];

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            strict_methods: STRICT_METHODS.map(str::to_owned).to_vec(),
            retention: AUDIT_RETENTION,
            database_url_env: None,
            max_body_bytes: 4096,
        }
    }
}

/// The variable holding the key of the audit log's hash chain.
pub const AUDIT_KEY_VAR: &str = "PORTCULLIS_AUDIT_KEY";

/// Rate limiting settings that apply to every route.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// A limit for every route that sets no `rate_limits` of its own, keyed by principal
    /// (`PORTCULLIS_RATE_LIMIT=60/min`).
    pub default: Option<RateSpec>,
    /// What happens when the Redis backend cannot be reached.
    pub on_backend_error: OnBackendError,
    /// How long one Redis call may take before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub redis_key_prefix: String,
    /// Most keys one in-memory limit tracks; idle keys are evicted first, and keys beyond
    /// the cap share one bucket.
    pub max_keys: usize,
    /// The shared backend's URL; only ever from the environment (it may hold a password).
    #[serde(skip)]
    pub redis_url: Option<SecretString>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            default: None,
            on_backend_error: OnBackendError::Local,
            redis_timeout: Duration::from_millis(50),
            redis_key_prefix: "portcullis".to_owned(),
            max_keys: 100_000,
            redis_url: None,
        }
    }
}

/// What the gateway does while the shared rate-limit backend is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendError {
    /// Limit in memory, per instance, until the backend answers again.
    #[default]
    Local,
    /// Refuse limited requests with 503.
    Deny,
}

/// One limit on a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimitConfig {
    /// The sustained rate, e.g. `60/min`.
    pub rate: RateSpec,
    /// Most requests allowed at once; defaults to the rate's count.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Who shares a bucket: `principal` (the default), `ip` or `route`.
    #[serde(default)]
    pub key: LimitKey,
}

/// Bans for addresses that keep failing authentication.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BansConfig {
    /// Failed authentications within `window` that ban the address; 0 turns bans off.
    pub max_failures: u32,
    /// The window failures are counted in.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long a ban lasts.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

impl Default for BansConfig {
    fn default() -> Self {
        Self {
            max_failures: 20,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(600),
        }
    }
}

/// The admin API's listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Whether to serve the admin API at all.
    pub enabled: bool,
    /// Its address; a non-loopback address needs `tls`.
    pub listen: SocketAddr,
    /// Certificate and key for the admin listener.
    pub tls: Option<TlsFiles>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9901)),
            tls: None,
        }
    }
}

/// PEM files for the TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Request limits and timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body, declared or streamed.
    pub max_body_bytes: u64,
    /// Longest request target (path and query).
    pub max_uri_bytes: usize,
    /// Most bytes of request header names and values together.
    pub max_header_bytes: usize,
    /// Most request header fields.
    pub max_headers: usize,
    /// Time a client has to send a request head.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time an idle keep-alive connection stays open.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Time an upstream has to send response headers.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most client connections open at once.
    pub max_connections: usize,
    /// Most streams (WebSockets, responses still streaming after their head) one caller
    /// may have open at once; none when absent.
    pub max_streams_per_principal: Option<usize>,
    /// Time in-flight requests get to finish after SIGTERM or SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            max_streams_per_principal: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Cross-origin resource sharing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins allowed; empty turns CORS off. `*` is refused.
    pub allowed_origins: Vec<String>,
    /// Methods a cross-origin request may use.
    pub allowed_methods: Vec<String>,
    /// Request headers a cross-origin request may send.
    pub allowed_headers: Vec<String>,
    /// Response headers exposed to the calling script.
    pub expose_headers: Vec<String>,
    /// How long browsers may cache a preflight answer.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Whether cross-origin requests may carry cookies.
    pub allow_credentials: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect();
        Self {
            allowed_origins: Vec::new(),
            allowed_methods: strings(&["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
            allowed_headers: strings(&["authorization", "content-type", "x-request-id"]),
            expose_headers: strings(&["x-request-id"]),
            max_age: Duration::from_secs(600),
            allow_credentials: false,
        }
    }
}

/// The security headers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityHeadersConfig {
    /// Whether to add them (`PORTCULLIS_DISABLE_SECURITY_HEADERS=1` turns them off).
    pub enabled: bool,
    /// The `Content-Security-Policy` for paths without an override.
    pub content_security_policy: String,
    /// Per-path-prefix policies, e.g. for a docs page or a UI.
    pub csp_overrides: Vec<CspOverride>,
    /// The `Strict-Transport-Security` value, sent only on HTTPS.
    pub strict_transport_security: String,
}

impl Default for SecurityHeadersConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            content_security_policy: DEFAULT_CSP.to_owned(),
            csp_overrides: Vec::new(),
            strict_transport_security: "max-age=31536000; includeSubDomains".to_owned(),
        }
    }
}

/// A `Content-Security-Policy` for paths below a prefix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CspOverride {
    /// Paths at or below this prefix get `content_security_policy`.
    pub path_prefix: String,
    /// The policy.
    pub content_security_policy: String,
}

/// An upstream service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://` or `https://` URL, optionally with a base path; none with
    /// `outline_access`.
    #[serde(default)]
    pub url: String,
    /// An Outline server's `access.txt`, or what its installer printed: sets the URL, the
    /// secret path prefix and the certificate pin.
    #[serde(default)]
    pub outline_access: Option<PathBuf>,
    /// Overrides `limits.request_timeout` for this upstream.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Most requests in flight to this upstream at once, over all workers; none when absent.
    #[serde(default)]
    pub max_in_flight: Option<usize>,
    /// Most streams (WebSockets, and responses still streaming after their head) open to
    /// this upstream at once, over all workers; none when absent.
    #[serde(default)]
    pub max_streams: Option<usize>,
    /// How long a request waits for a free slot under `max_in_flight` before a 503.
    #[serde(default = "default_queue_timeout", with = "humantime_serde")]
    pub queue_timeout: Duration,
    /// How long opening a TCP connection to it may take.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Accepted leaf certificates, by the hex SHA-256 of their DER (colons and case
    /// ignored: Outline's `certSha256`). With any pin, the leaf must match one, and no chain
    /// or name is asked of it.
    #[serde(default)]
    pub pin_sha256: Vec<String>,
    /// Accepted leaf public keys, by the base64 SHA-256 of their SubjectPublicKeyInfo (as
    /// Envoy's `verify_certificate_spki`).
    #[serde(default)]
    pub pin_spki_sha256: Vec<String>,
    /// A PEM file of the CA certificates to trust instead of Mozilla's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A PEM certificate chain to present to the upstream (mutual TLS), with `client_key`.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// The PEM private key of `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// The credential the gateway adds to every request to it, in place of the client's.
    #[serde(default)]
    pub credential: Option<CredentialConfig>,
    /// Its circuit breaker; none when absent.
    #[serde(default)]
    pub circuit: Option<CircuitConfig>,
    /// How its failed calls are retried; never when absent.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// All attempts and the pauses between them together; only each attempt's `timeout`
    /// when absent.
    #[serde(default, with = "humantime_serde")]
    pub total_timeout: Option<Duration>,
    /// Active health checks; none when absent.
    #[serde(default)]
    pub health_check: Option<HealthCheckConfig>,
    /// The HTTP version spoken to it.
    #[serde(default)]
    pub http_version: HttpVersion,
    /// Forward the `Host` the client named (validated, and admitted by `allowed_hosts`)
    /// instead of the upstream's own.
    #[serde(default)]
    pub preserve_host: bool,
}

/// The HTTP version spoken to an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub enum HttpVersion {
    /// HTTP/1.1 only (as nginx and Envoy speak to upstreams unless told otherwise).
    #[default]
    #[serde(rename = "1.1")]
    Http1,
    /// HTTP/2 only: negotiated by ALPN over TLS, by prior knowledge (h2c) over plain TCP.
    #[serde(rename = "2")]
    Http2,
    /// Over TLS, whichever the upstream picks by ALPN (HTTP/2 first); over plain TCP,
    /// HTTP/1.1.
    #[serde(rename = "auto")]
    Auto,
}

/// An upstream's active health check: a `GET` of `path` every `interval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// The path checked, below the upstream's URL (and secret path prefix).
    pub path: String,
    /// How often.
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// How long one check may take, its (small) answer read whole.
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed checks that make it unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks that make it healthy again.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(10)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_unhealthy_threshold() -> u32 {
    2
}

fn default_healthy_threshold() -> u32 {
    2
}

/// How an upstream's failed calls are retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// The share of requests (over 10 s) that may be retries, 0 to 1.
    #[serde(default = "default_retry_budget")]
    pub budget: f64,
    /// The first pause's upper bound; doubled for each retry after.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// The largest pause's upper bound.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// The methods retried: idempotent ones only.
    #[serde(default = "default_retry_methods")]
    pub methods: Vec<String>,
}

fn default_attempts() -> u32 {
    3
}

fn default_retry_budget() -> f64 {
    0.2
}

fn default_backoff() -> Duration {
    Duration::from_millis(50)
}

fn default_max_backoff() -> Duration {
    Duration::from_secs(2)
}

fn default_retry_methods() -> Vec<String> {
    ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec()
}

/// A circuit breaker's settings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive failures (unreachable, too slow, 5xx) that open it.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long it stays open before probes go through.
    #[serde(default = "default_recovery_timeout", with = "humantime_serde")]
    pub recovery_timeout: Duration,
    /// Probe successes that close it again.
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
    /// Probes let through at once while half-open.
    #[serde(default = "default_half_open_probes")]
    pub half_open_probes: u32,
}

fn default_failure_threshold() -> u32 {
    5
}

fn default_recovery_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_success_threshold() -> u32 {
    2
}

fn default_half_open_probes() -> u32 {
    1
}

/// A credential injected into requests to an upstream: a header filled from a pool of
/// keys, a secret path prefix, or both; each read from an environment variable or its
/// `_FILE`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The header the key goes in.
    #[serde(default = "default_credential_header")]
    pub header: String,
    /// The header's value, with `{key}` where the key goes.
    #[serde(default = "default_credential_format")]
    pub format: String,
    /// The variable holding the key, or several, comma-separated, used in turn.
    #[serde(default)]
    pub keys_env: Option<String>,
    /// The variable holding a secret path prefix put before every path.
    #[serde(default)]
    pub path_prefix_env: Option<String>,
    /// The value of `keys_env`, read at load.
    #[serde(skip)]
    pub keys: Option<SecretString>,
    /// The value of `path_prefix_env`, read at load.
    #[serde(skip)]
    pub path_prefix: Option<SecretString>,
}

fn default_credential_header() -> String {
    "Authorization".to_owned()
}

fn default_credential_format() -> String {
    "Bearer {key}".to_owned()
}

impl UpstreamConfig {
    /// An upstream at `url`, every other value its default.
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            outline_access: None,
            timeout: None,
            max_in_flight: None,
            max_streams: None,
            queue_timeout: default_queue_timeout(),
            connect_timeout: default_connect_timeout(),
            pin_sha256: Vec::new(),
            pin_spki_sha256: Vec::new(),
            ca_file: None,
            client_cert: None,
            client_key: None,
            credential: None,
            circuit: None,
            retry: None,
            total_timeout: None,
            health_check: None,
            http_version: HttpVersion::default(),
            preserve_host: false,
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_queue_timeout() -> Duration {
    Duration::from_millis(500)
}

/// A path prefix and the upstream that serves it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Paths at or below this prefix (on a segment boundary) match.
    pub path_prefix: String,
    /// The name of an entry in `upstreams`.
    pub upstream: String,
    /// Remove the prefix from the path sent upstream.
    #[serde(default)]
    pub strip_prefix: bool,
    /// How callers authenticate: `bearer` (the default) or `capability` (a secret path
    /// segment right below the prefix, removed before forwarding).
    #[serde(default)]
    pub auth: RouteAuth,
    /// Only these addresses may use the route (empty: any).
    #[serde(default, deserialize_with = "ip_range::ip_ranges")]
    pub allow_ips: Vec<IpNet>,
    /// These addresses may not use the route.
    #[serde(default, deserialize_with = "ip_range::ip_ranges")]
    pub deny_ips: Vec<IpNet>,
    /// The scope a method needs, e.g. `{ POST = "reports:run" }`; methods not listed need
    /// `read` (GET, HEAD, OPTIONS) or `write` (the rest).
    #[serde(default)]
    pub scopes: BTreeMap<String, String>,
    /// The route's rate limits; absent means `rate_limit.default` (if set), and `[]`
    /// means none.
    #[serde(default)]
    pub rate_limits: Option<Vec<RouteLimitConfig>>,
    /// Forward request header names that contain `_` (dropped by default: CGI, WSGI and
    /// Rack servers read `X_Forwarded_For` as `X-Forwarded-For`).
    #[serde(default)]
    pub allow_underscores_in_headers: bool,
    /// `Cache-Control` on every response of the route; capability routes default to
    /// `private, no-store` (a shared cache would key a response by the secret URL).
    #[serde(default)]
    pub cache_control: Option<String>,
    /// `Referrer-Policy` on every response of the route; capability routes default to
    /// `no-referrer` (a browser would send the secret URL to the next site).
    #[serde(default)]
    pub referrer_policy: Option<String>,
    /// The route's own `[audit] strict_methods` (`[]`: none on this route).
    #[serde(default)]
    pub audit_strict_methods: Option<Vec<String>>,
    /// Keep the first `[audit] max_body_bytes` of request and response bodies in the audit
    /// log, redacted.
    #[serde(default)]
    pub audit_bodies: bool,
    /// A ready-made set of settings for a kind of upstream (`mcp`: an MCP server's
    /// Streamable HTTP endpoint).
    #[serde(default)]
    pub preset: Option<RoutePreset>,
    /// Let WebSocket handshakes through to the upstream (RFC 6455; from HTTP/2 clients,
    /// RFC 8441). Off: a handshake is refused with 403.
    #[serde(default)]
    pub websocket: bool,
    /// The browser origins that may open a WebSocket on this route, instead of
    /// `[cors] allowed_origins`.
    #[serde(default)]
    pub allowed_origins: Option<Vec<String>>,
    /// An open WebSocket that carries no byte either way for this long is closed.
    #[serde(default = "default_stream_idle_timeout", with = "humantime_serde")]
    pub stream_idle_timeout: Duration,
    /// An open WebSocket is closed after this long, busy or not.
    #[serde(default = "default_stream_max_lifetime", with = "humantime_serde")]
    pub stream_max_lifetime: Duration,
    /// Most payload bytes of one WebSocket message (or frame), either way; a larger one
    /// closes the WebSocket with 1009.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: u64,
}

fn default_max_message_bytes() -> u64 {
    1024 * 1024
}

fn default_stream_idle_timeout() -> Duration {
    Duration::from_secs(5 * 60)
}

fn default_stream_max_lifetime() -> Duration {
    Duration::from_secs(24 * 60 * 60)
}

impl RouteConfig {
    /// The paths this route covers, as the router matches them: the prefix without a
    /// trailing slash, its letters in lower case. Two routes with the same are one too many.
    pub fn matched_prefix(&self) -> String {
        self.path_prefix.trim_end_matches('/').to_ascii_lowercase()
    }

    /// A route for paths below `path_prefix` to `upstream`, with every option at its
    /// default.
    pub fn new(path_prefix: &str, upstream: &str) -> Self {
        Self {
            path_prefix: path_prefix.to_owned(),
            upstream: upstream.to_owned(),
            strip_prefix: false,
            auth: Default::default(),
            allow_ips: Vec::new(),
            deny_ips: Vec::new(),
            scopes: BTreeMap::new(),
            rate_limits: None,
            allow_underscores_in_headers: false,
            cache_control: None,
            referrer_policy: None,
            audit_strict_methods: None,
            audit_bodies: false,
            preset: None,
            websocket: false,
            allowed_origins: None,
            stream_idle_timeout: default_stream_idle_timeout(),
            stream_max_lifetime: default_stream_max_lifetime(),
            max_message_bytes: default_max_message_bytes(),
        }
    }

    /// The `Cache-Control` and `Referrer-Policy` the route sets: its own, or on a
    /// capability route `private, no-store` and `no-referrer`.
    pub fn response_headers(&self) -> (Option<&str>, Option<&str>) {
        let capability = self.auth == RouteAuth::Capability;
        let default = |value: &'static str| capability.then_some(value);
        (
            self.cache_control
                .as_deref()
                .or_else(|| default("private, no-store")),
            self.referrer_policy
                .as_deref()
                .or_else(|| default("no-referrer")),
        )
    }
}

/// A ready-made set of settings for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoutePreset {
    /// An MCP server's Streamable HTTP endpoint: every request's `Origin` checked, the MCP
    /// headers allowed and exposed by CORS, loopback hosts only on a loopback listener.
    Mcp,
}

/// How callers of a route prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteAuth {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// A capability secret as the first path segment below the prefix, removed before
    /// forwarding (`/<prefix>/<secret>/rest` is sent as `/<prefix>/rest`).
    Capability,
}

/// The Content-Security-Policy every response carries unless configured otherwise: an
/// API's responses load nothing and may be framed by nobody.
pub const DEFAULT_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// The name `--mcp` gives the upstream it defines.
pub const MCP_UPSTREAM: &str = "mcp";

/// The name `--upstream` gives the upstream it defines.
pub const DEFAULT_UPSTREAM: &str = "default";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
            workers: 0,
            trusted_proxies: Vec::new(),
            allowed_hosts: Vec::new(),
            limits: LimitsConfig::default(),
            cors: CorsConfig::default(),
            security_headers: SecurityHeadersConfig::default(),
            upstreams: BTreeMap::new(),
            routes: Vec::new(),
            token_cache_ttl: Duration::from_secs(30),
            admin: AdminConfig::default(),
            bans: BansConfig::default(),
            rate_limit: RateLimitConfig::default(),
            log: LogConfig::default(),
            audit: AuditConfig::default(),
            api_tokens: Vec::new(),
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with line and column, without the file's text.
        message: String,
    },
    /// A secret could not be read from the environment.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The database URL is not a PostgreSQL URL (it is not echoed: it may hold a password).
    #[error("PORTCULLIS_DATABASE_URL must start with postgres:// or postgresql://")]
    DatabaseUrl,
    /// The audit database's variable holds something else than a PostgreSQL URL.
    #[error("{0} (named by audit.database_url_env) must start with postgres:// or postgresql://")]
    AuditDatabaseUrl(String),
    /// The audit database's variable is not set.
    #[error("{0} is not set, but audit.database_url_env names it for the audit log's database")]
    AuditDatabaseUrlMissing(String),
}

impl Config {
    /// Parses a TOML document; a refusal names the line and column, never the file's text.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: parse_message(&error, text),
        })
    }

    /// Loads the configuration: the file named by `overrides` (if any), then the values
    /// `overrides` carries from the environment and flags, then the secrets that `env`
    /// holds. `env` is the process environment in production and a map in tests.
    pub fn load(
        overrides: &Overrides,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match &overrides.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::from_toml(&text, path)?
            }
            None => Self::default(),
        };
        overrides.apply(&mut config);
        if let Some(tokens) = read_secret(API_TOKENS_VAR, &env)? {
            config.api_tokens = split_tokens(&tokens);
        }
        config.rate_limit.redis_url = read_secret(REDIS_URL_VAR, &env)?;
        for upstream in config.upstreams.values_mut() {
            if let Some(credential) = &mut upstream.credential {
                if let Some(name) = &credential.keys_env {
                    credential.keys = read_secret(name, &env)?;
                }
                if let Some(name) = &credential.path_prefix_env {
                    credential.path_prefix = read_secret(name, &env)?;
                }
            }
        }
        Ok(config)
    }

    /// Adds an upstream `mcp` at the origin of `url` and a route for `url`'s path to it,
    /// with the MCP preset (`serve --mcp`); `url` that is not an absolute URL is routed at
    /// `/` and reported when the upstream's URL is checked.
    pub fn add_mcp_route(&mut self, url: &str) {
        let (origin, path) = match url.parse::<http::Uri>() {
            Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() => (
                format!(
                    "{}://{}",
                    uri.scheme_str().unwrap_or("http"),
                    uri.authority().map_or("", |a| a.as_str())
                ),
                uri.path().to_owned(),
            ),
            _ => (url.to_owned(), "/".to_owned()),
        };
        self.upstreams
            .insert(MCP_UPSTREAM.to_owned(), UpstreamConfig::new(&origin));
        let mut route = RouteConfig::new(&path, MCP_UPSTREAM);
        route.preset = Some(RoutePreset::Mcp);
        let matched = route.matched_prefix();
        self.routes.retain(|r| r.matched_prefix() != matched);
        self.routes.push(route);
    }

    /// Adds an upstream named [`DEFAULT_UPSTREAM`] at `url`, and a catch-all route to it
    /// unless a route for `/` exists.
    pub fn set_default_upstream(&mut self, url: &str) {
        self.upstreams
            .insert(DEFAULT_UPSTREAM.to_owned(), UpstreamConfig::new(url));
        if !self
            .routes
            .iter()
            .any(|r| r.path_prefix.trim_end_matches('/').is_empty())
        {
            self.routes.push(RouteConfig::new("/", DEFAULT_UPSTREAM));
        }
    }

    /// How many worker threads to run: `workers`, or one per core when it is 0.
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }

    /// Every scope a route names, beyond the built-in `read`, `write` and `admin`.
    pub fn route_scopes(&self) -> Vec<String> {
        let mut scopes: Vec<String> = self
            .routes
            .iter()
            .flat_map(|r| r.scopes.values().cloned())
            .collect();
        scopes.sort();
        scopes.dedup();
        scopes
    }

    /// The limits that apply to `route`: its own, or else the default.
    pub fn limits_for(&self, route: &RouteConfig) -> Vec<RouteLimitConfig> {
        match &route.rate_limits {
            Some(limits) => limits.clone(),
            None => self
                .rate_limit
                .default
                .iter()
                .map(|rate| RouteLimitConfig {
                    rate: *rate,
                    burst: None,
                    key: LimitKey::Principal,
                })
                .collect(),
        }
    }

    /// The request timeout that applies to `upstream`.
    pub fn timeout_for(&self, upstream: &UpstreamConfig) -> Duration {
        upstream.timeout.unwrap_or(self.limits.request_timeout)
    }
}

/// Splits a comma-separated token list, dropping blanks around and between entries.
fn split_tokens(list: &SecretString) -> Vec<SecretString> {
    use secrecy::ExposeSecret;
    list.expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| SecretString::from(t.to_owned()))
        .collect()
}

/// The parser's explanation of `error` in `text` and where it is, without the file's text:
/// the line it would quote, and the strings it names, may hold a secret (a token pasted
/// into the wrong file, a key in a misspelt field).
fn parse_message(error: &toml::de::Error, text: &str) -> String {
    let explanation = without_strings(error.message().trim());
    let Some(span) = error.span() else {
        return explanation;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {explanation}")
}

/// `message` with the text of every double-quoted string in it left out (`"…"`), and of the
/// name or value quoted in backticks where serde names what the file said (`unknown variant
/// `…``); the backticked names it expects instead stay.
fn without_strings(message: &str) -> String {
    let mut out = without_double_quoted(message);
    for said in [
        "unknown variant `",
        "unknown field `",
        "duplicate field `",
        "duplicate key `",
        // serde's `invalid type` and `invalid value` name a value of the wrong kind so.
        "integer `",
        "floating point `",
        "boolean `",
        "character `",
    ] {
        if let Some(start) = out.find(said).map(|at| at + said.len())
            && let Some(length) = out[start..].find('`')
        {
            out.replace_range(start..start + length, "…");
        }
    }
    out
}

/// `message` with the text of every double-quoted string in it left out (`"…"`).
fn without_double_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            out.push('…');
            let mut escaped = false;
            for c in chars.by_ref() {
                match c {
                    '"' if !escaped => break,
                    '\\' => escaped = !escaped,
                    _ => escaped = false,
                }
            }
            out.push('"');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    /// A refusal says where, and why, but never quotes the file: a secret in the wrong
    /// file, the wrong field or the wrong type stays out of the error.
    #[test]
    fn parse_errors_name_the_place_without_the_files_text() {
        let secret = "8f3a9c0d2e7b4f16a5c3d9e8b7a6f5e4";
        let cases = [
            (
                format!("PORTCULLIS_API_TOKENS={secret}\n"),
                "line 1, column 24: expected newline",
            ),
            (
                format!("listen = \"127.0.0.1:1\"\napi_tokens = [\"{secret}\"]\n"),
                "line 2, column 1: unknown field `…`, expected one of `listen`",
            ),
            (
                format!("[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\nauth = \"{secret}\"\n"),
                "line 4, column 8: unknown variant `…`, expected",
            ),
            (
                format!("{secret} = 1\n"),
                "line 1, column 1: unknown field `…`",
            ),
            (
                format!("[upstreams.a]\nurl = \"http://x/{secret}\"\ntimeout = \"{secret}\"\n"),
                "line 3, column 11:",
            ),
            (
                format!("[upstreams.a]\nurl = \"https://1.2.3.4:1/{secret}\n"),
                "line 2, column ",
            ),
            (
                format!("[[routes]]\npath_prefix = [\"{secret}\"]\n"),
                "line 2, column 15: invalid type",
            ),
        ];
        for (text, expected) in cases {
            let Err(error) = Config::from_toml(&text, Path::new("x.toml")) else {
                panic!("{text:?} parsed");
            };
            let message = error.to_string();
            assert!(message.contains(expected), "{text:?}: {message}");
            assert!(!message.contains(&secret[..8]), "{text:?}: {message}");
        }
        assert_eq!(without_strings(r#"a "b\"c" d "" e"#), r#"a "…" d "…" e"#);
        // A number where a string belongs (a PIN, a numeric key) is not quoted either.
        let Err(error) =
            Config::from_toml("[upstreams.a]\nurl = 83620190417\n", Path::new("x.toml"))
        else {
            panic!("a number for a URL parsed");
        };
        let message = error.to_string();
        assert!(message.contains("invalid type: integer `…`"), "{message}");
        assert!(!message.contains("83620190417"), "{message}");
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
            listen = "0.0.0.0:8443"
            trusted_proxies = ["10.0.0.0/8", "::1/128"]
            [tls]
            cert = "/etc/p/cert.pem"
            key = "/etc/p/key.pem"
            [limits]
            max_body_bytes = 2048
            request_timeout = "5s"
            [cors]
            allowed_origins = ["https://a.example"]
            [security_headers]
            [[security_headers.csp_overrides]]
            path_prefix = "/docs"
            content_security_policy = "default-src 'self'"
            [upstreams.inventory]
            url = "http://127.0.0.1:9000"
            timeout = "2s"
            [[routes]]
            path_prefix = "/v1"
            upstream = "inventory"
        "#;
        let config = Config::from_toml(text, Path::new("x.toml")).unwrap();
        assert_eq!(config.listen.port(), 8443);
        assert_eq!(config.trusted_proxies.len(), 2);
        assert_eq!(config.limits.max_body_bytes, 2048);
        assert_eq!(
            config.limits.max_headers, 100,
            "unset fields keep their defaults"
        );
        assert_eq!(config.limits.request_timeout, Duration::from_secs(5));
        assert_eq!(
            config.upstreams["inventory"].timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(config.routes[0].upstream, "inventory");
        assert_eq!(
            config.security_headers.csp_overrides[0].path_prefix,
            "/docs"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_a_location() {
        let error = Config::from_toml("[limits]\nmax_body = 1\n", Path::new("c.toml")).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("c.toml") && text.contains("max_body"),
            "{text}"
        );
    }

    #[test]
    fn tokens_come_from_the_environment_and_are_split() {
        let env = |name: &str| (name == API_TOKENS_VAR).then(|| " a-token , ,b-token,".to_owned());
        let config = Config::load(&Overrides::default(), env).unwrap();
        let tokens: Vec<&str> = config
            .api_tokens
            .iter()
            .map(|t| t.expose_secret())
            .collect();
        assert_eq!(tokens, ["a-token", "b-token"]);
    }

    #[test]
    fn default_upstream_adds_a_catch_all_route_once() {
        let mut config = Config::default();
        config.set_default_upstream("http://127.0.0.1:1");
        config.set_default_upstream("http://127.0.0.1:2");
        assert_eq!(config.routes.len(), 1);
        assert_eq!(config.upstreams[DEFAULT_UPSTREAM].url, "http://127.0.0.1:2");
    }
}
