//! The identity stage: who is asking and how, with `X-Forwarded-*` believed only from
//! trusted proxies.

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Request, header};
use ipnet::IpNet;

use crate::base::context::{
    ConnInfo, RequestContext, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, request_id,
};
use crate::hygiene::is_valid_host;

/// Resolves a [`RequestContext`] from a request and its connection.
#[derive(Debug, Clone, Default)]
pub struct ClientIdentity {
    trusted_proxies: Vec<IpNet>,
}

impl ClientIdentity {
    /// Believes `X-Forwarded-*` only from peers inside `trusted_proxies`.
    pub fn new(trusted_proxies: Vec<IpNet>) -> Self {
        Self { trusted_proxies }
    }

    /// The client's address for a connection whose request head never arrived: the peer,
    /// unless the peer is a trusted proxy (then the client is unknown).
    pub fn client_of_connection(&self, conn: &ConnInfo) -> Option<IpAddr> {
        let peer = conn.peer.ip().to_canonical();
        (!self.is_trusted(peer)).then_some(peer)
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(&ip))
    }

    /// The context of `request`, which arrived on `conn`.
    pub fn resolve<B>(&self, request: &Request<B>, conn: &ConnInfo) -> RequestContext {
        let headers = request.headers();
        let peer = conn.peer.ip().to_canonical();
        // An absolute-form target's authority (or HTTP/2's `:authority`) wins over `Host`
        // (RFC 9112 §3.2.2); only a valid `host[:port]` is ever passed on.
        let own_host = request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .or_else(|| headers.get(header::HOST).cloned())
            .filter(|host| is_valid_host(host.as_bytes()));
        let peer_value = ip_header_value(peer);

        let mut context = RequestContext {
            request_id: request_id(headers),
            client_ip: peer,
            https: conn.tls,
            forwarded_for: peer_value.clone(),
            forwarded_host: own_host.clone(),
            via_trusted_proxy: false,
            client_unknown: false,
        };
        if !self.is_trusted(peer) {
            return context;
        }

        context.via_trusted_proxy = true;
        match self.client_from_chain(headers) {
            Ok(Some(client)) => context.client_ip = client,
            Ok(None) => {}
            // The hop next to our trusted proxies is unreadable, so the client is unknown:
            // falling back to the proxy's own address would let the client pass as it.
            Err(()) => context.client_unknown = true,
        }
        // A value with bytes that are not ASCII keeps its readable elements.
        let chain: Vec<std::borrow::Cow<'_, str>> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .map(|value| match value.to_str() {
                Ok(text) => text.into(),
                Err(_) => value
                    .as_bytes()
                    .split(|b| *b == b',')
                    .filter_map(|element| std::str::from_utf8(element).ok())
                    .filter(|element| element.is_ascii() && !element.trim().is_empty())
                    .map(str::trim)
                    .collect::<Vec<_>>()
                    .join(", ")
                    .into(),
            })
            .filter(|text: &std::borrow::Cow<'_, str>| !text.is_empty())
            .collect();
        if !chain.is_empty() {
            context.forwarded_for = HeaderValue::from_str(&format!("{}, {peer}", chain.join(", ")))
                .unwrap_or(peer_value);
        }
        if let Some(proto) = last_element(headers, &X_FORWARDED_PROTO) {
            if proto.eq_ignore_ascii_case("https") {
                context.https = true;
            } else if proto.eq_ignore_ascii_case("http") {
                context.https = false;
            }
        }
        if let Some(host) = last_element(headers, &X_FORWARDED_HOST)
            && is_valid_host(host.as_bytes())
            && let Ok(value) = HeaderValue::from_str(host)
        {
            context.forwarded_host = Some(value);
        }
        context
    }

    /// The client's address from `X-Forwarded-For`, read from the right: every address our
    /// trusted proxies appended is skipped, and the first one that is not theirs is the
    /// client. `Ok(None)` without the header; `Err` when the entry where the client should
    /// be is unreadable. Entries left of the client's (which the client wrote) are never
    /// read, not even as text: a byte that is not ASCII there (`x\xff, 203.0.113.5`, as a
    /// proxy appends to what the client sent) changes nothing.
    fn client_from_chain(&self, headers: &HeaderMap) -> Result<Option<IpAddr>, ()> {
        let values: Vec<&HeaderValue> = headers.get_all(&X_FORWARDED_FOR).iter().collect();
        let mut leftmost = None;
        for value in values.into_iter().rev() {
            for element in value.as_bytes().rsplit(|b| *b == b',') {
                let ip = std::str::from_utf8(element)
                    .map_err(|_| ())?
                    .trim()
                    .parse::<IpAddr>()
                    .map_err(|_| ())?
                    .to_canonical();
                if !self.is_trusted(ip) {
                    return Ok(Some(ip));
                }
                leftmost = Some(ip);
            }
        }
        Ok(leftmost)
    }
}

/// The right-most element of a comma-separated header: the one our trusted proxy wrote
/// (whatever the client wrote left of it).
fn last_element<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    let value = headers.get_all(name).iter().next_back()?.as_bytes();
    let last = value.rsplit(|b| *b == b',').next()?;
    let last = std::str::from_utf8(last).ok()?.trim();
    (!last.is_empty()).then_some(last)
}

