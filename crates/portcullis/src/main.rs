//! The `portcullis` command line.

mod audit_cli;
mod token_cli;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use portcullis::access_log::AccessLog;
use portcullis::admin::AdminServer;
use portcullis::audit::store::AuditStore;
use portcullis::audit::{self, AuditLog};
use portcullis::config::{
    AccessLogTarget, Config, LogFormat, Overrides, StoreArgs, variable_not_text,
};
use portcullis::credentials::{self, Credentials, TokenHasher, TokenVerifier};
use portcullis::pipeline::Shared;
use portcullis::recorder::{Recorder, Sink};
use portcullis::redact::Redactor;
use portcullis::rules::{self, Facts, Report, Severity};
use portcullis::server::Server;
use portcullis::store::{SQLITE_FILE, Store, StoreLocation};
use tracing::warn;

/// mimalloc: records made on the workers are freed on the recorder's thread, which glibc's
/// allocator makes slow; measured faster on every path (bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A security gateway: authentication, security headers, CORS, request hygiene and rate
/// limits in front of any HTTP API.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway in front of an upstream.
    ///
    /// Bearer tokens come from PORTCULLIS_API_TOKENS (comma-separated) or the file named by
    /// PORTCULLIS_API_TOKENS_FILE; without them the gateway refuses to start.
    Serve {
        #[command(flatten)]
        overrides: Overrides,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Validate the configuration and print each failed rule with how to fix it.
    Check {
        #[command(flatten)]
        overrides: Overrides,
        #[command(flatten)]
        store: StoreArgs,
        /// Also apply the rules for an internet-facing deployment.
        #[arg(long)]
        production: bool,
    },
    /// Read the audit log (audit.db in --data-dir, or PostgreSQL) and verify its chains.
    Audit {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: audit_cli::AuditAction,
    },
    /// Manage bearer tokens in the store (SQLite in --data-dir, or PostgreSQL).
    Token {
        #[command(flatten)]
        store: StoreArgs,
        /// The gateway's TOML configuration file: a token may then hold the scopes its
        /// routes name (`outline:read`), beside read, write and admin.
        #[arg(long, env = "PORTCULLIS_CONFIG", value_name = "FILE", global = true)]
        config: Option<PathBuf>,
        /// Print JSON, for scripts.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: token_cli::TokenAction,
    },
    /// Run a sample inventory API behind the gateway on localhost and print curl commands
    /// to try it.
    Demo {
        /// Address the demo gateway listens on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(name) = variable_not_text(std::env::vars_os()) {
        eprintln!("portcullis: {name} is not valid UTF-8; set it as text, or unset it");
        return ExitCode::from(2);
    }
    // This runtime waits for signals and runs the admin API, the upstreams' health checks
    // (and the demo's sample API); requests are served by the server's own worker runtimes.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve { overrides, store } => serve(&overrides, &store).await,
            Command::Check {
                overrides,
                store,
                production,
            } => check(&overrides, &store, production).await,
            Command::Token {
                store,
                config,
                json,
                action,
            } => {
                init_logging(LogFormat::Text);
                token_cli::run(&store, config.as_deref(), json, action).await
            }
            Command::Audit { store, action } => {
                init_logging(LogFormat::Text);
                audit_cli::run(&store, action).await
            }
            Command::Demo { listen } => {
                init_logging(LogFormat::Text);
                match portcullis::demo::run(listen, shutdown_signal(|| {})).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("portcullis demo: {error}");
                        ExitCode::FAILURE
                    }
                }
            }
        }
    })
}

