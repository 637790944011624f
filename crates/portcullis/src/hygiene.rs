//! Request hygiene: refuse what an upstream might read differently from us.
//!
//! Paths are never rewritten, only accepted or refused: a path that could mean one thing
//! to the gateway and another to the upstream (dot segments in any encoding, NUL,
//! backslash, invalid percent-encoding) never leaves the gateway, so the route the gateway
//! authorised is the resource the upstream serves.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Version, header};
use http_body::{Body, Frame, SizeHint};

use crate::base::body::is_framed_plainly;
use crate::base::exchange::BodySample;
use crate::base::problem::{Problem, ProblemKind};

/// The request size limits enforced before anything is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, declared or streamed.
    pub max_body_bytes: u64,
    /// Longest request target (path and query).
    pub max_uri_bytes: usize,
    /// Most bytes of header names and values together.
    pub max_header_bytes: usize,
    /// Most header fields.
    pub max_headers: usize,
}

/// Checks each request against [`Limits`], the path rules and the hosts allowed.
#[derive(Debug, Clone)]
pub struct Hygiene {
    limits: Limits,
    allowed_hosts: Option<AllowedHosts>,
}

/// The hosts requests may name (`allowed_hosts`): `host`, on any port, or `host:port`,
/// without regard to case. What keeps a server on a loopback address from DNS rebinding:
/// a page on `evil.example`, rebound to 127.0.0.1, still names `evil.example`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts(Vec<(String, Option<u16>)>);

impl AllowedHosts {
    /// The allowlist `entries` make; `Err` quotes the first that is not a `host[:port]`.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|entry| {
                if !is_valid_host(entry.as_bytes()) {
                    return Err(entry.clone());
                }
                let (host, port) = split_host(entry.as_bytes());
                let host = String::from_utf8_lossy(host).to_ascii_lowercase();
                let port = port.and_then(|p| std::str::from_utf8(p).ok()?.parse().ok());
                Ok((host, port))
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Whether `named`, a valid `host[:port]`, is allowed: its host is listed without a
    /// port, or with its port (a name without a port means the scheme's default port,
    /// which no listed port then matches).
    pub fn admits(&self, named: &[u8]) -> bool {
        let (host, port) = split_host(named);
        let port = port.and_then(|p| std::str::from_utf8(p).ok()?.parse::<u16>().ok());
        self.0.iter().any(|(allowed, allowed_port)| {
            host.eq_ignore_ascii_case(allowed.as_bytes())
                && allowed_port.is_none_or(|allowed_port| port == Some(allowed_port))
        })
    }
}

/// The names a loopback listener answers to, on any port.
pub const LOOPBACK_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// Whether `named`, a `host[:port]`, names a loopback host.
pub fn is_loopback_host(named: &[u8]) -> bool {
    let (host, _) = split_host(named);
    LOOPBACK_NAMES
        .iter()
        .any(|loopback| host.eq_ignore_ascii_case(loopback.as_bytes()))
}

/// A valid `host[:port]` split at its port: an IPv6 literal keeps its brackets.
fn split_host(value: &[u8]) -> (&[u8], Option<&[u8]>) {
    let colon = match value.iter().rposition(|b| *b == b':') {
        // Inside an IPv6 literal, not before a port.
        Some(colon) if value.starts_with(b"[") && !value[..colon].ends_with(b"]") => None,
        colon => colon,
    };
    match colon {
        Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
        None => (value, None),
    }
}

/// The methods the gateway forwards.
const FORWARDED_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
    Method::OPTIONS,
];

/// The `Allow` value sent with 405.
const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";

