//! Deadlines for every phase of a connection, so that no client holds a connection slot
//! without using it.
//!
//! HTTP/1.1 ([`HeadDeadlineIo`]): hyper's own `header_read_timeout` closes the connection
//! without a word. A client that started a request and stalled should learn why, so this
//! wrapper around the connection's I/O keeps the clock itself:
//!
//! - a new connection must deliver a complete request head within `header_timeout`;
//! - after a response, an idle keep-alive connection is closed after `idle_timeout`, and
//!   once the next head's first byte arrives it must complete within `header_timeout`;
//! - while a request is being served (head parsed, response not yet finished) no head
//!   deadline runs, so slow uploads and long responses are governed by the request timeout;
//! - but a response the client stops taking (its receive window full, every write waiting)
//!   for `idle_timeout` closes the connection, as HTTP/2's stalled streams are sent GOAWAY:
//!   it would otherwise hold its connection, and the upstream's in-flight slot, for ever.
//!
//! When the deadline passes with part of a head received, a problem+json 408 is written and
//! the connection closed; with nothing received, the connection is closed silently.
//!
//! HTTP/2 ([`OpenStreams`]): a connection must open its first stream within
//! `header_timeout` of the TLS handshake (preface, SETTINGS and a complete HEADERS block),
//! and is told to go away (GOAWAY) once no stream has been open for `idle_timeout`
//! (RFC 9113 §3.4, §6.8).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::base::stall::Stall;

/// Whether the connection is between requests, shared by its reader and its service.
#[derive(Debug)]
pub struct RequestPhase {
    serving: AtomicBool,
    /// The connection was handed over to a WebSocket: no deadline of this module runs.
    upgraded: AtomicBool,
    responses_finished: AtomicU64,
    /// When the last response was finished, in milliseconds after `born`: the idle
    /// deadline runs from there.
    finished_ms: AtomicU64,
    born: Instant,
}

impl Default for RequestPhase {
    fn default() -> Self {
        Self {
            serving: AtomicBool::new(false),
            upgraded: AtomicBool::new(false),
            responses_finished: AtomicU64::new(0),
            finished_ms: AtomicU64::new(0),
            born: Instant::now(),
        }
    }
}

impl RequestPhase {
    /// The service was called: a head has been read.
    pub fn request_started(&self) {
        self.serving.store(true, Ordering::Release);
    }

    /// The connection now carries a WebSocket, whose own limits govern it.
    pub fn upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }

    /// The response body has been sent or dropped: the next head may come.
    pub fn response_finished(&self) {
        let at = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.finished_ms.store(at, Ordering::Relaxed);
        self.responses_finished.fetch_add(1, Ordering::AcqRel);
        self.serving.store(false, Ordering::Release);
    }

    /// When the last response was finished.
    fn finished_at(&self) -> Instant {
        self.born + Duration::from_millis(self.finished_ms.load(Ordering::Relaxed))
    }
}

/// Renders the 408 a stalled client is sent (a fresh request id each time).
pub type TimeoutReply = Arc<dyn Fn() -> Bytes + Send + Sync>;

/// Connection I/O that enforces the header-read and idle deadlines described above.
pub struct HeadDeadlineIo<T> {
    inner: T,
    phase: Arc<RequestPhase>,
    header_timeout: Duration,
    idle_timeout: Duration,
    seen_responses: u64,
    head_started: bool,
    /// The timer was put to the idle deadline for the request being served.
    armed_while_serving: bool,
    sleep: Pin<Box<Sleep>>,
    reply: TimeoutReply,
    /// The 408 being written, and how much of it has been.
    pending_reply: Option<(Bytes, usize)>,
    closed: bool,
    /// How long writes have waited on the client.
    write_stall: Stall,
}

