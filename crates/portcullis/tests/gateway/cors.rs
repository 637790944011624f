//! CORS: off by default, an exact allowlist when on, preflights answered by the gateway.

use crate::common::*;

fn preflight_headers<'a>(origin: &'a str, method: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("origin", origin),
        ("access-control-request-method", method),
        (
            "access-control-request-headers",
            "authorization, content-type",
        ),
    ]
}

async fn options(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = http::Request::options(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(builder.body(http_body_util::Full::default()).unwrap()).await
}

#[tokio::test]
async fn off_by_default() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let preflight = options(
        &gateway.url("/v1"),
        &preflight_headers("https://a.example", "GET"),
    )
    .await;
    preflight.assert_problem(401, "unauthorized");
    assert!(preflight.header("access-control-allow-origin").is_none());

    let reply = get(
        &gateway.url("/v1"),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("origin", "https://a.example"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.header("access-control-allow-origin").is_none(),
        "the upstream's * must not pass"
    );
}

#[tokio::test]
async fn allowlisted_origins_only() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .env(
            "PORTCULLIS_CORS_ALLOWED_ORIGINS",
            "https://a.example,https://b.example",
        )
        .start();

    let allowed = options(
        &gateway.url("/v1/positions"),
        &preflight_headers("https://b.example", "POST"),
    )
    .await;
    assert_eq!(allowed.status, 204);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://b.example")
    );
    assert!(
        allowed
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("POST"))
    );
    assert!(
        allowed
            .header("access-control-allow-headers")
            .is_some_and(|h| h.contains("authorization"))
    );
    assert!(allowed.header("vary").is_some_and(|v| v.contains("Origin")));
    assert_security_headers(&allowed.headers);

    let denied = options(
        &gateway.url("/v1/positions"),
        &preflight_headers("https://evil.example", "POST"),
    )
    .await;
    denied.assert_problem(403, "cors-denied");
    assert!(denied.header("access-control-allow-origin").is_none());

    let bad_method = options(
        &gateway.url("/v1/positions"),
        &preflight_headers("https://a.example", "PROPPATCH"),
    )
    .await;
    bad_method.assert_problem(403, "cors-denied");
    // Fetch standard §4.8: a refused preflight from an allowed origin carries no
    // Access-Control-Allow-Origin either (nor a header not in the allowlist's).
    assert!(bad_method.header("access-control-allow-origin").is_none());
    assert!(
        bad_method
            .header("access-control-allow-credentials")
            .is_none()
    );
    let mut bad_header = preflight_headers("https://a.example", "POST");
    bad_header.push(("access-control-request-headers", "x-evil"));
    let bad_header = options(&gateway.url("/v1/positions"), &bad_header).await;
    bad_header.assert_problem(403, "cors-denied");
    assert!(bad_header.header("access-control-allow-origin").is_none());
    // The refusals depend on the Origin too (RFC 9110 §12.5.5).
    for refused in [&denied, &bad_method, &bad_header] {
        assert!(refused.header("vary").is_some_and(|v| v.contains("Origin")));
    }
    assert!(
        upstream.seen().is_empty(),
        "preflights are answered by the gateway"
    );

    let token = format!("Bearer {TOKEN}");
    let from_allowed = get(
        &gateway.url("/v1"),
        &[("authorization", &token), ("origin", "https://a.example")],
    )
    .await;
    assert_eq!(
        from_allowed.header("access-control-allow-origin"),
        Some("https://a.example")
    );
    assert_eq!(
        from_allowed.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    let from_other = get(
        &gateway.url("/v1"),
        &[
            ("authorization", &token),
            ("origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(from_other.status, 200);
    assert!(from_other.header("access-control-allow-origin").is_none());

    // Refusals carry the CORS headers too, so a browser can read the problem.
    let refused = get(&gateway.url("/v1"), &[("origin", "https://a.example")]).await;
    refused.assert_problem(401, "unauthorized");
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://a.example")
    );
}

#[test]
fn a_wildcard_origin_is_refused_at_start() {
    let output = portcullis()
        .args(["serve", "--upstream", "http://127.0.0.1:9"])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_CORS_ALLOWED_ORIGINS", "*")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("wildcards") && stderr.contains("PORTCULLIS_CORS_ALLOWED_ORIGINS"),
        "{stderr}"
    );
}
