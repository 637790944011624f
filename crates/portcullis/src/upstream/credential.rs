//! The credential the gateway adds to requests to an upstream, in place of the client's:
//! a header filled from a pool of keys (`Authorization: Bearer {key}`, `X-Api-Key: {key}`),
//! and a secret path prefix (an Outline management URL's secret segment).
//!
//! Keys are used in turn. One the upstream refuses (401) rests for [`REFUSED_REST`], unless
//! it is the last key in use; one it rate-limits (429) until its `Retry-After` (60 s when
//! it gives none, at most [`RATE_LIMITED_REST_MAX`]). A 403 benches nothing: it may be
//! about the request rather than the key (RFC 9110 §15.5.4), and a client that could bench
//! keys with requests the upstream forbids could take the upstream away from everyone.
//! The pool is shared by every worker; picking a key takes no lock.

use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

/// How long a rate-limited key rests when the upstream says nothing of it.
pub const DEFAULT_RATE_LIMIT_REST: Duration = Duration::from_secs(60);

/// The longest a rate-limited key rests, whatever the upstream's `Retry-After` says.
pub const RATE_LIMITED_REST_MAX: Duration = Duration::from_secs(3600);

/// How long a refused key rests before it is tried again: a key revoked for good costs
/// one refused request (sent again with another key when it can be) this often.
pub const REFUSED_REST: Duration = Duration::from_secs(600);

/// What the gateway adds to each request to one upstream.
pub struct Credential {
    /// The header the key goes in, with one value per key; none when only a path prefix is
    /// injected.
    header: Option<(HeaderName, KeyPool)>,
    /// A secret path segment put before every request's path.
    path_prefix: Option<SecretString>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("header", &self.header.as_ref().map(|(name, _)| name))
            .field(
                "keys",
                &self.header.as_ref().map_or(0, |(_, pool)| pool.keys.len()),
            )
            .field("path_prefix", &self.path_prefix.as_ref().map(|_| "***"))
            .finish()
    }
}

/// Why a credential cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// `format` has no `{key}`.
    #[error("the format must contain {{key}}")]
    NoPlaceholder,
    /// The header name is not a valid field name.
    #[error("{0:?} is not a valid header name")]
    HeaderName(String),
    /// The formatted value is not a valid field value (a key with a line break).
    #[error("key {0} (counting from 1) does not make a valid header value")]
    HeaderValue(usize),
    /// No key in the variable.
    #[error("no key: the variable is empty")]
    NoKeys,
    /// The path prefix is not a path segment or more.
    #[error(
        "the path prefix must be one or more path segments of letters, digits and -._~!$&'()*+,;=:@"
    )]
    PathPrefix,
}

impl Credential {
    /// A credential that sets `header` to `format` with `{key}` replaced by each of `keys`
    /// in turn (when `header` is given), and puts `path_prefix` before every path.
    pub fn new(
        header: Option<(&str, &str, Vec<SecretString>)>,
        path_prefix: Option<SecretString>,
    ) -> Result<Self, CredentialError> {
        let header = match header {
            None => None,
            Some((name, format, keys)) => {
                let name = HeaderName::try_from(name)
                    .map_err(|_| CredentialError::HeaderName(name.to_owned()))?;
                Some((name, KeyPool::new(format, &keys)?))
            }
        };
        let path_prefix = match path_prefix {
            None => None,
            Some(prefix) => Some(SecretString::from(normalize_prefix(
                prefix.expose_secret(),
            )?)),
        };
        Ok(Self {
            header,
            path_prefix,
        })
    }

    /// The header the keys go in, and the pool, if any.
    pub fn header(&self) -> Option<(&HeaderName, &KeyPool)> {
        self.header.as_ref().map(|(name, pool)| (name, pool))
    }

    /// The secret path prefix (`/SECRET`, no trailing `/`), if any.
    pub fn path_prefix(&self) -> Option<&SecretString> {
        self.path_prefix.as_ref()
    }

    /// Every secret it holds: its keys, and its path prefix.
    pub fn secrets(&self) -> impl Iterator<Item = &SecretString> {
        let keys = self.header.iter().flat_map(|(_, pool)| &pool.secrets);
        keys.chain(self.path_prefix.as_ref())
    }
}