impl<T> HeadDeadlineIo<T> {
    /// Wraps a freshly accepted connection.
    pub fn new(
        inner: T,
        phase: Arc<RequestPhase>,
        header_timeout: Duration,
        idle_timeout: Duration,
        reply: TimeoutReply,
    ) -> Self {
        Self {
            inner,
            phase,
            header_timeout,
            idle_timeout,
            seen_responses: 0,
            head_started: false,
            armed_while_serving: false,
            sleep: Box::pin(tokio::time::sleep(header_timeout)),
            reply,
            pending_reply: None,
            closed: false,
            write_stall: Stall::new(idle_timeout),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> HeadDeadlineIo<T> {
    /// While a request is served, no deadline runs, but the timer is kept due no later than
    /// the idle deadline could pass: the end of the response wakes nobody, and a client
    /// that sends nothing more would otherwise never be polled again, and never timed out.
    /// Due while still serving, it is put off again.
    fn watch_while_serving(&mut self, cx: &mut Context<'_>) {
        if !self.armed_while_serving || self.sleep.is_elapsed() {
            self.armed_while_serving = true;
            self.sleep
                .as_mut()
                .reset(Instant::now() + self.idle_timeout);
        }
        let _ = self.sleep.as_mut().poll(cx);
    }

    /// Writes the 408, then reports end of stream so hyper closes the connection.
    fn poll_send_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((reply, written)) = &mut self.pending_reply {
            if *written < reply.len() {
                match Pin::new(&mut self.inner).poll_write(cx, &reply[*written..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => self.pending_reply = None,
                    Poll::Ready(Ok(n)) => *written += n,
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                // A client that stopped reading must not hold the connection open.
                let _ = std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx));
                self.pending_reply = None;
            }
        }
        self.closed = true;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadDeadlineIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending_reply.is_some() {
            return this.poll_send_reply(cx);
        }
        if this.closed {
            return Poll::Ready(Ok(()));
        }
        if this.phase.upgraded.load(Ordering::Acquire) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.phase.serving.load(Ordering::Acquire) {
            let read = Pin::new(&mut this.inner).poll_read(cx, buf);
            if read.is_pending() {
                this.watch_while_serving(cx);
            }
            return read;
        }
        let finished = this.phase.responses_finished.load(Ordering::Acquire);
        if finished != this.seen_responses {
            // A response went out since we last looked: the connection is idle since then.
            this.seen_responses = finished;
            this.head_started = false;
            this.armed_while_serving = false;
            let idle_until = this.phase.finished_at() + this.idle_timeout;
            this.sleep.as_mut().reset(idle_until);
        }

        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && !this.head_started {
                    this.head_started = true;
                    if this.seen_responses > 0 {
                        this.sleep
                            .as_mut()
                            .reset(Instant::now() + this.header_timeout);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if this.head_started {
                    this.pending_reply = Some(((this.reply)(), 0));
                    this.poll_send_reply(cx)
                } else {
                    this.closed = true;
                    Poll::Ready(Ok(()))
                }
            }
        }
    }
}

impl<T> HeadDeadlineIo<T> {
    /// What a write the client keeps waiting returns: `Pending` until it has waited
    /// `idle_timeout` (an error then, which closes the connection), `written` as soon as it
    /// is not waiting. A WebSocket's own limits govern it once upgraded.
    fn watch_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if written.is_ready() || self.phase.upgraded.load(Ordering::Acquire) {
            self.write_stall.progressed();
            return written;
        }
        if self.write_stall.over(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing of the response for the idle timeout",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadDeadlineIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch_write(cx, flushed)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Told how the response body it is attached to (by [`GuardedBody`]) is being sent.
pub trait BodyProgress {
    /// The response head is ready for the client; from now on its body waits for the
    /// client to take it, unless a poll says it waits for the upstream.
    fn response_started(&mut self) {}
    /// The body was polled: `ready` when it gave a frame or ended, else it waits for the
    /// upstream.
    fn polled(&mut self, _ready: bool) {}
}

/// Marks the response to the request a [`RequestPhase`] is serving as finished when dropped.
pub struct PhaseGuard(Arc<RequestPhase>);

impl PhaseGuard {
    /// A guard for the request `phase` is serving.
    pub fn new(phase: Arc<RequestPhase>) -> Self {
        Self(phase)
    }
}

impl BodyProgress for PhaseGuard {}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        self.0.response_finished();
    }
}

/// The open streams of an HTTP/2 connection, shared by its service (which opens one per
/// request, held by the response body) and the watch that closes an idle connection.
///
/// A stream is busy while the gateway or the upstream owes it something (its response
/// head, or the next piece of its body). Once its response is ready, it waits on the
/// client: a client that stops taking data (a zero flow-control window) leaves hyper
/// nothing to send, and such a stream must not hold the connection, and the upstream's
/// slot, for ever. Each stream keeps its own clock: what other streams of the connection
/// do (a `/health` every few seconds) does not put off a stalled one's deadline.
#[derive(Debug)]
pub struct OpenStreams {
    count: watch::Sender<usize>,
    /// The clocks of the open streams (and of streams closed since the last open).
    clocks: Mutex<Vec<Weak<StreamClock>>>,
    epoch: Instant,
}

/// Since when a stream has waited on the client, in milliseconds after its connection's
/// epoch; [`BUSY`] while the gateway or the upstream owes it something.
#[derive(Debug)]
struct StreamClock(AtomicU64);

/// A stream's clock while it waits on the gateway or the upstream.
const BUSY: u64 = u64::MAX;

/// One open stream; dropping it (with the response body, or with the request's future when
/// the client resets the stream) closes it.
pub struct StreamGuard {
    streams: Arc<OpenStreams>,
    clock: Arc<StreamClock>,
}

impl StreamGuard {
    /// The response moved towards the client just now, and waits on it from now.
    fn moved(&self) {
        self.clock.0.store(self.streams.now_ms(), Ordering::Relaxed);
    }

    /// The gateway or the upstream owes the stream its next piece: not waiting on the client.
    fn owed(&self) {
        self.clock.0.store(BUSY, Ordering::Relaxed);
    }
}

impl BodyProgress for StreamGuard {
    fn response_started(&mut self) {
        self.moved();
    }

    fn polled(&mut self, ready: bool) {
        match ready {
            true => self.moved(),
            false => self.owed(),
        }
    }
}

impl StreamGuard {
    /// The same stream, now a WebSocket: never counted as waiting on the client (the
    /// WebSocket's own idle limit governs it), open until dropped.
    pub fn into_tunnel(self) -> Self {
        self.owed();
        self
    }
}

impl<G: BodyProgress> BodyProgress for Option<G> {
    fn response_started(&mut self) {
        if let Some(guard) = self {
            guard.response_started();
        }
    }

    fn polled(&mut self, ready: bool) {
        if let Some(guard) = self {
            guard.polled(ready);
        }
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.streams.count.send_modify(|count| *count -= 1);
    }
}

/// Why [`OpenStreams::idle`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idle {
    /// No stream was ever opened: the client has not completed a request.
    NeverUsed,
    /// Streams were served, and none has been open for the idle timeout since.
    Quiet,
    /// A stream waits on a client that has taken nothing of it for the idle timeout.
    Stalled,
}

impl OpenStreams {
    /// No stream open yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            count: watch::Sender::new(0),
            clocks: Mutex::new(Vec::new()),
            epoch: Instant::now(),
        })
    }

    /// Opens a stream, busy (its response is owed) until its response starts; open until
    /// the guard is dropped.
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        self.count.send_modify(|count| *count += 1);
        let clock = Arc::new(StreamClock(AtomicU64::new(BUSY)));
        if let Ok(mut clocks) = self.clocks.lock() {
            clocks.retain(|clock| clock.strong_count() > 0);
            clocks.push(Arc::downgrade(&clock));
        }
        StreamGuard {
            streams: self.clone(),
            clock,
        }
    }

    fn now_ms(&self) -> u64 {
        // Never `BUSY`: that is 584 million years away.
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(BUSY - 1)
    }

    /// Since when the open stream that has waited longest on its client has waited, if
    /// one waits on its client.
    fn longest_wait(&self) -> Option<Instant> {
        let clocks = self.clocks.lock().ok()?;
        let since = clocks
            .iter()
            .filter_map(Weak::upgrade)
            .map(|clock| clock.0.load(Ordering::Relaxed))
            .filter(|&since| since != BUSY)
            .min()?;
        Some(self.epoch + Duration::from_millis(since))
    }

    /// Returns once no stream has been opened for `first`; or, after some were, once none
    /// has been open for `then`; or once a stream has waited on its client, with nothing
    /// of its response taken, for `then`.
    pub async fn idle(&self, first: Duration, then: Duration) -> Idle {
        let mut count = self.count.subscribe();
        let mut used = false;
        loop {
            let open = *count.borrow_and_update();
            used |= open > 0;
            if open == 0 {
                let timeout = if used { then } else { first };
                tokio::select! {
                    _ = tokio::time::sleep(timeout) => {
                        return if used { Idle::Quiet } else { Idle::NeverUsed };
                    }
                    _ = count.changed() => {}
                }
                continue;
            }
            // Every stream owed by the gateway or the upstream: look again later.
            let deadline = self
                .longest_wait()
                .map_or_else(|| Instant::now() + then, |since| since + then);
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if self.longest_wait().is_some_and(|since| since + then <= Instant::now()) {
                        return Idle::Stalled;
                    }
                }
                // The sender lives as long as `self`: this only returns on a change.
                _ = count.changed() => {}
            }
        }
    }
}

