//! Where audit events are kept: `audit.db` in the data directory (SQLite, a file of its
//! own so that audit writes never wait on the token store's), or the PostgreSQL database
//! the token store uses. Events are inserted in batches, many rows to a statement and one
//! transaction to a batch, every value a bound parameter.

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::any::{AnyPoolOptions, AnyRow, install_default_drivers};
use sqlx::{AnyPool, Executor, Row};

use super::chain::Checkpoint;
use super::query::{Order, Param, Where};
use crate::config::StoreLocation;

/// The audit log's file in the data directory.
pub const AUDIT_DB_FILE: &str = "audit.db";

/// The columns of an event, in the order [`StoredEvent`] and the inserts use.
pub(super) const EVENT_COLUMNS: &str = "chain_id, seq, time_ms, kind, request_id, principal, tenant, status, \
     decision, route, path, client_ip, payload, prev_hash, hash";

/// The condition that selects the events naming other chains, as the index on them has it
/// (the same text, so that SQLite and PostgreSQL use the index).
const NAMING_KINDS: &str = "kind IN ('chain_start', 'follows')";

/// The columns of a checkpoint, in the order [`checkpoint_of`] reads them.
const CHECKPOINT_COLUMNS: &str = "chain_id, seq, head_hash, time_ms, mac";

/// The row counts of the insert statements, largest first (the last must be 1): a batch is
/// written with as many of the largest as fit, then the smaller ones, so that it takes few
/// round trips to PostgreSQL.
const INSERT_ROWS: [usize; 3] = [64, 8, 1];

/// `INSERT INTO audit_events ... VALUES` with `rows` rows of numbered parameters (`$1`).
fn insert_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO audit_events ({EVENT_COLUMNS}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push('(');
        for column in 0..15 {
            if column > 0 {
                sql.push(',');
            }
            sql.push('$');
            sql.push_str(&(row * 15 + column + 1).to_string());
        }
        sql.push(')');
    }
    sql
}

/// How long a search, or retention, may wait for a connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the writer may: sqlx keeps trying a server that refuses connections (stopped,
/// or shutting down) until then, and the writer's thread, which strict-mode requests wait
/// on, must instead learn soon that its batches belong in the spool. Its own connections
/// are never all busy, so this is how long a new one may take to open.
const WRITER_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

/// The event in a row of [`EVENT_COLUMNS`], each column read by the row's method `$get`
/// (sqlx's rows and rusqlite's name it apart), which fails with `?`.
macro_rules! event_of_row {
    ($row:expr, $get:ident) => {
        StoredEvent {
            chain_id: $row.$get(0)?,
            seq: $row.$get(1)?,
            time_ms: $row.$get(2)?,
            kind: $row.$get(3)?,
            request_id: $row.$get(4)?,
            principal: $row.$get(5)?,
            tenant: $row.$get(6)?,
            status: $row.$get(7)?,
            decision: $row.$get(8)?,
            route: $row.$get(9)?,
            path: $row.$get(10)?,
            client_ip: $row.$get(11)?,
            payload: $row.$get(12)?,
            prev_hash: $row.$get(13)?,
            hash: $row.$get(14)?,
        }
    };
}

/// Why the audit store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditStoreError {
    /// The database could not be opened, created or queried. Never carries its URL.
    #[error("audit store: {0}")]
    Database(#[from] sqlx::Error),
    /// The data directory could not be prepared.
    #[error("audit store: {0}")]
    DataDir(std::io::Error),
    /// The writer's own SQLite connection failed ([`super::appender`]).
    #[error("audit store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// There is no audit log to read.
    #[error("no audit log at {}", .0.display())]
    Missing(std::path::PathBuf),
    /// A read on a thread of its own did not finish (the process is stopping).
    #[error("audit store: the read did not finish")]
    ReadInterrupted,
}

