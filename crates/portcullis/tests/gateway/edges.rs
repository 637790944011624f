//! The edges of HTTP: what a client claims about itself never reaches the upstream, hosts
//! and transfer codings are validated, route prefixes hold against Unicode folding, and no
//! detail of the upstream (its HTTP version, its address, its base path) reaches the client.

use std::net::SocketAddr;

use http::{Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unicode_normalization::UnicodeNormalization;

use crate::common::*;

/// A gateway in front of `upstream` with the routes of `routes` (TOML) added.
fn with_routes(upstream: &Upstream, routes: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "c.toml",
        &format!("[upstreams.api]\nurl = \"{}\"\n{routes}", upstream.url()),
    );
    let gateway = Launch::new(&upstream.url())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    (dir, gateway)
}

/// Writes `request` and returns the raw status line of the answer.
async fn status_line(addr: SocketAddr, request: &[u8]) -> String {
    let text = answers_until_closed(addr, request).await;
    text.split("\r\n").next().unwrap_or_default().to_owned()
}

/// Writes `request` to `addr` and reads every answer until the connection is closed
/// (within 10 s).
async fn answers_until_closed(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut bytes),
    )
    .await
    .expect("the connection was closed")
    .unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// hyper ends a trailer line only at CRLF; a front proxy that also takes a bare LF (RFC 9112
/// §2.2) would see the bytes after it as a second request, the gateway as trailers, and the
/// two would disagree where the next request starts. A request with a trailer section ends
/// its connection: nothing after it is served.
#[tokio::test]
async fn a_request_with_trailers_ends_its_connection_rfc_9112_7_1_2() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let smuggled =
        format!("GET /smuggled HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let request = format!(
        "POST /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n{smuggled}",
        smuggled.len()
    );
    let text = answers_until_closed(gateway.addr, request.as_bytes()).await;
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    let paths: Vec<String> = upstream
        .seen()
        .iter()
        .map(|seen| seen.uri.clone())
        .collect();
    assert_eq!(paths, ["/a"]);

    // Refused without reading the body (no token here): the parser would read the body,
    // trailers and all, before the next request; the connection ends instead.
    let unauthenticated = request.replace(
        &format!("Authorization: Bearer {TOKEN}\r\nTransfer"),
        "Transfer",
    );
    let admin: SocketAddr = gateway
        .admin_url("")
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    for (addr, listener) in [(gateway.addr, "gateway"), (admin, "admin API")] {
        let text = answers_until_closed(addr, unauthenticated.as_bytes()).await;
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{listener}: {text}");
    }
    assert_eq!(upstream.seen().len(), 1, "nothing more was forwarded");

    // An ordinary chunked upload, read to its end, keeps its connection for the next.
    let plain = format!(
        "POST /c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    );
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    for _ in 0..2 {
        stream.write_all(plain.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .and_then(|length| length.trim().parse().ok())
            .expect("a length");
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
    }
    assert_eq!(upstream.seen().len(), 3);
}

/// A GET's body of no declared length (chunked, RFC 9112 §6.1) reaches the upstream, as
/// any method's does (RFC 9110 §9.3.1 gives it no meaning, but does not forbid it):
/// search APIs take one.
#[tokio::test]
async fn a_get_with_a_chunked_body_reaches_the_upstream_with_it() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let request = format!(
        "GET /_search HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n7\r\n{{\"q\":1}}\r\n0\r\n\r\n"
    );
    let reply = raw(gateway.addr, request.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = upstream.only();
    assert_eq!(&seen.body[..], br#"{"q":1}"#);
}

#[tokio::test]
async fn client_claims_underscored_names_and_httpoxy_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let claims = [
        "X-Forwarded-For: 6.6.6.6",
        "X-Forwarded-Port: 443",
        "X-Forwarded-Prefix: /admin",
        "X-Forwarded-Server: evil",
        "X-Forwarded-Ssl: on",
        "X-Forwarded-Scheme: https",
        "X-Forwarded-Proto: https",
        "X-Forwarded-Host: evil.example",
        "Forwarded: for=6.6.6.6;proto=https",
        "X-Real-IP: 6.6.6.6",
        "True-Client-IP: 6.6.6.6",
        "X-Client-IP: 6.6.6.6",
        "Client-IP: 6.6.6.6",
        "CF-Connecting-IP: 6.6.6.6",
        "Fastly-Client-IP: 6.6.6.6",
        "X-Cluster-Client-IP: 6.6.6.6",
        "Front-End-Https: on",
        "X-Url-Scheme: https",
        "X-Scheme: https",
        "X-Forwarded: for=6.6.6.6",
        "Forwarded-For: 6.6.6.6",
        "X-Original-Forwarded-For: 6.6.6.6",
        "X-Host: evil.example",
        // CGI/WSGI/Rack read these as X-Forwarded-For and the method override.
        "X_Forwarded_For: 6.6.6.6",
        "X_HTTP_Method_Override: DELETE",
        "X.Forwarded.For: 6.6.6.6",
        // httpoxy: CGI turns `Proxy` into HTTP_PROXY.
        "Proxy: http://6.6.6.6:8080",
        "Proxy-Connection: keep-alive",
    ];
    let request = format!(
        "GET /x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\n{}\r\nX-Kept: yes\r\nConnection: close\r\n\r\n",
        claims.join("\r\n")
    );
    let reply = raw(gateway.addr, request.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let seen = upstream.only();
    assert_eq!(seen.header("x-kept"), Some("yes"));
    // The gateway's own claims replace the client's; every other claim is gone.
    let own = [
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "gw.test"),
    ];
    for claim in claims {
        let name = claim.split_once(": ").unwrap().0.to_ascii_lowercase();
        let expected = own.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        assert_eq!(
            seen.header(&name),
            expected,
            "{claim:?} reached the upstream"
        );
    }
}

#[tokio::test]
async fn a_route_may_allow_underscores_in_header_names() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = with_routes(
        &upstream,
        r#"
        [[routes]]
        path_prefix = "/legacy"
        upstream = "api"
        allow_underscores_in_headers = true
        "#,
    );
    for path in ["/legacy/x", "/other"] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\nX_Legacy_Id: 7\r\nX_Forwarded_For: 6.6.6.6\r\nX_HTTP_Method_Override: DELETE\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(raw(gateway.addr, request.as_bytes()).await.status, 200);
    }
    let seen = upstream.seen();
    assert_eq!(seen[0].header("x_legacy_id"), Some("7"));
    // Underscores allowed do not let a client claim an address or override the method.
    assert_eq!(seen[0].header("x_forwarded_for"), None);
    assert_eq!(seen[0].header("x_http_method_override"), None);
    assert_eq!(seen[1].header("x_legacy_id"), None, "other routes drop it");
}

