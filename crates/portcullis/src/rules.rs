//! The rules a configuration must pass: always before `serve` starts, and with
//! `--production` the stricter set for an internet-facing deployment. Each failed rule
//! says what is wrong and how to fix it.

use std::time::Duration;

use secrecy::ExposeSecret;

use crate::auth::is_token68;
use crate::config::{API_TOKENS_VAR, Config};
use crate::ratelimit::{MAX_BURST, MAX_PERIOD};
use crate::settings::{Invalid, Settings};

/// Longest time a verified managed token may be cached.
pub const MAX_TOKEN_CACHE_TTL: Duration = Duration::from_secs(30);
/// Shortest token `check` accepts without a warning (and `--production` at all).
pub const MIN_TOKEN_LEN: usize = 32;
/// Largest body limit `--production` accepts.
pub const PRODUCTION_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// The longest Redis call timeout accepted: every limited request may wait this long.
pub const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// The timeouts `--production` accepts.
pub const PRODUCTION_TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(120);

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The configuration must not be used.
    Error,
    /// Usable, but weaker than it should be.
    Warning,
}

/// One failed rule.
#[derive(Debug, Clone)]
pub struct Finding {
    /// Stable rule id, e.g. `credentials.present`.
    pub rule: &'static str,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

/// The outcome of checking a configuration.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every failed rule, in rule order.
    pub findings: Vec<Finding>,
    /// The settings the gateway is built from, when every value is valid (a policy rule
    /// may still have failed).
    pub settings: Option<Settings>,
}

impl Report {
    /// Whether no rule failed with [`Severity::Error`].
    pub fn passed(&self) -> bool {
        self.errors().next().is_none()
    }

    /// The findings that block the configuration.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    /// The findings that only warn.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }

    fn add(
        &mut self,
        rule: &'static str,
        severity: Severity,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.findings.push(Finding {
            rule,
            severity,
            message: message.into(),
            fix: fix.into(),
        });
    }
}

/// What the rules need to know beyond the configuration itself.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// Live managed tokens in the store.
    pub live_managed_tokens: usize,
    /// What `serve` would refuse about the token pepper of a store not made yet, if
    /// anything.
    pub pepper_problem: Option<String>,
    /// What `serve` would refuse about the audit log's chain key, if anything.
    pub audit_key_problem: Option<String>,
    /// Whether the chain key is kept apart from the audit log: given in
    /// `PORTCULLIS_AUDIT_KEY`, or in a file outside the log's data directory.
    pub audit_key_kept_apart: bool,
}

/// Runs every rule on `config`: the one validation step ([`Settings::validate`]), whose
/// failures are errors here, then the rules of policy; `production` adds the production
/// rules and turns some warnings into errors.
pub fn check(config: &Config, facts: &Facts, production: bool) -> Report {
    let mut report = Report::default();
    credentials(config, facts, production, &mut report);
    if config.routes.is_empty() {
        report.add(
            "routes.present",
            Severity::Error,
            "no upstream is configured, so there is nothing to forward to",
            "pass --upstream URL (PORTCULLIS_UPSTREAM), or add [upstreams.NAME] and [[routes]] to the config file",
        );
    }
    match Settings::validate(config) {
        Ok(settings) => report.settings = Some(settings),
        Err(invalid) => {
            for Invalid { rule, message, fix } in invalid {
                report.add(rule, Severity::Error, message, fix);
            }
        }
    }
    tls(config, production, &mut report);
    trusted_proxies(config, production, &mut report);
    ranges_with_host_bits(config, &mut report);
    upstream_transport(config, production, &mut report);
    pins_beside_a_ca(config, &mut report);
    admin(config, &mut report);
    if production {
        allowed_hosts(config, &mut report);
    }
    security_headers(config, production, &mut report);
    audit(config, facts, production, &mut report);
    limits(config, production, &mut report);
    rate_limits(config, production, &mut report);
    bans(config, &mut report);
    report
}

fn strict(production: bool) -> Severity {
    if production {
        Severity::Error
    } else {
        Severity::Warning
    }
}

