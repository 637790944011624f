//! Listeners: accept TCP or TLS connections (capped in number), serve HTTP/1.1 and, over
//! TLS when the client offers it, HTTP/2; shut down gracefully.
//!
//! The gateway runs one single-threaded runtime per worker thread (one per core by
//! default), each with its own `SO_REUSEPORT` listener, pipeline and upstream connection
//! pools, as nginx runs one process per core: a request is served start to finish on one
//! thread, with no cross-thread wake-ups on the hot path. What must hold across workers (the
//! connection cap) is shared.

mod deadline;
mod h2_refusals;
pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::base::context::ConnInfo;
use crate::base::exchange::Decision;
use crate::config::Config;
use crate::pipeline::{Gateway, Shared};
use crate::settings::Settings;
use crate::upstream::{Upstream, check_forever};
use crate::websocket::TunnelOpen;
use deadline::{
    GuardedBody, HeadDeadlineIo, Idle, OpenStreams, PhaseGuard, RequestPhase, TimeoutReply,
};
use h2_refusals::RefusalWatchIo;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS certificate or key could not be loaded.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Bound listeners with their pipelines, ready to [`run`](Self::run).
pub struct Server {
    workers: Vec<Worker>,
    /// The upstreams with active health checks, each checked by one task of the server's
    /// own (not one per worker).
    checked: Vec<Arc<Upstream>>,
    local_addr: SocketAddr,
    tls: bool,
}

/// One worker thread's share of the server.
struct Worker {
    listener: std::net::TcpListener,
    tls: Option<TlsAcceptor>,
    connections: Arc<Connections>,
    permits: Arc<Semaphore>,
    shutdown_grace: Duration,
    /// Tells the worker's open WebSockets to close (1001), when the grace period is over.
    close_tunnels: watch::Sender<bool>,
}

/// What every connection task of one worker needs.
struct Connections {
    gateway: Arc<Gateway>,
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    header_timeout: Duration,
    idle_timeout: Duration,
}

impl Server {
    /// Builds a pipeline per worker for `config`, validated as `settings`, around
    /// `shared`, and binds their listeners.
    pub fn bind(
        config: &Config,
        settings: &Settings,
        shared: &Shared,
    ) -> Result<Self, ServerError> {
        let tls = match &config.tls {
            Some(files) => Some(TlsAcceptor::from(tls::load(&files.cert, &files.key)?)),
            None => None,
        };
        let count = config.worker_count();
        let listeners =
            bind_reuseport(config.listen, count).map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listeners[0]
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let permits = Arc::new(Semaphore::new(config.limits.max_connections));
        let workers = listeners
            .into_iter()
            .map(|listener| {
                let (close_tunnels, closing) = watch::channel(false);
                let gateway = Gateway::new(config, settings, shared).closing_tunnels_on(closing);
                Ok(Worker {
                    listener,
                    tls: tls.clone(),
                    connections: Arc::new(Connections::new(config, gateway)),
                    permits: permits.clone(),
                    shutdown_grace: config.limits.shutdown_grace,
                    close_tunnels,
                })
            })
            .collect::<Result<Vec<_>, ServerError>>()?;
        let checked = settings
            .upstreams
            .iter()
            .zip(&shared.upstreams)
            .filter(|(upstream, _)| upstream.resilience.health_check.is_some())
            .map(|(upstream, state)| upstream.instance(state))
            .collect();
        Ok(Self {
            workers,
            checked,
            local_addr,
            tls: tls.is_some(),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops accepting and gives in-flight
    /// requests the configured grace period to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = watch::channel(false);
        let checks: Vec<_> = self
            .checked
            .into_iter()
            .map(|upstream| tokio::spawn(check_forever(upstream)))
            .collect();
        let mut threads = Vec::new();
        for (index, worker) in self.workers.into_iter().enumerate() {
            let stopped = stopped.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("portcullis-worker-{index}"))
                .spawn(move || worker.run(stopped));
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(error) => error!(%error, "cannot start a worker thread"),
            }
        }
        info!(addr = %self.local_addr, tls = self.tls, workers = threads.len(), "portcullis listening");
        shutdown.await;
        for check in checks {
            check.abort();
        }
        let _ = stop.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    error!("a worker thread panicked");
                }
            }
        });
        let _ = joined.await;
    }
}

