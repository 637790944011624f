//! Bearer tokens: fail-closed start, every refusal, rotation, secrets kept out of logs.

use bytes::Bytes;
use http::{HeaderValue, Request};
use http_body_util::Full;

use crate::common::*;

#[test]
fn serve_refuses_to_start_without_credentials() {
    let output = portcullis()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "http://127.0.0.1:9",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("PORTCULLIS_API_TOKENS"), "{stderr}");
    assert!(lines[0].contains("portcullis token create"), "{stderr}");
    assert!(!stderr.contains("listening"), "it must not bind: {stderr}");
}

#[test]
fn an_empty_token_list_is_no_credential() {
    let output = portcullis()
        .args(["serve", "--upstream", "http://127.0.0.1:9"])
        .env("PORTCULLIS_API_TOKENS", " , ")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("PORTCULLIS_API_TOKENS"));
}

async fn with_authorization(gateway: &Gateway, values: &[&[u8]]) -> Reply {
    let mut request = Request::get(gateway.url("/v1/positions"))
        .body(Full::<Bytes>::default())
        .unwrap();
    for value in values {
        request
            .headers_mut()
            .append("authorization", HeaderValue::from_bytes(value).unwrap());
    }
    send(request).await
}

#[tokio::test]
async fn every_bad_authorization_header_is_401_and_never_forwarded() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let good = format!("Bearer {TOKEN}");
    let overlong = format!("Bearer {}", "a".repeat(5000));
    // No credential, or one in another scheme, is told only that a bearer token is wanted
    // (RFC 6750 §3.1: no error code); one that was sent and refused, `invalid_token`.
    let bare = "Bearer realm=\"portcullis\"";
    let refused = "Bearer realm=\"portcullis\", error=\"invalid_token\"";
    let cases: Vec<(&str, Vec<&[u8]>)> = vec![
        ("missing", vec![]),
        ("empty", vec![b""]),
        ("scheme only", vec![b"Bearer"]),
        ("non-ASCII", vec!["Bearer t\u{f6}ken".as_bytes()]),
        ("wrong scheme", vec![b"Basic dXNlcjpwYXNz"]),
        ("token as scheme", vec![TOKEN.as_bytes()]),
        ("duplicated", vec![good.as_bytes(), good.as_bytes()]),
        ("overlong", vec![overlong.as_bytes()]),
        (
            "wrong token",
            vec![b"Bearer not-the-token-0123456789abcdef0123456789"],
        ),
        (
            "prefix of the token",
            vec![&good.as_bytes()[..good.len() - 1]],
        ),
        (
            "token with a suffix",
            vec![format!("{good}x").leak().as_bytes()],
        ),
    ];
    for (case, values) in cases {
        let reply = with_authorization(&gateway, &values).await;
        let problem = reply.assert_problem(401, "unauthorized");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        let none_sent = ["missing", "empty", "wrong scheme", "token as scheme"].contains(&case);
        assert_eq!(challenge, if none_sent { bare } else { refused }, "{case}");
        assert!(problem["detail"].is_string(), "{case}");
    }
    assert!(
        upstream.seen().is_empty(),
        "no refused request may reach the upstream"
    );
}

#[tokio::test]
async fn every_listed_token_works_so_rotation_needs_no_downtime() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_API_TOKENS", format!("{TOKEN},{OTHER_TOKEN}"))
        .start();
    for token in [TOKEN, OTHER_TOKEN] {
        let reply = get(
            &gateway.url("/v1"),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    // Lower-case scheme, as RFC 9110 allows.
    let reply = get(
        &gateway.url("/v1"),
        &[("authorization", &format!("bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.seen().len(), 3);
}

#[tokio::test]
async fn tokens_can_come_from_a_file() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "tokens", &format!("{OTHER_TOKEN}\n"));
    let gateway = Launch::new(&upstream.url())
        .without_env("PORTCULLIS_API_TOKENS")
        .env("PORTCULLIS_API_TOKENS_FILE", file.to_str().unwrap())
        .start();
    let reply = get(
        &gateway.url("/v1"),
        &[("authorization", &format!("Bearer {OTHER_TOKEN}"))],
    )
    .await;
    assert_eq!(reply.status, 200);
}

#[test]
fn both_the_variable_and_its_file_is_refused() {
    let output = portcullis()
        .args(["serve", "--upstream", "http://127.0.0.1:9"])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_API_TOKENS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PORTCULLIS_API_TOKENS_FILE") && !stderr.contains(TOKEN),
        "{stderr}"
    );
}

#[tokio::test]
async fn tokens_never_reach_the_log_even_at_trace_level() {
    let upstream = Upstream::start().await;
    let wrong = "wrong-token-that-must-not-be-logged-0123456789";
    let mut gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_LOG", "trace")
        .start();
    assert_eq!(get_authorized(&gateway.url("/v1")).await.status, 200);
    let refused = get(
        &gateway.url("/v1"),
        &[("authorization", &format!("Bearer {wrong}"))],
    )
    .await;
    refused.assert_problem(401, "unauthorized");
    assert!(!refused.text().contains(wrong));
    let log = gateway.final_log();
    assert!(
        log.contains("portcullis listening"),
        "the log was captured: {log}"
    );
    assert!(!log.contains(TOKEN), "the valid token leaked into the log");
    assert!(
        !log.contains(wrong),
        "the refused token leaked into the log"
    );
}