impl Hygiene {
    /// Enforces `limits`, with any host allowed.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            allowed_hosts: None,
        }
    }

    /// Allows only the hosts `allowed` lists; any valid host with none.
    pub fn with_allowed_hosts(mut self, allowed: Option<AllowedHosts>) -> Self {
        self.allowed_hosts = allowed;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Refuses a request whose method, target, host, headers, transfer coding or declared
    /// length are not acceptable. The body is limited separately, as it streams
    /// ([`LimitedBody`]).
    pub fn check<B>(&self, request: &Request<B>) -> Result<(), Problem> {
        check_method(request.method())?;
        check_host(request)?;
        if let Some(allowed) = &self.allowed_hosts {
            check_allowed_host(request, allowed)?;
        }
        check_transfer_coding(request)?;

        let target_len = request
            .uri()
            .path_and_query()
            .map_or(1, |pq| pq.as_str().len());
        if target_len > self.limits.max_uri_bytes {
            return Err(Problem::new(ProblemKind::UriTooLong).with_detail(format!(
                "the request target may be at most {} bytes",
                self.limits.max_uri_bytes
            )));
        }

        let headers = request.headers();
        let header_bytes: usize = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        if headers.len() > self.limits.max_headers || header_bytes > self.limits.max_header_bytes {
            return Err(
                Problem::new(ProblemKind::HeadersTooLarge).with_detail(format!(
                    "at most {} header fields and {} bytes of them are accepted",
                    self.limits.max_headers, self.limits.max_header_bytes
                )),
            );
        }

        check_path(request.uri().path())?;
        check_method_override(request)?;

        if let Some(length) = declared_length(request)?
            && length > self.limits.max_body_bytes
        {
            return Err(self.body_too_large());
        }
        Ok(())
    }

    /// The problem sent when a body exceeds the limit.
    pub fn body_too_large(&self) -> Problem {
        Problem::new(ProblemKind::BodyTooLarge).with_detail(format!(
            "the request body may be at most {} bytes",
            self.limits.max_body_bytes
        ))
    }
}

fn check_method(method: &Method) -> Result<(), Problem> {
    if FORWARDED_METHODS.contains(method) {
        Ok(())
    } else if method == Method::TRACE || method == Method::CONNECT {
        Err(Problem::new(ProblemKind::MethodNotAllowed)
            .with_header(header::ALLOW, HeaderValue::from_static(ALLOW)))
    } else {
        Err(Problem::new(ProblemKind::MethodNotImplemented))
    }
}

/// Refuses a `POST` whose query names `_method`: Laravel (Symfony) and Express's
/// `methodOverride('_method')` serve it as the method it names, past the scope the gateway
/// checked for `POST`. The name is read as PHP reads it: percent-decoded, `.` and a space
/// as `_`, in any case. (A form body's `_method`, which Rails reads, is not looked at: the
/// body streams.)
fn check_method_override<B>(request: &Request<B>) -> Result<(), Problem> {
    if request.method() != Method::POST {
        return Ok(());
    }
    let Some(query) = request.uri().query() else {
        return Ok(());
    };
    let overrides = query.split('&').any(|pair| {
        let name = pair.split('=').next().unwrap_or_default();
        let mut name = percent_decode_lenient(name.as_bytes());
        for b in &mut name {
            if matches!(*b, b'.' | b' ' | b'+') {
                *b = b'_';
            }
        }
        name.eq_ignore_ascii_case(b"_method")
    });
    if overrides {
        return Err(Problem::new(ProblemKind::BadRequest).with_detail(
            "a POST may not name another method in its query (_method): the method authorised must be the method served",
        ));
    }
    Ok(())
}

/// Refuses a request that does not name exactly one valid host: an HTTP/1.1 request needs
/// one `Host` (RFC 9112 §3.2), and any `Host` or target authority must be a plain
/// `host[:port]`, without user information. Over HTTP/2 a `Host` must agree with
/// `:authority` (RFC 9113 §8.3.1). An HTTP/1.1 absolute-form target's authority wins over
/// `Host` (RFC 9112 §3.2.2), which the context stage follows.
fn check_host<B>(request: &Request<B>) -> Result<(), Problem> {
    let bad = |detail: &'static str| Problem::new(ProblemKind::BadRequest).with_detail(detail);
    let mut hosts = request.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("the request has more than one Host header"));
    }
    match host {
        // Even with an absolute-form target (RFC 9112 §3.2).
        None if request.version() == Version::HTTP_11 => {
            return Err(bad("an HTTP/1.1 request needs a Host header"));
        }
        Some(host) if !is_valid_host(host.as_bytes()) => {
            return Err(bad("the Host header is not a valid host[:port]"));
        }
        _ => {}
    }
    if let Some(authority) = request.uri().authority() {
        if !is_valid_host(authority.as_str().as_bytes()) {
            return Err(bad(
                "the request target's authority is not a valid host[:port]",
            ));
        }
        if request.version() == Version::HTTP_2
            && host.is_some_and(|host| {
                !host
                    .as_bytes()
                    .eq_ignore_ascii_case(authority.as_str().as_bytes())
            })
        {
            return Err(bad("the Host header and :authority disagree"));
        }
    }
    Ok(())
}

