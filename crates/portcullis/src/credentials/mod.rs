//! Managed credentials: named bearer tokens with scopes, an optional tenant, expiry,
//! revocation and rotation, kept in the [`Store`] as keyed hashes.

pub mod token;
pub mod verifier;

use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::config::{SecretError, key_from_data_dir, read_secret};
use crate::store::{SQLITE_FILE, Store, StoreError, StoreLocation, now};
pub use token::TokenHasher;
pub use verifier::{Invalid, TokenVerifier, Verdict};

/// The environment variable that holds the pepper keying token hashes.
pub const PEPPER_VAR: &str = "PORTCULLIS_TOKEN_PEPPER";

/// The latest expiry a token is given, 9999-12-31T23:59:59Z (seconds since 1970): the last
/// second RFC 3339 can write. A longer lifetime ends there.
pub const LATEST_EXPIRY: i64 = 253_402_300_799;
/// The file in the data directory that holds a generated pepper.
const PEPPER_FILE: &str = "token-pepper";

/// The scopes every deployment knows; routes may name more. `admin` implies all.
pub const BUILTIN_SCOPES: [&str; 3] = ["read", "write", "admin"];

/// The most characters (Unicode scalar values) a token's name or tenant may have.
pub const LABEL_MAX_CHARS: usize = 100;

/// The characters [`is_hidden`] refuses, as the inside of a regular expression's class.
/// Those beyond the Basic Multilingual Plane are written as themselves: ECMA-262 and
/// Python's `re` (which OpenAPI fuzzers use) share no escape for them.
macro_rules! hidden_class {
    () => {
        concat!(
            r"\x00-\x1f\x7f-\x9f\xad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2",
            r"\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u2028-\u202e\u2060-\u2064",
            r"\u2066-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb",
            "\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}",
            "\u{e0000}-\u{e0fff}",
            // Private use and noncharacters: no font shows them alike, or at all.
            r"\ue000-\uf8ff\ufdd0-\ufdef\ufffe\uffff",
            "\u{f0000}-\u{10ffff}",
        )
    };
}

/// [`is_valid_label`] as a regular expression, apart from the length, for the admin API's
/// OpenAPI document. JSON Schema's dialect (ECMA-262, with its `u` flag) and Rust's `regex`
/// read it alike: no control or invisible character anywhere (see `is_hidden`), and at
/// least one character that is not whitespace (the second class adds exactly the
/// characters `char::is_whitespace` accepts that the first does not refuse already).
pub const LABEL_PATTERN: &str = concat!(
    "^[^",
    hidden_class!(),
    "]*[^",
    hidden_class!(),
    r"\x20\xa0\u1680\u2000-\u200a\u202f\u205f\u3000",
    "][^",
    hidden_class!(),
    "]*$",
);

/// Whether `text` may be a token's name or tenant: 1 to [`LABEL_MAX_CHARS`] characters, not
/// only whitespace, and no control or invisible character (such characters would forge
/// lines in logs and terminals, or make two names look alike; PostgreSQL refuses NUL in
/// text).
pub fn is_valid_label(text: &str) -> bool {
    let chars = text.chars().count();
    (1..=LABEL_MAX_CHARS).contains(&chars)
        && !text.chars().any(is_hidden)
        && !text.trim().is_empty()
}

/// The names the gateway's records give principals of its own: the static tokens' and the
/// command line's.
const RESERVED_NAMES: [&str; 2] = ["static", "cli"];

/// What a name looks like, by Unicode's UTS #39 skeletons (confusables mapped to one
/// prototype: Cyrillic `е` is `e`; composed and decomposed forms alike), after
/// compatibility normalisation (`ＤＥＰＬＯＹ`), without surrounding or repeated whitespace.
/// The table maps some capitals and their small letters apart (Cyrillic `В` is `B`, but
/// `в` is `ʙ`; Latin `I` is `l`, but `i` is `i`), so a name has three looks; and each is
/// read twice, as written and with each letter outside ASCII first taken to its prototype,
/// since compatibility normalisation may take a letter somewhere the table does not map
/// (Greek `ϲ`, a `c` to the table, becomes `ς`).
struct Look([Reading; 2]);

