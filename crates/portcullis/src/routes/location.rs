//! `Location` and `Content-Location` from an upstream, mapped back into the gateway's
//! public path space, as nginx's `proxy_redirect default` does: an upstream that redirects
//! to its own absolute URL, or to a path under its base path, would otherwise send clients
//! around the gateway to an internal address, or reveal a secret base path.

/// How one route maps public paths to upstream paths, for the reverse direction.
#[derive(Debug, Clone, Copy)]
pub struct PathMap<'a> {
    /// The upstream's base path (no trailing `/`; empty for none): a secret for an
    /// Outline-style management URL.
    pub base: &'a str,
    /// What the route's requests carry below `base`: the route prefix when it is kept,
    /// empty when the route strips it.
    pub kept_prefix: &'a str,
    /// The public prefix the client used: the route prefix as the client spelled it, and
    /// on a capability route the capability segment after it.
    pub public_base: &'a str,
}

/// The public form of `location` when it points at the upstream (`origin_matches` says
/// whether an absolute URL's authority is the upstream's), or `None` when it stays as it
/// is. The result is an absolute path (RFC 9110 §10.2.2 allows a relative
/// reference), so it never names an internal host.
pub fn rewrite(
    location: &str,
    map: PathMap<'_>,
    origin_matches: impl Fn(&str) -> bool,
) -> Option<String> {
    let target = match split_origin(location) {
        Some((authority, rest)) => {
            if !origin_matches(authority) {
                return None;
            }
            rest
        }
        None if location.starts_with('/') => location,
        // Relative references resolve against the public URL already.
        None => return None,
    };
    let split = target.find(['?', '#']).unwrap_or(target.len());
    let (path, suffix) = target.split_at(split);
    // `http://upstream//SECRET/x`: a path that starts `//` would be read as a URL of the
    // host `SECRET`; as a path, it is the base path's.
    let path = match path.trim_start_matches('/') {
        rest if rest.len() + 1 < path.len() => &path[path.len() - rest.len() - 1..],
        _ => path,
    };
    let public = public_path(path, map);
    let mut rewritten = String::with_capacity(public.len() + suffix.len() + 1);
    rewritten.push_str(&public);
    if rewritten.is_empty() {
        rewritten.push('/');
    }
    rewritten.push_str(suffix);
    (rewritten != location).then_some(rewritten)
}

/// The public path an upstream path stands for.
fn public_path(path: &str, map: PathMap<'_>) -> String {
    let Some(below_base) = strip_segment_prefix(path, map.base) else {
        return path.to_owned();
    };
    match strip_segment_prefix(below_base, map.kept_prefix) {
        Some(below_prefix) => format!("{}{below_prefix}", map.public_base),
        // Under the base path but outside the route: at least the base path stays hidden.
        None => below_base.to_owned(),
    }
}

/// `path` below `prefix`, when `prefix` covers it on a segment boundary.
fn strip_segment_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    // In either case, as routes match: the upstream got the prefix as the client spelled it.
    let rest = path
        .get(..prefix.len())
        .filter(|head| head.eq_ignore_ascii_case(prefix))
        .and_then(|_| path.get(prefix.len()..))?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// A `Refresh` value (`5; url=http://upstream/SECRET/x`, a redirect browsers follow) with
/// its URL rewritten as [`rewrite`] does; `None` when it stays as it is.
pub fn rewrite_refresh(
    value: &str,
    map: PathMap<'_>,
    origin_matches: impl Fn(&str) -> bool,
) -> Option<String> {
    let at = value
        .as_bytes()
        .windows(4)
        .position(|window| window.eq_ignore_ascii_case(b"url="))?
        + 4;
    let quoted = value[at..].trim_start().starts_with(['"', '\'']);
    let url = value[at..].trim().trim_matches(['"', '\'']);
    let rewritten = rewrite(url, map, origin_matches)?;
    let quote = if quoted { "'" } else { "" };
    Some(format!("{}{quote}{rewritten}{quote}", &value[..at]))
}

