//! Response headers: the security set added to every response, and the headers that
//! fingerprint an upstream removed from it.

use http::{HeaderMap, HeaderName, HeaderValue, header};

pub use crate::config::DEFAULT_CSP;

/// Headers that tell an attacker what software the upstream runs.
const FINGERPRINTS: [&str; 5] = [
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    // The proxies behind the upstream, by name and version (`1.1 squid-internal-3`).
    "via",
];

/// Security header settings, as configured.
#[derive(Debug, Clone)]
pub struct SecurityHeadersPolicy {
    /// Whether to add the set at all.
    pub enabled: bool,
    /// The `Content-Security-Policy` for every path without an override.
    pub content_security_policy: HeaderValue,
    /// `(path prefix, policy)`: the longest matching prefix's policy applies.
    pub csp_overrides: Vec<(String, HeaderValue)>,
    /// The `Strict-Transport-Security` value sent on HTTPS responses.
    pub strict_transport_security: HeaderValue,
}

/// The respond stage's header work, prepared once.
#[derive(Debug, Clone)]
pub struct ResponseHeaders {
    enabled: bool,
    fixed: Vec<(HeaderName, HeaderValue)>,
    default_csp: HeaderValue,
    csp_overrides: Vec<(String, HeaderValue)>,
    hsts: HeaderValue,
}

impl ResponseHeaders {
    /// Prepares the headers of `policy`.
    pub fn new(policy: &SecurityHeadersPolicy) -> Self {
        let fixed = [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "strict-origin-when-cross-origin"),
            ("cross-origin-opener-policy", "same-origin"),
            ("cross-origin-resource-policy", "same-origin"),
            (
                "permissions-policy",
                "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), \
                 microphone=(), payment=(), usb=()",
            ),
        ]
        .into_iter()
        .map(|(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            )
        })
        .collect();
        let mut csp_overrides = policy.csp_overrides.clone();
        csp_overrides.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Self {
            enabled: policy.enabled,
            fixed,
            default_csp: policy.content_security_policy.clone(),
            csp_overrides,
            hsts: policy.strict_transport_security.clone(),
        }
    }

    /// The `Content-Security-Policy` for `path`.
    pub fn csp_for(&self, path: &str) -> &HeaderValue {
        self.csp_overrides
            .iter()
            .find(|(prefix, _)| path_has_prefix(path, prefix))
            .map_or(&self.default_csp, |(_, csp)| csp)
    }

    /// Adds the security set to `headers`, replacing an upstream's own values; `csp` is
    /// [`Self::csp_for`] the request path, and `https` says whether HSTS applies. The
    /// gateway's policy is the only one: an upstream's report-only CSP goes, and so does
    /// its HSTS over plain HTTP, where the gateway sends none (RFC 6797 §7.2).
    pub fn apply(&self, headers: &mut HeaderMap, csp: &HeaderValue, https: bool) {
        if !self.enabled {
            return;
        }
        for (name, value) in &self.fixed {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
        headers.remove(header::CONTENT_SECURITY_POLICY_REPORT_ONLY);
        if https {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, self.hsts.clone());
        } else {
            headers.remove(header::STRICT_TRANSPORT_SECURITY);
        }
    }
}

/// Removes the headers that fingerprint the upstream (`Server`, `X-Powered-By`, ...).
pub fn strip_fingerprints(headers: &mut HeaderMap) {
    for name in FINGERPRINTS {
        headers.remove(name);
    }
}

/// Whether `path` is `prefix` or lies below it, on a segment boundary: `/api` covers
/// `/api` and `/api/x`, not `/apix`. Letters match in either case, so a path that a
/// case-insensitive upstream would serve from a prefix is governed by that prefix's rules.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.get(..prefix.len()) {
        Some(head) if head.eq_ignore_ascii_case(prefix) => {
            let rest = &path[prefix.len()..];
            rest.is_empty() || rest.starts_with('/')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(enabled: bool) -> ResponseHeaders {
        ResponseHeaders::new(&SecurityHeadersPolicy {
            enabled,
            content_security_policy: HeaderValue::from_static(DEFAULT_CSP),
            csp_overrides: vec![
                (
                    "/docs".into(),
                    HeaderValue::from_static("default-src 'self'"),
                ),
                (
                    "/docs/raw".into(),
                    HeaderValue::from_static("default-src 'none'; sandbox"),
                ),
            ],
            strict_transport_security: HeaderValue::from_static(
                "max-age=31536000; includeSubDomains",
            ),
        })
    }

    #[test]
    fn adds_the_full_set_and_replaces_upstream_values() {
        let h = headers(true);
        let mut map = HeaderMap::new();
        map.insert("x-frame-options", HeaderValue::from_static("ALLOWALL"));
        h.apply(&mut map, h.csp_for("/v1"), false);
        assert_eq!(map["x-frame-options"], "DENY");
        assert_eq!(map["x-content-type-options"], "nosniff");
        assert_eq!(map["content-security-policy"], DEFAULT_CSP);
        assert!(map.contains_key("permissions-policy"));
        assert!(map.get("strict-transport-security").is_none());
    }

    #[test]
    fn hsts_only_over_https() {
        let h = headers(true);
        let mut map = HeaderMap::new();
        h.apply(&mut map, h.csp_for("/"), true);
        assert_eq!(
            map["strict-transport-security"],
            "max-age=31536000; includeSubDomains"
        );
    }

    #[test]
    fn longest_csp_override_wins_on_segment_boundaries() {
        let h = headers(true);
        assert_eq!(h.csp_for("/docs"), "default-src 'self'");
        assert_eq!(h.csp_for("/docs/index.html"), "default-src 'self'");
        assert_eq!(h.csp_for("/docs/raw/x"), "default-src 'none'; sandbox");
        assert_eq!(h.csp_for("/docsx"), DEFAULT_CSP);
    }

    #[test]
    fn disabled_adds_nothing() {
        let h = headers(false);
        let mut map = HeaderMap::new();
        h.apply(&mut map, h.csp_for("/"), true);
        assert!(map.is_empty());
    }

    #[test]
    fn fingerprints_are_removed() {
        let mut map = HeaderMap::new();
        for name in [
            "server",
            "x-powered-by",
            "x-aspnet-version",
            "x-aspnetmvc-version",
            "via",
            "content-type",
        ] {
            map.insert(name, HeaderValue::from_static("v"));
        }
        strip_fingerprints(&mut map);
        assert_eq!(map.len(), 1);
    }

    #[test]
    fn prefix_matching() {
        assert!(path_has_prefix("/api", "/api"));
        assert!(path_has_prefix("/api/x", "/api"));
        assert!(path_has_prefix("/api/x", "/api/"));
        assert!(!path_has_prefix("/apix", "/api"));
        assert!(path_has_prefix("/API/x", "/api"));
        assert!(!path_has_prefix("/ap", "/api"));
        assert!(path_has_prefix("/anything", "/"));
    }
}
