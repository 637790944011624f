//! WebSocket pass-through: which requests are handshakes (RFC 6455 §4.1 over HTTP/1.1,
//! extended CONNECT over HTTP/2, RFC 8441 §4), which browser origins may open one, how a
//! handshake is addressed to the upstream (always an HTTP/1.1 upgrade) and answered to the
//! client, and the [`Tunnel`] that relays the open WebSocket.
//!
//! A handshake goes through the whole request path like any request; only the route's
//! `websocket = true` lets it reach the upstream, and only from an allowed origin.

mod frames;
mod relay;

use base64::Engine;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version, header};
use hyper::upgrade::OnUpgrade;
use tokio::sync::watch;

use crate::base::problem::{Problem, ProblemKind};
use crate::cors::OriginAllowlist;
use crate::streams::{Revoked, StreamLimits, StreamSlots};
pub use relay::{Ended, Relayed};

/// How a client asked to open a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// `GET` with `Upgrade: websocket` and `Connection: upgrade` (RFC 6455 §4.1).
    Http1,
    /// HTTP/2 `CONNECT` with `:protocol = websocket` (RFC 8441 §4), which the stages see
    /// as the `GET` the upstream is sent, with the key the gateway sends in its name.
    ExtendedConnect(WebSocketKey),
}

/// The key the gateway sends an upstream for an HTTP/2 client's handshake, which has none
/// (RFC 8441 §5). The gateway is then the upstream's WebSocket client, and checks the
/// answer as RFC 6455 §4.1 has a client do: the client behind it never sees the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebSocketKey([u8; 16]);

/// Appended to a key before it is hashed into its accept (RFC 6455 §1.3).
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

impl WebSocketKey {
    /// `Sec-WebSocket-Key`'s value: the 16 bytes, base64.
    fn encoded(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Whether `accept` answers this key: base64 of the SHA-1 of the key and the GUID.
    fn accepted_by(&self, accept: &[u8]) -> bool {
        use sha1::Digest;
        let mut hash = sha1::Sha1::new();
        hash.update(self.encoded());
        hash.update(ACCEPT_GUID);
        base64::engine::general_purpose::STANDARD
            .encode(hash.finalize())
            .as_bytes()
            == accept
    }
}

impl Handshake {
    /// The handshake `request` opens, if it is one. An extended CONNECT becomes `GET`, so
    /// that hygiene, scopes and records treat both kinds alike. Any other `Upgrade` is no
    /// handshake: it is removed on the way, as every hop-by-hop header is.
    pub fn detect<B>(request: &mut Request<B>) -> Option<Self> {
        if request.method() == Method::CONNECT {
            let protocol = request.extensions().get::<hyper::ext::Protocol>()?;
            if !protocol.as_str().eq_ignore_ascii_case("websocket") {
                return None;
            }
            *request.method_mut() = Method::GET;
            return Some(Self::ExtendedConnect(WebSocketKey(rand::random())));
        }
        let headers = request.headers();
        let upgrade = request.version() == Version::HTTP_11
            && request.method() == Method::GET
            && has_token(headers, header::UPGRADE, "websocket")
            && has_token(headers, header::CONNECTION, "upgrade");
        upgrade.then_some(Self::Http1)
    }

    /// Makes prepared request headers (hop-by-hop ones already removed) an HTTP/1.1
    /// upgrade: an extended CONNECT has no key of its own (RFC 8441 §5), so one is made.
    pub fn address_upstream(self, headers: &mut HeaderMap) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Self::ExtendedConnect(key) = self {
            if let Ok(key) = HeaderValue::from_str(&key.encoded()) {
                headers.insert(header::SEC_WEBSOCKET_KEY, key);
            }
            headers
                .entry(header::SEC_WEBSOCKET_VERSION)
                .or_insert(HeaderValue::from_static("13"));
        }
    }

