//! Searching the audit log, through the real binary on real SQLite and PostgreSQL: the
//! admin API's `GET /v1/audit` with its filters, cursors and refusals, and the `audit
//! search`, `tail` (with `--follow`) and `export` commands.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::Connection;

use crate::audit::request;
use crate::common::*;
use crate::managed::PostgresDatabase;

/// A wrong token, well-formed.
const WRONG: &str = "wrong-0123456789abcdef0123456789";

/// `GET /v1/audit?query` on `gateway`'s admin API with [`TOKEN`].
async fn search(gateway: &Gateway, query: &str) -> Reply {
    get_authorized(&gateway.admin_url(&format!("/v1/audit?{query}"))).await
}

/// Searches until `query` finds `count` events (they are written every 200 ms).
async fn search_for(gateway: &Gateway, query: &str, count: usize) -> Vec<Value> {
    for _ in 0..100 {
        let reply = search(gateway, query).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let events = reply.json()["events"].as_array().unwrap().clone();
        if events.len() >= count {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{query} never found {count} events");
}

/// Traffic to search: five allowed requests (two below `/api/items`), one with a wrong
/// token, one to a missing upstream path answered 404 by the upstream.
async fn traffic(gateway: &Gateway) {
    for path in ["/api/items", "/api/items/2", "/api/other", "/x", "/y"] {
        assert_eq!(
            request("GET", &gateway.url(path), TOKEN, "").await.status,
            200
        );
    }
    request("GET", &gateway.url("/api/items"), WRONG, "")
        .await
        .assert_problem(401, "unauthorized");
}

/// What every store must answer alike.
async fn searches_filter_and_page(gateway: &Gateway) {
    traffic(gateway).await;
    let refused = search_for(gateway, "decision=auth_unknown", 1).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["status"], 401);
    assert_eq!(refused[0]["path"], "/api/items");
    assert!(refused[0]["chain_id"].is_string() && refused[0]["seq"].is_u64());

    let below = search_for(gateway, "path_prefix=/api/items&decision=allowed", 2).await;
    let paths: Vec<&str> = below.iter().map(|e| e["path"].as_str().unwrap()).collect();
    // Newest first.
    assert_eq!(paths, ["/api/items/2", "/api/items"]);
    // LIKE's wildcards in the prefix are taken as written.
    let none = search(gateway, "path_prefix=/api/i_ems").await.json();
    assert_eq!(none["events"], serde_json::json!([]));
    assert_eq!(none["next_cursor"], Value::Null);
    let ok = search(
        gateway,
        "status=200&principal=static&route=/&since=1h&kind=x",
    )
    .await;
    ok.assert_problem(400, "bad-request");
    let ok = search(gateway, "status=200&principal=static&route=/&since=1h").await;
    assert_eq!(
        ok.json()["events"].as_array().unwrap().len(),
        5,
        "{}",
        ok.text()
    );
    let future = search(gateway, "since=2999-01-01T00:00:00Z").await.json();
    assert_eq!(future["events"], serde_json::json!([]));

    // Pages of two walk the same events as one page, none twice.
    let all = search_for(gateway, "limit=1000&route=/", 6).await;
    let mut walked = Vec::new();
    let mut query = "limit=2&route=/".to_owned();
    loop {
        let page = search(gateway, &query).await.json();
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= 2);
        walked.extend(events.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=2&route=/&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(walked, all);
    let ids: HashSet<(String, u64)> = walked
        .iter()
        .map(|e| {
            (
                e["chain_id"].as_str().unwrap().to_owned(),
                e["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ids.len(), walked.len());
}

#[tokio::test]
async fn the_admin_api_searches_the_audit_log_on_sqlite() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    searches_filter_and_page(&gateway).await;
}

#[tokio::test]
async fn the_admin_api_searches_the_audit_log_on_postgres() {
    let database = PostgresDatabase::create().await;
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_DATABASE_URL", database.url.clone())
        .env("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef")
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
        .start();
    searches_filter_and_page(&gateway).await;
    drop(gateway);
    database.drop_now().await;
}

/// Every malformed parameter is a 400 problem that does not quote the input back; no
/// admin token is a 401; the audit log off is a 404.
#[tokio::test]
async fn bad_searches_are_refused_with_problems() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    for (query, detail) in [
        ("limit=0", "limit is a whole number from 1 to 1000"),
        ("limit=1001", "limit is a whole number from 1 to 1000"),
        ("status=abc", "status is a whole number from 100 to 599"),
        ("status=600", "status is a whole number from 100 to 599"),
        (
            "since=yesterday",
            "since is an RFC 3339 time (2026-11-27T10:00:00Z) or a duration ago (15m, 1h, 7d)",
        ),
        (
            "cursor=1-2-3",
            "cursor is not a next_cursor this API returned",
        ),
        (
            "principal=a%00b",
            "principal is at most 2048 characters, none of them control characters",
        ),
        (
            "secret-probe=1",
            "the query has an unknown or repeated parameter",
        ),
        (
            "limit=1&limit=2",
            "the query has an unknown or repeated parameter",
        ),
    ] {
        let reply = search(&gateway, query).await;
        let problem = reply.assert_problem(400, "bad-request");
        assert_eq!(problem["detail"], detail, "{query}");
        assert!(!reply.text().contains("secret-probe"), "{query}");
    }
    get(&gateway.admin_url("/v1/audit"), &[])
        .await
        .assert_problem(401, "unauthorized");

    let off = Launch::new(&upstream.url())
        .env("PORTCULLIS_AUDIT", "off")
        .start();
    let problem = search(&off, "").await.assert_problem(404, "not-found");
    assert_eq!(problem["detail"], "the audit log is off");
}

/// `portcullis audit --data-dir DIR ARGS`: whether it passed, and its stdout.
fn audit_command(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let output = portcullis()
        .arg("audit")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test]
async fn the_audit_commands_search_tail_follow_and_export() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut gateway = Launch::new(&upstream.url())
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .start();
    traffic(&gateway).await;
    search_for(&gateway, "decision=auth_unknown", 1).await;

    // Followed while the gateway writes: a request made after tail began shows up.
    let mut follower = portcullis()
        .arg("audit")
        .arg("--data-dir")
        .arg(&dir)
        .args(["tail", "-n", "1", "--follow"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let followed = request("GET", &gateway.url("/followed"), TOKEN, "").await;
    let id = followed.header("x-request-id").unwrap().to_owned();
    let mut seen = vec![first];
    while !seen.iter().any(|line| line.contains(&id)) {
        seen.push(
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("tail --follow never showed {id}: {seen:?}")),
        );
    }
    let _ = follower.kill();
    let _ = follower.wait();
    gateway.final_log();

    let (ok, out) = audit_command(&dir, &["search", "--decision", "auth_unknown"]);
    assert!(ok, "{out}");
    let found: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(found.len(), 1, "{out}");
    assert_eq!(found[0]["status"], 401);
    let (ok, out) = audit_command(&dir, &["search", "--since", "nonsense"]);
    assert!(!ok);
    assert!(out.contains("--since takes an RFC 3339 time"), "{out}");

    let (ok, out) = audit_command(&dir, &["tail", "-n", "2"]);
    assert!(ok, "{out}");
    let last: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(last.len(), 2);
    assert!(
        last[0]["time_ms"].as_u64() <= last[1]["time_ms"].as_u64(),
        "{out}"
    );

    let (ok, jsonl) = audit_command(&dir, &["export"]);
    assert!(ok, "{jsonl}");
    let exported: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Two chain starts (the gateway's and none other), seven requests, in time order.
    assert!(exported.iter().any(|e| e["kind"] == "chain_start"));
    assert_eq!(
        exported
            .iter()
            .filter(|e| e["kind"] == "request" && !e["admin"].as_bool().unwrap())
            .count(),
        7,
        "{jsonl}"
    );
    let (ok, csv) = audit_command(&dir, &["export", "--format", "csv"]);
    assert!(ok, "{csv}");
    let mut rows = csv.split("\r\n").filter(|row| !row.is_empty());
    let header = rows.next().unwrap();
    assert!(header.starts_with("time_ms,chain_id,seq,kind,request_id,"));
    // An admin action's row says which it was, and a rotation's what it made.
    assert!(
        header.ends_with(",user_agent,action,target,successor"),
        "{header}"
    );
    assert_eq!(rows.count(), exported.len());
    let (ok, none) = audit_command(&dir, &["export", "--since", "2999-01-01T00:00:00Z"]);
    assert!(ok && none.is_empty(), "{none}");
    // A search for nothing is a mistake, as the API's limit=0 is.
    let (ok, refused) = audit_command(&dir, &["search", "--limit", "0"]);
    assert!(!ok && refused.contains("--limit"), "{refused}");
    // So are the filters the API refuses: a status no response has, a control character.
    let (ok, refused) = audit_command(&dir, &["search", "--status", "1000"]);
    assert!(!ok && refused.contains("--status"), "{refused}");
    let (ok, refused) = audit_command(&dir, &["search", "--principal", "a\u{1b}[2Jb"]);
    assert!(
        !ok && refused.contains("--principal") && refused.contains("control characters"),
        "{refused}"
    );
}

/// A search the audit store cannot answer is a 503 problem with `Retry-After`, naming no
/// database detail.
#[tokio::test]
async fn a_search_the_store_cannot_answer_is_a_503_problem() {
    let database = PostgresDatabase::create().await;
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_DATABASE_URL", database.url.clone())
        .env("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef")
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
        .start();
    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("DROP TABLE audit_events")
        .execute(&mut connection)
        .await
        .unwrap();
    let reply = search(&gateway, "limit=5").await;
    let problem = reply.assert_problem(503, "store-unavailable");
    assert_eq!(problem["detail"], "the audit store cannot be reached");
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(!reply.text().contains("audit_events"), "{}", reply.text());
    drop(gateway);
    database.drop_now().await;
}