/// One reading of a name's [`Look`].
struct Reading {
    /// In lower case: `Deploy` is `deploy`.
    folded: String,
    /// In lower case after each letter outside ASCII is taken to its prototype: `Вob` is
    /// `bob` (an ASCII capital keeps its own small letter: `CI` is not `CL`).
    folded_foreign: String,
    /// In its own case: `CLl` is `CLI`.
    cased: String,
}

/// `text` with each character outside ASCII taken to its prototype.
fn foreign_skeleton(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_ascii() {
            true => c.to_string(),
            false => unicode_security::skeleton(&c.to_string()).collect(),
        })
        .collect()
}

impl Look {
    fn of(name: &str) -> Self {
        Self([Reading::of(name), Reading::of(&foreign_skeleton(name))])
    }

    /// Whether a reader would take the one name for the other.
    fn alike(&self, other: &Self) -> bool {
        self.0
            .iter()
            .any(|one| other.0.iter().any(|reading| one.alike(reading)))
    }
}

impl Reading {
    fn of(name: &str) -> Self {
        use unicode_normalization::UnicodeNormalization;
        let skeleton = |text: &str| unicode_security::skeleton(text).collect::<String>();
        let spaced = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        let normal: String = name.nfkc().collect();
        let foreign = foreign_skeleton(&normal);
        Self {
            folded: spaced(&skeleton(&normal.to_lowercase())),
            folded_foreign: spaced(&skeleton(&foreign.to_lowercase())),
            cased: spaced(&skeleton(&normal)),
        }
    }

    fn alike(&self, other: &Self) -> bool {
        let folded = [&self.folded, &self.folded_foreign];
        let others = [&other.folded, &other.folded_foreign];
        folded.iter().any(|one| others.contains(one)) || self.cased == other.cased
    }
}

/// Control characters, and the characters that are not seen: every format character
/// (Unicode's `Cf`: the soft hyphen, zero-width spaces and joiners, bidirectional
/// controls, the byte-order mark, Arabic number signs, musical and shorthand format
/// controls, tag characters), the line and paragraph separators (U+2028, U+2029), the
/// combining grapheme joiner, variation selectors, and the characters that render blank
/// (the Hangul fillers, the Khmer inherent vowels, the blank Braille pattern).
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{ad}' | '\u{34f}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}'
            | '\u{890}' | '\u{891}' | '\u{8e2}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
            | '\u{180e}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{2800}' | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff9}'..='\u{fffb}'
            | '\u{110bd}' | '\u{110cd}' | '\u{13430}'..='\u{1343f}' | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}'
            | '\u{e000}'..='\u{f8ff}' | '\u{fdd0}'..='\u{fdef}' | '\u{fffe}' | '\u{ffff}'
            | '\u{f0000}'..='\u{10ffff}')
}

/// Why a credential operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// Another live token has this name.
    #[error(
        "a live token named {0:?}, or a name that looks like it, already exists; revoke it or choose another name"
    )]
    DuplicateName(String),
    /// A name that looks like one the gateway gives its own principals in records.
    #[error("{0:?} looks like a principal of the gateway's own (static, cli); choose another name")]
    ReservedName(String),
    /// No token has this id.
    #[error("no token has the id {0:?}")]
    NotFound(String),
    /// The token is revoked, expired or already rotated, so it cannot be rotated.
    #[error("token {0:?} is not live (revoked, expired or already rotated)")]
    NotLive(String),
    /// A scope that is not built in and that no route names.
    #[error("unknown scope {0:?}; known scopes: {1}")]
    UnknownScope(String, String),
    /// No scope was given.
    #[error("a token needs at least one scope")]
    NoScopes,
    /// A name that is blank, too long or has control or invisible formatting characters.
    #[error(
        "a token name must be 1 to 100 characters, not only whitespace, without control or invisible formatting characters"
    )]
    InvalidName,
    /// A tenant that is blank, too long or has control or invisible formatting characters.
    #[error(
        "a tenant must be 1 to 100 characters, not only whitespace, without control or invisible formatting characters"
    )]
    InvalidTenant,
    /// An expiry under a second.
    #[error("the expiry must be at least a second ahead")]
    ExpiryInPast,
    /// The pepper could not be read or created.
    #[error("token pepper: {0}")]
    Pepper(String),
    /// The pepper variable could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store failed a lookup a moment ago and is not asked again yet.
    #[error("the credential store failed a moment ago; not asked again yet")]
    StoreDown,
}

