//! Connections to an upstream that speaks HTTP/2, or whose version TLS negotiates
//! (`http_version = "2"` or `"auto"`): hyper-util's pooled client, which multiplexes
//! HTTP/2 streams on one connection per worker and pools HTTP/1.1 connections when ALPN
//! picks that. HTTP/1.1 upstreams go through [`super::pool`] instead, which costs 8 400
//! fewer instructions a request (bench/RESULTS.md, 2026-11-27).
//!
//! An HTTP/1.1 connection goes back to the client's pool only once the response body it
//! carried has been read to the end and the request body has been sent whole (hyper's
//! dispatcher is not ready before).

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::uri::{Parts, PathAndQuery};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::UpstreamBody;
use super::pool::{BodyProgress, IDLE_TIMEOUT, MAX_IDLE, PoolError, PooledBody, SentBody};
use crate::base::body::BoxError;
use crate::config::HttpVersion;
use crate::hygiene::{BodyTooLarge, ClientBodyError};

/// What a connection carries: the client's body, reporting when it has been sent and how
/// it failed, if it did.
type Sent = FaultNoted<SentBody<UpstreamBody>>;

/// The connections to one HTTP/2 (or negotiating) upstream.
pub struct NegotiatingPool {
    client: Client<HttpsConnector<HttpConnector>, Sent>,
    /// `scheme://authority` of the upstream, which the client connects to.
    target: Uri,
}

impl NegotiatingPool {
    /// An empty pool that opens connections to `target` with `connector` (whose ALPN
    /// offer matches `version`).
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        target: Uri,
        version: HttpVersion,
    ) -> Arc<Self> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            // Host from the URI's authority on HTTP/1.1; on HTTP/2 `:authority` alone
            // (RFC 9113 §8.3.1: nginx refuses both as a duplicate Host).
            .set_host(true)
            .http2_only(version == HttpVersion::Http2);
        Arc::new(Self {
            client: builder.build(connector),
            target,
        })
    }

    /// Sends `request` (origin-form URI) on a pooled connection, or a new one;
    /// `request_sent` follows its body as it is sent. A request whose pooled
    /// connection closed before it was written is sent again on a new one (nothing was
    /// sent).
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
        request_sent: Arc<BodyProgress>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let (mut head, body) = request.into_parts();
        head.uri = self.absolute(head.uri);
        // The upstream's authority, which the client writes as Host or `:authority` as the
        // connection's version asks.
        head.headers.remove(http::header::HOST);
        let fault = Arc::new(OnceLock::new());
        let body = FaultNoted {
            inner: SentBody::new(body, request_sent),
            fault: fault.clone(),
        };
        match self.client.request(Request::from_parts(head, body)).await {
            Ok(response) => Ok(response.map(PooledBody::unpooled)),
            // Over HTTP/2, hyper resets the stream when the client's body fails and keeps
            // the body's error to itself: the call fails as a reset would. The fault noted
            // on the way says whose it was, so that a client's oversized or broken upload
            // is the client's 413 or 400, never the upstream's failure.
            Err(error) => Err(match fault.get() {
                Some(fault) => PoolError::ClientBody(fault.error()),
                None if error.is_connect() => PoolError::Connect(Box::new(error)),
                None => PoolError::Client(error),
            }),
        }
    }

    /// `uri`'s path and query on the upstream: the absolute form the client takes (it
    /// writes the origin form on HTTP/1.1, and `:scheme`, `:authority` and `:path` on
    /// HTTP/2).
    fn absolute(&self, uri: Uri) -> Uri {
        let mut parts = Parts::from(self.target.clone());
        parts.path_and_query = Some(
            uri.into_parts()
                .path_and_query
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).unwrap_or(self.target.clone())
    }
}

/// How the client's body failed on its way to the upstream.
#[derive(Debug, Clone, Copy)]
enum ClientFault {
    TooLarge(BodyTooLarge),
    Broken { aborted: bool },
}

impl ClientFault {
    /// The error the body gave, again, for the pipeline to classify.
    fn error(&self) -> BoxError {
        match *self {
            Self::TooLarge(too_large) => Box::new(too_large),
            Self::Broken { aborted } => Box::new(ClientBodyError {
                aborted,
                source: "the request body failed".into(),
            }),
        }
    }
}

/// A request body that notes the client's fault when it fails.
pub struct FaultNoted<B> {
    inner: B,
    fault: Arc<OnceLock<ClientFault>>,
}

impl<B> Body for FaultNoted<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Err(error)) = &frame {
            let fault = if let Some(too_large) = error.downcast_ref::<BodyTooLarge>() {
                ClientFault::TooLarge(*too_large)
            } else {
                ClientFault::Broken {
                    aborted: error
                        .downcast_ref::<ClientBodyError>()
                        .is_some_and(|body| body.aborted),
                }
            };
            let _ = self.fault.set(fault);
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
