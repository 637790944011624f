//! Retries: idempotent calls that fail on the way (a connection error, a 502, 503 or 504,
//! an attempt that takes too long) go again, with backoff, within a budget that keeps
//! retries from multiplying an outage, and within a total timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::Full;

use crate::common::*;

/// A gateway in front of `upstream_url` with `rest` added to its upstream's table.
fn with_retries(upstream_url: &str, rest: &str) -> (tempfile::TempDir, Gateway) {
    start_configured(
        &format!(
            "[upstreams.api]\nurl = \"{upstream_url}\"\n{rest}\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
        ),
        Launch::bare(),
    )
}

/// An upstream that answers 503 to the first `failures` requests for `/flaky...`, then 200,
/// and 503 to every `/down`.
async fn flaky_upstream(failures: usize) -> Upstream {
    let count = Arc::new(AtomicUsize::new(0));
    Upstream::start_with(move |seen| {
        let failing = seen.uri == "/down"
            || (seen.uri.starts_with("/flaky") && count.fetch_add(1, Ordering::SeqCst) < failures);
        failing.then(|| Response::builder().status(503).body(full("down")).unwrap())
    })
    .await
}

fn attempts(upstream: &Upstream, uri: &str) -> usize {
    upstream
        .seen()
        .iter()
        .filter(|seen| seen.uri == uri)
        .count()
}

const POLICY: &str = "retry = { attempts = 3, budget = 0.2, backoff = \"10ms\", max_backoff = \"20ms\", methods = [\"GET\", \"PUT\"] }";

#[tokio::test]
async fn an_idempotent_call_that_fails_goes_again_with_its_body() {
    let upstream = flaky_upstream(2).await;
    let (_dir, gateway) = with_retries(&upstream.url(), POLICY);
    // Two 503s, then the third attempt succeeds.
    let reply = send(
        http::Request::put(gateway.url("/flaky"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from_static(b"the same body each time")))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body == "the same body each time"));
    // A method the policy does not name is sent once, and its answer relayed.
    let reply = send(
        http::Request::post(gateway.url("/down"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 503);
    assert_eq!(attempts(&upstream, "/down"), 1);
}

/// Against an upstream that is down, retries stop at the budget: 20% of the requests in
/// the window (at least 10), not two more per request.
#[tokio::test]
async fn retries_stop_at_the_budget() {
    let upstream = flaky_upstream(0).await;
    let (_dir, gateway) = with_retries(&upstream.url(), POLICY);
    for _ in 0..30 {
        assert_eq!(get_authorized(&gateway.url("/down")).await.status, 503);
    }
    assert_eq!(attempts(&upstream, "/down"), 30 + 10);
}

/// Each attempt has `timeout` to bring a response head; all of them together, with their
/// pauses, have `total_timeout`, then the client gets 504.
#[tokio::test]
async fn slow_attempts_are_retried_within_the_total_timeout() {
    let upstream = Upstream::start().await;
    let (dir, mut gateway) = with_retries(
        &upstream.url(),
        &format!("timeout = \"300ms\"\ntotal_timeout = \"700ms\"\n{POLICY}"),
    );
    let started = Instant::now();
    let reply = get_authorized(&gateway.url("/slow/2000")).await;
    let took = started.elapsed();
    reply.assert_problem(504, "upstream-timeout");
    assert!(took >= Duration::from_millis(650), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    assert!(attempts(&upstream, "/slow/2000") >= 2);
    assert_eq!(decisions_of(&dir, &mut gateway), ["upstream_total_timeout"]);
}

/// A connection that cannot be opened within `connect_timeout` (an upstream whose accept
/// queue is full: the kernel drops the SYN) is a 504 with a decision of its own.
#[tokio::test]
async fn connect_timeouts_have_their_own_decision() {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // The one connection the queue holds; it is never accepted.
    let _filler = std::net::TcpStream::connect(addr).unwrap();
    let (dir, mut gateway) = with_retries(&format!("http://{addr}"), "connect_timeout = \"300ms\"");
    let started = Instant::now();
    let reply = get_authorized(&gateway.url("/x")).await;
    reply.assert_problem(504, "upstream-timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        decisions_of(&dir, &mut gateway),
        ["upstream_connect_timeout"]
    );
}

/// Retry settings that cannot be right are refused by `check`.
#[test]
fn unsafe_retry_settings_are_refused_by_check() {
    let (code, out) = check_config(
        "[upstreams.api]\nurl = \"http://127.0.0.1:1\"\n\
         retry = { attempts = 0, budget = 1.5, methods = [\"POST\"] }\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
        &[],
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(out.matches("error[upstreams.retry]").count(), 3, "{out}");
    assert!(
        out.contains("\"POST\" is not an idempotent method"),
        "{out}"
    );
}

/// A request held whole so that it can be sent again still goes back on a kept-alive
/// connection: retries must not cost a connection (a TLS handshake) per request.
#[tokio::test]
async fn requests_held_for_resending_reuse_upstream_connections() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = start_configured(
        &format!(
            "[upstreams.api]\nurl = \"{}\"\nretry = {{ attempts = 3 }}\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
            upstream.url()
        ),
        Launch::bare().arg("--workers").arg("1"),
    );
    for _ in 0..5 {
        assert_eq!(get_authorized(&gateway.url("/held")).await.status, 200);
    }
    let peers: std::collections::HashSet<_> = upstream.seen().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
}
