//! The TLS listener: HTTP/1.1 and HTTP/2 by ALPN, TLS 1.2 and 1.3, HSTS.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Version};
use http_body_util::Full;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::common::*;

struct TestCert {
    _dir: tempfile::TempDir,
    cert: String,
    key: String,
    pem: String,
}

fn test_cert() -> TestCert {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = certified.cert.pem();
    let cert = write_file(dir.path(), "cert.pem", &pem);
    let key = write_file(dir.path(), "key.pem", &certified.key_pair.serialize_pem());
    TestCert {
        cert: cert.to_str().unwrap().to_owned(),
        key: key.to_str().unwrap().to_owned(),
        pem,
        _dir: dir,
    }
}

/// A TLS client configuration speaking `versions` that trusts only `pem`.
fn client_config(
    pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn client(
    pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    http2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let config = client_config(pem, versions);
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if http2 {
        builder.enable_all_versions().build()
    } else {
        builder.enable_http1().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

fn authorized(url: String) -> Request<Full<Bytes>> {
    Request::get(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::default())
        .unwrap()
}

fn start_tls(upstream: &Upstream, cert: &TestCert) -> Gateway {
    Launch::new(&upstream.url())
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .start()
}

#[tokio::test]
async fn serves_http1_and_http2_over_tls_with_hsts() {
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let gateway = start_tls(&upstream, &cert);
    assert!(gateway.log().contains("tls=true"));
    let url = format!("https://127.0.0.1:{}/v1/positions", gateway.addr.port());

    let h2 = read_reply(
        client(&cert.pem, rustls::ALL_VERSIONS, true)
            .request(authorized(url.clone()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(h2.status, 200);
    assert_eq!(h2.version, Version::HTTP_2);
    assert_eq!(
        h2.header("strict-transport-security"),
        Some("max-age=31536000; includeSubDomains")
    );
    assert!(h2.header("server").is_none());

    let h1 = read_reply(
        client(&cert.pem, &[&rustls::version::TLS12], false)
            .request(authorized(url.clone()))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(h1.status, 200);
    assert_eq!(h1.version, Version::HTTP_11);
    assert!(h1.header("strict-transport-security").is_some());

    let seen = upstream.seen();
    assert_eq!(seen.len(), 2);
    for request in seen {
        assert_eq!(request.header("x-forwarded-proto"), Some("https"));
        assert_eq!(request.header("authorization"), None);
    }

    // Refusals over HTTP/2 are problem+json too.
    let anonymous = Request::get(url).body(Full::default()).unwrap();
    let refused = read_reply(
        client(&cert.pem, rustls::ALL_VERSIONS, true)
            .request(anonymous)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(refused.version, Version::HTTP_2);
    refused.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_nothing() {
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let gateway = start_tls(&upstream, &cert);
    let mut stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(&raw_get("/v1")).await.unwrap();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut bytes),
    )
    .await
    .unwrap();
    assert!(!bytes.starts_with(b"HTTP/1.1 200"));
    assert!(upstream.seen().is_empty());
}

#[test]
fn a_missing_key_file_stops_the_start_with_a_clear_error() {
    let cert = test_cert();
    let output = portcullis()
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--tls-cert",
            &cert.cert,
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/key.pem"), "{stderr}");
}

#[tokio::test]
async fn the_admin_api_can_listen_with_tls() {
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "c.toml",
        &format!(
            "[admin.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.cert, cert.key
        ),
    );
    let gateway = Launch::new(&upstream.url())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    let url = gateway
        .admin_url("/v1/tokens")
        .replacen("http://", "https://", 1);
    let reply = read_reply(
        client(&cert.pem, rustls::ALL_VERSIONS, true)
            .request(authorized(url))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.version,
        Version::HTTP_11,
        "a client offering h2 is answered in HTTP/1.1"
    );
    assert!(gateway.log().contains("admin API listening") && gateway.log().contains("tls=true"));
}

/// A TLS connection to the gateway offering `alpn`, trusting `pem`.
async fn tls_connect(
    pem: &str,
    addr: std::net::SocketAddr,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = client_config(pem, rustls::ALL_VERSIONS);
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// Whether the gateway closes `stream` (end of stream or reset) within 10 s, reading and
/// discarding whatever it sends first (SETTINGS, GOAWAY).
async fn closed_by_gateway(mut stream: impl tokio::io::AsyncRead + Unpin) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let read_until_closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read_until_closed)
        .await
        .is_ok()
}

/// A gateway over TLS with a 1 s header-read timeout, a 1 s idle timeout and room for
/// only two connections.
fn start_tls_with_short_deadlines(
    upstream: &Upstream,
    cert: &TestCert,
) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "c.toml",
        "[limits]\nheader_read_timeout = \"1s\"\nidle_timeout = \"1s\"\nmax_connections = 2\n",
    );
    let gateway = Launch::new(&upstream.url())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .start();
    (dir, gateway)
}

#[tokio::test]
async fn every_phase_of_a_tls_connection_has_a_deadline_rfc_9113_3_4() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let (_dir, gateway) = start_tls_with_short_deadlines(&upstream, &cert);

    // A handshake that never starts, and one that stalls after a few bytes.
    let silent = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    assert!(
        closed_by_gateway(silent).await,
        "a silent TCP client held its slot"
    );
    let mut stalled = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00]).await.unwrap();
    assert!(
        closed_by_gateway(stalled).await,
        "a stalled handshake held its slot"
    );

    // HTTP/2 chosen by ALPN, then nothing: no preface.
    let no_preface = tls_connect(&cert.pem, gateway.addr, b"h2").await;
    assert!(
        closed_by_gateway(no_preface).await,
        "an h2 client without a preface held its slot"
    );

    // The preface and SETTINGS, then no stream.
    let mut no_stream = tls_connect(&cert.pem, gateway.addr, b"h2").await;
    no_stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    no_stream.flush().await.unwrap();
    assert!(
        closed_by_gateway(no_stream).await,
        "an h2 client that opened no stream held its slot"
    );

    // With both slots held by clients that send nothing, a real client still gets in once
    // the deadline has closed them.
    let _hogs = (
        tls_connect(&cert.pem, gateway.addr, b"h2").await,
        tls_connect(&cert.pem, gateway.addr, b"h2").await,
    );
    let url = format!("https://localhost:{}/x", gateway.addr.port());
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client(&cert.pem, rustls::ALL_VERSIONS, true).request(authorized(url)),
    )
    .await
    .expect("the idle connections were never closed")
    .unwrap();
    assert_eq!(reply.status(), 200);
}

