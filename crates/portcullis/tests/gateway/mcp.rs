//! MCP servers in one command: `serve --mcp URL` routes MCP's Streamable HTTP endpoint with
//! its headers end to end, checks every request's `Origin`, answers only to loopback names
//! on a loopback listener (DNS rebinding), and lets browsers use the MCP headers by CORS.

use http::{Method, Request, Response};
use http_body_util::Full;

use crate::common::*;

/// An MCP server stand-in: it answers every request with a session id.
async fn mcp_upstream() -> Upstream {
    Upstream::start_with(|_| {
        Some(
            Response::builder()
                .header("content-type", "application/json")
                .header("mcp-session-id", "session-7f3a")
                .body(full(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#))
                .unwrap(),
        )
    })
    .await
}

fn mcp_gateway(upstream: &Upstream, extra: &[&str]) -> Gateway {
    let mut launch = Launch::new(&upstream.url())
        .arg("--mcp")
        .arg(format!("{}/mcp", upstream.url()));
    for arg in extra {
        launch = launch.arg(*arg);
    }
    launch.start()
}

fn mcp_request(
    gateway: &Gateway,
    method: Method,
    headers: &[(&str, &str)],
) -> Request<Full<bytes::Bytes>> {
    let mut request = Request::builder()
        .method(method)
        .uri(gateway.url("/mcp"))
        .header("authorization", format!("Bearer {TOKEN}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
        .body(Full::from(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#,
        ))
        .unwrap()
}

#[tokio::test]
async fn the_mcp_transport_passes_end_to_end() {
    let upstream = mcp_upstream().await;
    let gateway = mcp_gateway(&upstream, &[]);
    let headers = [
        ("accept", "application/json, text/event-stream"),
        ("content-type", "application/json"),
        ("MCP-Protocol-Version", "2025-06-18"),
        ("Mcp-Session-Id", "session-7f3a"),
        ("last-event-id", "41"),
        ("mcp-client-hint", "kept"),
    ];
    for method in [Method::POST, Method::GET, Method::DELETE] {
        let reply = send(mcp_request(&gateway, method.clone(), &headers)).await;
        assert_eq!(reply.status, 200, "{method}: {}", reply.text());
        assert_eq!(reply.header("mcp-session-id"), Some("session-7f3a"));
        let seen = upstream.seen().pop().unwrap();
        assert_eq!(seen.method, method);
        assert_eq!(seen.uri, "/mcp");
        for (name, value) in headers {
            assert_eq!(seen.header(name), Some(value), "{method} {name}");
        }
        assert!(seen.header("authorization").is_none());
    }
}

#[tokio::test]
async fn foreign_origins_and_rebound_hosts_are_refused_before_anything_else() {
    let upstream = mcp_upstream().await;
    let gateway = mcp_gateway(&upstream, &[]);
    // A page elsewhere, with or without a credential: 403 (the MCP transport's Origin rule).
    let refused = send(mcp_request(
        &gateway,
        Method::POST,
        &[("origin", "https://evil.example")],
    ))
    .await;
    refused.assert_problem(403, "origin-refused");
    // A page on a name rebound to 127.0.0.1: its Host is its own name.
    let port = gateway.addr.port();
    let rebound = raw(
        gateway.addr,
        format!("POST /mcp HTTP/1.1\r\nHost: evil.example:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    rebound.assert_problem(421, "misdirected-request");
    assert!(upstream.seen().is_empty(), "nothing reached the MCP server");
    // The loopback names it listens on are served.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let head = format!(
            "POST /mcp HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(
            raw(gateway.addr, head.as_bytes()).await.status,
            200,
            "{host}"
        );
    }
}

#[tokio::test]
async fn browsers_may_use_the_mcp_headers_by_cors() {
    let upstream = mcp_upstream().await;
    let gateway = mcp_gateway(
        &upstream,
        &["--cors-allowed-origins", "https://inspector.example"],
    );
    let preflight = send(
        Request::builder()
            .method(Method::OPTIONS)
            .uri(gateway.url("/mcp"))
            .header("origin", "https://inspector.example")
            .header("access-control-request-method", "DELETE")
            .header(
                "access-control-request-headers",
                "authorization, content-type, mcp-protocol-version, mcp-session-id, last-event-id",
            )
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(preflight.status, 204, "{}", preflight.text());
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap()
        .to_owned();
    for name in ["mcp-protocol-version", "mcp-session-id", "last-event-id"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert!(
        preflight
            .header("access-control-allow-methods")
            .unwrap()
            .contains("DELETE")
    );
    let reply = send(mcp_request(
        &gateway,
        Method::POST,
        &[("origin", "https://inspector.example")],
    ))
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("access-control-expose-headers")
            .unwrap()
            .contains("mcp-session-id")
    );
}