/// Refuses with 421 (RFC 9110 §15.5.20) a request naming a host that is not allowed, or
/// none: the target's authority (HTTP/2's `:authority`, an HTTP/1.1 absolute-form target,
/// which wins over `Host`), else `Host`. Checked before authentication, so that a rebound
/// page learns nothing, not even whether it would need a credential.
fn check_allowed_host<B>(request: &Request<B>, allowed: &AllowedHosts) -> Result<(), Problem> {
    let named = match request.uri().authority() {
        Some(authority) => Some(authority.as_str().as_bytes()),
        None => request
            .headers()
            .get(header::HOST)
            .map(HeaderValue::as_bytes),
    };
    if named.is_some_and(|named| allowed.admits(named)) {
        return Ok(());
    }
    Err(Problem::new(ProblemKind::MisdirectedRequest)
        .with_detail("this gateway does not serve the host the request names"))
}

/// Whether `value` is `host[:port]`: a name of letters, digits, `-`, `.` and `_`, an IPv4
/// address, or an IPv6 address in brackets; a port of 1 to 5 digits up to 65535. No user
/// information, path or anything else a parser might read differently.
pub fn is_valid_host(value: &[u8]) -> bool {
    let (host, port) = match value.strip_prefix(b"[") {
        Some(bracketed) => {
            let Some(end) = bracketed.iter().position(|b| *b == b']') else {
                return false;
            };
            let literal = std::str::from_utf8(&bracketed[..end]).ok();
            if literal
                .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
                .is_none()
            {
                return false;
            }
            match &bracketed[end + 1..] {
                [] => return true,
                [b':', port @ ..] => (&[][..], Some(port)),
                _ => return false,
            }
        }
        None => match value.iter().rposition(|b| *b == b':') {
            Some(colon) => (&value[..colon], Some(&value[colon + 1..])),
            None => (value, None),
        },
    };
    let port_ok = port.is_none_or(|port| {
        (1..=5).contains(&port.len())
            && port.iter().all(u8::is_ascii_digit)
            && std::str::from_utf8(port)
                .ok()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some()
    });
    let name_ok = value.starts_with(b"[")
        || (!host.is_empty()
            && host
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')));
    port_ok && name_ok
}

/// Refuses a transfer coding the gateway does not implement with 501 (RFC 9112 §6.1):
/// only `chunked`, once, is decoded; any other coding would otherwise be dropped with the
/// hop-by-hop `Transfer-Encoding` and the body forwarded without it.
fn check_transfer_coding<B>(request: &Request<B>) -> Result<(), Problem> {
    if is_framed_plainly(request.headers()) {
        return Ok(());
    }
    Err(Problem::new(ProblemKind::TransferCodingNotImplemented)
        .with_detail("only the chunked transfer coding is accepted"))
}

/// The declared `Content-Length`, refusing one that is not a single decimal number.
fn declared_length<B>(request: &Request<B>) -> Result<Option<u64>, Problem> {
    let mut values = request.headers().get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    let bad = || Problem::new(ProblemKind::BadRequest).with_detail("invalid Content-Length");
    let parse = |v: &HeaderValue| -> Option<u64> {
        let text = v.to_str().ok()?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    };
    let length = parse(first).ok_or_else(bad)?;
    for other in values {
        if parse(other) != Some(length) {
            return Err(bad());
        }
    }
    Ok(Some(length))
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target is not an absolute path (`*`, or an empty path).
    #[error("the request target must be an absolute path")]
    NotAbsolute,
    /// A raw non-ASCII byte, space or control character: a URI holds them only
    /// percent-encoded.
    #[error("the path holds a character that must be percent-encoded")]
    NotEncoded,
    /// A `.` or `..` segment, plain or percent-encoded once or twice.
    #[error("the path contains a dot segment")]
    DotSegment,
    /// A NUL byte, plain or encoded.
    #[error("the path contains a NUL byte")]
    Nul,
    /// A backslash, plain or encoded.
    #[error("the path contains a backslash")]
    Backslash,
    /// A `%` not followed by two hex digits.
    #[error("the path has invalid percent-encoding")]
    BadPercentEncoding,
    /// The decoded path is not UTF-8 (which also catches overlong encodings of `.` and `/`).
    #[error("the decoded path is not valid UTF-8")]
    NotUtf8,
    /// A `;` path parameter, which some servers strip before routing.
    #[error("the path contains a ';' path parameter")]
    PathParameter,
    /// `//` inside the path, which some servers collapse before routing.
    #[error("the path contains an empty segment")]
    EmptySegment,
    /// `%61` for `a` and the like, which servers decode before routing.
    #[error("the path percent-encodes a character that needs no encoding")]
    EncodedUnreserved,
    /// `%25` encoding another escape more than once.
    #[error("the path is percent-encoded more than twice")]
    TooManyEncodings,
    /// Characters such as `ı`, `ſ`, `K` or fullwidth letters that case-insensitive
    /// upstreams fold to ASCII, making the path another route's.
    #[error("the path holds characters that fold to ASCII letters and would reach another route")]
    FoldsIntoAnotherRoute,
    /// A path that upstreams commonly read as another route's: a percent-encoded
    /// character (`%3A` in `/v1/reports%3Arun`) they decode before they route, or a
    /// segment's surrounding whitespace or trailing dot they trim (`/admin%20`, `/admin.`).
    #[error(
        "the path, read as upstreams commonly read it (escapes decoded, segments trimmed), reaches another route"
    )]
    ReadsAsAnotherRoute,
}

