//! The shared backend: GCRA state in Redis, one atomic Lua script per decision, with the
//! time taken from Redis so that replicas' clocks do not matter.
//!
//! Every call has a short timeout; a call that fails falls back or refuses, as configured.
//! After [`FAILURES_BEFORE_DOWN`] failures in a row the backend is down for every worker:
//! callers are told at once instead of waiting, and one call per [`PROBE_INTERVAL`] tries
//! Redis again, so recovery needs no operator. One slow call alone does not take it down.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, info, warn};

use super::LimitStatus;

/// Failed calls in a row that mark the backend down.
const FAILURES_BEFORE_DOWN: u32 = 3;
/// How often a down backend is tried again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// How long opening a connection may take (it happens off the request path).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// GCRA over every limit of one request, all or nothing: either every bucket is charged or
/// none is. KEYS are the buckets; ARGV holds, per bucket, the emission interval and the
/// burst. Times are microseconds from Redis's own clock. Returns, per bucket: remaining,
/// microseconds until full, microseconds until a retry may pass (-1 when this bucket
/// allowed the request). A bucket that would have allowed a request another refused
/// reports itself uncharged, as it stays.
const DECIDE: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local allowed = true
local out = {}
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local capacity = interval * tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local ahead = tat + interval - now
  if ahead > capacity then
    allowed = false
    table.insert(out, 0)
    table.insert(out, tat - now)
    table.insert(out, ahead - capacity)
  else
    table.insert(out, math.floor((capacity - ahead) / interval))
    table.insert(out, ahead)
    table.insert(out, -1)
  end
  tats[i] = tat + interval
end
if not allowed then
  for i = 1, #KEYS do
    if out[3 * i] == -1 then
      out[3 * i - 2] = out[3 * i - 2] + 1
      out[3 * i - 1] = out[3 * i - 1] - tonumber(ARGV[2 * i - 1])
    end
  end
end
if allowed then
  for i, key in ipairs(KEYS) do
    local ttl = math.ceil((tats[i] - now) / 1000) + 1
    redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', ttl)
  end
end
return out
";

/// Counts an authentication failure: KEYS[1] counts failures in a window of ARGV[1] ms;
/// at ARGV[2] failures KEYS[2] becomes a ban for ARGV[3] ms. Returns 1 when it banned.
const RECORD_FAILURE: &str = r"
local failures = redis.call('INCR', KEYS[1])
if failures == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
if failures >= tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// Why the Redis URL cannot be used. The URL itself is never shown: it may hold a password.
#[derive(Debug, thiserror::Error)]
#[error("PORTCULLIS_REDIS_URL is not a usable redis:// URL")]
pub struct RedisUrlError;

/// Whether the backend answers, shared by every worker.
#[derive(Debug)]
pub struct BackendHealth {
    epoch: Instant,
    down: AtomicBool,
    /// Milliseconds since `epoch` after which a down backend may be tried again.
    next_probe: AtomicU64,
    consecutive_failures: AtomicU32,
    errors: AtomicU64,
}

impl BackendHealth {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            down: AtomicBool::new(false),
            next_probe: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            errors: AtomicU64::new(0),
        }
    }

    /// Whether the last call failed.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// Calls that failed or timed out since start.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether this caller may try a down backend now (one caller per probe interval).
    fn claim_probe(&self) -> bool {
        let now = self.millis();
        let due = self.next_probe.load(Ordering::Relaxed);
        now >= due
            && self
                .next_probe
                .compare_exchange(
                    due,
                    now + PROBE_INTERVAL.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        if self.down.swap(false, Ordering::Relaxed) {
            info!("rate-limit backend: Redis answers again; limits and bans are shared again");
        }
    }

    fn failed(&self, cause: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let in_a_row = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if in_a_row < FAILURES_BEFORE_DOWN {
            debug!(cause, in_a_row, "rate-limit backend: a Redis call failed");
            return;
        }
        self.next_probe.store(
            self.millis() + PROBE_INTERVAL.as_millis() as u64,
            Ordering::Relaxed,
        );
        if !self.down.swap(true, Ordering::Relaxed) {
            warn!(cause, "rate-limit backend: Redis is unreachable");
        }
    }
}

/// What every worker shares about the Redis backend. Its `Debug` leaves the client out: the
/// client holds the URL, which may hold a password.
pub struct RedisBackend {
    client: redis::Client,
    timeout: Duration,
    key_prefix: String,
    health: BackendHealth,
    decide: Script,
    record_failure: Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// The client for `url`, when it names a Redis server this build can reach (plain
    /// `redis://`; TLS is not built in).
    pub fn validate_url(url: &SecretString) -> Result<redis::Client, RedisUrlError> {
        let text = url.expose_secret();
        if !text.starts_with("redis://") {
            return Err(RedisUrlError);
        }
        redis::Client::open(text).map_err(|_| RedisUrlError)
    }

    /// A backend at `client`, each call bounded by `timeout`, its keys under `key_prefix`.
    pub fn new(client: redis::Client, timeout: Duration, key_prefix: &str) -> Arc<Self> {
        Arc::new(Self {
            client,
            timeout,
            key_prefix: key_prefix.to_owned(),
            health: BackendHealth::new(),
            decide: Script::new(DECIDE),
            record_failure: Script::new(RECORD_FAILURE),
        })
    }

    /// Whether it answers.
    pub fn health(&self) -> &BackendHealth {
        &self.health
    }

    /// The key under which the bucket `bucket` of `key` lives.
    pub fn bucket_key(&self, bucket: &str, key: &str) -> String {
        format!("{}:rl:{bucket}:{key}", self.key_prefix)
    }

