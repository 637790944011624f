//! Credentials the gateway adds to requests to an upstream: a header filled from a pool of
//! keys, used in turn and benched when refused, and a secret path prefix, none of which a
//! client, a log line or a record ever shows.

use http::Response;

use crate::common::*;

/// A gateway whose only upstream is `upstream_url` with the credential `credential` (the
/// inside of its inline table), `env` set, and its access log in a file.
fn with_credential(
    upstream_url: &str,
    credential: &str,
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Gateway) {
    let launch = Launch::bare().env("PORTCULLIS_LOG", "debug").envs(env);
    start_configured(
        &format!(
            "[upstreams.api]\nurl = \"{upstream_url}\"\ncredential = {{ {credential} }}\n\
             [[routes]]\npath_prefix = \"/api\"\nupstream = \"api\"\nstrip_prefix = true\n"
        ),
        launch,
    )
}

/// A gateway whose upstream's credential is an `X-Api-Key` header taken in turn from
/// `keys` (comma-separated, as `TEST_UPSTREAM_KEYS` holds them).
fn with_keys(upstream_url: &str, keys: &str) -> (tempfile::TempDir, Gateway) {
    with_credential(
        upstream_url,
        "header = \"X-Api-Key\", format = \"{key}\", keys_env = \"TEST_UPSTREAM_KEYS\"",
        &[("TEST_UPSTREAM_KEYS", keys)],
    )
}

/// Everything the gateway wrote about its requests: its log and its access log, once it
/// has stopped.
fn everything_written(dir: &tempfile::TempDir, gateway: &mut Gateway) -> String {
    let log = gateway.final_log();
    let access = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    format!("{log}\n{access}")
}

/// An upstream that answers by the key it was sent in `X-Api-Key`: `refused*` get 401,
/// `limited*` get 429 with `Retry-After: 120`, the rest 200.
async fn judging_upstream() -> Upstream {
    Upstream::start_with(|seen| {
        let key = seen.header("x-api-key").unwrap_or_default();
        let status = if key.starts_with("refused") {
            401
        } else if key.starts_with("forbidden") {
            403
        } else if key.starts_with("limited") {
            429
        } else {
            return None;
        };
        Some(
            Response::builder()
                .status(status)
                .header("retry-after", "120")
                .body(full("no"))
                .unwrap(),
        )
    })
    .await
}

fn keys_seen(upstream: &Upstream) -> Vec<String> {
    upstream
        .seen()
        .iter()
        .map(|seen| seen.header("x-api-key").unwrap_or("<none>").to_owned())
        .collect()
}

