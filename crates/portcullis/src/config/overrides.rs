//! Settings given as flags or environment variables, which override the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use ipnet::IpNet;

use super::{Config, TlsFiles};

/// Flags shared by `serve` and `check`; each also reads the environment variable named
/// beside it. Clap gives a flag precedence over its variable; both win over the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML configuration file.
    #[arg(long, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "PORTCULLIS_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Upstream URL that serves every path not routed elsewhere.
    // `--help` shows neither variable's value: a base path may be the upstream's secret.
    #[arg(
        long,
        env = "PORTCULLIS_UPSTREAM",
        value_name = "URL",
        hide_env_values = true
    )]
    pub upstream: Option<String>,

    /// An MCP server's Streamable HTTP endpoint (e.g. http://127.0.0.1:8051/mcp), served at
    /// the same path with the MCP preset.
    #[arg(
        long,
        env = "PORTCULLIS_MCP",
        value_name = "URL",
        hide_env_values = true
    )]
    pub mcp: Option<String>,

    /// PEM certificate chain for a TLS listener (needs --tls-key).
    #[arg(long, env = "PORTCULLIS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for a TLS listener (needs --tls-cert).
    #[arg(long, env = "PORTCULLIS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Comma-separated CIDRs whose X-Forwarded-* headers are believed.
    #[arg(
        long,
        env = "PORTCULLIS_TRUSTED_PROXIES",
        value_name = "CIDRS",
        value_delimiter = ',',
        value_parser = super::ip_range::parse_ip_range
    )]
    pub trusted_proxies: Option<Vec<IpNet>>,

    /// Comma-separated hosts requests may name (`host` or `host:port`); others get 421.
    #[arg(
        long,
        env = "PORTCULLIS_ALLOWED_HOSTS",
        value_name = "HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Option<Vec<String>>,

    /// Comma-separated origins allowed to make cross-origin requests.
    #[arg(
        long,
        env = "PORTCULLIS_CORS_ALLOWED_ORIGINS",
        value_name = "ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Option<Vec<String>>,

    /// Largest request body in bytes [default: 1048576].
    #[arg(long, env = "PORTCULLIS_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,

    /// Time an upstream has to answer, e.g. 30s [default: 30s].
    #[arg(long, env = "PORTCULLIS_REQUEST_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,

    /// Where the access log goes: off, stdout, stderr or a file path [default: off].
    #[arg(
        long,
        env = "PORTCULLIS_ACCESS_LOG",
        value_name = "off|stdout|stderr|PATH"
    )]
    pub access_log: Option<super::AccessLogTarget>,

    /// How the operational log is written: text or json [default: text].
    #[arg(long, env = "PORTCULLIS_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<super::LogFormat>,

    /// Time a client has to send its request head, e.g. 10s [default: 10s].
    #[arg(long, env = "PORTCULLIS_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Option<Duration>,

    /// Most client connections open at once [default: 10000].
    #[arg(long, env = "PORTCULLIS_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,

    /// Address of the admin API; `off` disables it [default: 127.0.0.1:9901].
    #[arg(long, env = "PORTCULLIS_ADMIN_LISTEN", value_name = "ADDR|off", value_parser = parse_admin_listen)]
    pub admin_listen: Option<AdminListen>,

    /// Worker threads; 0 means one per core [default: 0].
    #[arg(long, env = "PORTCULLIS_WORKERS", value_name = "N")]
    pub workers: Option<usize>,

    /// How long a verified managed token is trusted before the store is asked again (at
    /// most 30s) [default: 30s].
    #[arg(long, env = "PORTCULLIS_TOKEN_CACHE_TTL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub token_cache_ttl: Option<Duration>,

    /// A rate limit for every route without limits of its own, per principal, e.g.
    /// 60/min.
    #[arg(long, env = "PORTCULLIS_RATE_LIMIT", value_name = "RATE")]
    pub rate_limit: Option<super::RateSpec>,

    /// The audit log: on or off [default: on].
    #[arg(long, env = "PORTCULLIS_AUDIT", value_name = "on|off", value_parser = BoolishValueParser::new())]
    pub audit: Option<bool>,

    /// Turn the security headers off (not for production).
    #[arg(long, env = "PORTCULLIS_DISABLE_SECURITY_HEADERS", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub disable_security_headers: bool,
}

/// Where the admin API listens, as given on the command line.
#[derive(Debug, Clone, Copy)]
pub enum AdminListen {
    /// No admin API.
    Off,
    /// This address.
    At(SocketAddr),
}

