//! Client identity: forwarding headers believed only from trusted proxies, request ids.

use crate::common::*;

#[tokio::test]
async fn untrusted_clients_cannot_spoof_forwarding_headers() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let reply = get(
        &gateway.url("/v1"),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-forwarded-for", "203.0.113.66"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=203.0.113.66"),
            ("x-real-ip", "203.0.113.66"),
            ("host", "api.example"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = upstream.only();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.example"));
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(seen.header("x-real-ip"), None);
}

#[tokio::test]
async fn trusted_proxies_are_believed_and_appended_to() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_TRUSTED_PROXIES", "10.0.0.0/8,127.0.0.1/32")
        .start();
    get(
        &gateway.url("/v1"),
        &[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("x-forwarded-for", "198.51.100.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
        ],
    )
    .await;
    let seen = upstream.only();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("198.51.100.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-host"), Some("public.example"));
}

#[tokio::test]
async fn request_ids_are_kept_when_well_formed_and_replaced_otherwise() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let token = format!("Bearer {TOKEN}");

    let kept = get(
        &gateway.url("/v1"),
        &[("authorization", &token), ("x-request-id", "trace-42.a_b")],
    )
    .await;
    assert_eq!(kept.header("x-request-id"), Some("trace-42.a_b"));
    assert_eq!(
        upstream.seen()[0].header("x-request-id"),
        Some("trace-42.a_b")
    );

    let long = "a".repeat(129);
    for bad in ["has space", "semi;colon", long.as_str()] {
        let reply = get(
            &gateway.url("/v1"),
            &[("authorization", &token), ("x-request-id", bad)],
        )
        .await;
        let id = reply.header("x-request-id").unwrap().to_owned();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            upstream.seen().last().unwrap().header("x-request-id"),
            Some(id.as_str())
        );
    }

    let fresh = get(&gateway.url("/v1"), &[("authorization", &token)]).await;
    let again = get(&gateway.url("/v1"), &[("authorization", &token)]).await;
    assert_ne!(fresh.header("x-request-id"), again.header("x-request-id"));

    let refused = get(&gateway.url("/v1"), &[("x-request-id", "client-chosen")]).await;
    let problem = refused.assert_problem(401, "unauthorized");
    assert_eq!(problem["request_id"], "client-chosen");
}
