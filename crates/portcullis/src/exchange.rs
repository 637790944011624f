//! The exchange record: one per request, created when its head is read, filled by the
//! stages as the request goes, and finished in one place, when the response body ends or
//! is dropped. Finished records go, through a bounded channel, to sinks (the access log
//! now; the audit log, metrics and alerts later) on a thread of their own, off the request
//! path.
//!
//! Clients see problem+json; the record keeps the precise internal [`Decision`].

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;

/// What the gateway decided about a request, or what became of it: one stable
/// `snake_case` code each, kept inside the gateway (clients see the same 401 for an
/// unknown, an expired and a revoked token; the record tells them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decision {
    /// Forwarded (or answered by the gateway itself, as `/health` is), whatever the
    /// upstream then answered.
    #[default]
    Allowed,
    /// No credential was sent.
    AuthMissing,
    /// The `Authorization` header is not one well-formed bearer token.
    AuthMalformed,
    /// A well-formed token that no store or static list knows.
    AuthUnknown,
    /// A managed token past its expiry (or its rotation overlap).
    AuthExpired,
    /// A revoked managed token.
    AuthRevoked,
    /// A capability path with no live capability in it.
    CapabilityUnknown,
    /// The caller lacks the route's scope for the method.
    Scope,
    /// The route's address rules refuse the client.
    IpDenied,
    /// The client's address is banned after failed authentications.
    Banned,
    /// Over a rate limit.
    RateLimited,
    /// A CORS preflight refused, or answered.
    CorsRefused,
    /// A preflight the gateway answered itself.
    CorsPreflight,
    /// The path breaks a hygiene rule.
    PathRefused,
    /// The method is refused (`TRACE`, `CONNECT`, or not a standard one).
    MethodRefused,
    /// The request target is too long.
    UriTooLong,
    /// Too many header fields, or too many bytes of them.
    HeadersTooLarge,
    /// The body is larger than the limit, declared or streamed.
    BodyTooLarge,
    /// The request is malformed: its host, its transfer coding, its `Content-Length`.
    BadRequest,
    /// The request head did not arrive in time.
    HeadTimeout,
    /// The client's body could not be read: malformed chunked framing, cut short.
    ClientBodyError,
    /// The client went away before its response was sent whole.
    ClientAborted,
    /// No route covers the path.
    NoRoute,
    /// The credential store could not be asked.
    StoreUnavailable,
    /// The shared rate-limit backend could not be asked, and limited routes are refused.
    RateLimitUnavailable,
    /// The upstream's in-flight cap was reached.
    UpstreamBusy,
    /// The upstream could not be reached, or failed mid-request.
    UpstreamConnect,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream answered with something the gateway cannot relay.
    UpstreamProtocol,
    /// `/ready` found something unreachable.
    NotReady,
}

impl Decision {
    /// The code, as the access log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::AuthMissing => "auth_missing",
            Self::AuthMalformed => "auth_malformed",
            Self::AuthUnknown => "auth_unknown",
            Self::AuthExpired => "auth_expired",
            Self::AuthRevoked => "auth_revoked",
            Self::CapabilityUnknown => "capability_unknown",
            Self::Scope => "scope",
            Self::IpDenied => "ip_denied",
            Self::Banned => "banned",
            Self::RateLimited => "rate_limited",
            Self::CorsRefused => "cors_refused",
            Self::CorsPreflight => "cors_preflight",
            Self::PathRefused => "path_refused",
            Self::MethodRefused => "method_refused",
            Self::UriTooLong => "uri_too_long",
            Self::HeadersTooLarge => "headers_too_large",
            Self::BodyTooLarge => "body_too_large",
            Self::BadRequest => "bad_request",
            Self::HeadTimeout => "head_timeout",
            Self::ClientBodyError => "client_body_error",
            Self::ClientAborted => "client_aborted",
            Self::NoRoute => "no_route",
            Self::StoreUnavailable => "store_unavailable",
            Self::RateLimitUnavailable => "rate_limit_unavailable",
            Self::UpstreamBusy => "upstream_busy",
            Self::UpstreamConnect => "upstream_connect",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamProtocol => "upstream_protocol",
            Self::NotReady => "not_ready",
        }
    }
}

