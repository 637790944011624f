//! The WebSocket benchmark's peers (`bench/websocket.sh`), on 127.0.0.1 only:
//!
//! - `ws_bench echo <port>`: an echo server;
//! - `ws_bench load <url> <connections> <seconds> [token]`: that many WebSockets, each
//!   sending a 64-byte message and waiting for its echo, over and over; prints one JSON
//!   line: messages per second and the round trip's p50 and p99 in microseconds;
//! - `ws_bench idle <url> <connections> [token]`: opens that many WebSockets, prints
//!   `open`, and holds them (idle) until SIGINT.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo") => echo(args.get(1).ok_or("echo <port>")?.parse()?).await,
        Some("load") if args.len() >= 4 => {
            load(&args[1], args[2].parse()?, args[3].parse()?, args.get(4)).await
        }
        Some("idle") if args.len() >= 3 => idle(&args[1], args[2].parse()?, args.get(3)).await,
        _ => Err("usage: ws_bench echo <port> | load <url> <connections> <seconds> [token] | idle <url> <connections> [token]".into()),
    }
}

async fn echo(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(message)) = ws.next().await {
                let data = message.is_text() || message.is_binary();
                if data && ws.send(message).await.is_err() {
                    break;
                }
            }
        });
    }
}

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, token: Option<&String>) -> Result<Client, Box<dyn std::error::Error>> {
    let mut request = url.into_client_request()?;
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    Ok(tokio_tungstenite::connect_async(request).await?.0)
}

async fn load(
    url: &str,
    connections: usize,
    seconds: u64,
    token: Option<&String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(url, token).await?);
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let mut round_trips = Vec::new();
                let payload = "x".repeat(64);
                while Instant::now() < until {
                    let sent = Instant::now();
                    if ws.send(Message::text(payload.clone())).await.is_err() {
                        break;
                    }
                    match ws.next().await {
                        Some(Ok(_)) => round_trips.push(sent.elapsed().as_micros() as u64),
                        _ => break,
                    }
                }
                round_trips
            })
        })
        .collect();
    let mut round_trips = Vec::new();
    for task in tasks {
        round_trips.extend(task.await?);
    }
    round_trips.sort_unstable();
    let at =
        |q: f64| round_trips[((round_trips.len() as f64 * q) as usize).min(round_trips.len() - 1)];
    println!(
        "{{\"messages_per_second\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
        round_trips.len() as f64 / seconds as f64,
        at(0.5),
        at(0.99)
    );
    Ok(())
}

async fn idle(
    url: &str,
    connections: usize,
    token: Option<&String>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(connect(url, token).await?);
    }
    println!("open");
    // Held until told to let go.
    tokio::signal::ctrl_c().await?;
    drop(clients);
    Ok(())
}
