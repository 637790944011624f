//! The audit writer's own connection to `audit.db`, on SQLite: it appends each batch
//! (events and checkpoint) in one transaction, on the recorder's thread, binding each value
//! where it lies. Reads, and every write to PostgreSQL, go through [`super::store`]; this
//! exists because appending is the one thing done for every request, and sqlx's SQLite
//! driver copies each bound value and hands each statement to a thread of its own, which
//! cost the audit log a third of the gateway's throughput (bench/RESULTS.md, 2026-11-27).
//!
//! A batch's events are inserted a few at a time as the recorder takes them
//! ([`SqliteAppender::stage`]), while they are still in the CPU's cache, and committed at
//! the batch's end. The recorder takes what has come in one pass a batch, so the write
//! lock is held about as long as when the whole batch was inserted at its commit: other
//! writers (retention, `portcullis token`) get it between batches.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::chain::Checkpoint;
use super::store::{AUDIT_DB_FILE, AuditStoreError, EVENT_COLUMNS, StoredEvent};

/// Events are staged this many at a time: few enough to be in the CPU's cache still,
/// enough to share the statement's lookup. Inserted at the batch's end instead, every
/// event was read back from memory (bench/RESULTS.md, 2026-11-28).
const STAGE_EVENTS: usize = 64;

/// How long a write waits for a lock another connection holds (a search, retention).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An open connection that appends to `audit.db` (whose tables [`super::store`] created).
#[derive(Debug)]
pub struct SqliteAppender {
    connection: Connection,
    /// The event insert, made once.
    insert_sql: String,
    /// The batch whose first events are inserted in the open transaction: its first
    /// event's chain and sequence number, and how many of its events.
    staged: Option<Staged>,
    /// Staging failed in this batch: the rest waits for [`SqliteAppender::append`].
    failed: bool,
}

/// The events of a batch inserted so far, in a transaction not yet committed.
#[derive(Debug)]
struct Staged {
    chain_id: String,
    seq: i64,
    events: usize,
}

impl Staged {
    /// Whether `batch` is the batch staged (it starts with the staged events).
    fn starts(&self, batch: &[StoredEvent]) -> bool {
        batch.len() >= self.events
            && batch
                .first()
                .is_some_and(|first| first.seq == self.seq && first.chain_id == self.chain_id)
    }
}

impl SqliteAppender {
    /// Opens `audit.db` in `dir` for appending.
    pub fn open(dir: &Path) -> Result<Self, AuditStoreError> {
        let connection = Connection::open(dir.join(AUDIT_DB_FILE))?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        // WAL with full sync: a committed batch survives a power cut. The WAL is folded
        // into the file every 256 pages (16 MiB in a file the store created with 64 KiB
        // pages; 1 MiB in an older one, of 4 KiB pages), not left to grow; a batch's pages
        // stay in memory until it commits rather than being written out twice (the
        // cache's size, in KiB).
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "wal_autocheckpoint", 256)?;
        connection.pragma_update(None, "cache_size", -16_384)?;
        Ok(Self {
            connection,
            insert_sql: format!(
                "INSERT INTO audit_events ({EVENT_COLUMNS}) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ),
            staged: None,
            failed: false,
        })
    }

    /// Inserts the events of `batch` not inserted yet, once [`STAGE_EVENTS`] of them
    /// wait, in the batch's transaction (begun here), without committing: [`Self::append`]
    /// with the same batch, grown since, commits them. On a failure nothing of the batch
    /// stays inserted, and staging stops until that append (which reports the failure).
    pub fn stage(&mut self, batch: &[StoredEvent]) {
        let staged = self.staged.as_ref().map_or(0, |staged| staged.events);
        if self.failed || batch.len() < staged + STAGE_EVENTS {
            return;
        }
        if let Err(error) = self.insert_rest(batch) {
            tracing::debug!(%error, "audit log: staging a batch failed; its write retries it whole");
            self.discard();
            self.failed = true;
        }
    }

