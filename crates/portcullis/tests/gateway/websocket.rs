//! WebSocket pass-through against a real WebSocket server and client (tokio-tungstenite):
//! the handshake through the whole request path, refusals, origins, the limits of an open
//! WebSocket and how each closes, HTTP/2 extended CONNECT, shutdown.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::HeaderMap;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::common::*;

/// A WebSocket echo server: echoes every data message, accepts the first subprotocol
/// offered, and keeps each handshake's headers and the close frame each connection got.
pub struct EchoServer {
    pub addr: SocketAddr,
    handshakes: Arc<Mutex<Vec<HeaderMap>>>,
    closes: Arc<Mutex<Vec<Option<u16>>>>,
}

impl EchoServer {
    // tungstenite's handshake callback returns its (large) error response by value.
    #[allow(clippy::result_large_err)]
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let closes = Arc::new(Mutex::new(Vec::new()));
        let (seen, closed) = (handshakes.clone(), closes.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, closed) = (seen.clone(), closed.clone());
                tokio::spawn(async move {
                    let callback = |request: &tungstenite::handshake::server::Request,
                                    mut response: tungstenite::handshake::server::Response| {
                        seen.lock().unwrap().push(request.headers().clone());
                        if let Some(offered) = request.headers().get("sec-websocket-protocol") {
                            let first = offered.to_str().unwrap().split(',').next().unwrap();
                            response
                                .headers_mut()
                                .insert("sec-websocket-protocol", first.trim().parse().unwrap());
                        }
                        Ok(response)
                    };
                    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                    else {
                        return;
                    };
                    while let Some(Ok(message)) = ws.next().await {
                        match message {
                            Message::Text(_) | Message::Binary(_) => {
                                let echoed = ws.send(message).await;
                                if echoed.is_err() {
                                    break;
                                }
                            }
                            Message::Close(frame) => {
                                closed
                                    .lock()
                                    .unwrap()
                                    .push(frame.map(|f| u16::from(f.code)));
                                break;
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        Self {
            addr,
            handshakes,
            closes,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn handshakes(&self) -> Vec<HeaderMap> {
        self.handshakes.lock().unwrap().clone()
    }

    /// The close codes connections got, waiting a little for one to arrive.
    pub async fn closes(&self) -> Vec<Option<u16>> {
        for _ in 0..100 {
            if !self.closes.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.closes.lock().unwrap().clone()
    }
}

/// A config with `/ws` (WebSockets allowed, with `ws_options`) and `/plain` (not), both to
/// `upstream`, and `extra` at the top.
pub fn config(upstream: &str, ws_options: &str, extra: &str) -> String {
    format!(
        "{extra}\n[upstreams.echo]\nurl = \"{upstream}\"\n\
         [[routes]]\npath_prefix = \"/ws\"\nupstream = \"echo\"\nwebsocket = true\n{ws_options}\n\
         [[routes]]\npath_prefix = \"/plain\"\nupstream = \"echo\"\n"
    )
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket to `path` on `gateway` with the token and `headers`.
async fn connect(
    gateway: &Gateway,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, http::Response<Option<Vec<u8>>>), tungstenite::Error> {
    let mut request = format!("ws://{}{path}", gateway.addr)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    // Given headers replace the token's.
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes()).unwrap();
        request.headers_mut().insert(name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await
}

/// The next message that is not a ping or pong, within a few seconds.
async fn next_message(ws: &mut Client) -> Option<Message> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no message in time");
        match next {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(message)) => return Some(message),
            Some(Err(_)) | None => return None,
        }
    }
}

fn close_code(message: Option<Message>) -> Option<u16> {
    match message {
        Some(Message::Close(Some(CloseFrame { code, .. }))) => Some(u16::from(code)),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

/// A raw handshake for `path` with `extra` header lines, sent as is; the connection closes
/// after the answer.
fn raw_handshake(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn messages_pass_both_ways_with_the_handshake_headers_end_to_end_rfc_6455_4() {
    let echo = EchoServer::start().await;
    let (dir, mut gateway) = start_configured(&config(&echo.url(), "", ""), Launch::bare());
    let (mut ws, response) = connect(
        &gateway,
        "/ws/live?room=1",
        &[("sec-websocket-protocol", "chat.v2, chat.v1")],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat.v2");
    assert!(response.headers().contains_key("x-request-id"));

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("hello")));
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::binary(big)));
    ws.close(None).await.unwrap();
    while next_message(&mut ws).await.is_some() {}

    let seen = echo.handshakes();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0];
    assert_eq!(headers["sec-websocket-protocol"], "chat.v2, chat.v1");
    assert_eq!(headers["sec-websocket-version"], "13");
    assert!(headers.contains_key("sec-websocket-key"));
    assert_eq!(headers["upgrade"], "websocket");
    assert!(headers.contains_key("x-forwarded-for"));
    assert!(headers.contains_key("x-request-id"));
    assert!(
        !headers.contains_key("authorization"),
        "the client's credential is for the gateway"
    );

    let records = access_log_of(&dir, &mut gateway);
    let record = records
        .iter()
        .find(|r| r["path"] == "/ws/live")
        .expect("the WebSocket's record");
    assert_eq!(record["status"], 101);
    assert_eq!(record["decision"], "allowed");
    assert_eq!(record["upstream"], "echo");
    assert!(record["bytes_in"].as_u64().unwrap() > 200_000, "{record}");
    assert!(record["bytes_out"].as_u64().unwrap() > 200_000, "{record}");
}

#[tokio::test]
async fn handshakes_the_gateway_refuses_never_reach_the_upstream() {
    let echo = EchoServer::start().await;
    let (dir, mut gateway) = start_configured(
        &config(
            &echo.url(),
            "",
            "[cors]\nallowed_origins = [\"https://app.example\"]\n",
        ),
        Launch::bare(),
    );
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");

    // A route without `websocket = true`.
    let reply = raw(gateway.addr, &raw_handshake("/plain/x", &auth)).await;
    let problem = reply.assert_problem(403, "upgrade-refused");
    assert!(problem["detail"].as_str().unwrap().contains("WebSocket"));

    // No credential: 401, as for any request.
    raw(gateway.addr, &raw_handshake("/ws/x", ""))
        .await
        .assert_problem(401, "unauthorized");

    // Cross-site WebSocket hijacking: a page elsewhere, with or without a credential.
    for origin in [
        "https://evil.example",
        "null",
        "https://app.example.evil.example",
    ] {
        let extra = format!("{auth}Origin: {origin}\r\n");
        raw(gateway.addr, &raw_handshake("/ws/x", &extra))
            .await
            .assert_problem(403, "origin-refused");
        raw(
            gateway.addr,
            &raw_handshake("/ws/x", &format!("Origin: {origin}\r\n")),
        )
        .await
        .assert_problem(403, "origin-refused");
    }
    // A body after the head would reach the upstream as WebSocket bytes after the switch.
    let with_body = raw_handshake("/ws/x", &format!("{auth}Content-Length: 5\r\n"));
    let mut with_body = with_body;
    with_body.extend_from_slice(b"hello");
    raw(gateway.addr, &with_body)
        .await
        .assert_problem(400, "bad-request");
    assert!(echo.handshakes().is_empty(), "nothing reached the upstream");

    // The allowed origin, and a client that sends none, get through.
    let (ws, _) = connect(&gateway, "/ws/x", &[("origin", "https://app.example")])
        .await
        .unwrap();
    drop(ws);
    let (ws, _) = connect(&gateway, "/ws/x", &[]).await.unwrap();
    drop(ws);
    assert_eq!(echo.handshakes().len(), 2);

    let decisions = decisions_of(&dir, &mut gateway);
    assert!(
        decisions.contains(&"upgrade_refused".to_owned()),
        "{decisions:?}"
    );
    assert_eq!(
        decisions.iter().filter(|d| *d == "origin_refused").count(),
        6,
        "{decisions:?}"
    );
}

#[tokio::test]
async fn a_route_may_list_its_own_origins() {
    let echo = EchoServer::start().await;
    let (_dir, gateway) = start_configured(
        &config(
            &echo.url(),
            "allowed_origins = [\"https://dash.example\"]",
            "[cors]\nallowed_origins = [\"https://app.example\"]\n",
        ),
        Launch::bare(),
    );
    assert!(
        connect(&gateway, "/ws/x", &[("origin", "https://dash.example")])
            .await
            .is_ok()
    );
    match connect(&gateway, "/ws/x", &[("origin", "https://app.example")]).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
}

#[tokio::test]
async fn an_idle_websocket_is_closed_with_1001_and_its_record_says_why() {
    let echo = EchoServer::start().await;
    let (dir, mut gateway) = start_configured(
        &config(&echo.url(), "stream_idle_timeout = \"1s\"", ""),
        Launch::bare(),
    );
    let (mut ws, _) = connect(&gateway, "/ws/idle", &[]).await.unwrap();
    // Traffic keeps it open past the idle timeout.
    for i in 0..4 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Some(Message::text(format!("{i}")))
        );
    }
    let started = std::time::Instant::now();
    assert_eq!(close_code(next_message(&mut ws).await), Some(1001));
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(
        echo.closes().await,
        vec![Some(1001)],
        "the upstream is told too"
    );
    let decisions = decisions_of(&dir, &mut gateway);
    assert_eq!(decisions, ["stream_idle"]);
}

#[tokio::test]
async fn a_websocket_is_closed_at_its_lifetime_however_busy() {
    let echo = EchoServer::start().await;
    let (dir, mut gateway) = start_configured(
        &config(&echo.url(), "stream_max_lifetime = \"1s\"", ""),
        Launch::bare(),
    );
    let (mut ws, _) = connect(&gateway, "/ws/busy", &[]).await.unwrap();
    let mut closed = None;
    for i in 0..50 {
        if ws.send(Message::text(format!("{i}"))).await.is_err() {
            break;
        }
        match next_message(&mut ws).await {
            Some(Message::Text(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => {
                closed = Some(close_code(other));
                break;
            }
        }
    }
    assert_eq!(closed, Some(Some(1001)));
    assert_eq!(decisions_of(&dir, &mut gateway), ["stream_lifetime"]);
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009_rfc_6455_7_4_1() {
    let echo = EchoServer::start().await;
    let (dir, mut gateway) = start_configured(
        &config(&echo.url(), "max_message_bytes = 1000", ""),
        Launch::bare(),
    );
    let (mut ws, _) = connect(&gateway, "/ws/big", &[]).await.unwrap();
    ws.send(Message::binary(vec![1u8; 1000])).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Some(Message::binary(vec![1u8; 1000]))
    );
    ws.send(Message::binary(vec![1u8; 1001])).await.unwrap();
    assert_eq!(close_code(next_message(&mut ws).await), Some(1009));
    assert_eq!(echo.closes().await, vec![Some(1001)]);
    assert_eq!(decisions_of(&dir, &mut gateway), ["message_too_large"]);
}

/// A whole message that arrives in the same read as the frame that takes the next one over
/// the limit still goes on (it went on when the two came apart): what arrives does not
/// depend on how the bytes were cut into reads.
#[tokio::test]
async fn a_message_before_one_over_the_limit_goes_on_whatever_the_reads() {
    let echo = EchoServer::start().await;
    let (dir, mut gateway) = start_configured(
        &config(&echo.url(), "max_message_bytes = 1000", ""),
        Launch::bare(),
    );
    let (mut ws, _) = connect(&gateway, "/ws/big", &[]).await.unwrap();
    // One write: an 11-byte text frame (2 + 4 + 11 bytes, masked) and one over the limit.
    ws.feed(Message::text("SMALL-VALID")).await.unwrap();
    ws.feed(Message::binary(vec![1u8; 1001])).await.unwrap();
    ws.flush().await.unwrap();
    assert_eq!(close_code(next_message(&mut ws).await), Some(1009));
    let records = access_log_of(&dir, &mut gateway);
    let record = records.iter().find(|r| r["path"] == "/ws/big").unwrap();
    assert_eq!(record["decision"], "message_too_large");
    assert_eq!(
        record["bytes_in"], 17,
        "the small message went on: {record}"
    );
}

#[tokio::test]
async fn the_connection_deadlines_never_fire_inside_a_websocket() {
    let echo = EchoServer::start().await;
    let (_dir, gateway) = start_configured(
        &config(
            &echo.url(),
            "",
            "[limits]\nheader_read_timeout = \"500ms\"\nidle_timeout = \"500ms\"\n",
        ),
        Launch::bare(),
    );
    let (mut ws, _) = connect(&gateway, "/ws/quiet", &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Some(Message::text("still here"))
    );
}

#[tokio::test]
async fn shutdown_closes_open_websockets_with_1001_after_the_grace_period() {
    let echo = EchoServer::start().await;
    let (dir, mut gateway) = start_configured(
        &config(&echo.url(), "", "[limits]\nshutdown_grace = \"1s\"\n"),
        Launch::bare(),
    );
    let (mut ws, _) = connect(&gateway, "/ws/open", &[]).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("before")));
    let sent = std::time::Instant::now();
    signal(gateway.pid(), "TERM");
    assert_eq!(close_code(next_message(&mut ws).await), Some(1001));
    assert!(
        sent.elapsed() >= Duration::from_millis(900),
        "open for the grace period"
    );
    assert!(gateway.wait(Duration::from_secs(20)).success());
    assert_eq!(echo.closes().await, vec![Some(1001)]);
    gateway.whole_log();
    let log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    assert!(log.contains("\"decision\":\"stream_shutdown\""), "{log}");
}

#[tokio::test]
async fn an_upstream_that_refuses_the_upgrade_is_answered_as_it_answered() {
    // A plain HTTP upstream answers the handshake 200, without switching.
    let upstream = Upstream::start().await;
    let (_dir, gateway) = start_configured(&config(&upstream.url(), "", ""), Launch::bare());
    match connect(&gateway, "/ws/not-a-websocket", &[]).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 200),
        other => panic!("expected the upstream's 200, got {other:?}"),
    }
    let seen = upstream.only();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("connection"), Some("upgrade"));
}