    /// Whether the upstream's `101` answers the handshake: over HTTP/1.1 the client checks
    /// the accept itself (it passes through); for an HTTP/2 client, the gateway does.
    pub fn switched_as_asked(self, headers: &HeaderMap) -> bool {
        match self {
            Self::Http1 => true,
            Self::ExtendedConnect(key) => headers
                .get(header::SEC_WEBSOCKET_ACCEPT)
                .is_some_and(|accept| key.accepted_by(accept.as_bytes())),
        }
    }

    /// Makes the upstream's `101` (hop-by-hop headers already removed) the client's
    /// answer: a `101` with its `Upgrade` over HTTP/1.1, a `200` without the key's
    /// accept over HTTP/2 (RFC 8441 §5).
    pub fn answer_client<B>(self, response: &mut Response<B>) {
        let headers = response.headers_mut();
        match self {
            Self::Http1 => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            }
            Self::ExtendedConnect(_) => {
                headers.remove(header::SEC_WEBSOCKET_ACCEPT);
                *response.status_mut() = StatusCode::OK;
            }
        }
    }
}

/// Whether the comma-separated header `name` lists `token` (in any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|listed| listed.trim().eq_ignore_ascii_case(token))
}

/// A route's WebSockets: the origins that may open them (their limits are the route's
/// stream limits).
#[derive(Debug, Clone)]
pub struct WebSocketPolicy {
    origins: OriginAllowlist,
}

impl WebSocketPolicy {
    /// WebSockets from browsers at `origins`.
    pub fn new(origins: OriginAllowlist) -> Self {
        Self { origins }
    }

    /// The origins that may open its WebSockets: cross-site WebSocket hijacking is
    /// refused with them (a browser sends the user's cookies with any page's handshake,
    /// and WebSockets have no preflight).
    pub fn origins(&self) -> &OriginAllowlist {
        &self.origins
    }
}

/// The refusal of a handshake on a route without `websocket = true`.
pub fn upgrade_refused() -> Problem {
    Problem::new(ProblemKind::UpgradeRefused).with_detail("this route does not accept WebSockets")
}

/// How long both sides of a WebSocket have to hand their connections over once the
/// answer is sent.
const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Open while its tunnel relays: the server keeps the connection (and its slot) until it
/// closes.
#[derive(Debug, Clone)]
pub struct TunnelOpen(watch::Receiver<()>);

impl TunnelOpen {
    /// Resolves when the tunnel has closed.
    pub async fn closed(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

/// What is done with the outcome of a tunnel: the relay's, or none when a side never
/// handed its connection over.
pub type OnClose = Box<dyn FnOnce(Option<Relayed>) + Send>;

/// A WebSocket whose handshake the upstream accepted: both connections, to be relayed once
/// each side has handed its connection over.
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    limits: StreamLimits,
    revoked: Revoked,
    /// Its slots under the stream caps, freed when it closes.
    slots: StreamSlots,
    open: watch::Sender<()>,
}

impl Tunnel {
    /// The tunnel between the client's and the upstream's upgraded connections, closed
    /// when `revoked` resolves, and what tells that it is open.
    pub fn new(
        client: OnUpgrade,
        upstream: OnUpgrade,
        limits: StreamLimits,
        revoked: Revoked,
        slots: StreamSlots,
    ) -> (Self, TunnelOpen) {
        let (open, watched) = watch::channel(());
        let tunnel = Self {
            client,
            upstream,
            limits,
            revoked,
            slots,
            open,
        };
        (tunnel, TunnelOpen(watched))
    }