fn credentials(config: &Config, facts: &Facts, production: bool, report: &mut Report) {
    if let Some(problem) = &facts.pepper_problem {
        report.add(
            "store.pepper",
            Severity::Error,
            problem.clone(),
            "set PORTCULLIS_TOKEN_PEPPER_FILE to a file holding at least 16 random characters, or neither variable to have one generated",
        );
    }
    if config.api_tokens.is_empty() && facts.live_managed_tokens == 0 {
        report.add(
            "credentials.present",
            Severity::Error,
            "no credentials are configured, so every request would be refused",
            format!(
                "set {API_TOKENS_VAR} (or {API_TOKENS_VAR}_FILE) to a comma-separated list of bearer tokens, \
                 or create one with `portcullis token create`"
            ),
        );
    }
    if config.token_cache_ttl > MAX_TOKEN_CACHE_TTL {
        report.add(
            "credentials.cache_ttl",
            Severity::Error,
            format!("token_cache_ttl is {}, over 30s", humantime::format_duration(config.token_cache_ttl)),
            "set PORTCULLIS_TOKEN_CACHE_TTL to 30s or less, so revocations apply everywhere within it",
        );
    }
    for (index, token) in config.api_tokens.iter().enumerate() {
        let token = token.expose_secret();
        let position = index + 1;
        if !is_token68(token) {
            report.add(
                "credentials.syntax",
                Severity::Error,
                format!("token #{position} in {API_TOKENS_VAR} has characters a bearer token cannot carry"),
                "use only A-Z a-z 0-9 - . _ ~ + / (e.g. the output of `openssl rand -hex 32`)",
            );
        } else if token.len() < MIN_TOKEN_LEN {
            report.add(
                "credentials.length",
                strict(production),
                format!("token #{position} in {API_TOKENS_VAR} is shorter than {MIN_TOKEN_LEN} characters"),
                "generate a longer one, e.g. `openssl rand -hex 32`",
            );
        }
    }
}

fn tls(config: &Config, production: bool, report: &mut Report) {
    match &config.tls {
        Some(files) if files.cert.as_os_str().is_empty() || files.key.as_os_str().is_empty() => report.add(
            "tls.pair",
            Severity::Error,
            "a TLS certificate was given without its key, or a key without its certificate",
            "set both --tls-cert and --tls-key (PORTCULLIS_TLS_CERT, PORTCULLIS_TLS_KEY)",
        ),
        Some(files) => {
            if let Err(error) = crate::server::tls::load(&files.cert, &files.key) {
                report.add("tls.files", Severity::Error, error.to_string(), "point --tls-cert and --tls-key at a readable PEM certificate chain and its private key");
            } else if let Some(expires) = crate::server::tls::certificate_expiry(&files.cert) {
                certificate_expiry(expires, report);
            }
        }
        None if production && config.trusted_proxies.is_empty() => report.add(
            "production.transport",
            Severity::Error,
            "the listener is plain HTTP and no trusted proxy terminates TLS in front of it",
            "set --tls-cert and --tls-key, or PORTCULLIS_TRUSTED_PROXIES to the proxy that terminates TLS",
        ),
        None => {}
    }
}

/// A trusted range that holds every address: any client could then name its own address in
/// `X-Forwarded-For`, and pass address rules, bans and per-address limits.
fn trusted_proxies(config: &Config, production: bool, report: &mut Report) {
    if config
        .trusted_proxies
        .iter()
        .any(|net| net.prefix_len() == 0)
    {
        report.add(
            "trusted_proxies.everyone",
            strict(production),
            "PORTCULLIS_TRUSTED_PROXIES trusts every address (0.0.0.0/0 or ::/0): any client can name its own address in X-Forwarded-For and pass address rules, bans and per-address limits",
            "name only the proxies in front of the gateway (their addresses or subnet)",
        );
    }
}

