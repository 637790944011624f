//! `portcullis audit verify`: walks every chain from its first event and reports the first
//! broken link of each: a missing sequence number (a deleted event), a link that does not
//! follow from the previous event (an insertion, a deletion or a reordering), a hash that
//! does not match the event (an edit), and in events of earlier builds, whose hash covers
//! the payload alone, columns that disagree with it; a checkpoint whose MAC is wrong or
//! whose head the chain does not reach (a cut tail). A checkpoint taken from the
//! operational log proves the same for events the database no longer holds a checkpoint
//! for. A chain trimmed by retention is walked from its retention anchor
//! ([`super::retention`]). A `spool_loss` event (a corrupted spool record skipped at replay)
//! is reported as a failure: its events are lost.

use std::collections::BTreeMap;

use serde_json::Value;

use super::SPOOL_LOSS;
use super::chain::{ChainKey, Checkpoint, GENESIS};
use super::event::{self, Form};
use super::store::{AuditStore, AuditStoreError, Column, StoredEvent};
use super::succession::{CHAIN_START, ChainPoint, FOLLOWS, followed};

/// Events read at a time.
const PAGE: i64 = 10_000;

/// What a verification found.
#[derive(Debug, Default)]
pub struct Verification {
    /// Chains walked.
    pub chains: usize,
    /// Events whose links held.
    pub events: u64,
    /// Checkpoints that matched.
    pub checkpoints: usize,
    /// The first broken link of each broken chain, and any checkpoint that does not hold.
    pub broken: Vec<String>,
}

impl Verification {
    /// Whether every chain and checkpoint held.
    pub fn passed(&self) -> bool {
        self.broken.is_empty()
    }
}

/// Verifies every chain in `store` under `key`, and `external`: checkpoints taken from
/// the operational log (each must be signed by `key`, name a chain the store holds, and
/// be reached by it). A store with no chain at all fails: an audit log that was emptied,
/// or a wrong data directory, must not pass.
pub async fn verify(
    store: &AuditStore,
    key: &ChainKey,
    external: &[Checkpoint],
) -> Result<Verification, AuditStoreError> {
    let mut report = Verification::default();
    let chains = store.chains().await?;
    if chains.is_empty() {
        report
            .broken
            .push("the store holds no audit event or checkpoint at all".to_owned());
    }
    for checkpoint in external {
        if checkpoint.mac != key.seal(checkpoint) {
            report.broken.push(format!(
                "chain {}: the logged checkpoint at event {} is not signed by this key",
                checkpoint.chain, checkpoint.seq
            ));
        } else if !chains.contains(&checkpoint.chain) {
            report.broken.push(format!(
                "chain {}: a logged checkpoint names a chain the store does not hold (deleted whole)",
                checkpoint.chain
            ));
        }
    }
    for chain in chains {
        report.chains += 1;
        let mut checkpoints: BTreeMap<i64, Vec<Checkpoint>> = BTreeMap::new();
        let logged = external.iter().filter(|c| c.chain == chain).cloned();
        for checkpoint in store.checkpoints(&chain).await?.into_iter().chain(logged) {
            checkpoints
                .entry(checkpoint.seq)
                .or_default()
                .push(checkpoint);
        }
        if let Err(broken) = walk(store, key, &chain, &checkpoints, &mut report).await? {
            report.broken.push(format!("chain {chain}: {broken}"));
        }
    }
    Ok(report)
}

