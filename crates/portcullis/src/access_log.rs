//! The access log: one JSON object per line per finished request, the first sink of the
//! exchange record. Paths come with capability segments masked and queries redacted
//! before the record is made, so nothing here can show a secret.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::base::exchange::{Exchange, USER_AGENT_MAX};
use crate::config::AccessLogTarget;
use crate::recorder::Sink;
use crate::redact::{MASK, contains_secret};

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
                Box::new(OpenOptions::new().create(true).append(true).open(path)?)
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
        let user_agent = exchange
            .user_agent
            .as_ref()
            .map(|value| String::from_utf8_lossy(value.as_bytes()));
        let mut line = Line::start(&mut self.line);
        line.text("time", Some(self.clock.format(exchange.started)));
        line.text("request_id", Some(&exchange.request_id));
        line.address("client_ip", exchange.client_ip);
        line.text("method", exchange.method.as_ref().map(http::Method::as_str));
        line.text("route", exchange.route.as_deref());
        line.text("path", Some(&exchange.path));
        line.text("query", exchange.query.as_deref());
        line.number("status", u64::from(exchange.status));
        line.text("decision", Some(exchange.decision.as_str()));
        line.text("principal", caller.map(|c| c.name.as_ref()));
        line.text("principal_kind", caller.map(|c| c.kind));
        line.text("tenant", caller.and_then(|c| c.tenant.as_deref()));
        line.text("upstream", exchange.upstream.as_deref());
        line.number("bytes_in", exchange.bytes_in.load(Ordering::Relaxed));
        line.number("bytes_out", exchange.bytes_out);
        // To the response head (the gateway's and the upstream's time), and to the last
        // byte (what the client waited, streaming included).
        line.millis("head_ms", exchange.to_head);
        line.millis("duration_ms", exchange.duration);
        line.text("protocol", Some(exchange.protocol));
        // A client that puts its token in its user agent does not see it logged (checked
        // whole, before the cut, so that no key's start is left behind).
        let user_agent = user_agent.as_deref().map(|text| {
            if contains_secret(text) {
                MASK
            } else {
                cut(text, USER_AGENT_MAX)
            }
        });
        line.text("user_agent", user_agent);
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

/// One JSON object being written, field by field, into a reused buffer. Written by hand
/// rather than through serde_json's serializer, which spent about 4 000 instructions a line
/// escaping strings byte by byte (measured with `bench/instructions.sh`); a string with
/// nothing to escape, as nearly every field is, is copied whole, and only the others go
/// through serde_json's escaping.
struct Line<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Line<'a> {
    fn start(out: &'a mut Vec<u8>) -> Self {
        out.clear();
        out.push(b'{');
        Self { out }
    }

    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A string field, or `null`.
    fn text(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            None => self.out.extend_from_slice(b"null"),
            // No early exit, so the check runs over whole vectors of bytes.
            Some(text)
                if !text
                    .bytes()
                    .fold(false, |escape, b| escape | needs_escape(b)) =>
            {
                self.out.push(b'"');
                self.out.extend_from_slice(text.as_bytes());
                self.out.push(b'"');
            }
            Some(text) => {
                // Writing JSON for a string into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *self.out, text);
            }
        }
    }

    /// An address as a string (its text form never needs escaping), or `null`.
    fn address(&mut self, key: &str, ip: Option<IpAddr>) {
        self.key(key);
        match ip {
            None => self.out.extend_from_slice(b"null"),
            // The usual case, without the formatting machinery.
            Some(IpAddr::V4(ip)) => {
                let mut digits = itoa::Buffer::new();
                self.out.push(b'"');
                for (i, octet) in ip.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push(b'.');
                    }
                    self.out.extend_from_slice(digits.format(octet).as_bytes());
                }
                self.out.push(b'"');
            }
            Some(ip) => {
                let _ = write!(self.out, "\"{ip}\"");
            }
        }
    }

    fn flag(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// A duration in milliseconds, to the microsecond: `1.776`.
    fn millis(&mut self, key: &str, duration: Duration) {
        self.key(key);
        let micros = duration.as_micros();
        let mut digits = itoa::Buffer::new();
        self.out
            .extend_from_slice(digits.format(micros / 1000).as_bytes());
        self.out.push(b'.');
        let fraction = micros % 1000;
        for digit in [fraction / 100, fraction / 10 % 10, fraction % 10] {
            self.out.push(b'0' + digit as u8);
        }
    }

    fn end(self) {
        self.out.extend_from_slice(b"}\n");
    }
}

/// Whether `byte` must be escaped in a JSON string (RFC 8259 §7).
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
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

    /// Every line is one JSON object that any parser reads back as written, whatever the
    /// client put in the fields it controls (RFC 8259 §7: quotes, backslashes and control
    /// characters escaped; anything else as UTF-8).
    #[test]
    fn lines_are_valid_json_whatever_the_fields_hold() {
        let tricky = "a\"b\\c\u{1}d\ne\u{7f}é😀</script>";
        let mut exchange = Exchange::begin("id-1".into(), IpAddr::from([10, 0, 0, 1]), "HTTP/2");
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

    #[test]
    fn long_values_are_cut_on_character_boundaries() {
        assert_eq!(cut("héllo", 2), "hé");
        assert_eq!(cut("hi", 5), "hi");
    }
}