/// A `Link` value (`<http://upstream/SECRET/x?page=2>; rel="next", ...`, RFC 8288 §3) with
/// each target rewritten as [`rewrite`] does; `None` when none changes.
pub fn rewrite_link(
    value: &str,
    map: PathMap<'_>,
    origin_matches: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut changed = false;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>').map(|close| open + close) else {
            break;
        };
        out.push_str(&rest[..=open]);
        let target = &rest[open + 1..close];
        match rewrite(target, map, &origin_matches) {
            Some(rewritten) => {
                out.push_str(&rewritten);
                changed = true;
            }
            None => out.push_str(target),
        }
        rest = &rest[close..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// A `Set-Cookie` value with its `Path` mapped as a location's path is (a cookie scoped to
/// `/SECRET/x` names the secret), and a `Domain` that names the upstream's own host left
/// out (a browser would refuse it from the gateway's host anyway); `None` when it stays.
pub fn rewrite_set_cookie(
    value: &str,
    map: PathMap<'_>,
    origin_matches: impl Fn(&str) -> bool,
) -> Option<String> {
    let mut changed = false;
    let mut attributes: Vec<String> = Vec::new();
    for (index, attribute) in value.split(';').enumerate() {
        let trimmed = attribute.trim();
        let (name, argument) = trimmed.split_once('=').unwrap_or((trimmed, ""));
        // A quoted value is read inside its quotes: a browser takes `Path="/SECRET/"`
        // literally (RFC 6265 §5.2.4), but the secret would still reach the client.
        let argument = argument.trim();
        let (quote, argument) = match argument.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
            Some(inner) => ("\"", inner),
            None => ("", argument),
        };
        let domain = argument.trim_start_matches('.');
        if index > 0 && name.eq_ignore_ascii_case("domain") && origin_matches(domain) {
            changed = true;
            continue;
        }
        if index > 0
            && name.eq_ignore_ascii_case("path")
            && let Some(path) = rewrite(argument, map, &origin_matches)
        {
            attributes.push(format!("{name}={quote}{path}{quote}"));
            changed = true;
            continue;
        }
        attributes.push(trimmed.to_owned());
    }
    changed.then(|| attributes.join("; "))
}

