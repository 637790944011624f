//! Audit strict mode, through the real binary on real SQLite and PostgreSQL: a request it
//! covers reaches the upstream only once its admission event is committed, is refused 503
//! when that cannot be, and a gateway killed under load leaves no forwarded request
//! without its admission event.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::audit::{events, request, sqlite_url, unspoolable_dir, verify, verify_dir};
use crate::common::*;
use crate::managed::PostgresDatabase;

/// The request ids of every admission event in the store at `url`, read on a thread and
/// runtime of its own, so that a test upstream can ask while it handles a request.
fn admitted(url: &str) -> HashSet<String> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            sqlx::any::install_default_drivers();
            let mut connection = sqlx::AnyConnection::connect(&url).await.unwrap();
            sqlx::query_scalar::<_, String>(
                "SELECT request_id FROM audit_events WHERE kind = 'admission'",
            )
            .fetch_all(&mut connection)
            .await
            .unwrap()
            .into_iter()
            .collect()
        })
    })
    .join()
    .unwrap()
}

/// A config routing `/api` (strict for the default methods) and `/bulk` (strict for none)
/// to `upstream`.
fn strict_config(dir: &Path, upstream: &str) -> String {
    write_file(
        dir,
        "strict.toml",
        &format!(
            "[upstreams.api]\nurl = \"{upstream}\"\n\
             [[routes]]\npath_prefix = \"/api\"\nupstream = \"api\"\n\
             [[routes]]\npath_prefix = \"/bulk\"\nupstream = \"api\"\naudit_strict_methods = []\n"
        ),
    )
    .to_str()
    .unwrap()
    .to_owned()
}

/// The upstream, on each request, looks in the store for the request's admission event:
/// with the default `strict_methods`, a POST, PUT or DELETE arrives already recorded.
#[tokio::test]
async fn mutating_requests_reach_the_upstream_only_once_their_admission_is_committed() {
    let dir = scratch_dir();
    let url = sqlite_url(&dir);
    let found = Arc::new(Mutex::new(Vec::new()));
    let upstream = {
        let (url, found) = (url.clone(), found.clone());
        Upstream::start_with(move |seen| {
            let id = seen.header("x-request-id").unwrap().to_owned();
            let recorded = admitted(&url).contains(&id);
            found
                .lock()
                .unwrap()
                .push((seen.method.to_string(), seen.uri.clone(), recorded));
            None
        })
        .await
    };
    let mut gateway = Launch::new(&upstream.url())
        .arg("--config")
        .arg(strict_config(&dir, &upstream.url()))
        .arg("--data-dir")
        .arg(dir.to_str().unwrap())
        .start();
    let mut ids = Vec::new();
    for (method, path) in [
        ("POST", "/api/items"),
        ("PUT", "/api/items/1"),
        ("DELETE", "/api/items/1"),
        ("GET", "/api/items"),
        ("POST", "/bulk/load"),
    ] {
        let reply = request(method, &gateway.url(path), TOKEN, "{}").await;
        assert_eq!(reply.status, 200, "{method} {path}: {}", reply.text());
        ids.push(reply.header("x-request-id").unwrap().to_owned());
    }
    assert_eq!(
        *found.lock().unwrap(),
        [
            ("POST".to_owned(), "/api/items".to_owned(), true),
            ("PUT".to_owned(), "/api/items/1".to_owned(), true),
            ("DELETE".to_owned(), "/api/items/1".to_owned(), true),
            ("GET".to_owned(), "/api/items".to_owned(), false),
            ("POST".to_owned(), "/bulk/load".to_owned(), false),
        ]
    );
    gateway.final_log();

    // The admission (no status yet) comes first; the request event with the same id
    // completes it with the status.
    let events = events(&url).await;
    let of = |id: &str| -> Vec<(String, Option<i64>)> {
        events
            .iter()
            .filter(|(.., payload)| payload["request_id"] == id)
            .map(|(kind, .., payload)| (kind.clone(), payload["status"].as_i64()))
            .collect()
    };
    let post = of(&ids[0]);
    assert_eq!(
        post,
        [
            ("admission".to_owned(), None),
            ("request".to_owned(), Some(200))
        ]
    );
    let admission = &events
        .iter()
        .find(|(kind, ..)| kind == "admission")
        .unwrap()
        .3;
    assert_eq!(admission["method"], "POST");
    assert_eq!(admission["route"], "/api");
    assert_eq!(admission["decision"], "allowed");
    assert_eq!(admission["principal"], "static");
    assert_eq!(of(&ids[3]), [("request".to_owned(), Some(200))]);
    assert_eq!(of(&ids[4]), [("request".to_owned(), Some(200))]);
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
}