/// `/segment[/segment...]`, from a prefix given with or without its slashes. A segment is
/// what RFC 3986 §3.3 lets a path segment hold unescaped (`pchar`, but for `%`: an escape
/// would be read once here and once by the upstream); anything else would make no valid
/// request target, and no request could be sent below it.
fn normalize_prefix(prefix: &str) -> Result<String, CredentialError> {
    let trimmed = prefix.trim().trim_matches('/');
    let valid = !trimmed.is_empty()
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b))
        && trimmed
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..");
    if !valid {
        return Err(CredentialError::PathPrefix);
    }
    Ok(format!("/{trimmed}"))
}

/// Keys used in turn, each benched for a while when the upstream refuses it.
pub struct KeyPool {
    keys: Vec<Key>,
    /// The keys as given, for [`Credential::secrets`].
    secrets: Vec<SecretString>,
    next: AtomicUsize,
    /// What `benched_until` counts from.
    epoch: Instant,
    /// Held while a refusal benches a key, so that two refusals at once (every worker
    /// shares the pool) cannot both see the other's key in use and bench the last two.
    refusing: std::sync::Mutex<()>,
}

struct Key {
    /// The header's value, marked sensitive (never indexed by HPACK, shown as such by
    /// `Debug`).
    value: HeaderValue,
    /// Milliseconds after the pool's epoch until which the key rests: 0 when healthy.
    benched_until: AtomicU64,
    /// Whether its last rest was for a refusal (not a rate limit), for [`KeyPool::status`].
    refused: AtomicBool,
}

/// Why a key was benched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bench {
    /// The upstream refused it (401): for [`REFUSED_REST`].
    Refused,
    /// The upstream rate-limited it (429): for this long, at most [`RATE_LIMITED_REST_MAX`].
    RateLimited(Duration),
}

/// A key picked for one request: its header value, and which it was, to bench it.
#[derive(Debug, Clone)]
pub struct PickedKey {
    /// The header's value.
    pub value: HeaderValue,
    index: usize,
}

/// Every key is benched.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("every upstream key is benched")]
pub struct KeysExhausted {
    /// When the first rate-limited key comes back; none when every key was refused.
    pub retry_after: Option<Duration>,
}

/// The pool's state, for operators: counts and reasons, never a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    /// Keys in use.
    pub healthy: usize,
    /// Keys refused by the upstream (401), resting for ten minutes.
    pub refused: usize,
    /// Keys rate-limited by the upstream (429), benched for a while.
    pub rate_limited: usize,
}

