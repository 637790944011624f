//! The audit store going away under load: PostgreSQL cut off (every connection dropped,
//! every new one refused) for a while, then back; the disk under SQLite and the spool
//! filling up, then given room. Nothing is lost: every request answered meanwhile has its
//! event, in order, in chains that verify.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::audit::{request, sqlite_url, verify, verify_dir};
use crate::common::*;
use crate::managed::{OwnPostgres, PostgresDatabase};

/// A TCP proxy to a database that can be cut: while down, open connections are dropped
/// and new ones closed at once, as when the server stops or the network partitions.
struct Cuttable {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

impl Cuttable {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let down = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let (accepting, cuts) = (down.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if accepting.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { addr, down, cut }
    }

    fn go_down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    fn come_back(&self) {
        self.down.store(false, Ordering::SeqCst);
    }
}

/// A database, a cuttable proxy in front of it, and the URL through the proxy.
async fn proxied_database() -> (PostgresDatabase, Cuttable, String) {
    let database = PostgresDatabase::create().await;
    let (scheme_user, rest) = database.url.split_once('@').unwrap();
    let (host_port, path) = rest.split_once('/').unwrap();
    let target = tokio::net::lookup_host(host_port)
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Cuttable::start(target).await;
    let proxied = format!("{scheme_user}@{}/{path}", proxy.addr);
    (database, proxy, proxied)
}

/// A gateway keeping its audit log in the PostgreSQL database at `url` (a database of its
/// own, `[audit] database_url_env`), its tokens and spool in `dir`.
fn gateway_on(upstream: &Upstream, url: &str, dir: &Path) -> Gateway {
    let config = write_file(
        dir,
        "audit-db.toml",
        "[audit]\ndatabase_url_env = \"AUDIT_DATABASE_URL\"\n",
    );
    Launch::new(&upstream.url())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("PORTCULLIS_DATA_DIR", dir.to_str().unwrap())
        .env("AUDIT_DATABASE_URL", url)
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
        .start()
}

/// How a request was answered: its method, status and path (`/c{client}/{n}`).
type Answer = (&'static str, u16, String);

/// Requests from four clients, one after another each, until `until`; every answer's
/// request id, method and status.
async fn load(gateway: &Gateway, until: Instant) -> HashMap<String, Answer> {
    let answered = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (base, answered) = (gateway.url(""), answered.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while Instant::now() < until {
                let method = if n % 5 == 0 { "POST" } else { "GET" };
                let path = format!("/c{client}/{n:06}");
                let url = format!("{base}{path}");
                let Ok(reply) = tokio::time::timeout(
                    Duration::from_secs(5),
                    request(method, &url, TOKEN, "{}"),
                )
                .await
                else {
                    continue;
                };
                let id = reply.header("x-request-id").unwrap().to_owned();
                answered
                    .lock()
                    .unwrap()
                    .insert(id, (method, reply.status.as_u16(), path));
                n += 1;
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    answered.lock().unwrap().clone()
}

/// Every answered request has its request event with the status its client saw, and
/// every POST its admission event before it. With `killed`, the request events of each
/// client's last requests may be missing (the batch being gathered when the process died),
/// but no earlier one, and no admission.
async fn every_answer_is_recorded(url: &str, answered: &HashMap<String, Answer>, killed: bool) {
    let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
    let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT kind, request_id, status FROM audit_events \
         WHERE kind IN ('request', 'admission') ORDER BY chain_id, seq",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let mut by_path: Vec<(&String, bool)> = Vec::new();
    for (id, (method, status, path)) in answered {
        let kinds: Vec<(&str, Option<i64>)> = rows
            .iter()
            .filter(|(_, request_id, _)| request_id == id)
            .map(|(kind, _, status)| (kind.as_str(), *status))
            .collect();
        let mut expected: Vec<(&str, Option<i64>)> = Vec::new();
        if *method == "POST" {
            expected.push(("admission", None));
        }
        let completed = ("request", Some(i64::from(*status)));
        let recorded = kinds.last() == Some(&completed);
        if recorded || !killed {
            expected.push(completed);
        }
        assert_eq!(kinds, expected, "{method} {path} {id}");
        by_path.push((path, recorded));
    }
    // Per client, in order: once one completion is missing, every later one is.
    by_path.sort();
    for pair in by_path.windows(2) {
        let ((first, first_recorded), (second, second_recorded)) = (pair[0], pair[1]);
        let same_client = first.split('/').nth(1) == second.split('/').nth(1);
        assert!(
            !(same_client && !first_recorded && second_recorded),
            "{first} lost its event but the later {second} did not"
        );
    }
}

fn verify_direct(url: &str, dir: &Path) -> (bool, String) {
    let env = [
        ("PORTCULLIS_DATABASE_URL", url),
        ("PORTCULLIS_AUDIT_KEY", AUDIT_KEY),
        ("PORTCULLIS_DATA_DIR", dir.to_str().unwrap()),
    ];
    verify(&[], &[], &env)
}

/// The store at `url` taken away by `go_down` half a second into 3.5 s of load and given
/// back by `come_back` two seconds later: events go to the spool meanwhile, `/ready` stays
/// 200 and says `degraded`, writes go on (their admission events spooled), and once the
/// store is back the spool is replayed in order: every event arrives, chains intact.
async fn loses_no_event_through_an_outage(
    url: &str,
    go_down: impl FnOnce(),
    come_back: impl FnOnce(),
) {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut gateway = gateway_on(&upstream, url, &dir);

    let traffic = load(&gateway, Instant::now() + Duration::from_millis(3500));
    let outage = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(go_down);
        // The writer gives a server up after a second without a connection.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let ready = get(&gateway.url("/ready"), &[]).await;
        assert_spooling(&dir);
        tokio::time::sleep(Duration::from_millis(500)).await;
        tokio::task::block_in_place(come_back);
        ready
    };
    let (answered, ready) = tokio::join!(traffic, outage);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["audit"], "degraded");
    assert!(answered.len() > 40, "only {} requests", answered.len());
    let refused: Vec<_> = answered
        .values()
        .filter(|(_, status, _)| *status != 200)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");

    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    let log = gateway.whole_log();
    assert!(
        log.contains("batches go to the spool"),
        "no outage seen:\n{log}"
    );
    assert!(
        log.contains("the spool is replayed into the store"),
        "{log}"
    );
    assert!(!log.contains("they are lost"), "{log}");
    assert_eq!(std::fs::metadata(dir.join("audit.spool")).unwrap().len(), 0);

    every_answer_is_recorded(url, &answered, false).await;
    let (ok, out) = verify_direct(url, &dir);
    assert!(ok, "{out}");
}

/// PostgreSQL cut off (every connection dropped, every new one refused, as when the
/// network partitions) for two seconds under load.
// Several threads: the proxy must run while the launcher blocks on the gateway's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_under_load_loses_no_event() {
    let (database, proxy, proxied) = proxied_database().await;
    loses_no_event_through_an_outage(&proxied, || proxy.go_down(), || proxy.come_back()).await;
    database.drop_now().await;
}

/// PostgreSQL itself stopped under load (a fast shutdown: every session told so and
/// closed, then no server at all) and started again two seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_under_load_then_started_loses_no_event() {
    let server = OwnPostgres::start();
    loses_no_event_through_an_outage(&server.url(), || server.stop(), || server.start_again())
        .await;
}

