//! The headers of a forwarded exchange: what is stripped, what is set.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::pipeline::context::{
    RequestContext, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// Headers that make some upstreams serve another path or method than the one the
/// gateway authorised.
const OVERRIDES: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Removes hop-by-hop headers, including any that `Connection` names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::PROXY_AUTHENTICATE);
}

/// Rewrites a client's request headers for the upstream: strips the client's credential
/// and hop-by-hop headers, drops forwarding claims an untrusted client made, and sets
/// `Host`, `X-Forwarded-For/Proto/Host` and `X-Request-ID`.
pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    upstream_host: &HeaderValue,
    ctx: &RequestContext,
) {
    remove_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    for name in OVERRIDES {
        headers.remove(name);
    }
    if !ctx.via_trusted_proxy {
        headers.remove(header::FORWARDED);
        headers.remove("x-real-ip");
    }
    headers.insert(header::HOST, upstream_host.clone());
    headers.insert(X_FORWARDED_FOR.clone(), ctx.forwarded_for.clone());
    let proto = if ctx.https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match &ctx.forwarded_host {
        Some(host) => headers.insert(X_FORWARDED_HOST.clone(), host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
    headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(trusted: bool) -> RequestContext {
        RequestContext {
            request_id: HeaderValue::from_static("rid"),
            client_ip: "192.0.2.1".parse().unwrap(),
            https: true,
            forwarded_for: HeaderValue::from_static("192.0.2.1"),
            forwarded_host: Some(HeaderValue::from_static("public.example")),
            via_trusted_proxy: trusted,
            client_unknown: false,
        }
    }

    #[test]
    fn strips_credentials_hop_by_hop_and_connection_listed_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer secret"),
            ("connection", "keep-alive, x-drop-me"),
            ("x-drop-me", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("forwarded", "for=1.2.3.4"),
            ("x-real-ip", "1.2.3.4"),
            ("x-http-method-override", "DELETE"),
            ("x-original-url", "/admin"),
            ("x-forwarded-for", "1.2.3.4"),
            ("accept", "application/json"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        prepare_request_headers(
            &mut headers,
            &HeaderValue::from_static("up:80"),
            &ctx(false),
        );
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        for gone in [
            "authorization",
            "connection",
            "x-drop-me",
            "keep-alive",
            "te",
            "upgrade",
            "proxy-authorization",
            "forwarded",
            "x-real-ip",
            "x-http-method-override",
            "x-original-url",
        ] {
            assert!(!names.contains(&gone), "{gone} was forwarded");
        }
        assert_eq!(headers["host"], "up:80");
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "public.example");
        assert_eq!(headers["x-request-id"], "rid");
        assert_eq!(headers["accept"], "application/json");
    }

    #[test]
    fn trusted_proxy_forwarded_header_passes() {
        let mut headers = HeaderMap::new();
        headers.insert("forwarded", HeaderValue::from_static("for=203.0.113.1"));
        prepare_request_headers(&mut headers, &HeaderValue::from_static("up"), &ctx(true));
        assert_eq!(headers["forwarded"], "for=203.0.113.1");
    }
}
