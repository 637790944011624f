//! Verifying managed tokens on the request path: a bounded cache in front of the store,
//! shared by every worker, and last-used times written in the background.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{CredentialError, Credentials, TokenRecord};
use crate::store::now;

/// Most verified tokens kept in the cache; past this the cache is emptied, which only
/// costs store lookups.
const CACHE_CAPACITY: usize = 10_000;
/// Last-used times are written at most this often per token.
const USAGE_RESOLUTION_SECS: i64 = 60;
/// After a lookup the store failed, how long uncached tokens are refused without asking it;
/// then one lookup at a time asks again. A store that refuses connections (stopped, or
/// shutting down) fails a lookup only once the pool's patience runs out, which every
/// request would otherwise wait out in turn.
const STORE_RETRY: Duration = Duration::from_secs(1);

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
    store: StoreGate,
}

/// Whether the store is asked: always while it answers; after it failed, by one lookup at
/// a time, once a pause ([`STORE_RETRY`]) has passed.
#[derive(Debug)]
struct StoreGate {
    /// How long after a failure the store is not asked.
    retry: Duration,
    /// When a lookup last failed, while none has succeeded since.
    failed_at: Mutex<Option<Instant>>,
    /// Whether a lookup is asking a store that failed.
    probing: AtomicBool,
}

/// A lookup let through by the [`StoreGate`]; it reports how the store answered.
struct Pass<'g> {
    gate: &'g StoreGate,
    probe: bool,
}

impl StoreGate {
    fn new(retry: Duration) -> Self {
        Self {
            retry,
            failed_at: Mutex::new(None),
            probing: AtomicBool::new(false),
        }
    }

    /// Lets a lookup ask the store, or refuses it while the store is taken to be down.
    fn pass(&self) -> Result<Pass<'_>, CredentialError> {
        let failed_at = *self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
        let probe = match failed_at {
            None => false,
            Some(at) if at.elapsed() < self.retry => return Err(CredentialError::StoreDown),
            Some(_) if self.probing.swap(true, Ordering::AcqRel) => {
                return Err(CredentialError::StoreDown);
            }
            Some(_) => true,
        };
        Ok(Pass { gate: self, probe })
    }
}

impl Pass<'_> {
    /// The store answered.
    fn answered(self) {
        let mut failed_at = self
            .gate
            .failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if failed_at.take().is_some() {
            info!("the credential store answers again");
        }
    }

    /// The store failed the lookup.
    fn failed(self, error: &CredentialError) {
        let mut failed_at = self
            .gate
            .failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if failed_at.replace(Instant::now()).is_none() {
            warn!(%error, "the credential store failed a lookup; tokens not in the cache are refused 503 until it answers, asked again every second");
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.gate.probing.store(false, Ordering::Release);
        }
    }
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
            store: StoreGate::new(STORE_RETRY),
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
                let pass = self.store.pass()?;
                let found = match self.credentials.lookup_hash(&hash).await {
                    Ok(found) => {
                        pass.answered();
                        found.map(Arc::new)
                    }
                    Err(error) => {
                        pass.failed(&error);
                        return Err(error);
                    }
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(gate: &StoreGate) -> bool {
        matches!(gate.pass(), Err(CredentialError::StoreDown))
    }

    #[test]
    fn a_store_that_failed_is_asked_again_by_one_lookup_at_a_time_after_a_pause() {
        let pause = Duration::from_millis(50);
        let gate = StoreGate::new(pause);
        // Answering: every lookup asks it, at once.
        let (first, second) = (gate.pass().unwrap(), gate.pass().unwrap());
        first.failed(&CredentialError::StoreDown);
        drop(second);
        // Failed: no lookup asks it during the pause...
        assert!(refused(&gate));
        std::thread::sleep(pause + Duration::from_millis(10));
        // ...then one at a time.
        let probe = gate.pass().unwrap();
        assert!(refused(&gate));
        probe.failed(&CredentialError::StoreDown);
        assert!(refused(&gate), "a failed probe starts another pause");
        std::thread::sleep(pause + Duration::from_millis(10));
        gate.pass().unwrap().answered();
        let (first, second) = (gate.pass().unwrap(), gate.pass().unwrap());
        drop((first, second));
        assert!(!refused(&gate));
    }
}
