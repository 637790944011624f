//! The access log: one JSON object per line per finished request, the first sink of the
//! exchange record. Paths come with capability segments masked and queries redacted
//! before the record is made, so nothing here can show a secret.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::base::exchange::Exchange;
use crate::config::AccessLogTarget;
use crate::json_line::Line;
use crate::recorder::Sink;
use crate::redact;

/// The access log sink.
pub struct AccessLog {
    out: BufWriter<Box<dyn Write + Send>>,
    clock: Clock,
    /// The line being written, reused.
    line: Vec<u8>,
}

impl AccessLog {
    /// A sink writing to `target`; `None` when the target is [`AccessLogTarget::Off`].
    pub fn open(target: &AccessLogTarget) -> io::Result<Option<Self>> {
        let out: Box<dyn Write + Send> = match target {
            AccessLogTarget::Off => return Ok(None),
            AccessLogTarget::Stdout => Box::new(io::stdout()),
            AccessLogTarget::Stderr => Box::new(io::stderr()),
            AccessLogTarget::File(path) => {
                let mut options = OpenOptions::new();
                options.create(true).append(true);
                // Readable by the owner's group (a log shipper), writable by the owner
                // alone, whatever the umask: anyone else could forge lines.
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o640);
                Box::new(options.open(path)?)
            }
        };
        Ok(Some(Self {
            out: BufWriter::with_capacity(64 * 1024, out),
            clock: Clock::default(),
            line: Vec::with_capacity(1024),
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

impl Sink for AccessLog {
    fn record(&mut self, exchange: &Exchange) {
        let caller = exchange.caller.as_ref();
        let user_agent = exchange.user_agent.as_ref().map(redact::user_agent);
        let mut line = Line::start(&mut self.line);
        line.token("time", Some(self.clock.format(exchange.started)));
        line.token("request_id", Some(exchange.request_id()));
        line.address("client_ip", exchange.client_ip);
        // A method is a token (RFC 9110 §9.1), which never needs escaping.
        line.token("method", exchange.method.as_ref().map(http::Method::as_str));
        line.text("route", exchange.route.as_deref());
        line.text("path", Some(&exchange.path));
        line.text("query", exchange.query.as_deref());
        line.number("status", u64::from(exchange.status));
        line.token("decision", Some(exchange.decision.as_str()));
        line.text("principal", caller.map(|c| c.name.as_ref()));
        line.token("principal_kind", caller.map(|c| c.kind));
        line.text("tenant", caller.and_then(|c| c.tenant.as_deref()));
        line.text("upstream", exchange.upstream.as_deref());
        line.number("bytes_in", exchange.bytes_in.load(Ordering::Relaxed));
        line.number("bytes_out", exchange.bytes_out);
        // To the response head (the gateway's and the upstream's time), and to the last
        // byte (what the client waited, streaming included).
        line.millis("head_ms", exchange.to_head);
        line.millis("duration_ms", exchange.duration);
        line.token("protocol", Some(exchange.protocol));
        line.text("user_agent", user_agent.as_deref());
        // Present, and true, only for the admin API's requests.
        if exchange.admin {
            line.flag("admin", true);
        }
        line.end();
        // A line that cannot be written (a full disk) must not stop the others.
        let _ = self.out.write_all(&self.line);
    }

    fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn times_are_rfc_3339_with_milliseconds() {
        let mut clock = Clock::default();
        let at = UNIX_EPOCH + Duration::from_millis(1_795_184_538_007);
        assert_eq!(clock.format(at), "2026-11-20T14:22:18.007Z");
        let later = at + Duration::from_millis(993);
        assert_eq!(clock.format(later), "2026-11-20T14:22:19.000Z");
    }

    /// Every line is one JSON object that any parser reads back as written, whatever the
    /// client put in the fields it controls (RFC 8259 §7: quotes, backslashes and control
    /// characters escaped; anything else as UTF-8).
    #[test]
    fn lines_are_valid_json_whatever_the_fields_hold() {
        let tricky = "a\"b\\c\u{1}d\ne\u{7f}é😀</script>";
        let mut exchange = Exchange::begin(
            http::HeaderValue::from_static("id-1"),
            IpAddr::from([10, 0, 0, 1]),
            "HTTP/2",
        );
        exchange.path = format!("/api/{tricky}");
        exchange.query = Some(tricky.to_owned());
        exchange.user_agent = Some(http::HeaderValue::from_bytes(b"ua \"x\" \\ \xff").unwrap());
        exchange.duration = Duration::from_micros(1_776);
        exchange.to_head = Duration::from_micros(5);
        exchange.status = 200;
        exchange.admin = true;
        exchange.client_ip = Some(exchange.peer);
        let mut buffer = Vec::new();
        let mut log = AccessLog {
            out: BufWriter::new(Box::new(io::sink())),
            clock: Clock::default(),
            line: Vec::new(),
        };
        log.record(&exchange);
        buffer.extend_from_slice(&log.line);
        assert_eq!(buffer.last(), Some(&b'\n'));
        let line: serde_json::Value = serde_json::from_slice(&buffer).unwrap();
        assert_eq!(line["path"], format!("/api/{tricky}"));
        assert_eq!(line["query"], tricky);
        assert_eq!(line["user_agent"], "ua \"x\" \\ \u{fffd}");
        assert_eq!(line["client_ip"], "10.0.0.1");
        exchange.client_ip = Some("2001:db8::1".parse().unwrap());
        log.record(&exchange);
        let line: serde_json::Value = serde_json::from_slice(&log.line).unwrap();
        assert_eq!(line["client_ip"], "2001:db8::1");
        assert_eq!(line["duration_ms"], 1.776);
        assert_eq!(line["head_ms"], 0.005);
        assert_eq!(line["status"], 200);
        assert_eq!(line["method"], serde_json::Value::Null);
        assert_eq!(line["admin"], true);
        assert_eq!(line.as_object().unwrap().len(), 20);
    }
}