/// Logs go to stderr, as text or JSON lines; `PORTCULLIS_LOG` takes a tracing filter such
/// as `debug` or `portcullis=debug`.
fn init_logging(format: LogFormat) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Whatever the filter says:
    // - the HTTP/2 library's debug and trace events describe frames, request paths
    //   included, and a path can carry a capability secret;
    // - the PostgreSQL driver warns of a database URL's unknown parameters with their
    //   values (`?sslpassword=...`, a misspelt `passwd=...`);
    // - the audit log's checkpoints are logged at info for log shipping to carry off the
    //   host: a filter set to warn must not silence them.
    let checkpoints = format!("{}=info", portcullis::audit::CHECKPOINT_TARGET);
    for directive in ["h2=info", "sqlx_postgres::options=error", &checkpoints] {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // Each event's fields at the top level, beside `timestamp`, `level` and `target`.
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Loads the configuration and starts the operational log in the format it asks for.
fn load(overrides: &Overrides) -> Result<Config, ExitCode> {
    let config = Config::load(overrides, |name| std::env::var(name).ok()).map_err(|error| {
        eprintln!("portcullis: {error}");
        ExitCode::from(2)
    })?;
    init_logging(config.log.format);
    Ok(config)
}

/// `shared` with a recorder feeding the configured sinks (the access log, the audit log),
/// when there are any; lossless when the audit log is one of them.
async fn start_recorder(
    config: &Config,
    location: &StoreLocation,
    data_dir: &std::path::Path,
    shared: Shared,
    closing: &Arc<AtomicBool>,
) -> Result<Shared, String> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(log) =
        AccessLog::open(&config.log.access).map_err(|error| match &config.log.access {
            AccessLogTarget::File(path) => {
                format!("cannot open the access log {}: {error}", path.display())
            }
            _ => format!("cannot open the access log: {error}"),
        })?
    {
        sinks.push(Box::new(log));
    }
    let audit = config.audit.enabled;
    let mut audit_health = None;
    let mut audit_store = None;
    if audit {
        let key = audit::load_key(location, |name| std::env::var(name).ok(), true)
            .map_err(|error| error.to_string())?;
        let log_location = location.clone();
        let closing = closing.clone();
        let retention_key = key.clone();
        let spool_dir = data_dir.to_owned();
        // Opening blocks on a runtime of the audit log's own: not on this one.
        let opened = tokio::task::spawn_blocking(move || {
            AuditLog::open(&log_location, Some(&spool_dir), key, closing)
        })
        .await
        .map_err(|error| error.to_string())?;
        let mut log = opened.map_err(|error| error.to_string())?;
        // The pipeline's: it knows the upstreams' secrets too.
        log.redacting(Redactor::clone(&shared.redactor));
        audit_health = Some(log.health());
        // A pool of its own on this runtime, for the admin API's searches and retention.
        let store = AuditStore::open(location)
            .await
            .map_err(|error| error.to_string())?;
        let keep = config.audit.retention;
        if !keep.is_zero() {
            let (trimmed, to_record) = std::sync::mpsc::channel();
            log.record_retention(to_record);
            tokio::spawn(audit::retention::run(
                store.clone(),
                retention_key,
                keep,
                trimmed,
            ));
        }
        sinks.push(Box::new(log));
        audit_store = Some(store);
    }
    if sinks.is_empty() {
        return Ok(shared);
    }
    let recorder = Recorder::start(sinks, audit)
        .map_err(|error| format!("cannot start the recorder: {error}"))?;
    Ok(Shared {
        recorder: Some(recorder),
        audit: audit_health,
        audit_store,
        ..shared
    })
}

