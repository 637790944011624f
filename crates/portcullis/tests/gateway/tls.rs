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

fn client(
    pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    http2: bool,
) -> Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
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