/// The spool is being written while the store is down.
fn assert_spooling(dir: &Path) {
    let spooled = std::fs::metadata(dir.join("audit.spool")).map_or(0, |meta| meta.len());
    assert!(spooled > 0, "nothing spooled during the outage");
}

/// A gateway whose audit database was cut off under load and that was then killed
/// (SIGKILL): its database, data directory (with the spool) and answers.
async fn killed_while_spooling(
    upstream: &Upstream,
) -> (
    PostgresDatabase,
    std::path::PathBuf,
    HashMap<String, Answer>,
) {
    let (database, proxy, proxied) = proxied_database().await;
    let dir = scratch_dir();
    let mut gateway = gateway_on(upstream, &proxied, &dir);
    // The chain's start reaches the store before it goes away.
    for _ in 0..100 {
        if !crate::audit::events(&database.url).await.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    proxy.go_down();
    let answered = load(&gateway, Instant::now() + Duration::from_millis(1500)).await;
    signal(gateway.pid(), "KILL");
    gateway.wait(Duration::from_secs(10));
    assert!(answered.len() > 20, "only {} requests", answered.len());
    (database, dir, answered)
}

/// Killed while the store is down: what was spooled survives, and the next start replays
/// it; `audit verify` meanwhile says what waits in the spool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_while_spooling_loses_nothing_spooled() {
    let upstream = Upstream::start().await;
    let (database, dir, answered) = killed_while_spooling(&upstream).await;
    let (ok, out) = verify_direct(&database.url, &dir);
    assert!(ok, "{out}");
    assert!(out.contains("not yet replayed into the store"), "{out}");

    let mut restarted = gateway_on(&upstream, &database.url, &dir);
    let log = restarted.final_log();
    assert!(
        log.contains("the spool is replayed into the store"),
        "{log}"
    );
    every_answer_is_recorded(&database.url, &answered, true).await;
    let (ok, out) = verify_direct(&database.url, &dir);
    assert!(ok, "{out}");
    assert!(!out.contains("not yet replayed"), "{out}");
    database.drop_now().await;
}

