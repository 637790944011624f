//! The audit writer's own connection to `audit.db`, on SQLite: it appends each batch
//! (events and checkpoint) in one transaction, on the recorder's thread. Reads, and every
//! write to PostgreSQL, go through [`super::store`]; this exists because appending is the
//! one thing done for every request, and sqlx's SQLite driver copies each bound value once
//! more and hands each statement to a thread of its own, which cost the audit log a third
//! of the gateway's throughput (bench/RESULTS.md, 2026-11-27).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Statement, params};

use super::chain::Checkpoint;
use super::store::{AUDIT_DB_FILE, AuditStoreError, EVENT_COLUMNS, StoredEvent};

/// How long opening the file waits for a lock another connection holds (a search,
/// retention); each batch sets its own wait ([`SqliteAppender::append`]).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Events inserted by one statement. Each run of a statement opens its cursors and seeks
/// each index from its root; the rows of one run go where the last one went. More rows
/// bind more values at once, and each bound value is copied into an allocation of its own:
/// 8 rows cost the writer 8 000 fewer instructions an event than 1, and fewer than 4, 16,
/// 32 or 64 (callgrind, bench/RESULTS.md, 2026-11-28). The rest of a batch goes in one by
/// one.
const ROWS: usize = 8;

/// The columns of an event, bound in [`bind_event`]'s order.
const COLUMNS: usize = 15;

/// An open connection that appends to `audit.db` (whose tables [`super::store`] created).
#[derive(Debug)]
pub struct SqliteAppender {
    connection: Connection,
    /// The insert of [`ROWS`] events, made once.
    insert_many: String,
    /// The insert of one event, for the rest of a batch.
    insert_one: String,
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
            insert_many: insert_sql(ROWS),
            insert_one: insert_sql(1),
        })
    }

    /// Stores `events` and `checkpoint` (if any) in one transaction: all or nothing,
    /// waiting at most `lock_wait` for a lock another connection holds (a search, retention,
    /// another process), so that a batch a strict request waits on goes to the spool in time
    /// rather than the request being refused.
    pub fn append(
        &mut self,
        events: &[StoredEvent],
        checkpoint: Option<&Checkpoint>,
        lock_wait: Duration,
    ) -> Result<(), AuditStoreError> {
        self.connection.busy_timeout(lock_wait)?;
        // A transaction left open by a rollback that failed would fail every batch after.
        if !self.connection.is_autocommit() {
            self.connection.execute_batch("ROLLBACK")?;
        }
        let transaction = self.connection.transaction()?;
        {
            let mut chunks = events.chunks_exact(ROWS);
            let mut insert = transaction.prepare_cached(&self.insert_many)?;
            for chunk in &mut chunks {
                insert_events(&mut insert, chunk)?;
            }
            let mut insert = transaction.prepare_cached(&self.insert_one)?;
            for event in chunks.remainder() {
                insert_events(&mut insert, std::slice::from_ref(event))?;
            }
            if let Some(checkpoint) = checkpoint {
                transaction
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
        }
        transaction.commit()?;
        Ok(())
    }
}

/// `INSERT OR ROLLBACK INTO audit_events ... VALUES` with `rows` rows of parameters. A
/// batch goes in whole or not at all, so a row that breaks a constraint rolls back the
/// whole transaction: a statement that could fail after its first row, and undo only
/// itself, would copy every page it touches to a statement journal first (a 64 KiB page
/// for every few rows).
fn insert_sql(rows: usize) -> String {
    let row = format!("({})", vec!["?"; COLUMNS].join(", "));
    format!(
        "INSERT OR ROLLBACK INTO audit_events ({EVENT_COLUMNS}) VALUES {}",
        vec![row; rows].join(", ")
    )
}

/// Runs `insert` (made by [`insert_sql`] for as many rows) for `events`.
fn insert_events(insert: &mut Statement<'_>, events: &[StoredEvent]) -> rusqlite::Result<()> {
    for (row, event) in events.iter().enumerate() {
        bind_event(insert, row * COLUMNS, event)?;
    }
    insert.raw_execute()?;
    Ok(())
}

