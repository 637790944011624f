//! `portcullis audit ...`: read the audit log.

use std::path::PathBuf;
use std::process::ExitCode;

use portcullis::audit::chain::Checkpoint;
use portcullis::audit::store::AuditStore;
use portcullis::audit::{load_key, verify};
use portcullis::config::StoreArgs;

/// What to do with the audit log.
#[derive(Debug, clap::Subcommand)]
pub enum AuditAction {
    /// Walk every chain and report the first broken link of each; exit 0 only when every
    /// chain and checkpoint holds.
    Verify {
        /// A file holding one checkpoint line exactly as the gateway logged it (text or
        /// JSON), to prove that nothing up to it was cut off.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
    },
}

/// Runs `action` against the audit store `store` names.
pub async fn run(store: &StoreArgs, action: AuditAction) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let location = match store.location(env) {
        Ok(location) => location,
        Err(error) => return fail(&error.to_string()),
    };
    match action {
        AuditAction::Verify { checkpoint } => {
            let external = match checkpoint.map(|path| read_checkpoint(&path)).transpose() {
                Ok(external) => external,
                Err(message) => return fail(&message),
            };
            let key = match load_key(&location, env) {
                Ok(key) => key,
                Err(error) => return fail(&error.to_string()),
            };
            let store = match AuditStore::open(&location).await {
                Ok(store) => store,
                Err(error) => return fail(&error.to_string()),
            };
            match verify::verify(&store, &key, external.as_ref()).await {
                Ok(report) => {
                    for broken in &report.broken {
                        println!("broken: {broken}");
                    }
                    let verdict = if report.passed() { "ok" } else { "failed" };
                    println!(
                        "{verdict}: {} chain(s), {} event(s) linked, {} checkpoint(s) matched",
                        report.chains, report.events, report.checkpoints
                    );
                    if report.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => fail(&error.to_string()),
            }
        }
    }
}

/// The checkpoint in the first line of `path` that holds one.
fn read_checkpoint(path: &std::path::Path) -> Result<Checkpoint, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    text.lines()
        .find_map(Checkpoint::from_log_line)
        .ok_or_else(|| format!("{} holds no audit checkpoint line", path.display()))
}

fn fail(message: &str) -> ExitCode {
    eprintln!("portcullis audit: {message}");
    ExitCode::from(2)
}
