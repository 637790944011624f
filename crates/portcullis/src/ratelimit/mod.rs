//! Rate limits: GCRA per principal, client address or route, in memory (governor) or
//! shared by every replica through Redis; and the bans for addresses that keep failing
//! authentication, kept in the same backend so that a ban holds on every replica.
//!
//! [`RateLimits`] is built once and shared by every worker: the routes' limits with their
//! in-memory buckets, the counters the admin API reads, and the Redis backend's health. Each
//! worker talks to it through its own [`Limiter`], which holds the worker's Redis connection.

mod local;
mod redis_backend;

use std::borrow::Cow;
use std::fmt::Write;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use tracing::warn;

pub use crate::config::rate::{LimitKey, MAX_BURST, MAX_PERIOD, RateSpec, RateSpecError};
pub use local::LocalLimiter;
pub use redis_backend::{RedisBackend, RedisLink, RedisUrlError};

use crate::auth::Principal;
use crate::base::context::RequestContext;
use crate::base::problem::{Problem, ProblemKind, whole_seconds};
use crate::config::{Config, OnBackendError, RouteLimitConfig};
use crate::ip_rules::{BanPolicy, Bans};

/// `X-RateLimit-Limit`.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
/// `RateLimit-Policy` (IETF draft): the limits that apply.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft): where each limit stands.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Where one limit stands after a request was counted against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitStatus {
    /// Requests that may still pass at once.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// When the request was refused: time until one may pass.
    pub retry_after: Option<Duration>,
}

impl LimitStatus {
    /// Whether this limit let the request through.
    pub fn allowed(&self) -> bool {
        self.retry_after.is_none()
    }
}

/// One configured limit and its in-memory buckets.
#[derive(Debug)]
struct Limit {
    /// The policy's name in the `RateLimit*` headers: the key, numbered when repeated.
    name: String,
    key: LimitKey,
    rate: RateSpec,
    burst: u32,
    local: LocalLimiter,
    /// Names this limit's buckets in Redis; derived from the route and the limit, so every
    /// replica with the same configuration uses the same buckets.
    bucket: String,
}

/// The limits of one route, shared by every worker, with its counters.
#[derive(Debug)]
pub struct RouteLimits {
    path_prefix: String,
    limits: Vec<Limit>,
    policy: HeaderValue,
    allowed: AtomicU64,
    limited: AtomicU64,
}

/// One limit in `RateLimit-Policy`: its name, quota (`q`) and window (`w`, whole seconds).
/// A rate whose period is not whole seconds (`3/1500ms`) is stated over the next whole
/// second up, its quota scaled to it and rounded down (`q=4;w=2`), so that what the header
/// promises is never more than what the limit lets through.
fn policy_item(name: &str, rate: RateSpec) -> String {
    // In whole nanoseconds, exactly: floats would round some quotas a unit down.
    let period = rate.period().as_nanos().max(1);
    let window = period.div_ceil(1_000_000_000).max(1);
    let quota = u128::from(rate.count()) * window * 1_000_000_000 / period;
    format!("\"{name}\";q={quota};w={window}")
}

impl RouteLimits {
    fn new(path_prefix: &str, configs: &[RouteLimitConfig], max_keys: usize) -> Option<Self> {
        if configs.is_empty() {
            return None;
        }
        let mut limits: Vec<Limit> = Vec::with_capacity(configs.len());
        for config in configs {
            let burst = NonZeroU32::new(config.burst.unwrap_or(config.rate.count()))
                .unwrap_or(NonZeroU32::MIN);
            let repeats = limits.iter().filter(|l| l.key == config.key).count();
            let name = match repeats {
                0 => config.key.as_str().to_owned(),
                n => format!("{}-{}", config.key.as_str(), n + 1),
            };
            let digest = Sha256::digest(
                format!("{path_prefix}\0{name}\0{}\0{burst}", config.rate).as_bytes(),
            );
            limits.push(Limit {
                local: LocalLimiter::new(config.rate, burst, max_keys),
                bucket: digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
                name,
                key: config.key,
                rate: config.rate,
                burst: burst.get(),
            });
        }
        // A per-client limit is checked before a shared one, so that a client refused by
        // its own limit does not use up what the route's other callers share.
        limits.sort_by_key(|limit| limit.key == LimitKey::Route);
        let policy = limits
            .iter()
            .map(|l| policy_item(&l.name, l.rate))
            .collect::<Vec<_>>()
            .join(", ");
        Some(Self {
            path_prefix: path_prefix.to_owned(),
            // Key names and numbers only, so always a valid value.
            policy: HeaderValue::from_str(&policy)
                .unwrap_or_else(|_| HeaderValue::from_static("\"limited\"")),
            limits,
            allowed: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        })
    }