/// One event as stored: its chain position, the columns searches use, the payload (the
/// rest of its fields), and the links (the hash covers all of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoredEvent {
    /// The chain (one per process start).
    pub chain_id: String,
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When the request started (or the action happened), Unix milliseconds.
    pub time_ms: i64,
    /// `request`, `admission` or `admin_action`, or one of the log's own: `chain_start`,
    /// `follows`, `retention`, `spool_loss`.
    pub kind: String,
    /// The request's id.
    pub request_id: Option<String>,
    /// Who called (a token's name, never a token).
    pub principal: Option<String>,
    /// The caller's tenant.
    pub tenant: Option<String>,
    /// The status sent.
    pub status: Option<i64>,
    /// The decision code.
    pub decision: Option<String>,
    /// The route's prefix.
    pub route: Option<String>,
    /// The path, a capability segment masked.
    pub path: Option<String>,
    /// The client's address.
    pub client_ip: Option<String>,
    /// The fields with no column of their own, as a JSON object (in events of builds
    /// before 2026-11-29, every field: it repeats the columns above).
    pub payload: String,
    /// The previous event's hash.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

/// The value of one of an event's columns ([`StoredEvent::columns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column<'a> {
    /// A text column.
    Text(Option<&'a str>),
    /// A number column.
    Number(Option<i64>),
}

impl StoredEvent {
    /// The columns that hold the event's fields (all but its place in the chain, its
    /// links and its payload), by name, in the order its hash covers them: the one list
    /// the hash, `audit verify` and the searches' view of an event go by.
    pub fn columns(&self) -> [(&'static str, Column<'_>); 10] {
        fn text(column: &Option<String>) -> Column<'_> {
            Column::Text(column.as_deref())
        }
        [
            ("kind", Column::Text(Some(&self.kind))),
            ("time_ms", Column::Number(Some(self.time_ms))),
            ("request_id", text(&self.request_id)),
            ("principal", text(&self.principal)),
            ("tenant", text(&self.tenant)),
            ("status", Column::Number(self.status)),
            ("decision", text(&self.decision)),
            ("route", text(&self.route)),
            ("path", text(&self.path)),
            ("client_ip", text(&self.client_ip)),
        ]
    }
}

/// An open audit store.
#[derive(Debug, Clone)]
pub struct AuditStore {
    pool: AnyPool,
    /// On SQLite, the file, which events are read from (a chain's, and searches') through
    /// a connection of their own ([`read_sqlite`]).
    sqlite_file: Option<std::path::PathBuf>,
    /// The insert statements, by row count, largest first ([`INSERT_ROWS`]).
    inserts: Vec<(usize, String)>,
}

impl AuditStore {
    /// Opens (creating when needed) the audit store for `location`, to write to it.
    pub async fn open(location: &StoreLocation) -> Result<Self, AuditStoreError> {
        Self::connect(location, true, ACQUIRE_TIMEOUT).await
    }

    /// Opens (and sets up) the audit store for `location` for the writer, which gives up on
    /// a server that does not take a new connection within [`WRITER_ACQUIRE_TIMEOUT`].
    pub async fn open_for_writer(location: &StoreLocation) -> Result<Self, AuditStoreError> {
        Self::connect(location, true, WRITER_ACQUIRE_TIMEOUT).await
    }

    /// Opens the existing audit store for `location` to read it, creating nothing (on
    /// SQLite, read-only): `audit verify` must not conjure an empty log where one was.
    pub async fn open_existing(location: &StoreLocation) -> Result<Self, AuditStoreError> {
        if let StoreLocation::DataDir(dir) = location {
            let file = dir.join(AUDIT_DB_FILE);
            if !file.exists() {
                return Err(AuditStoreError::Missing(file));
            }
        }
        Self::connect(location, false, ACQUIRE_TIMEOUT).await
    }