/// How long, after the grace period, open WebSockets have to take their close frames.
const TUNNEL_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// `count` listeners on one address with `SO_REUSEPORT`, so the kernel spreads new
/// connections across workers. With port 0, the first picks the port and the rest share it.
///
/// Any process of the same user could join such a group and take a share of the
/// connections: a second gateway with an older configuration, or none at all. So the
/// address is first bound without `SO_REUSEPORT`, which fails while anything listens there,
/// and released just before the group binds it.
fn bind_reuseport(addr: SocketAddr, count: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    // A connection of an earlier process in TIME_WAIT is no listener: SO_REUSEADDR on all.
    let socket_for = |addr: SocketAddr| {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        Ok::<_, std::io::Error>(socket)
    };
    if addr.port() != 0 {
        socket_for(addr)?.bind(&addr.into())?;
    }
    let mut listeners: Vec<std::net::TcpListener> = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = socket_for(addr)?;
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

impl Worker {
    /// Runs this worker's single-threaded runtime until `stopped` turns true.
    fn run(self, stopped: watch::Receiver<bool>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => return error!(%error, "cannot start a worker runtime"),
        };
        runtime.block_on(self.serve(stopped));
    }

    async fn serve(self, mut stopped: watch::Receiver<bool>) {
        let listener = match TcpListener::from_std(self.listener) {
            Ok(listener) => listener,
            Err(error) => return error!(%error, "cannot register the listener"),
        };
        let connection_stop = stopped.clone();
        let shutdown = stopped.wait_for(|stop| *stop);
        tokio::pin!(shutdown);
        let graceful = GracefulShutdown::new();
        loop {
            let (stream, peer) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: back off, then go on.
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // At the cap, the worker holds this one connection until a slot frees and
            // accepts nothing more, so further connections wait in the kernel's backlog.
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = self.permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let connections = self.connections.clone();
            let tls = self.tls.clone();
            let watcher = graceful.watcher();
            let stopped = connection_stop.clone();
            tokio::spawn(async move {
                connections.serve(stream, peer, tls, watcher, stopped).await;
                drop(permit);
            });
        }
        drop(listener);
        info!(grace = ?self.shutdown_grace, "shutting down: no new connections; letting in-flight requests finish");
        let drained = graceful.shutdown();
        tokio::pin!(drained);
        if tokio::time::timeout(self.shutdown_grace, &mut drained)
            .await
            .is_err()
        {
            warn!("grace period over; closing the remaining connections");
            // Open WebSockets get a close frame (1001) and their records are finished. Each
            // holds a receiver of the signal until it is through, beside the gateway's own:
            // what else is in flight is not waited for again.
            let _ = self.close_tunnels.send(true);
            let tunnels_closed = async {
                while self.close_tunnels.receiver_count() > 1 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let _ = tokio::time::timeout(TUNNEL_CLOSE_WAIT, async {
                tokio::select! {
                    _ = &mut drained => {}
                    _ = tunnels_closed => {}
                }
            })
            .await;
        }
    }
}

impl Connections {
    fn new(config: &Config, gateway: Gateway) -> Self {
        let gateway = Arc::new(gateway);
        let limits = &config.limits;
        // hyper's own limits sit well above ours so that our checks, which answer with
        // problem+json, are the ones clients meet.
        let head_budget = limits.max_uri_bytes + limits.max_header_bytes;
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            // Our own deadline (HeadDeadlineIo) answers 408; hyper's would close silently,
            // and giving it a timer turns its default 30 s one on.
            .header_read_timeout(None)
            .max_buf_size((2 * head_budget).max(16 * 1024))
            .max_headers((2 * limits.max_headers).max(100));
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            // WebSockets over HTTP/2 (RFC 8441 §3).
            .enable_connect_protocol()
            .max_concurrent_streams(256)
            .max_header_list_size(u32::try_from(2 * head_budget).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        Self {
            http1,
            http2,
            header_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            gateway,
        }
    }

    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        tls: Option<TlsAcceptor>,
        watcher: Watcher,
        stopped: watch::Receiver<bool>,
    ) {
        let _ = stream.set_nodelay(true);
        let Some(acceptor) = tls else {
            let conn = ConnInfo { peer, tls: false };
            self.serve_http1(stream, conn, stopped).await;
            // Held until the connection ends, so that a graceful shutdown waits for it.
            return drop(watcher);
        };
        let stream = match tokio::time::timeout(self.header_timeout, acceptor.accept(stream)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => return debug!(%peer, "TLS handshake timed out"),
        };
        let conn = ConnInfo { peer, tls: true };
        if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
            self.serve_http2(stream, conn, stopped).await;
        } else {
            self.serve_http1(stream, conn, stopped).await;
        }
        drop(watcher);
    }

    /// Serves an HTTP/2 connection until it ends, the server stops, or it idles: a
    /// connection that has not opened a stream within the header timeout is dropped; one
    /// with no stream open for the idle timeout, or whose open streams all wait on a client
    /// that has taken nothing for the idle timeout (a zero flow-control window), is sent
    /// GOAWAY, and dropped if it is still idle or stalled a header timeout later.
    async fn serve_http2<I>(&self, io: I, conn: ConnInfo, mut stopped: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let gateway = self.gateway.clone();
        let io = RefusalWatchIo::new(
            io,
            Box::new(move |status, decision| {
                let request_id = crate::base::context::new_request_id();
                gateway.record_refused_head(
                    &conn,
                    &request_id,
                    http::Version::HTTP_2,
                    status,
                    decision,
                );
            }),
        );
        let streams = OpenStreams::new();
        let gateway = self.gateway.clone();
        let opener = streams.clone();
        let service = service_fn(move |request| {
            let gateway = gateway.clone();
            let stream = opener.open();
            async move {
                let response = gateway.handle(request, &conn).await;
                // A WebSocket's stream stays open, past its (empty) answer, until it closes.
                let stream = match response.extensions().get::<TunnelOpen>() {
                    Some(open) => {
                        let (open, stream) = (open.clone(), stream.into_tunnel());
                        tokio::spawn(async move {
                            open.closed().await;
                            drop(stream);
                        });
                        None
                    }
                    None => Some(stream),
                };
                Ok::<_, Infallible>(response.map(|body| GuardedBody::new(body, stream)))
            }
        });
        let connection = self.http2.serve_connection(TokioIo::new(io), service);
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            // Once told to go away, a connection gets a header timeout to finish: a stream
            // that is stalled then, or none at all, is not waited for.
            let quiet = if closing {
                self.header_timeout
            } else {
                self.idle_timeout
            };
            let idle = streams.idle(self.header_timeout, quiet);
            tokio::select! {
                ended = connection.as_mut() => {
                    if let Err(error) = ended {
                        debug!(peer = %conn.peer, %error, "HTTP/2 connection ended with an error");
                    }
                    return;
                }
                _ = stopped.wait_for(|stop| *stop), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                idle = idle => {
                    if closing || idle == Idle::NeverUsed {
                        return debug!(peer = %conn.peer, ?idle, "HTTP/2 connection closed: no stream");
                    }
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }

    /// Serves an HTTP/1.1 connection until it ends (once the server stops, after the
    /// response in progress), and a WebSocket it was handed over to until that closes.
    async fn serve_http1<I>(&self, io: I, conn: ConnInfo, mut stopped: watch::Receiver<bool>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let phase = Arc::new(RequestPhase::default());
        let gateway = self.gateway.clone();
        let reply: TimeoutReply = Arc::new(move || {
            let reply = gateway.head_timeout_reply(&conn);
            render_http1(reply.status(), reply.headers(), reply.body())
        });
        let io = HeadDeadlineIo::new(
            io,
            phase.clone(),
            self.header_timeout,
            self.idle_timeout,
            reply,
        );
        let gateway = self.gateway.clone();
        let tunnel = Arc::new(OnceLock::<TunnelOpen>::new());
        let opened = tunnel.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let gateway = gateway.clone();
            let opened = opened.clone();
            phase.request_started();
            let phase = phase.clone();
            let served = PhaseGuard::new(phase.clone());
            async move {
                let response = gateway.handle(request, &conn).await;
                if let Some(open) = response.extensions().get::<TunnelOpen>() {
                    phase.upgraded();
                    let _ = opened.set(open.clone());
                }
                Ok::<_, Infallible>(response.map(|body| GuardedBody::new(body, served)))
            }
        });
        // In a block of its own, so that the connection's buffers are freed before a
        // WebSocket it was handed over to is waited for.
        let ended = {
            let connection = self
                .http1
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                ended = connection.as_mut() => ended,
                _ = async { stopped.wait_for(|stop| *stop).await.map(|_| ()) } => {
                    connection.as_mut().graceful_shutdown();
                    connection.as_mut().await
                }
            }
        };
        // A connection handed over to a WebSocket keeps its slot until the WebSocket closes.
        if let Some(open) = tunnel.get() {
            open.clone().closed().await;
        }
        if let Err(error) = ended {
            debug!(peer = %conn.peer, %error, "HTTP/1.1 connection ended with an error");
            if let Some((status, decision)) = refused_head(&error) {
                let request_id = crate::base::context::new_request_id();
                self.gateway.record_refused_head(
                    &conn,
                    &request_id,
                    http::Version::HTTP_11,
                    Some(status),
                    decision,
                );
            }
        }
    }
}

/// The status hyper answered a request head it could not parse with, and the decision the
/// record keeps; `None` when the error is not about a head it answered (hyper answers
/// every head it rejects, except an HTTP/2 preface sent over HTTP/1.1).
fn refused_head(error: &hyper::Error) -> Option<(StatusCode, Decision)> {
    // hyper answers a malformed method, target, version or field (400), a head too large
    // (431) or a target too long (414); not an HTTP/2 preface, nor its own internal error.
    // It tells these apart only in its message.
    let message = error.to_string();
    if !error.is_parse() || error.is_parse_version_h2() || message.starts_with("internal error") {
        return None;
    }
    Some(if !error.is_parse_too_large() {
        (StatusCode::BAD_REQUEST, Decision::BadRequest)
    } else if message.contains("URI too long") {
        (StatusCode::URI_TOO_LONG, Decision::UriTooLong)
    } else {
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Decision::HeadersTooLarge,
        )
    })
}

/// Renders a complete HTTP/1.1 response, for the rare answer written outside hyper.
fn render_http1(status: http::StatusCode, headers: &http::HeaderMap, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(HeaderValue::from(body.len()).as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n\r\n");
    out.extend_from_slice(body);
    Bytes::from(out)
}
