//! Connections to an upstream that speaks HTTP/2, or whose version TLS negotiates
//! (`http_version = "2"` or `"auto"`): hyper-util's pooled client, which multiplexes
//! HTTP/2 streams on one connection per worker and pools HTTP/1.1 connections when ALPN
//! picks that. HTTP/1.1 upstreams go through [`super::pool`] instead, which costs 8 400
//! fewer instructions a request (bench/RESULTS.md, 2026-11-27).
//!
//! An HTTP/1.1 connection goes back to the client's pool only once the response body it
//! carried has been read to the end and the request body has been sent whole (hyper's
//! dispatcher is not ready before).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use http::uri::{Parts, PathAndQuery};
use http::{Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::UpstreamBody;
use super::pool::{IDLE_TIMEOUT, MAX_IDLE, PoolError, PooledBody, SentBody};
use crate::config::HttpVersion;

/// What a connection carries: the client's body, reporting when it has been sent.
type Sent = SentBody<UpstreamBody>;

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
            // The pipeline sets Host itself (the upstream's).
            .set_host(false)
            .http2_only(version == HttpVersion::Http2);
        Arc::new(Self {
            client: builder.build(connector),
            target,
        })
    }

    /// Sends `request` (origin-form URI) on a pooled connection, or a new one;
    /// `request_sent` is set once its body has been sent whole. A request whose pooled
    /// connection closed before it was written is sent again on a new one (nothing was
    /// sent).
    pub async fn send(
        &self,
        request: Request<UpstreamBody>,
        request_sent: Arc<AtomicBool>,
    ) -> Result<Response<PooledBody>, PoolError> {
        let (mut head, body) = request.into_parts();
        head.uri = self.absolute(head.uri);
        let request = Request::from_parts(head, SentBody::new(body, request_sent));
        match self.client.request(request).await {
            Ok(response) => Ok(response.map(PooledBody::unpooled)),
            Err(error) if error.is_connect() => Err(PoolError::Connect(Box::new(error))),
            Err(error) => Err(PoolError::Client(error)),
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
