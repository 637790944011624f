//! Managed tokens against real SQLite and real PostgreSQL: the CLI, scopes, expiry,
//! revocation, rotation, the cache, and what the store holds.

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Connection;

use crate::common::*;

/// A store for one test: SQLite in a fresh data directory, or a fresh PostgreSQL database.
struct Backend {
    args: Vec<String>,
    env: Vec<(String, String)>,
    data_dir: std::path::PathBuf,
    postgres: Option<PostgresDatabase>,
}

/// A database created for one test and dropped after it.
pub struct PostgresDatabase {
    name: String,
    /// Where it is.
    pub url: String,
}

/// The server that holds the test databases; `PORTCULLIS_TEST_POSTGRES` may point
/// elsewhere.
fn postgres_admin_url() -> String {
    std::env::var("PORTCULLIS_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

impl PostgresDatabase {
    pub async fn create() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("portcullis_test_{}_{n}", std::process::id());
        let admin = postgres_admin_url();
        let mut connection = sqlx::PgConnection::connect(&admin)
            .await
            .expect("PostgreSQL must be running on 127.0.0.1:5432 (see .ci/run)");
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut connection)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut connection)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').unwrap().0;
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    pub async fn drop_now(&self) {
        let mut connection = sqlx::PgConnection::connect(&postgres_admin_url())
            .await
            .unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut connection)
        .await
        .unwrap();
    }

    async fn table_text(&self) -> String {
        let mut connection = sqlx::PgConnection::connect(&self.url).await.unwrap();
        let rows: Vec<(String,)> = sqlx::query_as("SELECT tokens::text FROM tokens")
            .fetch_all(&mut connection)
            .await
            .unwrap();
        rows.into_iter()
            .map(|(row,)| row)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A PostgreSQL server of the test's own (a cluster in a scratch directory, on a port of
/// its own, trusting local TCP), which the test can stop and start: the shared one cannot
/// be. Run as the `postgres` user when the tests run as root (PostgreSQL refuses root).
pub(crate) struct OwnPostgres {
    cluster: std::path::PathBuf,
    port: u16,
}

impl OwnPostgres {
    pub(crate) fn start() -> Self {
        let cluster = scratch_dir().join("cluster");
        std::fs::create_dir(&cluster).unwrap();
        if running_as_root() {
            run_ok(Command::new("chown").arg("postgres:").arg(&cluster));
        }
        let server = Self {
            cluster,
            port: server_port(),
        };
        let mut initdb = server.command("initdb");
        initdb.args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"]);
        run_ok(initdb.arg(&server.cluster));
        server.start_again();
        server
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it takes connections.
    pub(crate) fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''",
            self.port
        );
        let mut start = self.pg_ctl();
        start.args(["-o", &options, "-l"]);
        run_ok(
            start
                .arg(self.cluster.join("server.log"))
                .args(["-w", "start"]),
        );
    }

    /// A fast shutdown: open sessions are ended, then the server exits.
    pub(crate) fn stop(&self) {
        run_ok(self.pg_ctl().args(["-m", "fast", "-w", "stop"]));
    }

    fn pg_ctl(&self) -> Command {
        let mut pg_ctl = self.command("pg_ctl");
        pg_ctl.arg("-D").arg(&self.cluster);
        pg_ctl
    }

    /// One of PostgreSQL's server programs (the newest version installed), as the
    /// `postgres` user when the tests run as root.
    fn command(&self, program: &str) -> Command {
        let mut versions: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server programs, in /usr/lib/postgresql/<version>/bin")
            .map(|entry| entry.unwrap().path().join("bin").join(program))
            .filter(|path| path.exists())
            .collect();
        versions.sort_by_key(|path| {
            let version = path.components().nth(4).unwrap().as_os_str();
            version.to_str().unwrap().parse::<u32>().unwrap_or(0)
        });
        let program = versions.pop().expect("no PostgreSQL server programs");
        if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl()
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

/// Runs `command`, which must succeed.
fn run_ok(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Backend {
    fn sqlite() -> Self {
        let data_dir = scratch_dir();
        Self {
            args: vec!["--data-dir".into(), data_dir.to_str().unwrap().into()],
            env: Vec::new(),
            data_dir,
            postgres: None,
        }
    }

    async fn postgres() -> Self {
        let database = PostgresDatabase::create().await;
        let mut backend = Self::postgres_at(&database.url);
        backend.postgres = Some(database);
        backend
    }

    /// The PostgreSQL database at `url`, which the test keeps (and drops) itself.
    fn postgres_at(url: &str) -> Self {
        Self {
            args: Vec::new(),
            env: vec![
                ("PORTCULLIS_DATABASE_URL".into(), url.to_owned()),
                (
                    "PORTCULLIS_TOKEN_PEPPER".into(),
                    "test-pepper-0123456789abcdef".into(),
                ),
                ("PORTCULLIS_AUDIT_KEY".into(), AUDIT_KEY.into()),
            ],
            data_dir: scratch_dir(),
            postgres: None,
        }
    }

    /// Runs `portcullis token --json ARGS`; the exit status and what it printed.
    fn token(&self, args: &[&str]) -> (bool, Value, String) {
        let output = portcullis()
            .arg("token")
            .args(&self.args)
            .arg("--json")
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        (
            output.status.success(),
            value,
            String::from_utf8(output.stderr).unwrap(),
        )
    }

    /// Creates a token and returns (id, token).
    fn create(&self, name: &str, scopes: &str, extra: &[&str]) -> (String, String) {
        let mut args = vec!["create", "--name", name, "--scopes", scopes];
        args.extend_from_slice(extra);
        let (ok, value, stderr) = self.token(&args);
        assert!(ok, "token create failed: {stderr}");
        (
            value["record"]["id"].as_str().unwrap().to_owned(),
            value["token"].as_str().unwrap().to_owned(),
        )
    }

    /// A gateway on this store with no static token.
    fn launch(&self, upstream: &Upstream) -> Launch {
        let mut launch = Launch::new(&upstream.url()).without_env("PORTCULLIS_API_TOKENS");
        launch.args.extend(self.args.iter().cloned());
        for (name, value) in &self.env {
            launch = launch.env(name, value.clone());
        }
        launch
    }

    /// Everything the store holds, as text, to search for secrets.
    async fn stored_text(&self) -> String {
        match &self.postgres {
            Some(database) => database.table_text().await,
            None => ["portcullis.db", "portcullis.db-wal"]
                .iter()
                .filter_map(|file| std::fs::read(self.data_dir.join(file)).ok())
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .collect(),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(database) = self.postgres.take() {
            // Best effort: a leftover test database is harmless.
            let _ = std::process::Command::new("psql")
                .args([
                    &postgres_admin_url(),
                    "-qc",
                    &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", database.name),
                ])
                .output();
        }
    }
}

async fn call(gateway: &Gateway, method: &str, token: &str) -> Reply {
    let request = http::Request::builder()
        .method(method)
        .uri(gateway.url("/v1/positions"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::default())
        .unwrap();
    send(request).await
}

/// A problem body without its request id, to compare refusals.
fn without_request_id(reply: &Reply) -> Value {
    let mut problem = reply.json();
    problem.as_object_mut().unwrap().remove("request_id");
    problem
}

async fn scopes_expiry_revocation_and_storage(backend: Backend) {
    let upstream = Upstream::start().await;
    let (_, reader) = backend.create("reader", "read", &[]);
    let (writer_id, writer) = backend.create("writer", "read,write", &[]);
    let (_, short_lived) = backend.create("short-lived", "read", &["--expires", "1s"]);
    let (_, unknown) = Backend::sqlite().create("elsewhere", "read", &[]);
    let logs = tempfile::tempdir().unwrap();
    let access_log = logs.path().join("access.log");

    let gateway = backend
        .launch(&upstream)
        .arg("--token-cache-ttl")
        .arg("1s")
        .arg("--access-log")
        .arg(access_log.to_str().unwrap())
        .start();

    assert_eq!(call(&gateway, "GET", &reader).await.status, 200);
    assert_eq!(upstream.only().header("authorization"), None);
    let denied = call(&gateway, "POST", &reader).await;
    let problem = denied.assert_problem(403, "insufficient-scope");
    assert!(
        problem["detail"].as_str().unwrap().contains("\"write\""),
        "{problem}"
    );
    assert!(
        denied
            .header("www-authenticate")
            .unwrap()
            .contains("insufficient_scope")
    );
    assert_eq!(call(&gateway, "POST", &writer).await.status, 200);

    // Unknown, malformed, expired and revoked tokens all get the same 401.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut damaged = writer.clone().into_bytes();
    damaged[20] = if damaged[20] == b'A' { b'B' } else { b'A' };
    let damaged = String::from_utf8(damaged).unwrap();
    let refusals = [
        call(&gateway, "GET", &unknown).await,
        call(&gateway, "GET", &damaged).await,
        call(&gateway, "GET", &short_lived).await,
        call(&gateway, "GET", "pcl_short").await,
    ];
    let first = without_request_id(&refusals[0]);
    for reply in &refusals {
        reply.assert_problem(401, "unauthorized");
        assert_eq!(without_request_id(reply), first);
    }

    let (revoked, _, _) = backend.token(&["revoke", &writer_id]);
    assert!(revoked);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = call(&gateway, "POST", &writer).await;
    after.assert_problem(401, "unauthorized");
    assert_eq!(without_request_id(&after), first);

    // Neither token, nor any long part of one, is in the store.
    let stored = backend.stored_text().await;
    assert!(
        stored.contains("reader"),
        "the search saw the store's contents"
    );
    for token in [&reader, &writer, &short_lived] {
        assert!(!stored.contains(token.as_str()));
        assert!(
            !stored.contains(&token[12..40]),
            "a secret part of the token is stored"
        );
    }

    // Last-used times are written (at the latest when the gateway stops).
    let mut gateway = gateway;
    assert!(gateway.terminate().success());
    let (_, list, _) = backend.token(&["list"]);
    let reader_record = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "reader")
        .unwrap()
        .clone();
    assert!(reader_record["last_used_at"].is_string(), "{reader_record}");
    assert!(
        list.to_string().find("pcl_").is_some(),
        "public prefixes are listed"
    );
    assert!(
        !list.to_string().contains(&reader),
        "list never shows a token"
    );

    // Clients saw one 401; the access log tells the reasons apart, and names callers
    // without ever showing a token.
    let log = std::fs::read_to_string(&access_log).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let decisions: Vec<&str> = lines
        .iter()
        .map(|line| line["decision"].as_str().unwrap())
        .collect();
    assert_eq!(
        decisions,
        [
            "allowed",
            "scope",
            "allowed",
            "auth_unknown",
            "auth_unknown",
            "auth_expired",
            "auth_unknown",
            "auth_revoked"
        ],
        "{log}"
    );
    assert_eq!(lines[0]["principal"], "reader");
    assert_eq!(lines[0]["principal_kind"], "token");
    assert_eq!(lines[0]["upstream"], "default");
    assert_eq!(lines[1]["status"], 403);
    for token in [&reader, &writer, &short_lived, &unknown] {
        assert!(!log.contains(&token[4..]), "a token reached the access log");
    }
}

#[tokio::test]
async fn scopes_expiry_revocation_and_storage_on_sqlite() {
    scopes_expiry_revocation_and_storage(Backend::sqlite()).await;
}

#[tokio::test]
async fn scopes_expiry_revocation_and_storage_on_postgres() {
    scopes_expiry_revocation_and_storage(Backend::postgres().await).await;
}

async fn rotation_overlap_ends(backend: Backend) {
    let upstream = Upstream::start().await;
    let (id, old) = backend.create("service", "read", &[]);
    let gateway = backend
        .launch(&upstream)
        .arg("--token-cache-ttl")
        .arg("1s")
        .start();
    assert_eq!(call(&gateway, "GET", &old).await.status, 200);

    let (ok, rotated, stderr) = backend.token(&["rotate", &id, "--overlap", "2s"]);
    assert!(ok, "{stderr}");
    let new = rotated["token"].as_str().unwrap().to_owned();
    assert_eq!(rotated["record"]["name"], "service");
    assert_eq!(call(&gateway, "GET", &new).await.status, 200);
    assert_eq!(
        call(&gateway, "GET", &old).await.status,
        200,
        "the old token works during the overlap"
    );

    tokio::time::sleep(Duration::from_millis(3200)).await;
    call(&gateway, "GET", &old)
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(call(&gateway, "GET", &new).await.status, 200);

    let (ok, _, stderr) = backend.token(&["rotate", &id]);
    assert!(
        !ok && stderr.contains("not live"),
        "a rotated token cannot be rotated again: {stderr}"
    );
}

#[tokio::test]
async fn rotation_overlap_ends_on_sqlite() {
    rotation_overlap_ends(Backend::sqlite()).await;
}

#[tokio::test]
async fn rotation_overlap_ends_on_postgres() {
    rotation_overlap_ends(Backend::postgres().await).await;
}

/// PostgreSQL itself stopped under a gateway with managed tokens (a fast shutdown, then no
/// server): a token verified within the cache window still works, one that is not is
/// refused 503 `store-unavailable`, never allowed, and once the server is back it is
/// allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_store_refuses_uncached_tokens_503_until_it_is_back() {
    let server = OwnPostgres::start();
    let backend = Backend::postgres_at(&server.url());
    let upstream = Upstream::start().await;
    let (_, cached) = backend.create("cached", "read", &[]);
    let (_, uncached) = backend.create("uncached", "read", &[]);
    let gateway = backend.launch(&upstream).start();
    assert_eq!(call(&gateway, "GET", &cached).await.status, 200);

    tokio::task::block_in_place(|| server.stop());
    assert_eq!(call(&gateway, "GET", &cached).await.status, 200);
    // The first lookup waits out the pool's patience for a connection (3 s)...
    let refused = call(&gateway, "GET", &uncached).await;
    refused.assert_problem(503, "store-unavailable");
    assert!(refused.header("retry-after").is_some());
    // ...the next ones, for a second, are refused without asking: none waits it out again.
    let started = std::time::Instant::now();
    let again = futures_util::future::join_all((0..5).map(|_| call(&gateway, "GET", &uncached)));
    for refused in again.await {
        refused.assert_problem(503, "store-unavailable");
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    tokio::task::block_in_place(|| server.start_again());
    let mut allowed = call(&gateway, "GET", &uncached).await;
    for _ in 0..50 {
        if allowed.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        allowed = call(&gateway, "GET", &uncached).await;
    }
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    let log = gateway.log();
    assert_eq!(
        log.matches("the credential store failed a lookup").count(),
        1,
        "{log}"
    );
    assert!(log.contains("the credential store answers again"), "{log}");
}

#[tokio::test]
async fn an_unreachable_store_gives_503_never_an_allow() {
    let backend = Backend::postgres().await;
    let upstream = Upstream::start().await;
    let (_, cached) = backend.create("cached", "read", &[]);
    let (_, uncached) = backend.create("uncached", "read", &[]);
    let gateway = backend.launch(&upstream).start();
    assert_eq!(call(&gateway, "GET", &cached).await.status, 200);

    backend.postgres.as_ref().unwrap().drop_now().await;
    let refused = call(&gateway, "GET", &uncached).await;
    refused.assert_problem(503, "store-unavailable");
    assert!(refused.header("retry-after").is_some());
    assert!(
        !refused.text().contains("postgres"),
        "no store details leak"
    );
    // A malformed or mistyped token is refused by its checksum, without asking the store.
    let mut mistyped = uncached.clone().into_bytes();
    mistyped[30] = if mistyped[30] == b'x' { b'y' } else { b'x' };
    let mistyped = String::from_utf8(mistyped).unwrap();
    call(&gateway, "GET", &mistyped)
        .await
        .assert_problem(401, "unauthorized");
    // A token verified moments ago is still trusted within the cache window.
    assert_eq!(call(&gateway, "GET", &cached).await.status, 200);
    get(&gateway.url("/ready"), &[])
        .await
        .assert_problem(503, "not-ready");
}

#[tokio::test]
async fn static_tokens_work_beside_managed_ones() {
    let backend = Backend::sqlite();
    let upstream = Upstream::start().await;
    let (_, managed) = backend.create("managed", "read", &[]);
    let gateway = backend
        .launch(&upstream)
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .start();
    assert_eq!(call(&gateway, "GET", &managed).await.status, 200);
    assert_eq!(
        call(&gateway, "POST", TOKEN).await.status,
        200,
        "static tokens hold every scope"
    );
}

#[test]
fn the_cli_refuses_bad_input_clearly() {
    let backend = Backend::sqlite();
    backend.create("alice", "read", &[]);
    let cases: [(&[&str], &str); 8] = [
        (
            &["create", "--name", "alice", "--scopes", "read"],
            "already exists",
        ),
        (
            &["create", "--name", "bob", "--scopes", "reed"],
            "unknown scope \"reed\"",
        ),
        (
            &[
                "create",
                "--name",
                "bob",
                "--scopes",
                "read",
                "--expires",
                "0s",
            ],
            "at least a second ahead",
        ),
        (
            &[
                "create",
                "--name",
                "bob",
                "--scopes",
                "read",
                "--expires",
                "500ms",
            ],
            "whole seconds",
        ),
        // An overlap is kept in whole seconds: 500ms would have been none, 1500ms one.
        (&["rotate", "tok_x", "--overlap", "500ms"], "whole seconds"),
        (&["rotate", "tok_x", "--overlap", "1500ms"], "whole seconds"),
        (&["show", "tok_missing"], "no token has the id"),
        (&["revoke", "tok_missing"], "no token has the id"),
    ];
    for (args, message) in cases {
        let (ok, _, stderr) = backend.token(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// A lifetime past the year 9999 ends there: RFC 3339 cannot write a later time, and the
/// token's record must still list, show and rotate.
#[test]
fn a_lifetime_past_the_year_9999_ends_there() {
    let backend = Backend::sqlite();
    let (id, _) = backend.create("forever", "read", &["--expires", "10000years"]);
    for args in [&["list"][..], &["show", &id]] {
        let (ok, listed, stderr) = backend.token(args);
        assert!(ok, "{args:?}: {stderr}");
        assert!(
            listed.to_string().contains("9999-12-31T23:59:59Z"),
            "{listed}"
        );
    }
    let (ok, rotated, stderr) = backend.token(&["rotate", &id, "--overlap", "0s"]);
    assert!(ok, "{stderr}");
    assert_eq!(rotated["record"]["expires_at"], "9999-12-31T23:59:59Z");

    // So does a rotation's overlap: the old token of one without expiry stops there too.
    let (id, _) = backend.create("lasting", "read", &[]);
    let (ok, _, stderr) = backend.token(&["rotate", &id, "--overlap", "500000000000years"]);
    assert!(ok, "{stderr}");
    let (ok, old, stderr) = backend.token(&["show", &id]);
    assert!(ok, "{stderr}");
    assert_eq!(old["expires_at"], "9999-12-31T23:59:59Z", "{old}");
}

/// The README's Outline setup: `token create --scopes outline:read` works once the CLI
/// reads the gateway's configuration, whose routes name that scope.
#[test]
fn the_cli_knows_the_scopes_the_routes_name_from_the_config() {
    let backend = Backend::sqlite();
    let config = backend.data_dir.join("gateway.toml");
    std::fs::write(
        &config,
        r#"
[upstreams.outline]
url = "http://127.0.0.1:9"

[[routes]]
path_prefix = "/"
upstream = "outline"
scopes = { GET = "outline:read", POST = "outline:admin" }
"#,
    )
    .unwrap();
    let (ok, _, stderr) = backend.token(&["create", "--name", "a", "--scopes", "outline:read"]);
    assert!(!ok, "a route's scope taken without the configuration");
    assert!(
        stderr.contains("unknown scope \"outline:read\"") && stderr.contains("--config FILE"),
        "{stderr}"
    );

    let path = config.to_str().unwrap();
    let (ok, created, stderr) = backend.token(&[
        "--config",
        path,
        "create",
        "--name",
        "auditor",
        "--scopes",
        "outline:read",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(created["record"]["scopes"], json!(["outline:read"]));

    let output = portcullis()
        .arg("token")
        .args(&backend.args)
        .args(["--json", "create", "--name", "admin", "--scopes"])
        .arg("outline:admin,outline:read")
        .env("PORTCULLIS_CONFIG", path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");

    let (ok, _, stderr) = backend.token(&[
        "--config",
        path,
        "create",
        "--name",
        "b",
        "--scopes",
        "outline:keys",
    ]);
    assert!(
        !ok && stderr.contains("unknown scope \"outline:keys\""),
        "{stderr}"
    );
}

/// The PostgreSQL driver's warning about a URL's unknown parameter quotes its value; a
/// misspelt password must not reach the log.
#[tokio::test]
async fn a_database_urls_unknown_parameters_are_not_logged() {
    let database = PostgresDatabase::create().await;
    let secret = "KEYPASSPHRASE-0123456789";
    let output = portcullis()
        .args(["token", "list"])
        .env(
            "PORTCULLIS_DATABASE_URL",
            format!("{}?sslpassword={secret}&passwd={secret}", database.url),
        )
        .env("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef")
        .env("PORTCULLIS_AUDIT", "off")
        .output()
        .unwrap();
    database.drop_now().await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
}

#[test]
fn postgres_needs_a_shared_pepper() {
    let output = portcullis()
        .args(["token", "list"])
        .env(
            "PORTCULLIS_DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PORTCULLIS_TOKEN_PEPPER") && !stderr.contains("postgres@"),
        "{stderr}"
    );
}

async fn admin(url: String, method: &str, token: Option<&str>, body: Option<Value>) -> Reply {
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(json) => {
            builder = builder.header("content-type", "application/json");
            http_body_util::Full::new(bytes::Bytes::from(json.to_string()))
        }
        None => http_body_util::Full::default(),
    };
    send(builder.body(body).unwrap()).await
}

/// Names a reader would take for one another, created at the same moment through `replicas`
/// gateways on one store: one token is made, every other creation is refused 409 (the look
/// is checked in a transaction no other creation runs beside; the store's unique index
/// holds names only as written).
async fn look_alike_names_created_at_once_make_one_token(backend: Backend, replicas: usize) {
    let upstream = Upstream::start().await;
    let gateways: Vec<Gateway> = (0..replicas)
        .map(|_| {
            backend
                .launch(&upstream)
                .env("PORTCULLIS_API_TOKENS", TOKEN)
                .start()
        })
        .collect();
    for round in 0..6 {
        let names = [
            format!("r{round}-bot"),
            format!("R{round}-BOT"),
            format!("r{round}-b\u{43e}t"),
            format!("\u{ff52}{round}-bot"),
            format!(" r{round}-bot "),
            format!("r{round}-Bot"),
        ];
        let mut creations = tokio::task::JoinSet::new();
        for (n, name) in names.iter().enumerate() {
            let url = gateways[n % replicas].admin_url("/v1/tokens");
            let body = serde_json::json!({"name": name, "scopes": ["read"]});
            creations.spawn(async move { admin(url, "POST", Some(TOKEN), Some(body)).await });
        }
        let replies = creations.join_all().await;
        let created = replies.iter().filter(|reply| reply.status == 201).count();
        assert_eq!(created, 1, "round {round}: {created} of {names:?} created");
        for refused in replies.iter().filter(|reply| reply.status != 201) {
            let problem = refused.assert_problem(409, "conflict");
            let detail = problem["detail"].as_str().unwrap();
            assert!(detail.contains("already has this name"), "{problem}");
        }
    }
    let (ok, listed, stderr) = backend.token(&["list"]);
    assert!(ok, "{stderr}");
    assert_eq!(listed.as_array().unwrap().len(), 6, "{listed}");
}

#[tokio::test]
async fn look_alike_names_created_at_once_make_one_token_on_sqlite() {
    look_alike_names_created_at_once_make_one_token(Backend::sqlite(), 1).await;
}

#[tokio::test]
async fn look_alike_names_created_at_once_through_two_replicas_make_one_token_on_postgres() {
    look_alike_names_created_at_once_make_one_token(Backend::postgres().await, 2).await;
}

#[tokio::test]
async fn the_admin_api_manages_tokens_and_revokes_at_once() {
    let backend = Backend::sqlite();
    let upstream = Upstream::start().await;
    let (_, reader) = backend.create("reader", "read", &[]);
    // The static token holds every scope, admin included; the cache window is the default 30 s.
    let gateway = backend
        .launch(&upstream)
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .start();
    let tokens = gateway.admin_url("/v1/tokens");

    admin(tokens.clone(), "GET", None, None)
        .await
        .assert_problem(401, "unauthorized");
    let not_admin = admin(tokens.clone(), "GET", Some(&reader), None).await;
    let problem = not_admin.assert_problem(403, "insufficient-scope");
    assert!(problem["detail"].as_str().unwrap().contains("\"admin\""));

    let created = admin(
        tokens.clone(),
        "POST",
        Some(TOKEN),
        Some(serde_json::json!({"name": "ci", "scopes": ["read", "write"], "expires_in": "1h", "tenant": "acme"})),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    let minted = created.json();
    let ci_token = minted["token"].as_str().unwrap().to_owned();
    let ci_id = minted["record"]["id"].as_str().unwrap().to_owned();
    assert_eq!(minted["record"]["tenant"], "acme");
    assert_security_headers(&created.headers);
    assert_eq!(call(&gateway, "POST", &ci_token).await.status, 200);

    let listed = admin(tokens.clone(), "GET", Some(TOKEN), None).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json().as_array().unwrap().len(), 2);
    assert!(!listed.text().contains(&ci_token) && !listed.text().contains(&reader));
    let shown = admin(
        gateway.admin_url(&format!("/v1/tokens/{ci_id}")),
        "GET",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(shown.json()["name"], "ci");

    let revoked = admin(
        gateway.admin_url(&format!("/v1/tokens/{ci_id}/revoke")),
        "POST",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(revoked.json()["state"], "revoked");
    call(&gateway, "POST", &ci_token)
        .await
        .assert_problem(401, "unauthorized");

    let reader_id = backend
        .token(&["list"])
        .1
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "reader")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rotated = admin(
        gateway.admin_url(&format!("/v1/tokens/{reader_id}/rotate")),
        "POST",
        Some(TOKEN),
        Some(serde_json::json!({"overlap": "1h"})),
    )
    .await;
    assert_eq!(rotated.status, 201);
    let successor = rotated.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(call(&gateway, "GET", &successor).await.status, 200);
    assert_eq!(call(&gateway, "GET", &reader).await.status, 200, "overlap");

    // Refusals are problem+json.
    admin(
        gateway.admin_url("/v1/tokens/tok_missing"),
        "GET",
        Some(TOKEN),
        None,
    )
    .await
    .assert_problem(404, "not-found");
    let duplicate = admin(
        tokens.clone(),
        "POST",
        Some(TOKEN),
        Some(serde_json::json!({"name": "reader", "scopes": ["read"]})),
    )
    .await;
    let problem = duplicate.assert_problem(409, "conflict");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already has this name")
    );
    admin(
        tokens.clone(),
        "POST",
        Some(TOKEN),
        Some(serde_json::json!({"nme": "x"})),
    )
    .await
    .assert_problem(400, "bad-request");
    admin(
        tokens.clone(),
        "POST",
        Some(TOKEN),
        Some(serde_json::json!({"name": "x", "scopes": ["read"], "expires_in": "soon"})),
    )
    .await
    .assert_problem(400, "bad-request");
    admin(gateway.admin_url("/nowhere"), "GET", Some(TOKEN), None)
        .await
        .assert_problem(404, "not-found");
}

#[tokio::test]
async fn the_admin_api_documents_itself() {
    let backend = Backend::sqlite();
    let upstream = Upstream::start().await;
    backend.create("someone", "read", &[]);
    let gateway = backend.launch(&upstream).start();
    let openapi = get(&gateway.admin_url("/openapi.json"), &[]).await;
    assert_eq!(openapi.status, 200);
    let document = openapi.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/tokens",
        "/v1/tokens/{id}",
        "/v1/tokens/{id}/revoke",
        "/v1/tokens/{id}/rotate",
        "/v1/rate-limits",
        "/metrics",
        "/openapi.json",
        "/docs",
    ] {
        assert!(document["paths"][path].is_object(), "{path} missing");
    }
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(
        document["paths"]["/metrics"]["get"]["security"][0]["bearer"],
        serde_json::json!([])
    );
    let docs = get(&gateway.admin_url("/docs"), &[]).await;
    assert_eq!(docs.status, 200);
    assert!(docs.text().contains("/v1/tokens/{id}/rotate"));
    assert_eq!(
        docs.header("content-security-policy"),
        Some("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
        "the docs page has its own CSP"
    );
    assert_eq!(docs.header("x-frame-options"), Some("DENY"));
}

#[test]
fn a_public_admin_listener_needs_tls() {
    let output = portcullis()
        .args([
            "serve",
            "--upstream",
            "http://127.0.0.1:9",
            "--admin-listen",
            "0.0.0.0:0",
        ])
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("admin API would listen on 0.0.0.0:0 without TLS"),
        "{stderr}"
    );
}

async fn capability_urls(backend: Backend) {
    // Like Outline's server, the upstream redirects below its own secret base path.
    let upstream = Upstream::start_with(|seen| {
        (seen.uri == "/OUTLINE-OWN-SECRET/moved").then(|| {
            http::Response::builder()
                .status(301)
                .header("location", "/OUTLINE-OWN-SECRET/access-keys/7")
                .body(full(""))
                .unwrap()
        })
    })
    .await;
    let (_, capability) = backend.create("alice-outline", "read,write", &["--capability"]);
    let (_, reader_capability) = backend.create("bob-outline", "read", &["--capability"]);
    let (_, bearer) = backend.create("bearer", "read,write", &[]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "c.toml",
        &format!(
            r#"
            [upstreams.outline]
            url = "{}/OUTLINE-OWN-SECRET"
            [[routes]]
            path_prefix = "/outline"
            upstream = "outline"
            auth = "capability"
            strip_prefix = true
            "#,
            upstream.url()
        ),
    );
    let mut gateway = backend
        .launch(&upstream)
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("PORTCULLIS_LOG", "trace")
        .arg("--access-log")
        .arg(dir.path().join("access.log").to_str().unwrap())
        .start();

    // A browser puts the whole secret URL in Referer; it is not forwarded, and responses
    // ask browsers and shared caches to keep the URL to themselves.
    let referer = gateway.url(&format!("/outline/{capability}/previous"));
    let reply = get(
        &gateway.url(&format!("/outline/{capability}/server?x=1")),
        &[("referer", &referer)],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(reply.header("cache-control"), Some("private, no-store"));
    let seen = upstream.only();
    assert_eq!(seen.uri, "/OUTLINE-OWN-SECRET/server?x=1");
    assert_eq!(seen.header("referer"), None);
    for (name, value) in &seen.headers {
        assert!(
            !value.to_str().unwrap_or_default().contains(&capability),
            "{name} carried the capability"
        );
    }
    let post = http::Request::post(gateway.url(&format!("/outline/{capability}/access-keys")))
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(send(post).await.status, 200);
    let read_only =
        http::Request::post(gateway.url(&format!("/outline/{reader_capability}/access-keys")))
            .body(http_body_util::Full::default())
            .unwrap();
    send(read_only)
        .await
        .assert_problem(403, "insufficient-scope");

    // Unknown, missing and wrong-kind secrets look like a path that does not exist.
    let (_, unknown) = Backend::sqlite().create("elsewhere", "read", &["--capability"]);
    for path in [
        format!("/outline/{unknown}/server"),
        "/outline/server".to_owned(),
        "/outline".to_owned(),
        format!("/outline/{bearer}/server"),
    ] {
        get(&gateway.url(&path), &[])
            .await
            .assert_problem(404, "not-found");
    }
    // A capability is not a bearer token.
    call(&gateway, "GET", &capability)
        .await
        .assert_problem(401, "unauthorized");
    assert_eq!(upstream.seen().len(), 2);

    // A redirect below the upstream's secret base path comes back below the public prefix
    // and capability the client used (as nginx's `proxy_redirect default`).
    let moved = get(&gateway.url(&format!("/outline/{capability}/moved")), &[]).await;
    assert_eq!(moved.status, 301);
    assert_eq!(
        moved.header("location"),
        Some(format!("/outline/{capability}/access-keys/7").as_str())
    );
    let refused = get(&gateway.url(&format!("/outline/{unknown}/moved")), &[]).await;
    assert_eq!(refused.header("cache-control"), Some("private, no-store"));
    assert_eq!(refused.header("referrer-policy"), Some("no-referrer"));

    assert!(
        !gateway.final_log().contains(&capability),
        "the capability reached the log"
    );
    let access_log = std::fs::read_to_string(dir.path().join("access.log")).unwrap();
    assert!(
        !access_log.contains(&capability),
        "the capability reached the access log"
    );
    let first: Value = serde_json::from_str(access_log.lines().next().unwrap()).unwrap();
    assert_eq!(first["path"], "/outline/***/server");
    assert_eq!(first["route"], "/outline");
    assert_eq!(first["principal"], "alice-outline");
    assert_eq!(first["principal_kind"], "capability");
    assert!(
        access_log.contains(r#""decision":"capability_unknown""#),
        "{access_log}"
    );
}

#[tokio::test]
async fn capability_urls_on_sqlite() {
    capability_urls(Backend::sqlite()).await;
}

#[tokio::test]
async fn capability_urls_on_postgres() {
    capability_urls(Backend::postgres().await).await;
}

#[test]
fn the_database_url_is_a_secret() {
    let url = "postgres://portcullis:SECRETPW@127.0.0.1:5432/no_such_database";
    let output = portcullis()
        .args(["token", "list"])
        .env("PORTCULLIS_DATABASE_URL", url)
        .env("PORTCULLIS_TOKEN_PEPPER", "test-pepper-0123456789abcdef")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open the PostgreSQL store"),
        "{stderr}"
    );
    assert!(!stderr.contains("SECRETPW"), "{stderr}");

    let help = portcullis()
        .args(["serve", "--help"])
        .env("PORTCULLIS_DATABASE_URL", url)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("PORTCULLIS_DATABASE_URL") && !help.contains("SECRETPW"),
        "{help}"
    );
}
