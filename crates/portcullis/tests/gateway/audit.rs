//! The audit log, through the real binary on real SQLite and PostgreSQL: every request and
//! admin action is an event, no secret is stored, and `audit verify` finds every kind of
//! tampering.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use portcullis::audit::chain::{ChainKey, Checkpoint};
use portcullis::audit::query::shown;
use portcullis::audit::store::StoredEvent;
use secrecy::SecretString;
use serde_json::Value;
use sqlx::{Connection, Row};

use crate::common::*;
use crate::managed::PostgresDatabase;

/// A wrong token, well-formed.
const WRONG: &str = "wrong-0123456789abcdef0123456789";
/// A value that must never reach the store, sent in a sensitive query parameter.
const QUERY_SECRET: &str = "query-secret-4242";
/// A user agent that carries a token.
const AGENT_SECRET: &str = "agent-secret-abcdef0123456789";

pub(crate) async fn request(method: &str, url: &str, token: &str, body: &str) -> Reply {
    send(
        http::Request::builder()
            .method(method)
            .uri(url)
            .header("authorization", format!("Bearer {token}"))
            .header("user-agent", format!("tool/1 Bearer {AGENT_SECRET}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap(),
    )
    .await
}

/// Sends allowed and refused requests, and creates, rotates and revokes a token through the
/// admin API; returns the new token's id and the token itself.
async fn traffic(gateway: &Gateway) -> (String, String) {
    let allowed = request(
        "GET",
        &gateway.url(&format!("/api/items?api_key={QUERY_SECRET}&page=2")),
        TOKEN,
        "",
    )
    .await;
    assert_eq!(allowed.status, 200);
    request("GET", &gateway.url("/api/items"), WRONG, "")
        .await
        .assert_problem(401, "unauthorized");
    let created = request(
        "POST",
        &gateway.admin_url("/v1/tokens"),
        TOKEN,
        r#"{"name":"audited","scopes":["read"]}"#,
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let minted = created.json();
    let id = minted["record"]["id"].as_str().unwrap().to_owned();
    let token = minted["token"].as_str().unwrap().to_owned();
    assert_eq!(
        request("GET", &gateway.url("/api/x"), &token, "")
            .await
            .status,
        200
    );
    let rotated = request(
        "POST",
        &gateway.admin_url(&format!("/v1/tokens/{id}/rotate")),
        TOKEN,
        "",
    )
    .await;
    assert_eq!(rotated.status, 201, "{}", rotated.text());
    let revoke = gateway.admin_url(&format!("/v1/tokens/{id}/revoke"));
    let revoked = request("POST", &revoke, TOKEN, "").await;
    assert_eq!(revoked.status, 200);
    // Revoking again answers the same, and is no second admin action.
    let again = request("POST", &revoke, TOKEN, "").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["revoked_at"], revoked.json()["revoked_at"]);
    (id, token)
}

/// `portcullis audit STORE verify ARGS` with `env`: whether it passed, and what it printed.
pub(crate) fn verify(store: &[&str], args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = portcullis()
        .arg("audit")
        .args(store)
        .arg("verify")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `portcullis audit --data-dir DIR verify`.
pub(crate) fn verify_dir(dir: &Path) -> (bool, String) {
    verify(&["--data-dir", dir.to_str().unwrap()], &[], &[])
}

/// The checkpoint lines of a gateway's log.
fn checkpoints(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains("audit checkpoint"))
        .collect()
}

/// Everything the SQLite audit files hold, as text.
pub(crate) fn sqlite_text(dir: &Path) -> String {
    ["audit.db", "audit.db-wal"]
        .iter()
        .filter_map(|file| std::fs::read(dir.join(file)).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .collect()
}

/// The columns [`stored_event`] reads.
const EVENT_ROW: &str = "chain_id, seq, time_ms, kind, request_id, principal, tenant, status, \
     decision, route, path, client_ip, payload";

/// The event a row of [`EVENT_ROW`] holds (without its links).
fn stored_event(row: &sqlx::any::AnyRow) -> StoredEvent {
    StoredEvent {
        chain_id: row.get(0),
        seq: row.get(1),
        time_ms: row.get(2),
        kind: row.get(3),
        request_id: row.get(4),
        principal: row.get(5),
        tenant: row.get(6),
        status: row.get(7),
        decision: row.get(8),
        route: row.get(9),
        path: row.get(10),
        client_ip: row.get(11),
        payload: row.get(12),
        ..StoredEvent::default()
    }
}

/// The events' kind, decision, principal and every field (as searches show them), in chain
/// order, but for the events that start chains.
pub(crate) async fn events(url: &str) -> Vec<(String, String, Option<String>, Value)> {
    sqlx::any::install_default_drivers();
    let mut connection = sqlx::AnyConnection::connect(url).await.unwrap();
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_ROW} FROM audit_events WHERE kind <> 'chain_start' ORDER BY chain_id, seq"
    ))
    .fetch_all(&mut connection)
    .await
    .unwrap();
    // Closed, not dropped: a dropped SQLite connection closes later, on a thread of its
    // own, and its closing folds the WAL into the file while the test may be copying it.
    connection.close().await.unwrap();
    rows.into_iter()
        .map(|row| {
            let event = stored_event(&row);
            (
                event.kind.clone(),
                event.decision.clone().unwrap_or_default(),
                event.principal.clone(),
                shown(&event),
            )
        })
        .collect()
}

pub(crate) fn sqlite_url(dir: &Path) -> String {
    sqlx::any::install_default_drivers();
    format!("sqlite://{}", dir.join("audit.db").display())
}

/// An admin action event as its action, target, successor and acting principal.
type AdminActionSeen<'a> = (&'a str, &'a str, Option<&'a str>, Option<&'a str>);

