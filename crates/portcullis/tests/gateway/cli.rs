//! `portcullis check` and `portcullis demo`.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

fn check(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = portcullis()
        .arg("check")
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8(output.stdout).unwrap(),
    )
}

#[test]
fn check_passes_a_good_configuration() {
    let (code, out) = check(
        &["--upstream", "http://127.0.0.1:9000"],
        &[("PORTCULLIS_API_TOKENS", TOKEN)],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("ok:"), "{out}");
}

#[test]
fn check_reports_each_failed_rule_with_a_fix() {
    let (code, out) = check(&["--upstream", "ftp://nowhere"], &[]);
    assert_eq!(code, Some(1));
    assert!(out.contains("error[credentials.present]"), "{out}");
    assert!(out.contains("fix: set PORTCULLIS_API_TOKENS"), "{out}");
    assert!(out.contains("error[upstreams.url]"), "{out}");
}

/// A browser's `Origin` never holds its scheme's default port (RFC 6454 §6.2): listed so,
/// an origin would match nothing, and the operator would believe the site allowed.
#[test]
fn check_refuses_an_origin_no_browser_sends() {
    for origin in ["https://b.example:443", "http://b.example:080"] {
        let (code, out) = check(
            &[
                "--upstream",
                "http://127.0.0.1:9000",
                "--cors-allowed-origins",
                origin,
            ],
            &[("PORTCULLIS_API_TOKENS", TOKEN)],
        );
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("error[cors.origins]"), "{out}");
        assert!(out.contains("not an origin as browsers send it"), "{out}");
    }
    let (code, out) = check(
        &[
            "--upstream",
            "http://127.0.0.1:9000",
            "--cors-allowed-origins",
            "https://b.example:8443",
        ],
        &[("PORTCULLIS_API_TOKENS", TOKEN)],
    );
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn check_warns_on_short_tokens_and_production_refuses_them() {
    let env = [("PORTCULLIS_API_TOKENS", "short-token")];
    let (code, out) = check(&["--upstream", "http://127.0.0.1:9000"], &env);
    assert_eq!(code, Some(0), "a warning does not fail: {out}");
    assert!(out.contains("warning[credentials.length]"), "{out}");
    assert!(
        !out.contains("short-token"),
        "the token itself is never printed"
    );

    let (code, out) = check(
        &["--production", "--upstream", "http://127.0.0.1:9000"],
        &env,
    );
    assert_eq!(code, Some(1));
    for rule in ["error[credentials.length]", "error[production.transport]"] {
        assert!(out.contains(rule), "{rule} missing from {out}");
    }
}

#[test]
fn production_rules_cover_headers_body_limit_and_timeouts() {
    let (code, out) = check(
        &[
            "--production",
            "--upstream",
            "http://127.0.0.1:9000",
            "--trusted-proxies",
            "10.0.0.0/8",
            "--max-body-bytes",
            "20000000",
            "--request-timeout",
            "300s",
        ],
        &[
            ("PORTCULLIS_API_TOKENS", TOKEN),
            ("PORTCULLIS_DISABLE_SECURITY_HEADERS", "1"),
        ],
    );
    assert_eq!(code, Some(1));
    for rule in [
        "security_headers.enabled",
        "production.body_limit",
        "production.timeouts",
    ] {
        assert!(
            out.contains(&format!("error[{rule}]")),
            "{rule} missing from {out}"
        );
    }
    assert!(
        !out.contains("production.transport"),
        "trusted proxies satisfy the transport rule"
    );
}

#[tokio::test]
async fn demo_serves_the_sample_api_behind_the_gateway() {
    let mut child = portcullis()
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|line| !line.starts_with("Press Ctrl-C"))
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(Duration::from_secs(20), lines)
        .await
        .unwrap()
        .unwrap();
    let token = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("export TOKEN="))
        .expect("token printed")
        .to_owned();
    let base = lines
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http://127.0.0.1:"))
        })
        .expect("address printed")
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .to_owned();

    let allowed = get(
        &format!("{base}/v1/positions"),
        &[("authorization", &format!("Bearer {token}"))],
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert!(
        allowed
            .json()
            .as_array()
            .is_some_and(|positions| !positions.is_empty())
    );
    assert!(allowed.header("server").is_none() && allowed.header("x-powered-by").is_none());
    assert_security_headers(&allowed.headers);

    get(&format!("{base}/v1/positions"), &[])
        .await
        .assert_problem(401, "unauthorized");
    let _ = child.kill();
    let _ = child.wait();
}