    async fn connect(
        location: &StoreLocation,
        write: bool,
        acquire_timeout: Duration,
    ) -> Result<Self, AuditStoreError> {
        install_default_drivers();
        let (url, sqlite_file) = match location {
            StoreLocation::DataDir(dir) => {
                let file = dir.join(AUDIT_DB_FILE);
                if write {
                    std::fs::create_dir_all(dir).map_err(AuditStoreError::DataDir)?;
                }
                let mode = if write { "rwc" } else { "ro" };
                (
                    format!("sqlite://{}?mode={mode}", file.display()),
                    Some(file),
                )
            }
            StoreLocation::Postgres(url) => (url.expose_secret().to_owned(), None),
        };
        let sqlite = sqlite_file.is_some();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(acquire_timeout)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if sqlite && write {
                        // Large pages: an event is most of a 4 KiB page, and appending
                        // fewer, larger pages halves the writer's work (bench/RESULTS.md).
                        // Takes effect when the file is new, before it is in WAL mode.
                        connection.execute("PRAGMA page_size = 65536").await?;
                        // WAL with full sync: a committed batch survives a power cut.
                        connection.execute("PRAGMA journal_mode = WAL").await?;
                        connection.execute("PRAGMA synchronous = FULL").await?;
                        connection.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    // A reader (`audit verify`, searches) facing a table someone holds locked
                    // fails after a while, rather than waiting for ever.
                    if !sqlite && !write {
                        connection.execute("SET lock_timeout = '10s'").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        if write {
            // On SQLite, checkpoints and anchors are kept in their key's own B-tree; events
            // in a rowid table (see SCHEMA).
            let layout = if sqlite { " WITHOUT ROWID" } else { "" };
            let mut transaction = pool.begin().await?;
            if !sqlite {
                // Replicas starting at once would create the same tables side by side, and
                // PostgreSQL's IF NOT EXISTS does not hold against a create running beside
                // it: one at a time, the lock released with the transaction.
                transaction.execute(SCHEMA_LOCK).await?;
            }
            for statement in SCHEMA {
                transaction
                    .execute(statement.replace("{layout}", layout).as_str())
                    .await?;
            }
            transaction.commit().await?;
        }
        Ok(Self {
            pool,
            sqlite_file,
            inserts: INSERT_ROWS
                .iter()
                .map(|&rows| (rows, insert_sql(rows)))
                .collect(),
        })
    }

    /// Stores `events` and `checkpoint` (if any) in one transaction. (On SQLite the audit
    /// writer appends through [`super::appender`] instead.)
    pub async fn append(
        &self,
        events: &[StoredEvent],
        checkpoint: Option<&Checkpoint>,
    ) -> Result<(), AuditStoreError> {
        let mut transaction = self.pool.begin().await?;
        let mut rest = events;
        while !rest.is_empty() {
            // The largest statement that fits: each is prepared once per connection and
            // cached, so a batch pays for no parsing, and few round trips.
            let (rows, sql) = self
                .inserts
                .iter()
                .find(|(rows, _)| *rows <= rest.len())
                .map_or((1, ""), |(rows, sql)| (*rows, sql.as_str()));
            let (chunk, after) = rest.split_at(rows.min(rest.len()));
            rest = after;
            let mut query = sqlx::query(sql);
            for event in chunk {
                // Borrowed, not copied: a batch is kept until the store takes it.
                query = query
                    .bind(event.chain_id.as_str())
                    .bind(event.seq)
                    .bind(event.time_ms)
                    .bind(event.kind.as_str())
                    .bind(event.request_id.as_deref())
                    .bind(event.principal.as_deref())
                    .bind(event.tenant.as_deref())
                    .bind(event.status)
                    .bind(event.decision.as_deref())
                    .bind(event.route.as_deref())
                    .bind(event.path.as_deref())
                    .bind(event.client_ip.as_deref())
                    .bind(event.payload.as_str())
                    .bind(event.prev_hash.as_str())
                    .bind(event.hash.as_str());
            }
            query.execute(&mut *transaction).await?;
        }
        if let Some(checkpoint) = checkpoint {
            let sql = insert_signed_sql("audit_checkpoints", "");
            insert_signed(&sql, checkpoint)
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    /// Whether event `seq` of `chain` is stored with `hash`: after a commit whose outcome
    /// was not seen (the connection dropped), whether it happened.
    pub async fn holds(&self, chain: &str, seq: i64, hash: &str) -> Result<bool, AuditStoreError> {
        let row = sqlx::query("SELECT hash FROM audit_events WHERE chain_id = $1 AND seq = $2")
            .bind(chain.to_owned())
            .bind(seq)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row
            .and_then(|row| row.try_get::<String, _>(0).ok())
            .is_some_and(|stored| stored == hash))
    }

    /// Whether `checkpoint` is stored.
    pub async fn holds_checkpoint(&self, checkpoint: &Checkpoint) -> Result<bool, AuditStoreError> {
        let row = sqlx::query(
            "SELECT mac FROM audit_checkpoints WHERE chain_id = $1 AND seq = $2 AND time_ms = $3",
        )
        .bind(checkpoint.chain.clone())
        .bind(checkpoint.seq)
        .bind(checkpoint.time_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// The newest checkpoint (by sequence, then time) of every chain that has one: the heads
    /// a new chain names ([`super::succession`]). One query however many chains the store
    /// holds, reading a few rows a chain: it steps from each chain's id to the next along
    /// the checkpoints' key (a loose index scan), and finds each one's newest through the
    /// same key.
    pub async fn newest_checkpoints(&self) -> Result<Vec<Checkpoint>, AuditStoreError> {
        const SQL: &str = "WITH RECURSIVE chains (chain_id) AS ( \
                SELECT MIN(chain_id) FROM audit_checkpoints \
                UNION ALL \
                SELECT (SELECT MIN(chain_id) FROM audit_checkpoints WHERE chain_id > chains.chain_id) \
                FROM chains WHERE chains.chain_id IS NOT NULL) \
            SELECT c.chain_id, c.seq, c.head_hash, c.time_ms, c.mac \
            FROM chains JOIN audit_checkpoints c ON c.chain_id = chains.chain_id \
            AND c.seq = (SELECT MAX(seq) FROM audit_checkpoints WHERE chain_id = chains.chain_id) \
            AND c.time_ms = (SELECT MAX(time_ms) FROM audit_checkpoints \
                WHERE chain_id = chains.chain_id AND seq = c.seq)";
        let rows = sqlx::query(SQL).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(checkpoint_of).collect::<Result<_, _>>()?)
    }

    /// Every retention anchor, of every chain (one a chain, but for replicas trimming at
    /// once).
    pub async fn all_anchors(&self) -> Result<Vec<Checkpoint>, AuditStoreError> {
        let sql = format!("SELECT {CHECKPOINT_COLUMNS} FROM audit_anchors");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(checkpoint_of).collect::<Result<_, _>>()?)
    }

    /// Every event that names points of other chains (`chain_start`, `follows`) still
    /// stored, found through their own index.
    pub async fn namings(&self) -> Result<Vec<StoredEvent>, AuditStoreError> {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM audit_events WHERE {NAMING_KINDS}");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(event_of)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(AuditStoreError::from)
    }

    /// The checkpoints of chains other than `except` written at or after `since_ms`: the
    /// chains a running gateway names as they go ([`super::succession`]).
    pub async fn checkpoints_since(
        &self,
        since_ms: i64,
        except: &str,
    ) -> Result<Vec<Checkpoint>, AuditStoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints WHERE time_ms >= $1 AND chain_id <> $2"
        );
        let rows = sqlx::query(&sql)
            .bind(since_ms)
            .bind(except.to_owned())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(checkpoint_of).collect::<Result<_, _>>()?)
    }

