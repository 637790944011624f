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