fn parse_admin_listen(text: &str) -> Result<AdminListen, String> {
    match text {
        "off" => Ok(AdminListen::Off),
        addr => addr
            .parse()
            .map(AdminListen::At)
            .map_err(|_| format!("{addr:?} is neither an address like 127.0.0.1:9901 nor `off`")),
    }
}

impl Overrides {
    /// Writes every value that was given onto `config`.
    pub fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(url) = &self.upstream {
            config.set_default_upstream(url);
        }
        if let Some(url) = &self.mcp {
            config.add_mcp_route(url);
        }
        if self.tls_cert.is_some() || self.tls_key.is_some() {
            // A flag given alone replaces its half of the file's pair; a missing half
            // stays empty and is reported by the `tls.pair` rule.
            let current = config.tls.take();
            let cert = self
                .tls_cert
                .clone()
                .or_else(|| current.as_ref().map(|t| t.cert.clone()));
            let key = self.tls_key.clone().or_else(|| current.map(|t| t.key));
            config.tls = Some(TlsFiles {
                cert: cert.unwrap_or_default(),
                key: key.unwrap_or_default(),
            });
        }
        if let Some(proxies) = &self.trusted_proxies {
            config.trusted_proxies = proxies.clone();
        }
        if let Some(hosts) = &self.allowed_hosts {
            config.allowed_hosts = hosts
                .iter()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect();
        }
        if let Some(origins) = &self.cors_allowed_origins {
            config.cors.allowed_origins = origins
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect();
        }
        if let Some(bytes) = self.max_body_bytes {
            config.limits.max_body_bytes = bytes;
        }
        if let Some(target) = &self.access_log {
            config.log.access = target.clone();
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(timeout) = self.request_timeout {
            config.limits.request_timeout = timeout;
        }
        if let Some(timeout) = self.header_read_timeout {
            config.limits.header_read_timeout = timeout;
        }
        if let Some(max) = self.max_connections {
            config.limits.max_connections = max;
        }
        if let Some(ttl) = self.token_cache_ttl {
            config.token_cache_ttl = ttl;
        }
        match self.admin_listen {
            Some(AdminListen::Off) => config.admin.enabled = false,
            Some(AdminListen::At(addr)) => {
                config.admin.enabled = true;
                config.admin.listen = addr;
            }
            None => {}
        }
        if let Some(workers) = self.workers {
            config.workers = workers;
        }
        if let Some(rate) = self.rate_limit {
            config.rate_limit.default = Some(rate);
        }
        if self.disable_security_headers {
            config.security_headers.enabled = false;
        }
        if let Some(enabled) = self.audit {
            config.audit.enabled = enabled;
        }
    }
}

/// Where the store is: flags shared by `serve` and `token`.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct StoreArgs {
    /// Directory for the embedded SQLite store and the generated token pepper.
    #[arg(
        long,
        env = "PORTCULLIS_DATA_DIR",
        value_name = "DIR",
        default_value = "portcullis-data"
    )]
    pub data_dir: PathBuf,

    /// PostgreSQL URL (postgres://...) to use instead of SQLite, over
    /// PORTCULLIS_DATABASE_URL or PORTCULLIS_DATABASE_URL_FILE (prefer those: a flag shows
    /// in the process list).
    // The variables are read in `location`, not by clap: a flag then overrides either, and
    // the two variables together are refused as every secret's are.
    #[arg(long, value_name = "URL", value_parser = secret_arg)]
    pub database_url: Option<secrecy::SecretString>,
}

/// Keeps a secret given as a flag out of `Debug` output from the moment it is parsed.
fn secret_arg(text: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(text.to_owned()))
}

impl StoreArgs {
    /// The store these arguments name; `env` supplies `PORTCULLIS_DATABASE_URL_FILE`.
    pub fn location(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<super::StoreLocation, super::ConfigError> {
        use secrecy::ExposeSecret;
        let url = match &self.database_url {
            Some(url) => Some(url.clone()),
            None => super::read_secret(super::DATABASE_URL_VAR, env)?,
        };
        match url {
            None => Ok(super::StoreLocation::DataDir(self.data_dir.clone())),
            Some(url)
                if ["postgres://", "postgresql://"]
                    .iter()
                    .any(|s| url.expose_secret().starts_with(s)) =>
            {
                Ok(super::StoreLocation::Postgres(url))
            }
            Some(_) => Err(super::ConfigError::DatabaseUrl),
        }
    }
}
