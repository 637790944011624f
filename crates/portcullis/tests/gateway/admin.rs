//! The admin API's refusals, through the real binary: every one is problem+json, none
//! quotes the client's input back.

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};

use crate::common::*;

/// A gateway with the static [`TOKEN`] (which holds every scope) on a fresh SQLite store.
async fn gateway() -> (Gateway, Upstream) {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    (gateway, upstream)
}

/// `method url` with the token, `content_type` (if any) and `body` as raw bytes.
async fn request(method: &str, url: &str, content_type: Option<&str>, body: &[u8]) -> Reply {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {TOKEN}"));
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    send(
        builder
            .body(Full::new(Bytes::copy_from_slice(body)))
            .unwrap(),
    )
    .await
}

async fn post_json(url: &str, body: &str) -> Reply {
    request("POST", url, Some("application/json"), body.as_bytes()).await
}

/// Asserts a 400 `bad-request` whose detail starts with `detail` and, if given, does not
/// contain `sent` (something the client sent).
fn assert_bad_request(reply: &Reply, detail: &str, sent: Option<&str>) {
    let problem = reply.assert_problem(400, "bad-request");
    let text = problem["detail"].as_str().unwrap_or_default();
    assert!(text.starts_with(detail), "{problem}");
    if let Some(sent) = sent {
        assert!(
            !reply.text().contains(sent),
            "the input was echoed: {problem}"
        );
    }
}