/// `allowed_hosts` (DNS rebinding): a request naming any other host, by `Host` or by an
/// absolute-form target (RFC 9112 §3.2.2), gets 421 (RFC 9110 §15.5.20) before
/// authentication, so a rebound page learns nothing, and never reaches the upstream.
#[tokio::test]
async fn hosts_not_allowed_are_421_before_authentication_rfc_9110_15_5_20() {
    let upstream = Upstream::start().await;
    let (dir, mut gateway) = start_configured(
        &format!(
            "[upstreams.api]\nurl = \"{}\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
            upstream.url()
        ),
        Launch::bare()
            .arg("--allowed-hosts")
            .arg("127.0.0.1, MCP.example.com"),
    );
    let port = gateway.addr.port();
    let auth = format!("Authorization: Bearer {TOKEN}\r\nConnection: close");
    for host in [format!("127.0.0.1:{port}"), "mcp.example.com".to_owned()] {
        let head = format!("GET /ok HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\r\n");
        assert_eq!(
            raw(gateway.addr, head.as_bytes()).await.status,
            200,
            "{host}"
        );
    }
    let seen = upstream.seen().len();
    for (head, why) in [
        (
            "GET /ok HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_owned(),
            "another name, no credential",
        ),
        (
            format!("GET /ok HTTP/1.1\r\nHost: localhost:{port}\r\n{auth}\r\n\r\n"),
            "a name not listed for the same address",
        ),
        (
            format!("GET /ok HTTP/1.1\r\nHost: mcp.example.com.\r\n{auth}\r\n\r\n"),
            "a trailing dot",
        ),
        (
            format!(
                "GET http://evil.example/ok HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}\r\n\r\n"
            ),
            "an absolute-form target naming another host",
        ),
    ] {
        let reply = raw(gateway.addr, head.as_bytes()).await;
        let problem = reply.assert_problem(421, "misdirected-request");
        assert!(
            problem["detail"].as_str().unwrap().contains("host"),
            "{why}: {problem}"
        );
    }
    assert_eq!(upstream.seen().len(), seen, "{:#?}", upstream.seen());
    let decisions = decisions_of(&dir, &mut gateway);
    assert_eq!(
        decisions.iter().filter(|d| *d == "host_refused").count(),
        4,
        "{decisions:?}"
    );
}

