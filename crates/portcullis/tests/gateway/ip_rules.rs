//! Per-route address rules, and bans for addresses that keep failing authentication.

use std::time::Duration;

use crate::common::*;

fn with_config(upstream: &Upstream, toml: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "c.toml", toml);
    let gateway = Launch::bare()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        // A bare address, in its IPv4-mapped form: the peer 127.0.0.1 is trusted.
        .env("PORTCULLIS_TRUSTED_PROXIES", "::ffff:127.0.0.1")
        .env("PORTCULLIS_UPSTREAM", upstream.url())
        .start();
    (dir, gateway)
}

async fn from(gateway: &Gateway, path: &str, client: &str, token: &str) -> Reply {
    get(
        &gateway.url(path),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-forwarded-for", client),
        ],
    )
    .await
}

#[tokio::test]
async fn routes_allow_and_deny_addresses() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = with_config(
        &upstream,
        &format!(
            r#"
            [upstreams.api]
            url = "{}"
            [[routes]]
            path_prefix = "/internal"
            upstream = "api"
            allow_ips = ["10.0.0.0/8"]
            deny_ips = ["10.0.0.66/32", "10.0.0.67", "::ffff:10.0.1.0/120"]
            "#,
            upstream.url()
        ),
    );
    assert_eq!(
        from(&gateway, "/internal/x", "10.1.2.3", TOKEN)
            .await
            .status,
        200
    );
    let outside = from(&gateway, "/internal/x", "198.51.100.1", TOKEN).await;
    outside.assert_problem(403, "ip-denied");
    // A bare address is that address; an IPv4-mapped range is the IPv4 range it maps,
    // as clients' addresses are compared in their IPv4 form.
    for denied in ["10.0.0.66", "10.0.0.67", "10.0.1.9", "::ffff:10.0.1.9"] {
        from(&gateway, "/internal/x", denied, TOKEN)
            .await
            .assert_problem(403, "ip-denied");
    }
    // Other routes are not restricted.
    assert_eq!(
        from(&gateway, "/public", "198.51.100.1", TOKEN)
            .await
            .status,
        200
    );
    assert_eq!(upstream.seen().len(), 2);
}

/// What `check` says of address lists: an address with a part written with a leading zero
/// (octal to some readers) is refused, at the line that holds it; so is a ban that could
/// never hold, or that would outlast any deployment.
#[test]
fn address_lists_and_bans_are_checked() {
    let route = "[upstreams.api]\nurl = \"http://127.0.0.1:9000\"\n\
                 [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n";
    let (code, out) = check_config(&format!("{route}deny_ips = [\"10.0.0.1\"]\n"), &[], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("host_bits"), "{out}");
    // A range with bits below its prefix is its network: said, as nginx says it.
    let (code, out) = check_config(&format!("{route}deny_ips = [\"10.0.0.5/30\"]\n"), &[], &[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning[ip_ranges.host_bits]") && out.contains("means 10.0.0.4/30"),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let octal = write_file(
        dir.path(),
        "c.toml",
        &format!("{route}deny_ips = [\"010.0.0.1/32\"]\n"),
    );
    let refused = portcullis()
        .args(["check", "--config", octal.to_str().unwrap()])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{said}");
    assert!(
        said.contains("line 6") && said.contains("not an address or an address range"),
        "{said}"
    );
    for (bans, why) in [
        ("window = \"0s\"", "window"),
        ("duration = \"0s\"", "duration"),
        ("duration = \"400000000000y\"", "duration"),
    ] {
        let (code, out) = check_config(&format!("[bans]\n{bans}\n{route}"), &[], &[]);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("error[bans]") && out.contains(why), "{out}");
    }
    // Bans off: their times do not matter.
    let off = format!("[bans]\nmax_failures = 0\nwindow = \"0s\"\n{route}");
    assert_eq!(check_config(&off, &[], &[]).0, Some(0));
}