fn admin_action_seen<'a>(
    (_, _, principal, payload): &'a (String, String, Option<String>, Value),
) -> AdminActionSeen<'a> {
    (
        payload["action"].as_str().unwrap(),
        payload["target"].as_str().unwrap(),
        payload["successor"].as_str(),
        principal.as_deref(),
    )
}

fn assert_events_describe_the_traffic(
    events: &[(String, String, Option<String>, Value)],
    id: &str,
) {
    let requests: Vec<&str> = events
        .iter()
        .filter(|(kind, ..)| kind == "request")
        .map(|(_, decision, ..)| decision.as_str())
        .collect();
    assert_eq!(
        requests,
        [
            "allowed",
            "auth_unknown",
            "allowed",
            "allowed",
            "allowed",
            "allowed",
            "allowed"
        ],
        "{events:?}"
    );
    let first = &events[0].3;
    assert_eq!(first["path"], "/api/items");
    assert_eq!(first["query"], "api_key=***&page=2");
    assert_eq!(first["user_agent"], "***");
    assert_eq!(first["principal"], "static");
    // A field with no value (a static token has no id, no tenant) is left out, not `null`.
    let first = first.as_object().expect("an event is an object");
    assert!(!first.contains_key("principal_id"), "{first:?}");
    assert!(!first.contains_key("tenant"), "{first:?}");
    let actions: Vec<AdminActionSeen> = events
        .iter()
        .filter(|(kind, ..)| kind == "admin_action")
        .map(admin_action_seen)
        .collect();
    let [created, rotated, revoked] = &actions[..] else {
        panic!("three admin actions: {actions:?}");
    };
    assert_eq!(created, &("token_created", id, None, Some("static")));
    assert_eq!(revoked, &("token_revoked", id, None, Some("static")));
    // A rotation names the token it made, which is neither the old one nor a token.
    let successor = rotated.2.expect("a rotation names its successor");
    assert_eq!(
        rotated,
        &("token_rotated", id, Some(successor), Some("static"))
    );
    assert!(
        successor.starts_with("tok_") && successor != id,
        "{successor}"
    );
    let created = events
        .iter()
        .find(|(kind, _, _, payload)| {
            kind == "admin_action" && payload["action"] == "token_created"
        })
        .expect("the token's creation");
    assert!(
        created.3["bytes_in"]
            .as_u64()
            .is_some_and(|bytes| bytes > 0),
        "the request's body is counted: {}",
        created.3
    );
    let managed = events
        .iter()
        .find(|(_, _, principal, _)| principal.as_deref() == Some("audited"))
        .expect("the managed token's request");
    assert_eq!(managed.3["principal_id"], id);
}

#[tokio::test]
async fn requests_and_admin_actions_are_chained_events_without_secrets_on_sqlite() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut gateway = Launch::new(&upstream.url())
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .start();
    let (id, token) = traffic(&gateway).await;
    let log = gateway.final_log();
    assert!(!checkpoints(&log).is_empty(), "{log}");

    assert_events_describe_the_traffic(&events(&sqlite_url(&dir)).await, &id);
    let stored = sqlite_text(&dir) + &log;
    for secret in [TOKEN, &token, QUERY_SECRET, WRONG, AGENT_SECRET] {
        assert!(!stored.contains(secret), "{secret} was stored or logged");
    }
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
    // The traffic's ten, after the event that starts the chain.
    assert!(out.contains("ok: 1 chain(s), 11 event(s) linked"), "{out}");
    assert!(
        out.contains("note: what the store holds is intact"),
        "{out}"
    );
}

#[tokio::test]
async fn requests_and_admin_actions_are_chained_events_on_postgres() {
    let database = PostgresDatabase::create().await;
    let upstream = Upstream::start().await;
    let env = [
        ("PORTCULLIS_DATABASE_URL", database.url.as_str()),
        ("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef"),
        ("PORTCULLIS_AUDIT_KEY", AUDIT_KEY),
    ];
    let mut gateway = Launch::new(&upstream.url()).envs(&env).start();
    let (id, _) = traffic(&gateway).await;
    gateway.final_log();
    assert_events_describe_the_traffic(&events(&database.url).await, &id);
    let (ok, out) = verify(&[], &[], &env);
    assert!(ok, "{out}");

    // A table someone holds locked: verify gives up after its lock timeout (10 s), with
    // an error, rather than waiting for ever.
    let mut locker = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let mut locked = sqlx::Connection::begin(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locked)
        .await
        .unwrap();
    let owned: Vec<(String, String)> = env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
        .collect();
    let waiting = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = owned
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        verify(&[], &[], &env)
    });
    let (ok, out) = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("verify gave up on the lock")
        .unwrap();
    assert!(!ok && out.contains("lock timeout"), "{out}");
    locked.rollback().await.unwrap();

    // Someone with write access to the database alone cannot hide a refusal.
    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::query(
        "UPDATE audit_events SET payload = replace(payload, 'auth_unknown', 'allowed'), \
         decision = 'allowed' WHERE decision = 'auth_unknown'",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    let (ok, out) = verify(&[], &[], &env);
    assert!(!ok, "{out}");
    assert!(
        out.contains("event 3 does not match its hash (edited)"),
        "{out}"
    );
    database.drop_now().await;
}

#[tokio::test]
async fn postgres_needs_an_audit_key() {
    let database = PostgresDatabase::create().await;
    let output = portcullis()
        .arg("serve")
        .args([
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef")
        .env("PORTCULLIS_DATABASE_URL", &database.url)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("set PORTCULLIS_AUDIT_KEY"), "{err}");
    // `check` says so before `serve` would.
    let output = portcullis()
        .arg("check")
        .args(["--upstream", "http://127.0.0.1:9"])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef")
        .env("PORTCULLIS_DATABASE_URL", &database.url)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains("error[audit.key]"), "{out}");
    database.drop_now().await;
}

