//! Verifying managed tokens on the request path: a bounded cache in front of the store,
//! shared by every worker, and last-used times written in the background.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{CredentialError, Credentials, TokenRecord};
use crate::store::now;
use crate::upstream::{Breaker, BreakerSettings, CircuitState, Outcome};

/// Most verified tokens kept in the cache; past this the cache is emptied, which only
/// costs store lookups.
const CACHE_CAPACITY: usize = 10_000;
/// Last-used times are written at most this often per token.
const USAGE_RESOLUTION_SECS: i64 = 60;
/// The breaker in front of the store: one failed lookup opens it (a store that refuses
/// connections, stopped or shutting down, fails a lookup only once the pool's patience runs
/// out, which every request would otherwise wait out in turn), uncached tokens are refused
/// without asking it for a second, then one lookup at a time asks again, and one answer
/// closes it.
const STORE_BREAKER: BreakerSettings = BreakerSettings {
    failure_threshold: 1,
    recovery_timeout: Duration::from_secs(1),
    success_threshold: 1,
    half_open_probes: 1,
};

/// A token's keyed digest: the cache's key, so no token is held in memory.
type Digest = [u8; 32];

/// What a token lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A live token.
    Valid(Arc<TokenRecord>),
    /// Not a live token; the caller answers every reason alike, the record keeps it.
    Invalid(Invalid),
}

/// Why a token is not live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not in the managed format (or its checksum is wrong).
    Malformed,
    /// No record has it.
    Unknown,
    /// Past its expiry (or its rotation overlap).
    Expired,
    /// Revoked.
    Revoked,
}

/// Verified records by token digest, with when they were fetched.
type Cache = HashMap<Digest, (Arc<TokenRecord>, Instant)>;

/// Records by id, with when they were fetched.
type ById = HashMap<String, (Arc<TokenRecord>, Instant)>;

/// Verifies managed tokens, caching what the store said for at most `ttl`.
#[derive(Debug)]
pub struct TokenVerifier {
    credentials: Credentials,
    ttl: Duration,
    cache: Mutex<Cache>,
    /// Records by id, as streams opened with them recheck them.
    rechecked: Mutex<ById>,
    usage: Mutex<Usage>,
    store: Breaker,
}

#[derive(Debug, Default)]
struct Usage {
    last_marked: HashMap<String, i64>,
    pending: Vec<String>,
}

impl TokenVerifier {
    /// Verifies against `credentials`, trusting a cached answer for `ttl`.
    pub fn new(credentials: Credentials, ttl: Duration) -> Self {
        Self {
            credentials,
            ttl,
            cache: Mutex::new(HashMap::new()),
            rechecked: Mutex::new(HashMap::new()),
            usage: Mutex::new(Usage::default()),
            store: Breaker::new(STORE_BREAKER),
        }
    }

    /// The credentials behind this verifier.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Whether `token` is a live managed token. A malformed token is refused without a
    /// store lookup; expiry is checked against the clock even for cached tokens.
    pub async fn verify(&self, token: &str) -> Result<Verdict, CredentialError> {
        if !super::token::is_well_formed(token) {
            return Ok(Verdict::Invalid(Invalid::Malformed));
        }
        let key = self.credentials.hasher.digest(token);
        let cached = self
            .cache()
            .get(&key)
            .filter(|(_, fetched)| fetched.elapsed() < self.ttl)
            .map(|(record, _)| record.clone());
        let record = match cached {
            Some(record) => Some(record),
            None => {
                let hash = crate::base::hex::encode(&key);
                let permit = self.store.admit().map_err(|_| CredentialError::StoreDown)?;
                let before = self.store.state();
                let found = self.credentials.lookup_hash(&hash).await;
                permit.record(match found {
                    Ok(_) => Outcome::Success,
                    Err(_) => Outcome::Failure,
                });
                match (before, self.store.state(), &found) {
                    (CircuitState::Closed, CircuitState::Open, Err(error)) => {
                        warn!(%error, "the credential store failed a lookup; tokens not in the cache are refused 503 until it answers, asked again every second");
                    }
                    (CircuitState::HalfOpen, CircuitState::Closed, _) => {
                        info!("the credential store answers again");
                    }
                    _ => {}
                }
                let found = found?.map(Arc::new);
                if let Some(record) = &found {
                    let mut cache = self.cache();
                    if cache.len() >= CACHE_CAPACITY {
                        cache.clear();
                    }
                    cache.insert(key, (record.clone(), Instant::now()));
                }
                found
            }
        };
        let at = now();
        match record {
            Some(record) if record.is_live_at(at) => {
                self.note_use(&record.id, at);
                Ok(Verdict::Valid(record))
            }
            Some(record) if record.revoked_at.is_some() => Ok(Verdict::Invalid(Invalid::Revoked)),
            Some(_) => Ok(Verdict::Invalid(Invalid::Expired)),
            None => Ok(Verdict::Invalid(Invalid::Unknown)),
        }
    }

    /// Forgets every cached answer, so a revocation made here applies at once.
    pub fn forget_cached(&self) {
        self.cache().clear();
        self.rechecked().clear();
    }

    /// Whether the managed credential `id` is still live (not revoked, past its expiry or
    /// its rotation overlap), for a stream opened with it. The store's answer is trusted
    /// for half the cache window, so that a stream rechecking every
    /// [`Self::recheck_interval`] learns of a revocation within the window.
    pub async fn still_live(&self, id: &str) -> Result<bool, CredentialError> {
        let cached = self
            .rechecked()
            .get(id)
            .filter(|(_, fetched)| fetched.elapsed() < self.ttl / 2)
            .map(|(record, _)| record.clone());
        let record = match cached {
            Some(record) => record,
            None => {
                let record = match self.credentials.show(id).await {
                    Ok(record) => Arc::new(record),
                    Err(CredentialError::NotFound(_)) => return Ok(false),
                    Err(error) => return Err(error),
                };
                let mut rechecked = self.rechecked();
                if rechecked.len() >= CACHE_CAPACITY {
                    rechecked.clear();
                }
                rechecked.insert(id.to_owned(), (record.clone(), Instant::now()));
                record
            }
        };
        Ok(record.is_live_at(now()))
    }

    /// How often a stream rechecks the credential it was opened with.
    pub fn recheck_interval(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(100))
    }

    fn rechecked(&self) -> std::sync::MutexGuard<'_, ById> {
        self.rechecked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cache, even after a thread panicked holding it: a revocation must clear it
    /// whatever happened, and every change to it is one map operation, so a panic cannot
    /// leave it half-written.
    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn note_use(&self, id: &str, at: i64) {
        let Ok(mut usage) = self.usage.lock() else {
            return;
        };
        let due = usage
            .last_marked
            .get(id)
            .is_none_or(|last| at - last >= USAGE_RESOLUTION_SECS);
        if due {
            usage.last_marked.insert(id.to_owned(), at);
            usage.pending.push(id.to_owned());
        }
    }

    /// Writes the pending last-used times to the store.
    pub async fn flush_usage(&self) -> Result<(), CredentialError> {
        let pending = match self.usage.lock() {
            Ok(mut usage) => std::mem::take(&mut usage.pending),
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        let at = now();
        self.credentials.mark_used(&pending, at).await
    }

    /// Flushes last-used times every `interval`, forever; run it in the background.
    pub async fn flush_usage_every(&self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        loop {
            ticker.tick().await;
            if let Err(error) = self.flush_usage().await {
                tracing::warn!(%error, "cannot record when tokens were last used");
            }
        }
    }
}
