//! A request's exchange record while the request is served: begun when the head is read,
//! filled as the stages learn who called and where the request went, and handed to the
//! response body ([`RecordedBody`]), which finishes it when the body ends. A request whose
//! handling is dropped before it has a response (the client went away mid-upload) is
//! finished here, as `client_aborted`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{Request, Response, Version, header};
use http_body_util::BodyExt;

use crate::auth::Principal;
use crate::base::body::ResponseBody;
use crate::base::context::{ConnInfo, RequestContext};
use crate::base::exchange::{BodySample, Decision, Exchange, Samples, protocol};
use crate::base::problem::{Problem, ProblemKind};
use crate::recorder::{RecordedBody, Recorder};
use crate::redact::{MASK, Redactor};
use crate::routes::{Route, Router};
use crate::websocket::{Ended, OnClose};

/// A record being filled; finished as `client_aborted` if dropped before [`Self::respond`].
pub struct PendingRecord {
    /// The record, boxed once, here, and handed on as it is with its recorder to the
    /// response body; taken when handed on.
    pending: Option<(Box<Exchange>, Recorder)>,
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
        let exchange = Box::new(Exchange {
            client_ip: ctx.known_client_ip(),
            method: Some(request.method().clone()),
            path: match router.masked_path(uri.path()) {
                Cow::Borrowed(path) => redactor.path(path).into_owned(),
                Cow::Owned(path) => redactor.path(&path).into_owned(),
            },
            query: uri.query().map(|query| redactor.query(query)),
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
            ..Exchange::begin(
                ctx.request_id.clone(),
                conn.peer.ip().to_canonical(),
                protocol(request.version(), conn.tls),
            )
        });
        Self {
            pending: Some((exchange, recorder.clone())),
        }
    }

    /// Where the request body's bytes are counted.
    pub fn bytes_in(&self) -> Arc<AtomicU64> {
        self.pending
            .as_ref()
            .map(|(exchange, _)| exchange.bytes_in.clone())
            .unwrap_or_default()
    }

    /// Keeps the first `limit` bytes of the request's and the response's bodies for the
    /// audit log; where the request body's go.
    pub fn sample_bodies<B>(
        &mut self,
        limit: usize,
        request: &Request<B>,
    ) -> Arc<std::sync::Mutex<BodySample>> {
        let content_type = request.headers().get(header::CONTENT_TYPE).cloned();
        let samples = Samples::new(limit, content_type);
        let request_sample = samples.request.clone();
        if let Some((exchange, _)) = &mut self.pending {
            exchange.samples = Some(Box::new(samples));
        }
        request_sample
    }

    /// Notes who called.
    pub fn caller(&mut self, principal: &Principal) {
        if let Some((exchange, _)) = &mut self.pending {
            exchange.caller = Some(principal.caller());
        }
    }

    /// Notes the route and the upstream the request goes to (so that a record finished
    /// before the answer, as when the connection is cut, still names them).
    pub fn routed(&mut self, route: &Route) {
        if let Some((exchange, _)) = &mut self.pending {
            exchange.route = Some(route.prefix().clone());
            exchange.upstream = Some(route.upstream().name().clone());
        }
    }

    /// Holds the request until its admission event (the record so far: who, what, from
    /// where, allowed, on `route`) is durable: audit strict mode, so that no request it
    /// covers reaches the upstream unrecorded.
    pub async fn admit(&self, route: &Route) -> Result<(), Problem> {
        let Some((exchange, recorder)) = &self.pending else {
            return Err(not_admitted());
        };
        let mut admission = Box::new(Exchange::clone(exchange));
        admission.route = Some(route.prefix().clone());
        admission.decision = Decision::Allowed;
        recorder.admit(admission).await.map_err(|_| not_admitted())
    }

    /// Completes the record with the response's head, and hands it to the response's body,
    /// which finishes it when it ends.
    pub fn respond(
        mut self,
        response: Response<ResponseBody>,
        decision: Decision,
        route: Option<&Route>,
    ) -> Response<ResponseBody> {
        let Some((mut exchange, recorder)) = self.pending.take() else {
            return response;
        };
        exchange.status = response.status().as_u16();
        exchange.decision = decision;
        // A path refused for its shape may dodge the capability mask (`/outline//SECRET`,
        // `/x/../outline/SECRET`): it is not kept at all.
        if decision == Decision::PathRefused {
            exchange.path = MASK.to_owned();
        }
        exchange.route = route.map(|route| route.prefix().clone());
        exchange.to_head = exchange.started_at.elapsed();
        if let Some(samples) = &mut exchange.samples {
            samples.response.content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        }
        response.map(|body| RecordedBody::new(body, exchange, recorder).boxed_unsync())
    }
}