/// `(authority, rest)` of an absolute (`http://host/x`) or scheme-relative (`//host/x`)
/// URL.
fn split_origin(location: &str) -> Option<(&str, &str)> {
    let after = match location.split_once("://") {
        Some((scheme, after))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            after
        }
        _ => location.strip_prefix("//")?,
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some((&after[..end], &after[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UPSTREAM: &str = "10.0.0.5:9000";

    fn map<'a>(base: &'a str, kept_prefix: &'a str, public_base: &'a str) -> PathMap<'a> {
        PathMap {
            base,
            kept_prefix,
            public_base,
        }
    }

    fn at_upstream(authority: &str) -> bool {
        authority.eq_ignore_ascii_case(UPSTREAM)
    }

    #[test]
    fn absolute_urls_of_the_upstream_become_public_paths() {
        let kept = map("", "/api", "/api");
        assert_eq!(
            rewrite("http://10.0.0.5:9000/api/login?next=1", kept, at_upstream).as_deref(),
            Some("/api/login?next=1")
        );
        assert_eq!(
            rewrite("//10.0.0.5:9000/other", kept, at_upstream).as_deref(),
            Some("/other")
        );
        assert_eq!(
            rewrite("http://10.0.0.5:9000", kept, at_upstream).as_deref(),
            Some("/")
        );
        assert_eq!(
            rewrite("https://auth.example/login", kept, at_upstream),
            None
        );
        assert_eq!(rewrite("/api/x", kept, at_upstream), None, "already public");
        assert_eq!(rewrite("next", kept, at_upstream), None);
    }

    #[test]
    fn a_secret_base_path_is_replaced_by_the_public_prefix_the_client_used() {
        // An Outline-style upstream at https://10.0.0.5:9000/SECRET behind a capability
        // route /outline that strips its prefix.
        let outline = map("/SECRET", "", "/outline/pcl_cap");
        assert_eq!(
            rewrite(
                "https://10.0.0.5:9000/SECRET/access-keys/1",
                outline,
                at_upstream
            )
            .as_deref(),
            Some("/outline/pcl_cap/access-keys/1")
        );
        assert_eq!(
            rewrite("/SECRET/server", outline, at_upstream).as_deref(),
            Some("/outline/pcl_cap/server")
        );
        assert_eq!(
            rewrite("/SECRETS/x", outline, at_upstream),
            None,
            "prefixes match whole segments"
        );
        // Leading slashes doubled: a path still, never a scheme-relative URL naming a host.
        for doubled in [
            "https://10.0.0.5:9000//SECRET/x",
            "https://10.0.0.5:9000///SECRET/x",
        ] {
            assert_eq!(
                rewrite(doubled, outline, at_upstream).as_deref(),
                Some("/outline/pcl_cap/x"),
                "{doubled}"
            );
        }
        assert_eq!(
            rewrite("https://10.0.0.5:9000//other/x", outline, at_upstream).as_deref(),
            Some("/other/x")
        );
    }

    #[test]
    fn a_kept_prefix_below_a_base_path_maps_back() {
        let based = map("/base", "/api", "/API");
        assert_eq!(
            rewrite("/base/api/items", based, at_upstream).as_deref(),
            Some("/API/items")
        );
        assert_eq!(
            rewrite("/base/elsewhere", based, at_upstream).as_deref(),
            Some("/elsewhere")
        );
    }

    /// The headers besides `Location` that carry the upstream's URLs: `Refresh` (a
    /// redirect), `Link` (pagination) and `Set-Cookie` (`Path`, `Domain`).
    #[test]
    fn refresh_link_and_cookies_lose_the_upstream_and_its_secret_path() {
        let outline = map("/SECRET", "", "/outline/pcl_cap");
        assert_eq!(
            rewrite_refresh("0; url=http://10.0.0.5:9000/SECRET/r", outline, at_upstream)
                .as_deref(),
            Some("0; url=/outline/pcl_cap/r")
        );
        assert_eq!(
            rewrite_refresh("5; URL='/SECRET/r'", outline, at_upstream).as_deref(),
            Some("5; URL='/outline/pcl_cap/r'")
        );
        assert_eq!(rewrite_refresh("5", outline, at_upstream), None);
        assert_eq!(
            rewrite_link(
                "<http://10.0.0.5:9000/SECRET/next?page=2>; rel=\"next\", <https://docs.example/a>; rel=help",
                outline,
                at_upstream
            )
            .as_deref(),
            Some("</outline/pcl_cap/next?page=2>; rel=\"next\", <https://docs.example/a>; rel=help")
        );
        assert_eq!(
            rewrite_link("<https://docs.example/a>; rel=help", outline, at_upstream),
            None
        );
        assert_eq!(
            rewrite_set_cookie(
                "s=1; Domain=10.0.0.5:9000; Path=/SECRET; HttpOnly",
                outline,
                at_upstream
            )
            .as_deref(),
            Some("s=1; Path=/outline/pcl_cap; HttpOnly")
        );
        assert_eq!(
            rewrite_set_cookie(
                "s=1; Domain=\"10.0.0.5:9000\"; Path=\"/SECRET/\"",
                outline,
                at_upstream
            )
            .as_deref(),
            Some("s=1; Path=\"/outline/pcl_cap/\""),
            "quoted values are read inside their quotes"
        );
        assert_eq!(
            rewrite_set_cookie("s=1; Domain=example.com; Path=/", outline, at_upstream),
            None
        );
    }
}