impl From<sqlx::Error> for CredentialError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(StoreError::Query(error))
    }
}

/// How a credential is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// In `Authorization: Bearer ...`.
    #[default]
    Token,
    /// As the first path segment below a capability route: `/<route>/<secret>/...`.
    Capability,
}

impl CredentialKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Capability => "capability",
        }
    }
}

/// What is stored about a token. Never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    /// Stable id, e.g. `tok_4fQ9zX1bK2mN`.
    pub id: String,
    /// Bearer token or capability.
    pub kind: CredentialKind,
    /// Unique among live tokens.
    pub name: String,
    /// The token's first characters, to recognise it (e.g. `pcl_3xY9QaBc`).
    pub public_prefix: String,
    /// What the token may do.
    pub scopes: Vec<String>,
    /// The tenant the token belongs to, if any.
    pub tenant: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; none means it does not expire.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub revoked_at: Option<i64>,
    /// Unix seconds, updated at most once a minute.
    pub last_used_at: Option<i64>,
    /// The id of the token that replaced this one by rotation.
    pub superseded_by: Option<String>,
}

/// What [`Credentials::revoke`] did.
#[derive(Debug)]
pub struct Revoked {
    /// The token, revoked.
    pub record: TokenRecord,
    /// Whether it was revoked now, rather than already (an admin action only then).
    pub now: bool,
}

impl TokenRecord {
    /// Whether the token is accepted at time `at`.
    pub fn is_live_at(&self, at: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires| at < expires)
    }

    /// Whether the token carries `scope` (or `admin`, which implies every scope).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "admin")
    }

    /// `live`, `expired`, `revoked` or `rotated`.
    pub fn state(&self, at: i64) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if !self.is_live_at(at) {
            "expired"
        } else if self.superseded_by.is_some() {
            "rotating"
        } else {
            "live"
        }
    }
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// Bearer token or capability.
    pub kind: CredentialKind,
    /// Its name.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// Its tenant.
    pub tenant: Option<String>,
    /// How long until it expires; none for never.
    pub expires_in: Option<Duration>,
}

/// The managed tokens in a store.
#[derive(Debug, Clone)]
pub struct Credentials {
    store: Store,
    hasher: TokenHasher,
    known_scopes: Vec<String>,
}

const COLUMNS: &str = "id, kind, name, public_prefix, scopes, tenant, created_at, expires_at, revoked_at, last_used_at, superseded_by";

impl Credentials {
    /// The tokens in `store`, hashed with `hasher`; `extra_scopes` are the scopes routes
    /// name beyond the built-in ones.
    pub fn new(store: Store, hasher: TokenHasher, extra_scopes: &[String]) -> Self {
        let mut known_scopes: Vec<String> =
            BUILTIN_SCOPES.iter().map(|s| (*s).to_owned()).collect();
        for scope in extra_scopes {
            if !known_scopes.contains(scope) {
                known_scopes.push(scope.clone());
            }
        }
        Self {
            store,
            hasher,
            known_scopes,
        }
    }

    /// The scopes a token may be given: the built-in ones, then those routes name.
    pub fn known_scopes(&self) -> &[String] {
        &self.known_scopes
    }

