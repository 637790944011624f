//! Request hygiene: paths, methods, sizes and the header-read deadline.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::audit::request;
use crate::common::*;

#[tokio::test]
async fn ambiguous_paths_are_400_and_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    for target in [
        "/v1/../admin",
        "/v1/./x",
        "/v1/%2e%2e/admin",
        "/v1/%2E%2E/admin",
        "/v1/.%2e/admin",
        "/v1/%252e%252e/admin",
        "/v1/..%2fadmin",
        "/v1/..;/admin",
        "/v1/a%00b",
        "/v1/a%5cb",
        "/v1/a\\b",
        "/v1/%zz",
        "/v1/%2",
        "/v1/%c0%ae%c0%ae/admin",
        "/v1/files/%252e%252e/secret/%25zz",
        "/%61dmin/users",
        "/admin;x/users",
        "//admin/users",
        "/v1/%25252e%25252e/x",
    ] {
        let reply = raw(gateway.addr, &raw_get(target)).await;
        let problem = reply.assert_problem(400, "invalid-path");
        assert!(
            problem["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("the ")),
            "{target}: {problem}"
        );
    }
    assert!(
        upstream.seen().is_empty(),
        "refused paths reached the upstream: {:#?}",
        upstream.seen()
    );

    // Ordinary paths with dots and escapes still pass, unchanged.
    let reply = raw(
        gateway.addr,
        &raw_get("/v1/.well-known/a..b/caf%C3%A9?q=.."),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.only().uri, "/v1/.well-known/a..b/caf%C3%A9?q=..");
}

/// Laravel and Express (`methodOverride('_method')`) serve a POST naming `_method` in its
/// query as that method: the scope checked for POST would not be the one that applies.
#[tokio::test]
async fn a_post_naming_another_method_in_its_query_is_refused() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    for query in [
        "_method=DELETE",
        "a=1&%5Fmethod=PUT",
        "_METHOD=delete",
        ".method=DELETE",
    ] {
        let reply = request(
            "POST",
            &gateway.url(&format!("/v1/items/1?{query}")),
            TOKEN,
            "",
        )
        .await;
        let problem = reply.assert_problem(400, "bad-request");
        assert!(
            problem["detail"].as_str().unwrap().contains("_method"),
            "{query}: {problem}"
        );
    }
    assert!(upstream.seen().is_empty());
    // Other methods, and other names, pass.
    let reply = get_authorized(&gateway.url("/v1/items/1?_method=DELETE")).await;
    assert_eq!(reply.status, 200);
    let reply = request("POST", &gateway.url("/v1/items?my_method=x"), TOKEN, "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test]
async fn methods_outside_the_standard_set_are_refused() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let request = |method: &str| {
        format!(
            "{method} /v1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
        )
    };
    for method in ["TRACE", "CONNECT"] {
        let reply = raw(gateway.addr, request(method).as_bytes()).await;
        reply.assert_problem(405, "method-not-allowed");
        assert!(
            reply
                .header("allow")
                .is_some_and(|a| a.contains("GET") && !a.contains("TRACE"))
        );
    }
    for method in ["PROPFIND", "FOO"] {
        raw(gateway.addr, request(method).as_bytes())
            .await
            .assert_problem(501, "method-not-implemented");
    }
    assert!(upstream.seen().is_empty());
    for method in ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let reply = raw(gateway.addr, request(method).as_bytes()).await;
        assert_eq!(reply.status, 200, "{method}");
    }
    assert_eq!(upstream.seen().len(), 7);
}

#[tokio::test]
async fn declared_bodies_over_the_limit_are_413_before_forwarding() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .arg("--max-body-bytes")
        .arg("1000")
        .start();
    let post = |n: usize| {
        Request::post(gateway.url("/v1/upload"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from(vec![b'x'; n])))
            .unwrap()
    };
    let problem = send(post(1001)).await.assert_problem(413, "body-too-large");
    assert!(problem["detail"].as_str().unwrap().contains("1000"));
    assert!(upstream.seen().is_empty());
    assert_eq!(send(post(1000)).await.status, 200);
    assert_eq!(upstream.only().body.len(), 1000);
}

