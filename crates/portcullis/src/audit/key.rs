//! The chain key: given (`PORTCULLIS_AUDIT_KEY` or `_FILE`), or, with SQLite, generated
//! beside the log. Whoever holds it can recompute the chain, so the database never holds it.

use secrecy::SecretString;

use super::AuditError;
use super::chain::ChainKey;
use crate::base::hex;
use crate::config::{AUDIT_KEY_VAR, StoreLocation, key_from_data_dir, read_secret};

/// The key file generated in the data directory when no key is given (SQLite only).
pub const AUDIT_KEY_FILE: &str = "audit.key";

/// The chain key: `PORTCULLIS_AUDIT_KEY` (or `_FILE`), else, with SQLite, `audit.key` in
/// the data directory (generated, mode 0600, when `create` and missing). PostgreSQL needs
/// it given, so that every replica and `audit verify` share it while the database does not
/// hold it.
pub fn load_key(
    location: &StoreLocation,
    env: impl Fn(&str) -> Option<String>,
    create: bool,
) -> Result<ChainKey, AuditError> {
    if let Some(key) =
        read_secret(AUDIT_KEY_VAR, env).map_err(|e| AuditError::Key(e.to_string()))?
    {
        use secrecy::ExposeSecret;
        if key.expose_secret().len() < 32 {
            return Err(AuditError::Key(format!(
                "{AUDIT_KEY_VAR} must be at least 32 characters"
            )));
        }
        return Ok(ChainKey::new(key));
    }
    match location {
        StoreLocation::DataDir(dir) if !create && !dir.join(AUDIT_KEY_FILE).exists() => {
            Err(AuditError::Key(format!(
                "no {AUDIT_KEY_FILE} in {}; set {AUDIT_KEY_VAR} to the key the log was written with",
                dir.display()
            )))
        }
        StoreLocation::DataDir(dir) => key_from_data_dir(
            dir,
            AUDIT_KEY_FILE,
            32,
            "earlier events then no longer verify",
            || SecretString::from(hex::encode(&rand::random::<[u8; 32]>())),
        )
        .map(ChainKey::new)
        .map_err(AuditError::Key),
        StoreLocation::Postgres(_) => Err(AuditError::Key(format!(
            "set {AUDIT_KEY_VAR} (or {AUDIT_KEY_VAR}_FILE) when the store is PostgreSQL, the same on every replica"
        ))),
    }
}

/// What `serve` would refuse about the chain key, checked without creating anything: a
/// missing key with PostgreSQL, a short or unreadable one. `None` when `serve` can start
/// (with SQLite and no key, it generates one).
pub fn key_problem(
    location: &StoreLocation,
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    if let StoreLocation::DataDir(dir) = location
        && !key_given(&env)
        && !dir.join(AUDIT_KEY_FILE).exists()
    {
        return None;
    }
    load_key(location, env, false)
        .err()
        .map(|error| error.to_string())
}

/// Whether the chain key is kept apart from a log at `location`: given in
/// `PORTCULLIS_AUDIT_KEY`, or in a file (`_FILE`) outside the log's data directory. A key
/// generated beside the log, or put there, can be read by whoever can edit the log.
pub fn key_kept_apart(location: &StoreLocation, env: impl Fn(&str) -> Option<String>) -> bool {
    if env(AUDIT_KEY_VAR).is_some() {
        return true;
    }
    let Some(file) = env(&format!("{AUDIT_KEY_VAR}_FILE")) else {
        return false;
    };
    match location {
        StoreLocation::DataDir(dir) => {
            let canonical = |path: &std::path::Path| std::fs::canonicalize(path).ok();
            match (canonical(std::path::Path::new(&file)), canonical(dir)) {
                (Some(file), Some(dir)) => !file.starts_with(dir),
                // A key that cannot be read is `key_problem`'s to report.
                _ => true,
            }
        }
        StoreLocation::Postgres(_) => true,
    }
}

/// Whether the chain key is given (`PORTCULLIS_AUDIT_KEY` or `_FILE`) rather than left to
/// be generated beside the log.
pub fn key_given(env: impl Fn(&str) -> Option<String>) -> bool {
    env(AUDIT_KEY_VAR).is_some() || env(&format!("{AUDIT_KEY_VAR}_FILE")).is_some()
}
