//! Retention: events older than `[audit] retention` are deleted in the background, a chain's
//! oldest first and in batches, each batch in one transaction with an **anchor** (a record
//! sealed under the chain key, apart from checkpoints) saying up to which event the chain
//! was deleted and what that event's hash was. `audit verify` starts each chain at its
//! anchor, so a log trimmed by retention still verifies, while a deletion retention did
//! not make (a chain's start cut further, or a gap) is still caught. Each chain trimmed is
//! also recorded as a `retention` event in the running chain.

use std::sync::mpsc::Sender;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::chain::{ChainKey, Checkpoint, GENESIS};
use super::event::{self, Form};
use super::now_ms;
use super::query::millis;
use super::store::{AuditStore, AuditStoreError};

/// How often retention runs (and once at start).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3600);

/// The most events deleted in one transaction.
const BATCH: i64 = 10_000;

/// One chain trimmed by a retention run, as the audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trimmed {
    /// The chain trimmed.
    pub chain: String,
    /// Its events up to this one are gone.
    pub through_seq: i64,
    /// How many events were deleted.
    pub events: u64,
    /// Events of requests that started before this were due (Unix milliseconds).
    pub cutoff_ms: i64,
}

/// Runs retention now and every [`RETENTION_INTERVAL`], keeping `keep` of events; each
/// chain trimmed is sent to `trimmed` for the audit log to record.
pub async fn run(store: AuditStore, key: ChainKey, keep: Duration, trimmed: Sender<Trimmed>) {
    loop {
        match trim(&store, &key, keep, SystemTime::now()).await {
            Ok(done) => {
                for chain in done {
                    info!(chain = %chain.chain, through_seq = chain.through_seq, events = chain.events, "audit retention: old events deleted");
                    if trimmed.send(chain).is_err() {
                        return;
                    }
                }
            }
            Err(error) => warn!(%error, "audit retention failed; it runs again in an hour"),
        }
        tokio::time::sleep(RETENTION_INTERVAL).await;
    }
}

/// Deletes, from every chain, the events before the first of a request that started
/// within `keep` of `now` (a whole chain when none did), in batches with their anchors.
/// Only events whose links verify are deleted, and their age is read from their content
/// (which the hash covers; the time column is not): so neither an edited time nor a gap can
/// make retention delete, and seal over, what `audit verify` would have caught.
pub async fn trim(
    store: &AuditStore,
    key: &ChainKey,
    keep: Duration,
    now: SystemTime,
) -> Result<Vec<Trimmed>, AuditStoreError> {
    let cutoff_ms = now_ms(now) - millis(keep);
    let mut done = Vec::new();
    for chain in store.chains().await? {
        // The chain starts at its highest anchor, or at its genesis.
        let anchors = store.anchors(&chain).await?;
        let (mut at, mut head) = match anchors.first() {
            Some(anchor) if anchor.mac == key.seal_anchor(anchor) => {
                (anchor.seq, anchor.head.clone())
            }
            Some(_) => {
                warn!(chain = %chain, "audit retention: a retention anchor is not sealed by this key; the chain is left for audit verify");
                continue;
            }
            None => (0, GENESIS.to_owned()),
        };
        // The anchors the next one replaces: the chain's sealed ones (a forged one is left
        // for `audit verify` to report), then each this run writes.
        let mut replaced: Vec<i64> = anchors
            .iter()
            .filter(|anchor| anchor.mac == key.seal_anchor(anchor))
            .map(|anchor| anchor.seq)
            .collect();
        let mut events = 0;
        loop {
            let page = store.events(&chain, at, BATCH).await?;
            let (mut through, mut through_head) = (at, head.clone());
            let mut stop = page.len() < usize::try_from(BATCH).unwrap_or(usize::MAX);
            for event in &page {
                let follows = event.seq == through + 1 && event.prev_hash == through_head;
                let Some(form) = event::form(key, event).filter(|_| follows) else {
                    warn!(chain = %chain, seq = event.seq, "audit retention: an event does not link; the chain is left for audit verify from there");
                    stop = true;
                    break;
                };
                // The time the hash covers: the column's, or in an event of an earlier
                // build, the payload's.
                let time = match form {
                    Form::Fields => Some(event.time_ms),
                    Form::Payload => content_time(&event.payload),
                };
                if time.is_none_or(|time| time >= cutoff_ms) {
                    stop = true;
                    break;
                }
                through = event.seq;
                through_head.clone_from(&event.hash);
            }
            if through > at {
                let mut anchor = Checkpoint {
                    chain: chain.clone(),
                    seq: through,
                    head: through_head.clone(),
                    time_ms: now_ms(now),
                    mac: String::new(),
                };
                anchor.mac = key.seal_anchor(&anchor);
                events += store.trim(&anchor, &replaced).await?;
                replaced = vec![anchor.seq];
                (at, head) = (through, through_head);
            }
            if stop {
                break;
            }
        }
        // Sealed anchors below the chain's highest that no trim replaced this run (left by
        // builds that kept every anchor): nothing reads them.
        let below: Vec<i64> = replaced.into_iter().filter(|&seq| seq < at).collect();
        if !below.is_empty() {
            store.drop_anchors(&chain, &below).await?;
        }
        if events > 0 {
            done.push(Trimmed {
                chain,
                through_seq: at,
                events,
                cutoff_ms,
            });
        }
    }
    Ok(done)
}

/// The `time_ms` an event's content gives.
fn content_time(payload: &str) -> Option<i64> {
    serde_json::from_str::<serde_json::Value>(payload).ok()?["time_ms"].as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreLocation;
    use secrecy::SecretString;

    /// A chain left with several sealed anchors (as builds that kept every anchor left
    /// them) keeps only its highest after the next run, even when it has nothing left to
    /// trim; an anchor the key did not seal stays.
    #[tokio::test]
    async fn a_chain_keeps_only_its_highest_sealed_anchor() {
        let dir = tempfile::tempdir().unwrap();
        let store = AuditStore::open(&StoreLocation::DataDir(dir.path().to_owned()))
            .await
            .unwrap();
        let key = ChainKey::new(SecretString::from("k".repeat(32)));
        let chain = "c".repeat(32);
        let anchor = |seq: i64| {
            let mut anchor = Checkpoint {
                chain: chain.clone(),
                seq,
                head: format!("head-{seq}"),
                time_ms: 1,
                mac: String::new(),
            };
            anchor.mac = key.seal_anchor(&anchor);
            anchor
        };
        // Each written without replacing the one before, as earlier builds did.
        for seq in [10_000, 20_000, 30_000] {
            store.trim(&anchor(seq), &[]).await.unwrap();
        }
        let forged = Checkpoint {
            mac: "forged".to_owned(),
            ..anchor(5)
        };
        store.trim(&forged, &[]).await.unwrap();
        assert_eq!(store.anchors(&chain).await.unwrap().len(), 4);

        let trimmed = trim(&store, &key, Duration::from_secs(60), SystemTime::now())
            .await
            .unwrap();
        assert!(trimmed.is_empty(), "{trimmed:?}");
        let left: Vec<i64> = store
            .anchors(&chain)
            .await
            .unwrap()
            .iter()
            .map(|anchor| anchor.seq)
            .collect();
        assert_eq!(left, [30_000, 5]);
    }
}
