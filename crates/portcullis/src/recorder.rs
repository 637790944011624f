//! Finishes exchange records and hands them to sinks (the access log now; the audit log,
//! metrics and alerts later) through a bounded channel, on a thread of their own, off the
//! request path. A record is finished in one place: [`RecordedBody`], when the response
//! body ends or is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::base::body::{BoxError, StreamClosed};
use crate::base::exchange::{Decision, Exchange};

/// Where finished records go. Sinks run on the recorder's thread, one record at a time.
pub trait Sink: Send {
    /// Takes one finished record.
    fn record(&mut self, exchange: &Exchange);
    /// Takes the admission of a request held until it is recorded durably (audit strict
    /// mode): a sink that keeps records durably records `exchange` (the request so far) and
    /// keeps `admission`, to let the request go once that record is durable ([`flush`] is
    /// where that happens). Other sinks hand it back.
    ///
    /// [`flush`]: Sink::flush
    fn admit(&mut self, exchange: &Exchange, admission: Admission) -> Option<Admission> {
        let _ = exchange;
        Some(admission)
    }
    /// Called when no record is waiting: write out what is buffered.
    fn flush(&mut self) {}
    /// Called once, at shutdown, after the last record: write out everything and finish.
    fn close(&mut self) {
        self.flush();
    }
}

/// Hands finished records to the sinks, off the request path: a bounded channel to one
/// thread, which wakes every [`BATCH_INTERVAL`] to write what has come (so a request never
/// pays for waking it). When the channel is full, a lossy recorder (the access log alone)
/// counts the record as dropped ([`Recorder::dropped`]) and never makes a worker wait; a
/// lossless one (the audit log is on) makes the worker wait for room.
#[derive(Debug, Clone)]
pub struct Recorder(Arc<Shared>);

/// What every clone of a [`Recorder`] shares, behind one reference count: a record's
/// recorder is cloned and dropped on every request, by every worker.
#[derive(Debug)]
struct Shared {
    sender: SyncSender<Message>,
    dropped: AtomicU64,
    thread: std::thread::Thread,
    lossless: bool,
}

/// What the recorder's thread is sent.
enum Message {
    /// A finished record.
    Record(Box<Exchange>),
    /// A request to record durably before it goes on.
    Admit(Box<Exchange>, Admission),
    /// Write out everything sent before and finish the sinks, then answer.
    Close(SyncSender<()>),
}

/// A request held until its admission event is durable. Dropped without [`Self::durable`]
/// (the store refused it, or no sink keeps records durably), the request is refused.
#[derive(Debug)]
pub struct Admission(tokio::sync::oneshot::Sender<()>);

impl Admission {
    /// The admission event is durable: the request may go on.
    pub fn durable(self) {
        let _ = self.0.send(());
    }
}

/// Why a request could not be admitted.
#[derive(Debug, thiserror::Error)]
#[error("the admission event could not be made durable")]
pub struct NotAdmitted;

/// How long a request waits for its admission event to become durable before it is
/// refused (a store that hangs rather than refuses).
pub const ADMISSION_TIMEOUT: Duration = Duration::from_secs(5);

/// How many finished records may wait for the sinks.
const QUEUE: usize = 65_536;

/// How often the recorder's thread writes what has come.
/// Longer batches cost the audit writer less per event (each commit rewrites the partly
/// filled pages and syncs). A strict request's admission, and a full queue, wake the
/// thread at once; what depends on it is how late other records reach the sinks, and so
/// how much of them a killed process loses.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(200);

/// The most records written in one batch: 200 ms of 80 000 requests a second. Fewer,
/// larger commits cost the audit writer less per event (each rewrites the partly filled
/// pages and syncs): 0.2 µs less an event than at 4096 (bench/RESULTS.md, 2026-11-28).
const BATCH_MAX: usize = 16_384;

