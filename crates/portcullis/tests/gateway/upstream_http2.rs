//! HTTP/2 to upstreams: negotiated by ALPN over TLS (RFC 9113 §3.2, RFC 7301) or spoken
//! by prior knowledge over plain TCP (h2c, RFC 9113 §3.3), as `http_version` says; many
//! requests multiplexed on one connection; HTTP/1.1 by default, whatever the upstream
//! offers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::*;
use crate::upstream_tls::{Identity, self_signed};

/// What an upstream saw of each request: the connection it came on, its version, and
/// whether it had a Host field.
type Seen = Arc<Mutex<Vec<(SocketAddr, Version, bool)>>>;

/// An upstream that echoes each request's body with its HTTP version, served over TLS
/// offering `alpn` (HTTP/2 on a connection that negotiated `h2`, HTTP/1.1 otherwise), or,
/// without `identity`, HTTP/2 over plain TCP (prior knowledge).
async fn echo_upstream(identity: Option<&Identity>, alpn: &[&[u8]]) -> (u16, Seen) {
    let acceptor = identity
        .map(|identity| tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config(alpn))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let host = request.headers().contains_key("host");
                    record.lock().unwrap().push((peer, request.version(), host));
                    async move {
                        let version = format!("{:?} ", request.version());
                        // A body the gateway cut off (reset) is echoed as what arrived.
                        let (body, trailers) = match request.into_body().collect().await {
                            Ok(collected) => {
                                let trailers = collected.trailers().cloned();
                                (collected.to_bytes(), trailers)
                            }
                            Err(_) => (Bytes::from_static(b"<reset>"), None),
                        };
                        let mut echo = version.into_bytes();
                        echo.extend_from_slice(&body);
                        if let Some(trailers) = trailers {
                            echo.extend_from_slice(format!(" trailers {trailers:?}").as_bytes());
                        }
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            echo,
                        ))))
                    }
                });
                let Some(acceptor) = acceptor else {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    return;
                };
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                }
            });
        }
    });
    (port, seen)
}

/// A one-worker gateway whose routes `/NAME` go to the upstreams `(NAME, TOML)`.
fn gateway_for(upstreams: &[(&str, String)]) -> (tempfile::TempDir, Gateway) {
    let mut config = String::new();
    for (name, table) in upstreams {
        config.push_str(&format!(
            "[upstreams.{name}]\n{table}\n[[routes]]\npath_prefix = \"/{name}\"\nupstream = \"{name}\"\nstrip_prefix = true\n"
        ));
    }
    start_configured(&config, Launch::bare().arg("--workers").arg("1"))
}

fn pinned(port: u16, identity: &Identity, version: Option<&str>) -> String {
    let version = version.map_or(String::new(), |v| format!("http_version = \"{v}\"\n"));
    format!(
        "url = \"https://127.0.0.1:{port}\"\npin_sha256 = [\"{}\"]\n{version}",
        identity.cert_pin()
    )
}

async fn post(gateway: &Gateway, path: &str, body: &'static str) -> Reply {
    post_to(&gateway.url(path), body).await
}

async fn post_to(url: &str, body: &'static str) -> Reply {
    let request = Request::post(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    send(request).await
}

#[tokio::test]
async fn http2_is_negotiated_by_alpn_and_multiplexed_rfc_9113_3_2() {
    let identity = self_signed(&["127.0.0.1"]);
    let (both, both_seen) = echo_upstream(Some(&identity), &[b"h2", b"http/1.1"]).await;
    let (old, old_seen) = echo_upstream(Some(&identity), &[b"http/1.1"]).await;
    let (_dir, gateway) = gateway_for(&[
        ("h2", pinned(both, &identity, Some("2"))),
        ("auto", pinned(both, &identity, Some("auto"))),
        ("fallback", pinned(old, &identity, Some("auto"))),
        ("default", pinned(both, &identity, None)),
    ]);

    // HTTP/2 upstream, HTTP/1.1 client: bodies both ways, the client's own version kept.
    let reply = post(&gateway, "/h2/echo", "over h2").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "HTTP/2.0 over h2");
    assert_eq!(reply.version, Version::HTTP_11);

    // Many requests at once share one connection: HTTP/2 streams, not a pool.
    let before = both_seen.lock().unwrap().len();
    let url = gateway.url("/h2/many");
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let url = url.clone();
        requests.spawn(async move { post_to(&url, "x").await.status });
    }
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    let peers: HashSet<SocketAddr> = both_seen.lock().unwrap()[before..]
        .iter()
        .map(|(peer, version, host)| {
            assert_eq!(*version, Version::HTTP_2);
            // `:authority` only: a Host beside it is a duplicate to nginx (RFC 9113 §8.3.1).
            assert!(!host);
            *peer
        })
        .collect();
    assert_eq!(peers.len(), 1, "{peers:?}");

    // `auto` takes what the upstream picks: HTTP/2 where offered, HTTP/1.1 where not.
    assert_eq!(post(&gateway, "/auto/a", "a").await.text(), "HTTP/2.0 a");
    assert_eq!(
        post(&gateway, "/fallback/b", "b").await.text(),
        "HTTP/1.1 b"
    );
    assert_eq!(old_seen.lock().unwrap().len(), 1);
    // Over HTTP/1.1, chosen by ALPN, the client writes Host (RFC 9112 §3.2).
    assert!(old_seen.lock().unwrap()[0].2);
    // Unless told otherwise, the gateway speaks HTTP/1.1, as nginx and Envoy do.
    assert_eq!(post(&gateway, "/default/c", "c").await.text(), "HTTP/1.1 c");
}

