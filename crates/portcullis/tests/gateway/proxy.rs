//! Forwarding: what reaches the upstream, what comes back, routing and precedence.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;

use crate::common::*;

#[tokio::test]
async fn forwards_method_path_query_headers_and_body() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let request = Request::post(gateway.url("/v1/items/42?a=1&b=two"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::from_static(b"{\"qty\":3}")))
        .unwrap();
    let reply = send(request).await;

    assert_eq!(reply.status, 200);
    let seen = upstream.only();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/v1/items/42?a=1&b=two");
    assert_eq!(seen.body, "{\"qty\":3}");
    assert_eq!(seen.header("x-custom"), Some("kept"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.header("host"),
        Some(upstream.addr.to_string().as_str())
    );
    assert_eq!(
        seen.header("authorization"),
        None,
        "the client's credential must not reach the upstream"
    );
    assert_eq!(reply.header("x-upstream"), Some("yes"));
    assert_eq!(reply.json()["body_len"], 9);
}

#[tokio::test]
async fn upstream_statuses_pass_through() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let reply = get_authorized(&gateway.url("/status/418")).await;
    assert_eq!(reply.status, 418);
    assert_eq!(reply.header("x-upstream"), Some("yes"));
}

#[tokio::test]
async fn streams_bodies_both_ways_without_waiting_for_the_end() {
    // The upstream sends one chunk, then waits for the test to confirm it arrived before
    // sending the rest: the test only passes if the gateway streams.
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let upstream = Upstream::start_with(move |seen| {
        (seen.uri == "/stream").then(|| {
            let mut release = release_rx.clone();
            let chunks = channel_body(move |tx| async move {
                tx.send(Ok(Frame::data(Bytes::from_static(b"first;"))))
                    .await
                    .ok();
                let _ = release.wait_for(|released| *released).await;
                tx.send(Ok(Frame::data(Bytes::from_static(b"second"))))
                    .await
                    .ok();
            });
            Response::new(chunks.boxed())
        })
    })
    .await;
    let gateway = Launch::new(&upstream.url()).start();

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = Request::get(gateway.url("/stream"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "first;");
    release_tx.send(true).unwrap();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "second");

    // A chunked upload of 600 KiB (under the 1 MiB limit) arrives whole.
    let chunk = Bytes::from(vec![b'x'; 60 * 1024]);
    let upload = channel_body(move |tx| async move {
        for _ in 0..10 {
            tx.send(Ok(Frame::data(chunk.clone()))).await.ok();
        }
    });
    let request = Request::put(gateway.url("/upload"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(upload)
        .unwrap();
    let streaming_client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = streaming_client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let seen = upstream
        .seen()
        .into_iter()
        .find(|s| s.uri == "/upload")
        .unwrap();
    assert_eq!(seen.body.len(), 600 * 1024);
}

#[tokio::test]
async fn config_file_routes_by_longest_prefix_and_strips_when_asked() {
    let api = Upstream::start().await;
    let admin = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "portcullis.toml",
        &format!(
            r#"
            [upstreams.api]
            url = "{}"
            [upstreams.admin]
            url = "{}/internal"
            [[routes]]
            path_prefix = "/v1"
            upstream = "api"
            [[routes]]
            path_prefix = "/v1/admin"
            upstream = "admin"
            strip_prefix = true
            "#,
            api.url(),
            admin.url()
        ),
    );
    let gateway = Launch::bare()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .start();

    assert_eq!(
        get_authorized(&gateway.url("/v1/positions")).await.status,
        200
    );
    assert_eq!(
        get_authorized(&gateway.url("/v1/admin/users?page=2"))
            .await
            .status,
        200
    );
    assert_eq!(api.only().uri, "/v1/positions");
    assert_eq!(admin.only().uri, "/internal/users?page=2");

    let unrouted = get_authorized(&gateway.url("/v2/other")).await;
    unrouted.assert_problem(404, "not-found");
    let unrouted_anonymous = get(&gateway.url("/v2/other"), &[]).await;
    unrouted_anonymous.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn flags_override_environment_which_overrides_the_file() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "c.toml", "[limits]\nmax_body_bytes = 100\n");
    let body_of = |n: usize| {
        Request::post("/")
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Full::new(Bytes::from(vec![b'a'; n])))
            .unwrap()
    };
    let post = |gateway: &Gateway, n: usize| {
        let mut request = body_of(n);
        *request.uri_mut() = gateway.url("/echo").parse().unwrap();
        send(request)
    };

    let file_only = Launch::new(&upstream.url())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    post(&file_only, 150)
        .await
        .assert_problem(413, "body-too-large");

    let env = Launch::new(&upstream.url())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("PORTCULLIS_MAX_BODY_BYTES", "200")
        .start();
    assert_eq!(post(&env, 150).await.status, 200);
    post(&env, 250).await.assert_problem(413, "body-too-large");

    let flag = Launch::new(&upstream.url())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--max-body-bytes")
        .arg("300")
        .env("PORTCULLIS_MAX_BODY_BYTES", "200")
        .start();
    assert_eq!(post(&flag, 250).await.status, 200);
}

