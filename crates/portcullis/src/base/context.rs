//! What every stage knows about a request and its connection: the request id, the
//! client's address and scheme, and the header names they travel in.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::RngCore;

/// `X-Request-ID`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// `X-Forwarded-For`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the listener knows about a connection before any request arrives.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// The facts about one request that every later stage relies on.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The client's `X-Request-ID` when it is well-formed, otherwise a new one.
    pub request_id: HeaderValue,
    /// The client's address: the peer, or what a trusted proxy says it is.
    pub client_ip: IpAddr,
    /// Whether the client reached us over HTTPS (directly, or via a trusted proxy).
    pub https: bool,
    /// The `X-Forwarded-For` value to send upstream.
    pub forwarded_for: HeaderValue,
    /// The host the client asked for, to send upstream as `X-Forwarded-Host`.
    pub forwarded_host: Option<HeaderValue>,
    /// Whether the peer is a trusted proxy, so its forwarding headers may pass on.
    pub via_trusted_proxy: bool,
    /// A trusted proxy sent an unreadable `X-Forwarded-For`, so `client_ip` (the proxy)
    /// is not the client's: allow lists must not match it.
    pub client_unknown: bool,
}

impl RequestContext {
    /// The client's address, or `None` when a trusted proxy's chain did not say.
    pub fn known_client_ip(&self) -> Option<IpAddr> {
        (!self.client_unknown).then_some(self.client_ip)
    }
}

/// The longest `X-Request-ID` the gateway accepts from a client.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The client's `X-Request-ID` when there is exactly one and it is 1 to 128 characters of
/// `[A-Za-z0-9._-]`; otherwise a new random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    let mut values = headers.get_all(&X_REQUEST_ID).iter();
    match (values.next(), values.next()) {
        (Some(value), None) if is_valid_request_id(value.as_bytes()) => value.clone(),
        _ => new_request_id(),
    }
}

/// Whether `id` is acceptable as a client-supplied request id.
pub fn is_valid_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new request id: 128 random bits as 32 lowercase hex digits.
pub fn new_request_id() -> HeaderValue {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    // Hex digits are always a valid header value.
    HeaderValue::try_from(super::hex::encode(&bytes)).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> http::Request<()> {
        let mut builder = http::Request::builder().uri("/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn request_id_is_kept_only_when_well_formed() {
        let keep = request(&[("x-request-id", "abc.DEF_123-x")]);
        assert_eq!(request_id(keep.headers()), "abc.DEF_123-x");
        for bad in ["has space", "semi;colon", &"a".repeat(129)] {
            let req = request(&[("x-request-id", bad)]);
            let id = request_id(req.headers());
            assert_ne!(id, bad);
            assert_eq!(id.len(), 32);
        }
        let twice = request(&[("x-request-id", "a"), ("x-request-id", "b")]);
        assert_eq!(request_id(twice.headers()).len(), 32);
    }

    #[test]
    fn new_request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }
}