    /// Creates a token; the secret is returned once and never stored.
    pub async fn create(
        &self,
        mut new: NewToken,
    ) -> Result<(TokenRecord, SecretString), CredentialError> {
        // A scope named twice is granted once, and listed once.
        let mut seen = Vec::with_capacity(new.scopes.len());
        new.scopes.retain(|scope| {
            if seen.contains(scope) {
                return false;
            }
            seen.push(scope.clone());
            true
        });
        self.validate(&new)?;
        let look = Look::of(&new.name);
        // In each case they could be written in: `CLl` looks like `CLI`.
        let reserved_forms = RESERVED_NAMES.iter().flat_map(|reserved| {
            let title = reserved[..1].to_uppercase() + &reserved[1..];
            [reserved.to_string(), reserved.to_uppercase(), title]
        });
        if reserved_forms
            .map(|form| Look::of(&form))
            .any(|reserved| reserved.alike(&look))
        {
            return Err(CredentialError::ReservedName(new.name));
        }
        // The store's index holds names unique as written; one that only looks like a live
        // name is refused here, in a transaction no other creation runs beside, so that two
        // creations at once (two admins, two replicas) cannot both pass the look.
        let mut transaction = self.store.begin_serialized().await?;
        let live: Vec<(String,)> = sqlx::query_as(
            "SELECT name FROM tokens WHERE revoked_at IS NULL AND superseded_by IS NULL",
        )
        .fetch_all(&mut *transaction)
        .await?;
        if live.iter().any(|(name,)| Look::of(name).alike(&look)) {
            // Now rather than when the connection is next used: the lock goes with it.
            transaction.rollback().await?;
            return Err(CredentialError::DuplicateName(new.name));
        }
        let minted = token::mint();
        let created_at = now();
        let expires_at = new.expires_in.map(|d| {
            created_at
                .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
                .min(LATEST_EXPIRY)
        });
        let record = TokenRecord {
            id: token::new_id("tok"),
            kind: new.kind,
            name: new.name,
            public_prefix: minted.public_prefix,
            scopes: new.scopes,
            tenant: new.tenant,
            created_at,
            expires_at,
            revoked_at: None,
            last_used_at: None,
            superseded_by: None,
        };
        let hash = self.hasher.hash(minted.secret.expose_secret());
        insert(&mut transaction, &record, &hash).await?;
        transaction.commit().await?;
        Ok((record, minted.secret))
    }

    fn validate(&self, new: &NewToken) -> Result<(), CredentialError> {
        if !is_valid_label(&new.name) {
            return Err(CredentialError::InvalidName);
        }
        if new.tenant.as_deref().is_some_and(|t| !is_valid_label(t)) {
            return Err(CredentialError::InvalidTenant);
        }
        if new.scopes.is_empty() {
            return Err(CredentialError::NoScopes);
        }
        if let Some(unknown) = new.scopes.iter().find(|s| !self.known_scopes.contains(s)) {
            return Err(CredentialError::UnknownScope(
                unknown.clone(),
                self.known_scopes.join(", "),
            ));
        }
        // Lifetimes are kept in whole seconds: under one would end as it began.
        if new.expires_in.is_some_and(|d| d.as_secs() == 0) {
            return Err(CredentialError::ExpiryInPast);
        }
        Ok(())
    }

