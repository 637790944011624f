//! Relays an open WebSocket's bytes both ways until either side closes, it idles, it
//! outlives its lifetime, or a message goes over the limit.
//!
//! Bytes are read into a buffer on the stack and written straight on; only what the
//! other side cannot take at once is kept, on the heap, until it can. An idle tunnel
//! holds no buffer at all. The frame headers of each direction are followed
//! ([`Frames`]) so that the gateway knows where it may put a close frame of its own.

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;
use tokio::time::Sleep;

use super::frames::{self, Frames, TooLarge, close_code};
use crate::streams::{StreamLimits, StreamTimers};

/// Why a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides closed (or one failed, which closes the other).
    Closed,
    /// No byte passed for the idle timeout.
    Idle,
    /// The lifetime ran out.
    Lifetime,
    /// The client sent a message over the limit.
    ClientMessageTooLarge,
    /// The upstream sent a message over the limit.
    UpstreamMessageTooLarge,
    /// The server is shutting down, and its grace period is over.
    Shutdown,
    /// The credential it was opened with is no longer live, or its client was banned.
    Revoked,
}

/// What a relay carried, and why it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relayed {
    /// Bytes from the client to the upstream.
    pub from_client: u64,
    /// Bytes from the upstream to the client.
    pub to_client: u64,
    /// Why it ended.
    pub ended: Ended,
}

