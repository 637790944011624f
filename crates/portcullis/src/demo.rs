//! `portcullis demo`: a small inventory API with the gateway in front of it, both on
//! localhost, with a freshly minted token and the curl commands that show the controls.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::RngCore;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;

use crate::config::{Config, RateSpec};
use crate::pipeline::Shared;
use crate::server::{Server, ServerError};
use crate::settings::Settings;

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The sample API could not listen.
    #[error("cannot start the sample API: {0}")]
    SampleApi(std::io::Error),
    /// The gateway could not start (e.g. its port is taken: try `--listen 127.0.0.1:0`).
    #[error(transparent)]
    Gateway(#[from] ServerError),
    /// The demo's own configuration did not validate (a bug, if it happens).
    #[error("the demo configuration is invalid: {0}")]
    Config(String),
}

/// Runs the sample API and the gateway until `shutdown` resolves.
pub async fn run(listen: SocketAddr, shutdown: impl Future<Output = ()>) -> Result<(), DemoError> {
    let api = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::SampleApi)?;
    let api_addr = api.local_addr().map_err(DemoError::SampleApi)?;
    tokio::spawn(async move { axum::serve(api, sample_api()).await });

    let token = mint_token();
    let mut config = Config {
        listen,
        api_tokens: vec![SecretString::from(token.clone())],
        ..Config::default()
    };
    config.rate_limit.default = RateSpec::new(DEMO_RATE_PER_MINUTE, Duration::from_secs(60));
    // The demo keeps nothing on disk: no audit log, so no request waits on one.
    config.audit.enabled = false;
    config.set_default_upstream(&format!("http://{api_addr}"));
    let settings = Settings::validate(&config).map_err(|invalid| {
        DemoError::Config(
            invalid
                .iter()
                .map(|i| i.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    let server = Server::bind(&config, &settings, &Shared::new(&config, &settings))?;
    print_instructions(server.local_addr(), &token);
    server.run(shutdown).await;
    Ok(())
}

/// The demo's rate limit per token, low enough to see it refuse.
const DEMO_RATE_PER_MINUTE: u32 = 20;

/// 32 random bytes as 64 hex digits.
fn mint_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn print_instructions(addr: SocketAddr, token: &str) {
    let base = format!("http://{addr}");
    println!(
        "\
portcullis demo: the gateway is on {base}, in front of a sample inventory API.

This demo token is shown once; it lives only as long as this process:
  export TOKEN={token}

An allowed call:
  curl -s -H \"Authorization: Bearer $TOKEN\" {base}/v1/positions

A refused call (no token: 401 problem+json):
  curl -s -i {base}/v1/positions

A refused path (dot segments never reach the API: 400):
  curl -s -i --path-as-is {base}/v1/../admin

The headers the gateway adds (and the Server / X-Powered-By it removes):
  curl -s -D - -o /dev/null -H \"Authorization: Bearer $TOKEN\" {base}/v1/positions/SKU-1001

A rate limit of {DEMO_RATE_PER_MINUTE}/min per token: the 21st call in a burst gets 429 with Retry-After:
  for i in $(seq 21); do curl -s -o /dev/null -w '%{{http_code}} ' -H \"Authorization: Bearer $TOKEN\" {base}/v1/positions; done; echo

Liveness, with no token:
  curl -s {base}/health

Press Ctrl-C to stop."
    );
}

/// One inventory position of the sample API.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Position {
    sku: String,
    site: String,
    on_hand: u32,
    unit: String,
}

fn positions() -> Vec<Position> {
    [
        ("SKU-1001", "LYON-DC", 1200),
        ("SKU-1002", "LYON-DC", 75),
        ("SKU-2001", "GENOA-PLANT", 0),
    ]
    .into_iter()
    .map(|(sku, site, on_hand)| Position {
        sku: sku.into(),
        site: site.into(),
        on_hand,
        unit: "EA".into(),
    })
    .collect()
}

/// The sample API: it fingerprints itself, as many real APIs do, so the demo can show
/// the gateway removing it.
fn sample_api() -> Router {
    Router::new()
        .route("/v1/positions", get(list_positions).post(create_position))
        .route("/v1/positions/{sku}", get(show_position))
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                let headers = response.headers_mut();
                headers.insert(
                    header::SERVER,
                    HeaderValue::from_static("sample-inventory/0.1"),
                );
                headers.insert("x-powered-by", HeaderValue::from_static("demo"));
                response
            },
        ))
}

async fn list_positions() -> Json<Vec<Position>> {
    Json(positions())
}

async fn show_position(Path(sku): Path<String>) -> Response {
    match positions().into_iter().find(|p| p.sku == sku) {
        Some(position) => Json(position).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such sku" })),
        )
            .into_response(),
    }
}

async fn create_position(Json(position): Json<Position>) -> (StatusCode, Json<Position>) {
    (StatusCode::CREATED, Json(position))
}