/// A range written with bits set below its prefix (`10.0.0.5/30`) means its network
/// (`10.0.0.4/30`): likely an address meant alone, or a mistyped prefix. nginx warns too.
fn ranges_with_host_bits(config: &Config, report: &mut Report) {
    let lists = std::iter::once(("trusted_proxies".to_owned(), &config.trusted_proxies)).chain(
        config.routes.iter().flat_map(|route| {
            [
                (
                    format!("route {:?} allow_ips", route.path_prefix),
                    &route.allow_ips,
                ),
                (
                    format!("route {:?} deny_ips", route.path_prefix),
                    &route.deny_ips,
                ),
            ]
        }),
    );
    for (list, ranges) in lists {
        for range in ranges.iter().filter(|range| range.trunc() != **range) {
            report.add(
                "ip_ranges.host_bits",
                Severity::Warning,
                format!("{list} has {range}, which has bits set below its prefix and means {}", range.trunc()),
                "write the network, or the address alone (without a prefix length) if one was meant",
            );
        }
    }
}

/// An upstream with pins and a `ca_file`: the pins alone decide, so the CA is not asked,
/// which an operator who gave both may not expect.
fn pins_beside_a_ca(config: &Config, report: &mut Report) {
    for (name, upstream) in &config.upstreams {
        let pinned = !upstream.pin_sha256.is_empty() || !upstream.pin_spki_sha256.is_empty();
        if pinned && upstream.ca_file.is_some() {
            report.add(
                "upstreams.pins_and_ca",
                Severity::Warning,
                format!("upstream {name:?} has pins and a ca_file: the pins alone decide which certificate is accepted, and the CA is not asked"),
                "remove ca_file, or the pins if the CA should decide",
            );
        }
    }
}

/// An upstream reached over plain HTTP off this host: requests, and any credential the
/// gateway adds to them, cross the network in the clear.
fn upstream_transport(config: &Config, production: bool, report: &mut Report) {
    for (name, upstream) in &config.upstreams {
        let Ok(uri) = upstream.url.parse::<http::Uri>() else {
            continue;
        };
        let host = uri.host().unwrap_or_default();
        let loopback = host.eq_ignore_ascii_case("localhost")
            || host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if uri.scheme() == Some(&http::uri::Scheme::HTTP) && !loopback {
            report.add(
                "upstreams.plaintext",
                strict(production),
                format!("upstream {name:?} is reached over plain HTTP at {host}, off this host: requests cross the network in the clear"),
                "use https:// (with ca_file or a pin for a private certificate), or keep the upstream on loopback",
            );
        }
    }
}

/// The days a certificate should have left: fewer is a warning.
const CERTIFICATE_DAYS_WARNED: u64 = 30;

fn certificate_expiry(expires: std::time::SystemTime, report: &mut Report) {
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .map_or(0, |ahead| ahead.as_secs() / 86_400);
    if left < CERTIFICATE_DAYS_WARNED {
        report.add(
            "tls.expiry",
            Severity::Warning,
            format!(
                "the listener's certificate expires in {left} days ({})",
                humantime::format_rfc3339_seconds(expires)
            ),
            "renew the certificate, then restart the gateway",
        );
    }
}

fn admin(config: &Config, report: &mut Report) {
    let admin = &config.admin;
    if admin.enabled && !admin.listen.ip().is_loopback() && admin.tls.is_none() {
        report.add(
            "admin.transport",
            Severity::Error,
            format!("the admin API would listen on {} without TLS", admin.listen),
            "keep it on 127.0.0.1 (the default), or set [admin.tls] cert and key",
        );
    }
    if let Some(files) = admin.tls.as_ref().filter(|_| admin.enabled)
        && let Err(error) = crate::server::tls::load(&files.cert, &files.key)
    {
        report.add(
            "admin.tls",
            Severity::Error,
            error.to_string(),
            "point [admin.tls] at a readable PEM certificate chain and key",
        );
    }
}

/// A production rule: without `allowed_hosts`, any `Host` is served, so a page rebound to
/// the gateway's address (DNS rebinding) reaches it. A warning: behind a proxy that fixes
/// the host, the list adds nothing. An MCP route on a loopback listener has loopback names
/// by default, which count.
fn allowed_hosts(config: &Config, report: &mut Report) {
    let by_default = report
        .settings
        .as_ref()
        .is_some_and(|settings| settings.allowed_hosts.is_some());
    if config.allowed_hosts.is_empty() && !by_default {
        report.add(
            "allowed_hosts",
            Severity::Warning,
            "any Host is served: a web page whose name is rebound to this address (DNS rebinding) reaches the gateway from a browser",
            "list the names clients use: allowed_hosts = [\"api.example.com\"] (or --allowed-hosts, PORTCULLIS_ALLOWED_HOSTS)",
        );
    }
}

