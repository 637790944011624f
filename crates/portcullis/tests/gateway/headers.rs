//! Response headers: the security set everywhere, fingerprints removed, CSP overrides,
//! HSTS only over HTTPS, and the switch that turns the set off.

use crate::common::*;

/// And the upstream's own policies, and what the proxies behind it say of themselves
/// (RFC 9209's `Proxy-Status`): the echo upstream sends each of these.
const FINGERPRINTS: [&str; 10] = [
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "via",
    "access-control-allow-origin",
    "access-control-allow-private-network",
    "content-security-policy-report-only",
    "proxy-status",
    "proxy-authenticate",
];

#[tokio::test]
async fn every_response_carries_the_security_set_and_no_fingerprints() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let proxied = get_authorized(&gateway.url("/v1/positions")).await;
    let refused = get(&gateway.url("/v1/positions"), &[]).await;
    let health = get(&gateway.url("/health"), &[]).await;
    let not_found = get_authorized(&gateway.url("/health/x")).await;
    assert_eq!(proxied.status, 200);
    assert_eq!(refused.status, 401);
    assert_eq!(health.status, 200);
    for reply in [&proxied, &refused, &health, &not_found] {
        assert_security_headers(&reply.headers);
        for name in FINGERPRINTS {
            assert!(
                reply.header(name).is_none(),
                "{name} leaked: {:?}",
                reply.headers
            );
        }
        assert!(
            reply.header("strict-transport-security").is_none(),
            "no HSTS over plain HTTP"
        );
    }
    // The upstream really sent them.
    assert_eq!(proxied.header("x-upstream"), Some("yes"));
}

#[tokio::test]
async fn a_path_prefix_can_have_its_own_csp() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "c.toml",
        r#"
        [[security_headers.csp_overrides]]
        path_prefix = "/docs"
        content_security_policy = "default-src 'self'; img-src 'self' data:"
        "#,
    );
    let gateway = Launch::new(&upstream.url())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    let docs = get_authorized(&gateway.url("/docs/index.html")).await;
    assert_eq!(
        docs.header("content-security-policy"),
        Some("default-src 'self'; img-src 'self' data:")
    );
    let api = get_authorized(&gateway.url("/docsx")).await;
    assert_eq!(
        api.header("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
}

#[tokio::test]
async fn hsts_when_a_trusted_proxy_says_https_and_not_when_anyone_else_does() {
    let upstream = Upstream::start().await;
    let untrusted = Launch::new(&upstream.url()).start();
    let claimed = get(
        &untrusted.url("/v1"),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert!(claimed.header("strict-transport-security").is_none());

    let trusted = Launch::new(&upstream.url())
        .env("PORTCULLIS_TRUSTED_PROXIES", "127.0.0.0/8")
        .start();
    let forwarded = get(
        &trusted.url("/v1"),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    assert_eq!(
        forwarded.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
}

#[tokio::test]
async fn the_set_can_be_turned_off_with_a_warning() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_DISABLE_SECURITY_HEADERS", "1")
        .start();
    let reply = get_authorized(&gateway.url("/v1")).await;
    assert_eq!(reply.status, 200);
    for name in [
        "x-content-type-options",
        "x-frame-options",
        "content-security-policy",
        "referrer-policy",
    ] {
        assert!(reply.header(name).is_none(), "{name} still sent");
    }
    // Fingerprints stay removed and the request id stays.
    assert!(reply.header("server").is_none());
    assert!(reply.header("x-request-id").is_some());
    assert!(
        gateway.log().contains("security headers are off"),
        "{}",
        gateway.log()
    );
}