    fn ban_key(&self, ip: IpAddr) -> String {
        format!("{}:ban:{ip}", self.key_prefix)
    }

    fn failures_key(&self, ip: IpAddr) -> String {
        format!("{}:fail:{ip}", self.key_prefix)
    }
}

/// One worker's connection to the backend. The connection is opened on first use, on the
/// worker's own runtime; after a failed call it is replaced, so that no error it kept from
/// its setup (a refused password, say) outlives the cause.
pub struct RedisLink {
    backend: Arc<RedisBackend>,
    connection: Mutex<Option<ConnectionManager>>,
}

impl std::fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl RedisLink {
    /// A link to `backend` for one worker.
    pub fn new(backend: Arc<RedisBackend>) -> Self {
        Self {
            backend,
            connection: Mutex::new(None),
        }
    }

    /// The backend this link reaches.
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// The worker's connection slot. Only this worker's thread takes the lock, never across
    /// an await, and an `Option` cannot be left half-written, so a poisoned lock is safe.
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<ConnectionManager>> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn connection(&self) -> RedisResult<ConnectionManager> {
        let mut slot = self.slot();
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.backend.timeout))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_lazy_with_config(self.backend.client.clone(), config)?;
        Ok(slot.insert(manager).clone())
    }

    fn failed(&self, cause: &str) {
        self.backend.health.failed(cause);
        self.slot().take();
    }

    /// Runs `call` against Redis within the timeout; `None` when the backend is down (and
    /// this is not a probe), fails or is too slow. A call that finds its connection broken
    /// (Redis restarted, say) is tried once more on the connection that replaces it; in the
    /// rare case the connection broke after Redis ran the call, a decision is charged twice.
    async fn call<T, F, Fut>(&self, call: F) -> Option<T>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let health = &self.backend.health;
        if health.is_down() && !health.claim_probe() {
            return None;
        }
        let connection = match self.connection() {
            Ok(connection) => connection,
            Err(error) => {
                self.failed(&error.to_string());
                return None;
            }
        };
        let attempts = async {
            match call(connection.clone()).await {
                Err(error) if error.is_connection_dropped() || error.is_io_error() => {
                    call(connection).await
                }
                result => result,
            }
        };
        match tokio::time::timeout(self.backend.timeout, attempts).await {
            Ok(Ok(value)) => {
                health.succeeded();
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed(&error.to_string());
                None
            }
            Err(_) => {
                self.failed("timed out");
                None
            }
        }
    }

    /// Whether Redis answers a PING now (a probe, when the backend is down).
    pub async fn ping(&self) -> bool {
        self.call(|mut connection| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .await
        .is_some()
    }

    /// Charges one request to every bucket in `buckets` (key, emission interval, burst), or
    /// to none if any refuses; each bucket's state, in the order given.
    pub async fn decide(&self, buckets: &[(String, Duration, u32)]) -> Option<Vec<LimitStatus>> {
        let script = &self.backend.decide;
        let mut invocation = script.prepare_invoke();
        for (key, interval, burst) in buckets {
            invocation
                .key(key)
                .arg(
                    u64::try_from(interval.as_micros())
                        .unwrap_or(u64::MAX)
                        .max(1),
                )
                .arg(*burst);
        }
        let invocation = &invocation;
        let reply: Vec<i64> = self
            .call(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        let statuses = reply
            .chunks_exact(3)
            .map(|values| LimitStatus {
                remaining: u32::try_from(values[0]).unwrap_or(0),
                reset: micros(values[1]),
                retry_after: (values[2] >= 0).then(|| micros(values[2])),
            })
            .collect::<Vec<_>>();
        (statuses.len() == buckets.len()).then_some(statuses)
    }

    /// How long `ip` stays banned, if it is; `None` when the backend cannot say.
    pub async fn ban_remaining(&self, ip: IpAddr) -> Option<Option<Duration>> {
        let key = &self.backend.ban_key(ip);
        let millis: i64 = self
            .call(|mut connection| async move {
                redis::cmd("PTTL")
                    .arg(key)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Some((millis > 0).then(|| Duration::from_millis(millis.unsigned_abs())))
    }

    /// Counts an authentication failure from `ip`; `Some(true)` when it led to a ban, and
    /// `None` when the backend cannot say.
    pub async fn record_failure(
        &self,
        ip: IpAddr,
        max_failures: u32,
        window: Duration,
        ban: Duration,
    ) -> Option<bool> {
        let backend = &self.backend;
        let mut invocation = backend.record_failure.prepare_invoke();
        invocation
            .key(backend.failures_key(ip))
            .key(backend.ban_key(ip))
            .arg(window.as_millis().max(1) as u64)
            .arg(max_failures)
            .arg(ban.as_millis().max(1) as u64);
        let invocation = &invocation;
        let banned: i64 = self
            .call(|mut connection| async move { invocation.invoke_async(&mut connection).await })
            .await?;
        Some(banned == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_output_never_shows_the_url() {
        let url = SecretString::from("redis://:hunter2-secret@cache.internal:6379/2".to_owned());
        let backend = RedisBackend::new(
            RedisBackend::validate_url(&url).unwrap(),
            Duration::from_millis(50),
            "portcullis",
        );
        let link = RedisLink::new(backend.clone());
        let _ = link.connection();
        for text in [format!("{backend:?}"), format!("{link:?}")] {
            assert!(text.contains("RedisBackend"), "{text}");
            assert!(
                !text.contains("hunter2") && !text.contains("cache.internal"),
                "{text}"
            );
        }
    }
}
