//! JSON objects written field by field, as the access log's lines and the audit log's
//! events are: by hand rather than through serde_json's serializer, which spent about 4 000
//! instructions a line escaping strings byte by byte (measured with
//! `bench/instructions.sh`). A string with nothing to escape, as nearly every field is, is
//! copied whole; only the others go through serde_json's escaping. Fields come out in the
//! order they are written, so the same record always gives the same text.

use std::io::Write;
use std::net::IpAddr;
use std::time::Duration;

/// One JSON object being written, field by field, into a reused buffer.
pub struct Line<'a> {
    out: &'a mut Vec<u8>,
    sparse: bool,
}

impl<'a> Line<'a> {
    /// Starts an object in `out` (cleared first).
    pub fn start(out: &'a mut Vec<u8>) -> Self {
        Self::open(out, false)
    }

    /// Starts an object whose absent fields (`None`) are left out rather than written
    /// `null`: fewer bytes to hash and store for each audit event.
    pub fn start_sparse(out: &'a mut Vec<u8>) -> Self {
        Self::open(out, true)
    }

    fn open(out: &'a mut Vec<u8>, sparse: bool) -> Self {
        out.clear();
        out.push(b'{');
        Self { out, sparse }
    }

    /// Inlined into each caller, where the key is a literal: its bytes are then stored in
    /// place rather than copied by a call (a third of a line's cost, measured).
    #[inline(always)]
    fn key(&mut self, key: &str) {
        if self.out.len() > 1 {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A string field the gateway made or checked itself, which never needs escaping (a
    /// request id, a time, a method, a code), or `null` (nothing, in a sparse object).
    /// Checked in debug builds.
    #[inline]
    pub fn token(&mut self, key: &str, value: Option<&str>) {
        if self.sparse && value.is_none() {
            return;
        }
        self.key(key);
        self.quoted(value);
    }

    fn quoted(&mut self, value: Option<&str>) {
        match value {
            None => self.out.extend_from_slice(b"null"),
            Some(text) => {
                debug_assert!(!text.bytes().any(needs_escape), "{text:?}");
                self.out.reserve(text.len() + 2);
                self.out.push(b'"');
                self.out.extend_from_slice(text.as_bytes());
                self.out.push(b'"');
            }
        }
    }

    /// A string field, or `null` (nothing, in a sparse object).
    #[inline]
    pub fn text(&mut self, key: &str, value: Option<&str>) {
        if self.sparse && value.is_none() {
            return;
        }
        self.key(key);
        self.escaped(value);
    }

    fn escaped(&mut self, value: Option<&str>) {
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
    #[inline]
    pub fn address(&mut self, key: &str, ip: Option<IpAddr>) {
        if self.sparse && ip.is_none() {
            return;
        }
        self.key(key);
        self.ip(ip);
    }

    fn ip(&mut self, ip: Option<IpAddr>) {
        match ip {
            None => self.out.extend_from_slice(b"null"),
            Some(ip) => {
                self.out.push(b'"');
                write_ip(self.out, ip);
                self.out.push(b'"');
            }
        }
    }

    /// A boolean field.
    #[inline]
    pub fn flag(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// A number field.
    #[inline]
    pub fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        self.digits(value);
    }

    fn digits(&mut self, value: u64) {
        self.out
            .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    /// A number field, or `null`.
    #[inline]
    pub fn optional_number(&mut self, key: &str, value: Option<u64>) {
        if self.sparse && value.is_none() {
            return;
        }
        self.key(key);
        match value {
            Some(value) => self.digits(value),
            None => self.out.extend_from_slice(b"null"),
        }
    }

    /// A duration in milliseconds, to the microsecond: `1.776`.
    #[inline]
    pub fn millis(&mut self, key: &str, duration: Duration) {
        self.key(key);
        self.micros_as_millis(duration);
    }

    fn micros_as_millis(&mut self, duration: Duration) {
        // In 64 bits (585 000 years of microseconds): `u128` division is a library call.
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let mut digits = itoa::Buffer::new();
        self.out
            .extend_from_slice(digits.format(micros / 1000).as_bytes());
        self.out.push(b'.');
        let fraction = micros % 1000;
        for digit in [fraction / 100, fraction / 10 % 10, fraction % 10] {
            self.out.push(b'0' + digit as u8);
        }
    }

    /// Ends the object, and the line.
    pub fn end(self) {
        self.out.extend_from_slice(b"}\n");
    }

    /// Ends the object, with no line break.
    pub fn close(self) {
        self.out.push(b'}');
    }
}

/// `ip` as text, as [`Line`] writes it.
pub fn ip_text(ip: IpAddr) -> String {
    let mut out = Vec::with_capacity(15);
    write_ip(&mut out, ip);
    // Digits, dots and colons only.
    String::from_utf8(out).unwrap_or_default()
}

/// Appends `ip` to `out`: IPv4, the usual case, without the formatting machinery.
fn write_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(ip) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        IpAddr::V6(ip) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// Whether `byte` must be escaped in a JSON string (RFC 8259 §7).
fn needs_escape(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(sparse: bool) -> String {
        let mut out = Vec::new();
        let mut line = if sparse {
            Line::start_sparse(&mut out)
        } else {
            Line::start(&mut out)
        };
        line.token("kind", Some("request"));
        line.text("tenant", None);
        line.address("client_ip", None);
        line.optional_number("status", None);
        line.token("method", None);
        line.text("path", Some("/a\"b"));
        line.close();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn absent_fields_are_null_or_left_out() {
        assert_eq!(
            written(false),
            r#"{"kind":"request","tenant":null,"client_ip":null,"status":null,"method":null,"path":"/a\"b"}"#
        );
        assert_eq!(written(true), r#"{"kind":"request","path":"/a\"b"}"#);
    }

    #[test]
    fn durations_are_milliseconds_to_the_microsecond() {
        let mut out = Vec::new();
        let mut line = Line::start(&mut out);
        line.millis("none", Duration::ZERO);
        line.millis("one", Duration::from_nanos(1_999));
        line.millis("long", Duration::from_micros(1_234_567));
        line.millis("forever", Duration::MAX);
        line.close();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"none":0.000,"one":0.001,"long":1234.567,"forever":18446744073709551.615}"#
        );
    }
}