impl KeyPool {
    fn new(format: &str, secrets: &[SecretString]) -> Result<Self, CredentialError> {
        if !format.contains("{key}") {
            return Err(CredentialError::NoPlaceholder);
        }
        if secrets.is_empty() {
            return Err(CredentialError::NoKeys);
        }
        let keys = secrets
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let text = format.replace("{key}", key.expose_secret());
                let mut value =
                    HeaderValue::try_from(text).map_err(|_| CredentialError::HeaderValue(i + 1))?;
                value.set_sensitive(true);
                Ok(Key {
                    value,
                    benched_until: AtomicU64::new(0),
                    refused: AtomicBool::new(false),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keys,
            secrets: secrets.to_vec(),
            next: AtomicUsize::new(0),
            refusing: std::sync::Mutex::new(()),
            epoch: Instant::now(),
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// The next healthy key after the last one picked, or when the first comes back.
    pub fn pick(&self) -> Result<PickedKey, KeysExhausted> {
        let now = self.now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let count = self.keys.len();
        for offset in 0..count {
            let index = (start + offset) % count;
            if self.keys[index].benched_until.load(Ordering::Relaxed) <= now {
                return Ok(PickedKey {
                    value: self.keys[index].value.clone(),
                    index,
                });
            }
        }
        let soonest = self
            .keys
            .iter()
            .map(|key| key.benched_until.load(Ordering::Relaxed))
            .min();
        Err(KeysExhausted {
            retry_after: soonest.map(|until| Duration::from_millis(until.saturating_sub(now))),
        })
    }

    /// Benches `key` for `why`, and says whether it did: a refusal never benches the last
    /// key in use (the upstream's own answer then reaches the client), so that requests the
    /// upstream refuses for reasons of their own cannot take every key out of turn.
    pub fn bench(&self, key: &PickedKey, why: Bench) -> bool {
        // Only refusals take it, and they are rare; a poisoned lock guards nothing (`()`).
        let _refusing = (why == Bench::Refused)
            .then(|| self.refusing.lock().unwrap_or_else(PoisonError::into_inner));
        let now = self.now();
        let rest = match why {
            Bench::Refused => {
                let others_in_use = self.keys.iter().enumerate().any(|(index, other)| {
                    index != key.index && other.benched_until.load(Ordering::Relaxed) <= now
                });
                if !others_in_use {
                    return false;
                }
                REFUSED_REST
            }
            Bench::RateLimited(rest) => rest.min(RATE_LIMITED_REST_MAX),
        };
        let until = now.saturating_add(u64::try_from(rest.as_millis()).unwrap_or(u64::MAX));
        let benched = &self.keys[key.index];
        benched
            .refused
            .store(why == Bench::Refused, Ordering::Relaxed);
        benched.benched_until.fetch_max(until, Ordering::Relaxed);
        true
    }

    /// How many keys are healthy, refused and rate-limited now.
    pub fn status(&self) -> PoolStatus {
        let now = self.now();
        let mut status = PoolStatus {
            healthy: 0,
            refused: 0,
            rate_limited: 0,
        };
        for key in &self.keys {
            if key.benched_until.load(Ordering::Relaxed) <= now {
                status.healthy += 1;
            } else if key.refused.load(Ordering::Relaxed) {
                status.refused += 1;
            } else {
                status.rate_limited += 1;
            }
        }
        status
    }
}

/// The keys in a variable's value: comma-separated (the `OPENROUTER_KEYS` convention),
/// spaces and empty entries ignored.
pub fn split_keys(value: &SecretString) -> Vec<SecretString> {
    value
        .expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(|key| SecretString::from(key.to_owned()))
        .collect()
}

/// How long a 429's `Retry-After` asks to wait: seconds, or an HTTP date (RFC 9110
/// §10.2.3); [`DEFAULT_RATE_LIMIT_REST`] when absent or unreadable.
pub fn retry_after(value: Option<&HeaderValue>) -> Duration {
    let Some(text) = value.and_then(|v| v.to_str().ok()).map(str::trim) else {
        return DEFAULT_RATE_LIMIT_REST;
    };
    if let Ok(seconds) = text.parse::<u64>() {
        return Duration::from_secs(seconds.min(24 * 3600));
    }
    match httpdate_parse(text) {
        Some(at) => at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(24 * 3600)),
        None => DEFAULT_RATE_LIMIT_REST,
    }
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), as humantime reads RFC 2822-like
/// dates.
fn httpdate_parse(text: &str) -> Option<std::time::SystemTime> {
    let rest = text.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, clock, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? + 1;
    let rfc3339 = format!("{year}-{month:02}-{day:0>2}T{clock}Z");
    humantime::parse_rfc3339(&rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> Vec<SecretString> {
        list.iter().map(|k| SecretString::from(*k)).collect()
    }

    #[test]
    fn keys_are_used_in_turn_and_benched_ones_skipped() {
        let pool = KeyPool::new("Bearer {key}", &keys(&["a", "b", "c"])).unwrap();
        let picked: Vec<_> = (0..3).map(|_| pool.pick().unwrap().value).collect();
        assert_eq!(picked, ["Bearer a", "Bearer b", "Bearer c"]);
        assert!(picked.iter().all(HeaderValue::is_sensitive));
        let b = PickedKey {
            value: HeaderValue::from_static("Bearer b"),
            index: 1,
        };
        pool.bench(&b, Bench::Refused);
        let next: Vec<_> = (0..4).map(|_| pool.pick().unwrap().value).collect();
        assert!(!next.contains(&HeaderValue::from_static("Bearer b")));
        assert_eq!(
            pool.status(),
            PoolStatus {
                healthy: 2,
                refused: 1,
                rate_limited: 0
            }
        );
    }

    #[test]
    fn an_exhausted_pool_says_when_the_first_key_returns() {
        let pool = KeyPool::new("{key}", &keys(&["a", "b"])).unwrap();
        let a = pool.pick().unwrap();
        let b = pool.pick().unwrap();
        pool.bench(&a, Bench::Refused);
        pool.bench(&b, Bench::RateLimited(Duration::from_secs(30)));
        let exhausted = pool.pick().unwrap_err();
        let wait = exhausted.retry_after.unwrap();
        assert!(wait <= Duration::from_secs(30) && wait > Duration::from_secs(28));
        // The last key in use is never benched by a refusal; nor is one none is in use.
        assert!(!pool.bench(&b, Bench::Refused));
        assert!(pool.pick().unwrap_err().retry_after.unwrap() <= Duration::from_secs(30));
    }

    /// A 401 to every key, as an upstream that refuses the request rather than the key
    /// would answer, leaves one key in use; a refused key rests for a while, not forever;
    /// a rate limit rests at most an hour, whatever the upstream asks.
    #[test]
    fn refusals_never_take_the_last_key_out_of_turn() {
        let pool = KeyPool::new("{key}", &keys(&["a", "b", "c"])).unwrap();
        let benched: Vec<bool> = (0..3)
            .map(|_| pool.bench(&pool.pick().unwrap(), Bench::Refused))
            .collect();
        assert_eq!(benched, [true, true, false]);
        assert_eq!(pool.pick().unwrap().value, "c");
        assert_eq!(
            pool.status(),
            PoolStatus {
                healthy: 1,
                refused: 2,
                rate_limited: 0
            }
        );
        assert!(pool.bench(
            &pool.pick().unwrap(),
            Bench::RateLimited(Duration::from_secs(86_400))
        ));
        let wait = pool.pick().unwrap_err().retry_after.unwrap();
        assert!(
            wait <= REFUSED_REST && wait > REFUSED_REST - Duration::from_secs(5),
            "{wait:?}"
        );
        let pool = KeyPool::new("{key}", &keys(&["a"])).unwrap();
        assert!(pool.bench(
            &pool.pick().unwrap(),
            Bench::RateLimited(Duration::from_secs(86_400))
        ));
        let wait = pool.pick().unwrap_err().retry_after.unwrap();
        assert!(
            wait <= RATE_LIMITED_REST_MAX && wait > RATE_LIMITED_REST_MAX - Duration::from_secs(5)
        );
    }

    /// Workers share the pool: two refusals at once still leave a key in use.
    #[test]
    fn refusals_at_once_leave_a_key_in_use() {
        for _ in 0..200 {
            let pool = std::sync::Arc::new(KeyPool::new("{key}", &keys(&["a", "b"])).unwrap());
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|index| {
                    let (pool, barrier) = (pool.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let key = PickedKey {
                            value: HeaderValue::from_static("k"),
                            index,
                        };
                        barrier.wait();
                        pool.bench(&key, Bench::Refused)
                    })
                })
                .collect();
            let benched: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert_eq!(benched.iter().filter(|b| **b).count(), 1, "{benched:?}");
            assert_eq!(pool.status().healthy, 1);
        }
    }

    #[test]
    fn keys_split_on_commas_and_bad_values_are_refused() {
        let split = split_keys(&SecretString::from(" k1, ,k2 ,"));
        let exposed: Vec<&str> = split.iter().map(|k| k.expose_secret()).collect();
        assert_eq!(exposed, ["k1", "k2"]);
        assert!(matches!(
            KeyPool::new("Bearer", &keys(&["a"])),
            Err(CredentialError::NoPlaceholder)
        ));
        assert!(matches!(
            KeyPool::new("{key}", &keys(&["a\nb"])),
            Err(CredentialError::HeaderValue(1))
        ));
        assert!(matches!(
            KeyPool::new("{key}", &[]),
            Err(CredentialError::NoKeys)
        ));
    }

    #[test]
    fn path_prefixes_are_whole_segments() {
        assert_eq!(normalize_prefix("SeCrEt").unwrap(), "/SeCrEt");
        assert_eq!(normalize_prefix("/a/b/").unwrap(), "/a/b");
        assert_eq!(
            normalize_prefix("k-1.2_3~!$&'()*+,;=:@").unwrap(),
            "/k-1.2_3~!$&'()*+,;=:@"
        );
        // None of these would make a valid request target (`<`, `>`, `^` and the backtick
        // sent every request to the upstream's root), or they would be read again there.
        for bad in [
            "", "/", "a?b", "a#b", "a b", "../x", "a//b", "%2e", "a<b>", "a^b", "a`b", "a\"b",
            "a{b}", "a|b", "a\\b", "é",
        ] {
            assert!(normalize_prefix(bad).is_err(), "{bad}");
        }
    }

    /// RFC 9110 §10.2.3: delay-seconds or an HTTP-date.
    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("7"))),
            Duration::from_secs(7)
        );
        assert_eq!(retry_after(None), DEFAULT_RATE_LIMIT_REST);
        assert_eq!(
            retry_after(Some(&HeaderValue::from_static("soon"))),
            DEFAULT_RATE_LIMIT_REST
        );
        let past = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(retry_after(Some(&past)), Duration::ZERO);
        let future = httpdate_parse("Fri, 01 Jan 2100 00:00:00 GMT").unwrap();
        assert!(future > std::time::SystemTime::now());
    }
}