/// A spool record corrupted while the gateway was down is reported by `audit verify`,
/// reported and skipped at replay, and the gap it leaves in the chain shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_spool_record_is_reported_and_skipped_never_silently() {
    let upstream = Upstream::start().await;
    let (database, dir, _) = killed_while_spooling(&upstream).await;
    let spool = dir.join("audit.spool");
    let mut bytes = std::fs::read(&spool).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&spool, &bytes).unwrap();

    let (ok, out) = verify_direct(&database.url, &dir);
    assert!(!ok, "{out}");
    assert!(
        out.contains("the spool holds 1 corrupted record(s): their events are lost"),
        "{out}"
    );
    let mut restarted = gateway_on(&upstream, &database.url, &dir);
    let log = restarted.final_log();
    assert!(
        log.contains("a corrupted spool record was skipped"),
        "{log}"
    );
    let (ok, out) = verify_direct(&database.url, &dir);
    assert!(!ok, "{out}");
    assert!(out.contains("are missing (deleted)"), "{out}");
    assert!(out.contains(SKIPPED), "{out}");
    database.drop_now().await;
}

/// What `audit verify` says of a `spool_loss` event, which the replaying chain records.
const SKIPPED: &str = "records a corrupted spool record skipped at replay: its events are lost";

/// A corrupted last spool record leaves no gap (no event follows it), yet once the spool
/// is replayed and emptied the loss still shows: the chain that skipped it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_last_spool_record_still_shows_once_the_spool_is_emptied() {
    let upstream = Upstream::start().await;
    let (database, dir, _) = killed_while_spooling(&upstream).await;
    let spool = dir.join("audit.spool");
    let mut bytes = std::fs::read(&spool).unwrap();
    let near_the_end = bytes.len() - 10;
    bytes[near_the_end] ^= 0x55;
    std::fs::write(&spool, &bytes).unwrap();

    let mut restarted = gateway_on(&upstream, &database.url, &dir);
    let log = restarted.final_log();
    assert!(
        log.contains("a corrupted spool record was skipped"),
        "{log}"
    );
    assert_eq!(std::fs::metadata(&spool).unwrap().len(), 0, "{log}");
    let (ok, out) = verify_direct(&database.url, &dir);
    assert!(!ok, "{out}");
    assert!(!out.contains("are missing (deleted)"), "{out}");
    assert!(out.contains(SKIPPED), "{out}");
    database.drop_now().await;
}

