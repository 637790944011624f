//! The headers of a forwarded exchange: what is stripped, what is set.
//!
//! Which request headers never reach an upstream is decided here, in one pass over the
//! header names:
//!
//! - hop-by-hop headers and those `Connection` names (RFC 9110 §7.6.1);
//! - the client's `Authorization`, which is for the gateway;
//! - names with `_`: CGI, WSGI and Rack servers turn `-` and `_` into the same variable
//!   name, so `X_Forwarded_For` would be read as `X-Forwarded-For`; and names with any
//!   other character than letters, digits and `-` (`X.Forwarded.For`), which some servers
//!   map to `_` too. nginx drops both by default (`underscores_in_headers`,
//!   `ignore_invalid_headers`);
//! - `Proxy` and every `Proxy-*` header (httpoxy: CGI turns `Proxy` into `HTTP_PROXY`);
//! - headers that make upstreams serve another path or method ([`OVERRIDES`]);
//! - from a peer that is not a trusted proxy, every claim about the client's address or
//!   scheme ([`is_client_claim`]): the gateway sets its own.

use http::{HeaderMap, HeaderName, HeaderValue, header};

use crate::base::context::{
    RequestContext, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};

/// Headers that describe one connection, never the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `Proxy-Authorization`, `Proxy-Authenticate`, `Proxy-Connection`, `Proxy-Status` (RFC
/// 9209, where proxies behind an upstream name themselves and their errors) and the rest:
/// they speak of the proxies on one side, never to the other.
fn is_about_proxies(name: &str) -> bool {
    name.starts_with("proxy-")
}

/// Headers that make some upstreams serve another path or method than the one the
/// gateway authorised.
const OVERRIDES: [&str; 5] = [
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// Headers (besides every `X-Forwarded-*`) that upstream frameworks read as the client's
/// address, its host or the scheme it used. Only the gateway, or a trusted proxy in front
/// of it, may make these claims.
const CLIENT_CLAIMS: [&str; 22] = [
    "forwarded",
    "forwarded-for",
    "x-forwarded",
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "client-ip",
    "cf-connecting-ip",
    "cf-pseudo-ipv4",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
    "x-proxyuser-ip",
    "x-appengine-user-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-host",
    "x-original-host",
    "x-scheme",
    "front-end-https",
    "x-url-scheme",
];

/// Whether a (lowercase, `-`-spelled) header name is a claim about the client's address,
/// host or scheme.
fn is_client_claim(name: &str) -> bool {
    name.starts_with("x-forwarded-") || CLIENT_CLAIMS.contains(&name)
}

/// How a route's requests are rewritten for its upstream, beyond what every route does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Forward header names that contain `_` (off by default).
    pub allow_underscores: bool,
    /// Drop `Referer`: on capability routes a browser puts the whole secret URL in it.
    pub drop_referer: bool,
}

/// Removes hop-by-hop headers, including any that `Connection` names.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
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
}

/// Removes hop-by-hop headers from an upstream's response, and every `Proxy-*` header
/// (a request's are withheld with the client's claims, [`is_withheld`]).
pub fn remove_hop_by_hop_and_proxies(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    let proxies: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_about_proxies(name.as_str()))
        .cloned()
        .collect();
    for name in proxies {
        headers.remove(name);
    }
}

/// Removes every header that CGI-style servers (WSGI, Rack, PHP) read as `name`: a client's
/// `X_Api_Key`, on a route that forwards underscores, would stand beside the `X-Api-Key`
/// the gateway sets, and may be the one the upstream reads.
pub fn remove_underscore_spellings(headers: &mut HeaderMap, name: &HeaderName) {
    let name = name.as_str().as_bytes();
    let spelled_so = |other: &HeaderName| {
        let other = other.as_str().as_bytes();
        other.contains(&b'_')
            && other.len() == name.len()
            && other
                .iter()
                .zip(name)
                .all(|(o, n)| o == n || (*o == b'_' && *n == b'-'))
    };
    let spellings: Vec<HeaderName> = headers.keys().filter(|n| spelled_so(n)).cloned().collect();
    for spelling in spellings {
        headers.remove(spelling);
    }
}