/// The client's own credentials never reach the upstream; the gateway's keys do, one
/// after another.
#[tokio::test]
async fn keys_replace_the_clients_credentials_and_are_used_in_turn() {
    let upstream = Upstream::start().await;
    let (dir, mut gateway) = with_keys(&upstream.url(), "key-one-secret, key-two-secret");
    for _ in 0..4 {
        let reply = get(
            &gateway.url("/api/x"),
            &[
                ("authorization", &format!("Bearer {TOKEN}")),
                ("x-api-key", "the-clients-own-key"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(
        keys_seen(&upstream),
        [
            "key-one-secret",
            "key-two-secret",
            "key-one-secret",
            "key-two-secret"
        ]
    );
    assert!(
        upstream
            .seen()
            .iter()
            .all(|s| s.header("authorization").is_none())
    );
    let written = everything_written(&dir, &mut gateway);
    assert!(!written.contains("key-one-secret"), "{written}");
    assert!(!written.contains("key-two-secret"), "{written}");
}

/// A key the upstream refuses (401) or rate-limits (429) is benched, and an idempotent
/// request without a body is sent once more with the next healthy key; a POST is not.
#[tokio::test]
async fn refused_keys_are_benched_and_idempotent_requests_retried() {
    let upstream = judging_upstream().await;
    let (_dir, gateway) = with_keys(&upstream.url(), "refused-1,good-1,limited-1,good-2");
    // A POST meets refused-1 (401): the key is benched, and the POST is not sent again.
    let post = || {
        http::Request::post(gateway.url("/api/c"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
            .unwrap()
    };
    assert_eq!(send(post()).await.status, 401);
    assert_eq!(keys_seen(&upstream), ["refused-1"]);
    // good-1 answers the next GET.
    assert_eq!(get_authorized(&gateway.url("/api/a")).await.status, 200);
    // The next turn is limited-1 (429, benched for 120 s); the GET goes again with good-2.
    assert_eq!(get_authorized(&gateway.url("/api/b")).await.status, 200);
    // Only the good keys are left, in turn.
    for _ in 0..4 {
        assert_eq!(send(post()).await.status, 200);
    }
    let seen = keys_seen(&upstream);
    assert_eq!(
        seen[..4],
        ["refused-1", "good-1", "limited-1", "good-2"],
        "{seen:?}"
    );
    assert!(
        seen[4..].iter().all(|key| key.starts_with("good-")),
        "{seen:?}"
    );
    assert_eq!(seen.len(), 8);
}

/// A 403 benches no key: it may be about the request rather than the key (RFC 9110
/// §15.5.4), and a client whose requests the upstream forbids must not take the keys out of
/// turn for everyone. A resent request's second key is benched on a 401 like its first.
#[tokio::test]
async fn a_403_benches_no_key_and_a_401_benches_all_but_the_last() {
    let upstream = judging_upstream().await;
    let (_dir, gateway) = with_keys(&upstream.url(), "refused-1,forbidden-1,good-1");
    // refused-1 (401) is benched; the GET goes again with forbidden-1, whose 403 the
    // client gets, and which stays in turn, as it does after its next 403.
    assert_eq!(get_authorized(&gateway.url("/api/a")).await.status, 403);
    assert_eq!(get_authorized(&gateway.url("/api/b")).await.status, 200);
    assert_eq!(get_authorized(&gateway.url("/api/c")).await.status, 403);
    assert_eq!(
        keys_seen(&upstream),
        ["refused-1", "forbidden-1", "good-1", "forbidden-1"]
    );
    let state = get_authorized(&gateway.admin_url("/v1/upstreams")).await;
    assert_eq!(
        state.json()["upstreams"][0]["keys"],
        serde_json::json!({"healthy": 2, "refused": 1, "rate_limited": 0})
    );

    let upstream = judging_upstream().await;
    let (_dir, gateway) = with_keys(&upstream.url(), "refused-1,refused-2,good-1");
    // Both refused keys are benched by one request (401, then 401 again), so good-1
    // answers every request after it.
    assert_eq!(get_authorized(&gateway.url("/api/a")).await.status, 401);
    for path in ["/api/b", "/api/c", "/api/d"] {
        assert_eq!(get_authorized(&gateway.url(path)).await.status, 200);
    }
    assert_eq!(
        keys_seen(&upstream),
        ["refused-1", "refused-2", "good-1", "good-1", "good-1"]
    );

    // The last key in use is never benched by a refusal: the upstream keeps being asked,
    // and its own 401 reaches the client.
    let upstream = judging_upstream().await;
    let (_dir, gateway) = with_keys(&upstream.url(), "refused-1");
    for path in ["/api/a", "/api/b"] {
        assert_eq!(get_authorized(&gateway.url(path)).await.status, 401);
    }
    assert_eq!(keys_seen(&upstream), ["refused-1", "refused-1"]);
}

/// When every key is benched, the gateway stops calling the upstream: 503
/// `upstream-unavailable` with `Retry-After` (the time until the first rate-limited key
/// returns), decision `upstream_keys_exhausted`.
#[tokio::test]
async fn with_every_key_benched_requests_are_refused_until_one_returns() {
    let upstream = judging_upstream().await;
    let (dir, mut gateway) = with_keys(&upstream.url(), "refused-1,limited-1");
    // Both keys are tried, and the upstream's last answer is relayed.
    let reply = get_authorized(&gateway.url("/api/a")).await;
    assert_eq!(reply.status, 429);
    let reply = get_authorized(&gateway.url("/api/b")).await;
    reply.assert_problem(503, "upstream-unavailable");
    let wait: u64 = reply.header("retry-after").unwrap().parse().unwrap();
    assert!((110..=120).contains(&wait), "{wait}");
    assert_eq!(upstream.seen().len(), 2);
    // The pool's state for operators: counts, never a key.
    let state = get_authorized(&gateway.admin_url("/v1/upstreams")).await;
    let text = state.text();
    assert!(
        !text.contains("refused-1") && !text.contains("limited-1"),
        "{text}"
    );
    assert_eq!(
        state.json()["upstreams"][0]["keys"],
        serde_json::json!({"healthy": 0, "refused": 1, "rate_limited": 1})
    );
    let decisions = decisions_of(&dir, &mut gateway);
    assert_eq!(decisions, ["allowed", "upstream_keys_exhausted"]);
}

/// A secret path prefix (an Outline management URL's secret segment) is put before every
/// path upstream, mapped back out of `Location`, `Refresh`, `Link` and `Set-Cookie`, and
/// shown nowhere.
#[tokio::test]
async fn a_secret_path_prefix_is_added_and_never_shown() {
    let upstream = Upstream::start_with(|seen| {
        let own = format!("http://{}", seen.headers["host"].to_str().unwrap());
        (seen.uri == "/SeCrEtPrefix77/access-keys").then(|| {
            Response::builder()
                .status(201)
                .header("location", "/SeCrEtPrefix77/access-keys/7")
                .header("refresh", format!("0; url={own}/SeCrEtPrefix77/r"))
                .header(
                    "link",
                    format!("<{own}/SeCrEtPrefix77/access-keys?page=2>; rel=\"next\""),
                )
                .header("set-cookie", "s=1; Path=/SeCrEtPrefix77; HttpOnly")
                .body(full("{}"))
                .unwrap()
        })
    })
    .await;
    let (dir, mut gateway) = with_credential(
        &upstream.url(),
        "path_prefix_env = \"TEST_OUTLINE_PREFIX\"",
        &[("TEST_OUTLINE_PREFIX", "SeCrEtPrefix77")],
    );
    let reply = get_authorized(&gateway.url("/api/server")).await;
    assert_eq!(reply.status, 200);
    let reply = get_authorized(&gateway.url("/api/access-keys")).await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("location"), Some("/api/access-keys/7"));
    assert_eq!(reply.header("refresh"), Some("0; url=/api/r"));
    assert_eq!(
        reply.header("link"),
        Some("</api/access-keys?page=2>; rel=\"next\"")
    );
    assert_eq!(reply.header("set-cookie"), Some("s=1; Path=/api; HttpOnly"));
    let uris: Vec<String> = upstream.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(
        uris,
        ["/SeCrEtPrefix77/server", "/SeCrEtPrefix77/access-keys"]
    );
    let written = everything_written(&dir, &mut gateway);
    assert!(!written.contains("SeCrEtPrefix77"), "{written}");
}

/// A credential whose variable is unset or empty is refused by `check` (and so by
/// `serve`), naming the variable and never a value.
#[test]
fn a_credential_without_its_variable_is_refused() {
    let (code, out) = check_config(
        "[upstreams.api]\nurl = \"https://127.0.0.1:1\"\ncredential = { keys_env = \"TEST_UNSET_KEYS\" }\n\
         [upstreams.bad]\nurl = \"https://127.0.0.1:1\"\ncredential = { format = \"{key}\", keys_env = \"TEST_BAD_KEYS\" }\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
        &[],
        &[("TEST_BAD_KEYS", "visible-part\nhidden-part")],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("error[upstreams.credential]"), "{out}");
    assert!(
        out.contains("TEST_UNSET_KEYS (or TEST_UNSET_KEYS_FILE) is unset"),
        "{out}"
    );
    assert!(out.contains("does not make a valid header value"), "{out}");
    assert!(!out.contains("visible-part"), "{out}");
}