#[tokio::test]
async fn http2_by_prior_knowledge_over_plain_tcp_rfc_9113_3_3() {
    let (port, seen) = echo_upstream(None, &[]).await;
    let (_dir, gateway) = gateway_for(&[(
        "h2c",
        format!("url = \"http://127.0.0.1:{port}\"\nhttp_version = \"2\"\n"),
    )]);
    let reply = post(&gateway, "/h2c/echo", "cleartext").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "HTTP/2.0 cleartext");
    assert_eq!(seen.lock().unwrap()[0].1, Version::HTTP_2);
    assert!(!seen.lock().unwrap()[0].2, "a Host field beside :authority");

    // A request body's trailer section is never forwarded: over HTTP/2 the upstream's
    // client would send it, its fields past every check the head's pass.
    let request = format!(
        "POST /h2c/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nTrailer: X-Forwarded-For\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
    );
    let reply = raw(gateway.addr, request.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "HTTP/2.0 abc");
}

/// A pin holds over HTTP/2 as over HTTP/1.1: a mismatch fails the handshake, nothing sent.
#[tokio::test]
async fn pins_hold_over_http2() {
    let identity = self_signed(&["127.0.0.1"]);
    let other = self_signed(&["127.0.0.1"]);
    let (port, seen) = echo_upstream(Some(&identity), &[b"h2"]).await;
    let (dir, mut gateway) = gateway_for(&[("h2", pinned(port, &other, Some("2")))]);
    post(&gateway, "/h2/x", "secret")
        .await
        .assert_problem(502, "upstream-unavailable");
    assert!(seen.lock().unwrap().is_empty());
    assert_eq!(decisions_of(&dir, &mut gateway), ["upstream_pin_mismatch"]);
}

/// Over HTTP/2, hyper resets the stream when the client's body fails and says nothing of
/// why; the gateway still tells the client's fault from the upstream's: an upload streamed
/// past the limit is the client's 413, and never counts against the upstream's breaker.
#[tokio::test]
async fn an_upload_over_the_limit_is_the_clients_413_over_http2_too() {
    let identity = self_signed(&["127.0.0.1"]);
    let (port, _seen) = echo_upstream(Some(&identity), &[b"h2"]).await;
    let (dir, mut gateway) = start_configured(
        &format!(
            "[limits]\nmax_body_bytes = 1000\n[upstreams.h2]\n{}\
             circuit = {{ failure_threshold = 1, recovery_timeout = \"60s\" }}\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"h2\"\n",
            pinned(port, &identity, Some("2"))
        ),
        Launch::bare().arg("--workers").arg("1"),
    );
    // Chunked, so that the limit is met only while streaming, after the call began.
    let body = channel_body(|tx| async move {
        for _ in 0..8 {
            if tx
                .send(Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; 400]))))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let request = Request::post(gateway.url("/upload"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    let reply = read_reply(client.request(request).await.unwrap()).await;
    reply.assert_problem(413, "body-too-large");
    // The breaker (one failure opens it) did not count it: the next request goes through.
    assert_eq!(post(&gateway, "/after", "ok").await.text(), "HTTP/2.0 ok");
    assert_eq!(
        decisions_of(&dir, &mut gateway),
        ["body_too_large", "allowed"]
    );
}

/// An HTTP/2 upstream may end a stream with an empty DATA frame after the last byte of a
/// declared length (RFC 9113 §8.1: END_STREAM on any frame), as nginx does: the response
/// reached the client whole, and is recorded `allowed`, not `client_aborted`.
#[tokio::test]
async fn a_stream_ended_in_a_frame_of_its_own_is_recorded_as_answered_rfc_9113_8_1() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_: Request<Incoming>| async {
                    // The data in one frame; the end of the stream found at the next poll.
                    let body = channel_body(|frames| async move {
                        let _ = frames
                            .send(Ok(hyper::body::Frame::data("hello".into())))
                            .await;
                    });
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("content-length", "5")
                            .body(body)
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    let (dir, mut gateway) = gateway_for(&[(
        "h2c",
        format!("url = \"http://127.0.0.1:{port}\"\nhttp_version = \"2\"\n"),
    )]);
    for _ in 0..3 {
        let reply = get_authorized(&gateway.url("/h2c/split")).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "hello".to_owned())
        );
    }
    assert_eq!(decisions_of(&dir, &mut gateway), ["allowed"; 3]);
}