/// Walks `chain`; `Ok(Err(..))` names its first broken link.
async fn walk(
    store: &AuditStore,
    key: &ChainKey,
    chain: &str,
    checkpoints: &BTreeMap<i64, Vec<Checkpoint>>,
    report: &mut Verification,
) -> Result<Result<(), String>, AuditStoreError> {
    // A chain trimmed by retention starts after its highest anchor; any other starts at 1.
    let (start, mut head) = match retention_anchor(store, key, chain).await? {
        Ok(Some(anchor)) => (anchor.seq, anchor.head),
        Ok(None) => (0, GENESIS.to_owned()),
        Err(broken) => return Ok(Err(broken)),
    };
    let mut last = start;
    // Read from the lowest number there is: a row numbered at or below the start is an
    // insertion.
    let mut cursor = i64::MIN;
    // Checkpoints of an empty chain (seq 0) sign the genesis; one at the anchor, its head.
    if let Err(broken) = check_checkpoints(key, checkpoints.get(&start), &head, report) {
        return Ok(Err(broken));
    }
    loop {
        let page = store.events(chain, cursor, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            if event.seq == cursor {
                return Ok(Err(format!(
                    "event {} is stored twice (inserted)",
                    event.seq
                )));
            }
            cursor = event.seq;
            if event.seq <= start {
                return Ok(Err(format!(
                    "event {} is numbered before the chain's first (inserted)",
                    event.seq
                )));
            }
            if event.seq != last + 1 {
                return Ok(Err(format!(
                    "events {} to {} are missing (deleted)",
                    last + 1,
                    event.seq - 1
                )));
            }
            if event.prev_hash != head {
                return Ok(Err(format!(
                    "event {} does not follow event {last} (an event was inserted, deleted or moved)",
                    event.seq
                )));
            }
            let Some(form) = event::form(key, event) else {
                return Ok(Err(format!(
                    "event {} does not match its hash (edited)",
                    event.seq
                )));
            };
            if matches!(event.kind.as_str(), CHAIN_START | FOLLOWS)
                && let Err(broken) = named_points_held(store, key, event).await?
            {
                return Ok(Err(broken));
            }
            if form == Form::Payload
                && let Err(column) = columns_agree(event)
            {
                return Ok(Err(format!(
                    "event {}: its {column} column disagrees with its content (edited)",
                    event.seq
                )));
            }
            if event.kind == SPOOL_LOSS {
                // Not a broken link: the chain says, under its key, that events were lost.
                report.broken.push(format!(
                    "chain {chain}: event {} records a corrupted spool record skipped at replay: its events are lost",
                    event.seq
                ));
            }
            last = event.seq;
            head.clone_from(&event.hash);
            report.events += 1;
            if let Err(broken) = check_checkpoints(key, checkpoints.get(&last), &head, report) {
                return Ok(Err(broken));
            }
        }
    }
    // Every row the walk covered was read and linked: one the pages did not reach (a
    // duplicate number, a number below any a walk starts from) is an insertion. Counted
    // over the numbers walked, so that events a running gateway appends meanwhile do not
    // count; a trim by retention meanwhile moves the start, which is read again.
    if let Err(broken) = every_row_linked(store, key, chain, start, last).await? {
        return Ok(Err(broken));
    }
    // Past the end: a signed checkpoint shows a cut tail; an unsigned one, a forgery.
    let beyond = || checkpoints.range(last + 1..).flat_map(|(_, at)| at);
    if let Some(signed) = beyond().find(|c| c.mac == key.seal(c)) {
        return Ok(Err(format!(
            "a checkpoint signs event {} but the chain ends at event {last} (cut short)",
            signed.seq
        )));
    }
    if let Some(forged) = beyond().next() {
        return Ok(Err(format!(
            "the checkpoint at event {} is not signed by this key (forged or edited)",
            forged.seq
        )));
    }
    Ok(Ok(()))
}

