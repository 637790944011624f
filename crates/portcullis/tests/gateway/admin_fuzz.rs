//! The OpenAPI fuzzer: schemathesis runs every one of its checks against the admin API of
//! the real binary (on a scratch SQLite store), driven by the document the API serves. It
//! must find no 5xx, no undocumented status or media type, no response off its schema, no
//! valid request refused and no invalid one accepted.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// The variable naming the schemathesis executable; `.ci/run` installs it in a virtual
/// environment and sets this.
const SCHEMATHESIS_VAR: &str = "PORTCULLIS_SCHEMATHESIS";
/// Test cases per operation and phase: enough to reach every refusal, small enough for CI.
const MAX_EXAMPLES: &str = "50";
/// The whole run's bound; it takes about ten seconds.
const RUN_LIMIT: Duration = Duration::from_secs(150);

#[test]
fn schemathesis_finds_nothing_wrong_with_the_admin_api() {
    let Some(schemathesis) = std::env::var_os(SCHEMATHESIS_VAR) else {
        // Never a silent pass: this test is the admin API's contract check.
        panic!(
            "{SCHEMATHESIS_VAR} is not set; it names the schemathesis executable this test runs. \
             .ci/run installs it; by hand: python3 -m venv /var/tmp/portcullis-ci-venv && \
             /var/tmp/portcullis-ci-venv/bin/pip install schemathesis==4.32.5, then \
             export {SCHEMATHESIS_VAR}=/var/tmp/portcullis-ci-venv/bin/schemathesis"
        );
    };
    // Bans off: the fuzzer sends hundreds of bad credentials on purpose, and a ban would
    // answer the rest of its cases 429 (documented, but not what they test).
    let dir = scratch_dir();
    let config = write_file(&dir, "fuzz.toml", "[bans]\nmax_failures = 0\n");
    let gateway = Launch::bare()
        .arg("--upstream")
        .arg("http://127.0.0.1:9")
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("PORTCULLIS_API_TOKENS", TOKEN)
        .start();
    // Its own directory, so that its example database and caches land in scratch space.
    let workdir = scratch_dir();
    let mut child = Command::new(&schemathesis)
        .current_dir(&workdir)
        .args(["run", &gateway.admin_url("/openapi.json")])
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--request-timeout", "10"])
        .args(["--generation-database", "none"])
        .arg("--no-color")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", schemathesis.display()));

    // Read both streams on threads, so that a full pipe cannot stall the run.
    let read = |stream: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(child.stdout.take().map(|s| Box::new(s) as _));
    let stderr = read(child.stderr.take().map(|s| Box::new(s) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!(
        "{}\n{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    let Some(status) = status else {
        panic!("schemathesis did not finish within {RUN_LIMIT:?}:\n{output}");
    };
    assert!(
        status.success(),
        "schemathesis found problems ({status}):\n{output}\ngateway log:\n{}",
        gateway.log()
    );
    assert!(output.contains("No issues found"), "{output}");
}