#[tokio::test]
async fn chunked_bodies_are_cut_off_at_the_limit() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .arg("--max-body-bytes")
        .arg("1000")
        .start();
    let body = channel_body(|tx| async move {
        for _ in 0..8 {
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b'x'; 400]))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let request = Request::post(gateway.url("/v1/upload"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request).await.unwrap();
    let reply = read_reply(response).await;
    reply.assert_problem(413, "body-too-large");
    // The upstream saw at most an aborted request, never a complete oversized body.
    for seen in upstream.seen() {
        assert!(
            seen.body.len() <= 1000 || seen.body == "<aborted>",
            "upstream got {} bytes",
            seen.body.len()
        );
    }
}

#[tokio::test]
async fn long_uris_and_header_floods_are_refused() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();

    let long = format!("/v1/{}", "a".repeat(9000));
    raw(gateway.addr, &raw_get(&long))
        .await
        .assert_problem(414, "uri-too-long");

    let mut many = format!(
        "GET /v1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n"
    );
    for i in 0..120 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    raw(gateway.addr, many.as_bytes())
        .await
        .assert_problem(431, "headers-too-large");

    let big = format!(
        "GET /v1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\nx-big: {}\r\n\r\n",
        "v".repeat(40 * 1024)
    );
    raw(gateway.addr, big.as_bytes())
        .await
        .assert_problem(431, "headers-too-large");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn a_client_that_stalls_mid_head_gets_408() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .arg("--header-read-timeout")
        .arg("1s")
        .start();
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /v1 HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    let reply = parse_raw(&bytes);
    reply.assert_problem(408, "request-timeout");
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(upstream.seen().is_empty());

    // A connection that never sends anything is closed without an answer.
    let mut silent = TcpStream::connect(gateway.addr).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    assert!(bytes.is_empty());
}

/// RFC 9112 §9.5: a keep-alive connection idle after its response is closed after
/// `idle_timeout`, counted from the response, not from an earlier head deadline nor never
/// (the reader must be polled again once the response ends, whatever hyper polled meanwhile).
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = with_limits(
        &upstream,
        "[limits]\nheader_read_timeout = \"20s\"\nidle_timeout = \"1s\"\n",
        "",
    );
    let sent = std::time::Instant::now();
    let mut clients = Vec::new();
    for path in ["/health", "/ok", "/health", "/ok"] {
        let addr = gateway.addr;
        clients.push(tokio::spawn(async move {
            let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let head =
                format!("GET {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
            client.write_all(head.as_bytes()).await.unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = tokio::time::timeout(Duration::from_secs(15), client.read(&mut buf))
                    .await
                    .expect("the idle connection was never closed")
                    .unwrap_or(0);
                if n == 0 {
                    break std::time::Instant::now();
                }
                if answer.is_empty() {
                    answer.extend_from_slice(&buf[..n]);
                    assert!(answer.starts_with(b"HTTP/1.1 200"), "{path}");
                }
            }
        }));
    }
    for client in clients {
        let closed_at = client.await.unwrap();
        let after = closed_at - sent;
        assert!(
            after < Duration::from_secs(5),
            "closed {after:?} after the request"
        );
    }
}

