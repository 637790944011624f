//! WebSocket clients and servers nobody here wrote, through the gateway: Python's
//! `websockets` client, and a Socket.IO server and client (python-socketio), which start on
//! HTTP long-polling and then upgrade to a WebSocket.

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::common::*;
use crate::websocket::{EchoServer, config};

const PYTHON_VAR: &str = "PORTCULLIS_PYTHON";

/// The Python with the test packages, or a panic that says how to get it: these checks
/// never pass silently.
fn python() -> std::ffi::OsString {
    std::env::var_os(PYTHON_VAR).unwrap_or_else(|| {
        panic!(
            "{PYTHON_VAR} is not set; it names a Python with websockets, python-socketio and \
             aiohttp installed. .ci/run installs them; by hand: \
             /var/tmp/portcullis-ci-venv/bin/pip install websockets==17.4 \
             python-socketio==5.18.1 aiohttp==3.14.5, then export \
             {PYTHON_VAR}=/var/tmp/portcullis-ci-venv/bin/python"
        )
    })
}

/// Runs `script` with `args` (bounded in time) and parses the JSON line it prints.
async fn run_script(script: &'static str, args: Vec<String>) -> serde_json::Value {
    let python = python();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the script failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("not JSON: {stdout}"))
}

/// A WebSocket client as an application would use it: echo, a subprotocol, a large binary
/// message, and a handshake from a page on another origin.
const WEBSOCKETS_CLIENT: &str = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

async def main():
    url, token = sys.argv[1], sys.argv[2]
    auth = {"Authorization": f"Bearer {token}"}
    out = {}
    async with connect(url, additional_headers=auth, subprotocols=["chat"], open_timeout=10) as ws:
        await ws.send("hello")
        out["echo"] = await asyncio.wait_for(ws.recv(), 10)
        out["subprotocol"] = ws.subprotocol
        await ws.send(b"\x00" * 100000)
        out["binary"] = len(await asyncio.wait_for(ws.recv(), 10))
    try:
        async with connect(url, additional_headers=auth, origin="https://evil.example", open_timeout=10):
            out["evil"] = "open"
    except InvalidStatus as refused:
        out["evil"] = refused.response.status_code
        out["evil_type"] = json.loads(refused.response.body)["type"]
    print(json.dumps(out))

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_websockets_client_talks_through_the_gateway() {
    let echo = EchoServer::start().await;
    let (_dir, gateway) = start_configured(&config(&echo.url(), "", ""), Launch::bare());
    let url = format!("ws://{}/ws/py", gateway.addr);
    let out = run_script(WEBSOCKETS_CLIENT, vec![url, TOKEN.to_owned()]).await;
    assert_eq!(out["echo"], "hello", "{out}");
    assert_eq!(out["subprotocol"], "chat", "{out}");
    assert_eq!(out["binary"], 100_000, "{out}");
    assert_eq!(out["evil"], 403, "{out}");
    assert_eq!(
        out["evil_type"], "urn:portcullis:problem:origin-refused",
        "{out}"
    );
}

/// A Socket.IO server (aiohttp) on a port of its own, which it prints; its `echo` event
/// answers with the data and the transport the call came over.
const SOCKETIO_SERVER: &str = r#"
import asyncio, socketio
from aiohttp import web

sio = socketio.AsyncServer(async_mode="aiohttp")
app = web.Application()
sio.attach(app)

@sio.event
async def echo(sid, data):
    return {"echo": data, "transport": sio.transport(sid)}

async def main():
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"#;

/// A Socket.IO client: connects by long-polling, waits for the upgrade to a WebSocket, then
/// calls `echo` over it.
const SOCKETIO_CLIENT: &str = r#"
import asyncio, json, sys, socketio

async def main():
    url, token = sys.argv[1], sys.argv[2]
    client = socketio.AsyncClient()
    await client.connect(url, headers={"Authorization": f"Bearer {token}"},
                         transports=["polling", "websocket"], wait_timeout=10)
    for _ in range(100):
        if client.transport() == "websocket":
            break
        await asyncio.sleep(0.05)
    reply = await client.call("echo", "hi", timeout=10)
    print(json.dumps({"now": client.transport(), "reply": reply}))
    await client.disconnect()

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_io_starts_on_long_polling_and_upgrades_to_a_websocket() {
    let mut server = tokio::process::Command::new(python())
        .arg("-c")
        .arg(SOCKETIO_SERVER)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the Socket.IO server did not start")
        .unwrap()
        .unwrap();
    let upstream = format!("http://127.0.0.1:{}", port.trim());
    let (dir, mut gateway) = start_configured(
        &format!(
            "[upstreams.live]\nurl = \"{upstream}\"\n\
             [[routes]]\npath_prefix = \"/socket.io\"\nupstream = \"live\"\nwebsocket = true\n"
        ),
        Launch::bare(),
    );
    let url = format!("http://{}", gateway.addr);
    let out = run_script(SOCKETIO_CLIENT, vec![url, TOKEN.to_owned()]).await;
    assert_eq!(out["now"], "websocket", "{out}");
    assert_eq!(out["reply"]["echo"], "hi", "{out}");
    assert_eq!(out["reply"]["transport"], "websocket", "{out}");
    let records = access_log_of(&dir, &mut gateway);
    let query = |r: &serde_json::Value| r["query"].as_str().unwrap_or_default().to_owned();
    assert!(
        records
            .iter()
            .any(|r| r["status"] == 200 && query(r).contains("transport=polling")),
        "it started on long-polling: {records:?}"
    );
    assert!(
        records.iter().any(|r| r["status"] == 101
            && r["decision"] == "allowed"
            && query(r).contains("transport=websocket")),
        "then upgraded: {records:?}"
    );
}