/// Whether `name` holds only letters, digits and `-` (and `_` when `underscores`).
fn is_plain_name(name: &str, underscores: bool) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || (underscores && b == b'_'))
}

/// Whether a request header named `name` (lowercase, as `http` keeps names) must not
/// reach the upstream; `trusted` says whether the peer is a trusted proxy.
fn is_withheld(name: &str, trusted: bool, rules: HeaderRules) -> bool {
    if !is_plain_name(name, rules.allow_underscores) {
        return true;
    }
    // Where underscores are allowed, `X_Forwarded_For` is still `X-Forwarded-For` to the
    // upstream: the protected names are matched in their `-` spelling.
    let spelled = match name.contains('_') {
        true => std::borrow::Cow::Owned(name.replace('_', "-")),
        false => std::borrow::Cow::Borrowed(name),
    };
    let name = spelled.as_ref();
    name == "proxy"
        || is_about_proxies(name)
        || OVERRIDES.contains(&name)
        || (!trusted && is_client_claim(name))
        || (rules.drop_referer && name == header::REFERER.as_str())
}

/// Rewrites a client's request headers for the upstream: withholds what the module
/// documentation lists, joins HTTP/2 cookie crumbs into one `Cookie`, and sets `Host`,
/// `X-Forwarded-For/Proto/Host` and `X-Request-ID`.
pub fn prepare_request_headers(
    headers: &mut HeaderMap,
    upstream_host: &HeaderValue,
    ctx: &RequestContext,
    rules: HeaderRules,
) {
    remove_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    // Nothing is allocated unless a header is withheld.
    let withheld: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_withheld(name.as_str(), ctx.via_trusted_proxy, rules))
        .cloned()
        .collect();
    for name in withheld {
        headers.remove(name);
    }
    join_cookie_crumbs(headers);
    single_content_length(headers);
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

/// An HTTP/2 client may repeat `Content-Length` with equal values (hygiene refuses unequal
/// ones): one goes on, in its plain form, since many HTTP/1.1 servers refuse a repeated
/// field (RFC 9110 §8.6 lets a recipient collapse them).
fn single_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let length = first
        .to_str()
        .ok()
        .and_then(|text| text.parse::<u64>().ok());
    match length {
        Some(length) => headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length)),
        None => headers.remove(header::CONTENT_LENGTH),
    };
}