/// `check` says what `serve` would refuse about the token pepper, and creates nothing.
#[test]
fn check_refuses_the_pepper_serve_would_refuse() {
    let dir = scratch_dir();
    let data_dir = dir.join("data");
    let args = [
        "--upstream",
        "http://127.0.0.1:9000",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    let env = [
        ("PORTCULLIS_API_TOKENS", "0123456789abcdef0123456789abcdef"),
        ("PORTCULLIS_TOKEN_PEPPER", "short"),
    ];
    let (code, out) = check(&args, &env);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(
            "error[store.pepper]: token pepper: PORTCULLIS_TOKEN_PEPPER must be at least 16"
        ),
        "{out}"
    );
    assert!(!data_dir.exists(), "check created {data_dir:?}");
}

/// A store whose pepper was lost: a new pepper would refuse every token in it, silently.
/// Neither `check` nor the CLI makes one; both say what to do.
#[test]
fn a_lost_pepper_is_not_replaced_beside_an_existing_store() {
    let dir = scratch_dir();
    mint_with_id(&dir, "alice", "read");
    std::fs::remove_file(dir.join("token-pepper")).unwrap();
    let (code, out) = check(
        &[
            "--upstream",
            "http://127.0.0.1:9000",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("error[store.open]") && out.contains("token-pepper is missing"),
        "{out}"
    );
    let listed = token_command(&dir, &["list"]);
    assert!(!listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stderr).contains("restore the file"));
    assert!(!dir.join("token-pepper").exists(), "a new pepper was made");
}

/// A generated key file made readable by others (it is made 0600) is used, with a warning
/// naming it.
#[test]
fn a_key_file_open_to_others_is_warned_of() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir();
    mint_with_id(&dir, "alice", "read");
    let pepper = dir.join("token-pepper");
    std::fs::set_permissions(&pepper, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listed = token_command(&dir, &["list"]);
    assert!(listed.status.success());
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(
        stderr.contains("a key file is open to others than its owner") && stderr.contains("644"),
        "{stderr}"
    );
    std::fs::set_permissions(&pepper, std::fs::Permissions::from_mode(0o600)).unwrap();
    let listed = token_command(&dir, &["list"]);
    assert!(!String::from_utf8_lossy(&listed.stderr).contains("open to others"));
}

/// `--help` shows which variables are set, not their values: an upstream's base path may
/// be its secret (Outline's management URL).
#[test]
fn help_does_not_show_the_upstreams_address() {
    let output = portcullis()
        .args(["serve", "--help"])
        .env(
            "PORTCULLIS_UPSTREAM",
            "https://203.0.113.5:1/OUTLINE-SECRET-PATH",
        )
        .env("PORTCULLIS_MCP", "http://127.0.0.1:1/MCP-SECRET-PATH")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("PORTCULLIS_UPSTREAM"), "{help}");
    assert!(!help.contains("SECRET-PATH"), "{help}");
}

/// Both the URL and a file naming one: which was meant is a guess, refused as for every
/// other secret.
#[test]
fn a_database_url_and_its_file_together_are_refused() {
    let dir = scratch_dir();
    let output = portcullis()
        .args(["token", "list"])
        .env("PORTCULLIS_DATABASE_URL", "postgres://app:pw@127.0.0.1:1/x")
        .env("PORTCULLIS_DATABASE_URL_FILE", dir.join("url"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("both PORTCULLIS_DATABASE_URL and PORTCULLIS_DATABASE_URL_FILE are set"),
        "{stderr}"
    );
    assert!(!stderr.contains("pw@"), "{stderr}");
}

/// A variable that is not UTF-8 would be read as unset: a mangled PostgreSQL URL would put
/// each replica on a SQLite store of its own. Every command refuses it, naming the
/// variable and not its value.
#[test]
fn a_variable_that_is_not_text_stops_every_command() {
    use std::os::unix::ffi::OsStringExt;
    let mangled = std::ffi::OsString::from_vec(b"postgres://app:pw@127.0.0.1/x\xff".to_vec());
    // The check comes before any command runs (`serve` is left out: without the check it
    // would start, and this test would wait on it).
    for command in [&["check"][..], &["token", "list"], &["audit", "verify"]] {
        let dir = scratch_dir();
        // The store's flags come before a subcommand's action.
        let output = portcullis()
            .arg(command[0])
            .arg("--data-dir")
            .arg(&dir)
            .args(&command[1..])
            .env("PORTCULLIS_DATABASE_URL", &mangled)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{command:?}: {stderr}");
        assert!(
            stderr.contains("PORTCULLIS_DATABASE_URL is not valid UTF-8"),
            "{command:?}: {stderr}"
        );
        assert!(!stderr.contains("pw@"), "{command:?}: {stderr}");
        assert!(!dir.join("portcullis.db").exists(), "{command:?}");
    }
}
