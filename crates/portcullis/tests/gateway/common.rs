//! The harness: a real `portcullis` process in front of a real upstream that records what
//! it was sent.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A token long enough to pass every rule.
pub const TOKEN: &str = "test-token-0123456789abcdef0123456789abcdef";
/// The audit chain key the tests give when the store is PostgreSQL.
pub const AUDIT_KEY: &str = "test-audit-key-0123456789abcdef0123456789";
/// A second valid token, for rotation.
pub const OTHER_TOKEN: &str = "other-token-0123456789abcdef0123456789abcdef";

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The gateway's end of the connection the request came on.
    pub peer: SocketAddr,
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type UpstreamBody = BoxBody<Bytes, Infallible>;

/// A test upstream. It answers every request with a JSON summary of it and fingerprints
/// itself with `Server`, `X-Powered-By` and friends; a few paths behave specially:
/// `/slow/<ms>` waits before answering, `/status/<code>` answers with that status.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Self {
        Self::start_with(|_| None).await
    }

    /// Starts an upstream whose answers `custom` may take over (return `Some`).
    pub async fn start_with(
        custom: impl Fn(&Seen) -> Option<Response<UpstreamBody>> + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let custom = Arc::new(custom);
        let record = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                let custom = custom.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let record = record.clone();
                        let custom = custom.clone();
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = match body.collect().await {
                                Ok(collected) => collected.to_bytes(),
                                // The gateway cut the body off (e.g. over the limit).
                                Err(_) => Bytes::from_static(b"<aborted>"),
                            };
                            let seen = Seen {
                                peer,
                                method: parts.method,
                                uri: parts.uri.to_string(),
                                headers: parts.headers,
                                body,
                            };
                            record.lock().unwrap().push(seen.clone());
                            Ok::<_, Infallible>(match custom(&seen) {
                                Some(response) => response,
                                None => default_answer(&seen).await,
                            })
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to 10 s) until a request for `uri` has arrived: for tests that need a
    /// request to be in flight before they go on.
    pub async fn wait_for(&self, uri: &str) {
        for _ in 0..1000 {
            if self.seen().iter().any(|seen| seen.uri == uri) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the upstream never received {uri}");
    }

    /// The only request received so far.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(
            seen.len(),
            1,
            "expected exactly one upstream request, got {seen:#?}"
        );
        seen.into_iter().next().unwrap()
    }
}

async fn default_answer(seen: &Seen) -> Response<UpstreamBody> {
    let path = seen.uri.split('?').next().unwrap_or_default().to_owned();
    let mut status = StatusCode::OK;
    if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        status = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
    }
    let headers: HashMap<String, String> = seen
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let summary = serde_json::json!({
        "method": seen.method.as_str(),
        "uri": seen.uri,
        "headers": headers,
        "body_len": seen.body.len(),
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("server", "echo/1.0 (Debian)")
        .header("x-powered-by", "PHP/8.2")
        .header("x-aspnet-version", "4.0.30319")
        .header("x-aspnetmvc-version", "5.2")
        .header("via", "1.1 squid-internal-3")
        .header("access-control-allow-origin", "*")
        .header("access-control-allow-private-network", "true")
        .header("strict-transport-security", "max-age=1")
        .header("content-security-policy-report-only", "default-src *")
        .header(
            "proxy-status",
            "envoy; error=connection_refused; details=\"10.1.2.3\"",
        )
        .header("proxy-authenticate", "Basic realm=\"internal\"")
        .header("x-upstream", "yes")
        .body(full(summary.to_string()))
        .unwrap()
}

pub fn full(bytes: impl Into<Bytes>) -> UpstreamBody {
    Full::new(bytes.into()).boxed()
}

/// A running `portcullis` process.
pub struct Gateway {
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
    /// Copies stderr into `log` until the process exits.
    reader: Option<std::thread::JoinHandle<()>>,
}

/// How to start a gateway: arguments after `serve` and environment variables. The
/// environment is otherwise empty, so nothing from the machine leaks in.
pub struct Launch {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The size of the disk the data directory is on, when it is one of its own.
    pub disk: Option<u64>,
}

impl Launch {
    /// `serve` in front of `upstream` with [`TOKEN`] configured.
    pub fn new(upstream: &str) -> Self {
        Self::bare()
            .arg("--upstream")
            .arg(upstream)
            .env("PORTCULLIS_API_TOKENS", TOKEN)
    }

    /// `serve` with only listen addresses (port 0), no upstream and no token.
    pub fn bare() -> Self {
        Self {
            args: ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]
                .map(String::from)
                .to_vec(),
            env: Vec::new(),
            disk: None,
        }
    }

    /// Puts the data directory (`PORTCULLIS_DATA_DIR`, which must be set) on a disk of
    /// `bytes` of its own: a tmpfs mounted over it in a mount namespace of the gateway's
    /// own (`unshare`, as the user's root in a user namespace), which the test reaches
    /// through [`Gateway::seen_path`]. It goes away with the process.
    pub fn on_a_disk_of(mut self, bytes: u64) -> Self {
        self.disk = Some(bytes);
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), value.into()));
        self
    }

    /// `env` for each of `pairs`.
    pub fn envs(self, pairs: &[(&str, &str)]) -> Self {
        pairs
            .iter()
            .fold(self, |launch, (name, value)| launch.env(name, *value))
    }

    pub fn without_env(mut self, name: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self
    }

    pub fn start(self) -> Gateway {
        Gateway::start(self)
    }
}