    /// Every token, newest first.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, CredentialError> {
        let sql = format!("SELECT {COLUMNS} FROM tokens ORDER BY created_at DESC, id");
        let rows = sqlx::query(&sql).fetch_all(self.store.pool()).await?;
        rows.iter().map(record_from_row).collect()
    }

    /// The token with `id`.
    pub async fn show(&self, id: &str) -> Result<TokenRecord, CredentialError> {
        let sql = format!("SELECT {COLUMNS} FROM tokens WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref()
            .map(record_from_row)
            .transpose()?
            .ok_or_else(|| CredentialError::NotFound(id.to_owned()))
    }

    /// Revokes the token with `id` at once (revoking twice keeps the first time).
    pub async fn revoke(&self, id: &str) -> Result<Revoked, CredentialError> {
        let changed =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now())
                .bind(id)
                .execute(self.store.pool())
                .await?
                .rows_affected()
                > 0;
        Ok(Revoked {
            record: self.show(id).await?,
            now: changed,
        })
    }

    /// Mints a successor to the token with `id`, with its name, scopes, tenant and
    /// lifetime; the old token stays valid for `overlap` (or until its own expiry, if
    /// sooner), then stops.
    pub async fn rotate(
        &self,
        id: &str,
        overlap: Duration,
    ) -> Result<(TokenRecord, SecretString), CredentialError> {
        let old = self.show(id).await?;
        let at = now();
        if !old.is_live_at(at) || old.superseded_by.is_some() {
            return Err(CredentialError::NotLive(id.to_owned()));
        }
        let minted = token::mint();
        let lifetime = old.expires_at.map(|expires| expires - old.created_at);
        let successor = TokenRecord {
            id: token::new_id("tok"),
            public_prefix: minted.public_prefix,
            created_at: at,
            expires_at: lifetime.map(|l| at.saturating_add(l).min(LATEST_EXPIRY)),
            last_used_at: None,
            revoked_at: None,
            superseded_by: None,
            ..old.clone()
        };
        let overlap_end = at
            .saturating_add(i64::try_from(overlap.as_secs()).unwrap_or(i64::MAX))
            .min(LATEST_EXPIRY);
        let old_expiry = old.expires_at.map_or(overlap_end, |e| e.min(overlap_end));

        let mut transaction = self.store.pool().begin().await?;
        // The old token gives up its name first, so the successor can take it; the
        // conditions make a concurrent revocation, rotation or expiry win.
        let updated = sqlx::query(
            "UPDATE tokens SET superseded_by = $1, expires_at = $2 WHERE id = $3 \
             AND revoked_at IS NULL AND superseded_by IS NULL AND (expires_at IS NULL OR expires_at > $4)",
        )
        .bind(&successor.id)
        .bind(old_expiry)
        .bind(id)
        .bind(at)
        .execute(&mut *transaction)
        .await?;
        if updated.rows_affected() != 1 {
            return Err(CredentialError::NotLive(id.to_owned()));
        }
        insert(
            &mut transaction,
            &successor,
            &self.hasher.hash(minted.secret.expose_secret()),
        )
        .await?;
        transaction.commit().await?;
        Ok((successor, minted.secret))
    }

    /// The record whose stored hash is `hash` (see [`TokenHasher::hash`]), live or not.
    pub async fn lookup_hash(&self, hash: &str) -> Result<Option<TokenRecord>, CredentialError> {
        let sql = format!("SELECT {COLUMNS} FROM tokens WHERE hash = $1");
        let row = sqlx::query(&sql)
            .bind(hash)
            .fetch_optional(self.store.pool())
            .await?;
        row.as_ref().map(record_from_row).transpose()
    }

    /// How many tokens are live now.
    pub async fn count_live(&self) -> Result<usize, CredentialError> {
        Ok(self
            .list()
            .await?
            .iter()
            .filter(|r| r.is_live_at(now()))
            .count())
    }

    /// Records that the tokens `ids` were used at `at`.
    pub async fn mark_used(&self, ids: &[String], at: i64) -> Result<(), CredentialError> {
        for id in ids {
            sqlx::query("UPDATE tokens SET last_used_at = $1 WHERE id = $2")
                .bind(at)
                .bind(id)
                .execute(self.store.pool())
                .await?;
        }
        Ok(())
    }
}

async fn insert(
    connection: &mut sqlx::AnyConnection,
    record: &TokenRecord,
    hash: &str,
) -> Result<(), CredentialError> {
    let inserted = sqlx::query(
        "INSERT INTO tokens (id, name, public_prefix, hash, scopes, tenant, created_at, expires_at, kind) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&record.id)
    .bind(&record.name)
    .bind(&record.public_prefix)
    .bind(hash)
    .bind(record.scopes.join(","))
    .bind(&record.tenant)
    .bind(record.created_at)
    .bind(record.expires_at)
    .bind(record.kind.as_str())
    .execute(connection)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
            Err(CredentialError::DuplicateName(record.name.clone()))
        }
        Err(error) => Err(error.into()),
    }
}

