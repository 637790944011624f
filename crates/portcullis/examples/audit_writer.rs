//! The audit log's writer on its own: how many events a second it chains and stores, fed
//! through the recorder as the gateway feeds it (batched, every 200 ms, lossless), with no
//! request served. Run by `bench/audit.sh`:
//!
//!   cargo run --release --example audit_writer                  # SQLite in a scratch dir
//!   PORTCULLIS_DATABASE_URL=postgres://... cargo run --release --example audit_writer
//!
//! `EVENTS` sets how many events (200 000 by default). `AUDIT_DIR` names a data directory
//! to keep between runs (a scratch one by default): each run adds a chain, as each start of
//! the gateway does.

use std::error::Error;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use portcullis::audit::AuditLog;
use portcullis::audit::chain::ChainKey;
use portcullis::base::exchange::{Caller, Decision, Exchange};
use portcullis::config::StoreLocation;
use portcullis::recorder::Recorder;
use secrecy::SecretString;

fn main() -> Result<(), Box<dyn Error>> {
    let events: usize = std::env::var("EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let scratch = tempfile::tempdir()?;
    let data =
        std::env::var_os("AUDIT_DIR").map_or_else(|| scratch.path().to_owned(), PathBuf::from);
    let location = match std::env::var("PORTCULLIS_DATABASE_URL") {
        Ok(url) => StoreLocation::Postgres(SecretString::from(url)),
        Err(_) => StoreLocation::DataDir(data.clone()),
    };
    let store = match &location {
        StoreLocation::DataDir(_) => "SQLite",
        StoreLocation::Postgres(_) => "PostgreSQL",
    };
    let key = ChainKey::new(SecretString::from(
        "bench-audit-key-0123456789abcdef".to_owned(),
    ));
    let log = AuditLog::open(
        &location,
        Some(&data),
        key,
        Arc::new(AtomicBool::new(false)),
    )?;
    let recorder = Recorder::start(vec![Box::new(log)], true)?;

    // A typical allowed request, as the pipeline finishes it.
    let template = Exchange {
        client_ip: Some(IpAddr::from([203, 0, 113, 9])),
        method: Some(http::Method::GET),
        route: Some(Arc::from("/api")),
        path: "/api/v1/positions/4711".to_owned(),
        query: Some("page=2&sort=desc".to_owned()),
        caller: Some(Caller {
            kind: "token",
            id: Some("tok_4fQ9zX1bK2mN0".to_owned()),
            name: "inventory-sync".into(),
            tenant: Some("acme".to_owned()),
        }),
        upstream: Some(Arc::from("inventory")),
        status: 200,
        decision: Decision::Allowed,
        bytes_out: 64,
        to_head: Duration::from_micros(900),
        duration: Duration::from_micros(1100),
        user_agent: Some(http::HeaderValue::from_static("python-httpx/0.28.1")),
        ..Exchange::begin(
            http::HeaderValue::from_static(""),
            IpAddr::from([127, 0, 0, 1]),
            "HTTP/1.1",
        )
    };

    let started = Instant::now();
    for n in 0..events {
        let mut exchange = template.clone();
        exchange.request_id = http::HeaderValue::try_from(format!("{n:032x}"))?;
        // Ten requests a millisecond, as a busy gateway's: a log whose events all share one
        // time would make every page of a search sort all of them (bench/RESULTS.md).
        let offset = Duration::from_micros(100).saturating_mul(u32::try_from(n)?);
        exchange.started = template.started + offset;
        recorder.finish(Box::new(exchange));
    }
    // Returns once every event is committed (and the closing checkpoint written).
    recorder.close(Duration::from_secs(600));
    let elapsed = started.elapsed();
    println!(
        "audit writer on {store}: {events} events in {:.2} s: {:.0} events/s",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
