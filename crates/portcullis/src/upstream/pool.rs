//! Kept-alive HTTP/1.1 connections to one upstream.
//!
//! Each worker has its own pipeline and so its own pools, so a connection is only ever used
//! by the thread that opened it. A connection goes back to the pool when the response body
//! it carried has been read to the end and the request body has been sent whole; one whose
//! response was abandoned, or that answered before taking the whole upload, is closed.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;
use tracing::debug;

use super::UpstreamBody;
use crate::base::body::BoxError;

/// How long an unused connection is kept; shorter than common upstream keep-alive
/// timeouts (nginx: 75 s), so we close first and rarely write to a connection the upstream
/// has just closed.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most unused connections kept per upstream and worker.
pub(super) const MAX_IDLE: usize = 256;

/// Why a request could not be exchanged.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be opened (refused, unreachable, TLS failure).
    #[error("connect failed")]
    Connect(#[source] BoxError),
    /// The exchange failed on an open connection.
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
    /// The exchange failed in hyper-util's client (the `negotiating` module beside this one).
    #[error("exchange failed")]
    Client(#[source] hyper_util::client::legacy::Error),
    /// The client's body failed on its way (over HTTP/2, where hyper does not pass the
    /// body's error on): the client's fault.
    #[error("the request body failed")]
    ClientBody(#[source] BoxError),
}

/// What a pooled connection carries: the client's body, reporting when it has been sent.
type Sent = SentBody<UpstreamBody>;

struct IdleConnection {
    sender: SendRequest<Sent>,
    since: Instant,
}

/// The connections to one upstream.
pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority` of the upstream, for the connector.
    target: Uri,
    idle: Mutex<Vec<IdleConnection>>,
}

impl Pool {
    /// An empty pool that opens connections to `target` with `connector`.
    pub fn new(connector: HttpsConnector<HttpConnector>, target: Uri) -> Arc<Self> {
        Arc::new(Self {
            connector,
            target,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends `request` (origin-form URI) on a pooled connection, or a new one;
    /// `request_sent` follows its body as it is sent.
    pub async fn send(
        self: &Arc<Self>,
        request: Request<UpstreamBody>,
        request_sent: Arc<BodyProgress>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let mut request = request.map(|body| SentBody::new(body, request_sent.clone()));
        if let Some(mut sender) = self.checkout().await {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.wrap(response, sender, request_sent)),
                // The connection closed before the request was written: nothing was sent,
                // so it is safe to try once more on a new connection.
                Err(mut error) => match error.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(error.into_error().into()),
                },
            }
        }
        // Boxed: opening a connection (TCP, TLS, the HTTP/1.1 handshake) is most of this
        // future's size, and rare; inline, every request's future would carry it, and
        // every move of that future copy it (bench/RESULTS.md, 2026-11-29).
        let mut sender = Box::pin(self.connect(false)).await?;
        let response = sender.send_request(request).await?;
        Ok(self.wrap(response, sender, request_sent))
    }

    /// The most recently used idle connection that is still open, ready for a request.
    async fn checkout(&self) -> Option<SendRequest<Sent>> {
        loop {
            let idle = self.idle.lock().ok()?.pop()?;
            if idle.sender.is_closed() || idle.since.elapsed() >= IDLE_TIMEOUT {
                continue;
            }
            let mut sender = idle.sender;
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Sends `request`, which asks to upgrade the connection (`Upgrade`), on a new
    /// connection that is never pooled: after a 101 it belongs to the protocol it switched
    /// to, and the response's [`hyper::upgrade::OnUpgrade`] hands it over.
    pub async fn send_upgrade(
        &self,
        request: Request<UpstreamBody>,
        request_sent: Arc<BodyProgress>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let request = request.map(|body| SentBody::new(body, request_sent));
        // Boxed, as in `send`: an upgrade is sent from the same future as every request.
        let mut sender = Box::pin(self.connect(true)).await?;
        let response = sender.send_request(request).await?;
        Ok(response.map(PooledBody::unpooled))
    }

    /// A new connection; with `upgrades`, one that a 101 hands over.
    async fn connect(&self, upgrades: bool) -> Result<SendRequest<Sent>, PoolError> {
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(PoolError::Connect)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let ended = match upgrades {
                true => connection.with_upgrades().await,
                false => connection.await,
            };
            if let Err(error) = ended {
                debug!(%error, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }

    fn wrap(
        self: &Arc<Self>,
        response: Response<Incoming>,
        sender: SendRequest<Sent>,
        request_sent: Arc<BodyProgress>,
    ) -> Response<PooledBody> {
        let pool = Arc::downgrade(self);
        response.map(|body| PooledBody {
            body,
            ended: false,
            request_sent,
            checkin: Some((sender, pool)),
        })
    }

    fn checkin(&self, sender: SendRequest<Sent>) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
    }
}

/// An upstream response body that returns its connection to the pool once read to the end
/// (or, from hyper-util's client, whose pool takes it back itself, just the body).
pub struct PooledBody {
    body: Incoming,
    ended: bool,
    request_sent: Arc<BodyProgress>,
    checkin: Option<(SendRequest<Sent>, Weak<Pool>)>,
}

impl PooledBody {
    /// A body whose connection is not this pool's to take back.
    pub fn unpooled(body: Incoming) -> Self {
        Self {
            body,
            ended: false,
            request_sent: Arc::new(BodyProgress::default()),
            checkin: None,
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body dropped before its end leaves unread bytes on the connection, and an
        // upload still going holds it busy: either way it closes with the sender instead.
        if (self.ended || self.body.is_end_stream())
            && self.request_sent.sent_whole()
            && let Some((sender, pool)) = self.checkin.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        // Trailers are a body's last frame: a reader may stop there (RFC 9112 §7.1.2).
        if frame
            .as_ref()
            .is_none_or(|frame| frame.as_ref().is_ok_and(Frame::is_trailers))
        {
            self.ended = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How far a request's body has gone to the upstream; when time runs out, it says whose
/// slowness it was.
#[derive(Debug, Default)]
pub struct BodyProgress(AtomicU8);

/// The body is moving, or the upstream has not asked for more (it is not reading).
const MOVING: u8 = 0;
/// The upstream asked for more, and the client has not sent it yet.
const AWAITING_CLIENT: u8 = 1;
/// Sent whole.
const SENT: u8 = 2;

impl BodyProgress {
    /// Whether the body has been sent whole.
    pub fn sent_whole(&self) -> bool {
        self.0.load(Ordering::Acquire) == SENT
    }

    /// Whether the upstream is waiting for the client's next bytes (rather than the
    /// client for the upstream to take them).
    pub fn awaits_client(&self) -> bool {
        self.0.load(Ordering::Acquire) == AWAITING_CLIENT
    }

    fn set(&self, state: u8) {
        self.0.store(state, Ordering::Release);
    }
}

/// A request body that records how far it has been sent.
pub struct SentBody<B> {
    inner: B,
    progress: Arc<BodyProgress>,
}

impl<B: Body> SentBody<B> {
    /// `inner`, keeping `progress` up to date as it is sent.
    pub fn new(inner: B, progress: Arc<BodyProgress>) -> Self {
        if inner.is_end_stream() {
            progress.set(SENT);
        }
        Self { inner, progress }
    }
}

impl<B: Body + Unpin> Body for SentBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) else {
            self.progress.set(AWAITING_CLIENT);
            return Poll::Pending;
        };
        // Whole when the stream ends, or when the last declared byte has gone (hyper does
        // not ask again after a Content-Length is met).
        if frame.is_none() || self.inner.is_end_stream() {
            self.progress.set(SENT);
        } else {
            self.progress.set(MOVING);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
