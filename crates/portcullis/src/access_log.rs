//! The access log: one JSON object per line per finished request, the first sink of the
//! exchange record. Paths come with capability segments masked and queries redacted
//! before the record is made, so nothing here can show a secret.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use serde::Serialize;

use crate::exchange::{Exchange, Sink};

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Target {
    /// Nowhere: no record is made at all.
    #[default]
    Off,
    /// Standard output.
    Stdout,
    /// Standard error, beside the operational log.
    Stderr,
    /// A file, appended to (created when missing).
    File(PathBuf),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;

    /// `off`, `stdout`, `stderr`, or a path.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "off" | "" => Self::Off,
            "stdout" | "-" => Self::Stdout,
            "stderr" => Self::Stderr,
            path => Self::File(PathBuf::from(path)),
        })
    }
}

impl<'de> serde::Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The access log sink.
pub struct AccessLog {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl AccessLog {
    /// A sink writing to `target`; `None` when the target is [`Target::Off`].
    pub fn open(target: &Target) -> io::Result<Option<Self>> {
        let out: Box<dyn Write + Send> = match target {
            Target::Off => return Ok(None),
            Target::Stdout => Box::new(io::stdout()),
            Target::Stderr => Box::new(io::stderr()),
            Target::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Ok(Some(Self {
            out: BufWriter::with_capacity(64 * 1024, out),
        }))
    }
}

/// One line of the access log.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    request_id: &'a str,
    client_ip: Option<String>,
    method: &'a str,
    route: Option<&'a str>,
    path: &'a str,
    query: Option<&'a str>,
    status: u16,
    decision: &'static str,
    principal: Option<&'a str>,
    principal_kind: Option<&'static str>,
    tenant: Option<&'a str>,
    upstream: Option<&'a str>,
    bytes_in: u64,
    bytes_out: u64,
    duration_ms: f64,
    protocol: &'static str,
    user_agent: Option<&'a str>,
}

impl Sink for AccessLog {
    fn record(&mut self, exchange: &Exchange) {
        let caller = exchange.caller.as_ref();
        let line = Line {
            time: humantime::format_rfc3339_millis(exchange.started).to_string(),
            request_id: &exchange.request_id,
            client_ip: exchange.client_ip.map(|ip| ip.to_string()),
            method: &exchange.method,
            route: exchange.route.as_deref(),
            path: &exchange.path,
            query: exchange.query.as_deref(),
            status: exchange.status,
            decision: exchange.decision.as_str(),
            principal: caller.map(|c| c.name.as_str()),
            principal_kind: caller.map(|c| c.kind),
            tenant: caller.and_then(|c| c.tenant.as_deref()),
            upstream: exchange.upstream.as_deref(),
            bytes_in: exchange.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            bytes_out: exchange.bytes_out,
            duration_ms: (exchange.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            protocol: exchange.protocol,
            user_agent: exchange.user_agent.as_deref(),
        };
        // A line that cannot be written (a full disk) must not stop the others.
        if serde_json::to_writer(&mut self.out, &line).is_ok() {
            let _ = self.out.write_all(b"\n");
        }
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}
