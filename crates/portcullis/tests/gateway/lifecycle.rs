//! Liveness, readiness and graceful shutdown.

use std::time::Duration;

use crate::common::*;

#[tokio::test]
async fn health_and_ready_need_no_token_and_reveal_nothing() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let health = get(&gateway.url("/health"), &[]).await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), serde_json::json!({"status": "ok"}));
    let ready = get(&gateway.url("/ready"), &[]).await;
    assert_eq!(ready.status, 200);
    assert_eq!(
        ready.json(),
        serde_json::json!({"status": "ready", "audit": "ok"})
    );
    assert!(
        upstream.seen().is_empty(),
        "the probes are answered by the gateway"
    );

    let post = send(
        http::Request::post(gateway.url("/health"))
            .body(Default::default())
            .unwrap(),
    )
    .await;
    post.assert_problem(405, "method-not-allowed");
}

#[tokio::test]
async fn ready_is_503_when_an_upstream_is_unreachable() {
    let (_refusing, closed) = refusing_addr();
    let gateway = Launch::new(&format!("http://{closed}")).start();
    let health = get(&gateway.url("/health"), &[]).await;
    assert_eq!(health.status, 200, "liveness does not depend on upstreams");
    let ready = get(&gateway.url("/ready"), &[]).await;
    ready.assert_problem(503, "not-ready");
    assert!(
        !ready.text().contains("127.0.0.1") && !ready.text().contains(&closed.port().to_string())
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_then_exits_zero() {
    let upstream = Upstream::start().await;
    let mut gateway = Launch::new(&upstream.url()).start();
    let url = gateway.url("/slow/1500");
    let in_flight = tokio::spawn(async move { get_authorized(&url).await });
    // Wait until the upstream has the request, so it is truly in flight.
    for _ in 0..200 {
        if !upstream.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.seen().len(), 1);
    let addr = gateway.addr;

    let status = tokio::task::spawn_blocking(move || gateway.terminate())
        .await
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200, "the in-flight request completed");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// A request still in flight when the grace period ends is cut then, not later (the wait
/// for WebSockets' close frames is for WebSockets), and its record names its route.
#[tokio::test]
async fn a_request_still_in_flight_at_the_end_of_the_grace_is_cut_then() {
    let upstream = Upstream::start().await;
    let (dir, mut gateway) = start_configured(
        "[limits]\nshutdown_grace = \"1s\"\n",
        Launch::new(&upstream.url()),
    );
    let mut in_flight = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let head =
        format!("GET /slow/20000 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut in_flight, head.as_bytes())
        .await
        .unwrap();
    upstream.wait_for("/slow/20000").await;
    let sent = std::time::Instant::now();
    signal(gateway.pid(), "TERM");
    // The connection is cut when the grace (1 s) is over, not 2 s later (the wait for
    // WebSockets' close frames); whatever the process does after that is not timed.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(15),
        tokio::io::AsyncReadExt::read_to_end(&mut in_flight, &mut rest),
    )
    .await
    .expect("the in-flight request's connection was never cut");
    let cut_after = sent.elapsed();
    assert!(
        cut_after < Duration::from_millis(2200),
        "cut {cut_after:?} after SIGTERM"
    );
    let status = tokio::task::spawn_blocking(move || {
        let status = gateway.wait(Duration::from_secs(20));
        gateway.whole_log();
        status
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    let cut = log
        .lines()
        .find(|line| line.contains("/slow/20000"))
        .unwrap_or_else(|| panic!("no record: {log}"));
    assert!(cut.contains("\"route\":\"/\""), "{cut}");
    assert!(cut.contains("\"decision\":\"client_aborted\""), "{cut}");
}

#[tokio::test]
async fn sigint_on_an_idle_gateway_exits_zero() {
    let upstream = Upstream::start().await;
    let mut gateway = Launch::new(&upstream.url()).start();
    signal(gateway.pid(), "INT");
    let status = gateway.wait(Duration::from_secs(20));
    assert!(status.success());
    assert!(gateway.log_shows("shutting down"));
}

#[tokio::test]
async fn concurrent_readiness_probes_share_one_check() {
    // An upstream that only counts the connections the readiness checks open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "c.toml", "workers = 1\n");
    let gateway = Launch::new(&format!("http://{addr}"))
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();

    let started = std::time::Instant::now();
    let probes: Vec<_> = (0..200)
        .map(|_| {
            let url = gateway.url("/ready");
            tokio::spawn(async move { get(&url, &[]).await.status })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap(), 200);
    }
    let opened = accepted.load(std::sync::atomic::Ordering::SeqCst);
    // At most one check per second the burst lasted, and one more for the second it
    // straddles (without sharing, 200 concurrent probes opened 157 connections).
    let seconds = started.elapsed().as_secs() as usize + 1;
    assert!(
        (1..=seconds + 1).contains(&opened),
        "200 anonymous probes in {seconds} s opened {opened} upstream connections"
    );
}

/// The workers share their port with `SO_REUSEPORT`; nothing else may: a second gateway
/// started on a port the first listens on refuses to start rather than take a share of its
/// connections.
#[tokio::test]
async fn a_second_gateway_on_the_same_port_refuses_to_start() {
    let upstream = Upstream::start().await;
    let first = Launch::new(&upstream.url()).start();
    let mut second = portcullis()
        .args(["serve", "--admin-listen", "127.0.0.1:0", "--listen"])
        .arg(first.addr.to_string())
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_UPSTREAM", upstream.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while second.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exited = second.try_wait().unwrap().is_some();
    if !exited {
        second.kill().unwrap();
    }
    let output = second.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(exited && !output.status.success(), "{log}");
    assert!(log.to_lowercase().contains("in use"), "{log}");
    assert_eq!(
        get(
            &first.url("/x"),
            &[("authorization", &format!("Bearer {TOKEN}"))]
        )
        .await
        .status,
        200,
        "the first gateway serves on"
    );
}