fn security_headers(config: &Config, production: bool, report: &mut Report) {
    let headers = &config.security_headers;
    if !headers.enabled {
        report.add(
            "security_headers.enabled",
            strict(production),
            "security headers are off: responses carry no CSP, framing, sniffing or HSTS protection",
            "unset PORTCULLIS_DISABLE_SECURITY_HEADERS and set security_headers.enabled = true",
        );
    }
}

fn audit(config: &Config, facts: &Facts, production: bool, report: &mut Report) {
    if !config.audit.enabled {
        report.add(
            "audit.enabled",
            strict(production),
            "the audit log is off: requests and admin actions leave no tamper-evident record",
            "unset PORTCULLIS_AUDIT (or set it to on) and audit.enabled = true",
        );
        return;
    }
    if let Some(problem) = &facts.audit_key_problem {
        report.add(
            "audit.key",
            Severity::Error,
            problem.clone(),
            "set PORTCULLIS_AUDIT_KEY_FILE to a file holding at least 32 random characters",
        );
    }
    if production && !facts.audit_key_kept_apart {
        report.add(
            "production.audit_key",
            Severity::Error,
            "the audit log's chain key would be kept beside the log (generated there, or a file in its data directory), where whoever can edit the log can likely read it",
            "set PORTCULLIS_AUDIT_KEY_FILE to a key kept outside the data directory",
        );
    }
}

/// The longest ban window and ban `check` accepts, as for a limit's refill (366 days).
const MAX_BAN: Duration = MAX_PERIOD;

/// Bans, when on, count failures over a window and hold for a time that are both at least a
/// second (zero would never ban anyone) and at most [`MAX_BAN`].
fn bans(config: &Config, report: &mut Report) {
    let bans = &config.bans;
    if bans.max_failures == 0 {
        return;
    }
    let allowed = Duration::from_secs(1)..=MAX_BAN;
    for (name, value) in [("window", bans.window), ("duration", bans.duration)] {
        if !allowed.contains(&value) {
            report.add(
                "bans",
                Severity::Error,
                format!(
                    "bans.{name} is {}, outside 1s..=366d, so bans would never hold or would outlast any deployment",
                    humantime::format_duration(value)
                ),
                "set it between 1s and 366d, or bans.max_failures = 0 to turn bans off",
            );
        }
    }
}

fn rate_limits(config: &Config, production: bool, report: &mut Report) {
    let settings = &config.rate_limit;
    if settings.max_keys == 0 {
        report.add(
            "rate_limit.max_keys",
            Severity::Error,
            "rate_limit.max_keys is 0, so no client could have a bucket of its own",
            "set rate_limit.max_keys to a positive number (default 100000)",
        );
    }
    if settings.redis_timeout.is_zero() || settings.redis_timeout > MAX_REDIS_TIMEOUT {
        report.add(
            "rate_limit.redis_timeout",
            Severity::Error,
            format!(
                "rate_limit.redis_timeout is {}, outside 1ms..=1s",
                humantime::format_duration(settings.redis_timeout)
            ),
            "keep it short (tens of milliseconds): every limited request waits for it",
        );
    }
    for route in &config.routes {
        for limit in config.limits_for(route) {
            let burst = limit.burst.unwrap_or(limit.rate.count());
            let refill = limit.rate.emission_interval().saturating_mul(burst);
            if burst > MAX_BURST || refill > MAX_PERIOD {
                report.add(
                    "routes.rate_limits",
                    Severity::Error,
                    format!("route {:?} has a limit whose burst of {burst} is over {MAX_BURST} or takes over a year to refill", route.path_prefix),
                    "lower the burst, or raise the rate",
                );
            }
            if limit.burst == Some(0) {
                report.add(
                    "routes.rate_limits",
                    Severity::Error,
                    format!(
                        "route {:?} has a limit with burst 0, which refuses everything",
                        route.path_prefix
                    ),
                    "set burst to at least 1, or leave it out to allow the rate's count at once",
                );
            }
        }
    }
    for (name, upstream) in &config.upstreams {
        if upstream.max_in_flight == Some(0) {
            report.add(
                "upstreams.max_in_flight",
                Severity::Error,
                format!("upstream {name:?} has max_in_flight = 0, which refuses everything"),
                "set max_in_flight to a positive number, or leave it out for no cap",
            );
        }
    }
    let limited = config
        .routes
        .iter()
        .any(|route| !config.limits_for(route).is_empty());
    if production && !limited {
        report.add(
            "production.rate_limits",
            Severity::Error,
            "no route has a rate limit, so one client can take all of the upstream's capacity",
            "set PORTCULLIS_RATE_LIMIT (e.g. 60/min) or give routes rate_limits = [{ rate = \"60/min\" }]",
        );
    }
}