/// Who made a request, as the record keeps it: never a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `static`, `token` or `capability`.
    pub kind: &'static str,
    /// The managed credential's id; none for a static token.
    pub id: Option<String>,
    /// The name rate limits and logs know the caller by.
    pub name: std::borrow::Cow<'static, str>,
    /// The tenant, if any.
    pub tenant: Option<String>,
}

/// One request, as it went.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request's id.
    pub request_id: String,
    /// When the head was read.
    pub started: SystemTime,
    /// The same moment, for durations.
    pub started_at: Instant,
    /// The client's address, when known (behind trusted proxies it may not be).
    pub client_ip: Option<IpAddr>,
    /// The TCP peer the request came through.
    pub peer: IpAddr,
    /// The method; none when the head never arrived whole.
    pub method: Option<http::Method>,
    /// The route's configured prefix (never the raw path), once matched.
    pub route: Option<String>,
    /// The path, with a capability segment masked.
    pub path: String,
    /// The query, with sensitive values masked.
    pub query: Option<String>,
    /// Who called, once authenticated.
    pub caller: Option<Caller>,
    /// The upstream's name, once forwarded.
    pub upstream: Option<String>,
    /// The status sent.
    pub status: u16,
    /// What the gateway decided.
    pub decision: Decision,
    /// Request body bytes read from the client.
    pub bytes_in: Arc<AtomicU64>,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From the head read to the response head.
    pub to_head: Duration,
    /// From the head read to the last byte (or the client going away).
    pub duration: Duration,
    /// `HTTP/1.1` or `HTTP/2`, with `+tls` when the connection is TLS.
    pub protocol: &'static str,
    /// The `User-Agent` as sent (a shared copy of the header's bytes); sinks show at most
    /// [`USER_AGENT_MAX`] characters of it.
    pub user_agent: Option<http::HeaderValue>,
}

/// The most characters of a `User-Agent` a record keeps.
pub const USER_AGENT_MAX: usize = 200;

/// Where finished records go. Sinks run on the recorder's thread, one record at a time.
pub trait Sink: Send {
    /// Takes one finished record.
    fn record(&mut self, exchange: &Exchange);
    /// Called when no record is waiting: write out what is buffered.
    fn flush(&mut self) {}
}

/// Hands finished records to the sinks, off the request path: a bounded channel to one
/// thread, which wakes every [`BATCH_INTERVAL`] to write what has come (so a request never
/// pays for waking it). A worker never waits for a sink: when the channel is full the
/// record is counted as dropped ([`Recorder::dropped`]).
#[derive(Debug, Clone)]
pub struct Recorder {
    sender: SyncSender<Message>,
    dropped: Arc<AtomicU64>,
    thread: std::thread::Thread,
}

/// What the recorder's thread is sent.
enum Message {
    /// A finished record.
    Record(Box<Exchange>),
    /// Write out everything sent before, then answer.
    Flush(SyncSender<()>),
}

/// How many finished records may wait for the sinks.
const QUEUE: usize = 65_536;

/// How often the recorder's thread writes what has come.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(50);