/// Binds `event`'s columns, in [`EVENT_COLUMNS`]' order, to the parameters after `before`
/// (each by its own type: through `&dyn ToSql` they cost a thousand instructions more an
/// event).
fn bind_event(
    insert: &mut Statement<'_>,
    before: usize,
    event: &StoredEvent,
) -> rusqlite::Result<()> {
    insert.raw_bind_parameter(before + 1, &event.chain_id)?;
    insert.raw_bind_parameter(before + 2, event.seq)?;
    insert.raw_bind_parameter(before + 3, event.time_ms)?;
    insert.raw_bind_parameter(before + 4, &event.kind)?;
    insert.raw_bind_parameter(before + 5, &event.request_id)?;
    insert.raw_bind_parameter(before + 6, &event.principal)?;
    insert.raw_bind_parameter(before + 7, &event.tenant)?;
    insert.raw_bind_parameter(before + 8, event.status)?;
    insert.raw_bind_parameter(before + 9, &event.decision)?;
    insert.raw_bind_parameter(before + 10, &event.route)?;
    insert.raw_bind_parameter(before + 11, &event.path)?;
    insert.raw_bind_parameter(before + 12, &event.client_ip)?;
    insert.raw_bind_parameter(before + 13, &event.payload)?;
    insert.raw_bind_parameter(before + 14, &event.prev_hash)?;
    insert.raw_bind_parameter(before + 15, &event.hash)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::store::AuditStore;
    use crate::config::StoreLocation;

    /// An event whose every column holds something of its own.
    fn event(seq: i64) -> StoredEvent {
        let optional = |name: &str| (seq % 3 != 0).then(|| format!("{name}-{seq}"));
        StoredEvent {
            chain_id: "0123456789abcdef0123456789abcdef".to_owned(),
            seq,
            time_ms: 1_700_000_000_000 + seq,
            kind: "request".to_owned(),
            request_id: optional("request"),
            principal: optional("principal"),
            tenant: optional("tenant"),
            status: (seq % 3 != 0).then_some(200 + seq),
            decision: optional("decision"),
            route: optional("route"),
            path: optional("path"),
            client_ip: optional("ip"),
            payload: format!("{{\"seq\":{seq}}}"),
            prev_hash: format!("prev-{seq}"),
            hash: format!("hash-{seq}"),
        }
    }

    #[tokio::test]
    async fn a_batch_goes_in_whole_across_statements_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::DataDir(dir.path().to_owned());
        let store = AuditStore::open(&location).await.unwrap();
        let mut appender = SqliteAppender::open(dir.path()).unwrap();
        // Two statements of ROWS rows, then the rest one by one.
        let events: Vec<StoredEvent> = (1..3 * ROWS as i64).map(event).collect();
        let checkpoint = Checkpoint {
            chain: events[0].chain_id.clone(),
            seq: events.len() as i64,
            head: "head".to_owned(),
            time_ms: 1,
            mac: "mac".to_owned(),
        };
        appender
            .append(&events, Some(&checkpoint), BUSY_TIMEOUT)
            .unwrap();
        let stored = store.events(&events[0].chain_id, 0, 1000).await.unwrap();
        assert_eq!(stored, events);
        assert_eq!(
            store.checkpoints(&checkpoint.chain).await.unwrap(),
            std::slice::from_ref(&checkpoint)
        );
        // A row already there fails the whole next batch, in a statement of many rows or
        // of one: nothing of it stays, and the appender goes on. (Plain INSERT would pass
        // this too; OR ROLLBACK is there to spare the statement journal.)
        let next = events.len() as i64 + 1;
        for duplicate_at in [ROWS - 1, ROWS] {
            let mut again: Vec<StoredEvent> = (next..next + ROWS as i64).map(event).collect();
            again.insert(duplicate_at, event(1));
            assert!(appender.append(&again, None, BUSY_TIMEOUT).is_err());
            let stored = store.events(&events[0].chain_id, 0, 1000).await.unwrap();
            assert_eq!(stored, events);
        }
        // So does a checkpoint already there, after the batch's events went in.
        let again: Vec<StoredEvent> = (next..next + ROWS as i64 + 1).map(event).collect();
        assert!(
            appender
                .append(&again, Some(&checkpoint), BUSY_TIMEOUT)
                .is_err()
        );
        let stored = store.events(&events[0].chain_id, 0, 1000).await.unwrap();
        assert_eq!(stored, events);
        let last = event(next);
        appender
            .append(std::slice::from_ref(&last), None, BUSY_TIMEOUT)
            .unwrap();
        let stored = store.events(&events[0].chain_id, 0, 1000).await.unwrap();
        assert_eq!(stored.last(), Some(&last));
    }

    #[test]
    fn the_insert_binds_every_column_of_every_row() {
        assert_eq!(EVENT_COLUMNS.split(',').count(), COLUMNS);
        let sql = insert_sql(ROWS);
        assert_eq!(sql.matches('?').count(), ROWS * COLUMNS);
        assert!(sql.ends_with("?, ?)"), "{sql}");
    }
}
