//! The circuit breaker: an upstream that keeps failing is left alone for a while, then
//! probed, through every transition, with its state on the admin API and `/metrics`.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// A gateway in front of `upstream_url` whose breaker opens after 3 failures, stays open
/// 1 s, and closes after 2 successful probes, one at a time; access log in a file.
fn guarded(upstream_url: &str) -> (tempfile::TempDir, Gateway) {
    start_configured(
        &format!(
            "[upstreams.flaky]\nurl = \"{upstream_url}\"\n\
             circuit = {{ failure_threshold = 3, recovery_timeout = \"1s\", success_threshold = 2, half_open_probes = 1 }}\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"flaky\"\n"
        ),
        Launch::bare(),
    )
}

/// The breaker's entry on `GET /v1/upstreams`.
async fn circuit(gateway: &Gateway) -> Value {
    let reply = get_authorized(&gateway.admin_url("/v1/upstreams")).await;
    assert_eq!(reply.status, 200);
    let body = reply.json();
    assert_eq!(body["upstreams"][0]["name"], "flaky");
    body["upstreams"][0].clone()
}

#[tokio::test]
async fn a_failing_upstream_is_left_alone_then_probed_back() {
    let upstream = Upstream::start().await;
    let (dir, mut gateway) = guarded(&upstream.url());

    // Closed: failures are relayed and counted; a success resets the count. A 500 is an
    // answer (often to what the client sent), not a failure: any client could otherwise
    // hold the circuit open for everyone.
    for path in [
        "/status/504",
        "/status/502",
        "/ok",
        "/status/503",
        "/status/502",
    ] {
        get_authorized(&gateway.url(path)).await;
    }
    for _ in 0..5 {
        assert_eq!(
            get_authorized(&gateway.url("/status/500")).await.status,
            500
        );
    }
    assert_eq!(circuit(&gateway).await["circuit"]["state"], "closed");
    for path in ["/status/503", "/status/502"] {
        get_authorized(&gateway.url(path)).await;
    }
    // The third consecutive failure opens it.
    assert_eq!(
        get_authorized(&gateway.url("/status/504")).await.status,
        504
    );
    let state = circuit(&gateway).await;
    assert_eq!(state["circuit"]["state"], "open");
    assert_eq!(state["failed"], 7);
    assert_eq!(state["succeeded"], 6);

    // Open: refused without calling the upstream, with the time left.
    let seen = upstream.seen().len();
    let reply = get_authorized(&gateway.url("/ok")).await;
    reply.assert_problem(503, "upstream-unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(
        upstream.seen().len(),
        seen,
        "the open circuit called the upstream"
    );

    // Half-open after the recovery timeout: probes go through; two successes close it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get_authorized(&gateway.url("/ok")).await.status, 200);
    assert_eq!(circuit(&gateway).await["circuit"]["state"], "half_open");
    assert_eq!(get_authorized(&gateway.url("/ok")).await.status, 200);
    assert_eq!(circuit(&gateway).await["circuit"]["state"], "closed");

    // Open again; a failed probe reopens it at once.
    for _ in 0..3 {
        get_authorized(&gateway.url("/status/503")).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get_authorized(&gateway.url("/status/502")).await.status,
        502
    );
    let state = circuit(&gateway).await;
    assert_eq!(state["circuit"]["state"], "open");
    assert_eq!(state["circuit"]["state_changes"], 6);
    assert!(state["last_failure"].is_string());
    get_authorized(&gateway.url("/ok"))
        .await
        .assert_problem(503, "upstream-unavailable");

    let metrics = get_authorized(&gateway.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("portcullis_upstream_circuit_state{upstream=\"flaky\",state=\"open\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("portcullis_upstream_calls_total{upstream=\"flaky\",outcome=\"failure\"} 11"),
        "{metrics}"
    );

    let open = decisions_of(&dir, &mut gateway)
        .into_iter()
        .filter(|decision| decision == "upstream_circuit_open")
        .count();
    assert_eq!(open, 2);
}

/// Requests the gateway refuses for the client's fault never count against the upstream:
/// a body over the limit streamed by a client, however often, leaves the circuit closed.
#[tokio::test]
async fn client_faults_never_open_the_circuit() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = guarded(&upstream.url());
    for _ in 0..5 {
        let reply = raw(
            gateway.addr,
            format!(
                "POST /echo HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Transfer-Encoding: chunked\r\n\r\nzz\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert_eq!(reply.status, 400);
    }
    let state = circuit(&gateway).await;
    assert_eq!(state["circuit"]["state"], "closed");
    assert_eq!(state["failed"], 0);
    assert_eq!(get_authorized(&gateway.url("/ok")).await.status, 200);
}

/// A client that sends its body too slowly makes the attempt time out, but the upstream
/// never had the request whole: 408 for the client, and no failure counted against the
/// upstream.
#[tokio::test]
async fn slow_client_bodies_never_open_the_circuit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let (_dir, gateway) = start_configured(
        &format!(
            "[upstreams.flaky]\nurl = \"{}\"\ntimeout = \"300ms\"\n\
             circuit = {{ failure_threshold = 2, recovery_timeout = \"60s\" }}\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"flaky\"\n",
            upstream.url()
        ),
        Launch::bare(),
    );
    for _ in 0..3 {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: 10\r\n\r\nab"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply));
        let _ = read.await;
        parse_raw(&reply).assert_problem(408, "request-timeout");
    }
    let state = circuit(&gateway).await;
    assert_eq!(state["circuit"]["state"], "closed");
    assert_eq!(state["failed"], 0);
    assert_eq!(get_authorized(&gateway.url("/ok")).await.status, 200);
}