/// A store that refuses the admission event, and a spool that cannot take it either: the
/// request is refused 503 before it reaches the upstream, while requests strict mode does
/// not cover go on.
#[tokio::test]
async fn a_request_whose_admission_can_be_neither_stored_nor_spooled_is_refused_503() {
    let database = PostgresDatabase::create().await;
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_DATA_DIR", unspoolable_dir().to_str().unwrap())
        .env("PORTCULLIS_DATABASE_URL", database.url.clone())
        .env("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef")
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
        .start();
    assert_eq!(
        request("POST", &gateway.url("/ok"), TOKEN, "{}")
            .await
            .status,
        200
    );
    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    sqlx::query("DROP TABLE audit_events")
        .execute(&mut connection)
        .await
        .unwrap();

    let refused = request("POST", &gateway.url("/orders"), TOKEN, "{}").await;
    let problem = refused.assert_problem(503, "audit-unavailable");
    assert_eq!(
        problem["detail"],
        "the audit log cannot record the request, so it was not forwarded"
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(
        request("GET", &gateway.url("/orders"), TOKEN, "")
            .await
            .status,
        200
    );
    let forwarded: Vec<String> = upstream
        .seen()
        .iter()
        .map(|s| s.method.to_string())
        .collect();
    assert_eq!(forwarded, ["POST", "GET"]);
    drop(gateway);
    database.drop_now().await;
}

/// Clients posting as fast as they can until the gateway is killed (SIGKILL, nothing
/// flushed on the way out): every request the upstream received has its admission event.
async fn killed_under_load(launch: Launch, url: &str, store_args: &[&str], env: &[(&str, &str)]) {
    let upstream = Upstream::start().await;
    let mut gateway = launch.arg("--upstream").arg(upstream.url()).start();
    let deadline = Instant::now() + Duration::from_millis(600);
    let mut clients = Vec::new();
    for client in 0..4 {
        let target = gateway.url(&format!("/orders/{client}"));
        clients.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    request("POST", &target, TOKEN, "{\"n\":1}"),
                )
                .await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(gateway.pid(), "KILL");
    gateway.wait(Duration::from_secs(10));
    for client in clients {
        // Requests to a dead gateway fail; the clients only have to stop.
        let _ = client.await;
    }

    let received: Vec<String> = upstream
        .seen()
        .iter()
        .map(|seen| seen.header("x-request-id").unwrap().to_owned())
        .collect();
    assert!(
        received.len() > 10,
        "only {} requests got through",
        received.len()
    );
    let admitted = admitted(url);
    let missing: Vec<&String> = received
        .iter()
        .filter(|id| !admitted.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "forwarded without an admission event: {missing:?}"
    );
    // The chain holds up to its last committed event, without a final checkpoint.
    let (ok, out) = verify(store_args, &[], env);
    assert!(ok, "{out}");
}

#[tokio::test]
async fn a_gateway_killed_under_load_forwarded_nothing_unrecorded_on_sqlite() {
    let dir = scratch_dir();
    let launch = Launch::bare()
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .arg("--data-dir")
        .arg(dir.to_str().unwrap());
    let dir_arg = dir.to_str().unwrap();
    killed_under_load(launch, &sqlite_url(&dir), &["--data-dir", dir_arg], &[]).await;
}

#[tokio::test]
async fn a_gateway_killed_under_load_forwarded_nothing_unrecorded_on_postgres() {
    let database = PostgresDatabase::create().await;
    let launch = Launch::bare()
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_DATABASE_URL", database.url.clone())
        .env("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef")
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY);
    let env = [
        ("PORTCULLIS_DATABASE_URL", database.url.as_str()),
        ("PORTCULLIS_AUDIT_KEY", AUDIT_KEY),
    ];
    killed_under_load(launch, &database.url, &[], &env).await;
    database.drop_now().await;
}