fn record_from_row(row: &AnyRow) -> Result<TokenRecord, CredentialError> {
    let scopes: String = row.try_get("scopes")?;
    let kind: String = row.try_get("kind")?;
    Ok(TokenRecord {
        id: row.try_get("id")?,
        kind: if kind == "capability" {
            CredentialKind::Capability
        } else {
            CredentialKind::Token
        },
        name: row.try_get("name")?,
        public_prefix: row.try_get("public_prefix")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        tenant: row.try_get("tenant")?,
        created_at: row.try_get("created_at")?,
        expires_at: row.try_get("expires_at")?,
        revoked_at: row.try_get("revoked_at")?,
        last_used_at: row.try_get("last_used_at")?,
        superseded_by: row.try_get("superseded_by")?,
    })
}

/// The pepper that keys token hashes: `PORTCULLIS_TOKEN_PEPPER` (or `_FILE`), otherwise,
/// for a SQLite store, one generated once into the data directory with mode 0600. With
/// PostgreSQL the variable is required, since every replica must hash alike.
pub fn load_pepper(
    location: &StoreLocation,
    env: impl Fn(&str) -> Option<String>,
) -> Result<SecretString, CredentialError> {
    if let Some(pepper) = read_secret(PEPPER_VAR, env)? {
        if pepper.expose_secret().len() < 16 {
            return Err(CredentialError::Pepper(format!(
                "{PEPPER_VAR} must be at least 16 characters"
            )));
        }
        return Ok(pepper);
    }
    match location {
        StoreLocation::DataDir(dir) => pepper_from_data_dir(dir),
        StoreLocation::Postgres(_) => Err(CredentialError::Pepper(format!(
            "set {PEPPER_VAR} (or {PEPPER_VAR}_FILE) when the store is PostgreSQL, the same on every replica"
        ))),
    }
}

/// What [`load_pepper`] would refuse for a data directory `dir` whose store does not exist
/// yet, if anything, without creating anything: a variable that cannot be read or is too
/// short, a pepper file too short.
pub fn pepper_problem(dir: &Path, env: impl Fn(&str) -> Option<String>) -> Option<String> {
    let given = env(PEPPER_VAR).is_some() || env(&format!("{PEPPER_VAR}_FILE")).is_some();
    if !given && !dir.join(PEPPER_FILE).exists() {
        return None;
    }
    load_pepper(&StoreLocation::DataDir(dir.to_owned()), env)
        .err()
        .map(|error| error.to_string())
}

