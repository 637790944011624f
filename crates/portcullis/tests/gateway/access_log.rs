//! The access log: one JSON line per request, with the gateway's precise decision, and
//! never a secret.

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::common::*;

/// A gateway in front of `upstream_url` writing its access log to a file, with only `/api`
/// routed.
fn logged(upstream_url: &str) -> (tempfile::TempDir, std::path::PathBuf, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let config = write_file(
        dir.path(),
        "c.toml",
        &format!(
            "[upstreams.api]\nurl = \"{upstream_url}\"\n[[routes]]\npath_prefix = \"/api\"\nupstream = \"api\"\n"
        ),
    );
    let gateway = Launch::bare()
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--access-log")
        .arg(log.to_str().unwrap())
        .start();
    (dir, log, gateway)
}

/// Every line of the log, once the gateway has stopped (so every record is written).
fn logged_lines(gateway: &mut Gateway, log: &std::path::Path) -> Vec<Value> {
    gateway.final_log();
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test]
async fn every_request_is_one_line_with_its_decision() {
    let upstream = Upstream::start().await;
    let (_dir, log, mut gateway) = logged(&upstream.url());
    let bearer = format!("Bearer {TOKEN}");
    let requests: Vec<(&str, Vec<u8>)> = vec![
        ("allowed", raw_get("/api/items?page=2&api_key=k-123&next=Bearer%20abc")),
        ("no_route", raw_get("/other")),
        ("auth_missing", b"GET /api/x HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n".to_vec()),
        (
            "auth_malformed",
            b"GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Basic eDp5\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "auth_unknown",
            b"GET /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer wrong-0123456789abcdef0123456789\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("path_refused", raw_get("/api/%2e%2e/admin")),
        (
            "allowed",
            format!("HEAD /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n").into_bytes(),
        ),
        (
            "method_refused",
            format!("TRACE /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n").into_bytes(),
        ),
        (
            "bad_request",
            format!("GET /api/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nAuthorization: {bearer}\r\nConnection: close\r\n\r\n").into_bytes(),
        ),
        (
            "client_body_error",
            format!("POST /api/x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {bearer}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n").into_bytes(),
        ),
    ];
    for (_, request) in &requests {
        raw(gateway.addr, request).await;
    }
    let metrics = get_authorized(&gateway.admin_url("/metrics")).await;
    let refused = get(&gateway.admin_url("/v1/tokens?token=hidden-value"), &[]).await;
    refused.assert_problem(401, "unauthorized");
    assert!(
        metrics
            .text()
            .contains("portcullis_records_dropped_total 0"),
        "{}",
        metrics.text()
    );
    let mut lines = logged_lines(&mut gateway, &log);
    // Made readable by the owner's group at most, writable by the owner alone: no one else
    // can forge a line.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&log).unwrap().permissions());
    assert_eq!(mode & 0o037, 0, "access log mode {mode:o}");
    // The admin API's requests are recorded too, marked as such, in the order they ended.
    let admin: Vec<Value> = lines
        .iter()
        .filter(|line| line["admin"] == true)
        .cloned()
        .collect();
    lines.retain(|line| line.get("admin").is_none());
    assert_eq!(admin.len(), 2, "{admin:?}");
    assert_eq!(admin[0]["route"], "/metrics");
    assert_eq!(admin[0]["decision"], "allowed");
    assert_eq!(admin[0]["status"], 200);
    assert_eq!(admin[0]["principal"], "static");
    assert!(admin[0]["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(admin[1]["route"], "/v1/tokens");
    assert_eq!(admin[1]["decision"], "auth_missing");
    assert_eq!(admin[1]["status"], 401);
    assert_eq!(admin[1]["query"], "token=***");
    assert_eq!(admin[1]["principal"], Value::Null);

    let decisions: Vec<&str> = lines
        .iter()
        .map(|l| l["decision"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = requests.iter().map(|(decision, _)| *decision).collect();
    assert_eq!(decisions, expected);

    let allowed = &lines[0];
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["route"], "/api");
    assert_eq!(allowed["path"], "/api/items");
    assert_eq!(allowed["query"], "page=2&api_key=***&next=***");
    assert_eq!(allowed["principal"], "static");
    assert_eq!(allowed["upstream"], "api");
    assert_eq!(allowed["client_ip"], "127.0.0.1");
    assert_eq!(allowed["protocol"], "HTTP/1.1");
    assert!(allowed["bytes_out"].as_u64().unwrap() > 0);
    let head = allowed["head_ms"].as_f64().unwrap();
    assert!(head > 0.0 && head <= allowed["duration_ms"].as_f64().unwrap());
    assert!(
        allowed["request_id"]
            .as_str()
            .is_some_and(|id| id.len() == 32)
    );
    assert!(allowed["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(lines[9]["status"], 400);
    assert_eq!(lines[9]["bytes_in"], 0);

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in [
        TOKEN,
        "k-123",
        "Bearer%20abc",
        "wrong-0123456789",
        "hidden-value",
    ] {
        assert!(!text.contains(secret), "{secret} reached the access log");
    }
}

#[tokio::test]
async fn upstream_failures_and_clients_that_leave_are_told_apart() {
    let (_refusing, closed) = refusing_addr();
    let (_dir, log, mut gateway) = logged(&format!("http://{closed}"));
    let reply = raw(gateway.addr, &raw_get("/api/x")).await;
    reply.assert_problem(502, "upstream-unavailable");
    let lines = logged_lines(&mut gateway, &log);
    assert_eq!(lines[0]["decision"], "upstream_connect");
    assert_eq!(lines[0]["status"], 502);

    // A client that sends half its body and leaves.
    let upstream = Upstream::start().await;
    let (_dir, log, mut gateway) = logged(&upstream.url());
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(format!("POST /api/upload HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\n\r\n0123456789").as_bytes())
        .await
        .unwrap();
    drop(stream);
    upstream.wait_for("/api/upload").await;
    let lines = logged_lines(&mut gateway, &log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "client_aborted");
    assert_eq!(lines[0]["bytes_in"], 10);
}

#[tokio::test]
async fn a_head_that_never_arrives_is_recorded_as_a_head_timeout() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut gateway = Launch::new(&upstream.url())
        .arg("--header-read-timeout")
        .arg("1s")
        .arg("--access-log")
        .arg(log.to_str().unwrap())
        .start();
    let reply = raw(gateway.addr, b"GET /api/x HTTP/1.1\r\nHost: gw").await;
    let problem = reply.assert_problem(408, "request-timeout");
    let lines = logged_lines(&mut gateway, &log);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["decision"], "head_timeout");
    assert_eq!(lines[0]["status"], 408);
    assert_eq!(lines[0]["method"], Value::Null);
    assert_eq!(lines[0]["client_ip"], "127.0.0.1");
    assert_eq!(lines[0]["request_id"], problem["request_id"]);
}

/// hyper answers heads it cannot parse itself, before the pipeline runs (RFC 9112 §2.2:
/// a malformed request line or field is a 400; RFC 6585 §5: too many fields is a 431); each
/// is still one record, made by the connection.
#[tokio::test]
async fn heads_the_parser_refuses_are_recorded_with_their_status() {
    let upstream = Upstream::start().await;
    let (_dir, log, mut gateway) = logged(&upstream.url());
    let reply = raw(
        gateway.addr,
        b"GET /api/x HTTP/1.1\r\nHost: gw.test\r\nBad Name: x\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 400);
    let mut many = String::from("GET /api/x HTTP/1.1\r\nHost: gw.test\r\n");
    for i in 0..300 {
        many.push_str(&format!("X-F{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let reply = raw(gateway.addr, many.as_bytes()).await;
    assert_eq!(reply.status, 431);
    let lines = logged_lines(&mut gateway, &log);
    let mut seen: Vec<(&str, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["decision"].as_str().unwrap(),
                l["status"].as_u64().unwrap(),
            )
        })
        .collect();
    // Each is recorded when its connection ends, which may be after the client has read
    // its answer and sent the next: the order between them is not fixed.
    seen.sort();
    assert_eq!(seen, [("bad_request", 400), ("headers_too_large", 431)]);
    assert_eq!(lines[0]["client_ip"], "127.0.0.1");
    assert_eq!(lines[0]["method"], Value::Null);
    assert_eq!(upstream.seen().len(), 0);
}

/// `--log-format json`: the operational log is JSON lines too, each event's fields at the
/// top level.
#[tokio::test]
async fn the_operational_log_can_be_json_lines() {
    let upstream = Upstream::start().await;
    let mut gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_LOG_FORMAT", "json")
        .start();
    let log = gateway.final_log();
    let events: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let listening = events
        .iter()
        .find(|event| event["message"] == "portcullis listening")
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(listening["level"], "INFO");
    assert!(
        listening["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(listening["timestamp"].is_string());
}