/// A response body that holds `G` until it has been sent or dropped (the client went away),
/// and tells it how the body is being sent.
pub struct GuardedBody<B, G> {
    inner: B,
    guard: G,
}

impl<B, G: BodyProgress> GuardedBody<B, G> {
    /// Wraps the body of a response that is ready for the client, keeping `guard` alive as
    /// long as it.
    pub fn new(inner: B, mut guard: G) -> Self {
        guard.response_started();
        Self { inner, guard }
    }
}

impl<B: Body + Unpin, G: BodyProgress + Unpin> Body for GuardedBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        this.guard.polled(polled.is_ready());
        polled
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// A server end with a 5 s header deadline and a 60 s idle timeout.
    fn deadline_io(server: DuplexStream, phase: Arc<RequestPhase>) -> HeadDeadlineIo<DuplexStream> {
        let reply: TimeoutReply =
            Arc::new(|| Bytes::from_static(b"HTTP/1.1 408 Request Timeout\r\n\r\n"));
        HeadDeadlineIo::new(
            server,
            phase,
            Duration::from_secs(5),
            Duration::from_secs(60),
            reply,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn partial_head_gets_a_408_then_eof() {
        let (mut client, server) = duplex(1024);
        let phase = Arc::new(RequestPhase::default());
        let mut io = deadline_io(server, phase);
        client.write_all(b"GET / HT").await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), 8);
        // The next read waits for the deadline, answers 408 and ends the stream.
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        let mut answer = Vec::new();
        drop(io);
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 408"));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connection_is_closed_without_a_reply() {
        let (mut client, server) = duplex(1024);
        let phase = Arc::new(RequestPhase::default());
        let mut io = deadline_io(server, phase);
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        drop(io);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_that_opens_no_stream_is_idle_after_the_first_deadline() {
        let streams = OpenStreams::new();
        let started = Instant::now();
        let idle = streams
            .idle(Duration::from_secs(5), Duration::from_secs(60))
            .await;
        assert_eq!(idle, Idle::NeverUsed);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    /// Watches `streams` with a 5 s first deadline and a 60 s idle timeout; the task ends
    /// with why they were idle and after how long.
    fn watch_idle(streams: Arc<OpenStreams>) -> tokio::task::JoinHandle<(Idle, Duration)> {
        tokio::spawn(async move {
            let started = Instant::now();
            let idle = streams
                .idle(Duration::from_secs(5), Duration::from_secs(60))
                .await;
            (idle, started.elapsed())
        })
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_connection_is_idle_only_when_no_stream_has_been_open_for_the_timeout() {
        let streams = OpenStreams::new();
        let watch = watch_idle(streams.clone());
        tokio::time::sleep(Duration::from_secs(1)).await;
        let first = streams.open();
        tokio::time::sleep(Duration::from_secs(100)).await;
        let second = streams.open();
        drop(first);
        tokio::time::sleep(Duration::from_secs(100)).await;
        assert!(!watch.is_finished(), "a stream is still open");
        drop(second);
        let (idle, elapsed) = watch.await.unwrap();
        assert_eq!(idle, Idle::Quiet);
        assert_eq!(
            elapsed,
            Duration::from_secs(261),
            "60 s after the last stream closed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_stream_the_client_stops_taking_is_stalled_after_the_idle_timeout() {
        let streams = OpenStreams::new();

        // Waiting on the upstream, for its head and then for its body: never stalled.
        let mut owed = streams.open();
        let watch = watch_idle(streams.clone());
        tokio::time::sleep(Duration::from_secs(300)).await;
        owed.response_started();
        owed.polled(false);
        tokio::time::sleep(Duration::from_secs(300)).await;
        assert!(
            !watch.is_finished(),
            "a stream the upstream owes is not idle"
        );

        // A frame went out, and the client takes nothing more: the body is not polled.
        owed.polled(true);
        let (idle, elapsed) = watch.await.unwrap();
        assert_eq!(idle, Idle::Stalled);
        assert_eq!(elapsed, Duration::from_secs(660));

        // A client that keeps taking data is never stalled.
        owed.polled(true);
        let watch = watch_idle(streams.clone());
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            owed.polled(true);
        }
        assert!(!watch.is_finished());
        drop(owed);
        assert_eq!(watch.await.unwrap().0, Idle::Quiet);
    }

    /// What other streams do does not put off a stalled one's deadline: neither one the
    /// upstream still owes, nor a `/health` answered every 30 s on the same connection.
    #[tokio::test(start_paused = true)]
    async fn other_streams_do_not_keep_a_stalled_http2_stream_alive() {
        let streams = OpenStreams::new();
        let mut stalled = streams.open();
        let _owed = streams.open();
        let watch = watch_idle(streams.clone());
        stalled.response_started();
        stalled.polled(true);
        let health = tokio::spawn({
            let streams = streams.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    let mut probe = streams.open();
                    probe.response_started();
                    probe.polled(true);
                }
            }
        });
        let (idle, elapsed) = watch.await.unwrap();
        health.abort();
        assert_eq!(idle, Idle::Stalled);
        assert_eq!(elapsed, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_while_a_request_is_served_and_idle_timeout_after() {
        let (mut client, server) = duplex(1024);
        let phase = Arc::new(RequestPhase::default());
        let mut io = deadline_io(server, phase.clone());
        phase.request_started();
        let read = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = io.read(&mut buf).await.unwrap();
            (io, n)
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        client.write_all(b"body").await.unwrap();
        let (mut io, n) = read.await.unwrap();
        assert_eq!(n, 4, "a slow body is not cut off by the header deadline");

        phase.response_finished();
        let started = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(io.read(&mut buf).await.unwrap(), 0);
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(60),
            "idle keep-alive uses idle_timeout"
        );
    }
}