/// Whether `chain` holds no row but the events `start + 1 ..= last` that the walk linked:
/// none numbered at or below the start, none twice. Retention may have trimmed the chain
/// since the walk began: then the rows from its new anchor on are counted.
async fn every_row_linked(
    store: &AuditStore,
    key: &ChainKey,
    chain: &str,
    start: i64,
    last: i64,
) -> Result<Result<(), String>, AuditStoreError> {
    let inserted = |rows: i64, from: i64| {
        format!(
            "the chain holds {rows} event rows numbered up to {last}, but {} link from event {} (inserted)",
            last - from,
            from + 1
        )
    };
    if let Some(lowest) = store.lowest_event(chain).await?
        && lowest <= start
    {
        return Ok(Err(format!(
            "event {lowest} is numbered before the chain's first (inserted)"
        )));
    }
    let rows = store.count_events(chain, start, last).await?;
    if rows == last - start {
        return Ok(Ok(()));
    }
    let trimmed_to = match retention_anchor(store, key, chain).await? {
        Ok(Some(anchor)) if anchor.seq > start => anchor.seq.min(last),
        Ok(_) => return Ok(Err(inserted(rows, start))),
        Err(broken) => return Ok(Err(broken)),
    };
    let rows = store.count_events(chain, trimmed_to, last).await?;
    if rows == last - trimmed_to {
        return Ok(Ok(()));
    }
    Ok(Err(inserted(rows, trimmed_to)))
}

/// The highest retention anchor of `chain`, or `Err` naming one not sealed by `key`.
async fn retention_anchor(
    store: &AuditStore,
    key: &ChainKey,
    chain: &str,
) -> Result<Result<Option<Checkpoint>, String>, AuditStoreError> {
    let anchors = store.anchors(chain).await?;
    if let Some(forged) = anchors.iter().find(|a| a.mac != key.seal_anchor(a)) {
        return Ok(Err(format!(
            "the retention anchor at event {} is not signed by this key (forged or edited)",
            forged.seq
        )));
    }
    Ok(Ok(anchors.into_iter().next()))
}

/// Whether the store holds every point of other chains that `naming` (a `chain_start` or
/// `follows` event) names ([`super::succession`]): none of them was deleted, nor cut short
/// of it (but by retention, which its anchor shows).
async fn named_points_held(
    store: &AuditStore,
    key: &ChainKey,
    naming: &StoredEvent,
) -> Result<Result<(), String>, AuditStoreError> {
    let Ok(payload) = serde_json::from_str::<Value>(&naming.payload) else {
        return Ok(Ok(()));
    };
    for ChainPoint { chain, seq, head } in followed(&payload) {
        let trimmed_past = match retention_anchor(store, key, &chain).await? {
            Ok(anchor) => anchor.is_some_and(|anchor| anchor.seq >= seq),
            Err(broken) => return Ok(Err(broken)),
        };
        let held = trimmed_past
            || if seq == 0 {
                !store.checkpoints(&chain).await?.is_empty()
            } else {
                store.holds(&chain, seq, &head).await?
            };
        if !held {
            return Ok(Err(format!(
                "event {} names chain {chain} at event {seq}, which the store does not hold (deleted or cut short)",
                naming.seq
            )));
        }
    }
    Ok(Ok(()))
}

fn check_checkpoints(
    key: &ChainKey,
    checkpoints: Option<&Vec<Checkpoint>>,
    head: &str,
    report: &mut Verification,
) -> Result<(), String> {
    for checkpoint in checkpoints.into_iter().flatten() {
        if checkpoint.mac != key.seal(checkpoint) {
            return Err(format!(
                "the checkpoint at event {} is not signed by this key (forged or edited)",
                checkpoint.seq
            ));
        }
        if checkpoint.head != head {
            return Err(format!(
                "the checkpoint at event {} signs another head (the events up to it were rewritten)",
                checkpoint.seq
            ));
        }
        report.checkpoints += 1;
    }
    Ok(())
}

/// Whether the columns of an event whose hash covers its payload alone ([`Form::Payload`])
/// say what the payload says; the name of the first that does not.
fn columns_agree(event: &StoredEvent) -> Result<(), &'static str> {
    let Ok(payload) = serde_json::from_str::<Value>(&event.payload) else {
        return Err("payload");
    };
    let disagrees = event
        .columns()
        .into_iter()
        .find(|(name, column)| match column {
            Column::Text(text) => payload[name].as_str() != *text,
            Column::Number(number) => payload[name].as_i64() != *number,
        });
    match disagrees {
        Some((column, _)) => Err(column),
        None => Ok(()),
    }
}
