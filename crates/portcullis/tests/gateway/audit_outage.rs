//! The audit store going away under load: PostgreSQL cut off (every connection dropped,
//! every new one refused) for a while, then back. Nothing is lost: every request answered
//! meanwhile has its event, in order, in chains that verify.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::audit::{request, verify};
use crate::common::*;
use crate::managed::PostgresDatabase;

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

// Several threads: the proxy must run while the launcher blocks on the gateway's start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_under_load_loses_no_event() {
    let database = PostgresDatabase::create().await;
    let target: SocketAddr = {
        let rest = database.url.split_once('@').unwrap().1;
        let host_port = rest.split_once('/').unwrap().0;
        tokio::net::lookup_host(host_port)
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = Cuttable::start(target).await;
    let (scheme_user, rest) = database.url.split_once('@').unwrap();
    let path = rest.split_once('/').unwrap().1;
    let proxied = format!("{scheme_user}@{}/{path}", proxy.addr);

    let upstream = Upstream::start().await;
    let env = [
        ("PORTCULLIS_DATABASE_URL", proxied.as_str()),
        ("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef"),
        ("PORTCULLIS_AUDIT_KEY", AUDIT_KEY),
    ];
    let mut launch = Launch::new(&upstream.url());
    for (name, value) in env {
        launch = launch.env(name, value);
    }
    let mut gateway = launch.start();

    // Four clients, each sending requests one after another: before, during and after a
    // two-second outage. Reads go on (their events wait in memory); a write is held
    // until its admission event is stored, or refused 503.
    let started = Instant::now();
    let answered = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (base, answered) = (gateway.url(""), answered.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while started.elapsed() < Duration::from_millis(3500) {
                let method = if n % 5 == 0 { "POST" } else { "GET" };
                let url = format!("{base}/c{client}/{n}");
                let reply = request(method, &url, TOKEN, "{}").await;
                let id = reply.header("x-request-id").unwrap().to_owned();
                answered
                    .lock()
                    .unwrap()
                    .insert(id, (method, reply.status.as_u16()));
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.go_down();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.come_back();
    for client in clients {
        client.await.unwrap();
    }
    let status = gateway.terminate();
    assert!(status.success(), "{status:?}");
    let log = gateway.whole_log();
    assert!(
        log.contains("the store refused a batch"),
        "no outage seen:\n{log}"
    );
    assert!(!log.contains("they are lost"), "{log}");

    // Every answered request has its request event, with the status the client saw; every
    // POST forwarded has its admission event before it.
    let mut connection = sqlx::PgConnection::connect(&database.url).await.unwrap();
    let rows: Vec<(String, String, Option<i64>)> = sqlx::query_as(
        "SELECT kind, request_id, status FROM audit_events \
         WHERE kind IN ('request', 'admission') ORDER BY chain_id, seq",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() > 40, "only {} requests", answered.len());
    let mut during = 0;
    for (id, (method, status)) in answered.iter() {
        let kinds: Vec<(&str, Option<i64>)> = rows
            .iter()
            .filter(|(_, request_id, _)| request_id == id)
            .map(|(kind, _, status)| (kind.as_str(), *status))
            .collect();
        let expected: Vec<(&str, Option<i64>)> = if *method == "POST" {
            vec![("admission", None), ("request", Some(i64::from(*status)))]
        } else {
            vec![("request", Some(i64::from(*status)))]
        };
        assert_eq!(kinds, expected, "{method} {id}");
        if *status == 503 {
            during += 1;
        }
    }
    assert!(during > 0, "no write was refused during the outage");
    let direct = [
        ("PORTCULLIS_DATABASE_URL", database.url.as_str()),
        ("PORTCULLIS_AUDIT_KEY", AUDIT_KEY),
    ];
    let (ok, out) = verify(&[], &[], &direct);
    assert!(ok, "{out}");
    database.drop_now().await;
}
