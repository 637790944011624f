//! The body types that flow through the gateway.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;

use crate::base::stall::Stall;

/// The error type carried by streamed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every response the gateway sends: an upstream's streamed body, or one
/// the gateway wrote itself.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Whether a message's `Transfer-Encoding` is absent or names `chunked` alone, once: the
/// only coding the gateway decodes (RFC 9112 §6.1). Any other would be dropped with the
/// hop-by-hop header and the body relayed still coded.
pub fn is_framed_plainly(headers: &http::HeaderMap) -> bool {
    let mut chunked = 0;
    for value in headers.get_all(http::header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|b| *b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            if !coding.eq_ignore_ascii_case(b"chunked") || chunked > 0 {
                return false;
            }
            chunked += 1;
        }
    }
    true
}

/// A response body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// The error a stream's body ends with when the gateway closes it, with the decision its
/// record keeps (`stream_idle`, `stream_lifetime`, `stream_revoked`).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the gateway closed the stream ({})", .0.as_str())]
pub struct StreamClosed(pub crate::base::exchange::Decision);

/// A response body with nothing in it.
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A response body whose source must send each next piece within `timeout`, as nginx's
/// `proxy_read_timeout` asks of an upstream: one that stalls mid-body ends with an error
/// (decision `upstream_timeout`), which closes the client's connection (or resets its
/// HTTP/2 stream), rather than holding it, and the upstream's in-flight slot, for ever.
/// Only a wait on the source counts: the body is not polled while the client is not
/// taking what it was given.
pub struct PacedBody {
    inner: ResponseBody,
    stall: Stall,
}

impl PacedBody {
    /// `inner`, whose source has `timeout` for each next piece.
    pub fn new(inner: ResponseBody, timeout: std::time::Duration) -> Self {
        Self {
            inner,
            stall: Stall::new(timeout),
        }
    }
}

impl Body for PacedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            self.stall.progressed();
            return polled;
        }
        if self.stall.over(cx) {
            return Poll::Ready(Some(Err(Box::new(StreamClosed(
                crate::base::exchange::Decision::UpstreamTimeout,
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that holds `G` (a slot, a permit) until the body ends or is dropped.
pub struct HoldingBody<G> {
    body: ResponseBody,
    _held: G,
}

impl<G> HoldingBody<G> {
    /// `body`, holding `held`.
    pub fn new(body: ResponseBody, held: G) -> Self {
        Self { body, _held: held }
    }
}

impl<G: Unpin> Body for HoldingBody<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A client's request body. Dropped before its end (refused, or cut off at the body limit),
/// it is parked in its [`Parking`], when it has one, so that the connection keeps it until
/// the response has been sent: HTTP/2 then ends the stream with `RST_STREAM(NO_ERROR)` after
/// the complete response (RFC 9113 §8.1), where dropping it at once would reset the stream
/// (`CANCEL`) before the answer, and clients report a protocol error instead of a 413.
pub struct RequestBody {
    inner: Option<Incoming>,
    parking: Option<Parking>,
    chunked_end: Option<ChunkedEnd>,
}

/// How far an HTTP/1.1 chunked request body was read: whether its end came, and whether a
/// trailer section came with it. hyper's parser ends a trailer line only at CRLF, where a
/// front proxy may also take a bare LF (RFC 9112 §2.2, §7.1.2): after a trailer section,
/// or a body left unread (which hyper reads on, trailers and all, before the next request),
/// the two could disagree where the next request starts, so the connection is not kept.
#[derive(Debug, Clone, Default)]
pub struct ChunkedEnd(Arc<AtomicU8>);

const BODY_ENDED: u8 = 1;
const TRAILERS_CAME: u8 = 2;

impl ChunkedEnd {
    /// Whether the body was read to its end, with no trailer section.
    pub fn ended_plainly(&self) -> bool {
        self.0.load(Ordering::Acquire) == BODY_ENDED
    }

    fn note(&self, what: u8) {
        self.0.fetch_or(what, Ordering::AcqRel);
    }
}

/// Where a [`RequestBody`] dropped before its end is kept.
#[derive(Debug, Clone, Default)]
pub struct Parking(Arc<Mutex<Option<Incoming>>>);

impl Parking {
    /// The body parked here, if one was.
    pub fn take(&self) -> Option<Incoming> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Most bytes of an unread request body read and discarded after its refusal, and for how
/// long, so that an uploader still sending can finish and read the answer (as nginx's
/// lingering close); past either, the stream is reset.
const DRAIN_MAX_BYTES: u64 = 16 * 1024 * 1024;
const DRAIN_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads and discards what is left of `unread` (within bounds) on a task of its own, and
/// lets it go only once the guard returned is dropped, with the response it is attached to:
/// an HTTP/2 uploader finishes its upload and reads the whole refusal, and a stream reset
/// (`NO_ERROR`) never comes before the answer.
pub fn drain_after_response(mut unread: Incoming) -> tokio::sync::oneshot::Sender<()> {
    let (sent, response_sent) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let drain = async {
            let mut drained = 0u64;
            while drained <= DRAIN_MAX_BYTES {
                match unread.frame().await {
                    Some(Ok(frame)) => {
                        drained += frame.data_ref().map_or(0, |data| data.len() as u64);
                    }
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_MAX_TIME, drain).await;
        // Until the response has been sent: the guard is dropped with its body.
        let _ = response_sent.await;
        drop(unread);
    });
    sent
}

impl RequestBody {
    /// `inner`, parked in `parking` (when some) if dropped before its end, telling
    /// `chunked_end` (when some) how it ends.
    pub fn new(inner: Incoming, parking: Option<Parking>, chunked_end: Option<ChunkedEnd>) -> Self {
        Self {
            inner: Some(inner),
            parking,
            chunked_end,
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        if let (Some(inner), Some(parking)) = (self.inner.take(), &self.parking)
            && !inner.is_end_stream()
        {
            *parking.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(inner);
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if let Some(end) = &this.chunked_end {
            match &polled {
                Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => end.note(TRAILERS_CAME),
                // Its reader may stop at the last data frame, without asking again.
                Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => end.note(BODY_ENDED),
                Poll::Ready(None) => end.note(BODY_ENDED),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