    /// The route these limits belong to.
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }
}

/// Rate limits and bans for the whole gateway, shared by every worker.
#[derive(Debug)]
pub struct RateLimits {
    routes: Vec<Arc<RouteLimits>>,
    redis: Option<Arc<RedisBackend>>,
    on_backend_error: OnBackendError,
    bans: Bans,
    /// The address blocks this process bans, as it bans them, so that open streams from
    /// them close at once.
    bans_made: tokio::sync::broadcast::Sender<IpAddr>,
    hasher: RandomState,
    /// Decisions made in memory because Redis could not be reached.
    fallback_decisions: AtomicU64,
}

impl RateLimits {
    /// The limits and bans `config` describes, kept in `redis` (validated from
    /// `rate_limit.redis_url`) when there is one, in memory otherwise.
    pub fn new(config: &Config, redis: Option<redis::Client>) -> Self {
        let settings = &config.rate_limit;
        let redis = redis.map(|client| {
            RedisBackend::new(client, settings.redis_timeout, &settings.redis_key_prefix)
        });
        let routes = config
            .routes
            .iter()
            .filter_map(|route| {
                RouteLimits::new(
                    &route.path_prefix,
                    &config.limits_for(route),
                    settings.max_keys,
                )
            })
            .map(Arc::new)
            .collect();
        Self {
            routes,
            redis,
            on_backend_error: settings.on_backend_error,
            bans: Bans::new(BanPolicy {
                max_failures: config.bans.max_failures,
                window: config.bans.window,
                duration: config.bans.duration,
            }),
            bans_made: tokio::sync::broadcast::Sender::new(BANS_MADE_BACKLOG),
            hasher: RandomState::new(),
            fallback_decisions: AtomicU64::new(0),
        }
    }

    /// The limits of the route with `path_prefix`, if it has any.
    pub fn for_route(&self, path_prefix: &str) -> Option<Arc<RouteLimits>> {
        self.routes
            .iter()
            .find(|r| r.path_prefix == path_prefix)
            .cloned()
    }

    /// The state while Redis cannot be reached: what `on_backend_error` makes of it.
    fn without_redis(&self) -> BackendState {
        match self.on_backend_error {
            OnBackendError::Local => BackendState::Fallback,
            OnBackendError::Deny => BackendState::Unavailable,
        }
    }

    /// What the admin API shows: each route's limits and counts, and the backend's state.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            backend: match &self.redis {
                None => BackendState::Memory,
                Some(redis) if redis.health().is_down() => self.without_redis(),
                Some(_) => BackendState::Redis,
            },
            backend_errors: self.redis.as_ref().map_or(0, |r| r.health().errors()),
            fallback_decisions: self.fallback_decisions.load(Ordering::Relaxed),
            routes: self
                .routes
                .iter()
                .map(|route| RouteSnapshot {
                    path_prefix: route.path_prefix.clone(),
                    limits: route
                        .limits
                        .iter()
                        .map(|l| LimitSnapshot {
                            name: l.name.clone(),
                            key: l.key.as_str(),
                            rate: l.rate.to_string(),
                            burst: l.burst,
                            tracked_keys: l.local.len(),
                        })
                        .collect(),
                    allowed: route.allowed.load(Ordering::Relaxed),
                    limited: route.limited.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// Where limits and bans are kept right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    /// In memory, per instance (no Redis configured).
    Memory,
    /// In Redis, shared by every replica.
    Redis,
    /// Redis is unreachable; limits and bans fall back to memory, per instance.
    Fallback,
    /// Redis is unreachable; limited requests are refused.
    Unavailable,
}

impl BackendState {
    /// The name shown in `/ready`, logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
            Self::Fallback => "fallback",
            Self::Unavailable => "unavailable",
        }
    }
}