    /// Every chain's id.
    pub async fn chains(&self) -> Result<Vec<String>, AuditStoreError> {
        let rows = sqlx::query(
            "SELECT chain_id FROM audit_events UNION SELECT chain_id FROM audit_checkpoints \
             UNION SELECT chain_id FROM audit_anchors ORDER BY chain_id",
        )
        .fetch_all(&self.pool)
        .await?;
        // A chain id that is not text (a row written by hand) is an error, not a chain
        // left out of `verify`'s walk.
        Ok(rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?)
    }

    /// How many event rows `chain` has numbered above `after` and up to `upto`: `verify`
    /// compares it with the events it linked there, so that no row it did not read (a
    /// duplicate) goes unseen.
    pub async fn count_events(
        &self,
        chain: &str,
        after: i64,
        upto: i64,
    ) -> Result<i64, AuditStoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM audit_events WHERE chain_id = $1 AND seq > $2 AND seq <= $3",
        )
        .bind(chain.to_owned())
        .bind(after)
        .bind(upto)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The lowest number of `chain`'s events, if it has any: `verify` reads from above
    /// `i64::MIN`, and a row numbered that would otherwise go unread.
    pub async fn lowest_event(&self, chain: &str) -> Result<Option<i64>, AuditStoreError> {
        Ok(
            sqlx::query_scalar("SELECT min(seq) FROM audit_events WHERE chain_id = $1")
                .bind(chain.to_owned())
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The events of `chain` with `seq` above `after`, in sequence order, at most `limit`.
    pub async fn events(
        &self,
        chain: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, AuditStoreError> {
        if let Some(file) = &self.sqlite_file {
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM audit_events WHERE chain_id = $1 AND seq > $2 \
                 ORDER BY seq LIMIT $3"
            );
            let values = vec![
                Param::Text(chain.to_owned()),
                Param::Int(after),
                Param::Int(limit),
            ];
            return read_sqlite(file, sql, values).await;
        }
        // On PostgreSQL, a chain written since the table's statistics were last gathered
        // (the live one, often) looks small to the planner, which then fetches all of it
        // past `after` and sorts it, for every page: each query here is bounded instead,
        // to the numbers from the next event there is (an index's edge, found at once
        // whatever the planner knows) to as many more as are still wanted. Numbers are
        // unique in a chain, so no window holds more rows than that; a gap only costs
        // another window.
        let next_sql = "SELECT min(seq) FROM audit_events WHERE chain_id = $1 AND seq > $2";
        let window_sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events \
             WHERE chain_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq"
        );
        let mut events = Vec::new();
        let mut before = after;
        loop {
            let wanted = limit.saturating_sub(i64::try_from(events.len()).unwrap_or(i64::MAX));
            if wanted <= 0 {
                break;
            }
            let next: Option<i64> = sqlx::query_scalar(next_sql)
                .bind(chain)
                .bind(before)
                .fetch_one(&self.pool)
                .await?;
            let Some(next) = next else { break };
            let last = next.saturating_add(wanted - 1);
            let rows = sqlx::query(&window_sql)
                .bind(chain)
                .bind(next)
                .bind(last)
                .fetch_all(&self.pool)
                .await?;
            for row in &rows {
                events.push(event_of(row)?);
            }
            before = last;
        }
        Ok(events)
    }

    /// At most `limit` events that `conditions` select, in `order`.
    pub async fn search(
        &self,
        conditions: &Where,
        order: Order,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, AuditStoreError> {
        let direction = match order {
            Order::NewestFirst => "DESC",
            Order::OldestFirst => "ASC",
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM audit_events{} \
             ORDER BY time_ms {direction}, chain_id {direction}, seq {direction} LIMIT ${}",
            conditions.sql,
            conditions.values.len() + 1
        );
        if let Some(file) = &self.sqlite_file {
            let mut values = conditions.values.clone();
            values.push(Param::Int(limit));
            return read_sqlite(file, sql, values).await;
        }
        let mut query = sqlx::query(&sql);
        for value in &conditions.values {
            query = match value {
                Param::Int(number) => query.bind(*number),
                Param::Text(text) => query.bind(text.as_str()),
            };
        }
        let rows = query.bind(limit).fetch_all(&self.pool).await?;
        rows.iter()
            .map(event_of)
            .collect::<Result<_, sqlx::Error>>()
            .map_err(AuditStoreError::from)
    }

    /// The retention anchors of `chain`, highest first.
    pub async fn anchors(&self, chain: &str) -> Result<Vec<Checkpoint>, AuditStoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_anchors WHERE chain_id = $1 ORDER BY seq DESC"
        );
        let rows = sqlx::query(&sql)
            .bind(chain.to_owned())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(checkpoint_of).collect::<Result<_, _>>()?)
    }

    /// Deletes the events of `anchor.chain` up to `anchor.seq` and its checkpoints below
    /// it, and stores `anchor` in place of the chain's anchors at the sequence numbers
    /// `replaced` (lower ones, which the caller found sealed), in one transaction: the
    /// store is never left with a chain cut short and no anchor saying why.
    pub async fn trim(
        &self,
        anchor: &Checkpoint,
        replaced: &[i64],
    ) -> Result<u64, AuditStoreError> {
        let mut transaction = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM audit_events WHERE chain_id = $1 AND seq <= $2")
            .bind(anchor.chain.clone())
            .bind(anchor.seq)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM audit_checkpoints WHERE chain_id = $1 AND seq < $2")
            .bind(anchor.chain.clone())
            .bind(anchor.seq)
            .execute(&mut *transaction)
            .await?;
        // Replicas trimming at once may write the same anchor.
        let sql = insert_signed_sql("audit_anchors", " ON CONFLICT DO NOTHING");
        insert_signed(&sql, anchor)
            .execute(&mut *transaction)
            .await?;
        let lower: Vec<i64> = replaced
            .iter()
            .copied()
            .filter(|&seq| seq < anchor.seq)
            .collect();
        delete_anchors(&mut transaction, &anchor.chain, &lower).await?;
        transaction.commit().await?;
        Ok(deleted)
    }

    /// Deletes the anchors of `chain` at the sequence numbers `seqs` (lower ones, which the
    /// caller found sealed and superseded), in one transaction.
    pub async fn drop_anchors(&self, chain: &str, seqs: &[i64]) -> Result<(), AuditStoreError> {
        let mut transaction = self.pool.begin().await?;
        delete_anchors(&mut transaction, chain, seqs).await?;
        transaction.commit().await?;
        Ok(())
    }

    /// The last sequence number of `chain` (0 when it has no event).
    pub async fn last_seq(&self, chain: &str) -> Result<i64, AuditStoreError> {
        let row = sqlx::query("SELECT MAX(seq) FROM audit_events WHERE chain_id = $1")
            .bind(chain.to_owned())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// The chains that wrote a checkpoint or started since `since_ms`: every chain still
    /// being written (a live chain checkpoints at least every minute).
    pub async fn live_chains(&self, since_ms: i64) -> Result<Vec<String>, AuditStoreError> {
        let rows = sqlx::query(
            "SELECT chain_id FROM audit_checkpoints WHERE time_ms >= $1 \
             UNION SELECT chain_id FROM audit_events WHERE time_ms >= $2 AND kind = 'chain_start'",
        )
        .bind(since_ms)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .filter_map(|row| row.try_get::<String, _>(0).ok())
            .collect())
    }

    /// The checkpoints of `chain`, in sequence order.
    pub async fn checkpoints(&self, chain: &str) -> Result<Vec<Checkpoint>, AuditStoreError> {
        let sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM audit_checkpoints \
             WHERE chain_id = $1 ORDER BY seq, time_ms"
        );
        let rows = sqlx::query(&sql)
            .bind(chain.to_owned())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(checkpoint_of).collect::<Result<_, _>>()?)
    }
}