async fn serve(overrides: &Overrides, store_args: &StoreArgs) -> ExitCode {
    let config = match load(overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let env = |name: &str| std::env::var(name).ok();
    let location = match store_args.location(env) {
        Ok(location) => location,
        Err(error) => {
            eprintln!("portcullis: {error}");
            return ExitCode::from(2);
        }
    };
    // Fail closed: a store that cannot be opened stops the start.
    let opened = match open_store(&config, &location).await {
        Ok(opened) => opened,
        Err(message) => {
            eprintln!("portcullis: {message}");
            return ExitCode::from(2);
        }
    };
    let audit_location = match config.audit.location(&location, env) {
        Ok(audit_location) => audit_location,
        Err(error) => {
            eprintln!("portcullis: {error}");
            return ExitCode::from(2);
        }
    };
    let facts = audit_facts(&audit_location, opened.facts);
    let mut report = rules::check(&config, &facts, false);
    let settings = match report.settings.take() {
        Some(settings) if report.passed() => settings,
        _ => {
            // One line per problem, naming what to set.
            for finding in report.errors() {
                eprintln!("portcullis: {}; {}", finding.message, finding.fix);
            }
            return ExitCode::from(2);
        }
    };
    for finding in report.warnings() {
        warn!(rule = finding.rule, fix = %finding.fix, "{}", finding.message);
    }
    let shared = Shared {
        tokens: Some(opened.tokens),
        store: Some(opened.store),
        ..Shared::new(&config, &settings)
    };
    // Set when shutdown begins: the audit log then stops waiting on a store that is down.
    let closing = Arc::new(AtomicBool::new(false));
    let shared = match start_recorder(
        &config,
        &audit_location,
        &store_args.data_dir,
        shared,
        &closing,
    )
    .await
    {
        Ok(shared) => shared,
        Err(error) => {
            eprintln!("portcullis: {error}");
            return ExitCode::from(2);
        }
    };
    let server = match Server::bind(&config, &settings, &shared) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("portcullis: {error}");
            return ExitCode::FAILURE;
        }
    };
    let tokens = shared.tokens.clone();
    let admin = match (&tokens, config.admin.enabled) {
        (Some(tokens), true) => {
            let bound = AdminServer::bind(&config, tokens.clone(), &shared);
            match bound.await {
                Ok(admin) => Some(tokio::spawn(admin.run())),
                Err(error) => {
                    eprintln!("portcullis: {error}");
                    return ExitCode::FAILURE;
                }
            }
        }
        _ => None,
    };
    let usage = tokens.clone().map(|tokens| {
        tokio::spawn(async move { tokens.flush_usage_every(USAGE_FLUSH_INTERVAL).await })
    });
    // Set as soon as the signal arrives, on the signal thread: a worker waiting for room in
    // the recorder's queue is freed once the audit log stops waiting on a store that is down.
    let stopping = closing.clone();
    let signal = shutdown_signal(move || stopping.store(true, Ordering::Relaxed));
    server.run(signal).await;
    if let Some(admin) = admin {
        admin.abort();
    }
    if let Some(recorder) = &shared.recorder {
        // Blocks while the last batch is stored: off this runtime's thread.
        let recorder = recorder.clone();
        let closed = tokio::task::spawn_blocking(move || recorder.close(RECORDS_FLUSH_TIMEOUT));
        let _ = closed.await;
    }
    if let (Some(usage), Some(tokens)) = (usage, tokens) {
        usage.abort();
        if let Err(error) = tokens.flush_usage().await {
            warn!(%error, "cannot record when tokens were last used");
        }
    }
    ExitCode::SUCCESS
}

/// How often last-used times are written to the store.
const USAGE_FLUSH_INTERVAL: Duration = Duration::from_secs(15);

/// How long shutdown waits for the access and audit logs to write their last records.
const RECORDS_FLUSH_TIMEOUT: Duration = Duration::from_secs(15);

/// The store, opened, with the token verifier every worker shares.
struct Opened {
    tokens: Arc<TokenVerifier>,
    store: Store,
    facts: Facts,
}

/// Opens the store, with the token verifier every worker shares, and counts its live
/// tokens.
async fn open_store(config: &Config, location: &StoreLocation) -> Result<Opened, String> {
    let env = |name: &str| std::env::var(name).ok();
    let pepper = credentials::load_pepper(location, env).map_err(|e| e.to_string())?;
    let store = Store::open(location).await.map_err(|e| e.to_string())?;
    let credentials = Credentials::new(
        store.clone(),
        TokenHasher::new(&pepper),
        &config.route_scopes(),
    );
    let live_managed_tokens = credentials.count_live().await.map_err(|e| e.to_string())?;
    Ok(Opened {
        tokens: Arc::new(TokenVerifier::new(credentials, config.token_cache_ttl)),
        store,
        facts: Facts {
            live_managed_tokens,
            ..Facts::default()
        },
    })
}

