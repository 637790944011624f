//! The access log: one JSON object per line per finished request, the first sink of the
//! exchange record. Paths come with capability segments masked and queries redacted
//! before the record is made, so nothing here can show a secret.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::base::exchange::{Exchange, USER_AGENT_MAX};
use crate::config::AccessLogTarget;
use crate::recorder::Sink;

/// The access log sink.
pub struct AccessLog {
    out: BufWriter<Box<dyn Write + Send>>,
    clock: Clock,
}

impl AccessLog {
    /// A sink writing to `target`; `None` when the target is [`AccessLogTarget::Off`].
    pub fn open(target: &AccessLogTarget) -> io::Result<Option<Self>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::Stderr => Box::new(io::stderr()),
            AccessLogTarget::File(path) => {
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            }
        };
        Ok(Some(Self {
            out: BufWriter::with_capacity(64 * 1024, out),
            clock: Clock::default(),
        }))
    }
}

/// RFC 3339 times with milliseconds, the date and time formatted once per second.
#[derive(Default)]
struct Clock {
    second: u64,
    /// `2026-11-27T14:22:18.` for `second`.
    prefix: String,
    /// The last time formatted.
    text: String,
}

impl Clock {
    fn format(&mut self, at: SystemTime) -> &str {
        let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
        if since.as_secs() != self.second || self.prefix.is_empty() {
            self.second = since.as_secs();
            let whole = UNIX_EPOCH + Duration::from_secs(self.second);
            self.prefix = humantime::format_rfc3339_seconds(whole).to_string();
            self.prefix.pop(); // the `Z`
            self.prefix.push('.');
        }
        self.text.clear();
        self.text.push_str(&self.prefix);
        let millis = since.subsec_millis();
        for digit in [millis / 100, millis / 10 % 10, millis % 10] {
            self.text.push(char::from(b'0' + digit as u8));
        }
        self.text.push('Z');
        &self.text
    }
}

/// One line of the access log.
#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    request_id: &'a str,
    client_ip: Option<std::net::IpAddr>,
    method: Option<&'a str>,
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
    /// To the response head: the gateway's and the upstream's time.
    head_ms: f64,
    /// To the last byte: what the client waited, streaming included.
    duration_ms: f64,
    protocol: &'static str,
    user_agent: Option<&'a str>,
    /// Present, and true, only for the admin API's requests.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    admin: bool,
}

impl Sink for AccessLog {
    fn record(&mut self, exchange: &Exchange) {
        let caller = exchange.caller.as_ref();
        let user_agent = exchange
            .user_agent
            .as_ref()
            .map(|value| String::from_utf8_lossy(value.as_bytes()));
        let line = Line {
            time: self.clock.format(exchange.started),
            request_id: &exchange.request_id,
            client_ip: exchange.client_ip,
            method: exchange.method.as_ref().map(http::Method::as_str),
            route: exchange.route.as_deref(),
            path: &exchange.path,
            query: exchange.query.as_deref(),
            status: exchange.status,
            decision: exchange.decision.as_str(),
            principal: caller.map(|c| c.name.as_ref()),
            principal_kind: caller.map(|c| c.kind),
            tenant: caller.and_then(|c| c.tenant.as_deref()),
            upstream: exchange.upstream.as_deref(),
            bytes_in: exchange.bytes_in.load(std::sync::atomic::Ordering::Relaxed),
            bytes_out: exchange.bytes_out,
            head_ms: millis(exchange.to_head),
            duration_ms: millis(exchange.duration),
            protocol: exchange.protocol,
            user_agent: user_agent.as_deref().map(|text| cut(text, USER_AGENT_MAX)),
            admin: exchange.admin,
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

/// `duration` in milliseconds, to the microsecond.
fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// At most `max` characters of `text`.
fn cut(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_with_milliseconds() {
        let mut clock = Clock::default();
        let at = UNIX_EPOCH + Duration::from_millis(1_795_184_538_007);
        assert_eq!(clock.format(at), "2026-11-20T14:22:18.007Z");
        let later = at + Duration::from_millis(993);
        assert_eq!(clock.format(later), "2026-11-20T14:22:19.000Z");
    }

    #[test]
    fn long_values_are_cut_on_character_boundaries() {
        assert_eq!(cut("héllo", 2), "hé");
        assert_eq!(cut("hi", 5), "hi");
    }
}