impl PendingRecord {
    /// Completes the record with the answer that opened a WebSocket, and returns what
    /// finishes it when the WebSocket closes: with the bytes it carried each way, and why
    /// it closed when the gateway closed it.
    pub fn open_tunnel(
        mut self,
        response: Response<ResponseBody>,
        route: Option<&Route>,
    ) -> (Response<ResponseBody>, Option<OnClose>) {
        let Some((mut exchange, recorder)) = self.pending.take() else {
            return (response, None);
        };
        exchange.status = response.status().as_u16();
        exchange.decision = Decision::Allowed;
        exchange.route = route.map(|route| route.prefix().clone());
        exchange.to_head = exchange.started_at.elapsed();
        let on_close: OnClose = Box::new(move |relayed| {
            match relayed {
                Some(relayed) => {
                    exchange
                        .bytes_in
                        .fetch_add(relayed.from_client, Ordering::Relaxed);
                    exchange.bytes_out = relayed.to_client;
                    exchange.decision = match relayed.ended {
                        Ended::Closed => Decision::Allowed,
                        Ended::Idle => Decision::StreamIdle,
                        Ended::Lifetime => Decision::StreamLifetime,
                        Ended::Shutdown => Decision::StreamShutdown,
                        Ended::Revoked => Decision::StreamRevoked,
                        Ended::ClientMessageTooLarge | Ended::UpstreamMessageTooLarge => {
                            Decision::MessageTooLarge
                        }
                    };
                }
                None => exchange.decision = Decision::ClientAborted,
            }
            exchange.duration = exchange.started_at.elapsed();
            recorder.finish(exchange);
        });
        (response, Some(on_close))
    }
}

/// The refusal of a request whose admission event could not be made durable.
pub fn not_admitted() -> Problem {
    Problem::new(ProblemKind::AuditUnavailable)
        .with_detail("the audit log cannot record the request, so it was not forwarded")
        .with_retry_after(std::time::Duration::from_secs(1))
}

/// A request head its connection refused before the pipeline saw it.
pub struct RefusedHead {
    /// The protocol it came in.
    pub version: Version,
    /// What the client was answered; none when its HTTP/2 stream was only reset.
    pub status: Option<http::StatusCode>,
    /// Why.
    pub decision: Decision,
}

/// The record of a request refused by its connection before the pipeline saw it: a head
/// that did not arrive in time (408), one the HTTP parser rejected (400, 414, 431), or an
/// HTTP/2 stream h2 refused. It has no method, path or caller, only who sent it and what
/// it was told.
pub fn refused_head(
    recorder: &Recorder,
    conn: &ConnInfo,
    client_ip: Option<std::net::IpAddr>,
    request_id: &http::HeaderValue,
    head: RefusedHead,
) {
    recorder.finish(Box::new(Exchange {
        client_ip,
        status: head.status.map_or(0, |status| status.as_u16()),
        decision: head.decision,
        ..Exchange::begin(
            request_id.clone(),
            conn.peer.ip().to_canonical(),
            protocol(head.version, conn.tls),
        )
    }));
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        if let Some((mut exchange, recorder)) = self.pending.take() {
            exchange.duration = exchange.started_at.elapsed();
            recorder.finish(exchange);
        }
    }
}