/// HTTP/2 clients may split `Cookie` into one field per cookie; an HTTP/1.1 upstream
/// expects one field, joined with `"; "` (RFC 9113 §8.2.3).
fn join_cookie_crumbs(headers: &mut HeaderMap) {
    let mut crumbs = headers.get_all(header::COOKIE).iter();
    if crumbs.next().is_none() || crumbs.next().is_none() {
        return;
    }
    let joined = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    // Valid values joined by "; " are a valid value.
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
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

    fn prepared(
        pairs: &[(&'static str, &'static str)],
        trusted: bool,
        rules: HeaderRules,
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_static(value));
        }
        prepare_request_headers(
            &mut headers,
            &HeaderValue::from_static("up:80"),
            &ctx(trusted),
            rules,
        );
        headers
    }

    #[test]
    fn strips_credentials_hop_by_hop_and_connection_listed_headers() {
        let headers = prepared(
            &[
                ("authorization", "Bearer secret"),
                ("connection", "keep-alive, x-drop-me"),
                ("x-drop-me", "1"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("upgrade", "websocket"),
                ("proxy-authorization", "Basic x"),
                ("x-http-method-override", "DELETE"),
                ("x-original-url", "/admin"),
                ("accept", "application/json"),
            ],
            false,
            HeaderRules::default(),
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
    fn client_claims_from_an_untrusted_peer_are_withheld() {
        let claims: Vec<(&'static str, &'static str)> = CLIENT_CLAIMS
            .iter()
            .map(|name| (*name, "1.2.3.4"))
            .chain([
                ("x-forwarded-port", "443"),
                ("x-forwarded-prefix", "/admin"),
                ("x-forwarded-server", "evil"),
                ("x-forwarded-ssl", "on"),
                ("x-forwarded-scheme", "https"),
            ])
            .collect();
        let headers = prepared(&claims, false, HeaderRules::default());
        for (name, _) in &claims {
            assert!(!headers.contains_key(*name), "{name} was forwarded");
        }
        let trusted = prepared(&claims, true, HeaderRules::default());
        for (name, _) in &claims {
            assert!(
                trusted.contains_key(*name),
                "a trusted proxy's {name} was dropped"
            );
        }
    }

    /// An equal `Content-Length` repeated (HTTP/2 lets a client send it so) goes on once,
    /// in its plain form (RFC 9110 §8.6).
    #[test]
    fn a_repeated_content_length_goes_on_once() {
        let mut headers = HeaderMap::new();
        for value in ["03", "3"] {
            headers.append(header::CONTENT_LENGTH, HeaderValue::from_static(value));
        }
        single_content_length(&mut headers);
        let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(lengths, ["3"]);

        let mut single = HeaderMap::new();
        single.insert(header::CONTENT_LENGTH, HeaderValue::from_static("03"));
        single_content_length(&mut single);
        assert_eq!(
            single[header::CONTENT_LENGTH],
            "03",
            "a single field is left alone"
        );
    }

    #[test]
    fn a_credential_headers_underscore_spellings_are_removed() {
        let mut headers = HeaderMap::new();
        for name in [
            "x_api_key",
            "x-api_key",
            "x_api_keys",
            "x-api-key",
            "x_other",
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static("client"),
            );
        }
        remove_underscore_spellings(&mut headers, &HeaderName::from_static("x-api-key"));
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["x-api-key", "x_api_keys", "x_other"]);
    }

    #[test]
    fn underscores_and_httpoxy_are_withheld_unless_the_route_allows_underscores() {
        let pairs = [
            ("x_forwarded_for", "1.2.3.4"),
            ("x_http_method_override", "DELETE"),
            ("x.forwarded.for", "1.2.3.4"),
            ("x-real~ip", "1.2.3.4"),
            ("proxy", "http://evil.example"),
            ("proxy-anything", "x"),
            ("x-fine", "kept"),
        ];
        let headers = prepared(&pairs, true, HeaderRules::default());
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert!(names.contains(&"x-fine"));
        for gone in [
            "x_forwarded_for",
            "x_http_method_override",
            "x.forwarded.for",
            "x-real~ip",
            "proxy",
            "proxy-anything",
        ] {
            assert!(!names.contains(&gone), "{gone} was forwarded");
        }
        let allowed = prepared(
            &pairs,
            false,
            HeaderRules {
                allow_underscores: true,
                ..HeaderRules::default()
            },
        );
        assert!(
            !allowed.contains_key("x_forwarded_for"),
            "an allowed underscore does not make a client claim"
        );
        assert!(!allowed.contains_key("x_http_method_override"));
        assert!(
            !allowed.contains_key("x.forwarded.for"),
            "only underscores are allowed"
        );
        let legacy = prepared(
            &[("x_legacy_id", "7")],
            false,
            HeaderRules {
                allow_underscores: true,
                ..HeaderRules::default()
            },
        );
        assert_eq!(legacy["x_legacy_id"], "7");
        assert!(!allowed.contains_key("proxy"), "httpoxy is never allowed");
    }

    #[test]
    fn cookie_crumbs_are_joined_rfc_9113_8_2_3() {
        let headers = prepared(
            &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
            false,
            HeaderRules::default(),
        );
        let cookies: Vec<_> = headers.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn referer_is_dropped_only_when_the_route_says_so() {
        let pairs = [("referer", "https://gw.example/outline/secret/x")];
        assert!(prepared(&pairs, false, HeaderRules::default()).contains_key("referer"));
        let rules = HeaderRules {
            drop_referer: true,
            ..HeaderRules::default()
        };
        assert!(!prepared(&pairs, false, rules).contains_key("referer"));
    }
}
