//! The credential the gateway adds to requests to an upstream, in place of the client's:
//! a header filled from a pool of keys (`Authorization: Bearer {key}`, `X-Api-Key: {key}`),
//! and a secret path prefix (an Outline management URL's secret segment).
//!
//! Keys are used in turn. One the upstream refuses (401, 403) is benched until the process
//! restarts; one it rate-limits (429) until its `Retry-After` (60 s when it gives none).
//! The pool is shared by every worker; picking a key takes no lock.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

/// How long a rate-limited key rests when the upstream says nothing of it.
pub const DEFAULT_RATE_LIMIT_REST: Duration = Duration::from_secs(60);

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
    #[error("the path prefix must be one or more path segments without '?', '#' or spaces")]
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

/// `/segment[/segment...]`, from a prefix given with or without its slashes.
fn normalize_prefix(prefix: &str) -> Result<String, CredentialError> {
    let trimmed = prefix.trim().trim_matches('/');
    let valid = !trimmed.is_empty()
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'?' | b'#' | b'%'))
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
}

struct Key {
    /// The header's value, marked sensitive (never indexed by HPACK, shown as such by
    /// `Debug`).
    value: HeaderValue,
    /// Milliseconds after the pool's epoch until which the key rests: 0 when healthy,
    /// `u64::MAX` until the process restarts.
    benched_until: AtomicU64,
}

/// Why a key was benched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bench {
    /// The upstream refused it (401 or 403): until the process restarts.
    Refused,
    /// The upstream rate-limited it (429): for this long.
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
    /// Keys refused by the upstream (401, 403), benched until restart.
    pub refused: usize,
    /// Keys rate-limited by the upstream (429), benched for a while.
    pub rate_limited: usize,
}

impl KeyPool {
    fn new(format: &str, keys_given: &[SecretString]) -> Result<Self, CredentialError> {
        let keys = keys_given;
        if !format.contains("{key}") {
            return Err(CredentialError::NoPlaceholder);
        }
        if keys.is_empty() {
            return Err(CredentialError::NoKeys);
        }
        let keys = keys
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
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            keys,
            secrets: keys_given.to_vec(),
            next: AtomicUsize::new(0),
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
            .filter(|until| *until != u64::MAX)
            .min();
        Err(KeysExhausted {
            retry_after: soonest.map(|until| Duration::from_millis(until.saturating_sub(now))),
        })
    }

    /// Benches `key` for `why`.
    pub fn bench(&self, key: &PickedKey, why: Bench) {
        let until = match why {
            Bench::Refused => u64::MAX,
            Bench::RateLimited(rest) => self
                .now()
                .saturating_add(u64::try_from(rest.as_millis()).unwrap_or(u64::MAX - 1))
                .min(u64::MAX - 1),
        };
        self.keys[key.index]
            .benched_until
            .fetch_max(until, Ordering::Relaxed);
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
            match key.benched_until.load(Ordering::Relaxed) {
                u64::MAX => status.refused += 1,
                until if until > now => status.rate_limited += 1,
                _ => status.healthy += 1,
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
        pool.bench(&b, Bench::Refused);
        assert_eq!(pool.pick().unwrap_err().retry_after, None);
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
        for bad in ["", "/", "a?b", "a b", "../x", "a//b", "%2e"] {
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