    /// Stores `batch` and `checkpoint` (if any) in one transaction, all or nothing: what
    /// [`Self::stage`] inserted of it, the rest, and the checkpoint.
    pub fn append(
        &mut self,
        batch: &[StoredEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditStoreError> {
        self.failed = false;
        let stored = self.insert_rest(batch).and_then(|()| {
            if let Some(checkpoint) = checkpoint {
                self.connection
                    .prepare_cached(
                        "INSERT INTO audit_checkpoints (chain_id, seq, head_hash, time_ms, mac) \
                         VALUES (?, ?, ?, ?, ?)",
                    )?
                    .execute(params![
                        checkpoint.chain,
                        checkpoint.seq,
                        checkpoint.head,
                        checkpoint.time_ms,
                        checkpoint.mac
                    ])?;
            }
            self.connection.execute_batch("COMMIT")?;
            self.staged = None;
            Ok(())
        });
        if stored.is_err() {
            self.discard();
        }
        stored
    }

    /// Inserts the events of `batch` after those staged, in the open transaction (begun
    /// here when none is, and begun again when it holds another batch).
    fn insert_rest(&mut self, batch: &[StoredEvent]) -> Result<(), AuditStoreError> {
        let from = match &self.staged {
            Some(staged) if staged.starts(batch) => staged.events,
            Some(_) => {
                self.discard();
                0
            }
            None => 0,
        };
        self.begin()?;
        let mut insert = self.connection.prepare_cached(&self.insert_sql)?;
        for event in &batch[from..] {
            insert_event(&mut insert, event)?;
        }
        drop(insert);
        self.staged = batch.first().map(|first| Staged {
            chain_id: first.chain_id.clone(),
            seq: first.seq,
            events: batch.len(),
        });
        Ok(())
    }

    /// Opens the batch's transaction unless it is open.
    fn begin(&self) -> rusqlite::Result<()> {
        if self.connection.is_autocommit() {
            self.connection.execute_batch("BEGIN")?;
        }
        Ok(())
    }

    /// Rolls back what is staged.
    fn discard(&mut self) {
        self.staged = None;
        if !self.connection.is_autocommit() {
            let _ = self.connection.execute_batch("ROLLBACK");
        }
    }
}

fn insert_event(insert: &mut rusqlite::Statement<'_>, event: &StoredEvent) -> rusqlite::Result<()> {
    insert.execute(params![
        event.chain_id,
        event.seq,
        event.time_ms,
        event.kind,
        event.request_id,
        event.principal,
        event.tenant,
        event.status,
        event.decision,
        event.route,
        event.path,
        event.client_ip,
        event.payload,
        event.prev_hash,
        event.hash,
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::store::AuditStore;
    use crate::config::StoreLocation;

    fn events(chain: &str, seqs: std::ops::Range<i64>) -> Vec<StoredEvent> {
        seqs.map(|seq| StoredEvent {
            chain_id: chain.to_owned(),
            seq,
            time_ms: 1_800_000_000_000 + seq,
            kind: "request".to_owned(),
            payload: format!(r#"{{"seq":{seq}}}"#),
            prev_hash: String::new(),
            hash: format!("{seq:064x}"),
            ..StoredEvent::default()
        })
        .collect()
    }

    /// The events committed to `audit.db` in `dir`, as another connection sees them.
    fn stored(dir: &Path) -> Vec<(String, i64)> {
        let reader = Connection::open(dir.join(AUDIT_DB_FILE)).unwrap();
        let mut select = reader
            .prepare("SELECT chain_id, seq FROM audit_events ORDER BY chain_id, seq")
            .unwrap();
        select
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    async fn appender() -> (tempfile::TempDir, SqliteAppender) {
        let dir = tempfile::tempdir().unwrap();
        AuditStore::open(&StoreLocation::DataDir(dir.path().to_owned()))
            .await
            .unwrap();
        let appender = SqliteAppender::open(dir.path()).unwrap();
        (dir, appender)
    }

    #[tokio::test]
    async fn staged_events_are_stored_only_when_their_batch_is_appended() {
        let (dir, mut appender) = appender().await;
        let batch = events("a", 1..(STAGE_EVENTS as i64 + 11));
        appender.stage(&batch[..STAGE_EVENTS - 1]);
        appender.stage(&batch[..STAGE_EVENTS]);
        assert!(
            stored(dir.path()).is_empty(),
            "nothing is committed while staged"
        );
        appender.append(&batch, None).unwrap();
        let rows = stored(dir.path());
        assert_eq!(rows.len(), batch.len());
        assert_eq!(rows.last(), Some(&("a".to_owned(), batch.len() as i64)));
    }

    #[tokio::test]
    async fn a_batch_that_fails_after_staging_leaves_nothing_and_can_be_written_again() {
        let (dir, mut appender) = appender().await;
        let mut batch = events("a", 1..(STAGE_EVENTS as i64 + 1));
        appender.stage(&batch);
        // An event whose key is taken: the whole batch is refused, staged part included.
        batch.push(events("a", 1..2).remove(0));
        assert!(appender.append(&batch, None).is_err());
        assert!(stored(dir.path()).is_empty());
        batch.pop();
        appender.append(&batch, None).unwrap();
        assert_eq!(stored(dir.path()).len(), STAGE_EVENTS);
    }

    #[tokio::test]
    async fn a_staged_batch_is_dropped_when_another_is_appended() {
        let (dir, mut appender) = appender().await;
        appender.stage(&events("a", 1..(STAGE_EVENTS as i64 + 1)));
        appender.append(&events("b", 1..4), None).unwrap();
        assert_eq!(
            stored(dir.path()),
            [
                ("b".to_owned(), 1),
                ("b".to_owned(), 2),
                ("b".to_owned(), 3)
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_staging_is_left_to_the_append() {
        let (dir, mut appender) = appender().await;
        appender.append(&events("a", 1..2), None).unwrap();
        // Staging a batch that repeats a stored key fails, and stops staging...
        let repeat = events("a", 1..(STAGE_EVENTS as i64 + 1));
        appender.stage(&repeat);
        assert!(appender.failed && appender.staged.is_none());
        // ...and the append reports it.
        assert!(appender.append(&repeat, None).is_err());
        let fresh = events("a", 2..(STAGE_EVENTS as i64 + 2));
        appender.stage(&fresh);
        appender.append(&fresh, None).unwrap();
        assert_eq!(stored(dir.path()).len(), STAGE_EVENTS + 1);
    }
}