    /// Relays until the WebSocket ends or `closing` turns true, then hands the outcome
    /// to `on_close`.
    pub async fn run(self, closing: watch::Receiver<bool>, on_close: OnClose) {
        let Self {
            client,
            upstream,
            limits,
            revoked,
            slots,
            open,
        } = self;
        // Both sides hand their connections over at once, unless one went away.
        let handed_over = tokio::time::timeout(HANDOVER_TIMEOUT, async {
            tokio::try_join!(client, upstream)
        });
        let relayed = match handed_over.await {
            Ok(Ok((client, upstream))) => {
                let relay = relay::Relay::new(
                    hyper_util::rt::TokioIo::new(client),
                    hyper_util::rt::TokioIo::new(upstream),
                    limits,
                );
                Some(relay.run(closing, revoked).await)
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "a WebSocket side was not handed over");
                None
            }
            Err(_) => {
                tracing::debug!("a WebSocket side was not handed over in time");
                None
            }
        };
        drop((open, slots));
        on_close(relayed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, method: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder()
            .method(method)
            .uri("/ws")
            .version(version);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn an_http1_handshake_needs_get_upgrade_and_connection_rfc_6455_4_1() {
        let handshake = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ];
        let mut get = request(Version::HTTP_11, "GET", &handshake);
        assert_eq!(Handshake::detect(&mut get), Some(Handshake::Http1));
        for mut not in [
            request(Version::HTTP_11, "POST", &handshake),
            request(Version::HTTP_10, "GET", &handshake),
            request(Version::HTTP_11, "GET", &[("upgrade", "websocket")]),
            request(
                Version::HTTP_11,
                "GET",
                &[("upgrade", "h2c"), ("connection", "upgrade")],
            ),
        ] {
            assert_eq!(Handshake::detect(&mut not), None, "{not:?}");
        }
    }

    #[test]
    fn an_extended_connect_is_seen_as_get_rfc_8441_4() {
        let mut connect = request(Version::HTTP_2, "CONNECT", &[]);
        connect
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        assert!(matches!(
            Handshake::detect(&mut connect),
            Some(Handshake::ExtendedConnect(_))
        ));
        assert_eq!(connect.method(), Method::GET);

        let mut other = request(Version::HTTP_2, "CONNECT", &[]);
        other
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("connect-udp"));
        assert_eq!(Handshake::detect(&mut other), None);
        assert_eq!(
            other.method(),
            Method::CONNECT,
            "left for hygiene to refuse"
        );
    }

    #[test]
    fn an_extended_connect_is_sent_upstream_with_a_key_of_its_own_rfc_8441_5() {
        let mut headers = HeaderMap::new();
        let handshake = Handshake::ExtendedConnect(WebSocketKey(rand::random()));
        handshake.address_upstream(&mut headers);
        assert_eq!(headers[header::UPGRADE], "websocket");
        assert_eq!(headers[header::CONNECTION], "upgrade");
        assert_eq!(headers[header::SEC_WEBSOCKET_VERSION], "13");
        let key = base64::engine::general_purpose::STANDARD
            .decode(headers[header::SEC_WEBSOCKET_KEY].as_bytes())
            .unwrap();
        assert_eq!(key.len(), 16);

        let mut response = Response::builder()
            .status(101)
            .header(header::SEC_WEBSOCKET_ACCEPT, "x")
            .header(header::SEC_WEBSOCKET_PROTOCOL, "chat")
            .body(())
            .unwrap();
        handshake.answer_client(&mut response);
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            !response
                .headers()
                .contains_key(header::SEC_WEBSOCKET_ACCEPT)
        );
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_PROTOCOL], "chat");
    }

    /// RFC 6455 §1.3's own example: the key `dGhlIHNhbXBsZSBub25jZQ==` is answered
    /// `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`; any other accept, or none, is no switch.
    #[test]
    fn an_upstreams_accept_must_answer_the_key_rfc_6455_4_1() {
        let handshake = Handshake::ExtendedConnect(WebSocketKey(*b"the sample nonce"));
        let answer = |accept: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(accept) = accept {
                headers.insert(
                    header::SEC_WEBSOCKET_ACCEPT,
                    HeaderValue::from_static(accept),
                );
            }
            handshake.switched_as_asked(&headers)
        };
        assert!(answer(Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")));
        assert!(!answer(Some("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")));
        assert!(!answer(None));
        assert!(
            Handshake::Http1.switched_as_asked(&HeaderMap::new()),
            "the client checks"
        );
    }
}