/// `facts` with what the audit log's chain key would be at `location`.
fn audit_facts(location: &StoreLocation, facts: Facts) -> Facts {
    let env = |name: &str| std::env::var(name).ok();
    Facts {
        audit_key_problem: audit::key_problem(location, env),
        audit_key_kept_apart: audit::key_kept_apart(location, env),
        ..facts
    }
}

async fn check(overrides: &Overrides, store_args: &StoreArgs, production: bool) -> ExitCode {
    let config = match load(overrides) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // Only an existing store is opened: `check` creates nothing.
    let env = |name: &str| std::env::var(name).ok();
    let facts = match store_args.location(env) {
        Ok(StoreLocation::DataDir(dir)) if !dir.join(SQLITE_FILE).exists() => Facts {
            pepper_problem: credentials::pepper_problem(&dir, env),
            ..Facts::default()
        },
        Ok(location) => match open_store(&config, &location).await {
            Ok(opened) => opened.facts,
            Err(message) => {
                println!("error[store.open]: {message}");
                return ExitCode::FAILURE;
            }
        },
        Err(error) => {
            println!("error[store.location]: {error}");
            return ExitCode::FAILURE;
        }
    };
    let env = |name: &str| std::env::var(name).ok();
    let audit_location = store_args
        .location(env)
        .map_err(|error| error.to_string())
        .and_then(|store| {
            config
                .audit
                .location(&store, env)
                .map_err(|error| error.to_string())
        });
    let facts = match audit_location {
        Ok(location) => audit_facts(&location, facts),
        Err(error) => {
            println!("error[audit.location]: {error}");
            return ExitCode::FAILURE;
        }
    };
    let report = rules::check(&config, &facts, production);
    print_report(&report, production);
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_report(report: &Report, production: bool) {
    let scope = if production { "production" } else { "basic" };
    for finding in &report.findings {
        let label = match finding.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        println!("{label}[{}]: {}", finding.rule, finding.message);
        println!("  fix: {}", finding.fix);
    }
    let errors = report.errors().count();
    let warnings = report.warnings().count();
    if errors == 0 {
        println!("ok: the configuration passes the {scope} rules ({warnings} warning(s))");
    } else {
        println!("failed: {errors} error(s), {warnings} warning(s) against the {scope} rules");
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM; `on_signal` runs as soon as one arrives.
///
/// The signals are watched on a thread and runtime of their own, installed before this
/// returns (so a signal sent as soon as the listening line appears stops the server
/// gracefully instead of killing it), and `on_signal` runs there: even when every other
/// thread waits for room in the recorder's queue behind an audit store that is down, the
/// signal is seen and can tell the audit log to give up.
fn shutdown_signal(
    on_signal: impl FnOnce() + Send + 'static,
) -> impl std::future::Future<Output = ()> {
    let (installed, ready) = std::sync::mpsc::channel::<()>();
    let (fired, signalled) = tokio::sync::oneshot::channel::<()>();
    let watcher = std::thread::Builder::new()
        .name("portcullis-signals".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => return warn!(%error, "cannot watch for signals"),
            };
            runtime.block_on(async move {
                wait_for_signal(installed).await;
                on_signal();
                let _ = fired.send(());
            });
        });
    match watcher {
        // Brief, at start: the thread only installs the handlers.
        Ok(_) => {
            let _ = ready.recv();
        }
        Err(error) => warn!(%error, "cannot start the signal thread"),
    }
    async move {
        if signalled.await.is_err() {
            // No watcher: never stop on a signal, rather than stop at once.
            std::future::pending::<()>().await;
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers, says so on `installed`, then waits for one.
async fn wait_for_signal(installed: std::sync::mpsc::Sender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        let _ = installed.send(());
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
            }
            (Ok(mut only), Err(error)) | (Err(error), Ok(mut only)) => {
                warn!(%error, "cannot listen for one of SIGINT and SIGTERM");
                only.recv().await;
            }
            (Err(error), Err(_)) => {
                warn!(%error, "cannot listen for signals; stop the server with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = installed.send(());
        let _ = tokio::signal::ctrl_c().await;
    }
}
