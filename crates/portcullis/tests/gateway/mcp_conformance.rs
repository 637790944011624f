//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, from npm) run
//! against a reference MCP server (`@modelcontextprotocol/server-everything`, Streamable
//! HTTP) directly and through the gateway: every scenario that passes against the server
//! passes through the gateway, and the DNS-rebinding scenario, which the server alone
//! fails, passes through it. The packages and Node 22 are pinned in `tests/mcp`
//! (`package-lock.json`); `.ci/run` installs them and names the directory in
//! `PORTCULLIS_MCP_NODE_DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::*;

const NODE_DIR_VAR: &str = "PORTCULLIS_MCP_NODE_DIR";

/// The directory holding `node_modules` with the suite, the server and Node 22.
fn node_dir() -> PathBuf {
    let dir = std::env::var_os(NODE_DIR_VAR).unwrap_or_else(|| {
        panic!(
            "{NODE_DIR_VAR} is not set; it names a directory where `npm ci` ran on \
             crates/portcullis/tests/mcp/package-lock.json. .ci/run does it; by hand: \
             mkdir -p /var/tmp/portcullis-ci-npm && cp crates/portcullis/tests/mcp/package*.json \
             /var/tmp/portcullis-ci-npm/ && npm ci --prefix /var/tmp/portcullis-ci-npm, then export \
             {NODE_DIR_VAR}=/var/tmp/portcullis-ci-npm"
        )
    });
    PathBuf::from(dir)
}

/// Kills the process when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The reference server, listening on `port` once this returns.
fn reference_server(node_dir: &Path, port: u16) -> Running {
    let server = Command::new(node_dir.join("node_modules/.bin/node"))
        .arg(node_dir.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"))
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the reference MCP server");
    let running = Running(server);
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return running;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the reference MCP server did not listen on {port}");
}

/// Runs every server scenario against `url`: each scenario's passed and failed checks, as
/// the suite's summary prints them (`✓ name: 1 passed, 0 failed`).
fn conformance(node_dir: &Path, url: &str) -> BTreeMap<String, (u32, u32)> {
    let results = tempfile::tempdir().unwrap();
    let output = Command::new(node_dir.join("node_modules/.bin/node"))
        .arg(node_dir.join("node_modules/@modelcontextprotocol/conformance/dist/index.js"))
        .args(["server", "--url", url])
        .current_dir(results.path())
        .output()
        .expect("run the MCP conformance suite");
    let printed = String::from_utf8_lossy(&output.stdout);
    let summary = printed
        .split("=== SUMMARY ===")
        .nth(1)
        .unwrap_or_else(|| panic!("no summary from the suite:\n{printed}"));
    summary
        .lines()
        .filter_map(|line| {
            let line = line.trim().trim_start_matches(['✓', '✗']).trim();
            let (name, counts) = line.split_once(": ")?;
            let (passed, failed) = counts.split_once(" passed, ")?;
            let failed = failed.strip_suffix(" failed")?;
            Some((
                name.to_owned(),
                (passed.parse().ok()?, failed.parse().ok()?),
            ))
        })
        .collect()
}

#[test]
fn the_mcp_conformance_suite_passes_through_the_gateway_dns_rebinding_included() {
    let node_dir = node_dir();
    let port = server_port();
    let _server = reference_server(&node_dir, port);
    let direct = conformance(&node_dir, &format!("http://localhost:{port}/mcp"));
    let passing: Vec<&String> = direct
        .iter()
        .filter(|(_, (passed, failed))| *passed > 0 && *failed == 0)
        .map(|(name, _)| name)
        .collect();
    assert!(
        passing.len() >= 10,
        "the reference server passes too little on its own: {direct:?}"
    );

    // A capability route: the suite knows no bearer tokens, and the secret is in its URL.
    let dir = scratch_dir();
    let capability = mint(&dir, "conformance", &["--capability"]);
    let config = write_file(
        &dir,
        "mcp.toml",
        &format!(
            "[upstreams.everything]\nurl = \"http://127.0.0.1:{port}\"\n\
             [[routes]]\npath_prefix = \"/mcp\"\nupstream = \"everything\"\n\
             auth = \"capability\"\npreset = \"mcp\"\n"
        ),
    );
    let gateway = Launch::bare()
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("PORTCULLIS_DATA_DIR", dir.to_str().unwrap())
        .start();
    let through = conformance(
        &node_dir,
        &format!("http://localhost:{}/mcp/{capability}", gateway.addr.port()),
    );
    for name in &passing {
        assert_eq!(
            through.get(*name),
            direct.get(*name),
            "{name} passes against the server but not through the gateway: {through:?}"
        );
    }
    let rebinding = through
        .get("dns-rebinding-protection")
        .unwrap_or_else(|| panic!("no DNS-rebinding scenario: {through:?}"));
    assert!(
        rebinding.0 >= 2 && rebinding.1 == 0,
        "DNS rebinding through the gateway: {rebinding:?}"
    );
}