#[tokio::test]
async fn revoking_its_token_closes_an_open_websocket_within_the_cache_window() {
    let echo = EchoServer::start().await;
    let data = scratch_dir();
    let (id, token) = mint_with_id(&data, "dashboard", "read");
    let (dir, mut gateway) = start_configured(
        &config(&echo.url(), "", "token_cache_ttl = \"3s\"\n"),
        Launch::bare().env("PORTCULLIS_DATA_DIR", data.to_str().unwrap()),
    );
    let auth = format!("Bearer {token}");
    let (mut ws, _) = connect(&gateway, "/ws/feed", &[("authorization", &auth)])
        .await
        .unwrap();
    ws.send(Message::text("live")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("live")));

    // Revoked by another process: this gateway learns it from the store, not at once.
    let revoked = portcullis()
        .args(["token", "--data-dir", data.to_str().unwrap(), "revoke", &id])
        .output()
        .unwrap();
    assert!(revoked.status.success(), "{revoked:?}");
    let since = std::time::Instant::now();
    assert_eq!(close_code(next_message(&mut ws).await), Some(1008));
    assert!(
        since.elapsed() < Duration::from_secs(5),
        "{:?}",
        since.elapsed()
    );
    assert_eq!(echo.closes().await, vec![Some(1001)]);
    assert_eq!(decisions_of(&dir, &mut gateway), ["stream_revoked"]);
}

#[tokio::test]
async fn banning_its_address_closes_an_open_websocket_at_once() {
    let echo = EchoServer::start().await;
    let (dir, mut gateway) = start_configured(
        &config(
            &echo.url(),
            "",
            "[bans]\nmax_failures = 3\nwindow = \"1m\"\nduration = \"1m\"\n",
        ),
        Launch::bare(),
    );
    let (mut ws, _) = connect(&gateway, "/ws/feed", &[]).await.unwrap();
    ws.send(Message::text("live")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Some(Message::text("live")));
    for _ in 0..3 {
        let reply = get(
            &gateway.url("/plain/x"),
            &[("authorization", "Bearer wrong")],
        )
        .await;
        assert_eq!(reply.status, 401);
    }
    let since = std::time::Instant::now();
    assert_eq!(close_code(next_message(&mut ws).await), Some(1008));
    assert!(
        since.elapsed() < Duration::from_secs(2),
        "{:?}",
        since.elapsed()
    );
    let decisions = decisions_of(&dir, &mut gateway);
    assert!(
        decisions.contains(&"stream_revoked".to_owned()),
        "{decisions:?}"
    );
}