/// A copy of the audit files of `dir`, with `statements` applied to it.
pub(crate) async fn tampered(dir: &Path, statements: &[&str]) -> PathBuf {
    let copy = scratch_dir();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.starts_with("audit.") {
            std::fs::copy(&path, copy.join(&name)).unwrap();
        }
    }
    let mut connection = sqlx::AnyConnection::connect(&sqlite_url(&copy))
        .await
        .unwrap();
    for statement in statements {
        sqlx::query(statement)
            .execute(&mut connection)
            .await
            .unwrap();
    }
    connection.close().await.unwrap();
    copy
}

/// Rewrites every event of the SQLite store at `url` in the form earlier builds wrote: the
/// payload repeating every column, the hash over the payload alone; re-links the chains
/// and re-seals their checkpoints under [`AUDIT_KEY`], as those builds did.
async fn rewrite_in_earlier_form(url: &str) {
    let key = ChainKey::new(SecretString::from(AUDIT_KEY.to_owned()));
    let mut connection = sqlx::AnyConnection::connect(url).await.unwrap();
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_ROW} FROM audit_events ORDER BY chain_id, seq"
    ))
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let mut heads: HashMap<(String, i64), String> = HashMap::new();
    for row in rows {
        let event = stored_event(&row);
        let mut fields = shown(&event);
        let fields = fields.as_object_mut().unwrap();
        fields.remove("chain_id");
        fields.remove("seq");
        let payload = Value::Object(fields.clone()).to_string();
        let prev = heads
            .get(&(event.chain_id.clone(), event.seq - 1))
            .cloned()
            .unwrap_or_default();
        let hash = key.link_payload(&event.chain_id, event.seq, &prev, &payload);
        sqlx::query(
            "UPDATE audit_events SET payload = $1, prev_hash = $2, hash = $3 \
             WHERE chain_id = $4 AND seq = $5",
        )
        .bind(payload)
        .bind(prev)
        .bind(hash.clone())
        .bind(event.chain_id.clone())
        .bind(event.seq)
        .execute(&mut connection)
        .await
        .unwrap();
        heads.insert((event.chain_id, event.seq), hash);
    }
    let signed: Vec<(String, i64, i64)> =
        sqlx::query_as("SELECT chain_id, seq, time_ms FROM audit_checkpoints")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    for (chain, seq, time_ms) in signed {
        let mut checkpoint = Checkpoint {
            head: heads
                .get(&(chain.clone(), seq))
                .cloned()
                .unwrap_or_default(),
            chain,
            seq,
            time_ms,
            mac: String::new(),
        };
        checkpoint.mac = key.seal(&checkpoint);
        sqlx::query(
            "UPDATE audit_checkpoints SET head_hash = $1, mac = $2 \
             WHERE chain_id = $3 AND seq = $4 AND time_ms = $5",
        )
        .bind(checkpoint.head)
        .bind(checkpoint.mac)
        .bind(checkpoint.chain)
        .bind(seq)
        .bind(time_ms)
        .execute(&mut connection)
        .await
        .unwrap();
    }
    connection.close().await.unwrap();
}