fn ip_header_value(ip: IpAddr) -> HeaderValue {
    // An IP address's text form is always a valid header value. Written without the
    // formatting machinery, which took 2% of a request's instructions (bench/RESULTS.md,
    // 2026-11-29).
    HeaderValue::try_from(crate::json_line::ip_text(ip))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer: &str, tls: bool) -> ConnInfo {
        ConnInfo {
            peer: peer.parse().unwrap(),
            tls,
        }
    }

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::builder().uri("/x").header("host", "api.example");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn identity(trusted: &[&str]) -> ClientIdentity {
        ClientIdentity::new(trusted.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn untrusted_peer_cannot_set_its_address_scheme_or_host() {
        let req = request(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ]);
        let ctx = identity(&["10.0.0.0/8"]).resolve(&req, &conn("192.0.2.7:5000", false));
        assert_eq!(ctx.client_ip, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(ctx.forwarded_for, "192.0.2.7");
        assert!(!ctx.https);
        assert_eq!(ctx.forwarded_host.unwrap(), "api.example");
        assert!(!ctx.via_trusted_proxy);
    }

    #[test]
    fn the_peer_is_forwarded_in_its_text_form() {
        for (peer, text) in [
            ("192.0.2.7:5000", "192.0.2.7"),
            ("[2001:db8::7]:5000", "2001:db8::7"),
            // An IPv4 client seen through a dual-stack socket is forwarded as IPv4.
            ("[::ffff:198.51.100.3]:5000", "198.51.100.3"),
        ] {
            let ctx = identity(&[]).resolve(&request(&[]), &conn(peer, false));
            assert_eq!(ctx.forwarded_for, text, "{peer}");
        }
    }

    #[test]
    fn trusted_proxy_is_believed_and_extended() {
        let req = request(&[
            ("x-forwarded-for", "203.0.113.9, 10.0.0.5"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "public.example"),
        ]);
        let ctx = identity(&["10.0.0.0/8"]).resolve(&req, &conn("10.0.0.1:5000", false));
        assert_eq!(ctx.client_ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(ctx.forwarded_for, "203.0.113.9, 10.0.0.5, 10.0.0.1");
        assert!(ctx.https);
        assert_eq!(ctx.forwarded_host.unwrap(), "public.example");
    }

    #[test]
    fn client_prepended_addresses_do_not_win_over_the_rightmost_untrusted_hop() {
        // The client claims 1.1.1.1; the trusted proxy appended the real client 198.51.100.2.
        let req = request(&[("x-forwarded-for", "1.1.1.1, 198.51.100.2")]);
        let ctx = identity(&["10.0.0.0/8"]).resolve(&req, &conn("10.1.1.1:1", false));
        assert_eq!(ctx.client_ip, "198.51.100.2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn garbage_left_of_the_client_is_never_read() {
        let req = request(&[("x-forwarded-for", "not-an-ip, 198.51.100.7")]);
        let ctx = identity(&["10.0.0.0/8"]).resolve(&req, &conn("10.1.1.1:1", false));
        assert_eq!(ctx.client_ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert!(!ctx.client_unknown);
    }

    /// What nginx's `$proxy_add_x_forwarded_for` makes of a client's `X-Forwarded-For:
    /// x\xff`: the bytes the client wrote, then the client. They are not read.
    #[test]
    fn bytes_that_are_not_ascii_left_of_the_client_are_never_read() {
        let mut req = request(&[]);
        let headers = req.headers_mut();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"x\xff, 198.51.100.7").unwrap(),
        );
        headers.insert(
            "x-forwarded-proto",
            HeaderValue::from_bytes(b"\xff, https").unwrap(),
        );
        let ctx = identity(&["10.0.0.0/8"]).resolve(&req, &conn("10.1.1.1:1", false));
        assert_eq!(ctx.client_ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert!(!ctx.client_unknown);
        assert!(ctx.https);
        assert_eq!(
            ctx.forwarded_for, "198.51.100.7, 10.1.1.1",
            "the unreadable entry dropped"
        );
    }

    #[test]
    fn an_unreadable_hop_next_to_our_proxies_makes_the_client_unknown() {
        let req = request(&[("x-forwarded-for", "198.51.100.7, junk")]);
        let ctx = identity(&["10.0.0.0/8"]).resolve(&req, &conn("10.1.1.1:1", false));
        assert!(ctx.client_unknown);
    }

    #[test]
    fn proto_and_host_are_read_from_the_right() {
        let req = request(&[
            ("x-forwarded-proto", "http, https"),
            ("x-forwarded-host", "evil.example, public.example"),
        ]);
        let ctx = identity(&["10.0.0.0/8"]).resolve(&req, &conn("10.1.1.1:1", false));
        assert!(ctx.https);
        assert_eq!(ctx.forwarded_host.unwrap(), "public.example");
    }

    #[test]
    fn forwarded_host_carries_only_a_valid_host() {
        let req = request(&[("x-forwarded-host", "public.example, evil.example/x?")]);
        let ctx = identity(&["10.0.0.0/8"]).resolve(&req, &conn("10.1.1.1:1", false));
        assert_eq!(
            ctx.forwarded_host.unwrap(),
            "api.example",
            "an invalid claim is ignored"
        );

        let absolute = Request::builder()
            .uri("http://target.example:8080/x")
            .header("host", "other.example")
            .body(())
            .unwrap();
        let ctx = identity(&[]).resolve(&absolute, &conn("192.0.2.1:1", false));
        assert_eq!(
            ctx.forwarded_host.unwrap(),
            "target.example:8080",
            "the absolute-form target wins (RFC 9112 §3.2.2)"
        );
    }

    #[test]
    fn ipv4_mapped_peer_matches_ipv4_proxy_ranges() {
        let req = request(&[("x-forwarded-for", "203.0.113.1")]);
        let ctx = identity(&["127.0.0.0/8"]).resolve(&req, &conn("[::ffff:127.0.0.1]:80", false));
        assert_eq!(ctx.client_ip, "203.0.113.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn tls_connection_is_https() {
        let ctx = identity(&[]).resolve(&request(&[]), &conn("192.0.2.1:1", true));
        assert!(ctx.https);
    }
}
