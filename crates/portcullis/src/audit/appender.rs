//! The audit writer's own connection to `audit.db`, on SQLite: it appends each batch
//! (events and checkpoint) in one transaction, on the recorder's thread, binding each value
//! where it lies. Reads, and every write to PostgreSQL, go through [`super::store`]; this
//! exists because appending is the one thing done for every request, and sqlx's SQLite
//! driver copies each bound value and hands each statement to a thread of its own, which
//! cost the audit log a third of the gateway's throughput (bench/RESULTS.md, 2026-11-27).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, Statement, params};

use super::chain::Checkpoint;
use super::store::{AUDIT_DB_FILE, AuditStoreError, EVENT_COLUMNS, StoredEvent};

/// How long a write waits for a lock another connection holds (a search, retention).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An open connection that appends to `audit.db` (whose tables [`super::store`] created).
#[derive(Debug)]
pub struct SqliteAppender {
    connection: Connection,
    /// The event insert, made once.
    insert_sql: String,
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
        })
    }

    /// Stores `events` and `checkpoint` (if any) in one transaction: all or nothing.
    pub fn append(
        &mut self,
        events: &[StoredEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditStoreError> {
        let transaction = self.connection.transaction()?;
        {
            let mut insert = transaction.prepare_cached(&self.insert_sql)?;
            for event in events {
                insert_event(&mut insert, event)?;
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

fn insert_event(insert: &mut Statement<'_>, event: &StoredEvent) -> rusqlite::Result<()> {
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