/// Events written by earlier builds, whose hash covers a payload that repeats every
/// column, still verify and read back as they did; a column edited in one is still found,
/// by the payload it disagrees with.
#[tokio::test]
async fn a_log_in_the_earlier_form_still_verifies_and_reads_the_same() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut gateway = Launch::new(&upstream.url())
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
        .start();
    traffic(&gateway).await;
    gateway.final_log();
    let url = sqlite_url(&dir);
    let written = events(&url).await;
    rewrite_in_earlier_form(&url).await;
    let earlier = events(&url).await;
    assert_eq!(earlier, written);
    // The rewrite did happen: the payload holds the columns too.
    let mut connection = sqlx::AnyConnection::connect(&url).await.unwrap();
    let payloads: Vec<String> =
        sqlx::query_scalar("SELECT payload FROM audit_events WHERE kind = 'request'")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    connection.close().await.unwrap();
    assert!(
        payloads
            .iter()
            .all(|payload| payload.contains("\"decision\":"))
    );

    let env = [("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)];
    let verify_copy = |copy: &Path| verify(&["--data-dir", copy.to_str().unwrap()], &[], &env);
    let (ok, out) = verify_copy(&tampered(&dir, &[]).await);
    assert!(ok, "{out}");
    let cases = [
        (
            "UPDATE audit_events SET decision = 'allowed' WHERE seq = 3",
            "event 3: its decision column disagrees with its content (edited)",
        ),
        (
            "UPDATE audit_events SET payload = replace(payload, '\"status\":401', '\"status\":200') WHERE seq = 3",
            "event 3 does not match its hash (edited)",
        ),
    ];
    for (statement, expected) in cases {
        let (ok, out) = verify_copy(&tampered(&dir, &[statement]).await);
        assert!(!ok, "{statement}: {out}");
        assert!(out.contains(expected), "{statement}: {out}");
    }

    // Upgraded in place: this build's chain follows the earlier one, names its last
    // checkpoint, and both verify together.
    let mut upgraded = Launch::new(&upstream.url())
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
        .start();
    assert_eq!(
        request("GET", &upgraded.url("/api/after"), TOKEN, "")
            .await
            .status,
        200
    );
    upgraded.final_log();
    let (ok, out) = verify(&["--data-dir", dir.to_str().unwrap()], &[], &env);
    assert!(ok && out.contains("ok: 2 chain(s)"), "{out}");
    let paths: Vec<Value> = events(&url)
        .await
        .into_iter()
        .filter(|(kind, ..)| kind == "request")
        .map(|(.., fields)| fields["path"].clone())
        .collect();
    assert_eq!(paths.last(), Some(&Value::from("/api/after")), "{paths:?}");
    assert_eq!(
        paths.len(),
        written
            .iter()
            .filter(|(kind, ..)| kind == "request")
            .count()
            + 1
    );
}

#[tokio::test]
async fn every_kind_of_tampering_is_found() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut gateway = Launch::new(&upstream.url())
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .start();
    traffic(&gateway).await;
    let log = gateway.final_log();
    let saved = dir.join("checkpoint.log");
    std::fs::write(&saved, checkpoints(&log).last().unwrap()).unwrap();
    let verify_copy = |copy: &Path, checkpoint: bool| {
        let store = ["--data-dir", copy.to_str().unwrap()];
        let args = ["--checkpoint", saved.to_str().unwrap()];
        verify(&store, if checkpoint { &args[..] } else { &[] }, &[])
    };

    let untouched = tampered(&dir, &[]).await;
    let (ok, out) = verify_copy(&untouched, true);
    assert!(ok, "an untouched log verifies: {out}");
    assert!(
        !out.contains("note:"),
        "checked against a checkpoint: {out}"
    );
    // The whole shipped log works as the file too: every checkpoint line in it is checked.
    let whole = untouched.join("gateway.log");
    std::fs::write(&whole, &log).unwrap();
    let (ok, out) = verify(
        &["--data-dir", untouched.to_str().unwrap()],
        &["--checkpoint", whole.to_str().unwrap()],
        &[],
    );
    assert!(ok, "{out}");

    // Event 1 starts the chain; 2 is the allowed request, 3 the refused one (401).
    let cases: [(&str, Vec<&str>, &str); 12] = [
        (
            "an edited payload",
            vec![
                "UPDATE audit_events SET payload = replace(payload, '\"method\":\"GET\"', '\"method\":\"PUT\"') WHERE seq = 3",
            ],
            "event 3 does not match its hash (edited)",
        ),
        (
            "an edited column",
            vec!["UPDATE audit_events SET decision = 'allowed' WHERE seq = 3"],
            "event 3 does not match its hash (edited)",
        ),
        (
            "a column emptied",
            vec!["UPDATE audit_events SET principal = NULL WHERE seq = 2"],
            "event 2 does not match its hash (edited)",
        ),
        (
            "a deleted row",
            vec!["DELETE FROM audit_events WHERE seq = 4"],
            "events 4 to 4 are missing (deleted)",
        ),
        (
            "an inserted row",
            vec![
                "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 4",
                "UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1004",
                "INSERT INTO audit_events SELECT chain_id, 4, time_ms, kind, request_id, principal, tenant, status, decision, route, path, client_ip, payload, prev_hash, hash FROM audit_events WHERE seq = 3",
            ],
            "event 4 does not follow event 3",
        ),
        (
            "two rows swapped",
            vec![
                "UPDATE audit_events SET seq = 1003 WHERE seq = 3",
                "UPDATE audit_events SET seq = 3 WHERE seq = 4",
                "UPDATE audit_events SET seq = 4 WHERE seq = 1003",
            ],
            "event 3 does not follow event 2",
        ),
        (
            "a cut tail",
            vec!["DELETE FROM audit_events WHERE seq >= 7"],
            "the chain ends at event 6 (cut short)",
        ),
        (
            "a row numbered before the first",
            vec![
                "INSERT INTO audit_events SELECT chain_id, 0, time_ms, kind, request_id, principal, tenant, status, decision, route, path, client_ip, payload, prev_hash, hash FROM audit_events WHERE seq = 2",
            ],
            "event 0 is numbered before the chain's first (inserted)",
        ),
        (
            "a row with the lowest number there is, below where any walk starts",
            vec![
                "INSERT INTO audit_events SELECT chain_id, -9223372036854775808, time_ms, kind, request_id, principal, tenant, status, decision, route, path, client_ip, payload, prev_hash, hash FROM audit_events WHERE seq = 2",
            ],
            "event -9223372036854775808 is numbered before the chain's first (inserted)",
        ),
        (
            "a row stored twice, its table rebuilt without its key",
            vec![
                "CREATE TABLE copied AS SELECT * FROM audit_events",
                "DROP TABLE audit_events",
                "ALTER TABLE copied RENAME TO audit_events",
                "INSERT INTO audit_events SELECT * FROM audit_events WHERE seq = 3",
            ],
            "event 3 is stored twice (inserted)",
        ),
        (
            "a row whose chain id is not text",
            vec![
                "INSERT INTO audit_events SELECT CAST(chain_id AS BLOB), seq, time_ms, kind, request_id, principal, tenant, status, decision, route, path, client_ip, payload, prev_hash, hash FROM audit_events WHERE seq = 2",
            ],
            // Not a chain left out of the walk: verify cannot read the store, and says so.
            "audit store:",
        ),
        (
            "every row and checkpoint deleted",
            vec!["DELETE FROM audit_events", "DELETE FROM audit_checkpoints"],
            "the store holds no audit event or checkpoint at all",
        ),
    ];
    for (what, statements, expected) in cases {
        let copy = tampered(&dir, &statements).await;
        let (ok, out) = verify_copy(&copy, false);
        assert!(!ok, "{what} went unnoticed: {out}");
        assert!(out.contains(expected), "{what}: {out}");
        // A broken store is not called intact, even in the note about what it cannot show.
        assert!(!out.contains("intact"), "{what}: {out}");
    }

    // Cutting the tail and the stored checkpoints with it: only the logged checkpoint,
    // kept off the host, shows it.
    let copy = tampered(
        &dir,
        &[
            "DELETE FROM audit_events WHERE seq >= 7",
            "DELETE FROM audit_checkpoints",
        ],
    )
    .await;
    let (ok, out) = verify_copy(&copy, false);
    assert!(ok, "without the logged checkpoint nothing shows: {out}");
    let (ok, out) = verify_copy(&copy, true);
    assert!(!ok, "{out}");
    assert!(out.contains("(cut short)"), "{out}");
    // So does the line as log shipping passes it on, after a syslog prefix; and a
    // checkpoint line that cannot be read is refused, not skipped (it would let the cut
    // pass).
    let line = checkpoints(&log).last().unwrap().to_string();
    let shipped = copy.join("shipped.log");
    let check_with = |text: String| {
        std::fs::write(&shipped, text).unwrap();
        verify(
            &["--data-dir", copy.to_str().unwrap()],
            &["--checkpoint", shipped.to_str().unwrap()],
            &[],
        )
    };
    let (ok, out) = check_with(format!("Nov 29 20:36:00 host portcullis[123]: {line}\n"));
    assert!(!ok && out.contains("(cut short)"), "{out}");
    let unreadable = line.replacen(" seq=", " seq=x", 1);
    let (ok, out) = check_with(format!("{}\n{unreadable}\n", checkpoints(&log)[0]));
    assert!(
        !ok && out.contains("line 2: an audit checkpoint line that cannot be read"),
        "{out}"
    );

    // A file with no checkpoint in it proves nothing: refused, not taken as a pass.
    let (ok, out) = verify(
        &["--data-dir", untouched.to_str().unwrap()],
        &[
            "--checkpoint",
            untouched.join("audit.key").to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        !ok && out.contains("holds no audit checkpoint line"),
        "{out}"
    );

    // Without the key, or without the log, verify creates neither: it fails.
    std::fs::remove_file(untouched.join("audit.key")).unwrap();
    let (ok, out) = verify_copy(&untouched, false);
    assert!(!ok && out.contains("no audit.key"), "{out}");
    assert!(!untouched.join("audit.key").exists());
    let empty = scratch_dir();
    let (ok, out) = verify_copy(&empty, false);
    assert!(!ok && out.contains("no audit log at"), "{out}");
    assert!(!empty.join("audit.db").exists());

    // A checkpoint line that was edited does not verify.
    let forged = checkpoints(&log).last().unwrap().replace("head=", "head=0");
    std::fs::write(&saved, forged).unwrap();
    let intact = tampered(&dir, &[]).await;
    let (ok, out) = verify_copy(&intact, true);
    assert!(!ok, "{out}");
    assert!(out.contains("is not signed by this key"), "{out}");
}

#[test]
fn the_audit_log_can_be_turned_off_with_a_warning_and_production_refuses_it() {
    let output = portcullis()
        .arg("check")
        .args(["--production", "--upstream", "http://127.0.0.1:9000"])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_AUDIT", "off")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1));
    assert!(out.contains("error[audit.enabled]"), "{out}");

    let output = portcullis()
        .arg("check")
        .args(["--upstream", "http://127.0.0.1:9000"])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_AUDIT", "off")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{out}");
    assert!(out.contains("warning[audit.enabled]"), "{out}");

    // In production the chain key must come from outside the data directory.
    let output = portcullis()
        .arg("check")
        .args(["--production", "--upstream", "http://127.0.0.1:9000"])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("error[production.audit_key]"), "{out}");
    let output = portcullis()
        .arg("check")
        .args(["--production", "--upstream", "http://127.0.0.1:9000"])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(!out.contains("audit_key"), "{out}");

    // A key file is kept apart only outside the data directory: the generated one, named
    // in the variable, is still beside the log.
    let data_dir = scratch_dir();
    let inside = write_file(&data_dir, "audit.key", AUDIT_KEY);
    let outside_dir = scratch_dir();
    let outside = write_file(&outside_dir, "audit.key", AUDIT_KEY);
    for (file, refused) in [(&inside, true), (&outside, false)] {
        let output = portcullis()
            .arg("check")
            .args(["--production", "--upstream", "http://127.0.0.1:9000"])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("PORTCULLIS_API_TOKENS", TOKEN)
            .env("PORTCULLIS_AUDIT_KEY_FILE", file)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            out.contains("error[production.audit_key]"),
            refused,
            "{file:?}: {out}"
        );
    }
}

