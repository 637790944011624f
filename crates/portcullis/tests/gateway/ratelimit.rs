//! Rate limits, in memory and shared through a real Redis; bans shared the same way; the
//! backend failing and recovering; per-upstream concurrency caps.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::*;

/// The Redis the shared-backend tests use; `PORTCULLIS_TEST_REDIS` may point elsewhere.
fn shared_redis_url() -> String {
    std::env::var("PORTCULLIS_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A key prefix no other test, and no earlier run, uses.
fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("pcl-test-{}-{nanos}", std::process::id())
}

/// A gateway with `toml` as its config file (after an upstream `api` at `upstream`), the
/// static token, and 127.0.0.1 as a trusted proxy so tests can pose as many clients.
fn launch(upstream: &Upstream, toml: &str) -> (tempfile::TempDir, Launch) {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("[upstreams.api]\nurl = \"{}\"\n{toml}", upstream.url());
    let config = write_file(dir.path(), "c.toml", &text);
    let launch = Launch::bare()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env("PORTCULLIS_TRUSTED_PROXIES", "127.0.0.1/32");
    (dir, launch)
}

fn route(prefix: &str, limits: &str) -> String {
    format!(
        "[[routes]]\npath_prefix = \"{prefix}\"\nupstream = \"api\"\nrate_limits = [{limits}]\n"
    )
}

/// `GET path` as `client` (via the trusted proxy) with `token`.
async fn call_as(gateway: &Gateway, path: &str, token: &str, client: &str) -> Reply {
    get(
        &gateway.url(path),
        &[
            ("authorization", &format!("Bearer {token}")),
            ("x-forwarded-for", client),
        ],
    )
    .await
}

/// The status of `GET path` as `client` with `token`.
async fn status_as(gateway: &Gateway, path: &str, token: &str, client: &str) -> u16 {
    call_as(gateway, path, token, client).await.status.as_u16()
}

async fn call(gateway: &Gateway, path: &str) -> Reply {
    call_as(gateway, path, TOKEN, "198.51.100.1").await
}

async fn admin_get(gateway: &Gateway, path: &str, token: Option<&str>) -> Reply {
    let mut headers = Vec::new();
    let bearer;
    if let Some(token) = token {
        bearer = format!("Bearer {token}");
        headers.push(("authorization", bearer.as_str()));
    }
    get(&gateway.admin_url(path), &headers).await
}

/// Creates a managed token through the admin API.
async fn create_token(gateway: &Gateway, name: &str) -> String {
    let request = http::Request::post(gateway.admin_url("/v1/tokens"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::json!({ "name": name, "scopes": ["read"] }).to_string(),
        )))
        .unwrap();
    let reply = send(request).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    reply.json()["token"].as_str().unwrap().to_owned()
}