/// No secret a request carries (static and managed tokens, a cookie, a password in JSON
/// and in the query, a capability path segment, an Outline `ss://` URL) reaches the audit
/// store, the spool or the logs, with bodies kept and the store down for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_the_store_the_spool_or_the_logs() {
    let (database, proxy, proxied) = proxied_database().await;
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let managed = mint(&dir, "secret-test", &[]);
    let capability = mint(&dir, "secret-outline", &["--capability"]);
    let config = write_file(
        &dir,
        "secrets.toml",
        &format!(
            "[audit]\ndatabase_url_env = \"AUDIT_DATABASE_URL\"\n\
             [upstreams.api]\nurl = \"{0}\"\n\
             [[routes]]\npath_prefix = \"/api\"\nupstream = \"api\"\naudit_bodies = true\n\
             [[routes]]\npath_prefix = \"/outline\"\nupstream = \"api\"\nauth = \"capability\"\naudit_bodies = true\n",
            upstream.url()
        ),
    );
    let mut gateway = Launch::bare()
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("--access-log")
        .arg(dir.join("access.log").to_str().unwrap())
        .env("PORTCULLIS_DATA_DIR", dir.to_str().unwrap())
        .env("AUDIT_DATABASE_URL", proxied.as_str())
        .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
        .start();
    proxy.go_down();

    const COOKIE: &str = "cookie-secret-5150";
    const JSON_PASSWORD: &str = "json-password-secret-77";
    const QUERY_PASSWORD: &str = "query-password-secret-88";
    const OUTLINE: &str = "ss://Y2hhY2hhMjAtc2VjcmV0@198.51.100.7:8388/?outline=1";
    let body = serde_json::json!({"user": "ann", "password": JSON_PASSWORD, "server": {"access_url": OUTLINE}})
        .to_string();
    let mut sent = 0;
    for (token, path) in [
        (
            TOKEN.to_owned(),
            format!("/api/a?password={QUERY_PASSWORD}&page=1"),
        ),
        (managed.clone(), "/api/b".to_owned()),
    ] {
        let reply = send(
            http::Request::post(gateway.url(&path))
                .header("authorization", format!("Bearer {token}"))
                .header("cookie", format!("session={COOKIE}"))
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
                .unwrap(),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        sent += 1;
    }
    let outline = get(
        &gateway.url(&format!("/outline/{capability}/access-keys?x=1")),
        &[],
    )
    .await;
    assert_eq!(outline.status, 200, "{}", outline.text());
    sent += 1;

    let secrets = [
        TOKEN,
        managed.as_str(),
        capability.as_str(),
        COOKIE,
        JSON_PASSWORD,
        QUERY_PASSWORD,
        "Y2hhY2hhMjAtc2VjcmV0",
    ];
    // The events wait in the spool meanwhile: checked once the last request's event (the
    // capability route's, masked) is there too, so that every secret above had its chance.
    let mut spooled = String::new();
    for _ in 0..100 {
        spooled =
            String::from_utf8_lossy(&std::fs::read(dir.join("audit.spool")).unwrap_or_default())
                .into_owned();
        if spooled.contains("/outline/***/access-keys") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        spooled.contains("/outline/***/access-keys"),
        "the events are spooled"
    );
    assert!(spooled.contains("/api/a"), "the events are spooled");
    for secret in secrets {
        assert!(!spooled.contains(secret), "{secret} reached the spool");
    }

    proxy.come_back();
    for _ in 0..100 {
        if gateway.log_shows("the spool is replayed into the store") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Replayed, with nothing written since: the store takes the writes again, and `/ready`
    // says so (once its answer of a second ago has expired).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ready = get(&gateway.url("/ready"), &[]).await;
    assert_eq!(ready.json()["audit"], "ok", "{}", ready.text());
    let log = gateway.final_log();
    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', kind, payload, request_id, principal, tenant, route, path, client_ip) \
         FROM audit_events",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let stored = stored.join("\n");
    // (`/ready`'s own event left out.)
    assert_eq!(
        stored
            .lines()
            .filter(|row| row.starts_with("request ") && !row.ends_with(" /ready 127.0.0.1"))
            .count(),
        sent,
        "{stored}"
    );
    assert!(
        stored.contains(r#"\"password\":\"***\""#),
        "bodies are kept, redacted: {stored}"
    );
    let access_log = std::fs::read_to_string(dir.join("access.log")).unwrap();
    for secret in secrets {
        assert!(!stored.contains(secret), "{secret} reached the store");
        assert!(!log.contains(secret), "{secret} reached the log");
        assert!(
            !access_log.contains(secret),
            "{secret} reached the access log"
        );
    }
    database.drop_now().await;
}

/// Writes zeros to `path` until the disk it is on has no room left (ENOSPC).
fn fill_up(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 16 * 1024];
    loop {
        match file.write_all(&chunk).and_then(|()| file.sync_data()) {
            Ok(()) => {}
            Err(error) if error.raw_os_error() == Some(28) => return,
            Err(error) => panic!("filling {}: {error}", path.display()),
        }
    }
}

/// `/ready` once its status is `status`, asked for up to 10 s.
async fn ready_when(gateway: &Gateway, status: u16) -> Reply {
    let mut reply = get(&gateway.url("/ready"), &[]).await;
    for _ in 0..100 {
        if reply.status == status {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        reply = get(&gateway.url("/ready"), &[]).await;
    }
    reply
}

/// A real full disk under the audit log on SQLite, with the spool on it too (a tmpfs of
/// 4 MiB, filled up): `/ready` fails, a strict-mode request is refused 503 before it
/// reaches the upstream, a batched one is answered and its event held in memory; once there
/// is room again, every held event is stored, `/ready` passes and the chain verifies.
#[tokio::test]
async fn a_full_disk_fails_ready_and_strict_requests_until_there_is_room_and_loses_nothing() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_DATA_DIR", dir.to_str().unwrap())
        .on_a_disk_of(4 << 20)
        .start();
    let data = gateway.seen_path(&dir);
    assert_eq!(get(&gateway.url("/ready"), &[]).await.status, 200);
    let filler = data.join("filler");
    fill_up(&filler);

    // Batched: answered; its event waits in memory for room.
    let held = request("GET", &gateway.url("/held"), TOKEN, "").await;
    assert_eq!(held.status, 200);
    let problem = ready_when(&gateway, 503)
        .await
        .assert_problem(503, "not-ready");
    assert_eq!(
        problem["detail"],
        "the audit log's store and spool refuse writes"
    );
    // Strict (POST): refused before the upstream, as its admission cannot be kept.
    let refused = request("POST", &gateway.url("/orders"), TOKEN, "{}").await;
    let problem = refused.assert_problem(503, "audit-unavailable");
    assert_eq!(
        problem["detail"],
        "the audit log cannot record the request, so it was not forwarded"
    );
    let forwarded: Vec<String> = upstream.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(forwarded, ["/held"]);
    assert!(gateway.log_shows("the spool cannot be written either"));

    std::fs::remove_file(&filler).unwrap();
    // The writer tries its batch again every 500 ms. (`/ready` may answer from a check up
    // to a second old, and each worker keeps its own: only the log says when it is in.)
    assert!(gateway.log_shows("the batch is written"));
    let ready = ready_when(&gateway, 200).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["audit"], "ok");
    let posted = request("POST", &gateway.url("/orders"), TOKEN, "{}").await;
    assert_eq!(posted.status, 200, "{}", posted.text());
    let forwarded: Vec<String> = upstream.seen().iter().map(|s| s.uri.clone()).collect();
    assert_eq!(forwarded, ["/held", "/orders"]);

    // Every request has its event, in the order they came: the held one, the refused
    // one (refused before its admission was queued: no admission event), and the one
    // posted since, admitted before it was forwarded. (`/ready`'s own are left out.)
    let run = |args: &[&str]| {
        let output = gateway.beside().args(args).output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let errors = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), text, errors)
    };
    let store = ["audit", "--data-dir", dir.to_str().unwrap()];
    let mut shown = Vec::new();
    for _ in 0..50 {
        let (ok, text, errors) = run(&[&store[..], &["export", "--format", "jsonl"]].concat());
        assert!(ok, "{errors}");
        shown = text
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .filter(|event| event["kind"] != "chain_start" && event["path"] != "/ready")
            .collect();
        if shown.len() == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let summary: Vec<String> = shown
        .iter()
        .map(|event| {
            let field = |name: &str| event[name].as_str().unwrap_or_default().to_owned();
            [field("kind"), field("decision"), field("path")].join(" ")
        })
        .collect();
    assert_eq!(
        summary,
        [
            "request allowed /held",
            "request audit_unavailable /orders",
            "admission allowed /orders",
            "request allowed /orders",
        ],
        "{shown:?}"
    );
    assert_eq!(shown[0]["request_id"].as_str(), held.header("x-request-id"));
    let (ok, text, errors) = run(&[&store[..], &["verify"]].concat());
    assert!(ok, "{text}{errors}");
}

