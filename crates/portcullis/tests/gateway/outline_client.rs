//! A real Outline client, unchanged, through the gateway: the `outline-vpn-api` Python
//! library (the one whose policy the gateway implements) manages keys on an Outline
//! server's management API, reached through a capability route. The library pins the
//! gateway's certificate and knows only its capability URL; the gateway pins the Outline
//! server's self-signed certificate (`outline_access`) and adds the server's secret path,
//! which the client never sees.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::common::*;
use crate::upstream_tls::{Identity, self_signed};

/// The variable naming a Python that has `outline-vpn-api` installed; `.ci/run` sets it.
const PYTHON_VAR: &str = "PORTCULLIS_PYTHON";

/// The Outline server's own secret path: only the gateway knows it.
const SERVER_SECRET: &str = "/OutlineServerSecret-4f1c";

/// What the fake Outline server was asked: method and path.
type Asked = Arc<Mutex<Vec<(Method, String)>>>;

/// An Outline server's management API, as far as the library uses it, over HTTPS with
/// `identity`, below [`SERVER_SECRET`]; every other path is a 404.
async fn outline_server(identity: &Identity) -> (u16, Asked) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(identity.server_config(&[])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked: Asked = Arc::default();
    let record = asked.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let record = record.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request: Request<Incoming>| {
                    let record = record.clone();
                    async move {
                        let method = request.method().clone();
                        let path = request.uri().path().to_owned();
                        record.lock().unwrap().push((method.clone(), path.clone()));
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        Ok::<_, std::convert::Infallible>(answer(&method, &path, &body))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, asked)
}

/// The fake server's answer to `method path` with `body`.
fn answer(method: &Method, path: &str, body: &Bytes) -> Response<Full<Bytes>> {
    let key = |id: &str, name: &str| {
        serde_json::json!({
            "id": id, "name": name, "password": "key-password", "port": 24_601,
            "method": "chacha20-ietf-poly1305",
            "accessUrl": format!("ss://Y2hhY2hhMjA@203.0.113.5:24601/?outline=1#{id}"),
        })
    };
    let (status, json) = match (method.as_str(), path.strip_prefix(SERVER_SECRET)) {
        ("GET", Some("/access-keys/")) => (
            StatusCode::OK,
            Some(serde_json::json!({ "accessKeys": [key("0", "alice")] })),
        ),
        ("GET", Some("/metrics/transfer")) => (
            StatusCode::OK,
            Some(serde_json::json!({ "bytesTransferredByUserId": { "0": 4096 } })),
        ),
        ("POST", Some("/access-keys")) => {
            let asked: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
            let name = asked["name"].as_str().unwrap_or("").to_owned();
            (StatusCode::CREATED, Some(key("1", &name)))
        }
        ("PUT", Some("/access-keys/1/name")) | ("DELETE", Some("/access-keys/1")) => {
            (StatusCode::NO_CONTENT, None)
        }
        _ => (StatusCode::NOT_FOUND, None),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(
            json.map_or_else(Bytes::new, |j| j.to_string().into()),
        ))
        .unwrap()
}

/// What the library does, as a user's script would: list the keys, make one, rename it,
/// delete it; one line of JSON out.
const SCRIPT: &str = r#"
import json, sys
from outline_vpn.outline_vpn import OutlineVPN
client = OutlineVPN(api_url=sys.argv[1], cert_sha256=sys.argv[2])
keys = client.get_keys(timeout=10)
made = client.create_key(name="bob", timeout=10)
print(json.dumps({
    "keys": [[k.key_id, k.name, k.used_bytes] for k in keys],
    "made": [made.key_id, made.name],
    "renamed": client.rename_key(made.key_id, "robert", timeout=10),
    "deleted": client.delete_key(made.key_id, timeout=10),
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outline_python_library_manages_keys_through_a_capability_route() {
    let Some(python) = std::env::var_os(PYTHON_VAR) else {
        // Never a silent pass: this is the check that real Outline clients work unchanged.
        panic!(
            "{PYTHON_VAR} is not set; it names a Python with outline-vpn-api installed. \
             .ci/run installs it; by hand: /var/tmp/portcullis-ci-venv/bin/pip install \
             outline-vpn-api==6.6.3, then export {PYTHON_VAR}=/var/tmp/portcullis-ci-venv/bin/python"
        );
    };
    let server_identity = self_signed(&["203.0.113.5"]);
    let (port, asked) = outline_server(&server_identity).await;
    let dir = scratch_dir();
    let access = write_file(
        &dir,
        "access.txt",
        &format!(
            "certSha256:{}\napiUrl:https://127.0.0.1:{port}{SERVER_SECRET}\n",
            server_identity.cert_pin()
        ),
    );
    let gateway_identity = self_signed(&["127.0.0.1"]);
    let cert = write_file(&dir, "gateway.pem", &gateway_identity.cert_pem);
    let key = write_file(&dir, "gateway.key", &gateway_identity.key_pem);
    let capability = mint(&dir, "ops-outline", &["--capability"]);
    let config = write_file(
        &dir,
        "outline.toml",
        &format!(
            "[upstreams.outline]\noutline_access = \"{}\"\n\
             [[routes]]\npath_prefix = \"/outline\"\nupstream = \"outline\"\n\
             auth = \"capability\"\nstrip_prefix = true\n",
            access.display()
        ),
    );
    let mut gateway = Launch::bare()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--tls-cert")
        .arg(cert.to_str().unwrap())
        .arg("--tls-key")
        .arg(key.to_str().unwrap())
        .env("PORTCULLIS_DATA_DIR", dir.to_str().unwrap())
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .start();
    let api_url = format!(
        "https://127.0.0.1:{}/outline/{capability}",
        gateway.addr.port()
    );
    // The library pins the gateway's certificate, in the form Outline prints.
    let pin = gateway_identity.cert_pin();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", SCRIPT, &api_url, &pin])
            // requests lets these override the library's own `verify = False` (it checks
            // the pin instead), so a self-signed server, Outline's or this gateway's,
            // fails where they are set, as on this machine.
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .output()
            .unwrap()
    });
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let result: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(result["keys"], serde_json::json!([["0", "alice", 4096]]));
    assert_eq!(result["made"], serde_json::json!(["1", "bob"]));
    assert_eq!(result["renamed"], true);
    assert_eq!(result["deleted"], true);

    // The server got the library's calls below its own secret, which the client never
    // had; the client's capability never reached it.
    let asked = asked.lock().unwrap().clone();
    let expected = [
        (Method::GET, "/access-keys/"),
        (Method::GET, "/metrics/transfer"),
        (Method::POST, "/access-keys"),
        (Method::PUT, "/access-keys/1/name"),
        (Method::DELETE, "/access-keys/1"),
    ]
    .map(|(method, path)| (method, format!("{SERVER_SECRET}{path}")));
    assert_eq!(asked, expected);
    let log = gateway.final_log();
    for secret in [SERVER_SECRET.trim_start_matches('/'), capability.as_str()] {
        assert!(!log.contains(secret), "a secret in the log");
    }
}