impl Recorder {
    /// Starts the thread that feeds `sinks`; it ends when every recorder is dropped.
    pub fn start(sinks: Vec<Box<dyn Sink>>) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let mut sinks = sinks;
        let handle = std::thread::Builder::new()
            .name("portcullis-recorder".to_owned())
            .spawn(move || drain(&receiver, &mut sinks))?;
        Ok(Self {
            sender,
            dropped: Arc::new(AtomicU64::new(0)),
            thread: handle.thread().clone(),
        })
    }

    /// Hands `exchange` to the sinks, or counts it as dropped when they are behind.
    pub fn finish(&self, exchange: Exchange) {
        match self.sender.try_send(Message::Record(Box::new(exchange))) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Waits (at most `timeout`) until every record finished so far is written out: at
    /// shutdown, so the last records are not lost with the process.
    pub fn flush(&self, timeout: Duration) {
        let (done, flushed) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut message = Message::Flush(done);
        // A full queue drains at the next batch; keep offering until there is room.
        loop {
            match self.sender.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    self.thread.unpark();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        self.thread.unpark();
        let _ = flushed.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// Records dropped because the sinks could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A response body that finishes its request's record when it ends, fails, or is dropped
/// unsent (the client went away): the one place a record is finished.
pub struct RecordedBody<B> {
    inner: B,
    /// The record and where it goes; taken when finished.
    pending: Option<(Exchange, Recorder)>,
    bytes_out: u64,
    /// A response that is sent without its body (to `HEAD`, a 204 or a 304): dropping the
    /// body unread is how it ends, not a client leaving.
    bodiless: bool,
}

impl<B: Body> RecordedBody<B> {
    /// Wraps the body of the response `exchange` describes.
    pub fn new(inner: B, exchange: Exchange, recorder: Recorder) -> Self {
        let bodiless = exchange.method == Some(http::Method::HEAD)
            || matches!(exchange.status, 204 | 304)
            || inner.is_end_stream();
        Self {
            inner,
            pending: Some((exchange, recorder)),
            bytes_out: 0,
            bodiless,
        }
    }
}

impl<B> RecordedBody<B> {
    /// Finishes the record once; `decision` replaces an `allowed` one (a client that went
    /// away, an upstream that failed mid-body), never a refusal.
    fn finish(&mut self, decision: Option<Decision>) {
        if let Some((mut exchange, recorder)) = self.pending.take() {
            exchange.bytes_out = self.bytes_out;
            exchange.duration = exchange.started_at.elapsed();
            if let Some(decision) = decision
                && exchange.decision == Decision::Allowed
            {
                exchange.decision = decision;
            }
            recorder.finish(exchange);
        }
    }
}

impl<B> Drop for RecordedBody<B> {
    fn drop(&mut self) {
        let left = (!self.bodiless).then_some(Decision::ClientAborted);
        self.finish(left);
    }
}

impl<B> Body for RecordedBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes_out += data.len() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Some(Decision::UpstreamConnect)),
            Poll::Ready(None) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Every [`BATCH_INTERVAL`] (or when woken for a flush), feeds what has come to every
/// sink and flushes them; ends, flushed, when every recorder is gone.
fn drain(receiver: &Receiver<Message>, sinks: &mut [Box<dyn Sink>]) {
    loop {
        std::thread::park_timeout(BATCH_INTERVAL);
        loop {
            match receiver.try_recv() {
                Ok(Message::Record(exchange)) => {
                    for sink in sinks.iter_mut() {
                        sink.record(&exchange);
                    }
                }
                Ok(Message::Flush(done)) => {
                    for sink in sinks.iter_mut() {
                        sink.flush();
                    }
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    for sink in sinks.iter_mut() {
                        sink.flush();
                    }
                    return;
                }
            }
        }
        for sink in sinks.iter_mut() {
            sink.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Collect(Arc<Mutex<Vec<String>>>);

    impl Sink for Collect {
        fn record(&mut self, exchange: &Exchange) {
            self.0
                .lock()
                .unwrap()
                .push(exchange.decision.as_str().to_owned());
        }
    }

    fn exchange(decision: Decision) -> Exchange {
        Exchange {
            request_id: "r".into(),
            started: SystemTime::now(),
            started_at: Instant::now(),
            client_ip: None,
            peer: IpAddr::from([127, 0, 0, 1]),
            method: Some(http::Method::GET),
            route: None,
            path: "/".into(),
            query: None,
            caller: None,
            upstream: None,
            status: 200,
            decision,
            bytes_in: Arc::default(),
            bytes_out: 0,
            to_head: Duration::ZERO,
            duration: Duration::ZERO,
            protocol: "HTTP/1.1",
            user_agent: None,
        }
    }

    #[test]
    fn records_reach_every_sink_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder::start(vec![Box::new(Collect(seen.clone()))]).unwrap();
        recorder.finish(exchange(Decision::Allowed));
        recorder.finish(exchange(Decision::AuthExpired));
        recorder.flush(Duration::from_secs(5));
        assert_eq!(*seen.lock().unwrap(), ["allowed", "auth_expired"]);
        assert_eq!(recorder.dropped(), 0);
    }

    #[test]
    fn codes_are_snake_case_and_distinct() {
        let all = [
            Decision::Allowed,
            Decision::AuthMissing,
            Decision::AuthMalformed,
            Decision::AuthUnknown,
            Decision::AuthExpired,
            Decision::AuthRevoked,
            Decision::CapabilityUnknown,
            Decision::Scope,
            Decision::ClientBodyError,
            Decision::UpstreamConnect,
        ];
        let codes: std::collections::HashSet<_> = all.iter().map(|d| d.as_str()).collect();
        assert_eq!(codes.len(), all.len());
        assert!(
            codes
                .iter()
                .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
    }
}
