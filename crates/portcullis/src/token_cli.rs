//! `portcullis token ...`: manage tokens directly in the store.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};

use portcullis::audit::{self, AuditLog};
use portcullis::base::exchange::AdminAction;
use portcullis::config::{Config, Overrides, StoreArgs};
use portcullis::credentials::{
    self, CredentialKind, Credentials, LATEST_EXPIRY, NewToken, TokenHasher, TokenRecord,
};
use portcullis::store::{Store, StoreLocation, now};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What to do with tokens.
#[derive(Debug, clap::Subcommand)]
pub enum TokenAction {
    /// Create a token. The token is printed once and never stored.
    Create {
        /// Unique name among live tokens, e.g. the person or service it is for.
        #[arg(long)]
        name: String,
        /// Comma-separated scopes: read, write, admin (implies all), or one a route names.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Lifetime in whole seconds, e.g. 90d or 12h; without it the token does not expire.
        #[arg(long, value_parser = whole_seconds)]
        expires: Option<Duration>,
        /// Tenant the token belongs to.
        #[arg(long)]
        tenant: Option<String>,
        /// Mint a capability: a secret used as the first path segment below a route
        /// with `auth = "capability"`, instead of a bearer token.
        #[arg(long)]
        capability: bool,
    },
    /// List every token (never the tokens themselves).
    List,
    /// Show one token.
    Show {
        /// The token's id (tok_...).
        id: String,
    },
    /// Revoke a token at once.
    Revoke {
        /// The token's id (tok_...).
        id: String,
    },
    /// Mint a successor; the old token keeps working until the overlap ends.
    Rotate {
        /// The token's id (tok_...).
        id: String,
        /// How long the old token stays valid, in whole seconds, e.g. 24h, or 0s.
        #[arg(long, value_parser = whole_seconds, default_value = "24h")]
        overlap: Duration,
    },
}

