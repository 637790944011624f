//! Active health checks: an upstream that fails them is refused requests (without being
//! called), fails `/ready` and has its breaker opened; once it passes again, traffic
//! resumes. Checks carry the upstream's credential; no secret shows in what is logged.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Response;
use serde_json::Value;

use crate::common::*;

/// An upstream whose `/health` (below any prefix) answers 200 while `healthy` holds, 503
/// otherwise; everything else gets the usual answer.
async fn switchable_upstream(healthy: Arc<AtomicBool>) -> Upstream {
    Upstream::start_with(move |seen| {
        if !seen.uri.ends_with("/health") {
            return None;
        }
        let status = if healthy.load(Ordering::SeqCst) {
            200
        } else {
            503
        };
        Some(
            Response::builder()
                .status(status)
                .body(full("checked"))
                .unwrap(),
        )
    })
    .await
}

/// The upstream's entry on `GET /v1/upstreams`.
async fn entry(gateway: &Gateway) -> Value {
    let reply = get_authorized(&gateway.admin_url("/v1/upstreams")).await;
    assert_eq!(reply.status, 200);
    reply.json()["upstreams"][0].clone()
}

/// Waits (up to 10 s) until the health checks say `state`.
async fn wait_for_health(gateway: &Gateway, state: &str) -> Value {
    for _ in 0..200 {
        let upstream = entry(gateway).await;
        if upstream["health"]["state"] == state {
            return upstream;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the upstream never became {state}");
}

#[tokio::test]
async fn failing_checks_refuse_requests_fail_ready_and_open_the_breaker_until_they_pass() {
    let healthy = Arc::new(AtomicBool::new(true));
    let upstream = switchable_upstream(healthy.clone()).await;
    let (dir, mut gateway) = start_configured(
        &format!(
            "[upstreams.api]\nurl = \"{}\"\n\
             credential = {{ header = \"X-Api-Key\", format = \"{{key}}\", keys_env = \"TEST_CHECK_KEY\", path_prefix_env = \"TEST_CHECK_PREFIX\" }}\n\
             health_check = {{ path = \"/health\", interval = \"1s\", timeout = \"500ms\", unhealthy_threshold = 2, healthy_threshold = 2 }}\n\
             circuit = {{ failure_threshold = 2, recovery_timeout = \"60s\", success_threshold = 1 }}\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
            upstream.url()
        ),
        Launch::bare()
            .arg("--workers")
            .arg("2")
            .env("TEST_CHECK_KEY", "check-key-secret-1")
            .env("TEST_CHECK_PREFIX", "/prefix-secret-2"),
    );

    // The first check passes: ready, healthy, requests go through.
    let state = wait_for_health(&gateway, "healthy").await;
    assert_eq!(state["health"]["path"], "/health");
    assert_eq!(state["health"]["interval_seconds"], 1.0);
    assert!(state["health"]["last_check"].as_str().is_some());
    assert_eq!(get(&gateway.url("/ready"), &[]).await.status, 200);
    assert_eq!(get_authorized(&gateway.url("/ok")).await.status, 200);
    // Checks go below the secret prefix, with the credential, and say who they are.
    let check = upstream
        .seen()
        .into_iter()
        .find(|seen| seen.uri.ends_with("/health"))
        .unwrap();
    assert_eq!(check.uri, "/prefix-secret-2/health");
    assert_eq!(check.header("x-api-key"), Some("check-key-secret-1"));
    assert_eq!(check.header("user-agent"), Some("portcullis-health-check"));

    // Two failed checks: unhealthy. Requests are refused without calling it.
    healthy.store(false, Ordering::SeqCst);
    let state = wait_for_health(&gateway, "unhealthy").await;
    // The failed checks opened the breaker though no request failed.
    assert_eq!(state["circuit"]["state"], "open");
    let calls = upstream
        .seen()
        .iter()
        .filter(|seen| !seen.uri.ends_with("/health"))
        .count();
    let reply = get_authorized(&gateway.url("/ok")).await;
    let problem = reply.assert_problem(503, "upstream-unavailable");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("health checks")
    );
    // It needs two passes, a second apart.
    assert_eq!(reply.header("retry-after"), Some("2"));
    assert_eq!(
        upstream
            .seen()
            .iter()
            .filter(|seen| !seen.uri.ends_with("/health"))
            .count(),
        calls
    );
    get(&gateway.url("/ready"), &[])
        .await
        .assert_problem(503, "not-ready");
    let metrics = get_authorized(&gateway.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("portcullis_upstream_healthy{upstream=\"api\"} 0"),
        "{metrics}"
    );

    // Two passed checks: healthy again. The first ended the breaker's wait, so the next
    // request is its probe, and closes it.
    healthy.store(true, Ordering::SeqCst);
    wait_for_health(&gateway, "healthy").await;
    assert_eq!(get_authorized(&gateway.url("/ok")).await.status, 200);
    assert_eq!(entry(&gateway).await["circuit"]["state"], "closed");
    assert_eq!(get(&gateway.url("/ready"), &[]).await.status, 200);

    // One checker per process, whatever the workers: every check came on one kept-alive
    // connection (a checker per worker would have opened one each).
    let checks: Vec<_> = upstream
        .seen()
        .into_iter()
        .filter(|seen| seen.uri.ends_with("/health"))
        .collect();
    assert!(checks.len() >= 5, "{}", checks.len());
    let peers: std::collections::HashSet<_> = checks.iter().map(|seen| seen.peer).collect();
    assert_eq!(peers.len(), 1, "{peers:?}");

    let decisions = decisions_of(&dir, &mut gateway);
    assert!(decisions.contains(&"upstream_unhealthy".to_owned()));
    // The turn was logged with the upstream's name and what it answered; the secrets never.
    let log = gateway.whole_log();
    assert!(log.contains("upstream failed its health checks"), "{log}");
    assert!(log.contains("answered 503"), "{log}");
    assert!(log.contains("upstream passes its health checks"), "{log}");
    for secret in ["check-key-secret-1", "prefix-secret-2"] {
        assert!(!log.contains(secret), "{secret} in the log");
    }
}

/// While every upstream key rests (the upstream answered 429 with a long `Retry-After`),
/// no check can be sent with a key: nothing is learnt of the upstream's health, so it stays
/// as it was, ready, its breaker closed, rather than failing checks it never made.
#[tokio::test]
async fn checks_are_not_failed_while_every_key_rests() {
    let upstream = Upstream::start_with(|seen| {
        seen.uri.ends_with("/busy").then(|| {
            Response::builder()
                .status(429)
                .header("retry-after", "100")
                .body(full("slow down"))
                .unwrap()
        })
    })
    .await;
    let (_dir, mut gateway) = start_configured(
        &format!(
            "[upstreams.api]\nurl = \"{}\"\n\
             credential = {{ header = \"X-Api-Key\", format = \"{{key}}\", keys_env = \"TEST_ONE_KEY\" }}\n\
             health_check = {{ path = \"/health\", interval = \"1s\", timeout = \"500ms\", unhealthy_threshold = 2, healthy_threshold = 2 }}\n\
             circuit = {{ failure_threshold = 2, recovery_timeout = \"60s\", success_threshold = 1 }}\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
            upstream.url()
        ),
        Launch::bare().env("TEST_ONE_KEY", "the-only-key"),
    );
    wait_for_health(&gateway, "healthy").await;
    get_authorized(&gateway.url("/busy")).await;
    let checks_before = upstream.seen().len();
    // Three intervals: two failed checks would have made it unhealthy.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(upstream.seen().len(), checks_before, "nothing was sent");
    let state = entry(&gateway).await;
    assert_eq!(state["health"]["state"], "healthy", "{state}");
    assert_eq!(state["circuit"]["state"], "closed", "{state}");
    assert_eq!(get(&gateway.url("/ready"), &[]).await.status, 200);
    // Requests are told when a key is back, not that the upstream is unhealthy.
    let reply = get_authorized(&gateway.url("/ok")).await;
    reply.assert_problem(503, "upstream-unavailable");
    let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((90..=100).contains(&wait), "{wait}");
    let log = gateway.final_log();
    assert!(!log.contains("failed its health checks"), "{log}");
}

/// An upstream that cannot be reached fails its checks too.
#[tokio::test]
async fn an_unreachable_upstream_is_unhealthy_and_not_ready() {
    let (_refusing, closed) = refusing_addr();
    let url = format!("http://{closed}");
    let (_dir, gateway) = start_configured(
        &format!(
            "[upstreams.api]\nurl = \"{url}\"\n\
             health_check = {{ path = \"/health\", interval = \"1s\", timeout = \"500ms\" }}\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
        ),
        Launch::bare(),
    );
    wait_for_health(&gateway, "unhealthy").await;
    get(&gateway.url("/ready"), &[])
        .await
        .assert_problem(503, "not-ready");
    get_authorized(&gateway.url("/x"))
        .await
        .assert_problem(503, "upstream-unavailable");
}

#[test]
fn unusable_health_checks_are_refused_by_check() {
    let (code, out) = check_config(
        "[upstreams.a]\nurl = \"http://127.0.0.1:1\"\n\
         health_check = { path = \"health\" }\n\
         [upstreams.b]\nurl = \"http://127.0.0.1:2\"\n\
         health_check = { path = \"/health\", interval = \"100ms\" }\n\
         [upstreams.c]\nurl = \"http://127.0.0.1:3\"\n\
         health_check = { path = \"/health\", interval = \"2s\", timeout = \"5s\" }\n\
         [upstreams.d]\nurl = \"http://127.0.0.1:4\"\n\
         health_check = { path = \"/health\", unhealthy_threshold = 0 }\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n",
        &[],
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out.matches("error[upstreams.health_check]").count(),
        4,
        "{out}"
    );
}
