//! A request's exchange record while the request is served: begun when the head is read,
//! filled as the stages learn who called and where the request went, and handed to the
//! response body ([`RecordedBody`]), which finishes it when the body ends. A request whose
//! handling is dropped before it has a response (the client went away mid-upload) is
//! finished here, as `client_aborted`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use http::{Request, Response, Version, header};
use http_body_util::BodyExt;

use crate::auth::Principal;
use crate::body::ResponseBody;
use crate::context::{ConnInfo, RequestContext};
use crate::exchange::{Decision, Exchange, RecordedBody, Recorder};
use crate::redact::Redactor;
use crate::upstream::{Route, Router};

/// A record being filled; finished as `client_aborted` if dropped before [`Self::respond`].
pub struct PendingRecord {
    exchange: Option<Exchange>,
    recorder: Recorder,
}

impl PendingRecord {
    /// Begins the record of `request`: who sent it, what it asked for (the path with any
    /// capability masked, the query redacted), over what.
    pub fn begin<B>(
        recorder: &Recorder,
        request: &Request<B>,
        ctx: &RequestContext,
        conn: &ConnInfo,
        router: &Router,
        redactor: &Redactor,
    ) -> Self {
        let uri = request.uri();
        let protocol = protocol(request.version(), conn.tls);
        let exchange = Exchange {
            request_id: ctx.request_id.to_str().unwrap_or_default().to_owned(),
            started: SystemTime::now(),
            started_at: Instant::now(),
            client_ip: ctx.known_client_ip(),
            peer: conn.peer.ip().to_canonical(),
            method: Some(request.method().clone()),
            route: None,
            path: router.masked_path(uri.path()).into_owned(),
            query: uri.query().map(|query| redactor.query(query)),
            caller: None,
            upstream: None,
            status: 0,
            decision: Decision::ClientAborted,
            bytes_in: Arc::default(),
            bytes_out: 0,
            to_head: std::time::Duration::ZERO,
            duration: std::time::Duration::ZERO,
            protocol,
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
        };
        Self {
            exchange: Some(exchange),
            recorder: recorder.clone(),
        }
    }

    /// Where the request body's bytes are counted.
    pub fn bytes_in(&self) -> Arc<AtomicU64> {
        self.exchange
            .as_ref()
            .map(|exchange| exchange.bytes_in.clone())
            .unwrap_or_default()
    }

    /// Notes who called.
    pub fn caller(&mut self, principal: &Principal) {
        if let Some(exchange) = &mut self.exchange {
            exchange.caller = Some(principal.caller());
        }
    }

    /// Notes the upstream the request goes to.
    pub fn upstream(&mut self, route: &Route) {
        if let Some(exchange) = &mut self.exchange {
            exchange.upstream = Some(route.upstream().name().to_owned());
        }
    }

    /// Completes the record with the response's head, and hands it to the response's body,
    /// which finishes it when it ends.
    pub fn respond(
        mut self,
        response: Response<ResponseBody>,
        decision: Decision,
        route: Option<&Route>,
    ) -> Response<ResponseBody> {
        let Some(mut exchange) = self.exchange.take() else {
            return response;
        };
        exchange.status = response.status().as_u16();
        exchange.decision = decision;
        exchange.route = route.map(|route| route.prefix().to_owned());
        exchange.to_head = exchange.started_at.elapsed();
        let recorder = self.recorder.clone();
        response.map(|body| RecordedBody::new(body, exchange, recorder).boxed_unsync())
    }
}

/// The record of a connection whose request head did not arrive in time (answered 408 by
/// the connection itself): no method, path or caller, only who it was and the decision.
pub fn head_timeout(
    recorder: &Recorder,
    conn: &ConnInfo,
    client_ip: Option<std::net::IpAddr>,
    request_id: &http::HeaderValue,
) {
    let started_at = Instant::now();
    recorder.finish(Exchange {
        request_id: request_id.to_str().unwrap_or_default().to_owned(),
        started: SystemTime::now(),
        started_at,
        client_ip,
        peer: conn.peer.ip().to_canonical(),
        method: None,
        route: None,
        path: String::new(),
        query: None,
        caller: None,
        upstream: None,
        status: 408,
        decision: Decision::HeadTimeout,
        bytes_in: Arc::default(),
        bytes_out: 0,
        to_head: std::time::Duration::ZERO,
        duration: std::time::Duration::ZERO,
        protocol: protocol(Version::HTTP_11, conn.tls),
        user_agent: None,
    });
}

/// How the record names a request's protocol.
fn protocol(version: Version, tls: bool) -> &'static str {
    match (version, tls) {
        (Version::HTTP_2, false) => "HTTP/2",
        (Version::HTTP_2, true) => "HTTP/2+tls",
        (Version::HTTP_10, false) => "HTTP/1.0",
        (Version::HTTP_10, true) => "HTTP/1.0+tls",
        (_, false) => "HTTP/1.1",
        (_, true) => "HTTP/1.1+tls",
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        if let Some(mut exchange) = self.exchange.take() {
            exchange.duration = exchange.started_at.elapsed();
            self.recorder.finish(exchange);
        }
    }
}
