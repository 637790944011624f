//! Long streams against the caps meant for them: a Server-Sent Events response holds no
//! `max_in_flight` slot once its head is sent, and streams are capped per upstream
//! (`max_streams`, 503) and per caller (`max_streams_per_principal`, 429).

use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Frame;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;
use crate::websocket::{EchoServer, config};

/// An upstream whose `/events` sends one event at once and ends after `ms` milliseconds.
async fn event_source(ms: u64) -> Upstream {
    Upstream::start_with(move |seen| {
        seen.uri.starts_with("/events").then(|| {
            let body = channel_body(move |tx| async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: first\n\n"))))
                    .await;
                tokio::time::sleep(Duration::from_millis(ms)).await;
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body.boxed())
                .unwrap()
        })
    })
    .await
}

/// Opens `/events` and waits for its first event: the stream is open.
async fn open_events(gateway: &Gateway) -> hyper::Response<hyper::body::Incoming> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let request = http::Request::get(gateway.url("/events/live"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::default())
        .unwrap();
    let mut response = client.request(request).await.unwrap();
    if response.status() == 200 {
        let first = tokio::time::timeout(Duration::from_secs(5), response.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    }
    response
}

#[tokio::test]
async fn an_event_stream_holds_no_in_flight_slot_after_its_head() {
    let upstream = event_source(3000).await;
    let (_dir, gateway) = start_configured(
        &format!(
            "[upstreams.api]\nurl = \"{}\"\nmax_in_flight = 1\nqueue_timeout = \"100ms\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
            upstream.url()
        ),
        Launch::bare(),
    );
    let stream = open_events(&gateway).await;
    assert_eq!(stream.status(), 200);
    // The one slot is free for a request while the stream goes on.
    let reply = get_authorized(&gateway.url("/ok")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // Streams are capped to max_in_flight when max_streams is not set.
    let second = read_reply(open_events(&gateway).await).await;
    second.assert_problem(503, "upstream-busy");
}

#[tokio::test]
async fn an_upstream_carries_at_most_max_streams_503_streams_exhausted() {
    let echo = EchoServer::start().await;
    let (dir, mut gateway) = start_configured(
        &config(&echo.url(), "", "")
            .replace("[upstreams.echo]\n", "[upstreams.echo]\nmax_streams = 1\n"),
        Launch::bare(),
    );
    let handshake = format!(
        "GET /ws/x HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {TOKEN}\r\n\r\n"
    );
    let url = format!("ws://{}/ws/x", gateway.addr);
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            url.as_str(),
        )
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (first, _) = tokio_tungstenite::connect_async(request.clone())
        .await
        .unwrap();

    let refused = raw(gateway.addr, handshake.as_bytes()).await;
    refused.assert_problem(503, "upstream-busy");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(
        echo.handshakes().len(),
        1,
        "the second never reached the upstream"
    );

    drop(first);
    // Freed when the first closes (the relay notices within a moment).
    let mut opened = false;
    for _ in 0..50 {
        if tokio_tungstenite::connect_async(request.clone())
            .await
            .is_ok()
        {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(opened, "the slot came back");
    let decisions = decisions_of(&dir, &mut gateway);
    assert!(
        decisions.contains(&"streams_exhausted".to_owned()),
        "{decisions:?}"
    );
}

#[tokio::test]
async fn a_caller_has_at_most_max_streams_per_principal_429() {
    let upstream = event_source(1500).await;
    let (dir, mut gateway) = start_configured(
        &format!(
            "[limits]\nmax_streams_per_principal = 1\n\
             [upstreams.api]\nurl = \"{}\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
            upstream.url()
        ),
        Launch::bare(),
    );
    let first = open_events(&gateway).await;
    assert_eq!(first.status(), 200);
    let second = read_reply(open_events(&gateway).await).await;
    second.assert_problem(429, "too-many-streams");
    assert_eq!(second.header("retry-after"), Some("5"));
    // Plain responses are not streams: never counted.
    assert_eq!(get_authorized(&gateway.url("/ok")).await.status, 200);
    // A POST answered with events is never refused after the upstream has acted on it.
    let posted = send(
        http::Request::post(gateway.url("/events/call"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(http_body_util::Full::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(posted.status, 200, "{}", posted.text());
    // The first stream's end frees its slot.
    let _ = first.into_body().collect().await;
    let third = open_events(&gateway).await;
    assert_eq!(third.status(), 200);
    // Read to its end: the upstream runs on this test's thread, which stopping the gateway
    // blocks.
    let _ = third.into_body().collect().await;
    let decisions = decisions_of(&dir, &mut gateway);
    assert_eq!(
        decisions
            .iter()
            .filter(|d| *d == "streams_exhausted")
            .count(),
        1,
        "{decisions:?}"
    );
}

/// A WebSocket handshake the upstream answers with an event stream rather than a switch
/// is a stream like any other: counted against the caller's cap.
#[tokio::test]
async fn a_handshake_answered_with_events_is_a_counted_stream() {
    let upstream = event_source(1500).await;
    let (_dir, gateway) = start_configured(
        &format!(
            "[limits]\nmax_streams_per_principal = 1\n\
             [upstreams.api]\nurl = \"{}\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\nwebsocket = true\n",
            upstream.url()
        ),
        Launch::bare(),
    );
    let handshake = format!(
        "GET /events/ws HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {TOKEN}\r\n\r\n"
    );
    let mut first = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    first.write_all(handshake.as_bytes()).await.unwrap();
    // Open once its first event has come.
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("data: first") {
        let mut buffer = [0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), first.read(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert!(read > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buffer[..read]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    let second = read_reply(open_events(&gateway).await).await;
    second.assert_problem(429, "too-many-streams");
    let mut rest = Vec::new();
    let _ = first.read_to_end(&mut rest).await;
}

/// An upstream whose `/events` sends an event every `every` milliseconds, `count` times.
async fn ticking_source(every: u64, count: usize) -> Upstream {
    Upstream::start_with(move |seen| {
        seen.uri.starts_with("/events").then(|| {
            let body = channel_body(move |tx| async move {
                for _ in 0..count {
                    let event = Frame::data(Bytes::from_static(b"data: first\n\n"));
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(every)).await;
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(body.boxed())
                .unwrap()
        })
    })
    .await
}

/// Reads `response` to its end: how long it took, and whether it ended in an error (the
/// gateway closed it) rather than cleanly.
async fn read_to_end(response: hyper::Response<hyper::body::Incoming>) -> (Duration, bool) {
    let started = std::time::Instant::now();
    let mut body = response.into_body();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), body.frame()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) => return (started.elapsed(), true),
            Ok(None) => return (started.elapsed(), false),
            Err(_) => panic!("the stream was not closed"),
        }
    }
}

/// A gateway in front of `upstream` whose route holds streams to `limits` (TOML), with
/// `top` above the tables.
fn stream_gateway(
    upstream: &Upstream,
    limits: &str,
    top: &str,
    launch: Launch,
) -> (tempfile::TempDir, Gateway) {
    start_configured(
        &format!(
            "{top}\n[upstreams.api]\nurl = \"{}\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n{limits}\n",
            upstream.url()
        ),
        launch,
    )
}

#[tokio::test]
async fn an_event_stream_that_carries_nothing_is_closed_at_the_idle_timeout() {
    let upstream = event_source(5000).await;
    let (dir, mut gateway) = stream_gateway(
        &upstream,
        "stream_idle_timeout = \"1s\"",
        "",
        Launch::bare(),
    );
    let (took, cut) = read_to_end(open_events(&gateway).await).await;
    assert!(cut, "closed by the gateway, not ended");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Events keep it open past the idle timeout.
    let ticking = ticking_source(300, 8).await;
    let (_dir2, gateway2) =
        stream_gateway(&ticking, "stream_idle_timeout = \"1s\"", "", Launch::bare());
    let (took, cut) = read_to_end(open_events(&gateway2).await).await;
    assert!(!cut && took >= Duration::from_secs(2), "{took:?}");
    assert_eq!(decisions_of(&dir, &mut gateway), ["stream_idle"]);
}

#[tokio::test]
async fn an_event_stream_is_closed_at_its_lifetime_however_busy() {
    let upstream = ticking_source(200, 50).await;
    let (dir, mut gateway) = stream_gateway(
        &upstream,
        "stream_max_lifetime = \"1s\"",
        "",
        Launch::bare(),
    );
    let (took, cut) = read_to_end(open_events(&gateway).await).await;
    assert!(cut && took < Duration::from_secs(4), "{took:?}");
    assert_eq!(decisions_of(&dir, &mut gateway), ["stream_lifetime"]);
}

#[tokio::test]
async fn revoking_its_token_closes_an_open_event_stream() {
    let upstream = ticking_source(200, 100).await;
    let data = scratch_dir();
    let (id, token) = mint_with_id(&data, "feed", "read");
    let (dir, mut gateway) = stream_gateway(
        &upstream,
        "",
        "token_cache_ttl = \"3s\"",
        Launch::bare().env("PORTCULLIS_DATA_DIR", data.to_str().unwrap()),
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let request = http::Request::get(gateway.url("/events/feed"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let revoked = portcullis()
        .args(["token", "--data-dir", data.to_str().unwrap(), "revoke", &id])
        .output()
        .unwrap();
    assert!(revoked.status.success());
    let (took, cut) = read_to_end(response).await;
    assert!(cut && took < Duration::from_secs(6), "{took:?}");
    assert_eq!(decisions_of(&dir, &mut gateway), ["stream_revoked"]);
}
