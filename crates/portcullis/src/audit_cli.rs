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
        /// A file of the gateway's log lines (text or JSON, as printed, e.g. the shipped
        /// log itself): every checkpoint line in it is checked, to prove that nothing up to
        /// it was cut off and that no chain it names was deleted.
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
            let external = match checkpoint.map(|path| read_checkpoints(&path)).transpose() {
                Ok(external) => external.unwrap_or_default(),
                Err(message) => return fail(&message),
            };
            // Never a new, empty store or a new key: either would make a deleted log pass.
            let store = match AuditStore::open_existing(&location).await {
                Ok(store) => store,
                Err(error) => return fail(&error.to_string()),
            };
            let key = match load_key(&location, env, false) {
                Ok(key) => key,
                Err(error) => return fail(&error.to_string()),
            };
            match verify::verify(&store, &key, &external).await {
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

/// Every checkpoint line in `path`.
fn read_checkpoints(path: &std::path::Path) -> Result<Vec<Checkpoint>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let checkpoints: Vec<Checkpoint> = text
        .lines()
        .filter(|line| line.contains("audit checkpoint"))
        .filter_map(Checkpoint::from_log_line)
        .collect();
    if checkpoints.is_empty() {
        return Err(format!("{} holds no audit checkpoint line", path.display()));
    }
    Ok(checkpoints)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("portcullis audit: {message}");
    ExitCode::from(2)
}