/// A store that hangs rather than refuses (its table held locked by another session, as a
/// long migration or a stuck transaction would): a write gives up within 3 s, under strict
/// mode's 5 s, so held requests are admitted from the spool all along, never refused; once
/// the lock goes, every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_hangs_admits_strict_requests_from_the_spool() {
    let database = PostgresDatabase::create().await;
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut gateway = gateway_on(&upstream, &database.url, &dir);
    let mut locker = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let mut locked = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE audit_events IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locked)
        .await
        .unwrap();
    // Long enough for the first write to hang, and for replays to hang after it; three
    // clients at once, so that requests arrive while a write or a replay hangs.
    let until = Instant::now() + Duration::from_secs(14);
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..3 {
        let base = gateway.url("");
        clients.spawn(async move {
            let mut answered = Vec::new();
            let mut n = 0;
            while Instant::now() < until {
                let path = format!("/c{client}/{n:06}");
                let reply = request("POST", &format!("{base}{path}"), TOKEN, "{}").await;
                let id = reply.header("x-request-id").unwrap().to_owned();
                answered.push((id, ("POST", reply.status.as_u16(), path)));
                n += 1;
            }
            answered
        });
    }
    let answered: HashMap<String, Answer> =
        clients.join_all().await.into_iter().flatten().collect();
    let ready = get(&gateway.url("/ready"), &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(ready.json()["audit"], "degraded");
    assert_spooling(&dir);
    let refused: Vec<_> = answered
        .values()
        .filter(|(_, status, _)| *status != 200)
        .collect();
    assert!(refused.is_empty(), "{refused:?}");

    locked.rollback().await.unwrap();
    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    let log = gateway.whole_log();
    assert!(
        log.contains("the spool is replayed into the store"),
        "{log}"
    );
    every_answer_is_recorded(&database.url, &answered, false).await;
    let (ok, out) = verify_direct(&database.url, &dir);
    assert!(ok, "{out}");
}