/// An HTTP/2 connection of its own to the gateway, driven on a task; the handle ends when
/// the connection does.
async fn h2_connection(
    cert: &TestCert,
    gateway: &Gateway,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = tls_connect(&cert.pem, gateway.addr, b"h2").await;
    let (sender, connection) = hyper::client::conn::http2::handshake(
        TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    (sender, tokio::spawn(connection))
}

#[tokio::test]
async fn an_idle_http2_connection_is_sent_goaway_rfc_9113_6_8() {
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let (_dir, gateway) = start_tls_with_short_deadlines(&upstream, &cert);
    let (mut sender, connection) = h2_connection(&cert, &gateway).await;
    let url = format!("https://localhost:{}/x", gateway.addr.port());
    let reply = read_reply(sender.send_request(authorized(url)).await.unwrap()).await;
    assert_eq!(reply.status, 200);
    // hyper's keep-alive pings would keep the connection up; the idle timeout does not.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), connection)
        .await
        .expect("the idle HTTP/2 connection stayed open")
        .unwrap();
    // A GOAWAY first makes a clean end; a socket simply dropped is an error to the client.
    assert!(ended.is_ok(), "{ended:?}");
    assert!(sender.is_closed());
}

/// An HTTP/2 connection of its own that gives every stream a zero flow-control window: the
/// gateway can send each response's head, never its body, while the client library keeps
/// answering the gateway's pings.
async fn zero_window_connection(
    cert: &TestCert,
    gateway: &Gateway,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = tls_connect(&cert.pem, gateway.addr, b"h2").await;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

#[tokio::test]
async fn an_http2_client_that_stops_taking_its_response_loses_the_connection() {
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let (_dir, gateway) = start_tls_with_short_deadlines(&upstream, &cert);
    let (mut sender, connection) = zero_window_connection(&cert, &gateway).await;
    let url = format!("https://localhost:{}/health", gateway.addr.port());
    let response = sender
        .send_request(Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ended = tokio::time::timeout(std::time::Duration::from_secs(15), connection).await;
    assert!(ended.is_ok(), "a stalled stream held the connection");
    drop(response);
}

/// The same, while the client opens a new stream every 300 ms on the connection (no token
/// needed for `/health`): each stream is timed on its own, so new ones do not put off the
/// deadline of the first, which would hold its upstream slot (RFC 9113 §5.2: a zero window
/// is the client's to keep).
#[tokio::test]
async fn new_streams_do_not_keep_a_stalled_http2_stream_alive() {
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let (_dir, gateway) = start_tls_with_short_deadlines(&upstream, &cert);
    let (mut sender, mut connection) = zero_window_connection(&cert, &gateway).await;
    let url = format!("https://localhost:{}/health", gateway.addr.port());
    let stalled = sender
        .send_request(Request::get(&url).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(stalled.status(), 200);
    let mut kept = Vec::new();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            tokio::select! {
                ended = &mut connection => return ended,
                _ = tokio::time::sleep(std::time::Duration::from_millis(300)) => {
                    let probe = sender.send_request(Request::get(&url).body(Full::default()).unwrap());
                    if let Ok(Ok(response)) =
                        tokio::time::timeout(std::time::Duration::from_millis(200), probe).await
                    {
                        kept.push(response);
                    }
                }
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "new streams kept a stalled one's connection open"
    );
    drop((stalled, kept));
}

#[tokio::test]
async fn http2_requests_are_translated_faithfully_rfc_9113_8_2_3_and_8_3_1() {
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let gateway = start_tls(&upstream, &cert);
    let (mut sender, _connection) = h2_connection(&cert, &gateway).await;
    let port = gateway.addr.port();
    let request = |authority: &str, headers: &[(&str, &str)]| {
        let mut builder = Request::get(format!("https://{authority}/x"))
            .header("authorization", format!("Bearer {TOKEN}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(Full::default()).unwrap()
    };

    // Cookie crumbs, one field per cookie over HTTP/2, reach HTTP/1.1 as one field.
    let crumbs = request(
        &format!("localhost:{port}"),
        &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
    );
    let reply = read_reply(sender.send_request(crumbs).await.unwrap()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = upstream.only();
    let cookies: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2; c=3"]);
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(format!("localhost:{port}").as_str())
    );

    // A Host that disagrees with :authority, and userinfo in :authority, are refused.
    for (authority, host) in [
        (format!("localhost:{port}"), Some("evil.example")),
        (format!("user@localhost:{port}"), None),
    ] {
        let headers: Vec<(&str, &str)> = host.iter().map(|h| ("host", *h)).collect();
        let reply = read_reply(
            sender
                .send_request(request(&authority, &headers))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(reply.version, Version::HTTP_2);
        reply.assert_problem(400, "bad-request");
    }
    assert_eq!(upstream.seen().len(), 1);
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), the prefix's other bits `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header field, literal without indexing and with a literal name (RFC 7541 §6.2.2).
fn hpack_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// A request head for `GET https://localhost/PATH` with `fields`, HPACK-encoded without
/// Huffman coding or indexing, as a client that h2's checks do not stop can send it.
fn hpack_get(path: &str, fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![0x82, 0x87]; // :method GET, :scheme https (static table)
    hpack_field(&mut block, ":path", path);
    hpack_field(&mut block, ":authority", "localhost");
    for (name, value) in fields {
        hpack_field(&mut block, name, value);
    }
    block
}

/// An HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A head as HEADERS and CONTINUATION frames of at most 16 KiB (the default frame size),
/// ending the stream.
fn h2_head(stream: u32, block: &[u8]) -> Vec<u8> {
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = if i + 1 == chunks.len() {
            END_HEADERS
        } else {
            0
        };
        if i == 0 {
            out.extend(h2_frame(0x1, END_STREAM | last, stream, chunk));
        } else {
            out.extend(h2_frame(0x9, last, stream, chunk));
        }
    }
    out
}

/// Reads frames until every stream in `streams` has ended (a RST_STREAM, or a frame with
/// END_STREAM); returns each stream's RST_STREAM error code, if it was reset, and whether
/// it was answered with a head.
async fn h2_outcomes(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
    streams: &[u32],
) -> std::collections::HashMap<u32, (Option<u32>, bool)> {
    use tokio::io::AsyncReadExt;
    let mut outcomes = std::collections::HashMap::new();
    let mut ended = std::collections::HashSet::new();
    let read = async {
        while !streams.iter().all(|s| ended.contains(s)) {
            let mut header = [0u8; 9];
            stream.read_exact(&mut header).await.unwrap();
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0; length];
            stream.read_exact(&mut payload).await.unwrap();
            let id = u32::from_be_bytes(header[5..9].try_into().unwrap()) & 0x7fff_ffff;
            let entry = outcomes.entry(id).or_insert((None, false));
            match header[3] {
                0x3 => {
                    entry.0 = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()));
                    ended.insert(id);
                }
                0x1 => {
                    entry.1 = true;
                    if header[4] & 0x1 != 0 {
                        ended.insert(id);
                    }
                }
                0x0 if header[4] & 0x1 != 0 => {
                    ended.insert(id);
                }
                _ => {}
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("the gateway ended every stream");
    outcomes
}

/// h2 refuses some heads itself, before the gateway's service runs: a malformed one
/// (RFC 9113 §8.2.2: a connection-specific field; §8.1.1: END_STREAM with a declared
/// body) is reset with PROTOCOL_ERROR, one over the header list limit is answered 431
/// (RFC 9113 §6.5.2). Each is still one record, made by the connection, and nothing is counted twice.
#[tokio::test]
async fn http2_heads_h2_refuses_are_recorded_rfc_9113_8_1_1() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let mut gateway = Launch::new(&upstream.url())
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .arg("--access-log")
        .arg(log.to_str().unwrap())
        .start();
    let mut stream = tls_connect(&cert.pem, gateway.addr, b"h2").await;
    let bearer = format!("Bearer {TOKEN}");
    let big = "v".repeat(90_000);
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    bytes.extend(h2_head(1, &hpack_get("/a", &[("connection", "close")])));
    bytes.extend(h2_head(3, &hpack_get("/b", &[("content-length", "5")])));
    bytes.extend(h2_head(5, &hpack_get("/c", &[("x-big", &big)])));
    bytes.extend(h2_head(7, &hpack_get("/ok", &[("authorization", &bearer)])));
    stream.write_all(&bytes).await.unwrap();
    let outcomes = h2_outcomes(&mut stream, &[1, 3, 5, 7]).await;
    const PROTOCOL_ERROR: u32 = 0x1;
    assert_eq!(outcomes[&1], (Some(PROTOCOL_ERROR), false));
    assert_eq!(outcomes[&3], (Some(PROTOCOL_ERROR), false));
    assert_eq!(
        outcomes[&5],
        (None, true),
        "the oversized head is answered (431)"
    );
    assert_eq!(outcomes[&7], (None, true));
    drop(stream);

    gateway.final_log();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let mut seen: Vec<(String, u64, String)> = lines
        .iter()
        .map(|l| {
            (
                l["decision"].as_str().unwrap().to_owned(),
                l["status"].as_u64().unwrap(),
                l["protocol"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let h2 = "HTTP/2+tls".to_owned();
    assert_eq!(
        seen,
        [
            ("allowed".to_owned(), 200, h2.clone()),
            ("bad_request".to_owned(), 0, h2.clone()),
            ("bad_request".to_owned(), 0, h2.clone()),
            ("headers_too_large".to_owned(), 431, h2.clone()),
        ]
    );
    assert_eq!(upstream.seen().len(), 1);
}

/// The listener's certificate expiry is on the admin API and `/metrics`, and `check` warns
/// when fewer than 30 days are left.
#[tokio::test]
async fn a_listener_certificate_close_to_expiry_is_reported() {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
    let cert = params.self_signed(&key).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = write_file(dir.path(), "cert.pem", &cert.pem());
    let key_path = write_file(dir.path(), "key.pem", &key.serialize_pem());
    let output = portcullis()
        .args(["check", "--upstream", "http://127.0.0.1:9000"])
        .args(["--tls-cert", cert_path.to_str().unwrap()])
        .args(["--tls-key", key_path.to_str().unwrap()])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .output()
        .unwrap();
    let out = String::from_utf8(output.stdout).unwrap();
    assert!(out.contains("warning[tls.expiry]"), "{out}");
    assert!(
        out.contains("expires in 9 days") || out.contains("expires in 10 days"),
        "{out}"
    );

    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .arg("--tls-cert")
        .arg(cert_path.to_str().unwrap())
        .arg("--tls-key")
        .arg(key_path.to_str().unwrap())
        .start();
    let state = get_authorized(&gateway.admin_url("/v1/upstreams"))
        .await
        .json();
    let days = state["listener_certificate_days_left"].as_i64().unwrap();
    assert!((9..=10).contains(&days), "{state}");
    let metrics = get_authorized(&gateway.admin_url("/metrics")).await.text();
    assert!(
        metrics.contains("portcullis_listener_certificate_expiry_timestamp_seconds "),
        "{metrics}"
    );
}

/// A TLS gateway in front of `upstream` with the WebSocket routes of `websocket::config`.
fn websocket_gateway(upstream: &str, cert: &TestCert) -> (tempfile::TempDir, Gateway) {
    start_configured(
        &crate::websocket::config(upstream, "", ""),
        Launch::bare()
            .arg("--tls-cert")
            .arg(&cert.cert)
            .arg("--tls-key")
            .arg(&cert.key),
    )
}

/// An HTTP/2 WebSocket handshake (extended CONNECT, RFC 8441 §4) for `path` on `port`.
fn extended_connect(port: u16, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::connect(format!("https://127.0.0.1:{port}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("sec-websocket-version", "13");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Full::default()).unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    request
}

#[tokio::test]
async fn websockets_open_over_http2_by_extended_connect_rfc_8441() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let echo = crate::websocket::EchoServer::start().await;
    let cert = test_cert();
    let (dir, mut gateway) = websocket_gateway(&echo.url(), &cert);
    let (mut sender, _connection) = h2_connection(&cert, &gateway).await;
    let port = gateway.addr.port();
    let request = extended_connect(port, "/ws/h2", &[("sec-websocket-protocol", "chat")]);
    let mut response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200, "RFC 8441 §5: 200, not 101");
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    assert!(!response.headers().contains_key("sec-websocket-accept"));
    let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.unwrap();
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .unwrap();
        assert_eq!(echoed.unwrap().unwrap(), Message::text(text));
    }
    // The upstream was sent an HTTP/1.1 upgrade, with a key the gateway made.
    let seen = echo.handshakes();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["upgrade"], "websocket");
    assert_eq!(seen[0]["sec-websocket-key"].len(), 24);
    // Another stream on the same connection works while the WebSocket is open.
    let plain = sender
        .send_request(
            Request::get(format!("https://127.0.0.1:{port}/health"))
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(plain.status(), 200);
    ws.send(Message::text("three")).await.unwrap();
    let echoed = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert_eq!(echoed.unwrap().unwrap(), Message::text("three"));
    ws.close(None).await.unwrap();
    // The close handshake runs on this thread's echo server: let it finish.
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await
    {}
    drop((ws, sender));
    let records = access_log_of(&dir, &mut gateway);
    let record = records.iter().find(|r| r["path"] == "/ws/h2").unwrap();
    assert_eq!(record["method"], "GET");
    assert_eq!(record["status"], 200);
    assert_eq!(record["protocol"], "HTTP/2+tls");
    assert_eq!(record["decision"], "allowed");
    assert!(record["bytes_in"].as_u64().unwrap() > 0);
}

/// curl's answer to uploading `body` (a file, or stdin streamed without a length when
/// `streamed`) over HTTP/2: its exit code, and `status version` as it printed them.
fn curl_upload(
    addr: std::net::SocketAddr,
    cert: &str,
    body: &[u8],
    streamed: bool,
) -> (i32, String) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload");
    std::fs::write(&file, body).unwrap();
    let source = if streamed {
        ["-T".to_owned(), "-".to_owned()]
    } else {
        ["--data-binary".to_owned(), format!("@{}", file.display())]
    };
    let mut child = std::process::Command::new("curl")
        .args(["-s", "--http2", "--cacert", cert, "-X", "POST"])
        .args(&source)
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
        .arg(format!("https://localhost:{}/upload", addr.port()))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("curl");
    let mut stdin = child.stdin.take().unwrap();
    if streamed {
        // Fed in pieces, so curl cannot know the length.
        for piece in body.chunks(16 * 1024) {
            if stdin.write_all(piece).is_err() {
                break;
            }
        }
    }
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_uploaders_over_the_limit_get_the_whole_413_rfc_9113_8_1() {
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let gateway = Launch::new(&upstream.url())
        .arg("--tls-cert")
        .arg(&cert.cert)
        .arg("--tls-key")
        .arg(&cert.key)
        .arg("--max-body-bytes")
        .arg("100000")
        .start();
    let curl = |body: Vec<u8>, streamed: bool| {
        let (addr, cert) = (gateway.addr, cert.cert.clone());
        tokio::task::spawn_blocking(move || curl_upload(addr, &cert, &body, streamed))
    };
    for streamed in [false, true] {
        let (code, printed) = curl(vec![b'x'; 3_000_000], streamed).await.unwrap();
        assert_eq!(
            (code, printed.as_str()),
            (0, "413 2"),
            "curl, streamed: {streamed}"
        );
    }
    // A small upload still goes through on the same terms.
    let (code, printed) = curl(b"{}".to_vec(), false).await.unwrap();
    assert_eq!((code, printed.as_str()), (0, "200 2"));

    let python = std::env::var_os("PORTCULLIS_PYTHON").expect(
        "PORTCULLIS_PYTHON is not set; it names a Python with httpx[http2]; .ci/run installs it",
    );
    let script = r#"
import httpx, json, sys
with httpx.Client(http2=True, verify=sys.argv[2]) as client:
    answer = client.post(sys.argv[1], content=b"x" * 3_000_000,
                         headers={"Authorization": "Bearer " + sys.argv[3]}, timeout=20)
    print(json.dumps({"status": answer.status_code, "version": answer.http_version,
                      "type": answer.json()["type"]}))
"#;
    let url = format!("https://localhost:{}/upload", gateway.addr.port());
    let output = std::process::Command::new(python)
        .args(["-c", script, &url, &cert.cert, TOKEN])
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(printed.trim()).unwrap();
    assert_eq!(answer["status"], 413, "{answer}");
    assert_eq!(answer["version"], "HTTP/2", "{answer}");
    assert_eq!(answer["type"], "urn:portcullis:problem:body-too-large");
}

#[tokio::test]
async fn an_http2_handshake_the_upstream_does_not_switch_is_a_502_not_a_tunnel_rfc_8441_5() {
    // A plain HTTP server answers the handshake 200, without switching.
    let upstream = Upstream::start().await;
    let cert = test_cert();
    let (_dir, gateway) = websocket_gateway(&upstream.url(), &cert);
    let (mut sender, _connection) = h2_connection(&cert, &gateway).await;
    let request = extended_connect(gateway.addr.port(), "/ws/h2", &[]);
    let response = sender.send_request(request).await.unwrap();
    read_reply(response)
        .await
        .assert_problem(502, "upstream-unavailable");
    assert_eq!(upstream.only().header("upgrade"), Some("websocket"));
}

/// An upstream that switches protocols without answering the key the gateway sent in an
/// HTTP/2 client's name (RFC 6455 §4.1): no tunnel, a 502; the client could not check.
#[tokio::test]
async fn an_http2_handshake_switched_without_the_keys_answer_is_a_502_rfc_6455_4_1() {
    let addr = RawUpstream::answering(|_| {
        Some(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n\x81\x05hello")
    })
    .await.addr;
    let cert = test_cert();
    let (_dir, gateway) = websocket_gateway(&format!("http://{addr}"), &cert);
    let (mut sender, _connection) = h2_connection(&cert, &gateway).await;
    let request = extended_connect(gateway.addr.port(), "/ws/h2", &[]);
    let response = sender.send_request(request).await.unwrap();
    let reply = read_reply(response).await;
    let problem = reply.assert_problem(502, "upstream-unavailable");
    assert_eq!(problem["detail"], "the upstream did not open the WebSocket");
}
