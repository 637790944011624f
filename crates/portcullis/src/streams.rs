//! Caps on open streams: WebSockets, and responses still streaming after their head
//! (`text/event-stream`, or no length). A stream holds no request slot (`max_in_flight` is
//! for requests waiting on a response head), so these caps bound them instead: per
//! upstream (`max_streams`) and per caller (`[limits] max_streams_per_principal`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::base::body::{BoxError, ResponseBody, StreamClosed};
use crate::base::exchange::Decision;

/// The limits a route's open streams are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// No byte (either way, for a WebSocket) for this long closes it.
    pub idle_timeout: Duration,
    /// It is closed this long after it opened.
    pub max_lifetime: Duration,
    /// Most payload bytes of one WebSocket message, either way.
    pub max_message_bytes: u64,
}

/// An open stream's idle and lifetime deadlines, shared by WebSockets and streaming
/// responses.
pub struct StreamTimers {
    idle_timeout: Duration,
    last_activity: Instant,
    idle: Pin<Box<Sleep>>,
    lifetime: Pin<Box<Sleep>>,
}

impl StreamTimers {
    /// The deadlines of a stream opening now, held to `limits`.
    pub fn start(limits: &StreamLimits) -> Self {
        let now = Instant::now();
        Self {
            idle_timeout: limits.idle_timeout,
            last_activity: now,
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            lifetime: Box::pin(tokio::time::sleep_until(now + limits.max_lifetime)),
        }
    }

    /// Something passed: the idle timeout counts from now.
    pub fn touch(&mut self) {
        self.last_activity = Instant::now();
    }

    /// Whether the stream's lifetime ran out.
    pub fn lifetime_over(&mut self, cx: &mut Context<'_>) -> bool {
        self.lifetime.as_mut().poll(cx).is_ready()
    }

    /// Whether nothing passed for the idle timeout.
    pub fn idled(&mut self, cx: &mut Context<'_>) -> bool {
        // The timer is moved only when it fires: resetting it on every chunk would cost
        // more than the chunk.
        while self.idle.as_mut().poll(cx).is_ready() {
            let due = self.last_activity + self.idle_timeout;
            if due <= Instant::now() {
                return true;
            }
            self.idle.as_mut().reset(due);
        }
        false
    }
}

/// Resolves when what let a stream open no longer holds (its credential was revoked, its
/// client banned).
pub type Revoked = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A response that streams, held to its route's limits: it ends with an error (which
/// closes an HTTP/1.1 connection, or resets an HTTP/2 stream) when nothing came for the
/// idle timeout, at its lifetime, or when what let it open no longer holds; the error
/// carries the decision its record keeps. It holds its stream slots until it ends.
pub struct WatchedStream {
    inner: ResponseBody,
    _slots: StreamSlots,
    timers: StreamTimers,
    revoked: Revoked,
}

impl WatchedStream {
    /// `inner`, held to `limits`, closed when `revoked` resolves, holding `slots`.
    pub fn new(
        inner: ResponseBody,
        limits: StreamLimits,
        revoked: Revoked,
        slots: StreamSlots,
    ) -> Self {
        Self {
            inner,
            _slots: slots,
            timers: StreamTimers::start(&limits),
            revoked,
        }
    }

    fn closed(decision: Decision) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(Some(Err(Box::new(StreamClosed(decision)))))
    }
}

impl Body for WatchedStream {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.revoked.as_mut().poll(cx).is_ready() {
            return Self::closed(Decision::StreamRevoked);
        }
        if self.timers.lifetime_over(cx) {
            return Self::closed(Decision::StreamLifetime);
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            self.timers.touch();
            return polled;
        }
        if self.timers.idled(cx) {
            return Self::closed(Decision::StreamIdle);
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

/// Whether a response with `headers`, whose body's length is `length` when known, is a
/// stream: Server-Sent Events, or a body of no declared length.
pub fn is_stream(headers: &HeaderMap, length: Option<u64>) -> bool {
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(';')
                .next()
                .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/event-stream"))
        });
    event_stream || length.is_none()
}

/// Open streams per caller, over every worker.
#[derive(Debug)]
pub struct CallerStreams {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl CallerStreams {
    /// At most `max` open streams per caller.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more stream of `caller`, unless it has `max` open.
    pub fn try_open(&self, caller: &str) -> Option<CallerSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(caller.to_owned()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(CallerSlot {
            open: self.open.clone(),
            caller: caller.to_owned(),
        })
    }
}

/// One open stream of a caller; closing it (dropping) frees the slot.
#[derive(Debug)]
pub struct CallerSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Drop for CallerSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Callers with nothing open take no room.
                open.remove(&self.caller);
            }
        }
    }
}

/// Open streams to one upstream, over every worker.
#[derive(Debug)]
pub struct UpstreamStreams {
    slots: Arc<Semaphore>,
}

impl UpstreamStreams {
    /// At most `max` open streams.
    pub fn new(max: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// A slot for one more stream, unless `max` are open.
    pub fn try_open(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }
}

/// The slots one open stream holds, freed when it closes (is dropped).
#[derive(Debug, Default)]
pub struct StreamSlots {
    _upstream: Option<OwnedSemaphorePermit>,
    _caller: Option<CallerSlot>,
}

/// Which cap a stream would have gone over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The upstream's `max_streams`.
    Upstream,
    /// The caller's `max_streams_per_principal`.
    Caller,
}

/// Slots for one more stream to `upstream` by `caller`, from each cap there is.
pub fn open(
    upstream: Option<&UpstreamStreams>,
    callers: Option<&CallerStreams>,
    caller: &str,
) -> Result<StreamSlots, Exhausted> {
    let upstream_slot = match upstream {
        Some(streams) => Some(streams.try_open().ok_or(Exhausted::Upstream)?),
        None => None,
    };
    let caller_slot = match callers {
        Some(streams) => Some(streams.try_open(caller).ok_or(Exhausted::Caller)?),
        None => None,
    };
    Ok(StreamSlots {
        _upstream: upstream_slot,
        _caller: caller_slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_streams_and_bodies_of_no_length_are_streams() {
        let mut headers = HeaderMap::new();
        assert!(is_stream(&headers, None));
        assert!(!is_stream(&headers, Some(10)));
        headers.insert(
            header::CONTENT_TYPE,
            "Text/Event-Stream; charset=utf-8".parse().unwrap(),
        );
        assert!(is_stream(&headers, Some(10)));
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_stream(&headers, Some(10)));
    }

    #[test]
    fn each_cap_holds_and_frees_its_slots() {
        let upstream = UpstreamStreams::new(2);
        let callers = CallerStreams::new(1);
        let first = open(Some(&upstream), Some(&callers), "alice").unwrap();
        assert_eq!(
            open(Some(&upstream), Some(&callers), "alice").unwrap_err(),
            Exhausted::Caller
        );
        let second = open(Some(&upstream), Some(&callers), "bob").unwrap();
        assert_eq!(
            open(Some(&upstream), Some(&callers), "carol").unwrap_err(),
            Exhausted::Upstream
        );
        drop(first);
        assert!(open(Some(&upstream), Some(&callers), "alice").is_ok());
        drop(second);
        assert!(callers.open.lock().unwrap().is_empty(), "no room kept");
    }
}