#[test]
fn allowed_hosts_are_checked_and_production_asks_for_them() {
    let config = "[upstreams.api]\nurl = \"http://127.0.0.1:9000\"\n\
                  [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n";
    let (code, out) = check_config(
        &format!("allowed_hosts = [\"http://mcp.example.com\"]\n{config}"),
        &[],
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("error[allowed_hosts]"), "{out}");
    let (_, out) = check_config(config, &["--production"], &[]);
    assert!(out.contains("warning[allowed_hosts]"), "{out}");
    let (_, out) = check_config(
        config,
        &["--production", "--allowed-hosts", "api.example.com"],
        &[],
    );
    assert!(!out.contains("[allowed_hosts]"), "{out}");
}

#[tokio::test]
async fn hosts_are_validated_rfc_9112_3_2() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let auth = format!("Authorization: Bearer {TOKEN}\r\nConnection: close");
    for (head, why) in [
        (format!("GET /x HTTP/1.1\r\n{auth}\r\n\r\n"), "no Host"),
        (
            format!("GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n{auth}\r\n\r\n"),
            "two Hosts",
        ),
        (
            format!("GET /x HTTP/1.1\r\nHost: evil.example/x?\r\n{auth}\r\n\r\n"),
            "a path in Host",
        ),
        (
            format!("GET /x HTTP/1.1\r\nHost: user@gw.test\r\n{auth}\r\n\r\n"),
            "userinfo in Host",
        ),
        (
            format!("GET /x HTTP/1.1\r\nHost: gw.test:99999\r\n{auth}\r\n\r\n"),
            "a port out of range",
        ),
        (
            format!("GET http://user@gw.test/x HTTP/1.1\r\nHost: gw.test\r\n{auth}\r\n\r\n"),
            "userinfo in an absolute-form target",
        ),
        (
            format!("GET http://gw.test/x HTTP/1.1\r\n{auth}\r\n\r\n"),
            "an absolute-form target without Host",
        ),
    ] {
        let reply = raw(gateway.addr, head.as_bytes()).await;
        assert_eq!(reply.status, 400, "{why}: {}", reply.text());
        reply.assert_problem(400, "bad-request");
    }
    assert!(upstream.seen().is_empty(), "{:#?}", upstream.seen());

    // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2); an IPv6
    // literal with a port is a valid host.
    let absolute = format!(
        "GET http://public.example:8443/x HTTP/1.1\r\nHost: other.example\r\n{auth}\r\n\r\n"
    );
    assert_eq!(raw(gateway.addr, absolute.as_bytes()).await.status, 200);
    let v6 = format!("GET /y HTTP/1.1\r\nHost: [::1]:8080\r\n{auth}\r\n\r\n");
    assert_eq!(raw(gateway.addr, v6.as_bytes()).await.status, 200);
    let seen = upstream.seen();
    assert_eq!(
        seen[0].header("x-forwarded-host"),
        Some("public.example:8443")
    );
    assert_eq!(seen[1].header("x-forwarded-host"), Some("[::1]:8080"));
}