#[tokio::test]
async fn unreachable_upstream_is_502_without_internal_details() {
    let (_refusing, closed) = refusing_addr();
    let gateway = Launch::new(&format!("http://{closed}")).start();
    let reply = get_authorized(&gateway.url("/v1/x")).await;
    reply.assert_problem(502, "upstream-unavailable");
    let text = reply.text();
    for leak in [
        closed.to_string(),
        closed.port().to_string(),
        "refused".into(),
        "os error".into(),
        "127.0.0.1".into(),
    ] {
        assert!(!text.contains(&leak), "{leak:?} leaked into {text}");
    }
    assert!(
        gateway.log_shows("upstream failed"),
        "the operator's log says why"
    );
}

#[tokio::test]
async fn slow_upstream_is_504() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .arg("--request-timeout")
        .arg("1s")
        .start();
    let reply = get_authorized(&gateway.url("/slow/3000")).await;
    let problem = reply.assert_problem(504, "upstream-timeout");
    assert!(!problem.to_string().contains(&upstream.addr.to_string()));
}

/// An upstream that takes a request's head and then stops reading its body: when the
/// request timeout runs out, the client (still sending as fast as the gateway takes it)
/// is not blamed with a 408; the upstream gets the 504 and the record `upstream_timeout`,
/// as nginx's `proxy_send_timeout` and Envoy's upstream timeout do.
#[tokio::test]
async fn an_upstream_that_stops_reading_an_upload_is_the_one_timed_out() {
    let addr = RawUpstream::answering(|_| None).await.addr;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Launch::new(&format!("http://{addr}"))
        .arg("--request-timeout")
        .arg("1s")
        .arg("--max-body-bytes")
        .arg("67108864")
        .arg("--access-log")
        .arg(dir.path().join("access.log").to_str().unwrap())
        .start();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let length = 64 << 20;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    );
    let sending = tokio::spawn(async move {
        writer.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 << 10];
        for _ in 0..length / chunk.len() {
            writer.write_all(&chunk).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    // The answer comes while the upload is still going: read its head and its length.
    let mut bytes = Vec::new();
    let answered = async {
        let mut buf = [0u8; 4096];
        loop {
            let n = reader.read(&mut buf).await.unwrap_or(0);
            bytes.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
            let whole = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                head.lines()
                    .find_map(|line| line.strip_prefix("content-length: "))
                    .and_then(|length| length.trim().parse::<usize>().ok())
                    .is_some_and(|length| body.len() >= length)
            });
            if n == 0 || whole {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), answered)
        .await
        .expect("the gateway answered");
    sending.abort();
    let reply = parse_raw(&bytes);
    reply.assert_problem(504, "upstream-timeout");
    assert_eq!(decisions_of(&dir, &mut gateway), ["upstream_timeout"]);
}

/// An upstream that sends its head and part of a body of known length, then nothing, has
/// the request timeout for each next piece, as for its head (nginx's `proxy_read_timeout`):
/// then the client's connection is closed short of the length, and the record says
/// `upstream_timeout`.
#[tokio::test]
async fn an_upstream_that_stalls_mid_body_is_cut_off_after_the_request_timeout() {
    let upstream = Upstream::start_with(|seen| {
        (seen.uri == "/stall").then(|| {
            let body = channel_body(|tx| async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"0123456789"))))
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
            Response::builder()
                .header("content-length", "100")
                .body(body.boxed())
                .unwrap()
        })
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = Launch::new(&upstream.url())
        .arg("--request-timeout")
        .arg("1s")
        .arg("--access-log")
        .arg(dir.path().join("access.log").to_str().unwrap())
        .start();
    let started = std::time::Instant::now();
    let request = format!(
        "GET /stall HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the connection was closed")
        .unwrap_or_default();
    assert!(started.elapsed() < Duration::from_secs(10));
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.ends_with("0123456789"),
        "ends short of its length: {text}"
    );
    let decisions = decisions_of(&dir, &mut gateway);
    assert_eq!(decisions, ["upstream_timeout"]);
}

#[tokio::test]
async fn garbage_from_the_upstream_is_502_and_not_relayed() {
    let addr = RawUpstream::answering(|_| {
        Some(b"NOT HTTP: internal stack trace at /srv/app.py line 3\r\n\r\n")
    })
    .await
    .addr;
    let gateway = Launch::new(&format!("http://{addr}")).start();
    let reply = get_authorized(&gateway.url("/x")).await;
    let problem = reply.assert_problem(502, "upstream-unavailable");
    // It answered, if not in HTTP: the client is not told it could not be reached.
    assert_eq!(problem["detail"], "the upstream gave no valid response");
    assert!(!reply.text().contains("stack trace"));
}