fn limits(config: &Config, production: bool, report: &mut Report) {
    let limits = &config.limits;
    let positive = [
        ("limits.max_body_bytes", limits.max_body_bytes == 0),
        ("limits.max_uri_bytes", limits.max_uri_bytes == 0),
        ("limits.max_header_bytes", limits.max_header_bytes == 0),
        ("limits.max_headers", limits.max_headers == 0),
        ("limits.max_connections", limits.max_connections == 0),
    ];
    for (name, is_zero) in positive {
        if is_zero {
            report.add(
                "limits.positive",
                Severity::Error,
                format!("{name} is 0, which refuses everything"),
                format!("set {name} to a positive number"),
            );
        }
    }
    let mut timeouts = vec![
        ("request_timeout".to_owned(), limits.request_timeout),
        ("header_read_timeout".to_owned(), limits.header_read_timeout),
        ("idle_timeout".to_owned(), limits.idle_timeout),
    ];
    timeouts.extend(
        config
            .upstreams
            .iter()
            .filter_map(|(name, u)| Some((format!("upstreams.{name}.timeout"), u.timeout?))),
    );
    for (name, timeout) in &timeouts {
        if timeout.is_zero() {
            report.add(
                "limits.timeouts",
                Severity::Error,
                format!("{name} is 0"),
                "set a timeout of at least 1s",
            );
        }
    }
    if !production {
        return;
    }
    if limits.max_body_bytes > PRODUCTION_MAX_BODY_BYTES {
        report.add(
            "production.body_limit",
            Severity::Error,
            format!("the body limit is {} bytes, over the {PRODUCTION_MAX_BODY_BYTES} allowed in production", limits.max_body_bytes),
            "set PORTCULLIS_MAX_BODY_BYTES to 10485760 or less",
        );
    }
    for (name, timeout) in timeouts.iter().filter(|(name, _)| name != "idle_timeout") {
        if !PRODUCTION_TIMEOUTS.contains(timeout) {
            report.add(
                "production.timeouts",
                Severity::Error,
                format!(
                    "{name} is {}, outside 1s..=120s",
                    humantime::format_duration(*timeout)
                ),
                format!("set {name} between 1s and 120s"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn valid() -> Config {
        let mut config = Config::default();
        config.set_default_upstream("http://127.0.0.1:9000");
        config.api_tokens = vec![SecretString::from("a".repeat(40))];
        config
    }

    fn rules(report: &Report) -> Vec<(&'static str, Severity)> {
        report
            .findings
            .iter()
            .map(|f| (f.rule, f.severity))
            .collect()
    }

    #[test]
    fn a_complete_config_passes() {
        let report = check(&valid(), &Facts::default(), false);
        assert!(report.findings.is_empty(), "{report:?}");
    }

    #[test]
    fn no_credentials_fails_and_names_the_variable() {
        let mut config = valid();
        config.api_tokens.clear();
        let report = check(&config, &Facts::default(), false);
        assert!(!report.passed());
        let finding = report.errors().next().unwrap();
        assert_eq!(finding.rule, "credentials.present");
        assert!(finding.fix.contains("PORTCULLIS_API_TOKENS"));
    }

    #[test]
    fn live_managed_tokens_are_credentials_too() {
        let mut config = valid();
        config.api_tokens.clear();
        let facts = Facts {
            live_managed_tokens: 1,
            ..Facts::default()
        };
        assert!(check(&config, &facts, false).passed());
    }

    /// Facts with the audit chain's key given, as production requires.
    fn keyed() -> Facts {
        Facts {
            audit_key_kept_apart: true,
            ..Facts::default()
        }
    }

    #[test]
    fn short_tokens_warn_and_fail_in_production() {
        let mut config = valid();
        config.api_tokens = vec![SecretString::from("short".to_owned())];
        config.tls = None;
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        config.rate_limit.default = Some("60/min".parse().unwrap());
        config.allowed_hosts = vec!["api.example.com".to_owned()];
        assert_eq!(
            rules(&check(&config, &Facts::default(), false)),
            [("credentials.length", Severity::Warning)]
        );
        assert_eq!(
            rules(&check(&config, &keyed(), true)),
            [("credentials.length", Severity::Error)]
        );
    }

    #[test]
    fn pins_beside_a_ca_file_warn() {
        let mut config = valid();
        let finds = |config: &Config| {
            rules(&check(config, &keyed(), false))
                .contains(&("upstreams.pins_and_ca", Severity::Warning))
        };
        let upstream = config.upstreams.values_mut().next().unwrap();
        upstream.ca_file = Some("/etc/ca.pem".into());
        assert!(!finds(&config));
        let upstream = config.upstreams.values_mut().next().unwrap();
        upstream.pin_spki_sha256 = vec!["47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".into()];
        assert!(finds(&config));
    }

    #[test]
    fn trusting_every_address_warns_and_fails_in_production() {
        let mut config = valid();
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        let trusted = |report: &Report| {
            rules(report)
                .into_iter()
                .filter(|(rule, _)| *rule == "trusted_proxies.everyone")
                .map(|(_, severity)| severity)
                .collect::<Vec<_>>()
        };
        assert!(trusted(&check(&config, &keyed(), true)).is_empty());
        for everyone in ["0.0.0.0/0", "::/0"] {
            config.trusted_proxies = vec![everyone.parse().unwrap()];
            assert_eq!(
                trusted(&check(&config, &keyed(), false)),
                [Severity::Warning]
            );
            assert_eq!(trusted(&check(&config, &keyed(), true)), [Severity::Error]);
        }
    }

    #[test]
    fn token_findings_do_not_contain_the_token() {
        let mut config = valid();
        config.api_tokens = vec![
            SecretString::from("tiny".to_owned()),
            SecretString::from("bad token".to_owned()),
        ];
        for finding in check(&config, &keyed(), true).findings {
            assert!(!finding.message.contains("tiny") && !finding.message.contains("bad token"));
        }
    }

    #[test]
    fn production_rules() {
        let mut config = valid();
        config.security_headers.enabled = false;
        config.limits.max_body_bytes = PRODUCTION_MAX_BODY_BYTES + 1;
        config.limits.request_timeout = Duration::from_secs(121);
        let found: Vec<_> = check(&config, &keyed(), true)
            .errors()
            .map(|f| f.rule)
            .collect();
        assert_eq!(
            found,
            [
                "production.transport",
                "security_headers.enabled",
                "production.body_limit",
                "production.timeouts",
                "production.rate_limits"
            ]
        );
        assert!(
            check(&config, &Facts::default(), false).passed(),
            "only warnings outside production"
        );
    }

    #[test]
    fn production_needs_a_rate_limit_somewhere() {
        let mut config = valid();
        config.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()];
        let errors = |config: &Config| -> Vec<&'static str> {
            check(config, &keyed(), true)
                .errors()
                .map(|f| f.rule)
                .collect()
        };
        assert_eq!(errors(&config), ["production.rate_limits"]);
        config.rate_limit.default = Some("60/min".parse().unwrap());
        assert!(errors(&config).is_empty());
        // A route that opts out of the default leaves no limit anywhere.
        config.routes[0].rate_limits = Some(Vec::new());
        assert_eq!(errors(&config), ["production.rate_limits"]);
    }

    #[test]
    fn unusable_rate_limit_settings_fail() {
        let mut config = valid();
        config.rate_limit.redis_url =
            Some(SecretString::from("http://:hunter2@cache:6379".to_owned()));
        config.rate_limit.max_keys = 0;
        config.rate_limit.redis_timeout = Duration::from_secs(5);
        config.routes[0].rate_limits = Some(vec![crate::config::RouteLimitConfig {
            rate: "10/s".parse().unwrap(),
            burst: Some(0),
            key: Default::default(),
        }]);
        let report = check(&config, &Facts::default(), false);
        let found: Vec<_> = report.errors().map(|f| f.rule).collect();
        assert_eq!(
            found,
            [
                "rate_limit.redis_url",
                "rate_limit.max_keys",
                "rate_limit.redis_timeout",
                "routes.rate_limits"
            ]
        );
        for finding in &report.findings {
            assert!(!finding.message.contains("hunter2") && !finding.fix.contains("hunter2"));
        }
    }

    #[test]
    fn bursts_too_large_or_too_slow_to_refill_fail() {
        for (rate, burst) in [("10/s", 2_000_000), ("1/hour", 1_000_000)] {
            let mut config = valid();
            config.routes[0].rate_limits = Some(vec![crate::config::RouteLimitConfig {
                rate: rate.parse().unwrap(),
                burst: Some(burst),
                key: Default::default(),
            }]);
            let found: Vec<_> = check(&config, &Facts::default(), false)
                .errors()
                .map(|f| f.rule)
                .collect();
            assert_eq!(found, ["routes.rate_limits"], "{rate} burst {burst}");
        }
    }

    #[test]
    fn wildcard_and_malformed_origins_fail() {
        let mut config = valid();
        config.cors.allowed_origins = vec![
            "*".into(),
            "https://ok.example".into(),
            "https://a.example/path".into(),
        ];
        let errors: Vec<_> = check(&config, &Facts::default(), false)
            .errors()
            .map(|f| f.message.clone())
            .collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn routes_must_name_defined_upstreams_and_clean_prefixes() {
        let mut config = valid();
        config
            .routes
            .push(crate::config::RouteConfig::new("/a/../b", "missing"));
        let found: Vec<_> = check(&config, &Facts::default(), false)
            .errors()
            .map(|f| f.rule)
            .collect();
        assert_eq!(found, ["routes.upstream", "routes.path_prefix"]);
    }

    /// The router takes the first route that matches; a second with the same prefix, in
    /// another case or with a trailing slash, would never apply.
    #[test]
    fn two_routes_for_the_same_paths_are_refused() {
        let mut config = valid();
        let upstream = config.routes[0].upstream.clone();
        for prefix in ["/admin/", "/ADMIN", "/reports"] {
            config
                .routes
                .push(crate::config::RouteConfig::new(prefix, &upstream));
        }
        config
            .routes
            .push(crate::config::RouteConfig::new("/admin", &upstream));
        let found: Vec<_> = check(&config, &Facts::default(), false)
            .errors()
            .map(|f| (f.rule, f.message.clone()))
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().all(|(rule, _)| *rule == "routes.duplicate"));
        assert!(
            found[0].1.contains("\"/admin/\" and \"/ADMIN\""),
            "{found:?}"
        );
    }

    #[test]
    fn route_response_headers_must_be_header_values() {
        let mut config = valid();
        config.routes[0].cache_control = Some("no-store\r\nx-evil: 1".into());
        let found: Vec<_> = check(&config, &Facts::default(), false)
            .errors()
            .map(|f| f.rule)
            .collect();
        assert_eq!(found, ["routes.response_headers"]);
    }

    #[test]
    fn half_a_tls_pair_fails() {
        let mut config = valid();
        config.tls = Some(crate::config::TlsFiles {
            cert: "/x/cert.pem".into(),
            key: "".into(),
        });
        assert_eq!(
            check(&config, &Facts::default(), false)
                .errors()
                .next()
                .unwrap()
                .rule,
            "tls.pair"
        );
    }
}
