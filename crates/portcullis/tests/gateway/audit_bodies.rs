//! Bodies in the audit log, through the real binary on real SQLite: kept only on routes
//! that ask (`audit_bodies`), at most `[audit] max_body_bytes`, JSON redacted by key at
//! every depth, nothing secret stored.

use http::Response;

use crate::audit::{events, request, sqlite_text, sqlite_url};
use crate::common::*;

/// A password, a token-looking value and an Outline access key, in a JSON body; a secret
/// in a JSON document sent as a string, one in a GraphQL call's arguments and one given to
/// a command line's option.
const BODY: &str = r#"{"name":"report","password":"hunter2-very-secret","nested":{"items":[{"api_key":"k-123456"}]},"access":"ss://Y2hhY2hhMjA@203.0.113.5:443/?outline=1","note":"Bearer abcdefabcdef","payload":"{\"client_secret\":\"inner-secret-42\"}","query":"mutation { login(password: \"graphql-secret-77\") { ok } }","command":"deploy --api-key cli-secret-88 --verbose"}"#;

/// A gateway with `config` and the audit log in a scratch data directory of its own.
fn with_store(config: &str) -> (std::path::PathBuf, Gateway) {
    let dir = scratch_dir();
    let config = write_file(&dir, "audit.toml", config);
    let gateway = Launch::bare()
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .start();
    (dir, gateway)
}

/// The payloads of the `request` events among `events`.
fn requests_of(
    events: &[(String, String, Option<String>, serde_json::Value)],
) -> Vec<&serde_json::Value> {
    events
        .iter()
        .filter(|(kind, ..)| kind == "request")
        .map(|(.., payload)| payload)
        .collect()
}

#[tokio::test]
async fn kept_bodies_are_redacted_and_capped_and_only_where_asked() {
    // The upstream echoes the body back, so the response carries the same secrets.
    let upstream = Upstream::start_with(|seen| {
        seen.uri.starts_with("/api/echo").then(|| {
            Response::builder()
                .header("content-type", "application/json")
                .body(full(seen.body.clone()))
                .unwrap()
        })
    })
    .await;
    let (dir, mut gateway) = with_store(&format!(
        "[audit]\nmax_body_bytes = 512\n[upstreams.api]\nurl = \"{}\"\n\
         [[routes]]\npath_prefix = \"/api\"\nupstream = \"api\"\naudit_bodies = true\n\
         [[routes]]\npath_prefix = \"/plain\"\nupstream = \"api\"\n",
        upstream.url()
    ));
    let echoed = request("POST", &gateway.url("/api/echo"), TOKEN, BODY).await;
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.text(), BODY, "the client gets the body untouched");
    let large = format!(r#"{{"data":"{}"}}"#, "x".repeat(2000));
    assert_eq!(
        request("POST", &gateway.url("/api/echo"), TOKEN, &large)
            .await
            .status,
        200
    );
    assert_eq!(
        request("POST", &gateway.url("/plain/x"), TOKEN, BODY)
            .await
            .status,
        200
    );
    let log = gateway.final_log();

    let events = events(&sqlite_url(&dir)).await;
    let completed = requests_of(&events);
    assert_eq!(completed.len(), 3);
    let kept: serde_json::Value =
        serde_json::from_str(completed[0]["request_body"].as_str().unwrap()).unwrap();
    assert_eq!(
        kept,
        serde_json::json!({"name":"report","password":"***","nested":{"items":[{"api_key":"***"}]},"access":"***","note":"***","payload":"{\"client_secret\":\"***\"}","query":"***","command":"***"})
    );
    assert_eq!(completed[0]["request_body"], completed[0]["response_body"]);
    assert_eq!(completed[0]["request_body_bytes"], BODY.len());
    // Over the cap, JSON cannot be read whole: withheld, its length kept.
    assert_eq!(completed[1]["request_body"], "***");
    assert_eq!(completed[1]["request_body_bytes"], large.len());
    // A route that does not ask keeps no body; nor does an admission event.
    assert!(
        completed[2].get("request_body").is_none(),
        "{}",
        completed[2]
    );
    let admission = &events
        .iter()
        .find(|(kind, ..)| kind == "admission")
        .unwrap()
        .3;
    assert!(admission.get("request_body").is_none(), "{admission}");

    let stored = sqlite_text(&dir) + &log;
    for secret in [
        "hunter2-very-secret",
        "k-123456",
        "Y2hhY2hhMjA",
        "abcdefabcdef",
        "inner-secret-42",
        "graphql-secret-77",
        "cli-secret-88",
        TOKEN,
    ] {
        assert!(!stored.contains(secret), "{secret} was stored or logged");
    }
}

/// What the gateway itself holds secret never reaches a kept body: an upstream's secret
/// base path, which an Outline server's error page quotes ("/SECRET/x does not exist").
/// A token put in a path on a route that does not take capabilities, and a user agent that
/// names one, are masked too.
#[tokio::test]
async fn the_gateways_secrets_and_tokens_in_paths_are_not_kept() {
    const SECRET_PATH: &str = "/OUTLINE-OWN-SECRET-PATH-0123";
    let upstream = Upstream::start_with(|seen| {
        Some(
            Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(full(
                    serde_json::json!({
                        "code": "NotFound",
                        "message": format!("{} does not exist", seen.uri),
                    })
                    .to_string(),
                ))
                .unwrap(),
        )
    })
    .await;
    let (dir, mut gateway) = with_store(&format!(
        "[upstreams.outline]\nurl = \"{}{SECRET_PATH}\"\n\
         [[routes]]\npath_prefix = \"/ob\"\nupstream = \"outline\"\nstrip_prefix = true\n\
         audit_bodies = true\n",
        upstream.url()
    ));
    let bearer = format!("Bearer {TOKEN}");
    let reply = get(&gateway.url("/ob/server"), &[("authorization", &bearer)]).await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.text().contains(SECRET_PATH),
        "the client gets the upstream's answer untouched"
    );
    let token_in_path = "pcl_path0123456789abcdefghijklmn";
    let reply = get(
        &gateway.url(&format!("/ob/reset/{token_in_path}/x")),
        &[
            ("authorization", &bearer),
            ("user-agent", "sync-tool/2.1 token=agent-secret-4242"),
        ],
    )
    .await;
    assert_eq!(reply.status, 404);
    let log = gateway.final_log();

    let events = events(&sqlite_url(&dir)).await;
    let requests = requests_of(&events);
    assert_eq!(requests.len(), 2);
    let body: serde_json::Value =
        serde_json::from_str(requests[0]["response_body"].as_str().unwrap()).unwrap();
    assert_eq!(body["message"], "/***/server does not exist");
    assert_eq!(requests[1]["user_agent"], "***");
    let stored = sqlite_text(&dir) + &log;
    assert!(stored.contains("/ob/reset/***/x"), "the path, masked");
    let secret_segment = SECRET_PATH.trim_start_matches('/');
    for secret in [secret_segment, token_in_path, "agent-secret-4242", TOKEN] {
        assert!(!stored.contains(secret), "{secret} was stored or logged");
    }
}