#[tokio::test]
async fn unimplemented_transfer_codings_are_501_rfc_9112_6_1() {
    let upstream = Upstream::start().await;
    let gateway = Launch::new(&upstream.url()).start();
    let request = format!(
        "POST /x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let reply = raw(gateway.addr, request.as_bytes()).await;
    let problem = reply.assert_problem(501, "transfer-coding-not-implemented");
    assert!(problem["detail"].as_str().unwrap().contains("chunked"));
    assert!(upstream.seen().is_empty(), "a body went without its coding");

    let chunked = format!(
        "POST /x HTTP/1.1\r\nHost: gw.test\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    assert_eq!(raw(gateway.addr, chunked.as_bytes()).await.status, 200);
    assert_eq!(upstream.only().body, "hello");
}

/// What a Java-style router (`equalsIgnoreCase`, NFKC) makes of a request path.
fn folded_like_a_lenient_router(path: &str) -> String {
    let decoded = percent_decode(&percent_decode(path));
    decoded
        .nfkc()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .filter(|c| !('\u{0300}'..='\u{036F}').contains(c))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An upstream that serves its protected area for any path it `reads` (as a lenient
/// framework would) as under `prefix`, behind a gateway whose route `prefix` only addresses
/// outside loopback may reach, everything else open to the token: a request of these tests
/// that the upstream sees has slipped past the route.
async fn behind_a_guarded_route(
    prefix: &'static str,
    reads: fn(&str) -> String,
) -> (Upstream, tempfile::TempDir, Gateway) {
    let upstream = Upstream::start_with(move |seen| {
        reads(&seen.uri).starts_with(prefix).then(|| {
            Response::builder()
                .status(StatusCode::OK)
                .body(full("the protected area"))
                .unwrap()
        })
    })
    .await;
    let (dir, gateway) = with_routes(
        &upstream,
        &format!(
            "[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"api\"\ndeny_ips = [\"127.0.0.0/8\"]\n"
        ),
    );
    (upstream, dir, gateway)
}

#[tokio::test]
async fn route_prefixes_hold_against_unicode_case_folding() {
    // The upstream serves its admin area for any path that folds to /admin, as a
    // case-insensitive Java or Python router would.
    let (upstream, _dir, gateway) =
        behind_a_guarded_route("/admin", folded_like_a_lenient_router).await;
    let attacks = [
        "/adm%C4%B1n/users",     // ı, dotless i
        "/ADM%C4%B0N/users",     // İ, dotted capital I
        "/%EF%BD%81dmin/users",  // ａ, fullwidth a
        "/adm%25C4%25B1n/users", // ı, double-encoded
        "/admi%CC%87n/users",    // i and a combining dot above
    ];
    for path in attacks {
        assert!(
            folded_like_a_lenient_router(path).starts_with("/admin"),
            "{path} does not fold to the admin area: the test would prove nothing"
        );
        let reply = get_authorized(&gateway.url(path)).await;
        let problem = reply.assert_problem(400, "invalid-path");
        assert!(problem["detail"].is_string(), "{path}: {problem}");
    }
    // The long s and the Kelvin sign fold to ASCII in Go and Python.
    let route_s = with_routes(
        &upstream,
        r#"
        [[routes]]
        path_prefix = "/secret"
        upstream = "api"
        deny_ips = ["127.0.0.0/8"]
        [[routes]]
        path_prefix = "/keys"
        upstream = "api"
        deny_ips = ["127.0.0.0/8"]
        "#,
    );
    for path in [
        "/%C5%BFecret/x",
        "/%E2%84%AAeys",
        "/x/%EF%BC%8E%EF%BC%8E/secret", // fullwidth dots fold to a dot segment
    ] {
        get_authorized(&route_s.1.url(path))
            .await
            .assert_problem(400, "invalid-path");
    }
    // Raw non-ASCII is not a valid request target at all (RFC 9112 §3.2).
    raw(gateway.addr, &raw_get("/adm\u{131}n/users"))
        .await
        .assert_problem(400, "invalid-path");
    get_authorized(&gateway.url("/admin/users"))
        .await
        .assert_problem(403, "ip-denied");
    assert!(upstream.seen().is_empty(), "{:#?}", upstream.seen());

    // Non-ASCII that folds to no other route still passes.
    let reply = get_authorized(&gateway.url("/caf%C3%A9/%C4%B1")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream.only().uri, "/caf%C3%A9/%C4%B1");
}

/// Asserts that each of `paths` is refused 400, as a path upstreams read as another route's.
async fn assert_read_as_another_route(gateway: &Gateway, paths: &[&str]) {
    for path in paths {
        let reply = get_authorized(&gateway.url(path)).await;
        let problem = reply.assert_problem(400, "invalid-path");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains("another route"), "{path}: {problem}");
    }
}

/// RFC 3986 §2.2 leaves an escaped reserved character to the application: the upstream
/// here, as most frameworks do, decodes `%3A` before it routes, so a route whose prefix
/// holds `:` (a custom method, `/v1/reports:run`) must hold for its escaped spellings, and
/// for the segment endings other upstreams trim.
#[tokio::test]
async fn route_prefixes_hold_against_escaped_reserved_characters() {
    let (upstream, _dir, gateway) = behind_a_guarded_route("/v1/reports:run", |uri| {
        percent_encoding::percent_decode_str(uri)
            .decode_utf8_lossy()
            .into_owned()
    })
    .await;
    let paths = [
        "/v1/reports%3Arun",
        "/v1/reports%3arun/x",
        "/v1/reports%253Arun",
        "/v1%2Freports:run",
        // What Spring's trimTokens and IIS trim from a segment.
        "/v1/reports:run%20",
        "/v1/reports:run%C2%A0/x",
        "/v1/reports:run.",
    ];
    assert_read_as_another_route(&gateway, &paths).await;
    get_authorized(&gateway.url("/v1/reports:run"))
        .await
        .assert_problem(403, "ip-denied");
    assert!(upstream.seen().is_empty(), "{:#?}", upstream.seen());
    // An escape that reaches no other route passes as sent.
    let reply = get_authorized(&gateway.url("/v1/reports%3Alist")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream.only().uri, "/v1/reports%3Alist");
}

/// A proxy between the gateway and the application that decodes the path and sends it on
/// as a new request target (nginx's `proxy_pass http://app$uri`) turns an escaped `?` or
/// `#` into the end of the path (RFC 3986 §3.3): `/admin%3Fdelete=1` reaches the
/// application as `/admin` with a query. The route's rules must hold for it.
#[tokio::test]
async fn route_prefixes_hold_against_an_escaped_query_or_fragment() {
    let (upstream, _dir, gateway) = behind_a_guarded_route("/admin", |uri| {
        let decoded = percent_encoding::percent_decode_str(uri).decode_utf8_lossy();
        decoded
            .split(['?', '#'])
            .next()
            .unwrap_or_default()
            .to_owned()
    })
    .await;
    let paths = [
        "/admin%3Fdelete=1",
        "/admin%3f",
        "/admin%23",
        "/admin%253Fdelete=1",
        "/admin%20%3Fx",
    ];
    assert_read_as_another_route(&gateway, &paths).await;
    assert!(upstream.seen().is_empty(), "{:#?}", upstream.seen());
    // An escaped `?` within a route, or one that reaches no other route, passes as sent.
    for path in ["/admins%3F", "/files/what%3F.txt"] {
        let reply = get_authorized(&gateway.url(path)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    let seen: Vec<String> = upstream.seen().into_iter().map(|s| s.uri).collect();
    assert_eq!(seen, ["/admins%3F", "/files/what%3F.txt"]);
}

#[tokio::test]
async fn responses_carry_the_gateway_http_version_whatever_the_upstream_spoke() {
    let upstream =
        RawUpstream::start(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nServer: old/1.0\r\n\r\nok")
            .await;
    let gateway = Launch::new(&upstream.url()).start();
    let line = status_line(gateway.addr, &raw_get("/x")).await;
    assert_eq!(line, "HTTP/1.1 200 OK");
    assert_eq!(upstream.heads.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_unasked_101_from_the_upstream_is_a_502() {
    let upstream = RawUpstream::start(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    let gateway = Launch::new(&upstream.url()).start();
    let reply = raw(gateway.addr, &raw_get("/x")).await;
    let problem = reply.assert_problem(502, "upstream-unavailable");
    assert!(!problem.to_string().contains("websocket"), "{problem}");
    assert!(!problem.to_string().contains("127.0.0.1"), "{problem}");

    let bare = RawUpstream::start(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").await;
    let gateway = Launch::new(&bare.url()).start();
    raw(gateway.addr, &raw_get("/x"))
        .await
        .assert_problem(502, "upstream-unavailable");
}

#[tokio::test]
async fn redirects_to_the_upstream_are_rewritten_to_the_public_prefix() {
    let upstream = Upstream::start_with(|seen| {
        let location = match seen.uri.as_str() {
            "/BASE-SECRET/api/absolute" => format!(
                "http://{}/BASE-SECRET/api/next?x=1",
                seen.headers["host"].to_str().unwrap()
            ),
            // The prefix arrives as the client spelled it, and comes back so.
            "/BASE-SECRET/API/based" => "/BASE-SECRET/API/login".to_owned(),
            "/BASE-SECRET/api/away" => "https://auth.example/login".to_owned(),
            // As an upstream told `X-Forwarded-Proto: https` builds its own URL.
            "/BASE-SECRET/api/secure" => "https://127.0.0.1/BASE-SECRET/api/next".to_owned(),
            "/BASE-SECRET/api/unicode" => format!(
                "http://{}/BASE-SECRET/api/caf\u{e9}",
                seen.headers["host"].to_str().unwrap()
            ),
            _ => return None,
        };
        Some(
            Response::builder()
                .status(StatusCode::FOUND)
                .header(
                    "location",
                    http::HeaderValue::from_bytes(location.as_bytes()).unwrap(),
                )
                .header("content-location", "/BASE-SECRET/api/here")
                .body(full(""))
                .unwrap(),
        )
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "c.toml",
        &format!(
            "[upstreams.based]\nurl = \"{}/BASE-SECRET\"\n[[routes]]\npath_prefix = \"/api\"\nupstream = \"based\"\n",
            upstream.url()
        ),
    );
    let gateway = Launch::new(&upstream.url())
        .arg("--config")
        .arg(config.to_str().unwrap())
        .start();
    for (path, expected) in [
        ("/api/absolute", "/api/next?x=1"),
        ("/API/based", "/API/login"),
        ("/api/away", "https://auth.example/login"),
        ("/api/secure", "/api/next"),
        ("/api/unicode", "/api/caf\u{e9}"),
    ] {
        let reply = get_authorized(&gateway.url(path)).await;
        assert_eq!(reply.status, 302, "{path}");
        assert_eq!(
            reply.headers["location"].as_bytes(),
            expected.as_bytes(),
            "{path}"
        );
        let public_prefix = &path[..4];
        assert_eq!(
            reply.header("content-location"),
            Some(format!("{public_prefix}/here").as_str()),
            "{path}"
        );
        for (name, value) in &reply.headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!value.contains("BASE-SECRET"), "{name}: {value}");
            assert!(
                !value.contains(&upstream.addr.to_string()),
                "{name}: {value}"
            );
        }
    }
}

#[tokio::test]
async fn preserve_host_forwards_the_host_the_client_named_rfc_9110_7_2() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = with_routes(
        &upstream,
        &format!(
            "[upstreams.vhost]\nurl = \"{}\"\npreserve_host = true\n\
             [[routes]]\npath_prefix = \"/vhost\"\nupstream = \"vhost\"\n\
             [[routes]]\npath_prefix = \"/own\"\nupstream = \"api\"\n",
            upstream.url()
        ),
    );
    let auth = format!("Authorization: Bearer {TOKEN}\r\nConnection: close");
    let upstream_host = upstream.url().trim_start_matches("http://").to_owned();
    for (head, expected) in [
        (
            format!("GET /vhost/a HTTP/1.1\r\nHost: App.Example:8080\r\n{auth}\r\n\r\n"),
            "App.Example:8080",
        ),
        // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2).
        (
            format!(
                "GET http://tenant.example/vhost/b HTTP/1.1\r\nHost: app.example\r\n{auth}\r\n\r\n"
            ),
            "tenant.example",
        ),
        (
            format!("GET /own/c HTTP/1.1\r\nHost: app.example\r\n{auth}\r\n\r\n"),
            upstream_host.as_str(),
        ),
    ] {
        assert_eq!(raw(gateway.addr, head.as_bytes()).await.status, 200);
        let seen = upstream.seen().pop().unwrap();
        assert_eq!(seen.header("host"), Some(expected), "{head}");
        assert_eq!(seen.headers.get_all("host").iter().count(), 1);
    }
}

#[test]
fn preserve_host_needs_http_1_1_to_the_upstream() {
    let (code, out) = check_config(
        "[upstreams.api]\nurl = \"https://api.example\"\nhttp_version = \"2\"\npreserve_host = true\n",
        &[],
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("error[upstreams.preserve_host]"), "{out}");
}