#[tokio::test]
async fn repeated_failures_ban_an_address_until_the_ban_lifts() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = with_config(
        &upstream,
        "[bans]\nmax_failures = 3\nwindow = \"1m\"\nduration = \"2s\"\n",
    );
    let attacker = "203.0.113.7";
    for _ in 0..3 {
        from(
            &gateway,
            "/v1",
            attacker,
            "guess-0123456789abcdef0123456789",
        )
        .await
        .assert_problem(401, "unauthorized");
    }
    let banned = from(&gateway, "/v1", attacker, TOKEN).await;
    banned.assert_problem(429, "banned");
    let retry: u64 = banned.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        from(&gateway, "/v1", "203.0.113.8", TOKEN).await.status,
        200,
        "other addresses are served"
    );

    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(
        from(&gateway, "/v1", attacker, TOKEN).await.status,
        200,
        "the ban lifted by itself"
    );
    assert_eq!(upstream.seen().len(), 2);
}

/// A client behind a trusted proxy that writes bytes that are not ASCII into its own
/// `X-Forwarded-For` (which nginx's `$proxy_add_x_forwarded_for` keeps, then appends the
/// client) is still itself: counted towards a ban, and held by it.
#[tokio::test]
async fn bytes_the_client_wrote_into_x_forwarded_for_do_not_hide_it_from_bans() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = with_config(
        &upstream,
        "[bans]\nmax_failures = 3\nwindow = \"1m\"\nduration = \"1m\"\n",
    );
    let request = |token: &str| {
        let mut bytes = format!(
            "GET /v1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {token}\r\nConnection: close\r\nX-Forwarded-For: x"
        )
        .into_bytes();
        bytes.extend_from_slice(b"\xff, 203.0.113.9\r\n\r\n");
        bytes
    };
    for _ in 0..3 {
        raw(gateway.addr, &request("guess-0123456789abcdef0123456789"))
            .await
            .assert_problem(401, "unauthorized");
    }
    raw(gateway.addr, &request(TOKEN))
        .await
        .assert_problem(429, "banned");
    from(&gateway, "/v1", "203.0.113.9", TOKEN)
        .await
        .assert_problem(429, "banned");
    assert!(upstream.seen().is_empty());
}

/// The admin API's bearer tokens can be guessed like any other: failures there count
/// towards the same ban, and a ban made on either listener holds on both.
#[tokio::test]
async fn guesses_at_the_admin_api_ban_the_address_on_both_listeners() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = with_config(
        &upstream,
        "[bans]\nmax_failures = 3\nwindow = \"1m\"\nduration = \"2s\"\n",
    );
    let admin = |token: &str| {
        let header = format!("Bearer {token}");
        let url = gateway.admin_url("/v1/tokens");
        async move { get(&url, &[("authorization", &header)]).await }
    };
    for _ in 0..3 {
        admin("guess-0123456789abcdef0123456789")
            .await
            .assert_problem(401, "unauthorized");
    }
    // The admin API's peer, 127.0.0.1, is banned: there with the right token too, and on
    // the main listener, whose client is the same peer when it sends no X-Forwarded-For.
    admin(TOKEN).await.assert_problem(429, "banned");
    get(
        &gateway.url("/v1"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await
    .assert_problem(429, "banned");
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(admin(TOKEN).await.status, 200, "the ban lifted by itself");

    // Failures on the main listener ban the admin API's callers from that address too.
    for _ in 0..3 {
        get(
            &gateway.url("/v1"),
            &[("authorization", "Bearer guess-0123456789abcdef0123456789")],
        )
        .await
        .assert_problem(401, "unauthorized");
    }
    admin(TOKEN).await.assert_problem(429, "banned");
    assert_eq!(upstream.seen().len(), 0);
}

#[tokio::test]
async fn bans_hold_against_ipv6_address_rotation() {
    let upstream = Upstream::start().await;
    let (_dir, gateway) = with_config(
        &upstream,
        "[bans]\nmax_failures = 3\nwindow = \"1m\"\nduration = \"1m\"\n",
    );
    // One client holds a whole /64 and takes a fresh address for every guess.
    for host in [":1", ":2", "a:b:c:d"] {
        from(
            &gateway,
            "/v1",
            &format!("2001:db8:7:7:{host}"),
            "guess-0123456789abcdef0123456789",
        )
        .await
        .assert_problem(401, "unauthorized");
    }
    from(&gateway, "/v1", "2001:db8:7:7:ffff:ffff:ffff:ffff", TOKEN)
        .await
        .assert_problem(429, "banned");
    assert_eq!(
        from(&gateway, "/v1", "2001:db8:7:8::1", TOKEN).await.status,
        200,
        "the next /64 is someone else"
    );
    assert_eq!(upstream.seen().len(), 1);
}