/// Runs `action` against the store `store_args` names; the scopes a token may hold beside
/// the built-in ones are those the routes of the configuration file `config` name.
pub async fn run(
    store_args: &StoreArgs,
    config: Option<&Path>,
    json: bool,
    action: TokenAction,
) -> ExitCode {
    match execute(store_args, config, json, action).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("portcullis token: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The audit log at `location`, opened off this runtime (it keeps one of its own).
async fn open_audit(location: &StoreLocation) -> Result<AuditLog, String> {
    let env = |name: &str| std::env::var(name).ok();
    let key = audit::load_key(location, env, true).map_err(|e| e.to_string())?;
    let location = location.clone();
    let closing = Arc::new(AtomicBool::new(false));
    tokio::task::spawn_blocking(move || {
        let mut audit = AuditLog::open(&location, None, key, closing)?;
        audit.start_now()?;
        Ok(audit)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e: audit::AuditError| format!("no change made: {e}"))
}

/// The scopes the routes of the configuration file at `path` name. Only the file is read:
/// none of the secrets its variables would give the gateway.
fn route_scopes(path: Option<&Path>) -> Result<Vec<String>, String> {
    let Some(path) = path else {
        return Ok(Vec::new());
    };
    let overrides = Overrides {
        config: Some(path.to_owned()),
        ..Overrides::default()
    };
    let config = Config::load(&overrides, |_| None).map_err(|e| e.to_string())?;
    Ok(config.route_scopes())
}

async fn execute(
    store_args: &StoreArgs,
    config: Option<&Path>,
    json: bool,
    action: TokenAction,
) -> Result<(), String> {
    let env = |name: &str| std::env::var(name).ok();
    // Only a new token's scopes are checked against the routes': a configuration being
    // edited, or unreadable, does not stop a revocation.
    let route_scopes = match action {
        TokenAction::Create { .. } => route_scopes(config)?,
        _ => Vec::new(),
    };
    let location = store_args.location(env).map_err(|e| e.to_string())?;
    let pepper = credentials::load_pepper(&location, env).map_err(|e| e.to_string())?;
    let store = Store::open(&location).await.map_err(|e| e.to_string())?;
    let credentials = Credentials::new(store, TokenHasher::new(&pepper), &route_scopes);
    // A change to the store is audited as the gateway's admin API audits it. The command's
    // chain is stored before the change, so that a store that does not take writes stops
    // it first; should the store fail in between, the command says so and fails.
    let changes = matches!(
        action,
        TokenAction::Create { .. } | TokenAction::Revoke { .. } | TokenAction::Rotate { .. }
    );
    let audit = if changes && audit::enabled_in(env) {
        Some(open_audit(&location).await?)
    } else {
        None
    };
    let done = act(&credentials, config.is_some(), json, action).await;
    if let Some(mut audit) = audit {
        // Recorded, and the audit log's runtime dropped, off this runtime's thread.
        let change = done.as_ref().ok().cloned().flatten();
        tokio::task::spawn_blocking(move || match change {
            Some(action) => audit.record_cli_action(action),
            None => Ok(()),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the change was made, but its audit event is lost: {e}"))?;
    }
    done.map(|_| ())
}

/// A duration in whole seconds, as the store keeps times: `1500ms` would be kept as a
/// second, `500ms` as none.
fn whole_seconds(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if duration.subsec_nanos() == 0 {
        Ok(duration)
    } else {
        Err("times are kept in whole seconds: write e.g. 0s, 90s, 12h or 90d".to_owned())
    }
}

/// Carries out `action`; the change it made to the store, if any, as an admin action.
async fn act(
    credentials: &Credentials,
    knows_routes: bool,
    json: bool,
    action: TokenAction,
) -> Result<Option<AdminAction>, String> {
    let error = |e: credentials::CredentialError| match e {
        credentials::CredentialError::UnknownScope(..) if !knows_routes => {
            format!("{e} (and those the routes name, with --config FILE or PORTCULLIS_CONFIG)")
        }
        e => e.to_string(),
    };
    let mut done = None;
    match action {
        TokenAction::Create {
            name,
            scopes,
            expires,
            tenant,
            capability,
        } => {
            let new = NewToken {
                kind: if capability {
                    CredentialKind::Capability
                } else {
                    CredentialKind::Token
                },
                name,
                scopes,
                tenant,
                expires_in: expires,
            };
            let (record, secret) = credentials.create(new).await.map_err(error)?;
            done = Some(AdminAction::on("token_created", record.id.clone()));
            print_minted("created", &record, &secret, json);
        }
        TokenAction::List => {
            let records = credentials.list().await.map_err(error)?;
            if json {
                println!(
                    "{}",
                    json!(records.iter().map(record_json).collect::<Vec<_>>())
                );
            } else {
                print_table(&records);
            }
        }
        TokenAction::Show { id } => {
            print_record(&credentials.show(&id).await.map_err(error)?, json)
        }
        TokenAction::Revoke { id } => {
            let revoked = credentials.revoke(&id).await.map_err(error)?;
            print_record(&revoked.record, json);
            // Revoking again changes nothing, and is no admin action to audit.
            done = revoked.now.then(|| AdminAction::on("token_revoked", id));
        }
        TokenAction::Rotate { id, overlap } => {
            let (record, secret) = credentials.rotate(&id, overlap).await.map_err(error)?;
            done = Some(AdminAction::rotated(id.clone(), record.id.clone()));
            print_minted(&format!("rotated {id} into"), &record, &secret, json);
            if !json {
                println!(
                    "the old token keeps working for {}",
                    humantime::format_duration(overlap)
                );
            }
        }
    }
    Ok(done)
}

fn print_minted(verb: &str, record: &TokenRecord, secret: &SecretString, json: bool) {
    if json {
        println!(
            "{}",
            json!({ "token": secret.expose_secret(), "record": record_json(record) })
        );
        return;
    }
    println!(
        "{verb} {} ({:?}, scopes {})",
        record.id,
        record.name,
        record.scopes.join(",")
    );
    println!(
        "token (shown once; store it now): {}",
        secret.expose_secret()
    );
}

fn print_record(record: &TokenRecord, json: bool) {
    if json {
        println!("{}", record_json(record));
        return;
    }
    let at = now();
    let rows = [
        ("id", record.id.clone()),
        ("kind", record.kind.as_str().into()),
        ("name", record.name.clone()),
        ("prefix", record.public_prefix.clone()),
        ("scopes", record.scopes.join(",")),
        (
            "tenant",
            record.tenant.clone().unwrap_or_else(|| "-".into()),
        ),
        ("state", record.state(at).into()),
        ("created", time(Some(record.created_at))),
        ("expires", time(record.expires_at)),
        ("revoked", time(record.revoked_at)),
        ("last used", time(record.last_used_at)),
        (
            "superseded by",
            record.superseded_by.clone().unwrap_or_else(|| "-".into()),
        ),
    ];
    for (label, value) in rows {
        println!("{label:>14}: {value}");
    }
}

fn print_table(records: &[TokenRecord]) {
    let at = now();
    println!(
        "{:<18} {:<20} {:<13} {:<16} {:<9} {:<21} LAST USED",
        "ID", "NAME", "PREFIX", "SCOPES", "STATE", "EXPIRES"
    );
    for r in records {
        println!(
            "{:<18} {:<20} {:<13} {:<16} {:<9} {:<21} {}",
            r.id,
            r.name,
            r.public_prefix,
            r.scopes.join(","),
            r.state(at),
            time(r.expires_at),
            time(r.last_used_at)
        );
    }
}

fn record_json(record: &TokenRecord) -> serde_json::Value {
    let at = now();
    json!({
        "id": record.id,
        "kind": record.kind.as_str(),
        "name": record.name,
        "public_prefix": record.public_prefix,
        "scopes": record.scopes,
        "tenant": record.tenant,
        "state": record.state(at),
        "created_at": time_json(Some(record.created_at)),
        "expires_at": time_json(record.expires_at),
        "revoked_at": time_json(record.revoked_at),
        "last_used_at": time_json(record.last_used_at),
        "superseded_by": record.superseded_by,
    })
}

fn time_json(seconds: Option<i64>) -> serde_json::Value {
    seconds.map_or(serde_json::Value::Null, |s| time(Some(s)).into())
}

/// RFC 3339 in UTC, or `-`; a time RFC 3339 cannot write (after the year 9999, which a
/// store written by an earlier version may hold) as seconds since 1970.
fn time(seconds: Option<i64>) -> String {
    match seconds.and_then(|s| u64::try_from(s).ok()) {
        Some(s) if s <= LATEST_EXPIRY.unsigned_abs() => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(s)).to_string()
        }
        Some(s) => format!("{s} seconds after 1970"),
        None => "-".into(),
    }
}