/// A client that asks for a large response and stops reading it would hold its
/// connection, and the upstream's only in-flight slot, for ever: once it has taken nothing
/// for `idle_timeout`, the connection is closed and the slot comes back (as HTTP/2 sends
/// GOAWAY to a stalled stream).
#[tokio::test]
async fn a_client_that_stops_reading_loses_its_connection_after_the_idle_timeout() {
    let upstream = Upstream::start_with(|seen| {
        (seen.uri == "/big").then(|| {
            hyper::Response::builder()
                .body(full(vec![b'x'; 32 * 1024 * 1024]))
                .unwrap()
        })
    })
    .await;
    let (_dir, gateway) = with_limits(
        &upstream,
        "[limits]\nidle_timeout = \"1s\"\n",
        "max_in_flight = 1\nqueue_timeout = \"100ms\"\n",
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket.connect(gateway.addr).await.unwrap();
    stalled
        .write_all(
            format!("GET /big HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    // The stalled response holds the one slot meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    get_authorized(&gateway.url("/ok"))
        .await
        .assert_problem(503, "upstream-busy");
    let mut served = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if get_authorized(&gateway.url("/ok")).await.status == 200 {
            served = true;
            break;
        }
    }
    assert!(served, "the stalled connection still holds the slot");
    // Its connection was closed under it: what it reads ends short of the body.
    let mut taken = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut taken)).await;
    assert!(taken.len() < 32 * 1024 * 1024, "{}", taken.len());
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .arg("--max-connections")
        .arg("1")
        .start();
    let request = format!("GET /v1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");

    // The first connection is served and kept alive, holding the only slot.
    let mut first = TcpStream::connect(gateway.addr).await.unwrap();
    first.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));

    // The second is not served while the first is open...
    let mut second = TcpStream::connect(gateway.addr).await.unwrap();
    second.write_all(request.as_bytes()).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(waited.is_err(), "a connection over the cap was served");

    // ...and is served as soon as the first closes.
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

/// A POST with `body` sent as is after a chunked head.
/// A gateway with the static [`TOKEN`], `limits` (a `[limits]` table), and one route `/` to
/// `upstream` with `upstream_settings` (lines of its `[upstreams.api]` table).
fn with_limits(
    upstream: &Upstream,
    limits: &str,
    upstream_settings: &str,
) -> (tempfile::TempDir, Gateway) {
    let config = format!(
        "{limits}[upstreams.api]\nurl = \"{}\"\n{upstream_settings}\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
        upstream.url()
    );
    start_configured(&config, Launch::bare())
}

fn chunked_post(extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /v1/upload HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n{extra_headers}Connection: close\r\n\r\n{body}"
    )
    .into_bytes()
}

#[tokio::test]
async fn malformed_chunked_bodies_are_the_clients_fault_rfc_9112_7_1() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    for (why, request) in [
        (
            "a chunk size that is not hex",
            chunked_post("", "zz\r\nhello\r\n0\r\n\r\n"),
        ),
        (
            "chunk data running past its size",
            chunked_post("", "3\r\nhello world\r\n0\r\n\r\n"),
        ),
        (
            "a bad chunk terminator",
            chunked_post("", "5\r\nhelloXX0\r\n\r\n"),
        ),
        (
            "Content-Length beside chunked, with a chunk past its size",
            chunked_post("Content-Length: 5\r\n", "2\r\nhello\r\n0\r\n\r\n"),
        ),
    ] {
        let reply = raw(gateway.addr, &request).await;
        let problem = reply.assert_problem(400, "bad-request");
        assert!(
            problem["detail"].as_str().unwrap().contains("request body"),
            "{why}: {problem}"
        );
    }
}

#[tokio::test]
async fn a_client_gone_mid_upload_is_not_an_upstream_failure() {
    let upstream = Upstream::start().await;
    let mut gateway = Launch::new(&upstream.url()).start();
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(&chunked_post("", "5\r\nhello\r\n"))
        .await
        .unwrap();
    drop(stream);
    // The upstream records the request once its body ends, here cut short.
    upstream.wait_for("/v1/upload").await;
    // A well-formed request afterwards is served as usual.
    assert_eq!(get_authorized(&gateway.url("/v1/after")).await.status, 200);
    let log = gateway.final_log();
    assert!(
        !log.contains("upstream failed"),
        "the client's abort was blamed on the upstream: {log}"
    );
    assert_eq!(upstream.seen()[0].body, "<aborted>");
}