/// Deletes the anchors of `chain` at the sequence numbers `seqs`, in `transaction`.
async fn delete_anchors(
    transaction: &mut sqlx::Transaction<'_, sqlx::Any>,
    chain: &str,
    seqs: &[i64],
) -> Result<(), sqlx::Error> {
    for &seq in seqs {
        sqlx::query("DELETE FROM audit_anchors WHERE chain_id = $1 AND seq = $2")
            .bind(chain.to_owned())
            .bind(seq)
            .execute(&mut **transaction)
            .await?;
    }
    Ok(())
}

/// `INSERT` of a checkpoint-shaped row into `table` (which has [`CHECKPOINT_COLUMNS`]),
/// followed by `then`.
fn insert_signed_sql(table: &str, then: &str) -> String {
    format!("INSERT INTO {table} ({CHECKPOINT_COLUMNS}) VALUES ($1, $2, $3, $4, $5){then}")
}

/// `sql` ([`insert_signed_sql`]) bound to `signed`, a checkpoint or a retention anchor.
fn insert_signed<'q>(
    sql: &'q str,
    signed: &'q Checkpoint,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(signed.chain.as_str())
        .bind(signed.seq)
        .bind(signed.head.as_str())
        .bind(signed.time_ms)
        .bind(signed.mac.as_str())
}