/// `portcullis token` changes the store directly: each change is audited too, as an admin
/// action by `cli`, in a chain of its own that verifies.
#[tokio::test]
async fn token_command_changes_are_audited() {
    let dir = scratch_dir();
    let token = |args: &[&str]| {
        let output = token_command(&dir, args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let created = token(&["create", "--name", "cli-made", "--scopes", "read"]);
    let id = created["record"]["id"].as_str().unwrap().to_owned();
    token(&["list"]);
    let rotated = token(&["rotate", &id]);
    let successor = rotated["record"]["id"].as_str().unwrap().to_owned();
    token(&["revoke", &successor]);
    // Again: the same record, and no second admin action (the command's chain holds only
    // its start).
    let again = token(&["revoke", &successor]);
    assert_eq!(again["state"], "revoked");

    let events = events(&sqlite_url(&dir)).await;
    // One chain per command, in no particular order among themselves.
    let mut actions: Vec<AdminActionSeen> = events
        .iter()
        .inspect(|(kind, ..)| assert_eq!(kind, "admin_action"))
        .map(admin_action_seen)
        .collect();
    actions.sort();
    assert_eq!(
        actions,
        [
            ("token_created", id.as_str(), None, Some("cli")),
            ("token_revoked", successor.as_str(), None, Some("cli")),
            (
                "token_rotated",
                id.as_str(),
                Some(successor.as_str()),
                Some("cli")
            ),
        ]
    );
    let stored = sqlite_text(&dir);
    for minted in [&created, &rotated] {
        assert!(!stored.contains(minted["token"].as_str().unwrap()));
    }
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
    assert!(out.contains("ok: 4 chain(s), 7 event(s) linked"), "{out}");
}

/// What `audit verify` says of a copy of `dir` without the chain `chain` (an SQL
/// expression of its id), deleted whole with its checkpoints: a failure.
async fn verify_without_chain(dir: &Path, chain: &str) -> String {
    let copy = tampered(
        dir,
        &[
            &format!("DELETE FROM audit_checkpoints WHERE chain_id = {chain}"),
            &format!("DELETE FROM audit_events WHERE chain_id = {chain}"),
        ],
    )
    .await;
    let (ok, out) = verify_dir(&copy);
    assert!(!ok, "{out}");
    out
}

/// Each chain starts by naming the points the chains before it reached: deleting an
/// earlier chain whole shows, even with no log at hand.
#[tokio::test]
async fn a_deleted_earlier_chain_shows() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    for _ in 0..2 {
        let mut gateway = Launch::new(&upstream.url())
            .arg("--data-dir")
            .arg(dir.to_str().unwrap())
            .start();
        assert_eq!(
            request("GET", &gateway.url("/x"), TOKEN, "").await.status,
            200
        );
        gateway.final_log();
    }
    let (ok, out) = verify_dir(&dir);
    assert!(ok && out.contains("ok: 2 chain(s)"), "{out}");
    let first =
        "(SELECT chain_id FROM audit_events WHERE seq = 1 AND payload LIKE '%\"follows\":[]%')";
    let out = verify_without_chain(&dir, first).await;
    assert!(
        out.contains("which the store does not hold (deleted or cut short)"),
        "{out}"
    );
}

/// A `portcullis token` command's chain is named by the gateway that runs meanwhile, in a
/// `follows` event with its next checkpoint: deleting it whole shows, with no other chain
/// started after it.
#[tokio::test]
async fn a_token_commands_chain_deleted_while_a_gateway_runs_shows() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut gateway = Launch::new(&upstream.url())
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .start();
    let (id, _) = mint_with_id(&dir, "first", "read");
    // A checkpoint every 1000 events (or 60 s): the gateway looks for other chains with it,
    // at most once a second (its first look came with its first batch).
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let before = checkpoints(&gateway.log()).len();
    for _ in 0..1000 {
        assert_eq!(
            request("GET", &gateway.url("/x"), TOKEN, "").await.status,
            200
        );
    }
    let mut waited = 0;
    while checkpoints(&gateway.log()).len() == before && waited < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        waited += 1;
    }
    assert!(
        checkpoints(&gateway.log()).len() > before,
        "{}",
        gateway.log()
    );
    gateway.final_log();
    let (ok, out) = verify_dir(&dir);
    assert!(ok && out.contains("ok: 2 chain(s)"), "{out}");

    let command = format!(
        "(SELECT chain_id FROM audit_events WHERE kind = 'admin_action' AND payload LIKE '%{id}%')"
    );
    let out = verify_without_chain(&dir, &command).await;
    assert!(out.contains(": 1 chain(s)"), "{out}");
    assert!(
        out.contains("which the store does not hold (deleted or cut short)"),
        "{out}"
    );
}