#[tokio::test]
async fn a_body_that_cannot_be_read_as_the_request_is_a_problem() {
    let (gateway, _upstream) = gateway().await;
    let tokens = gateway.admin_url("/v1/tokens");
    let secret = "pcl_NotForTheResponseBody";

    let wrong_type = post_json(
        &tokens,
        &format!(r#"{{"name": 5, "scopes": ["{secret}"]}}"#),
    )
    .await;
    assert_bad_request(
        &wrong_type,
        "the body does not match the request schema",
        Some(secret),
    );
    let wrong_type = post_json(
        &tokens,
        &format!(r#"{{"name": ["{secret}"], "scopes": []}}"#),
    )
    .await;
    assert_bad_request(
        &wrong_type,
        "the body does not match the request schema (line 1",
        Some(secret),
    );
    let missing = post_json(&tokens, &format!(r#"{{"name": "{secret}"}}"#)).await;
    assert_bad_request(
        &missing,
        "the body does not match the request schema",
        Some(secret),
    );
    let unknown = post_json(
        &tokens,
        &format!(r#"{{"name": "ci", "scopes": ["read"], "{secret}": 1}}"#),
    )
    .await;
    assert_bad_request(
        &unknown,
        "the body does not match the request schema",
        Some(secret),
    );
    let syntax = post_json(&tokens, &format!(r#"{{"name": "{secret}""#)).await;
    assert_bad_request(&syntax, "the body is not valid JSON", Some(secret));
    let not_an_object = post_json(&tokens, "[]").await;
    assert_bad_request(&not_an_object, "the body does not match", None);
    let empty = post_json(&tokens, "").await;
    assert_bad_request(&empty, "a JSON body is required", None);

    let plain = request(
        "POST",
        &tokens,
        Some("text/plain"),
        br#"{"name": "ci", "scopes": ["read"]}"#,
    )
    .await;
    let problem = plain.assert_problem(415, "unsupported-media-type");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    request(
        "POST",
        &tokens,
        None,
        br#"{"name": "ci", "scopes": ["read"]}"#,
    )
    .await
    .assert_problem(415, "unsupported-media-type");

    let huge = json!({"name": "x".repeat(70_000), "scopes": ["read"]}).to_string();
    post_json(&tokens, &huge)
        .await
        .assert_problem(413, "body-too-large");

    // None of these created anything.
    let listed = request("GET", &tokens, None, b"").await;
    assert_eq!(listed.json(), json!([]));
}

#[tokio::test]
async fn what_the_schema_forbids_is_refused_and_what_it_allows_is_accepted() {
    let (gateway, _upstream) = gateway().await;
    let tokens = gateway.admin_url("/v1/tokens");
    let create = |body: Value| {
        let tokens = tokens.clone();
        async move { post_json(&tokens, &body.to_string()).await }
    };

    for (body, detail) in [
        (json!({"name": "", "scopes": ["read"]}), "a token name"),
        (
            json!({"name": " \u{3000}", "scopes": ["read"]}),
            "a token name",
        ),
        (json!({"name": "a\nb", "scopes": ["read"]}), "a token name"),
        (
            json!({"name": "x".repeat(101), "scopes": ["read"]}),
            "a token name",
        ),
        (json!({"name": "ci", "scopes": []}), "a token needs"),
        (
            json!({"name": "ci", "scopes": ["reed"]}),
            "every scope must be one of: read, write, admin",
        ),
        (
            json!({"name": "ci", "scopes": ["read"], "tenant": ""}),
            "a tenant",
        ),
        (
            json!({"name": "ci", "scopes": ["read"], "tenant": "a\u{0}"}),
            "a tenant",
        ),
        (
            json!({"name": "line\u{2028}break", "scopes": ["read"]}),
            "a token name",
        ),
        // Private use and noncharacters: shown as nothing, or as one box for any of them.
        (
            json!({"name": "a\u{e000}b", "scopes": ["read"]}),
            "a token name",
        ),
        (
            json!({"name": "a\u{fffe}b", "scopes": ["read"]}),
            "a token name",
        ),
        (
            json!({"name": "ci", "scopes": ["read"], "expires_in": "0d"}),
            "durations are",
        ),
        (
            json!({"name": "ci", "scopes": ["read"], "expires_in": "1h30m"}),
            "durations are",
        ),
        (
            json!({"name": "ci", "scopes": ["read"], "expires_in": "soon"}),
            "durations are",
        ),
    ] {
        let reply = create(body.clone()).await;
        let problem = reply.assert_problem(400, "bad-request");
        assert!(
            problem["detail"].as_str().unwrap().starts_with(detail),
            "{body}: {problem}"
        );
    }

    // At the edges of what the schema allows.
    for body in [
        json!({"name": "é".repeat(100), "scopes": ["read"], "tenant": null, "expires_in": null}),
        json!({"name": " x ", "scopes": ["admin", "write", "admin"], "capability": true, "expires_in": "999999w"}),
        json!({"name": "\u{2603}", "scopes": ["write"], "tenant": "t", "expires_in": "1s"}),
    ] {
        let reply = create(body.clone()).await;
        assert_eq!(reply.status, 201, "{body}: {}", reply.text());
        // A scope named twice is kept once.
        let scopes = reply.json()["record"]["scopes"].clone();
        let mut unique = scopes.as_array().unwrap().clone();
        unique.dedup();
        assert_eq!(scopes, serde_json::Value::Array(unique), "{body}");
    }

    // The same name, or one a reader would take for it (UTS #39 confusables, case, width,
    // surrounding spaces), and the names of the gateway's own principals.
    for (name, detail) in [
        (" x ", "already has this name"),
        ("X", "already has this name"),
        ("\u{445}\u{3000}", "already has this name"),
        ("\u{2603} ", "already has this name"),
        ("CLI", "a principal of the gateway's own"),
        ("st\u{430}tic", "a principal of the gateway's own"),
        ("STATlC", "a principal of the gateway's own"),
    ] {
        let refused = create(json!({"name": name, "scopes": ["read"]})).await;
        let problem = refused.assert_problem(409, "conflict");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{name:?}: {problem}"
        );
    }
}

#[tokio::test]
async fn rotation_takes_no_body_or_a_valid_one() {
    let (gateway, _upstream) = gateway().await;
    let tokens = gateway.admin_url("/v1/tokens");
    let mint = |name: &'static str| {
        let tokens = tokens.clone();
        async move {
            let created = post_json(
                &tokens,
                &json!({"name": name, "scopes": ["read"]}).to_string(),
            )
            .await;
            assert_eq!(created.status, 201, "{}", created.text());
            created.json()["record"]["id"].as_str().unwrap().to_owned()
        }
    };
    let rotate_url = |id: &str| gateway.admin_url(&format!("/v1/tokens/{id}/rotate"));

    // No body, an empty one (with or without a JSON media type), and a valid one.
    for (content_type, body) in [
        (None, ""),
        (Some("application/json"), ""),
        (Some("text/plain"), ""),
        (Some("application/json"), r#"{"overlap": "0s"}"#),
        (Some("application/json; charset=utf-8"), r#"{}"#),
    ] {
        let id = mint("service").await;
        let reply = request("POST", &rotate_url(&id), content_type, body.as_bytes()).await;
        assert_eq!(
            reply.status,
            201,
            "{content_type:?} {body:?}: {}",
            reply.text()
        );
        // The successor takes the name; the old token gives it up.
        request(
            "POST",
            &gateway.admin_url(&format!(
                "/v1/tokens/{}/revoke",
                reply.json()["record"]["id"].as_str().unwrap()
            )),
            None,
            b"",
        )
        .await;
    }

    // A body that is present must be right: before, a wrong one was silently ignored.
    let id = mint("other").await;
    let url = rotate_url(&id);
    assert_bad_request(
        &post_json(&url, r#"{"overlap": 24}"#).await,
        "the body does not match",
        None,
    );
    assert_bad_request(
        &post_json(&url, r#"{"overlap": "24h", "x": 1}"#).await,
        "the body does not match",
        Some("\"x\""),
    );
    assert_bad_request(
        &post_json(&url, "{").await,
        "the body is not valid JSON",
        None,
    );
    assert_bad_request(
        &post_json(&url, r#"{"overlap": "1 day"}"#).await,
        "durations are",
        Some("1 day"),
    );
    request("POST", &url, Some("text/plain"), br#"{"overlap": "1h"}"#)
        .await
        .assert_problem(415, "unsupported-media-type");
    request("POST", &url, None, br#"{"overlap": "1h"}"#)
        .await
        .assert_problem(415, "unsupported-media-type");

    // Once rotated, a token is no longer live.
    assert_eq!(post_json(&url, r#"{"overlap": "1h"}"#).await.status, 201);
    let again = post_json(&url, "").await;
    again.assert_problem(409, "conflict");
}

#[tokio::test]
async fn paths_and_methods_the_api_does_not_take_are_problems() {
    let (gateway, _upstream) = gateway().await;

    // Percent-encoding that is not UTF-8, in each operation that takes an id.
    for (method, path) in [
        ("GET", "/v1/tokens/%FF"),
        ("POST", "/v1/tokens/tok_%C3%28/revoke"),
        ("POST", "/v1/tokens/%80abc/rotate"),
    ] {
        let reply = request(method, &gateway.admin_url(path), None, b"").await;
        let problem = reply.assert_problem(400, "bad-request");
        assert!(
            problem["detail"].as_str().unwrap().contains("UTF-8"),
            "{problem}"
        );
    }
    // An id that no token can have is not looked up.
    for path in [
        "/v1/tokens/tok%00x",
        "/v1/tokens/%C3%A9",
        "/v1/tokens/a.b/revoke",
    ] {
        let method = if path.ends_with("revoke") {
            "POST"
        } else {
            "GET"
        };
        request(method, &gateway.admin_url(path), None, b"")
            .await
            .assert_problem(404, "not-found");
    }

    for (method, path, allow) in [
        ("DELETE", "/v1/tokens", "GET,HEAD,POST"),
        ("PUT", "/v1/tokens/tok_x", "GET,HEAD"),
        ("GET", "/v1/tokens/tok_x/rotate", "POST"),
        ("POST", "/metrics", "GET,HEAD"),
        ("TRACE", "/openapi.json", "GET,HEAD"),
        ("OPTIONS", "/v1/rate-limits", "GET,HEAD"),
    ] {
        let reply = request(method, &gateway.admin_url(path), None, b"").await;
        reply.assert_problem(405, "method-not-allowed");
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
    }
    // Without a token, too: which methods a path takes is in the public document.
    let anonymous = get(&gateway.admin_url("/v1/tokens/tok_x/revoke"), &[]).await;
    anonymous.assert_problem(405, "method-not-allowed");
    assert_eq!(anonymous.header("allow"), Some("POST"));

    request("GET", &gateway.admin_url("/v2/tokens"), None, b"")
        .await
        .assert_problem(404, "not-found");
}
