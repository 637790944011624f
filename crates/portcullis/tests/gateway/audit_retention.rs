//! Retention, through the real binary on real SQLite: old events are deleted with an
//! anchor, the log still verifies, and a deletion retention did not make is still caught.

use std::time::Duration;

use sqlx::Connection;

use crate::audit::{events, request, sqlite_url, tampered, verify_dir};
use crate::common::*;

/// A gateway on `dir` keeping events for `retention`.
fn keeping(upstream: &str, dir: &std::path::Path, retention: &str) -> Gateway {
    let config = write_file(
        dir,
        "retention.toml",
        &format!("[audit]\nretention = \"{retention}\"\n"),
    );
    Launch::new(upstream)
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start()
}

async fn execute(dir: &std::path::Path, sql: &str) {
    let mut connection = sqlx::AnyConnection::connect(&sqlite_url(dir))
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut connection).await.unwrap();
}

#[tokio::test]
async fn retention_deletes_old_events_and_the_log_still_verifies() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    // Old traffic, then (3 s later) new traffic, in one chain.
    let mut first = keeping(&upstream.url(), &dir, "90d");
    for n in 0..3 {
        let url = first.url(&format!("/old/{n}"));
        assert_eq!(request("GET", &url, TOKEN, "").await.status, 200);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let url = first.url("/new");
    assert_eq!(request("GET", &url, TOKEN, "").await.status, 200);
    first.final_log();
    assert_eq!(events(&sqlite_url(&dir)).await.len(), 4);

    // A gateway keeping 2 s trims at start: the old requests go, the new one stays.
    let mut second = keeping(&upstream.url(), &dir, "2s");
    for _ in 0..100 {
        if second.log_shows("audit retention: old events deleted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = second.final_log();
    assert!(log.contains("audit retention: old events deleted"), "{log}");
    let left = events(&sqlite_url(&dir)).await;
    let paths: Vec<&str> = left
        .iter()
        .filter(|(kind, ..)| kind == "request")
        .map(|(.., payload)| payload["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["/new"], "{left:?}");
    // The deletion is an event of the running chain, naming the chain it trimmed.
    let trimmed = left
        .iter()
        .find(|(kind, ..)| kind == "retention")
        .expect("a retention event");
    assert_eq!(trimmed.3["events"], 4, "the chain start and three requests");
    assert_eq!(trimmed.3["through_seq"], 4);
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
    let first_chain = anchors(&dir).await;
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
        &dir,
        &format!(
            "INSERT INTO audit_anchors VALUES ('{}', 2, 'x', 1, 'forged')",
            first_chain[0].0
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut third = keeping(&upstream.url(), &dir, "2s");
    for _ in 0..100 {
        if third.log_shows(&format!("chain={} through_seq=", first_chain[0].0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = third.final_log();
    let now = anchors(&dir).await;
    let again: Vec<i64> = now
        .iter()
        .filter(|(chain, _)| *chain == first_chain[0].0)
        .map(|(_, seq)| *seq)
        .collect();
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

/// Each retention anchor's chain and sequence number.
async fn anchors(dir: &std::path::Path) -> Vec<(String, i64)> {
    let mut connection = sqlx::AnyConnection::connect(&sqlite_url(dir))
        .await
        .unwrap();
    sqlx::query_as("SELECT chain_id, seq FROM audit_anchors ORDER BY chain_id, seq")
        .fetch_all(&mut connection)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_forged_retention_anchor_is_caught() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut first = keeping(&upstream.url(), &dir, "90d");
    assert_eq!(
        request("GET", &first.url("/a"), TOKEN, "").await.status,
        200
    );
    first.final_log();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut second = keeping(&upstream.url(), &dir, "1s");
    for _ in 0..100 {
        if second.log_shows("audit retention: old events deleted") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    second.final_log();
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
    // Moving an anchor up, to excuse deleting more of a chain, breaks its seal.
    execute(&dir, "UPDATE audit_anchors SET seq = seq + 1").await;
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
    let mut first = keeping(&upstream.url(), &dir, "90d");
    assert_eq!(
        request("GET", &first.url("/recent"), TOKEN, "")
            .await
            .status,
        200
    );
    first.final_log();
    execute(
        &dir,
        "UPDATE audit_events SET time_ms = 0 WHERE kind = 'request'",
    )
    .await;

    let mut second = keeping(&upstream.url(), &dir, "1h");
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
    assert!(
        out.contains("its time_ms column disagrees with its content (edited)"),
        "{out}"
    );
}