/// The events `sql` (a select of [`EVENT_COLUMNS`] with placeholders `$1`, `$2`... for
/// `values`) reads from the SQLite file `file`: through a read-only connection of its own on
/// a blocking thread, rather than sqlx's driver, which hands over every row from a worker
/// thread of its own (five times the time for `audit verify`: bench/RESULTS.md, 2026-11-29).
async fn read_sqlite(
    file: &std::path::Path,
    sql: String,
    values: Vec<Param>,
) -> Result<Vec<StoredEvent>, AuditStoreError> {
    let file = file.to_owned();
    tokio::task::spawn_blocking(move || {
        let connection = rusqlite::Connection::open_with_flags(
            file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(Duration::from_secs(5))?;
        let mut statement = connection.prepare(&sql)?;
        for (n, value) in values.iter().enumerate() {
            // By name: a placeholder may appear more than once, or out of order.
            let name = format!("${}", n + 1);
            let index = statement
                .parameter_index(&name)?
                .ok_or(rusqlite::Error::InvalidParameterName(name))?;
            match value {
                Param::Int(number) => statement.raw_bind_parameter(index, number)?,
                Param::Text(text) => statement.raw_bind_parameter(index, text)?,
            }
        }
        let mut rows = statement.raw_query();
        let mut events = Vec::new();
        while let Some(row) = rows.next()? {
            events.push(event_of_row!(row, get));
        }
        Ok(events)
    })
    .await
    .map_err(|_| AuditStoreError::ReadInterrupted)?
}

/// An event as a row of [`EVENT_COLUMNS`] holds it.
fn event_of(row: &AnyRow) -> Result<StoredEvent, sqlx::Error> {
    Ok(event_of_row!(row, try_get))
}

/// A checkpoint as a row of [`CHECKPOINT_COLUMNS`] holds it.
fn checkpoint_of(row: &AnyRow) -> Result<Checkpoint, sqlx::Error> {
    Ok(Checkpoint {
        chain: row.try_get(0)?,
        seq: row.try_get(1)?,
        head: row.try_get(2)?,
        time_ms: row.try_get(3)?,
        mac: row.try_get(4)?,
    })
}

/// Taken on PostgreSQL while the tables are created (a transaction-level advisory lock of
/// the audit log's own; the token store's migrations take another).
const SCHEMA_LOCK: &str = "SELECT pg_advisory_xact_lock(7061626175646974)";

/// The tables, created when missing. Portable SQL: the same statements run on SQLite and
/// PostgreSQL, but for `{layout}`.
const SCHEMA: &[&str] = &[
    // Events are a rowid table on SQLite too, not kept WITHOUT ROWID in their key's B-tree:
    // SQLite appends to a rowid table at its right edge without a search or a rebalance of
    // large pages: an event took 5.1 µs to build and store against 6.4 µs in the key-ordered
    // layout, key index included (bench/RESULTS.md, 2026-11-28). A file
    // made by an earlier build keeps its layout; both are read and written alike.
    "CREATE TABLE IF NOT EXISTS audit_events (
        chain_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        time_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        request_id TEXT,
        principal TEXT,
        tenant TEXT,
        status BIGINT,
        decision TEXT,
        route TEXT,
        path TEXT,
        client_ip TEXT,
        payload TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL,
        PRIMARY KEY (chain_id, seq)
    )",
    "CREATE TABLE IF NOT EXISTS audit_checkpoints (
        chain_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        head_hash TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        mac TEXT NOT NULL,
        PRIMARY KEY (chain_id, seq, time_ms)
    ){layout}",
    // Retention anchors: the events of a chain up to `seq` were deleted by retention. One
    // a chain: each replaces the chain's lower sealed ones (which nothing reads: a chain
    // starts at its highest), or the table would grow by a row for every 10 000 events
    // trimmed; a forged one stays, for `audit verify` to report.
    "CREATE TABLE IF NOT EXISTS audit_anchors (
        chain_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        head_hash TEXT NOT NULL,
        time_ms BIGINT NOT NULL,
        mac TEXT NOT NULL,
        PRIMARY KEY (chain_id, seq)
    ){layout}",
    // Searches walk events by time, newest first; `tail --follow` finds live chains by
    // their recent checkpoints.
    "CREATE INDEX IF NOT EXISTS audit_events_time ON audit_events (time_ms)",
    "CREATE INDEX IF NOT EXISTS audit_checkpoints_time ON audit_checkpoints (time_ms)",
    // An index of an earlier build, replaced by the one below.
    "DROP INDEX IF EXISTS audit_chain_starts",
    // A new chain reads every event that names other chains ([`AuditStore::namings`]); the
    // index holds those alone, and costs an insert one comparison.
    "CREATE INDEX IF NOT EXISTS audit_namings ON audit_events (chain_id) WHERE kind IN ('chain_start', 'follows')",
];