/// A command for the binary with an empty environment, except for a fresh data
/// directory of its own (so no test shares, or leaves behind, a store in the source tree).
pub fn portcullis() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command.env_clear();
    command.env("PORTCULLIS_DATA_DIR", scratch_dir());
    command
}

/// [`portcullis`], run with the data directory given in `env` on a tmpfs of `bytes`
/// mounted for it alone. The binary keeps the process's id (each step `exec`s the next).
fn portcullis_on_a_disk_of(bytes: u64, env: &[(String, String)]) -> Command {
    let dir = env
        .iter()
        .find(|(name, _)| name == "PORTCULLIS_DATA_DIR")
        .map(|(_, dir)| dir.clone())
        .expect("a gateway on a disk of its own needs PORTCULLIS_DATA_DIR");
    let mut command = Command::new("/usr/bin/unshare");
    command
        .args(["--user", "--map-root-user", "--mount", "/bin/sh", "-c"])
        .arg(r#"/usr/bin/mount -t tmpfs -o "size=$1" tmpfs "$2" && shift 2 && exec "$@""#)
        .args([
            "sh",
            &bytes.to_string(),
            &dir,
            env!("CARGO_BIN_EXE_portcullis"),
        ])
        .env_clear();
    command
}

/// A new, empty directory under the test target's scratch space.
pub fn scratch_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("gateway")
        .join(format!("{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Gateway {
    fn start(launch: Launch) -> Self {
        let mut command = match launch.disk {
            None => portcullis(),
            Some(bytes) => portcullis_on_a_disk_of(bytes, &launch.env),
        };
        command
            .arg("serve")
            .args(&launch.args)
            .envs(launch.env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start portcullis");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&format!("{line}\n"));
                if let Some(addr) = logged_addr(&line, "portcullis listening") {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "portcullis did not start; its log:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Self {
            addr,
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The admin API's address, once it has logged it.
    pub fn admin_url(&self, path: &str) -> String {
        for _ in 0..200 {
            if let Some(addr) = self
                .log()
                .lines()
                .find_map(|line| logged_addr(line, "admin API listening"))
            {
                return format!("http://{addr}{path}");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the admin API did not start; log:\n{}", self.log());
    }

    /// Everything the process has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Whether the log says `text` within a few seconds (it is read on another thread).
    pub fn log_shows(&self, text: &str) -> bool {
        for _ in 0..200 {
            if self.log().contains(text) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Stops the process (SIGTERM) and returns everything it wrote. Every line about what
    /// happened before is in it, so a check that something is absent from the log cannot
    /// pass before the line was written.
    pub fn final_log(&mut self) -> String {
        self.terminate();
        self.whole_log()
    }

    /// The whole log of a gateway that has exited.
    pub fn whole_log(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader panicked");
        }
        self.log()
    }

    /// `path` as the process sees it (through its own mounts: [`Launch::on_a_disk_of`]).
    pub fn seen_path(&self, path: &Path) -> std::path::PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        Path::new("/proc")
            .join(self.pid().to_string())
            .join("root")
            .join(relative)
    }

    /// A command for the binary that runs in this gateway's user and mount namespaces, so
    /// that it sees the disk of [`Launch::on_a_disk_of`] where the gateway does (SQLite
    /// follows `/proc/<pid>/root` back to the test's own mounts).
    pub fn beside(&self) -> Command {
        let mut command = Command::new("/usr/bin/nsenter");
        command
            .args(["--target", &self.pid().to_string(), "--user", "--mount"])
            .arg(env!("CARGO_BIN_EXE_portcullis"))
            .env_clear();
        command
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.child.id(), "TERM");
        self.wait(Duration::from_secs(20))
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "portcullis did not exit in {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr=` of a log line that says `event`.
fn logged_addr(line: &str, event: &str) -> Option<String> {
    if !line.contains(event) {
        return None;
    }
    // `--log-format json`: the event's fields are at the top level.
    if let Ok(json) = serde_json::from_str::<Value>(line) {
        return json["addr"].as_str().map(str::to_owned);
    }
    let rest = line.split("addr=").nth(1)?;
    Some(rest.split_whitespace().next()?.to_owned())
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts that this is a problem+json refusal with `status` and problem `slug`, whose
    /// `request_id` is the one in `X-Request-ID`.
    pub fn assert_problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json")
        );
        let problem = self.json();
        assert_eq!(
            problem["type"],
            format!("urn:portcullis:problem:{slug}"),
            "{problem}"
        );
        assert_eq!(problem["status"], status);
        assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert_eq!(problem["request_id"].as_str(), self.header("x-request-id"));
        assert_security_headers(&self.headers);
        problem
    }
}

/// The headers every response must carry (over plain HTTP).
pub fn assert_security_headers(headers: &HeaderMap) {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(get("x-content-type-options"), Some("nosniff"));
    assert_eq!(get("x-frame-options"), Some("DENY"));
    // Capability routes send no referrer at all, which is stricter still.
    assert!(
        matches!(
            get("referrer-policy"),
            Some("strict-origin-when-cross-origin" | "no-referrer")
        ),
        "{:?}",
        get("referrer-policy")
    );
    assert_eq!(
        get("content-security-policy"),
        Some("default-src 'none'; frame-ancestors 'none'")
    );
    assert_eq!(get("cross-origin-opener-policy"), Some("same-origin"));
    assert_eq!(get("cross-origin-resource-policy"), Some("same-origin"));
    assert!(get("permissions-policy").is_some_and(|v| v.contains("camera=()")));
    assert!(get("x-request-id").is_some());
}

/// Sends a request with hyper's client and reads the whole response.
pub async fn send(request: Request<Full<Bytes>>) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.expect("request failed");
    read_reply(response).await
}

pub async fn read_reply(response: Response<Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    Reply {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body: body.collect().await.expect("read body").to_bytes(),
    }
}

/// `GET url` with the given headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(builder.body(Full::default()).unwrap()).await
}

/// `GET url` with [`TOKEN`].
pub async fn get_authorized(url: &str) -> Reply {
    get(url, &[("authorization", &format!("Bearer {TOKEN}"))]).await
}

/// Writes raw bytes and reads until the gateway closes the connection, for requests no
/// well-behaved client library would send.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("gateway did not close the connection")
        .unwrap();
    parse_raw(&bytes)
}

/// Parses a `Content-Length`-delimited HTTP/1.1 response.
pub fn parse_raw(bytes: &[u8]) -> Reply {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':').unwrap();
        headers.append(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        version: Version::HTTP_11,
        headers,
        body: Bytes::copy_from_slice(&bytes[split + 4..]),
    }
}

/// A free port for a server a test starts, stops and starts again itself (its own Redis,
/// the reference MCP server), from 20 000 up: below the range Linux hands out for port 0
/// (`ip_local_port_range`, 32 768 and up by default), so that no gateway of another test
/// is given it while that server is down or not yet up.
pub fn server_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(20_000);
    loop {
        let port = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(port < 32_768, "no free port below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An address on 127.0.0.1 that refuses connections for as long as the returned socket
/// lives: bound and never listening. A port bound and let go instead may be taken
/// meanwhile by another test's gateway, which would then answer in its place.
pub fn refusing_addr() -> (tokio::net::TcpSocket, SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

/// A GET request for `target` (sent as is) with the token, ready for [`raw`].
pub fn raw_get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Writes `text` to a new file in `dir`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// One frame of a [`ChannelBody`].
pub type Chunk = Result<hyper::body::Frame<Bytes>, Infallible>;

/// A body whose frames are produced, at their own pace, by a task.
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Chunk>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Chunk>> {
        self.0.poll_recv(cx)
    }
}

/// A [`ChannelBody`] fed by `producer`.
pub fn channel_body<F, Fut>(producer: F) -> ChannelBody
where
    F: FnOnce(tokio::sync::mpsc::Sender<Chunk>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(producer(tx));
    ChannelBody(rx)
}

/// A gateway with `config` as its config file and [`TOKEN`] as its static token (and
/// whatever `launch` adds), writing its access log: both in a new temporary directory,
/// returned with it.
pub fn start_configured(config: &str, launch: Launch) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "c.toml", config);
    let gateway = launch
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .arg("--config")
        .arg(path.to_str().unwrap())
        .arg("--access-log")
        .arg(dir.path().join("access.log").to_str().unwrap())
        .start();
    (dir, gateway)
}

/// The access log [`start_configured`] keeps in `dir`, once `gateway` has stopped (so
/// every record is written): one JSON object per line.
pub fn access_log_of(dir: &tempfile::TempDir, gateway: &mut Gateway) -> Vec<Value> {
    gateway.final_log();
    std::fs::read_to_string(dir.path().join("access.log"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The decisions of the main listener's requests in that access log (admin API requests
/// left out).
pub fn decisions_of(dir: &tempfile::TempDir, gateway: &mut Gateway) -> Vec<String> {
    access_log_of(dir, gateway)
        .iter()
        .filter(|line| line["admin"] != true)
        .map(|line| line["decision"].as_str().unwrap().to_owned())
        .collect()
}

/// `portcullis check --config` on `config` with [`TOKEN`], `env` and `args` added: its
/// exit code and what it printed.
pub fn check_config(config: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(dir.path(), "c.toml", config);
    let output = portcullis()
        .args(["check", "--config", path.to_str().unwrap()])
        .args(args)
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

/// `portcullis token create` on the SQLite store in `dir`: the new token.
pub fn mint(dir: &Path, name: &str, extra: &[&str]) -> String {
    create_token(dir, name, "read,write", extra).1
}

/// `portcullis token create` of a bearer token named `name` with `scopes` in the SQLite
/// store in `dir`: its id and the token.
pub fn mint_with_id(dir: &Path, name: &str, scopes: &str) -> (String, String) {
    create_token(dir, name, scopes, &[])
}

/// `portcullis token --data-dir DIR --json ARGS` on the SQLite store in `dir`, run to its
/// end.
pub fn token_command(dir: &Path, args: &[&str]) -> std::process::Output {
    portcullis()
        .args(["token", "--data-dir", dir.to_str().unwrap(), "--json"])
        .args(args)
        .output()
        .unwrap()
}

fn create_token(dir: &Path, name: &str, scopes: &str, extra: &[&str]) -> (String, String) {
    let args = [&["create", "--name", name, "--scopes", scopes], extra].concat();
    let output = token_command(dir, &args);
    assert!(output.status.success(), "{output:?}");
    let created: Value = serde_json::from_slice(&output.stdout).unwrap();
    (
        created["record"]["id"].as_str().unwrap().to_owned(),
        created["token"].as_str().unwrap().to_owned(),
    )
}

/// An upstream on 127.0.0.1 that reads each connection's request head and writes what
/// its answer makes of it, then closes; for `None`, it reads nothing more and stays silent.
/// It keeps the raw bytes of each head: for framing no HTTP library would produce.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub heads: Arc<Mutex<Vec<String>>>,
}

type RawAnswer = Arc<dyn Fn(&str) -> Option<&'static [u8]> + Send + Sync>;

impl RawUpstream {
    /// Answers every connection with `answer`, whatever it was sent.
    pub async fn start(answer: &'static [u8]) -> Self {
        Self::serve(Arc::new(move |_| Some(answer))).await
    }

    /// Answers each connection with what `answer` makes of its head.
    pub async fn answering(answer: fn(&str) -> Option<&'static [u8]>) -> Self {
        Self::serve(Arc::new(answer)).await
    }

    async fn serve(answer: RawAnswer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let record = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (record, answer) = (record.clone(), answer.clone());
                tokio::spawn(async move {
                    let head = read_head(&mut stream).await;
                    record.lock().unwrap().push(head.clone());
                    match answer(&head) {
                        Some(reply) => {
                            let _ = stream.write_all(reply).await;
                            let _ = stream.shutdown().await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        Self { addr, heads }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The bytes of a request or response head read from `stream`, up to its blank line.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}