/// On SQLite, a lock another process holds on `audit.db` (`BEGIN EXCLUSIVE`, as a backup
/// tool or a long query might take): the writer waits 3 s at most for it, under strict
/// mode's 5 s, so strict requests are admitted from the spool, not refused (it waited 5 s,
/// and they were refused 503); once the lock goes, every event arrives and the chain holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_store_admits_strict_requests_from_the_spool() {
    let upstream = Upstream::start().await;
    let dir = scratch_dir();
    let mut gateway = Launch::new(&upstream.url())
        .env("PORTCULLIS_DATA_DIR", dir.to_str().unwrap())
        .start();
    let first = request("POST", &gateway.url("/orders/first"), TOKEN, "{}").await;
    assert_eq!(first.status, 200, "{}", first.text());
    let mut locker = sqlx::SqliteConnection::connect(&sqlite_url(&dir))
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut locker)
        .await
        .unwrap();
    let posts = (0..8).map(|n| {
        let url = gateway.url(&format!("/orders/{n}"));
        async move { request("POST", &url, TOKEN, "{}").await }
    });
    let answered = futures_util::future::join_all(posts).await;
    for reply in &answered {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    drop(locker);

    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    let log = gateway.whole_log();
    assert!(log.contains("batches go to the spool"), "{log}");
    assert!(
        log.contains("the spool is replayed into the store"),
        "{log}"
    );
    let seen = upstream.seen().len();
    assert_eq!(seen, 9);
    let (ok, out) = verify_dir(&dir);
    assert!(ok, "{out}");
    let stored = sqlite_url(&dir);
    let mut connection = sqlx::SqliteConnection::connect(&stored).await.unwrap();
    let admissions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE kind = 'admission'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(
        admissions, 9,
        "every forwarded request has its admission event"
    );
}
