//! Retention, through the real binary on real SQLite and PostgreSQL: old events are
//! deleted with an anchor, the log still verifies, and a deletion retention did not make is
//! still caught.

use std::time::Duration;

use sqlx::Connection;

use crate::audit::{events, request, sqlite_url, tampered, verify, verify_dir};
use crate::common::*;
use crate::managed::PostgresDatabase;

/// `launch` on `dir`, keeping events for `retention`.
fn keeping(launch: Launch, dir: &std::path::Path, retention: &str) -> Gateway {
    let config = write_file(
        dir,
        "retention.toml",
        &format!("[audit]\nretention = \"{retention}\"\n"),
    );
    launch
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start()
}

/// Waits (at most 5 s) for `gateway`'s retention to delete events, and stops it: its log.
async fn trimmed(mut gateway: Gateway) -> String {
    for _ in 0..100 {
        if gateway.log_shows("audit retention: old events deleted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = gateway.final_log();
    assert!(log.contains("audit retention: old events deleted"), "{log}");
    log
}

async fn execute(url: &str, sql: &str) {
    let mut connection = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(sql).execute(&mut connection).await.unwrap();
    // Closed, not dropped, as `events` does.
    connection.close().await.unwrap();
}

/// Each retention anchor's chain and sequence number, in the store at `url`.
async fn anchors(url: &str) -> Vec<(String, i64)> {
    let mut connection = sqlx::AnyConnection::connect(url).await.unwrap();
    let anchors = sqlx::query_as("SELECT chain_id, seq FROM audit_anchors ORDER BY chain_id, seq")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    // Closed, not dropped, as `events` does.
    connection.close().await.unwrap();
    anchors
}

/// Three requests through `gateway` (its audit log's first chain), then, 3 s later, a
/// fourth, `/new`; then stops it.
async fn old_then_new(mut gateway: Gateway) {
    for n in 0..3 {
        let url = gateway.url(&format!("/old/{n}"));
        assert_eq!(request("GET", &url, TOKEN, "").await.status, 200);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let url = gateway.url("/new");
    assert_eq!(request("GET", &url, TOKEN, "").await.status, 200);
    gateway.final_log();
}

/// The sequence numbers of `chain`'s anchors among `anchors`.
fn seqs_of(anchors: &[(String, i64)], chain: &str) -> Vec<i64> {
    anchors
        .iter()
        .filter(|(of, _)| of == chain)
        .map(|(_, seq)| *seq)
        .collect()
}

/// The paths of the requests the store at `url` holds, in chain order.
async fn request_paths(url: &str) -> Vec<String> {
    events(url)
        .await
        .iter()
        .filter(|(kind, ..)| kind == "request")
        .map(|(.., payload)| payload["path"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn retention_deletes_old_events_and_the_log_still_verifies() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    // Old traffic, then (3 s later) new traffic, in one chain.
    old_then_new(keeping(Launch::new(&upstream.url()), &dir, "90d")).await;
    assert_eq!(events(&sqlite_url(&dir)).await.len(), 4);

    // A gateway keeping 2 s trims at start: the old requests go, the new one stays.
    trimmed(keeping(Launch::new(&upstream.url()), &dir, "2s")).await;
    assert_eq!(request_paths(&sqlite_url(&dir)).await, ["/new"]);
    let left = events(&sqlite_url(&dir)).await;
    // The deletion is an event of the running chain, naming the chain it trimmed.
    let recorded = left
        .iter()
        .find(|(kind, ..)| kind == "retention")
        .expect("a retention event");
    assert_eq!(
        recorded.3["events"], 4,
        "the chain start and three requests"
    );
    assert_eq!(recorded.3["through_seq"], 4);
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
    let first_chain = anchors(&sqlite_url(&dir)).await;
    assert_eq!(first_chain.len(), 1, "{first_chain:?}");
    assert_eq!(first_chain[0].1, 4);

    // A deletion retention did not make: the first event it kept (which the chain's final
    // checkpoint, and the next chain's start, name).
    let copy = tampered(
        &dir,
        &["DELETE FROM audit_events WHERE seq = 5 AND kind = 'request'"],
    )
    .await;
    let (ok, out) = verify_dir(&copy);
    assert!(!ok, "{out}");
    assert!(
        out.contains("a checkpoint signs event 5 but the chain ends at event 4 (cut short)"),
        "{out}"
    );
    assert!(
        out.contains("at event 5, which the store does not hold"),
        "{out}"
    );

    // Trimmed again, later, the chain keeps one anchor, the higher: the anchors do not
    // grow with the events trimmed. An anchor the key did not seal is not replaced, but
    // left for `audit verify` to report.
    execute(
        &sqlite_url(&dir),
        &format!(
            "INSERT INTO audit_anchors VALUES ('{}', 2, 'x', 1, 'forged')",
            first_chain[0].0
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let log = trimmed(keeping(Launch::new(&upstream.url()), &dir, "2s")).await;
    let now = anchors(&sqlite_url(&dir)).await;
    let again = seqs_of(&now, &first_chain[0].0);
    assert_eq!(again.len(), 2, "{now:?}\n{log}");
    assert_eq!(again[0], 2, "the forged anchor stays: {now:?}");
    assert!(again[1] > 4, "{now:?}");
    let (ok, out) = verify_dir(&dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the retention anchor at event 2 is not signed by this key"),
        "{out}"
    );
}

/// The same on PostgreSQL: old events deleted, the log verified, and one anchor a chain
/// however often it is trimmed.
#[tokio::test]
async fn retention_on_postgres_deletes_old_events_and_keeps_one_anchor_a_chain() {
    let database = PostgresDatabase::create().await;
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let env = [
        ("PORTCULLIS_DATABASE_URL", database.url.as_str()),
        ("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef"),
        ("PORTCULLIS_AUDIT_KEY", AUDIT_KEY),
    ];
    let on_postgres = || Launch::new(&upstream.url()).envs(&env);
    old_then_new(keeping(on_postgres(), &dir, "90d")).await;

    trimmed(keeping(on_postgres(), &dir, "2s")).await;
    assert_eq!(request_paths(&database.url).await, ["/new"]);
    let (ok, out) = verify(&[], &[], &env);
    assert!(ok, "{out}");
    let first_chain = anchors(&database.url).await;
    assert_eq!(first_chain.len(), 1, "{first_chain:?}");
    assert_eq!(first_chain[0].1, 4);

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let log = trimmed(keeping(on_postgres(), &dir, "2s")).await;
    let now = anchors(&database.url).await;
    let again = seqs_of(&now, &first_chain[0].0);
    assert_eq!(again.len(), 1, "{now:?}\n{log}");
    assert!(again[0] > 4, "{now:?}");
    let (ok, out) = verify(&[], &[], &env);
    assert!(ok, "{out}");
    database.drop_now().await;
}

#[tokio::test]
async fn a_forged_retention_anchor_is_caught() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut first = keeping(Launch::new(&upstream.url()), &dir, "90d");
    assert_eq!(
        request("GET", &first.url("/a"), TOKEN, "").await.status,
        200
    );
    first.final_log();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    trimmed(keeping(Launch::new(&upstream.url()), &dir, "1s")).await;
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
    // Moving an anchor up, to excuse deleting more of a chain, breaks its seal.
    execute(&sqlite_url(&dir), "UPDATE audit_anchors SET seq = seq + 1").await;
    let (ok, out) = verify_dir(&dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("is not signed by this key (forged or edited)"),
        "{out}"
    );
}

/// An event's time column made old (it is not what the hash covers) does not get a recent
/// event deleted and sealed over: retention reads the time from the content, and the edit
/// is still there for `audit verify` to find.
#[tokio::test]
async fn an_edited_time_does_not_make_retention_delete_recent_events() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut first = keeping(Launch::new(&upstream.url()), &dir, "90d");
    assert_eq!(
        request("GET", &first.url("/recent"), TOKEN, "")
            .await
            .status,
        200
    );
    first.final_log();
    execute(
        &sqlite_url(&dir),
        "UPDATE audit_events SET time_ms = 0 WHERE kind = 'request'",
    )
    .await;

    let mut second = keeping(Launch::new(&upstream.url()), &dir, "1h");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = second.final_log();
    assert!(!log.contains("old events deleted"), "{log}");
    let paths: Vec<String> = events(&sqlite_url(&dir))
        .await
        .iter()
        .filter(|(kind, ..)| kind == "request")
        .map(|(.., payload)| payload["path"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(paths, ["/recent"]);
    let (ok, out) = verify_dir(&dir);
    assert!(!ok, "{out}");
    assert!(out.contains("does not match its hash (edited)"), "{out}");
}