/// Counts and state for the admin API.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Snapshot {
    /// `memory`, `redis`, `fallback` (Redis unreachable, limiting in memory) or
    /// `unavailable` (Redis unreachable, limited requests refused).
    #[schema(value_type = String)]
    pub backend: BackendState,
    /// Redis calls that failed or timed out since start.
    pub backend_errors: u64,
    /// Decisions made in memory because Redis could not be reached.
    pub fallback_decisions: u64,
    /// Every route with limits.
    pub routes: Vec<RouteSnapshot>,
}

/// One route's limits and counts.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RouteSnapshot {
    /// The route.
    pub path_prefix: String,
    /// Its limits.
    pub limits: Vec<LimitSnapshot>,
    /// Requests the limits let through since start (on this instance).
    pub allowed: u64,
    /// Requests refused with 429 since start (on this instance).
    pub limited: u64,
}

/// One limit.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LimitSnapshot {
    /// Its name in the `RateLimit` headers.
    pub name: String,
    /// `principal`, `ip` or `route`.
    pub key: &'static str,
    /// The sustained rate, e.g. `60/min`.
    pub rate: String,
    /// Requests allowed at once.
    pub burst: u32,
    /// Keys tracked in memory on this instance.
    pub tracked_keys: usize,
}

/// Where a request stands against its route's limits: the response's rate-limit headers,
/// and a refusal when a limit is exhausted.
#[derive(Debug)]
pub struct Quota {
    route: Arc<RouteLimits>,
    /// One per limit checked, in the route's order (a refusal ends the list early).
    statuses: Vec<LimitStatus>,
}

impl Quota {
    /// The limit closest to refusing: fewest remaining, then longest to refill.
    fn strictest(&self) -> Option<(&Limit, &LimitStatus)> {
        self.route
            .limits
            .iter()
            .zip(&self.statuses)
            .min_by_key(|(_, s)| (s.allowed(), s.remaining, std::cmp::Reverse(s.reset)))
    }

    /// Whether a limit refused the request.
    pub fn refused(&self) -> bool {
        self.statuses.iter().any(|s| !s.allowed())
    }

    /// 429 with `Retry-After` when a limit refused the request.
    pub fn admit(&self) -> Result<(), Problem> {
        // The longest wait among the limits that refused: after it, none of them will.
        let Some(retry) = self.statuses.iter().filter_map(|s| s.retry_after).max() else {
            return Ok(());
        };
        Err(Problem::new(ProblemKind::RateLimited)
            .with_detail("too many requests; retry after the time in Retry-After")
            .with_retry_after(retry))
    }

    /// Adds the `X-RateLimit-*`, `RateLimit-Policy` and `RateLimit` headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let Some((limit, status)) = self.strictest() else {
            return;
        };
        headers.insert(
            X_RATELIMIT_LIMIT.clone(),
            HeaderValue::from(limit.rate.count()),
        );
        headers.insert(
            X_RATELIMIT_REMAINING.clone(),
            HeaderValue::from(status.remaining),
        );
        headers.insert(
            X_RATELIMIT_RESET.clone(),
            HeaderValue::from(whole_seconds(status.reset)),
        );
        headers.insert(RATELIMIT_POLICY.clone(), self.route.policy.clone());
        let mut current = String::with_capacity(32 * self.statuses.len());
        for (limit, status) in self.route.limits.iter().zip(&self.statuses) {
            let separator = if current.is_empty() { "" } else { ", " };
            let reset = whole_seconds(status.reset);
            // Writing to a String cannot fail.
            let _ = write!(
                current,
                "{separator}\"{}\";r={};t={reset}",
                limit.name, status.remaining
            );
        }
        if let Ok(value) = HeaderValue::from_str(&current) {
            headers.insert(RATELIMIT.clone(), value);
        }
    }
}

/// Who a bucket belongs to, for one limit and one request.
#[derive(Debug, Hash)]
enum Subject<'a> {
    /// Every static token: one principal.
    StaticPrincipal,
    /// A managed token or capability, by name (which a rotated token keeps).
    Managed(&'a str),
    /// A client address (IPv6 by its /64), or `None` when a trusted proxy left it unknown.
    Address(Option<IpAddr>),
    /// Everyone on the route.
    Route,
}