/// Resolves once `closing` turns true; never when its sender is gone without it.
async fn closed_on(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|closing| *closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How long the close frames the gateway writes at the end may take, and how long one
/// side has to close once the other has.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Bytes read at once from either side.
const CHUNK: usize = 8 * 1024;

/// One direction: what it read and has not yet written, and where its frames stand.
struct Half {
    /// Bytes the other side has not taken yet, from `offset` on (empty, unallocated, when
    /// it took everything).
    pending: Vec<u8>,
    offset: usize,
    /// Written bytes that may sit in a buffer below (TLS) until flushed.
    unflushed: bool,
    /// The source ended; the destination's write side is shut down next.
    eof: bool,
    /// Both ended: nothing more goes this way.
    done: bool,
    bytes: u64,
    frames: Frames,
    /// Whether what was written so far ends on a frame boundary (bytes refused for a
    /// message over the limit were read but never written).
    boundary_written: bool,
    /// A message went over the limit: once what came before it is written, this
    /// direction ends.
    over: bool,
}

impl Half {
    fn new(limit: u64) -> Self {
        Self {
            pending: Vec::new(),
            offset: 0,
            unflushed: false,
            eof: false,
            done: false,
            bytes: 0,
            frames: Frames::new(limit),
            boundary_written: true,
            over: false,
        }
    }

    /// Moves bytes from `src` to `dst` until one of them must wait; `Ready(Ok(()))` when
    /// this direction is finished.
    fn poll_copy<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        activity: &mut bool,
    ) -> Poll<io::Result<Result<(), TooLarge>>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        loop {
            while self.offset < self.pending.len() {
                let written =
                    ready!(Pin::new(&mut *dst).poll_write(cx, &self.pending[self.offset..]))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.offset += written;
                self.unflushed = true;
            }
            if !self.pending.is_empty() {
                // Given back, so that an idle tunnel holds no buffer.
                self.pending = Vec::new();
                self.offset = 0;
            }
            if self.over {
                return Poll::Ready(Ok(Err(TooLarge)));
            }
            if self.eof {
                ready!(Pin::new(&mut *dst).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(Ok(())));
            }
            let mut chunk = [0u8; CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            if Pin::new(&mut *src).poll_read(cx, &mut read)?.is_pending() {
                if self.unflushed {
                    ready!(Pin::new(&mut *dst).poll_flush(cx))?;
                    self.unflushed = false;
                }
                return Poll::Pending;
            }
            let read = read.filled();
            if read.is_empty() {
                self.eof = true;
                continue;
            }
            *activity = true;
            // A message over the limit: nothing of its offending frame goes on, but what
            // came before it in the same read does (whole messages among it), so that what
            // arrives does not depend on how the bytes were cut into reads.
            let read = match self.frames.feed(read) {
                Ok(()) => {
                    self.boundary_written = self.frames.at_boundary();
                    read
                }
                Err(over) => {
                    self.over = true;
                    self.boundary_written = over.at_boundary;
                    &read[..over.before]
                }
            };
            self.bytes += read.len() as u64;
            let mut sent = 0;
            while sent < read.len() {
                match Pin::new(&mut *dst).poll_write(cx, &read[sent..])? {
                    Poll::Ready(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(written) => sent += written,
                    Poll::Pending => {
                        self.pending.extend_from_slice(&read[sent..]);
                        return Poll::Pending;
                    }
                }
            }
            self.unflushed = true;
        }
    }

    /// Whether the gateway may write a frame of its own to this direction's destination:
    /// everything read was written, and it ended on a frame boundary.
    fn at_boundary(&self) -> bool {
        self.pending.is_empty() && self.boundary_written
    }
}

/// An open WebSocket between `client` and `upstream`.
pub struct Relay<C, U> {
    client: C,
    upstream: U,
    /// Client to upstream.
    up: Half,
    /// Upstream to client.
    down: Half,
    timers: StreamTimers,
    /// Set once one side has closed: when the other must have closed too.
    linger: Option<Pin<Box<Sleep>>>,
}

impl<C, U> Relay<C, U>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    /// A relay between the two sides of a WebSocket whose handshake has just completed.
    pub fn new(client: C, upstream: U, limits: StreamLimits) -> Self {
        Self {
            client,
            upstream,
            up: Half::new(limits.max_message_bytes),
            down: Half::new(limits.max_message_bytes),
            timers: StreamTimers::start(&limits),
            linger: None,
        }
    }

    /// Relays until the WebSocket ends, `closing` turns true or `revoked` resolves; closes
    /// it with a close frame to each side that can take one when the gateway ends it.
    pub async fn run(
        mut self,
        mut closing: watch::Receiver<bool>,
        revoked: impl Future<Output = ()>,
    ) -> Relayed {
        let ended = tokio::select! {
            ended = poll_fn(|cx| self.poll_relay(cx)) => ended,
            () = closed_on(&mut closing) => Ended::Shutdown,
            () = revoked => Ended::Revoked,
        };
        let code = match ended {
            Ended::Closed => None,
            Ended::Idle | Ended::Lifetime | Ended::Shutdown => {
                Some((close_code::GOING_AWAY, close_code::GOING_AWAY))
            }
            Ended::Revoked => Some((close_code::POLICY_VIOLATION, close_code::GOING_AWAY)),
            Ended::ClientMessageTooLarge => {
                Some((close_code::MESSAGE_TOO_BIG, close_code::GOING_AWAY))
            }
            Ended::UpstreamMessageTooLarge => {
                Some((close_code::GOING_AWAY, close_code::MESSAGE_TOO_BIG))
            }
        };
        if let Some((to_client, to_upstream)) = code {
            let _ = tokio::time::timeout(CLOSE_GRACE, self.close(to_client, to_upstream)).await;
        }
        Relayed {
            from_client: self.up.bytes,
            to_client: self.down.bytes,
            ended,
        }
    }

    fn poll_relay(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        let mut activity = false;
        if !self.up.done {
            match self
                .up
                .poll_copy(cx, &mut self.client, &mut self.upstream, &mut activity)
            {
                Poll::Ready(Err(_)) => return Poll::Ready(Ended::Closed),
                Poll::Ready(Ok(Err(TooLarge))) => return Poll::Ready(Ended::ClientMessageTooLarge),
                Poll::Ready(Ok(Ok(()))) | Poll::Pending => {}
            }
        }
        if !self.down.done {
            match self
                .down
                .poll_copy(cx, &mut self.upstream, &mut self.client, &mut activity)
            {
                Poll::Ready(Err(_)) => return Poll::Ready(Ended::Closed),
                Poll::Ready(Ok(Err(TooLarge))) => {
                    return Poll::Ready(Ended::UpstreamMessageTooLarge);
                }
                Poll::Ready(Ok(Ok(()))) | Poll::Pending => {}
            }
        }
        if self.up.done && self.down.done {
            return Poll::Ready(Ended::Closed);
        }
        // Once one side has closed, the other has a moment to finish its close handshake:
        // a WebSocket cannot go on half closed, and a peer that never closes its side
        // must not hold the tunnel open.
        if self.up.done || self.down.done {
            let linger = self
                .linger
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_GRACE)));
            if linger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ended::Closed);
            }
        }
        if self.timers.lifetime_over(cx) {
            return Poll::Ready(Ended::Lifetime);
        }
        if activity {
            self.timers.touch();
        }
        if self.timers.idled(cx) {
            return Poll::Ready(Ended::Idle);
        }
        Poll::Pending
    }

    /// Writes a close frame to each side whose stream is on a frame boundary, then shuts
    /// both down.
    async fn close(&mut self, to_client: u16, to_upstream: u16) {
        if self.down.at_boundary() && !self.down.eof {
            let _ = self
                .client
                .write_all(&frames::close_to_client(to_client))
                .await;
        }
        if self.up.at_boundary() && !self.up.eof {
            let mask = rand::random::<[u8; 4]>();
            let frame = frames::close_to_server(to_upstream, mask);
            let _ = self.upstream.write_all(&frame).await;
        }
        let _ = self.client.shutdown().await;
        let _ = self.upstream.shutdown().await;
    }
}
