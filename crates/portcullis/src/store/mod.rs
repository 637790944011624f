//! The data store: SQLite in the data directory by default, PostgreSQL when a
//! `postgres://` URL is given. The schema comes from the migrations in `migrations/`,
//! applied at open; queries bind every value as a parameter.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{Any, AnyPool, Executor, Transaction};

pub use crate::config::StoreLocation;

/// Why the store could not be opened or used. Never carries the database URL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created or secured.
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database could not be reached.
    #[error("cannot open the {kind} store: {source}")]
    Connect {
        /// `SQLite` or `PostgreSQL`.
        kind: &'static str,
        /// Why.
        source: sqlx::Error,
    },
    /// The schema could not be brought up to date.
    #[error("cannot apply the store's migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed (the database went away, a constraint was violated...).
    #[error("store query failed: {0}")]
    Query(#[from] sqlx::Error),
}

/// An open, migrated store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    is_sqlite: bool,
}

/// How long a query may wait for a pooled connection; a store that cannot answer in this
/// time is treated as unreachable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// The SQLite store's file in the data directory.
pub const SQLITE_FILE: &str = "portcullis.db";

impl Store {
    /// Opens (creating if needed) the store at `location` and applies the migrations.
    pub async fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        install_default_drivers();
        let (kind, url) = match location {
            StoreLocation::DataDir(dir) => {
                prepare_data_dir(dir)?;
                let file = dir.join(SQLITE_FILE);
                ("SQLite", format!("sqlite://{}?mode=rwc", file.display()))
            }
            StoreLocation::Postgres(url) => ("PostgreSQL", url.expose_secret().to_owned()),
        };
        let is_sqlite = matches!(location, StoreLocation::DataDir(_));
        let pool = AnyPoolOptions::new()
            .max_connections(if is_sqlite { 4 } else { 8 })
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if is_sqlite {
                        // Readers do not block the writer, and a busy writer is waited for.
                        connection.execute("PRAGMA journal_mode = WAL").await?;
                        connection.execute("PRAGMA busy_timeout = 5000").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|source| StoreError::Connect { kind, source })?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool, is_sqlite })
    }

    /// The connection pool, for the modules that own tables.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that no other [`Self::begin_serialized`] transaction, of this process
    /// or another on the same store, runs beside: for a check that a unique index cannot
    /// make, such as names that only look alike. SQLite takes its write lock at the start
    /// (`BEGIN IMMEDIATE`, waiting up to its busy timeout); PostgreSQL, an advisory lock of
    /// its own until the end, waiting at most 5 s for a replica that holds it (one stalled
    /// with it must not stop every creation), in READ COMMITTED whatever the database's
    /// default, so that what the lock's last holder committed is seen.
    pub async fn begin_serialized(&self) -> Result<Transaction<'static, Any>, StoreError> {
        if self.is_sqlite {
            return Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?);
        }
        let mut transaction = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        transaction.execute("SET LOCAL lock_timeout = '5s'").await?;
        transaction
            .execute("SELECT pg_advisory_xact_lock(7463726561746573)")
            .await?;
        Ok(transaction)
    }

    /// Whether the store answers a trivial query.
    pub async fn is_reachable(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// Creates `dir` if needed and restricts it to its owner: it holds the token store and the
/// pepper that keys the token hashes.
fn prepare_data_dir(dir: &Path) -> Result<(), StoreError> {
    let error = |source| StoreError::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(error)?;
    }
    Ok(())
}

/// Seconds since the Unix epoch, the store's unit of time.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