impl From<PathError> for Problem {
    fn from(error: PathError) -> Self {
        Problem::new(ProblemKind::InvalidPath).with_detail(error.to_string())
    }
}

/// Accepts `path` only when it means the same thing however many times it is decoded, and
/// to servers that normalise paths in the usual ways.
///
/// The raw path, its percent-decoding and its second (lenient) decoding must each be free
/// of dot segments (`.`, `..`, also `..;x`), NUL and backslash. Also refused, because
/// upstreams commonly normalise them away after the gateway has matched the route: path
/// parameters (`;`), empty segments (`//`) other than a trailing slash, percent-encoded
/// unreserved characters (`%61` for `a`), at either decoding level, and a third level of
/// encoding.
pub fn check_path(path: &str) -> Result<(), PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Raw non-ASCII is not a valid URI (RFC 3986 §2), and an upstream may fold it
    // (`ı` to `i`) into another route's prefix; percent-encoded, it is checked below.
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(PathError::NotEncoded);
    }
    check_segments(path.as_bytes())?;
    if !path.contains('%') {
        return check_shape(path.as_bytes());
    }
    let once = percent_decode(path.as_bytes()).ok_or(PathError::BadPercentEncoding)?;
    if std::str::from_utf8(&once).is_err() {
        return Err(PathError::NotUtf8);
    }
    check_segments(&once)?;
    // A `%` left after one decoding is either a literal percent sign (`%25`) or a double
    // encoding, which must be as clean as the single one; bad escapes stay as they are,
    // as lenient decoders leave them.
    let twice = percent_decode_lenient(&once);
    if std::str::from_utf8(&twice).is_err() {
        return Err(PathError::NotUtf8);
    }
    check_segments(&twice)?;
    check_shape(path.as_bytes())?;
    check_shape(&once)?;
    if has_escape(&twice) {
        return Err(PathError::TooManyEncodings);
    }
    Ok(())
}