/// A new chain names only what the key signed: a chain start forged to name a chain far
/// ahead (so that no real chain would name it), a checkpoint forged past a chain's end
/// (so that it would be named at a point it never reached), and a retention anchor forged
/// past it (so that it would pass for trimmed), are passed over; the forged rows are
/// reported, the chain that started after them is not.
#[tokio::test]
async fn a_new_chain_names_only_what_the_key_signed() {
    let dir = scratch_dir();
    let (id, _) = mint_with_id(&dir, "first", "read");
    let mut connection = sqlx::AnyConnection::connect(&sqlite_url(&dir))
        .await
        .unwrap();
    let first: String = sqlx::query_scalar(&format!(
        "SELECT chain_id FROM audit_events WHERE kind = 'admin_action' AND payload LIKE '%{id}%'"
    ))
    .fetch_one(&mut connection)
    .await
    .unwrap();
    let forged_chain = "f".repeat(32);
    let follows = format!(
        r#"{{"kind":"chain_start","time_ms":1,"follows":[{{"chain":"{first}","seq":999,"head":"x"}}]}}"#
    );
    sqlx::query(
        "INSERT INTO audit_events (chain_id, seq, time_ms, kind, payload, prev_hash, hash) \
         VALUES ($1, 1, 1, 'chain_start', $2, '', 'forged')",
    )
    .bind(forged_chain.as_str())
    .bind(follows.as_str())
    .execute(&mut connection)
    .await
    .unwrap();
    for table in ["audit_checkpoints", "audit_anchors"] {
        sqlx::query(&format!(
            "INSERT INTO {table} VALUES ($1, 50, 'x', 1, 'forged')"
        ))
        .bind(first.as_str())
        .execute(&mut connection)
        .await
        .unwrap();
    }
    connection.close().await.unwrap();
    mint_with_id(&dir, "second", "read");

    let (ok, out) = verify_dir(&dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "chain {forged_chain}: event 1 does not match its hash"
        )),
        "{out}"
    );
    assert!(out.contains("is not signed by this key"), "{out}");
    assert!(!out.contains("which the store does not hold"), "{out}");

    // The forged rows taken away with the first chain: the second chain still names it.
    let copy = tampered(
        &dir,
        &[
            &format!("DELETE FROM audit_events WHERE chain_id IN ('{first}', '{forged_chain}')"),
            &format!("DELETE FROM audit_checkpoints WHERE chain_id = '{first}'"),
            &format!("DELETE FROM audit_anchors WHERE chain_id = '{first}'"),
        ],
    )
    .await;
    let (ok, out) = verify_dir(&copy);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!(
            "names chain {first} at event 2, which the store does not hold"
        )),
        "{out}"
    );
}

/// `portcullis token` stores its chain's start before it changes anything: when the audit
/// store takes no writes (another connection holds its write lock), the command fails,
/// says that nothing changed, and the token store is as it was.
#[tokio::test]
async fn a_token_command_changes_nothing_when_the_audit_store_takes_no_writes() {
    let dir = scratch_dir();
    mint_with_id(&dir, "before", "read");
    let mut lock = sqlx::AnyConnection::connect(&sqlite_url(&dir))
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    let refused = token_command(&dir, &["create", "--name", "after", "--scopes", "read"]);
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    assert!(
        stderr.contains("portcullis token: no change made: "),
        "{stderr}"
    );

    assert_eq!(token_names(&dir), ["before"]);
}