impl Recorder {
    /// Starts the thread that feeds `sinks`; it ends when every recorder is dropped. With
    /// `lossless`, no record is ever dropped: a worker waits for room instead.
    pub fn start(sinks: Vec<Box<dyn Sink>>, lossless: bool) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let mut sinks = sinks;
        let handle = std::thread::Builder::new()
            .name("portcullis-recorder".to_owned())
            .spawn(move || drain(&receiver, &mut sinks))?;
        Ok(Self(Arc::new(Shared {
            sender,
            dropped: AtomicU64::new(0),
            thread: handle.thread().clone(),
            lossless,
        })))
    }

    /// Hands `exchange` to the sinks, or counts it as dropped when they are behind.
    pub fn finish(&self, exchange: Box<Exchange>) {
        let sent = match self.0.sender.try_send(Message::Record(exchange)) {
            Ok(()) => true,
            // The thread drains on its timer: a full queue wakes it rather than wait for it.
            Err(TrySendError::Full(record)) => {
                self.0.thread.unpark();
                self.0.lossless && self.0.sender.send(record).is_ok()
            }
            Err(TrySendError::Disconnected(_)) => false,
        };
        if !sent {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records `exchange` (a request not yet forwarded) durably: resolves once a sink has
    /// it committed, or fails when none could within [`ADMISSION_TIMEOUT`]. Wakes the
    /// recorder's thread at once; every admission waiting when it writes shares one
    /// commit.
    pub async fn admit(&self, exchange: Box<Exchange>) -> Result<(), NotAdmitted> {
        let (admission, durable) = tokio::sync::oneshot::channel();
        let message = Message::Admit(exchange, Admission(admission));
        // Never a blocking wait on a worker: a queue that is full (the writer far behind a
        // store that is down) refuses the request at once.
        self.0.sender.try_send(message).map_err(|_| NotAdmitted)?;
        self.0.thread.unpark();
        match tokio::time::timeout(ADMISSION_TIMEOUT, durable).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(NotAdmitted),
        }
    }

    /// At shutdown: waits (at most `timeout`) until every record finished so far is
    /// written out and the sinks are finished (the audit log's last checkpoint written), so
    /// the last records are not lost with the process.
    pub fn close(&self, timeout: Duration) {
        let (done, flushed) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut message = Message::Close(done);
        // A full queue drains at the next batch; keep offering until there is room.
        loop {
            match self.0.sender.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    message = back;
                    self.0.thread.unpark();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        self.0.thread.unpark();
        let _ = flushed.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }

    /// Records dropped because the sinks could not keep up.
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// A response body that finishes its request's record when it ends, fails, or is dropped
/// unsent (the client went away): the one place a record is finished.
pub struct RecordedBody<B> {
    inner: B,
    /// The record and where it goes; taken when finished.
    pending: Option<(Box<Exchange>, Recorder)>,
    bytes_out: u64,
    /// The body's declared length: once that much is sent, the body has ended, whether or
    /// not the stream's end is polled (hyper stops at a `Content-Length`; an HTTP/2
    /// upstream may end its stream in a frame of its own after the last byte). The client
    /// has every byte then: a reset of the upstream's stream after it changes nothing.
    declared: Option<u64>,
    /// A response that is sent without its body (to `HEAD`, a 204 or a 304): dropping the
    /// body unread is how it ends, not a client leaving.
    bodiless: bool,
}

impl<B: Body> RecordedBody<B> {
    /// Wraps the body of the response `exchange` describes.
    pub fn new(inner: B, exchange: Box<Exchange>, recorder: Recorder) -> Self {
        let bodiless = exchange.method == Some(http::Method::HEAD)
            || matches!(exchange.status, 204 | 304)
            || inner.is_end_stream();
        Self {
            declared: inner.size_hint().exact(),
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
                    if let Some((exchange, _)) = &mut this.pending
                        && let Some(samples) = &mut exchange.samples
                    {
                        samples.response.take(data);
                    }
                }
                // Trailers are the last frame (RFC 9110 §6.5).
                if this.inner.is_end_stream()
                    || frame.is_trailers()
                    || this.declared == Some(this.bytes_out)
                {
                    this.finish(None);
                }
            }
            Poll::Ready(Some(Err(error))) => {
                // The gateway closing a stream says why; any other failure is the upstream's.
                let decision = error
                    .downcast_ref::<StreamClosed>()
                    .map_or(Decision::UpstreamConnect, |closed| closed.0);
                this.finish(Some(decision));
            }
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

/// Every [`BATCH_INTERVAL`] (or when woken to close), feeds what has come to every
/// sink and flushes them; ends, flushed, when every recorder is gone.
fn drain(receiver: &Receiver<Message>, sinks: &mut [Box<dyn Sink>]) {
    loop {
        std::thread::park_timeout(BATCH_INTERVAL);
        // A batch ends when the queue is empty, or at BATCH_MAX records: a queue that never
        // empties (the thread behind) must still see its records written.
        let mut batch = 0;
        loop {
            match receiver.try_recv() {
                Ok(Message::Record(exchange)) => {
                    for sink in sinks.iter_mut() {
                        sink.record(&exchange);
                    }
                    batch += 1;
                    if batch == BATCH_MAX {
                        for sink in sinks.iter_mut() {
                            sink.flush();
                        }
                        batch = 0;
                    }
                }
                Ok(Message::Admit(exchange, admission)) => {
                    // The first sink that keeps records durably takes it; an admission no
                    // sink takes is dropped here, and the request refused.
                    let mut unclaimed = Some(admission);
                    for sink in sinks.iter_mut() {
                        if let Some(admission) = unclaimed.take() {
                            unclaimed = sink.admit(&exchange, admission);
                        }
                    }
                    batch += 1;
                    if batch == BATCH_MAX {
                        for sink in sinks.iter_mut() {
                            sink.flush();
                        }
                        batch = 0;
                    }
                }
                Ok(Message::Close(done)) => {
                    for sink in sinks.iter_mut() {
                        sink.close();
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
    use std::net::IpAddr;
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

    fn exchange(decision: Decision) -> Box<Exchange> {
        Box::new(Exchange {
            decision,
            ..Exchange::begin(
                http::HeaderValue::from_static("r"),
                IpAddr::from([127, 0, 0, 1]),
                "HTTP/1.1",
            )
        })
    }

    #[test]
    fn records_reach_every_sink_in_order() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = Recorder::start(vec![Box::new(Collect(seen.clone()))], false).unwrap();
        recorder.finish(exchange(Decision::Allowed));
        recorder.finish(exchange(Decision::AuthExpired));
        recorder.close(Duration::from_secs(5));
        assert_eq!(*seen.lock().unwrap(), ["allowed", "auth_expired"]);
        assert_eq!(recorder.dropped(), 0);
    }

    /// A sink that keeps records durably, as the audit log does: it lets an admission go
    /// once it has flushed.
    struct Durable(Vec<Admission>);

    impl Sink for Durable {
        fn record(&mut self, _: &Exchange) {}
        fn admit(&mut self, _: &Exchange, admission: Admission) -> Option<Admission> {
            self.0.push(admission);
            None
        }
        fn flush(&mut self) {
            self.0.drain(..).for_each(Admission::durable);
        }
    }

    #[tokio::test]
    async fn an_admission_waits_for_a_durable_sink_and_fails_without_one() {
        let durable = Recorder::start(vec![Box::new(Durable(Vec::new()))], true).unwrap();
        assert!(durable.admit(exchange(Decision::Allowed)).await.is_ok());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let lossy = Recorder::start(vec![Box::new(Collect(seen))], true).unwrap();
        assert!(lossy.admit(exchange(Decision::Allowed)).await.is_err());
    }
}
