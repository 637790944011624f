//! TLS to upstreams: pinned certificates (Outline's `certSha256`, Envoy's SPKI pins), a CA
//! file of the upstream's own, and client certificates, against real TLS upstreams.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, CertifiedKey, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::common::*;

/// A certificate and its key, as an upstream or a client presents them.
pub(crate) struct Identity {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    der: Vec<u8>,
    spki_der: Vec<u8>,
}

impl Identity {
    /// A TLS server configuration presenting this certificate, asking no client
    /// certificate, offering `alpn`.
    pub(crate) fn server_config(&self, alpn: &[&[u8]]) -> rustls::ServerConfig {
        let chain = vec![CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// The `pin_sha256` of the certificate, in Outline's form: upper-case hex.
    pub(crate) fn cert_pin(&self) -> String {
        hex(&Sha256::digest(&self.der)).to_ascii_uppercase()
    }

    /// The `pin_spki_sha256` of its public key: base64.
    fn spki_pin(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&self.spki_der))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A self-signed certificate naming `names` (DNS names or IP addresses).
pub(crate) fn self_signed(names: &[&str]) -> Identity {
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let CertifiedKey { cert, key_pair } = rcgen::generate_simple_self_signed(names).unwrap();
    Identity {
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
        der: cert.der().to_vec(),
        spki_der: key_pair.public_key_der(),
    }
}

/// A certificate authority, and certificates it signs.
struct Authority {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Authority {
    fn new() -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.clone().self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    /// A leaf for `names`, expired when `expired`.
    fn sign(&self, names: &[&str], expired: bool) -> Identity {
        let issuer = self.params.clone().self_signed(&self.key).unwrap();
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &issuer, &self.key).unwrap();
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
            spki_der: key.public_key_der(),
        }
    }
}

/// An HTTPS upstream presenting `identity`, answering every request 200 `tls ok`, counting
/// the requests it read (a handshake that fails reads none).
struct TlsUpstream {
    port: u16,
    requests: Arc<AtomicUsize>,
    uris: Arc<std::sync::Mutex<Vec<String>>>,
}

impl TlsUpstream {
    async fn start(identity: &Identity, client_ca: Option<&Authority>) -> Self {
        let chain = vec![CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
                    .unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(chain, key).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let uris = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = uris.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        counted.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push(request.uri().to_string());
                        async {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                                Bytes::from_static(b"tls ok"),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            port,
            requests,
            uris,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn uris(&self) -> Vec<String> {
        self.uris.lock().unwrap().clone()
    }
}

/// A gateway whose routes `/NAME` go to the upstreams `(NAME, TOML)`, each TOML the rest of
/// its `[upstreams.NAME]` table, with its access log in a file.
struct Pinned {
    dir: tempfile::TempDir,
    gateway: Gateway,
}

impl Pinned {
    fn start(upstreams: &[(&str, String)]) -> Self {
        let mut config = String::new();
        for (name, table) in upstreams {
            config.push_str(&format!(
                "[upstreams.{name}]\n{table}\n[[routes]]\npath_prefix = \"/{name}\"\nupstream = \"{name}\"\nstrip_prefix = true\n"
            ));
        }
        let (dir, gateway) = start_configured(&config, Launch::bare());
        Self { dir, gateway }
    }

    async fn get(&self, name: &str) -> Reply {
        get_authorized(&self.gateway.url(&format!("/{name}/x"))).await
    }

    /// The access log's decisions, once the gateway has stopped.
    fn decisions(&mut self) -> Vec<String> {
        decisions_of(&self.dir, &mut self.gateway)
    }
}

fn url(upstream: &TlsUpstream) -> String {
    format!("url = \"https://127.0.0.1:{}\"", upstream.port)
}

/// Outline's servers present a self-signed certificate naming no host the gateway knows
/// them by; the pin is the whole trust: in Outline's form, with colons in lower case, one
/// of two during a rotation, or the public key's (SPKI) hash.
#[tokio::test]
async fn a_pinned_upstream_is_trusted_by_its_certificate_alone() {
    let identity = self_signed(&["outline.invalid"]);
    let upstream = TlsUpstream::start(&identity, None).await;
    let pin = identity.cert_pin();
    let colons = pin
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap().to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(":");
    let other = self_signed(&["other.invalid"]).cert_pin();
    let base = url(&upstream);
    let gateway = Pinned::start(&[
        ("outline", format!("{base}\npin_sha256 = [\"{pin}\"]")),
        ("colons", format!("{base}\npin_sha256 = [\"{colons}\"]")),
        (
            "rotated",
            format!("{base}\npin_sha256 = [\"{other}\", \"{pin}\"]"),
        ),
        (
            "spki",
            format!("{base}\npin_spki_sha256 = [\"{}\"]", identity.spki_pin()),
        ),
    ]);
    for name in ["outline", "colons", "rotated", "spki"] {
        let reply = gateway.get(name).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        assert_eq!(reply.text(), "tls ok");
    }
    assert_eq!(upstream.requests(), 4);
    // The pinned certificate's expiry, once it was accepted (rcgen's default: 4096).
    let state = get_authorized(&gateway.gateway.admin_url("/v1/upstreams")).await;
    let outline = &state.json()["upstreams"][1];
    assert_eq!(outline["name"], "outline");
    assert!(outline["certificate_days_left"].as_i64().unwrap() > 365 * 100);
    assert!(
        outline["certificate_expires"]
            .as_str()
            .unwrap()
            .starts_with("4096-01-01")
    );
    let metrics = get_authorized(&gateway.gateway.admin_url("/metrics"))
        .await
        .text();
    assert!(
        metrics.contains(
            "portcullis_upstream_certificate_expiry_timestamp_seconds{upstream=\"outline\"}"
        ),
        "{metrics}"
    );
}

/// A certificate that matches no pin fails the handshake before any request byte is sent
/// (the upstream reads no request): 502 problem+json, decision `upstream_pin_mismatch`,
/// and the operator's log names the upstream and the fingerprints it presented.
#[tokio::test]
async fn a_wrong_pin_stops_the_request_before_it_is_sent() {
    let identity = self_signed(&["outline.invalid"]);
    let upstream = TlsUpstream::start(&identity, None).await;
    let wrong = self_signed(&["other.invalid"]);
    let base = url(&upstream);
    let mut gateway = Pinned::start(&[
        (
            "cert",
            format!("{base}\npin_sha256 = [\"{}\"]", wrong.cert_pin()),
        ),
        (
            "spki",
            format!("{base}\npin_spki_sha256 = [\"{}\"]", wrong.spki_pin()),
        ),
    ]);
    for name in ["cert", "spki"] {
        let reply = gateway.get(name).await;
        let problem = reply.assert_problem(502, "upstream-unavailable");
        assert!(!problem.to_string().contains(&identity.cert_pin()));
    }
    assert_eq!(upstream.requests(), 0, "the upstream saw a request");
    let log = gateway.gateway.log();
    assert!(log.contains("matches no pin"), "{log}");
    assert!(log.contains(&identity.cert_pin()), "{log}");
    assert!(log.contains(&identity.spki_pin()), "{log}");
    assert!(
        log.contains("upstream=\"cert\"") || log.contains("upstream=cert"),
        "{log}"
    );
    assert_eq!(
        gateway.decisions(),
        ["upstream_pin_mismatch", "upstream_pin_mismatch"]
    );
}

/// Without pins the certificate is verified (RFC 5280 chain, RFC 6125 name): against the
/// upstream's own CA file, a certificate for the right address is accepted, and one for
/// another name, an expired one, or a self-signed one are refused before any request.
#[tokio::test]
async fn without_pins_the_chain_the_name_and_the_dates_are_checked() {
    let ca = Authority::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem);
    let ca_line = format!("ca_file = \"{}\"", ca_file.display());
    let good = TlsUpstream::start(&ca.sign(&["127.0.0.1"], false), None).await;
    let misnamed = TlsUpstream::start(&ca.sign(&["api.example"], false), None).await;
    let expired = TlsUpstream::start(&ca.sign(&["127.0.0.1"], true), None).await;
    let unknown = TlsUpstream::start(&self_signed(&["127.0.0.1"]), None).await;
    let mut gateway = Pinned::start(&[
        ("good", format!("{}\n{ca_line}", url(&good))),
        ("misnamed", format!("{}\n{ca_line}", url(&misnamed))),
        ("expired", format!("{}\n{ca_line}", url(&expired))),
        ("unknown", url(&unknown)),
    ]);
    assert_eq!(gateway.get("good").await.status, 200);
    for name in ["misnamed", "expired", "unknown"] {
        gateway
            .get(name)
            .await
            .assert_problem(502, "upstream-unavailable");
    }
    assert_eq!(good.requests(), 1);
    assert_eq!(
        misnamed.requests() + expired.requests() + unknown.requests(),
        0
    );
    assert_eq!(
        gateway.decisions(),
        [
            "allowed",
            "upstream_connect",
            "upstream_connect",
            "upstream_connect"
        ]
    );
}

/// An upstream that asks for a client certificate (mutual TLS) gets the configured one; a
/// gateway without one is refused by it.
#[tokio::test]
async fn a_client_certificate_is_presented_to_upstreams_that_ask() {
    let server_ca = Authority::new();
    let client_ca = Authority::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_file(dir.path(), "ca.pem", &server_ca.pem);
    let client = client_ca.sign(&["gateway.internal"], false);
    let cert = write_file(dir.path(), "client.pem", &client.cert_pem);
    let key = write_file(dir.path(), "client.key", &client.key_pem);
    let upstream =
        TlsUpstream::start(&server_ca.sign(&["127.0.0.1"], false), Some(&client_ca)).await;
    let base = format!("{}\nca_file = \"{}\"", url(&upstream), ca_file.display());
    let gateway = Pinned::start(&[
        (
            "mtls",
            format!(
                "{base}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
                cert.display(),
                key.display()
            ),
        ),
        ("anonymous", base.clone()),
    ]);
    assert_eq!(gateway.get("mtls").await.status, 200);
    gateway
        .get("anonymous")
        .await
        .assert_problem(502, "upstream-unavailable");
    assert_eq!(upstream.requests(), 1);
}

/// Pins that are not 32 bytes, half a client identity, TLS settings on a plain-HTTP
/// upstream and an unreadable CA file are each refused by `check`, with their rule.
#[test]
fn tls_settings_that_cannot_work_are_refused_by_check() {
    let (code, out) = check_config(
        "[upstreams.short]\nurl = \"https://127.0.0.1:1\"\npin_sha256 = [\"9F86D081\"]\n\
         [upstreams.spki]\nurl = \"https://127.0.0.1:1\"\npin_spki_sha256 = [\"AAAA\"]\n\
         [upstreams.half]\nurl = \"https://127.0.0.1:1\"\nclient_cert = \"/nonexistent.pem\"\n\
         [upstreams.plain]\nurl = \"http://127.0.0.1:1\"\nca_file = \"/nonexistent.pem\"\n\
         [upstreams.missing]\nurl = \"https://127.0.0.1:1\"\nca_file = \"/nonexistent.pem\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"short\"\n",
        &[],
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    for rule in [
        "error[upstreams.pin_sha256]",
        "error[upstreams.pin_spki_sha256]",
        "error[upstreams.client_cert]",
        "error[upstreams.tls]",
    ] {
        assert!(out.contains(rule), "{rule}: {out}");
    }
    assert!(out.contains("\"missing\""), "{out}");
    assert!(out.contains("\"plain\""), "{out}");
}

/// `outline_access` reads what the Outline installer printed (its JSON line, colour codes
/// and all) or `access.txt`, and sets the address, the pin and the secret path: the
/// upstream gets `/SECRET/server`, and the secret appears in no log line or record.
#[tokio::test]
async fn outline_access_sets_the_address_the_pin_and_the_secret_path() {
    let identity = self_signed(&["outline.invalid"]);
    let upstream = TlsUpstream::start(&identity, None).await;
    let dir = tempfile::tempdir().unwrap();
    let api_url = format!("https://127.0.0.1:{}/Xk9-SeCrEt_path", upstream.port);
    let printed = write_file(
        dir.path(),
        "printed.txt",
        &format!(
            "\u{1b}[1;32m{{\"apiUrl\":\"{api_url}\",\"certSha256\":\"{}\"}}\u{1b}[0m\n",
            identity.cert_pin()
        ),
    );
    let access_txt = write_file(
        dir.path(),
        "access.txt",
        &format!("certSha256:{}\napiUrl:{api_url}\n", identity.cert_pin()),
    );
    let mut gateway = Pinned::start(&[
        (
            "printed",
            format!("outline_access = \"{}\"", printed.display()),
        ),
        (
            "txt",
            format!("outline_access = \"{}\"", access_txt.display()),
        ),
    ]);
    for name in ["printed", "txt"] {
        let reply = get_authorized(&gateway.gateway.url(&format!("/{name}/server"))).await;
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
    }
    assert_eq!(
        upstream.uris(),
        ["/Xk9-SeCrEt_path/server", "/Xk9-SeCrEt_path/server"]
    );
    let log = gateway.gateway.final_log();
    let access = std::fs::read_to_string(gateway.dir.path().join("access.log")).unwrap();
    assert!(!log.contains("Xk9-SeCrEt_path"), "{log}");
    assert!(!access.contains("Xk9-SeCrEt_path"), "{access}");
}

/// An access file that is missing, holds no pin, or sits beside a `url` is refused by
/// `check`, which never quotes the file.
#[test]
fn unusable_outline_access_is_refused_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let no_pin = write_file(
        dir.path(),
        "no-pin.txt",
        "apiUrl:https://127.0.0.1:1/TopSecret9\n",
    );
    let (code, out) = check_config(
        &format!(
            "[upstreams.missing]\noutline_access = \"/nonexistent/access.txt\"\n\
             [upstreams.nopin]\noutline_access = \"{}\"\n\
             [upstreams.both]\nurl = \"https://127.0.0.1:1\"\noutline_access = \"{}\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"nopin\"\n",
            no_pin.display(),
            no_pin.display()
        ),
        &[],
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        out.matches("error[upstreams.outline_access]").count(),
        3,
        "{out}"
    );
    assert!(out.contains("no certSha256"), "{out}");
    assert!(!out.contains("TopSecret9"), "{out}");
}

/// An upstream reached over plain HTTP off this host is a warning, and under
/// `--production` an error; on loopback it is neither.
#[test]
fn plain_http_off_the_host_fails_production() {
    let config = "[upstreams.remote]\nurl = \"http://10.0.0.5:9000\"\n\
         [upstreams.local]\nurl = \"http://127.0.0.1:9000\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"remote\"\n\
         [[routes]]\npath_prefix = \"/local\"\nupstream = \"local\"\n";
    let check = |production: bool| {
        let args: &[&str] = if production { &["--production"] } else { &[] };
        check_config(config, args, &[]).1
    };
    let plain = check(false);
    assert!(plain.contains("warning[upstreams.plaintext]"), "{plain}");
    assert_eq!(plain.matches("upstreams.plaintext").count(), 1, "{plain}");
    assert!(plain.contains("\"remote\""), "{plain}");
    let production = check(true);
    assert!(
        production.contains("error[upstreams.plaintext]"),
        "{production}"
    );
}