impl<'a> Subject<'a> {
    fn of(key: LimitKey, principal: &'a Principal, ctx: &RequestContext) -> Self {
        match key {
            LimitKey::Principal => match principal.managed_name() {
                Some(name) => Self::Managed(name),
                None => Self::StaticPrincipal,
            },
            LimitKey::Ip => Self::Address(ctx.known_client_ip().map(address_block)),
            LimitKey::Route => Self::Route,
        }
    }

    /// The last part of its Redis key; the prefixes keep the kinds apart.
    fn redis_key(&self) -> Cow<'a, str> {
        match self {
            Self::StaticPrincipal => Cow::Borrowed("static"),
            Self::Managed(name) => Cow::Owned(format!("token:{name}")),
            Self::Address(Some(ip)) => Cow::Owned(format!("ip:{ip}")),
            Self::Address(None) => Cow::Borrowed("ip:unknown"),
            Self::Route => Cow::Borrowed("route"),
        }
    }
}

/// The address a per-address limit counts: an IPv4 address, or an IPv6 address's /64, since
/// one IPv6 client usually holds a whole /64 and could otherwise take a fresh bucket per
/// address.
pub fn address_block(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

/// Bans a slow stream watcher may fall behind by before it rechecks its address in full.
const BANS_MADE_BACKLOG: usize = 256;

/// One worker's access to the rate limits and bans.
#[derive(Debug)]
pub struct Limiter {
    shared: Arc<RateLimits>,
    redis: Option<RedisLink>,
}

impl Limiter {
    /// A worker's limiter over `shared`.
    pub fn new(shared: Arc<RateLimits>) -> Self {
        let redis = shared.redis.clone().map(RedisLink::new);
        Self { shared, redis }
    }

    /// Counts the request against every limit of `route`. A limit that refuses shows in
    /// [`Quota::admit`]; the error is the 503 of `on_backend_error = "deny"` while Redis is
    /// unreachable.
    pub async fn check(
        &self,
        route: &Arc<RouteLimits>,
        principal: &Principal,
        ctx: &RequestContext,
    ) -> Result<Quota, Problem> {
        let shared = &self.shared;
        let subjects = route
            .limits
            .iter()
            .map(|limit| Subject::of(limit.key, principal, ctx));
        let statuses = match &self.redis {
            Some(redis) => match Self::check_shared(redis, route, subjects.clone()).await {
                Some(statuses) => statuses,
                None if shared.on_backend_error == OnBackendError::Deny => {
                    return Err(Problem::new(ProblemKind::RateLimitUnavailable)
                        .with_detail("the rate-limit backend cannot be reached")
                        .with_retry_after(Duration::from_secs(1)));
                }
                None => {
                    shared.fallback_decisions.fetch_add(1, Ordering::Relaxed);
                    self.check_local(route, subjects)
                }
            },
            None => self.check_local(route, subjects),
        };
        let quota = Quota {
            route: route.clone(),
            statuses,
        };
        let counter = if quota.refused() {
            &route.limited
        } else {
            &route.allowed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(quota)
    }

    /// In memory, limit by limit, stopping at the first refusal; per-client limits come
    /// first, so a client refused by its own limit spends nothing of the route's.
    fn check_local<'a>(
        &self,
        route: &RouteLimits,
        subjects: impl Iterator<Item = Subject<'a>>,
    ) -> Vec<LimitStatus> {
        let mut statuses = Vec::with_capacity(route.limits.len());
        for (limit, subject) in route.limits.iter().zip(subjects) {
            let status = limit.local.check(self.shared.hasher.hash_one(subject));
            statuses.push(status);
            if !status.allowed() {
                break;
            }
        }
        statuses
    }

    /// In Redis, every limit at once, charged together or not at all.
    async fn check_shared<'a>(
        redis: &RedisLink,
        route: &RouteLimits,
        subjects: impl Iterator<Item = Subject<'a>>,
    ) -> Option<Vec<LimitStatus>> {
        let buckets: Vec<(String, Duration, u32)> = route
            .limits
            .iter()
            .zip(subjects)
            .map(|(limit, subject)| {
                (
                    redis
                        .backend()
                        .bucket_key(&limit.bucket, &subject.redis_key()),
                    limit.rate.emission_interval(),
                    limit.burst,
                )
            })
            .collect();
        redis.decide(&buckets).await
    }

    /// Refuses a banned `ip` with 429 and `Retry-After`. Bans made in memory while Redis
    /// was unreachable keep holding after it returns, and a ban Redis holds is kept in
    /// memory once seen, so that it holds while Redis is unreachable. Like limits, bans
    /// hold for an IPv6 address's whole /64.
    pub async fn check_ban(&self, ip: IpAddr) -> Result<(), Problem> {
        if self.shared.bans.policy().max_failures == 0 {
            return Ok(());
        }
        let ip = address_block(ip);
        self.shared.bans.check(ip)?;
        if let Some(redis) = &self.redis
            && let Some(Some(remaining)) = redis.ban_remaining(ip).await
        {
            self.shared.bans.hold(ip, remaining);
            return Err(Bans::refusal(remaining));
        }
        Ok(())
    }

    /// Counts a failed authentication from `ip` (an IPv6 address by its /64) towards a ban.
    pub async fn record_failure(&self, ip: IpAddr) {
        let policy = self.shared.bans.policy();
        if policy.max_failures == 0 {
            return;
        }
        let ip = address_block(ip);
        if let Some(redis) = &self.redis {
            let recorded = redis
                .record_failure(ip, policy.max_failures, policy.window, policy.duration)
                .await;
            match recorded {
                Some(true) => {
                    warn!(%ip, ban = ?policy.duration, "address banned on every replica after repeated authentication failures");
                    self.shared.bans.hold(ip, policy.duration);
                    let _ = self.shared.bans_made.send(ip);
                    return;
                }
                Some(false) => return,
                None => {}
            }
        }
        if self.shared.bans.record_failure(ip) {
            let _ = self.shared.bans_made.send(ip);
        }
    }

    /// Each address block (an IPv6 address's /64) this process bans from now on.
    pub fn bans_made(&self) -> tokio::sync::broadcast::Receiver<IpAddr> {
        self.shared.bans_made.subscribe()
    }

    /// Where limits are kept now, for `/ready`; asks Redis (or probes it, when it was down).
    pub async fn backend_state(&self) -> BackendState {
        let Some(redis) = &self.redis else {
            return BackendState::Memory;
        };
        if redis.ping().await {
            BackendState::Redis
        } else {
            self.shared.without_redis()
        }
    }

    /// Whether a Redis backend is configured.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn the_policy_states_each_limit_over_whole_seconds() {
        let item = |rate: &str| policy_item("principal", rate.parse().unwrap());
        assert_eq!(item("60/min"), "\"principal\";q=60;w=60");
        assert_eq!(item("10/s"), "\"principal\";q=10;w=1");
        assert_eq!(item("3/1500ms"), "\"principal\";q=4;w=2");
        assert_eq!(item("1/500ms"), "\"principal\";q=2;w=1");
        assert_eq!(item("7/2500ms"), "\"principal\";q=8;w=3");
        assert_eq!(item("17/17ms"), "\"principal\";q=1000;w=1");
        assert_eq!(item("34/17ms"), "\"principal\";q=2000;w=1");
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_block(a), address_block(b));
        assert_eq!(address_block(a).to_string(), "2001:db8:1:2::");
        assert_ne!(address_block(a), address_block(other));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_block(v4), v4);
    }

    #[test]
    fn the_longest_wait_among_refusing_limits_is_the_retry_after() {
        let config = |rate: &str| RouteLimitConfig {
            rate: rate.parse().unwrap(),
            burst: None,
            key: LimitKey::Route,
        };
        let route = Arc::new(RouteLimits::new("/", &[config("1/s"), config("1/min")], 10).unwrap());
        let refused = |secs| LimitStatus {
            remaining: 0,
            reset: Duration::from_secs(secs),
            retry_after: Some(Duration::from_secs(secs)),
        };
        let quota = Quota {
            route,
            statuses: vec![refused(1), refused(60)],
        };
        let problem = quota.admit().unwrap_err();
        let response = problem.into_response(&HeaderValue::from_static("r"));
        assert_eq!(response.headers()[header::RETRY_AFTER], "60");
    }
}