/// An upstream's response framed by both `Content-Length` and `Transfer-Encoding` is read
/// by its chunks and relayed whole, its length dropped (RFC 9112 §6.3 ¶3); one framed by a
/// coding the gateway does not decode (`gzip`) is 502, not relayed still coded (§6.1).
#[tokio::test]
async fn an_upstream_responses_framing_is_read_as_rfc_9112_says() {
    let addr = RawUpstream::answering(|head| {
        Some(if head.starts_with("GET /both") {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nwhole\r\n0\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n\x1f\x8b\x08\x00coded"
        })
    })
    .await.addr;
    let gateway = Launch::new(&format!("http://{addr}")).start();
    let reply = get_authorized(&gateway.url("/both")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "whole", "the chunks, not the declared length");

    let reply = get_authorized(&gateway.url("/coded")).await;
    let problem = reply.assert_problem(502, "upstream-unavailable");
    assert_eq!(
        problem["detail"],
        "the upstream sent a response the gateway cannot relay"
    );
    assert!(
        !reply.text().contains("coded"),
        "the coded body is not relayed"
    );
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .arg("--workers")
        .arg("1")
        .start();
    for _ in 0..5 {
        assert_eq!(get_authorized(&gateway.url("/v1")).await.status, 200);
    }
    let peers: std::collections::HashSet<_> = upstream.seen().iter().map(|s| s.peer).collect();
    assert_eq!(
        peers.len(),
        1,
        "sequential requests should share one upstream connection: {peers:?}"
    );
}

/// The pool's guarantee, first half: a connection whose response body was not read to the
/// end (the client went away mid-body) never carries another request, whose answer would
/// otherwise start with the rest of the abandoned body.
#[tokio::test]
async fn a_connection_whose_response_was_abandoned_is_not_reused() {
    let upstream = Upstream::start_with(|seen| {
        (seen.uri == "/endless").then(|| {
            let chunks = channel_body(|tx| async move {
                while tx
                    .send(Ok(Frame::data(Bytes::from_static(b"more;"))))
                    .await
                    .is_ok()
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
            Response::new(chunks.boxed())
        })
    })
    .await;
    let gateway = Launch::new(&upstream.url())
        .arg("--workers")
        .arg("1")
        .start();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let request = Request::get(gateway.url("/endless"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::<Bytes>::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    let mut body = response.into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "more;"
    );
    drop(body);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let reply = get_authorized(&gateway.url("/next")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["uri"], "/next");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0].peer, seen[1].peer,
        "the abandoned connection was reused"
    );
}

/// The pool's guarantee, second half: a connection whose upstream answered before taking
/// the whole upload (RFC 9112 §9.3: it may) is busy with the rest of the body, or unusable,
/// and never carries the next request.
#[tokio::test]
async fn a_connection_that_answered_before_the_whole_upload_is_not_reused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that answers `/early` with 413 as soon as it has the head, reading no
    // body, and anything else with the number of the connection it came on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut connection = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            connection += 1;
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1
                {
                    head.push(byte[0]);
                }
                if head.starts_with(b"PUT /early") {
                    let _ = stream
                        .write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    // The rest of the body is never read; the connection stays open.
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    return;
                }
                let answer = format!("connection {connection}");
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                            answer.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let gateway = Launch::new(&format!("http://{addr}"))
        .arg("--workers")
        .arg("1")
        .start();
    // An upload declared at 512 KiB, sent slowly: the upstream answers after the head.
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let upload = channel_body(move |tx| async move {
        for _ in 0..8 {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let request = Request::put(gateway.url("/early"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-length", (512 * 1024).to_string())
        .body(upload)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 413);
    drop(response);

    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        get_authorized(&gateway.url("/next")),
    )
    .await
    .expect("the next request went to the busy connection and hung");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "connection 2");
}

#[tokio::test]
async fn upstream_closing_kept_alive_connections_is_harmless() {
    // An upstream that answers one request per connection and then closes it, as one
    // with a short keep-alive timeout does.
    let addr = RawUpstream::answering(|_| {
        Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nkeep-alive: timeout=1\r\n\r\nok")
    })
    .await
    .addr;
    let gateway = Launch::new(&format!("http://{addr}"))
        .arg("--workers")
        .arg("1")
        .start();
    for _ in 0..3 {
        let reply = get_authorized(&gateway.url("/v1")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A chunked response with a trailer section (RFC 9112 §7.1.2) ends at its trailers: the
/// client gets the whole body, the record says `allowed`, and the upstream's connection
/// goes back to the pool for the next request rather than being closed.
#[tokio::test]
async fn a_response_with_trailers_ends_there_rfc_9112_7_1_2() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                // Every request on the connection, answered alike, until the gateway
                // closes it.
                while !read_head(&mut stream).await.is_empty() {
                    let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\
                        Trailer: X-Checksum\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (dir, mut gateway) = start_configured(
        &format!(
            "[upstreams.api]\nurl = \"http://{addr}\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
        ),
        Launch::bare().arg("--workers").arg("1"),
    );
    for _ in 0..3 {
        let reply = get_authorized(&gateway.url("/trailers")).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "hello".to_owned())
        );
    }
    assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(decisions_of(&dir, &mut gateway), ["allowed"; 3]);
}