fn header_u64(reply: &Reply, name: &str) -> u64 {
    reply
        .header(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", reply.headers))
        .parse()
        .unwrap()
}

async fn ready(gateway: &Gateway) -> Reply {
    get(&gateway.url("/ready"), &[]).await
}

#[tokio::test]
async fn exactly_the_limit_passes_and_the_next_is_refused_before_the_upstream() {
    let upstream = Upstream::start().await;
    let (_dir, launch) = launch(&upstream, &route("/v1", r#"{ rate = "3/min" }"#));
    let gateway = launch.start();

    for remaining in [2, 1, 0] {
        let reply = call(&gateway, "/v1/positions").await;
        assert_eq!(reply.status, 200);
        assert_eq!(header_u64(&reply, "x-ratelimit-limit"), 3);
        assert_eq!(header_u64(&reply, "x-ratelimit-remaining"), remaining);
        // One request comes back every 20 s, so the bucket is full after 20 s per use.
        assert_eq!(
            header_u64(&reply, "x-ratelimit-reset"),
            20 * (3 - remaining)
        );
        assert_eq!(
            reply.header("ratelimit-policy"),
            Some(r#""principal";q=3;w=60"#)
        );
        assert_eq!(
            reply.header("ratelimit"),
            Some(format!(r#""principal";r={remaining};t={}"#, 20 * (3 - remaining)).as_str())
        );
    }
    let refused = call(&gateway, "/v1/positions").await;
    let problem = refused.assert_problem(429, "rate-limited");
    assert!(problem["detail"].as_str().unwrap().contains("Retry-After"));
    assert_eq!(header_u64(&refused, "retry-after"), 20);
    assert_eq!(header_u64(&refused, "x-ratelimit-remaining"), 0);
    assert_eq!(refused.header("ratelimit"), Some(r#""principal";r=0;t=60"#));
    assert_eq!(
        upstream.seen().len(),
        3,
        "the refused request never reached the upstream"
    );

    // The admin API counts both, for admins only.
    admin_get(&gateway, "/v1/rate-limits", None)
        .await
        .assert_problem(401, "unauthorized");
    let snapshot = admin_get(&gateway, "/v1/rate-limits", Some(TOKEN))
        .await
        .json();
    assert_eq!(snapshot["backend"], "memory");
    let route = &snapshot["routes"][0];
    assert_eq!(route["path_prefix"], "/v1");
    assert_eq!(
        (route["allowed"].as_u64(), route["limited"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(route["limits"][0]["rate"], "3/min");
    assert_eq!(route["limits"][0]["burst"], 3);
    admin_get(&gateway, "/metrics", None)
        .await
        .assert_problem(401, "unauthorized");
    let metrics = admin_get(&gateway, "/metrics", Some(TOKEN)).await.text();
    assert!(
        metrics
            .contains(r#"portcullis_rate_limit_requests_total{route="/v1",decision="limited"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"portcullis_rate_limit_backend{state="memory"} 1"#));
}

#[tokio::test]
async fn a_refused_client_is_served_again_after_the_documented_time() {
    let upstream = Upstream::start().await;
    // 2 every 2 s: one request comes back every second.
    let (_dir, launch) = launch(&upstream, &route("/v1", r#"{ rate = "2/2s" }"#));
    let gateway = launch.start();
    assert_eq!(call(&gateway, "/v1/a").await.status, 200);
    assert_eq!(call(&gateway, "/v1/a").await.status, 200);
    let refused = call(&gateway, "/v1/a").await;
    refused.assert_problem(429, "rate-limited");
    assert_eq!(header_u64(&refused, "retry-after"), 1);

    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(
        call(&gateway, "/v1/a").await.status,
        200,
        "one request came back"
    );
    call(&gateway, "/v1/a")
        .await
        .assert_problem(429, "rate-limited");
}

#[tokio::test]
async fn limits_are_kept_per_principal_per_address_or_per_route() {
    let upstream = Upstream::start().await;
    let toml = [
        route("/mine", r#"{ rate = "1/min" }"#),
        route("/by-ip", r#"{ rate = "1/min", key = "ip" }"#),
        route("/shared", r#"{ rate = "1/min", key = "route" }"#),
    ]
    .concat();
    let (_dir, launch) = launch(&upstream, &toml);
    let gateway = launch.start();
    let alice = create_token(&gateway, "alice").await;

    assert_eq!(
        status_as(&gateway, "/mine", TOKEN, "203.0.113.1").await,
        200
    );
    call_as(&gateway, "/mine", TOKEN, "203.0.113.2")
        .await
        .assert_problem(429, "rate-limited");
    assert_eq!(
        status_as(&gateway, "/mine", &alice, "203.0.113.1").await,
        200,
        "another principal has its own bucket"
    );

    assert_eq!(
        status_as(&gateway, "/by-ip", TOKEN, "203.0.113.1").await,
        200
    );
    call_as(&gateway, "/by-ip", &alice, "203.0.113.1")
        .await
        .assert_problem(429, "rate-limited");
    assert_eq!(
        status_as(&gateway, "/by-ip", TOKEN, "203.0.113.2").await,
        200,
        "another address has its own bucket"
    );

    assert_eq!(
        status_as(&gateway, "/shared", TOKEN, "203.0.113.1").await,
        200
    );
    call_as(&gateway, "/shared", &alice, "203.0.113.2")
        .await
        .assert_problem(429, "rate-limited");
}

/// The strictest of several limits decides, in memory or in Redis (with `redis`).
async fn the_strictest_limit_decides_and_a_refused_client_spends_nothing_shared(redis: bool) {
    let upstream = Upstream::start().await;
    let toml = [
        format!("[rate_limit]\nredis_key_prefix = \"{}\"\n", unique_prefix()),
        route(
            "/both",
            r#"{ rate = "100/min" }, { rate = "2/min", key = "route" }"#,
        ),
        route(
            "/fair",
            r#"{ rate = "1/min", key = "ip" }, { rate = "3/min", key = "route" }"#,
        ),
    ]
    .concat();
    let (_dir, mut launch) = launch(&upstream, &toml);
    if redis {
        launch = launch.env("PORTCULLIS_REDIS_URL", shared_redis_url());
    }
    let gateway = launch.start();

    let first = call(&gateway, "/both").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        header_u64(&first, "x-ratelimit-limit"),
        2,
        "the strictest limit is shown"
    );
    assert_eq!(header_u64(&first, "x-ratelimit-remaining"), 1);
    assert_eq!(
        first.header("ratelimit-policy"),
        Some(r#""principal";q=100;w=60, "route";q=2;w=60"#)
    );
    assert_eq!(
        first.header("ratelimit"),
        Some(r#""principal";r=99;t=1, "route";r=1;t=30"#)
    );
    assert_eq!(call(&gateway, "/both").await.status, 200);
    let refused = call(&gateway, "/both").await;
    refused.assert_problem(429, "rate-limited");
    if redis {
        // Nothing was charged: the principal's limit shows what it has left, as it stays.
        let shown = refused.header("ratelimit").unwrap();
        assert!(shown.starts_with(r#""principal";r=98;"#), "{shown}");
    }

    // One client hammering past its own limit does not use up what the route shares.
    assert_eq!(
        status_as(&gateway, "/fair", TOKEN, "203.0.113.1").await,
        200
    );
    for _ in 0..5 {
        call_as(&gateway, "/fair", TOKEN, "203.0.113.1")
            .await
            .assert_problem(429, "rate-limited");
    }
    assert_eq!(
        status_as(&gateway, "/fair", TOKEN, "203.0.113.2").await,
        200
    );
    assert_eq!(
        status_as(&gateway, "/fair", TOKEN, "203.0.113.3").await,
        200
    );
    let exhausted = call_as(&gateway, "/fair", TOKEN, "203.0.113.4").await;
    exhausted.assert_problem(429, "rate-limited");
    assert_eq!(
        header_u64(&exhausted, "retry-after"),
        20,
        "the route's limit refused it"
    );
}

#[tokio::test]
async fn the_strictest_limit_decides_in_memory() {
    the_strictest_limit_decides_and_a_refused_client_spends_nothing_shared(false).await;
}

#[tokio::test]
async fn the_strictest_limit_decides_in_redis() {
    the_strictest_limit_decides_and_a_refused_client_spends_nothing_shared(true).await;
}

#[tokio::test]
async fn the_environment_sets_a_default_for_every_route_without_its_own() {
    let upstream = Upstream::start().await;
    let toml = "[[routes]]\npath_prefix = \"/free\"\nupstream = \"api\"\nrate_limits = []\n\
                [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n";
    let (_dir, launch) = launch(&upstream, toml);
    let gateway = launch.env("PORTCULLIS_RATE_LIMIT", "2/min").start();
    for _ in 0..2 {
        let reply = call(&gateway, "/v1").await;
        assert_eq!(reply.status, 200);
        assert_eq!(header_u64(&reply, "x-ratelimit-limit"), 2);
    }
    call(&gateway, "/v1")
        .await
        .assert_problem(429, "rate-limited");
    for _ in 0..5 {
        let free = call(&gateway, "/free").await;
        assert_eq!(free.status, 200, "rate_limits = [] opts out of the default");
        assert!(free.header("x-ratelimit-limit").is_none());
    }
}

#[tokio::test]
async fn a_spoofed_forwarded_for_does_not_change_the_key() {
    let upstream = Upstream::start().await;
    let (_dir, launch) = launch(
        &upstream,
        &route("/v1", r#"{ rate = "2/min", key = "ip" }"#),
    );
    // The peer (127.0.0.1) is not a trusted proxy here, so X-Forwarded-For is the client's
    // own claim.
    let gateway = launch.without_env("PORTCULLIS_TRUSTED_PROXIES").start();
    for client in ["192.0.2.1", "192.0.2.2"] {
        assert_eq!(status_as(&gateway, "/v1", TOKEN, client).await, 200);
    }
    call_as(&gateway, "/v1", TOKEN, "192.0.2.3")
        .await
        .assert_problem(429, "rate-limited");
}

#[tokio::test]
async fn a_flood_of_distinct_addresses_stays_within_the_key_bound() {
    let upstream = Upstream::start().await;
    let toml = format!(
        "[rate_limit]\nmax_keys = 50\n{}",
        route("/v1", r#"{ rate = "1/min", key = "ip" }"#)
    );
    let (_dir, launch) = launch(&upstream, &toml);
    let gateway = launch.start();
    let mut served = 0;
    for n in 0..300 {
        let client = format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256);
        let reply = call_as(&gateway, "/v1", TOKEN, &client).await;
        match reply.status.as_u16() {
            200 => served += 1,
            _ => {
                reply.assert_problem(429, "rate-limited");
            }
        }
    }
    // 50 addresses got buckets of their own; everyone after shares one more.
    assert_eq!(served, 51);
    let snapshot = admin_get(&gateway, "/v1/rate-limits", Some(TOKEN))
        .await
        .json();
    let tracked = snapshot["routes"][0]["limits"][0]["tracked_keys"]
        .as_u64()
        .unwrap();
    assert!(tracked <= 51, "{tracked} keys tracked");
    // Addresses that already had a bucket keep it.
    call_as(&gateway, "/v1", TOKEN, "10.0.0.0")
        .await
        .assert_problem(429, "rate-limited");
}

#[tokio::test]
async fn two_gateways_sharing_redis_hold_one_limit() {
    let upstream = Upstream::start().await;
    let prefix = unique_prefix();
    let toml = format!(
        "[rate_limit]\nredis_key_prefix = \"{prefix}\"\n{}",
        route("/v1", r#"{ rate = "4/min" }"#)
    );
    let (_dir_a, launch_a) = launch(&upstream, &toml);
    let (_dir_b, launch_b) = launch(&upstream, &toml);
    let a = launch_a
        .env("PORTCULLIS_REDIS_URL", shared_redis_url())
        .start();
    let b = launch_b
        .env("PORTCULLIS_REDIS_URL", shared_redis_url())
        .start();

    for (remaining, gateway) in [(3, &a), (2, &b), (1, &a), (0, &b)] {
        let reply = call(gateway, "/v1").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(header_u64(&reply, "x-ratelimit-remaining"), remaining);
    }
    for gateway in [&a, &b] {
        let refused = call(gateway, "/v1").await;
        refused.assert_problem(429, "rate-limited");
        assert_eq!(header_u64(&refused, "retry-after"), 15);
    }
    assert_eq!(upstream.seen().len(), 4, "one limit across both replicas");
    assert_eq!(
        ready(&a).await.json()["rate_limit_backend"],
        "redis",
        "ready says where limits are kept"
    );
    let snapshot = admin_get(&b, "/v1/rate-limits", Some(TOKEN)).await.json();
    assert_eq!(snapshot["backend"], "redis");
}

#[tokio::test]
async fn a_ban_holds_on_every_replica_sharing_redis() {
    let upstream = Upstream::start().await;
    let prefix = unique_prefix();
    let toml = format!(
        "[rate_limit]\nredis_key_prefix = \"{prefix}\"\n[bans]\nmax_failures = 3\nduration = \"3s\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n"
    );
    let (_dir_a, launch_a) = launch(&upstream, &toml);
    let (_dir_b, launch_b) = launch(&upstream, &toml);
    let a = launch_a
        .env("PORTCULLIS_REDIS_URL", shared_redis_url())
        .start();
    let b = launch_b
        .env("PORTCULLIS_REDIS_URL", shared_redis_url())
        .start();
    let attacker = "203.0.113.66";
    for _ in 0..3 {
        call_as(&a, "/v1", "guess-0123456789abcdef0123456789", attacker)
            .await
            .assert_problem(401, "unauthorized");
    }
    let banned = call_as(&b, "/v1", TOKEN, attacker).await;
    banned.assert_problem(429, "banned");
    let retry = header_u64(&banned, "retry-after");
    assert!((1..=3).contains(&retry), "Retry-After {retry}");
    assert_eq!(status_as(&b, "/v1", TOKEN, "203.0.113.67").await, 200);
    assert!(a.log_shows("banned on every replica"), "{}", a.log());

    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(
        status_as(&b, "/v1", TOKEN, attacker).await,
        200,
        "the ban lifted"
    );
}

/// A ban made in Redis, once made or seen by a replica, is kept in its memory too: it still
/// holds there while Redis is unreachable, in either `on_backend_error` mode.
#[tokio::test]
async fn a_ban_seen_in_redis_holds_while_redis_is_down() {
    let mut redis = OwnRedis::start();
    let upstream = Upstream::start().await;
    let toml = "[bans]\nmax_failures = 3\nduration = \"1m\"\n\
                [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n";
    let (_dir_a, launch_a) = launch(&upstream, toml);
    let (_dir_b, launch_b) = launch(
        &upstream,
        &format!("[rate_limit]\non_backend_error = \"deny\"\n{toml}"),
    );
    let a = launch_a
        .env("PORTCULLIS_REDIS_URL", redis.url(None))
        .start();
    let b = launch_b
        .env("PORTCULLIS_REDIS_URL", redis.url(None))
        .start();
    let attacker = "203.0.113.68";
    for _ in 0..3 {
        call_as(&a, "/v1", "guess-0123456789abcdef0123456789", attacker)
            .await
            .assert_problem(401, "unauthorized");
    }
    // Made on a, seen on b.
    call_as(&b, "/v1", TOKEN, attacker)
        .await
        .assert_problem(429, "banned");
    redis.stop();
    for gateway in [&a, &b] {
        call_as(gateway, "/v1", TOKEN, attacker)
            .await
            .assert_problem(429, "banned");
    }
    assert_eq!(status_as(&a, "/v1", TOKEN, "203.0.113.69").await, 200);
}

/// A Redis server of the test's own, to stop and start again.
struct OwnRedis {
    port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server started with `args` besides its port and persistence settings.
    fn start_with(args: &[&str]) -> Self {
        let port = server_port();
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut redis = Self {
            port,
            args,
            child: None,
        };
        redis.restart();
        redis
    }

    fn url(&self, password: Option<&str>) -> String {
        match password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the Redis failure tests");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `/ready` (which probes a down backend) until the admin API, which shows the
/// state every worker shares, names `backend`; returns the last `/ready` body.
async fn wait_for_backend(gateway: &Gateway, backend: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = ready(gateway).await.json();
        let snapshot = admin_get(gateway, "/v1/rate-limits", Some(TOKEN))
            .await
            .json();
        if snapshot["backend"] == backend {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the backend never became {backend}: {snapshot}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn redis_stopped_mid_run_falls_back_to_memory_and_recovers() {
    let mut redis = OwnRedis::start();
    let upstream = Upstream::start().await;
    let (_dir, launch) = launch(&upstream, &route("/v1", r#"{ rate = "3/min" }"#));
    let gateway = launch.env("PORTCULLIS_REDIS_URL", redis.url(None)).start();

    assert_eq!(call(&gateway, "/v1").await.status, 200);
    let ready_body = wait_for_backend(&gateway, "redis").await;
    assert_eq!(ready_body["status"], "ready");
    assert_eq!(ready_body["rate_limit_backend"], "redis");

    redis.stop();
    // In memory, this instance's own bucket starts full: three pass, the fourth does not.
    let started = Instant::now();
    for _ in 0..3 {
        assert_eq!(call(&gateway, "/v1").await.status, 200);
    }
    call(&gateway, "/v1")
        .await
        .assert_problem(429, "rate-limited");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "requests do not wait for a dead backend"
    );
    assert!(
        gateway.log_shows("Redis is unreachable"),
        "{}",
        gateway.log()
    );
    wait_for_backend(&gateway, "fallback").await;
    // Readiness answers are reused for a second; a fresh one says where limits are now.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ready_body = ready(&gateway).await.json();
    assert_eq!(
        (
            ready_body["status"].as_str(),
            ready_body["rate_limit_backend"].as_str()
        ),
        (Some("ready"), Some("fallback"))
    );
    let snapshot = admin_get(&gateway, "/v1/rate-limits", Some(TOKEN))
        .await
        .json();
    assert_eq!(snapshot["backend"], "fallback");
    assert!(snapshot["fallback_decisions"].as_u64().unwrap() >= 4);
    assert!(snapshot["backend_errors"].as_u64().unwrap() >= 1);
    let metrics = admin_get(&gateway, "/metrics", Some(TOKEN)).await.text();
    assert!(metrics.contains(r#"portcullis_rate_limit_backend{state="fallback"} 1"#));

    // Back again, with its memory empty: the shared buckets are used again by themselves.
    redis.restart();
    wait_for_backend(&gateway, "redis").await;
    assert!(
        gateway.log_shows("Redis answers again"),
        "{}",
        gateway.log()
    );
    let reply = call(&gateway, "/v1").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        header_u64(&reply, "x-ratelimit-remaining"),
        2,
        "counted in the fresh Redis"
    );
}

#[tokio::test]
async fn a_redis_that_is_down_at_start_is_used_once_it_comes_up() {
    let mut redis = OwnRedis::start();
    redis.stop();
    let upstream = Upstream::start().await;
    let (_dir, launch) = launch(&upstream, &route("/v1", r#"{ rate = "2/min" }"#));
    let gateway = launch.env("PORTCULLIS_REDIS_URL", redis.url(None)).start();

    assert_eq!(
        call(&gateway, "/v1").await.status,
        200,
        "served from memory meanwhile"
    );
    wait_for_backend(&gateway, "fallback").await;
    redis.restart();
    wait_for_backend(&gateway, "redis").await;
    for remaining in [1, 0] {
        let reply = call(&gateway, "/v1").await;
        assert_eq!(header_u64(&reply, "x-ratelimit-remaining"), remaining);
    }
    call(&gateway, "/v1")
        .await
        .assert_problem(429, "rate-limited");
}

#[tokio::test]
async fn deny_mode_refuses_limited_requests_while_redis_is_unreachable() {
    let upstream = Upstream::start().await;
    let (_refusing, closed) = refusing_addr();
    let closed = closed.port();
    let password = "redis-secret-password-4f1c";
    let toml = format!(
        "[rate_limit]\non_backend_error = \"deny\"\n{}[[routes]]\npath_prefix = \"/open\"\nupstream = \"api\"\nrate_limits = []\n",
        route("/v1", r#"{ rate = "100/min" }"#)
    );
    let (_dir, launch) = launch(&upstream, &toml);
    let mut gateway = launch
        .env(
            "PORTCULLIS_REDIS_URL",
            format!("redis://:{password}@127.0.0.1:{closed}"),
        )
        .env("PORTCULLIS_LOG", "debug")
        .start();

    let refused = call(&gateway, "/v1").await;
    let problem = refused.assert_problem(503, "rate-limit-unavailable");
    assert_eq!(header_u64(&refused, "retry-after"), 1);
    assert_eq!(
        call(&gateway, "/open").await.status,
        200,
        "unlimited routes are served"
    );
    // Readiness holds: a Redis outage must not take every replica out of the balancer.
    let readiness = ready(&gateway).await;
    assert_eq!(readiness.status, 200);
    assert_eq!(readiness.json()["rate_limit_backend"], "unavailable");
    let snapshot = admin_get(&gateway, "/v1/rate-limits", Some(TOKEN)).await;
    assert_eq!(snapshot.json()["backend"], "unavailable");
    assert!(upstream.seen().iter().all(|s| s.uri.starts_with("/open")));

    assert!(gateway.log_shows("Redis is unreachable"));
    for text in [gateway.final_log(), problem.to_string(), snapshot.text()] {
        assert!(
            !text.contains(password),
            "the Redis password leaked: {text}"
        );
    }
}

#[tokio::test]
async fn a_refused_redis_password_is_an_outage_that_never_shows_the_password() {
    let redis = OwnRedis::start_with(&["--requirepass", "the-right-password"]);
    let wrong = "a-wrong-password-7d3a";
    let upstream = Upstream::start().await;
    let toml = format!(
        "[rate_limit]\non_backend_error = \"deny\"\n{}",
        route("/v1", r#"{ rate = "100/min" }"#)
    );
    let (_dir, launch) = launch(&upstream, &toml);
    let mut gateway = launch
        .env("PORTCULLIS_REDIS_URL", redis.url(Some(wrong)))
        .env("PORTCULLIS_LOG", "trace,h2=info")
        .start();
    // Three refusals in a row mark the backend down, which the log says.
    let mut refused = call(&gateway, "/v1").await;
    for _ in 0..2 {
        refused.assert_problem(503, "rate-limit-unavailable");
        refused = call(&gateway, "/v1").await;
    }
    refused.assert_problem(503, "rate-limit-unavailable");
    assert!(
        gateway.log_shows("Redis is unreachable"),
        "{}",
        gateway.log()
    );
    let snapshot = admin_get(&gateway, "/v1/rate-limits", Some(TOKEN))
        .await
        .text();
    for text in [gateway.final_log(), refused.text(), snapshot] {
        assert!(!text.contains(wrong), "the Redis password leaked: {text}");
    }
    assert!(upstream.seen().is_empty());
}

#[test]
fn an_unusable_redis_url_stops_the_start_without_showing_it() {
    let password = "another-secret-9c2e";
    let output = portcullis()
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--admin-listen",
            "off",
        ])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .env(
            "PORTCULLIS_REDIS_URL",
            format!("rediss//:{password}@cache:6379"),
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("PORTCULLIS_REDIS_URL"), "{stderr}");
    assert!(!stderr.contains(password), "{stderr}");
}

#[tokio::test]
async fn an_upstream_at_its_in_flight_cap_queues_then_refuses() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "c.toml",
        &format!(
            "[upstreams.api]\nurl = \"{}\"\nmax_in_flight = 1\nqueue_timeout = \"300ms\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"api\"\n",
            upstream.url()
        ),
    );
    let gateway = Launch::bare()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .start();

    let slow = tokio::spawn(get_authorized_owned(gateway.url("/slow/1500")));
    upstream.wait_for("/slow/1500").await;
    let started = Instant::now();
    let busy = get_authorized(&gateway.url("/fast")).await;
    busy.assert_problem(503, "upstream-busy");
    assert_eq!(header_u64(&busy, "retry-after"), 1);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "it waited in the queue first"
    );
    assert_eq!(slow.await.unwrap().status, 200);
    assert!(
        upstream.seen().iter().all(|s| s.uri != "/fast"),
        "the refused request never reached the upstream"
    );

    // A request that finds the slot free within the queue timeout waits for it, then is
    // served.
    let short = tokio::spawn(get_authorized_owned(gateway.url("/slow/200")));
    upstream.wait_for("/slow/200").await;
    let started = Instant::now();
    assert_eq!(get_authorized(&gateway.url("/queued")).await.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "it waited for the slot"
    );
    assert_eq!(short.await.unwrap().status, 200);
}

async fn get_authorized_owned(url: String) -> Reply {
    get_authorized(&url).await
}

#[test]
fn production_check_fails_when_no_route_has_a_limit() {
    let run = |extra_env: &[(&str, &str)]| {
        let output = portcullis()
            .args([
                "check",
                "--production",
                "--upstream",
                "http://127.0.0.1:9000",
            ])
            .args(["--trusted-proxies", "10.0.0.0/8"])
            .env("PORTCULLIS_API_TOKENS", TOKEN)
            .env("PORTCULLIS_AUDIT_KEY", AUDIT_KEY)
            .envs(extra_env.iter().copied())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8(output.stdout).unwrap(),
        )
    };
    let (code, out) = run(&[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("error[production.rate_limits]"), "{out}");
    assert!(
        out.contains("PORTCULLIS_RATE_LIMIT"),
        "the fix names the variable: {out}"
    );
    let (code, out) = run(&[("PORTCULLIS_RATE_LIMIT", "60/min")]);
    assert_eq!(code, Some(0), "{out}");
}