fn pepper_from_data_dir(dir: &Path) -> Result<SecretString, CredentialError> {
    // A pepper is made with its store: a new one for an existing store would refuse every
    // token in it, and say nothing.
    if !dir.join(PEPPER_FILE).exists() && dir.join(SQLITE_FILE).exists() {
        return Err(CredentialError::Pepper(format!(
            "{} is missing, but the token store beside it exists: restore the file, or set {PEPPER_VAR} to the pepper it held (a new pepper would refuse every token; if the store held none, remove {SQLITE_FILE} to start afresh)",
            dir.join(PEPPER_FILE).display()
        )));
    }
    key_from_data_dir(
        dir,
        PEPPER_FILE,
        16,
        "every token then needs re-issuing",
        || token::mint().secret,
    )
    .map_err(CredentialError::Pepper)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex_automata::meta::Regex;

    fn label_regex() -> Regex {
        Regex::new(LABEL_PATTERN).unwrap()
    }

    /// Names a reader of the token list or the audit log would take for one another.
    #[test]
    fn names_that_look_alike_have_one_look() {
        let alike = |one: &str, other: &str| Look::of(one).alike(&Look::of(other));
        for alike_deploy in [
            "Deploy",
            "deploy ",
            "deploy\u{3000}",
            "d\u{435}ploy",
            "ＤＥＰＬＯＹ",
        ] {
            assert!(alike(alike_deploy, "deploy"), "{alike_deploy:?}");
        }
        // Capitals of another script whose small letters look otherwise, and a Latin
        // capital whose small letter does.
        for (one, other) in [
            ("\u{412}ob", "bob"),
            ("\u{41a}ate", "kate"),
            ("ingest-\u{412}ot", "Ingest-Bot"),
            ("CLI", "cli"),
            ("CLl", "CLI"),
            ("caf\u{e9}", "cafe\u{301}"),
            ("ci  agent", "ci agent"),
            // Greek lunate sigmas, which compatibility normalisation alone takes to `ς`
            // and `Σ`, where the table does not follow.
            ("\u{3f2}li", "cli"),
            ("\u{3f2}lockwork", "clockwork"),
            ("\u{3f9}LOCKWORK", "clockwork"),
        ] {
            assert!(alike(one, other), "{one:?} and {other:?}");
        }
        for (one, other) in [
            ("deploy-2", "deploy"),
            ("deplo", "deploy"),
            ("ci agent", "deploy"),
            ("CI", "CL"),
            ("API", "APL"),
            ("dev0", "devo"),
        ] {
            assert!(!alike(one, other), "{one:?} and {other:?}");
        }
    }

    /// What the OpenAPI document says: the pattern and the length.
    fn documented(regex: &Regex, text: &str) -> bool {
        regex.is_match(text) && (1..=LABEL_MAX_CHARS).contains(&text.chars().count())
    }

    #[test]
    fn the_label_pattern_agrees_with_the_check_on_every_character() {
        let regex = label_regex();
        for c in (0..=u32::from(char::MAX)).filter_map(char::from_u32) {
            for text in [c.to_string(), format!("a{c}")] {
                assert_eq!(is_valid_label(&text), documented(&regex, &text), "{text:?}");
            }
        }
    }

    proptest! {
        #[test]
        fn the_label_pattern_agrees_with_the_check(text in "(\\PC|\\pC| |\u{3000}){0,110}") {
            prop_assert_eq!(is_valid_label(&text), documented(&label_regex(), &text));
        }
    }

    #[test]
    fn labels() {
        for good in [
            "ci",
            "Alice's laptop",
            "é",
            " x ",
            &"x".repeat(100),
            &"é".repeat(100),
        ] {
            assert!(is_valid_label(good), "{good:?}");
        }
        for bad in [
            "",
            " ",
            "\u{3000}",
            "a\nb",
            "a\0",
            "tab\t",
            "\u{85}",
            "\u{feff}",
            "line\u{2028}break",
            "evil\u{202e}txt.exe",
            "zero\u{200b}width",
            // Names that render as another's, or blank.
            "alice\u{e0041}",
            "bob\u{1d173}",
            "\u{3164}",
            "\u{600}",
            "a\u{fe0f}",
            &"x".repeat(101),
        ] {
            assert!(!is_valid_label(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_generated_pepper_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let location = StoreLocation::DataDir(dir.path().to_owned());
        let first = load_pepper(&location, |_| None).unwrap();
        let second = load_pepper(&location, |_| None).unwrap();
        assert_eq!(first.expose_secret(), second.expose_secret());
        assert!(first.expose_secret().len() >= 16);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(PEPPER_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_short_pepper_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PEPPER_FILE), "short").unwrap();
        let location = StoreLocation::DataDir(dir.path().to_owned());
        assert!(matches!(
            load_pepper(&location, |_| None),
            Err(CredentialError::Pepper(_))
        ));
        let env = |name: &str| (name == PEPPER_VAR).then(|| "too-short".to_owned());
        assert!(matches!(
            load_pepper(&location, env),
            Err(CredentialError::Pepper(_))
        ));
    }
}