/// The checks that hold for the raw and the once-decoded path: no path parameters, no
/// empty segment before the last, no encoded unreserved character.
fn check_shape(path: &[u8]) -> Result<(), PathError> {
    if path.contains(&b';') {
        return Err(PathError::PathParameter);
    }
    let segments = path.split(|b| *b == b'/').skip(1);
    let count = path.iter().filter(|b| **b == b'/').count();
    if segments.take(count.saturating_sub(1)).any(<[u8]>::is_empty) {
        return Err(PathError::EmptySegment);
    }
    let encoded_unreserved = path.windows(3).any(|w| {
        w[0] == b'%'
            && matches!((hex_value(w[1]), hex_value(w[2])), (Some(h), Some(l))
                if { let c = h << 4 | l; c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') })
    });
    if encoded_unreserved {
        return Err(PathError::EncodedUnreserved);
    }
    Ok(())
}

/// Whether `path` holds a well-formed `%XX` escape.
fn has_escape(path: &[u8]) -> bool {
    path.windows(3)
        .any(|w| w[0] == b'%' && hex_value(w[1]).is_some() && hex_value(w[2]).is_some())
}

/// Refuses the form a Unicode-aware upstream folds a path into (see
/// `upstream::fold`) when it breaks the rules the path itself had to meet: fullwidth
/// `．．` folds to a dot segment, `；` to a path parameter, `＼` to a backslash, `％61` to an
/// encoded unreserved character.
pub fn check_folded_path(folded: &str) -> Result<(), PathError> {
    check_segments(folded.as_bytes())?;
    check_shape(folded.as_bytes())
}

fn check_segments(path: &[u8]) -> Result<(), PathError> {
    if path.contains(&0) {
        return Err(PathError::Nul);
    }
    if path.contains(&b'\\') {
        return Err(PathError::Backslash);
    }
    for segment in path.split(|b| *b == b'/') {
        // `..;x` is `..` to servers that strip path parameters.
        let name = segment.split(|b| *b == b';').next().unwrap_or_default();
        if name == b"." || name == b".." {
            return Err(PathError::DotSegment);
        }
    }
    Ok(())
}

/// Decodes the well-formed `%XX` escapes of `input` and keeps anything else as it is.
fn percent_decode_lenient(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match (
            input[i],
            input.get(i + 1).copied().and_then(hex_value),
            input.get(i + 2).copied().and_then(hex_value),
        ) {
            (b'%', Some(high), Some(low)) => {
                out.push(high << 4 | low);
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` when a `%` is not followed by two hex digits.
fn percent_decode(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&byte) = bytes.next() {
        if byte == b'%' {
            let high = hex_value(*bytes.next()?)?;
            let low = hex_value(*bytes.next()?)?;
            out.push(high << 4 | low);
        } else {
            out.push(byte);
        }
    }
    Some(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The error a [`LimitedBody`] yields once more than its limit has streamed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit that was exceeded.
    pub limit: u64,
}

/// The error a [`LimitedBody`] yields when the client's body itself fails: malformed
/// chunked framing, a body cut short, a client that went away mid-upload. It is the
/// client's fault, never the upstream's, whatever the upstream call then reports.
#[derive(Debug, thiserror::Error)]
#[error("the client's request body could not be read")]
pub struct ClientBodyError {
    /// The connection ended before the body did: the client went away.
    pub aborted: bool,
    /// What reading the body reported.
    #[source]
    pub source: crate::base::body::BoxError,
}

impl ClientBodyError {
    /// The client went away when reading ended early (end of file, reset); any other
    /// failure is malformed framing.
    fn new(source: crate::base::body::BoxError) -> Self {
        let mut aborted = false;
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
        while let Some(current) = cause {
            aborted |= current
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_incomplete_message)
                || current.downcast_ref::<std::io::Error>().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                    )
                });
            cause = current.source();
        }
        Self { aborted, source }
    }
}

/// A request body that fails with [`BodyTooLarge`] as soon as more than `limit` bytes
/// have streamed through, so a chunked body cannot slip past the declared-length check,
/// and with [`ClientBodyError`] when the client's body fails.
#[derive(Debug)]
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    /// Where the bytes read so far are counted, when a record wants them.
    counted: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Where the first bytes are kept, when the audit log wants them.
    sampled: Option<std::sync::Arc<std::sync::Mutex<BodySample>>>,
}

impl<B> LimitedBody<B> {
    /// Limits `inner` to `limit` bytes.
    pub fn new(inner: B, limit: u64) -> Self {
        Self {
            inner,
            remaining: limit,
            limit,
            counted: None,
            sampled: None,
        }
    }

    /// The same body, adding the bytes it reads to `counter`, if any.
    pub fn counting(
        mut self,
        counter: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    ) -> Self {
        self.counted = counter;
        self
    }

    /// The same body, keeping its first bytes in `sample`, if any.
    pub fn sampling(
        mut self,
        sample: Option<std::sync::Arc<std::sync::Mutex<BodySample>>>,
    ) -> Self {
        self.sampled = sample;
        self
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<crate::base::body::BoxError>,
{
    type Data = Bytes;
    type Error = crate::base::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.remaining = 0;
                        return Poll::Ready(Some(Err(BodyTooLarge { limit: this.limit }.into())));
                    }
                    this.remaining -= len;
                    if let Some(counted) = &this.counted {
                        counted.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                    }
                    if let Some(sample) = &this.sampled
                        && let Ok(mut sample) = sample.lock()
                    {
                        sample.take(data);
                    }
                } else if frame.is_trailers() {
                    // A trailer section is never forwarded: its fields would pass none of
                    // the checks the head's do (an HTTP/2 upstream's client would send them).
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(ClientBodyError::new(error.into()).into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use proptest::prelude::*;

    fn hygiene() -> Hygiene {
        Hygiene::new(Limits {
            max_body_bytes: 10,
            max_uri_bytes: 64,
            max_header_bytes: 200,
            max_headers: 5,
        })
    }

    fn kind_of<B>(request: &Request<B>) -> Option<ProblemKind> {
        hygiene().check(request).err().map(|p| p.kind())
    }

    #[test]
    fn refuses_dot_segments_in_every_encoding() {
        for path in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/a/..",
            "/a/%2e%2e/b",
            "/a/%2E%2e/b",
            "/a/.%2e/b",
            "/a/%252e%252e/b",
            "/a/..%2fb",
            "/a/%2e%2e%2fb",
            "/a/..;/b",
            "/%2e",
        ] {
            assert_eq!(check_path(path), Err(PathError::DotSegment), "{path}");
        }
    }

    #[test]
    fn refuses_nul_backslash_and_bad_escapes() {
        assert_eq!(check_path("/a%00b"), Err(PathError::Nul));
        assert_eq!(check_path("/a%2500b"), Err(PathError::Nul));
        assert_eq!(check_path("/a\\b"), Err(PathError::Backslash));
        assert_eq!(check_path("/a%5cb"), Err(PathError::Backslash));
        assert_eq!(check_path("/a%255cb"), Err(PathError::Backslash));
        assert_eq!(check_path("/a%zzb"), Err(PathError::BadPercentEncoding));
        assert_eq!(check_path("/a%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(check_path("/a/%c0%ae%c0%ae/b"), Err(PathError::NotUtf8));
        assert_eq!(check_path("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn refuses_raw_characters_a_uri_holds_only_encoded_rfc_3986_2() {
        assert_eq!(check_path("/adm\u{131}n"), Err(PathError::NotEncoded));
        assert_eq!(check_path("/caf\u{e9}"), Err(PathError::NotEncoded));
        assert_eq!(check_path("/a b"), Err(PathError::NotEncoded));
        assert_eq!(check_path("/a\tb"), Err(PathError::NotEncoded));
        assert_eq!(check_path("/caf%C3%A9"), Ok(()));
    }

    #[test]
    fn refuses_what_upstreams_would_normalise_after_routing() {
        assert_eq!(
            check_path("/%61dmin/users"),
            Err(PathError::EncodedUnreserved)
        );
        assert_eq!(
            check_path("/%2561dmin/users"),
            Err(PathError::EncodedUnreserved)
        );
        assert_eq!(check_path("/admin;x/users"), Err(PathError::PathParameter));
        assert_eq!(
            check_path("/admin%3bx/users"),
            Err(PathError::PathParameter)
        );
        assert_eq!(check_path("//admin/users"), Err(PathError::EmptySegment));
        assert_eq!(check_path("/a//b"), Err(PathError::EmptySegment));
        assert_eq!(
            check_path("/a/b%2Fc"),
            Ok(()),
            "an encoded slash inside a segment stays allowed"
        );
        assert_eq!(
            check_path("/a/%25252e%25252e/b"),
            Err(PathError::TooManyEncodings)
        );
    }

    #[test]
    fn a_stray_percent_does_not_hide_a_double_encoding() {
        assert_eq!(
            check_path("/files/%252e%252e/secret/%25zz"),
            Err(PathError::DotSegment)
        );
        assert_eq!(check_path("/a%2500b%25"), Err(PathError::Nul));
        assert_eq!(check_path("/a%255cb%25"), Err(PathError::Backslash));
    }

    #[test]
    fn accepts_ordinary_paths() {
        for path in [
            "/",
            "/v1/positions",
            "/v1/positions/SKU-1.json",
            "/a/.well-known/x",
            "/a/...",
            "/a/..b",
            "/files/a%2Fb",
            "/100%25",
            "/caf%C3%A9",
            "/a/",
            "/files/a%2Fb%20c",
        ] {
            assert_eq!(check_path(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn method_rules() {
        let req = |m: &str| {
            Request::builder()
                .method(m)
                .uri("/")
                .header("host", "h")
                .body(())
                .unwrap()
        };
        assert_eq!(kind_of(&req("GET")), None);
        assert_eq!(kind_of(&req("PATCH")), None);
        assert_eq!(kind_of(&req("TRACE")), Some(ProblemKind::MethodNotAllowed));
        assert_eq!(
            kind_of(&req("CONNECT")),
            Some(ProblemKind::MethodNotAllowed)
        );
        assert_eq!(
            kind_of(&req("PROPFIND")),
            Some(ProblemKind::MethodNotImplemented)
        );
    }

    #[test]
    fn size_rules() {
        let long = Request::builder()
            .header("host", "h")
            .uri(format!("/{}", "a".repeat(64)))
            .body(())
            .unwrap();
        assert_eq!(kind_of(&long), Some(ProblemKind::UriTooLong));

        let mut many = Request::builder().uri("/").header("host", "h");
        for i in 0..5 {
            many = many.header(format!("x-h{i}"), "v");
        }
        assert_eq!(
            kind_of(&many.body(()).unwrap()),
            Some(ProblemKind::HeadersTooLarge)
        );

        let big = Request::builder()
            .uri("/")
            .header("host", "h")
            .header("x-big", "v".repeat(201))
            .body(())
            .unwrap();
        assert_eq!(kind_of(&big), Some(ProblemKind::HeadersTooLarge));

        let declared = |v: &str| {
            Request::builder()
                .uri("/")
                .header("host", "h")
                .header("content-length", v)
                .body(())
                .unwrap()
        };
        assert_eq!(kind_of(&declared("10")), None);
        assert_eq!(kind_of(&declared("11")), Some(ProblemKind::BodyTooLarge));
        assert_eq!(kind_of(&declared("-1")), Some(ProblemKind::BadRequest));
        assert_eq!(kind_of(&declared("1e3")), Some(ProblemKind::BadRequest));
    }

    #[test]
    fn host_rules_rfc_9112_3_2() {
        let http11 = |hosts: &[&str]| {
            let mut builder = Request::builder().uri("/");
            for host in hosts {
                builder = builder.header("host", *host);
            }
            builder.body(()).unwrap()
        };
        assert_eq!(kind_of(&http11(&["api.example"])), None);
        assert_eq!(kind_of(&http11(&["api.example:8443"])), None);
        assert_eq!(kind_of(&http11(&["[::1]:80"])), None);
        for bad in [
            &[][..],
            &["a.example", "b.example"],
            &["user@api.example"],
            &["api.example:99999"],
            &["api.example:"],
            &["api.example/x"],
            &["[::1"],
            &["[nope]:80"],
            &[""],
            &["a b"],
        ] {
            assert_eq!(
                kind_of(&http11(bad)),
                Some(ProblemKind::BadRequest),
                "{bad:?}"
            );
        }
        let http10 = Request::builder()
            .version(Version::HTTP_10)
            .uri("/")
            .body(())
            .unwrap();
        assert_eq!(kind_of(&http10), None, "HTTP/1.0 may omit Host");
    }

    #[test]
    fn authority_rules_rfc_9113_8_3_1() {
        let h2 = |authority: &str, host: Option<&str>| {
            let mut builder = Request::builder()
                .version(Version::HTTP_2)
                .uri(format!("https://{authority}/x"));
            if let Some(host) = host {
                builder = builder.header("host", host);
            }
            builder.body(()).unwrap()
        };
        assert_eq!(kind_of(&h2("api.example", None)), None);
        assert_eq!(kind_of(&h2("api.example", Some("API.example"))), None);
        assert_eq!(
            kind_of(&h2("api.example", Some("evil.example"))),
            Some(ProblemKind::BadRequest)
        );
        assert_eq!(
            kind_of(&h2("user:pw@api.example", None)),
            Some(ProblemKind::BadRequest)
        );
    }

    #[test]
    fn only_chunked_is_accepted_rfc_9112_6_1() {
        let te = |value: &str| {
            Request::builder()
                .method("POST")
                .uri("/")
                .header("host", "h")
                .header("transfer-encoding", value)
                .body(())
                .unwrap()
        };
        assert_eq!(kind_of(&te("chunked")), None);
        assert_eq!(kind_of(&te("Chunked")), None);
        for bad in [
            "gzip, chunked",
            "chunked, chunked",
            "identity",
            "x-custom, chunked",
        ] {
            assert_eq!(
                kind_of(&te(bad)),
                Some(ProblemKind::TransferCodingNotImplemented),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn limited_body_passes_up_to_the_limit() {
        let body = LimitedBody::new(Full::new(Bytes::from_static(b"0123456789")), 10);
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected.len(), 10);
    }

    /// A body that yields `count` chunks of `chunk`, as a chunked upload would.
    struct Chunks {
        chunk: &'static [u8],
        count: usize,
    }

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.count == 0 {
                return Poll::Ready(None);
            }
            self.count -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(self.chunk)))))
        }
    }

    #[tokio::test]
    async fn limited_body_fails_when_a_stream_overruns() {
        let body = LimitedBody::new(
            Chunks {
                chunk: b"abc",
                count: 5,
            },
            10,
        );
        let error = body.collect().await.unwrap_err();
        assert!(error.downcast_ref::<BodyTooLarge>().is_some());
    }

    proptest! {
        #[test]
        fn never_panics(path in "\\PC*") {
            let _ = check_path(&path);
        }

        #[test]
        fn clean_segments_are_accepted(segments in prop::collection::vec("[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,12}", 0..6)) {
            let path = format!("/{}", segments.join("/"));
            prop_assume!(segments.iter().all(|s| s != "." && s != ".."));
            prop_assert_eq!(check_path(&path), Ok(()));
        }

        #[test]
        fn an_encoded_dot_segment_anywhere_is_refused(
            before in prop::collection::vec("[a-z0-9]{1,8}", 0..4),
            after in prop::collection::vec("[a-z0-9]{1,8}", 0..4),
            dots in prop::sample::select(vec![".", "..", "%2e", "%2E%2e", ".%2e", "%252e%252E", "%252e", "..;p", "%2e%2e%3bx"]),
        ) {
            let mut segments = before.clone();
            segments.push(dots.to_string());
            segments.extend(after);
            let path = format!("/{}", segments.join("/"));
            prop_assert_eq!(check_path(&path), Err(PathError::DotSegment));
        }

        #[test]
        fn accepted_paths_have_no_dot_segment_after_two_decodings(path in "/[a-z%.2e5cE/;]{0,24}") {
            if check_path(&path).is_ok() {
                let mut text = path.clone().into_bytes();
                for _ in 0..2 {
                    if let Some(decoded) = percent_decode(&text) { text = decoded; }
                    let s = String::from_utf8_lossy(&text).to_string();
                    for seg in s.split('/') {
                        let name = seg.split(';').next().unwrap_or_default();
                        prop_assert!(name != "." && name != "..", "{} decodes to a dot segment", path);
                    }
                }
            }
        }
    }

    #[test]
    fn allowed_hosts_match_host_and_port_in_any_case() {
        let entries = [
            "localhost:8080",
            "127.0.0.1:8080",
            "MCP.example.com",
            "[::1]:8080",
        ];
        let allowed = AllowedHosts::parse(&entries.map(String::from)).expect("valid entries");
        for named in [
            "localhost:8080",
            "LocalHost:8080",
            "127.0.0.1:8080",
            "mcp.example.com",
            "mcp.example.com:443",
            "[::1]:8080",
        ] {
            assert!(allowed.admits(named.as_bytes()), "{named}");
        }
        for named in [
            "localhost",
            "localhost:8081",
            "127.0.0.1",
            "evil.example:8080",
            "mcp.example.com.",
            "xmcp.example.com",
            "[::1]",
            "[::2]:8080",
        ] {
            assert!(!allowed.admits(named.as_bytes()), "{named}");
        }
        assert_eq!(
            AllowedHosts::parse(&["http://x".to_owned()]),
            Err("http://x".to_owned())
        );
    }

    /// RFC 9110 §15.5.20: 421 for a host not served here, whether `Host` names it, an
    /// HTTP/1.1 absolute-form target (which wins over `Host`, RFC 9112 §3.2.2) or HTTP/2's
    /// `:authority`; and for a request that names no host at all (HTTP/1.0).
    #[test]
    fn hosts_not_allowed_are_misdirected_rfc_9110_15_5_20() {
        let allowed = AllowedHosts::parse(&["localhost:8080".to_owned()]).ok();
        let hygiene = hygiene().with_allowed_hosts(allowed);
        let kind = |request: Request<()>| hygiene.check(&request).err().map(|p| p.kind());
        let with_host = |host: &str| {
            Request::builder()
                .uri("/x")
                .header("host", host)
                .body(())
                .unwrap()
        };
        assert_eq!(kind(with_host("localhost:8080")), None);
        assert_eq!(
            kind(with_host("evil.example")),
            Some(ProblemKind::MisdirectedRequest)
        );
        let absolute = Request::builder()
            .uri("http://evil.example/x")
            .header("host", "localhost:8080")
            .body(())
            .unwrap();
        assert_eq!(kind(absolute), Some(ProblemKind::MisdirectedRequest));
        let h2 = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://evil.example/x")
            .body(())
            .unwrap();
        assert_eq!(kind(h2), Some(ProblemKind::MisdirectedRequest));
        let h2_allowed = Request::builder()
            .version(Version::HTTP_2)
            .uri("https://localhost:8080/x")
            .body(())
            .unwrap();
        assert_eq!(kind(h2_allowed), None);
        let http10 = Request::builder()
            .version(Version::HTTP_10)
            .uri("/x")
            .body(())
            .unwrap();
        assert_eq!(kind(http10), Some(ProblemKind::MisdirectedRequest));
    }
}