/// The names of the tokens `portcullis token list` lists in `dir`, sorted.
fn token_names(dir: &Path) -> Vec<String> {
    let listed = token_command(dir, &["list"]);
    assert!(listed.status.success(), "{listed:?}");
    let mut names: Vec<String> = serde_json::from_slice::<Value>(&listed.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|record| record["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

/// Should the audit store refuse the action's event after the command's chain started (a
/// trigger here refuses exactly that event), the change stands and was shown, and the
/// command fails saying that its event is lost, after trying for its 10 s.
#[tokio::test]
async fn a_token_command_whose_event_is_refused_after_the_change_says_so() {
    let dir = scratch_dir();
    mint_with_id(&dir, "before", "read");
    let mut connection = sqlx::AnyConnection::connect(&sqlite_url(&dir))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_actions BEFORE INSERT ON audit_events \
         WHEN NEW.kind = 'admin_action' BEGIN SELECT RAISE(ABORT, 'refused'); END",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();

    let made = token_command(&dir, &["create", "--name", "after", "--scopes", "read"]);
    let stderr = String::from_utf8_lossy(&made.stderr);
    assert_eq!(made.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("portcullis token: the change was made, but its audit event is lost: "),
        "{stderr}"
    );
    let shown: Value = serde_json::from_slice(&made.stdout).unwrap();
    assert_eq!(shown["record"]["name"], "after");
    let token = shown["token"].as_str().unwrap();
    assert!(!stderr.contains(token), "{stderr}");

    assert_eq!(token_names(&dir), ["after", "before"]);
    // The command's chain started (stored before the change), and holds nothing more.
    let kinds: Vec<String> = events(&sqlite_url(&dir))
        .await
        .into_iter()
        .map(|(kind, ..)| kind)
        .collect();
    assert_eq!(kinds, ["admin_action"], "only the first command's action");
    let mut connection = sqlx::AnyConnection::connect(&sqlite_url(&dir))
        .await
        .unwrap();
    let starts: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE kind = 'chain_start'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(starts, 2, "each command's chain start");
}

/// A data directory whose spool cannot be written (its path is a directory).
pub(crate) fn unspoolable_dir() -> PathBuf {
    let dir = scratch_dir();
    std::fs::create_dir(dir.join("audit.spool")).unwrap();
    dir
}

/// While neither the audit store nor the spool takes writes, records pile up in memory:
/// `/ready` says so, so that load balancers move traffic away before the gateway stalls.
#[tokio::test]
async fn ready_fails_while_the_audit_store_and_spool_refuse_writes() {
    let database = PostgresDatabase::create().await;
    let upstream = Upstream::start().await;
    let mut gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_DATA_DIR", unspoolable_dir().to_str().unwrap())
        .env("PORTCULLIS_DATABASE_URL", database.url.clone())
        .env("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef")
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
        .start();
    assert_eq!(get(&gateway.url("/ready"), &[]).await.status, 200);

    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("DROP TABLE audit_events")
        .execute(&mut connection)
        .await
        .unwrap();
    // A request, so that there is an event to write.
    assert_eq!(
        request("GET", &gateway.url("/x"), TOKEN, "").await.status,
        200
    );
    let mut reply = get(&gateway.url("/ready"), &[]).await;
    for _ in 0..100 {
        if reply.status == 503 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        reply = get(&gateway.url("/ready"), &[]).await;
    }
    let problem = reply.assert_problem(503, "not-ready");
    assert_eq!(
        problem["detail"],
        "the audit log's store and spool refuse writes"
    );
    assert!(gateway.log_shows("the store refused a batch"));
    assert!(gateway.log_shows("the spool cannot be written either"));

    // SIGTERM still ends the process: the store gets a last 10 s, then the events it
    // would not take are given up, loudly.
    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    let log = gateway.whole_log();
    assert!(log.contains("they are lost"), "{log}");
    database.drop_now().await;
}

/// `[audit] database_url_env` naming a variable that is unset, or that holds something
/// other than a PostgreSQL URL, stops `serve` (exit 2) and fails `check`, without echoing
/// the value (a URL may hold a password).
#[test]
fn an_audit_database_variable_unset_or_not_postgres_stops_the_start() {
    let dir = scratch_dir();
    let config = write_file(
        &dir,
        "audit-db.toml",
        "[audit]\ndatabase_url_env = \"AUDIT_DATABASE_URL\"\n",
    );
    let run = |command: &str, url: Option<&str>| {
        let mut process = portcullis();
        process
            .arg(command)
            .args(["--upstream", "http://127.0.0.1:9", "--config"])
            .arg(&config)
            .env("PORTCULLIS_API_TOKENS", TOKEN);
        if command == "serve" {
            process.args(["--listen", "127.0.0.1:0", "--admin-listen", "off"]);
        }
        if let Some(url) = url {
            process.env("AUDIT_DATABASE_URL", url);
        }
        let output = process.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    };
    let (code, err) = run("serve", None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("AUDIT_DATABASE_URL is not set, but audit.database_url_env names it"),
        "{err}"
    );
    let (code, err) = run("serve", Some("mysql://user:hunter2@db/audit"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "AUDIT_DATABASE_URL (named by audit.database_url_env) must start with postgres://"
        ),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    let (code, out) = run("check", None);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("error[audit.location]"), "{out}");
}

/// An audit store on each kind: SQLite in `dir`, and the PostgreSQL `database`.
fn both_stores(dir: &Path, database: &PostgresDatabase) -> [portcullis::config::StoreLocation; 2] {
    use portcullis::config::StoreLocation;
    [
        StoreLocation::DataDir(dir.to_owned()),
        StoreLocation::Postgres(SecretString::from(database.url.clone())),
    ]
}

/// The heads a new chain names are read in one query, a loose index scan over the
/// checkpoints' key: on both stores, it finds each chain's newest checkpoint (by sequence,
/// then time) as a query of that chain's own checkpoints does, among chains checkpointed
/// often, once, or again and again at the same event (idle).
#[tokio::test]
async fn the_newest_checkpoint_of_every_chain_in_one_query() {
    use portcullis::audit::chain::Checkpoint;
    use portcullis::audit::store::AuditStore;

    let dir = tempfile::tempdir().unwrap();
    let database = PostgresDatabase::create().await;
    let locations = both_stores(dir.path(), &database);
    let checkpoint = |chain: &str, seq: i64, time_ms: i64| Checkpoint {
        chain: chain.repeat(32),
        seq,
        head: format!("{chain}-{seq}"),
        time_ms,
        mac: format!("{chain}-{seq}-{time_ms}"),
    };
    let written = [
        // Sequence decides before time: a clock set back does not hide a later event.
        checkpoint("a", 1000, 50),
        checkpoint("a", 2000, 40),
        // Idle: the same event checkpointed again, later.
        checkpoint("b", 7, 10),
        checkpoint("b", 7, 30),
        checkpoint("b", 7, 20),
        checkpoint("c", 0, 5),
        checkpoint("d", 3, 1),
        checkpoint("d", 4, 2),
        checkpoint("d", 5, 3),
    ];
    for location in &locations {
        let store = AuditStore::open(location).await.unwrap();
        for written in &written {
            store.append(&[], Some(written)).await.unwrap();
        }
        let mut newest = store.newest_checkpoints().await.unwrap();
        newest.sort_by(|x, y| x.chain.cmp(&y.chain));
        assert_eq!(
            newest,
            [
                checkpoint("a", 2000, 40),
                checkpoint("b", 7, 30),
                checkpoint("c", 0, 5),
                checkpoint("d", 5, 3),
            ]
        );
        for head in &newest {
            let all = store.checkpoints(&head.chain).await.unwrap();
            assert_eq!(all.last(), Some(head));
        }
    }
    database.drop_now().await;
}

/// A chain read a page at a time (as `audit verify`, `tail --follow` and retention read it)
/// gives the first events numbered past the cursor, in order, as many as asked, on both
/// stores: across gaps (deleted events), from a number below the chain's first (an
/// inserted row), and only the chain asked for.
#[tokio::test]
async fn a_chain_reads_in_pages_across_gaps_on_both_stores() {
    use portcullis::audit::store::AuditStore;

    let dir = tempfile::tempdir().unwrap();
    let database = PostgresDatabase::create().await;
    let locations = both_stores(dir.path(), &database);
    let event = |chain: &str, seq: i64| StoredEvent {
        chain_id: chain.repeat(32),
        seq,
        time_ms: 1_000 + seq,
        kind: "request".to_owned(),
        payload: "{}".to_owned(),
        prev_hash: format!("{chain}-{}", seq - 1),
        hash: format!("{chain}-{seq}"),
        ..StoredEvent::default()
    };
    let numbers = [-4, 1, 2, 3, 5, 6, 9, 10, 11, 40, 41];
    for location in &locations {
        let store = AuditStore::open(location).await.unwrap();
        let mine: Vec<StoredEvent> = numbers.iter().map(|&seq| event("a", seq)).collect();
        let other: Vec<StoredEvent> = (1..=30).map(|seq| event("b", seq)).collect();
        store.append(&mine, None).await.unwrap();
        store.append(&other, None).await.unwrap();

        let mut pages = Vec::new();
        let mut cursor = i64::MIN;
        loop {
            let page = store.events(&"a".repeat(32), cursor, 4).await.unwrap();
            let Some(last) = page.last() else { break };
            cursor = last.seq;
            pages.push(page.iter().map(|event| event.seq).collect::<Vec<_>>());
        }
        assert_eq!(
            pages,
            [vec![-4, 1, 2, 3], vec![5, 6, 9, 10], vec![11, 40, 41]]
        );
        let whole = store.events(&"a".repeat(32), i64::MIN, 100).await.unwrap();
        assert_eq!(whole, mine);
        assert!(
            store
                .events(&"a".repeat(32), 41, 4)
                .await
                .unwrap()
                .is_empty()
        );
    }
    database.drop_now().await;
}

/// Replicas started at once on a new PostgreSQL database all open the audit store: its
/// tables and indexes are created by one at a time (PostgreSQL's `IF NOT EXISTS` does not
/// hold against a create running beside it).
#[tokio::test]
async fn replicas_starting_at_once_create_the_audit_tables_once() {
    use portcullis::audit::store::AuditStore;
    use portcullis::config::StoreLocation;

    let database = PostgresDatabase::create().await;
    let location = StoreLocation::Postgres(secrecy::SecretString::from(database.url.clone()));
    let opens = (0..8).map(|_| AuditStore::open(&location));
    for opened in futures_util::future::join_all(opens).await {
        if let Err(error) = opened {
            panic!("{error}");
        }
    }
    database.drop_now().await;
}

/// A filter set to warn keeps the checkpoint lines, which log shipping carries off the
/// host, and nothing else of the audit log's at info.
#[test]
fn checkpoints_are_logged_whatever_the_filter_and_nothing_else_below_it() {
    let dir = scratch_dir();
    let output = portcullis()
        .args(["token", "--data-dir", dir.to_str().unwrap()])
        .args(["create", "--name", "ci", "--scopes", "read"])
        .env("PORTCULLIS_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("INFO portcullis::checkpoint: audit checkpoint chain="),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .all(|line| !line.contains("INFO") || line.contains("audit checkpoint")),
        "{stderr}"
    );
}
