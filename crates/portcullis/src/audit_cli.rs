//! `portcullis audit ...`: read the audit log: verify it, search it, follow it, export it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use portcullis::audit::chain::{CHECKPOINT_MESSAGE, Checkpoint};
use portcullis::audit::query::{
    self, Cursor, FILTER_STATUSES, Filter, MAX_LIMIT, Order, Where, csv_header, csv_record,
    parse_time, shown,
};
use portcullis::audit::spool::scan;
use portcullis::audit::store::{AuditStore, StoredEvent};
use portcullis::audit::{load_key, now_ms, verify};
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
    /// Print the newest events, oldest of them first, one JSON object per line.
    Tail {
        /// How many.
        #[arg(long, short = 'n', default_value_t = 20)]
        lines: i64,
        /// Keep printing events as they are written (every chain being written, polled
        /// each second), until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Print the events that match every filter given, newest first, one JSON object per
    /// line.
    Search {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many (read page by page: any number).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
    /// Write every event (between --since and --until), oldest first, page by page: any
    /// size.
    Export {
        /// `jsonl` (each event as a JSON object) or `csv` (a header and fixed columns).
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Events of requests that started at or after this: RFC 3339 or a duration ago.
        #[arg(long)]
        since: Option<String>,
        /// Events of requests that started before this.
        #[arg(long)]
        until: Option<String>,
    },
}

/// What `audit export` writes.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// RFC 4180 CSV.
    Csv,
}

/// The filters of `audit search`, as the admin API's `GET /v1/audit` takes them, and
/// refused as it refuses them.
#[derive(Debug, clap::Args)]
pub struct FilterArgs {
    /// Events of requests that started at or after this: RFC 3339
    /// (2026-11-27T10:00:00Z) or a duration ago (15m, 1h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Events of requests that started before this.
    #[arg(long)]
    until: Option<String>,
    /// The caller's name.
    #[arg(long, value_parser = filter_text)]
    principal: Option<String>,
    /// The caller's tenant.
    #[arg(long, value_parser = filter_text)]
    tenant: Option<String>,
    /// The status sent (100 to 599).
    #[arg(long, value_parser = clap::value_parser!(u16).range(FILTER_STATUSES))]
    status: Option<u16>,
    /// The decision code, e.g. auth_unknown.
    #[arg(long, value_parser = filter_text)]
    decision: Option<String>,
    /// The route's prefix, exactly.
    #[arg(long, value_parser = filter_text)]
    route: Option<String>,
    /// Paths that start with this.
    #[arg(long, value_parser = filter_text)]
    path_prefix: Option<String>,
    /// One request's events.
    #[arg(long, value_parser = filter_text)]
    request_id: Option<String>,
    /// The client's address.
    #[arg(long, value_parser = filter_text)]
    client_ip: Option<String>,
}

/// A text filter, as the admin API takes one.
fn filter_text(text: &str) -> Result<String, String> {
    if query::is_filter_text(text) {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "at most {} characters, none of them control characters",
            query::FILTER_MAX_CHARS
        ))
    }
}

/// `since` and `until` as times, or the message for the one that is not.
fn time_range(
    since: Option<String>,
    until: Option<String>,
) -> Result<(Option<i64>, Option<i64>), String> {
    let now = SystemTime::now();
    let time = |value: Option<String>, name: &str| {
        value
            .map(|text| {
                parse_time(&text, now).ok_or_else(|| {
                    format!("--{name} takes an RFC 3339 time or a duration ago (15m, 1h, 7d)")
                })
            })
            .transpose()
    };
    Ok((time(since, "since")?, time(until, "until")?))
}

impl FilterArgs {
    fn filter(self) -> Result<Filter, String> {
        let (since, until) = time_range(self.since, self.until)?;
        Ok(Filter {
            since,
            until,
            principal: self.principal,
            tenant: self.tenant,
            status: self.status.map(i64::from),
            decision: self.decision,
            route: self.route,
            path_prefix: self.path_prefix,
            request_id: self.request_id,
            client_ip: self.client_ip,
        })
    }
}

/// Runs `action` against the audit store `store` names.
pub async fn run(store_args: &StoreArgs, action: AuditAction) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let location = match store_args.location(env) {
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
            // Batches still in the spool are not in the store yet; a corrupted one is lost.
            let spooled = match scan(&store_args.data_dir) {
                Ok(spooled) => spooled,
                Err(error) => return fail(&format!("cannot read the spool: {error}")),
            };
            match verify::verify(&store, &key, &external).await {
                Ok(mut report) => {
                    if spooled.corrupt > 0 {
                        report.broken.push(format!(
                            "the spool holds {} corrupted record(s): their events are lost",
                            spooled.corrupt
                        ));
                    }
                    if spooled.batches > 0 {
                        println!(
                            "spool: {} batch(es), {} event(s) not yet replayed into the store",
                            spooled.batches, spooled.events
                        );
                    }
                    for broken in &report.broken {
                        println!("broken: {broken}");
                    }
                    let verdict = if report.passed() { "ok" } else { "failed" };
                    println!(
                        "{verdict}: {} chain(s), {} event(s) linked, {} checkpoint(s) matched",
                        report.chains, report.events, report.checkpoints
                    );
                    if external.is_empty() && report.passed() {
                        // Each chain is named by the next: the newest, named by none, can go
                        // whole, and then the one before it, unnoticed by the store alone.
                        println!(
                            "note: what the store holds is intact; that nothing was cut off after \
                             it (whole chains deleted, newest first) only the logged checkpoints \
                             prove: run again with --checkpoint and the shipped log"
                        );
                    }
                    if report.passed() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(error) => fail(&error.to_string()),
            }
        }
        AuditAction::Tail { lines, follow } => {
            let store = match AuditStore::open_existing(&location).await {
                Ok(store) => store,
                Err(error) => return fail(&error.to_string()),
            };
            outcome(tail(&store, lines, follow).await)
        }
        AuditAction::Search { filter, limit } => {
            let filter = match filter.filter() {
                Ok(filter) => filter,
                Err(message) => return fail(&message),
            };
            let store = match AuditStore::open_existing(&location).await {
                Ok(store) => store,
                Err(error) => return fail(&error.to_string()),
            };
            outcome(walk(&store, &filter, Order::NewestFirst, limit, Output::Jsonl).await)
        }
        AuditAction::Export {
            format,
            since,
            until,
        } => {
            let filter = match time_range(since, until) {
                Ok((since, until)) => Filter {
                    since,
                    until,
                    ..Filter::default()
                },
                Err(message) => return fail(&message),
            };
            let store = match AuditStore::open_existing(&location).await {
                Ok(store) => store,
                Err(error) => return fail(&error.to_string()),
            };
            let output = match format {
                ExportFormat::Jsonl => Output::Jsonl,
                ExportFormat::Csv => {
                    if std::io::stdout()
                        .write_all(csv_header().as_bytes())
                        .is_err()
                    {
                        return ExitCode::SUCCESS;
                    }
                    Output::Csv
                }
            };
            outcome(walk(&store, &filter, Order::OldestFirst, i64::MAX, output).await)
        }
    }
}

/// How events are printed.
#[derive(Debug, Clone, Copy)]
enum Output {
    Jsonl,
    Csv,
}

/// Why printing stopped early.
enum Stop {
    /// The reader went away (`| head`): not an error.
    Closed,
    /// The store failed.
    Store(String),
}

fn outcome(result: Result<(), Stop>) -> ExitCode {
    match result {
        Ok(()) | Err(Stop::Closed) => ExitCode::SUCCESS,
        Err(Stop::Store(message)) => fail(&message),
    }
}

/// Writes `events` to `out` as `output` says.
fn print(out: &mut impl Write, events: &[StoredEvent], output: Output) -> Result<(), Stop> {
    for event in events {
        let shown = shown(event);
        let written = match output {
            Output::Jsonl => writeln!(out, "{shown}"),
            Output::Csv => out.write_all(csv_record(&shown).as_bytes()),
        };
        written.map_err(|_| Stop::Closed)?;
    }
    Ok(())
}

/// Prints up to `limit` events matching `filter` in `order`, a page at a time, so that
/// any number of them streams in bounded memory.
async fn walk(
    store: &AuditStore,
    filter: &Filter,
    order: Order,
    limit: i64,
    output: Output,
) -> Result<(), Stop> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut left = limit;
    let mut cursor: Option<Cursor> = None;
    while left > 0 {
        let conditions = Where::of(filter, order, cursor.as_ref());
        let page = store
            .search(&conditions, order, left.min(MAX_LIMIT))
            .await
            .map_err(|error| Stop::Store(error.to_string()))?;
        print(&mut out, &page, output)?;
        let Some(last) = page.last() else { break };
        cursor = Some(Cursor::after(last));
        left -= i64::try_from(page.len()).unwrap_or(i64::MAX);
    }
    out.flush().map_err(|_| Stop::Closed)
}

/// How far back `tail --follow` looks for chains being written: a live chain checkpoints
/// at least every minute.
const LIVE_WINDOW: Duration = Duration::from_secs(180);

/// Prints the newest `lines` events, then, with `follow`, each chain's new events as they
/// are written. Chains are followed by sequence number, so an event is shown once it is
/// stored however long its request took.
async fn tail(store: &AuditStore, lines: i64, follow: bool) -> Result<(), Stop> {
    let failed = |error: portcullis::audit::store::AuditStoreError| Stop::Store(error.to_string());
    let live_since = |now: SystemTime| now_ms(now) - query::millis(LIVE_WINDOW);
    // Where each live chain stands, taken before the newest events are read: what is
    // stored after this shows up in the loop below, none of it twice.
    let mut chains: BTreeMap<String, i64> = BTreeMap::new();
    if follow {
        for chain in store
            .live_chains(live_since(SystemTime::now()))
            .await
            .map_err(failed)?
        {
            let last = store.last_seq(&chain).await.map_err(failed)?;
            chains.insert(chain, last);
        }
    }
    let mut newest = store
        .search(
            &Where::default(),
            Order::NewestFirst,
            lines.clamp(0, MAX_LIMIT),
        )
        .await
        .map_err(failed)?;
    newest.reverse();
    let mut out = std::io::stdout().lock();
    print(&mut out, &newest, Output::Jsonl)?;
    out.flush().map_err(|_| Stop::Closed)?;
    if !follow {
        return Ok(());
    }
    for event in &newest {
        if let Some(seq) = chains.get_mut(&event.chain_id) {
            *seq = (*seq).max(event.seq);
        }
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for chain in store
            .live_chains(live_since(SystemTime::now()))
            .await
            .map_err(failed)?
        {
            // A chain that started since tail began: all of it is new.
            chains.entry(chain).or_insert(0);
        }
        let mut fresh = Vec::new();
        for (chain, last) in chains.iter_mut() {
            let events = store
                .events(chain, *last, MAX_LIMIT)
                .await
                .map_err(failed)?;
            if let Some(event) = events.last() {
                *last = event.seq;
            }
            fresh.extend(events);
        }
        fresh.sort_by(|a, b| (a.time_ms, &a.chain_id, a.seq).cmp(&(b.time_ms, &b.chain_id, b.seq)));
        print(&mut out, &fresh, Output::Jsonl)?;
        out.flush().map_err(|_| Stop::Closed)?;
    }
}

/// Every checkpoint line in `path`.
fn read_checkpoints(path: &std::path::Path) -> Result<Vec<Checkpoint>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    // A checkpoint line that cannot be read would leave what it proves unchecked: a cut
    // tail would pass. Refused, by its line number, rather than skipped.
    let mut checkpoints = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if !line.contains(CHECKPOINT_MESSAGE) {
            continue;
        }
        match Checkpoint::from_log_line(line) {
            Ok(Some(checkpoint)) => checkpoints.push(checkpoint),
            Ok(None) => {}
            Err(unreadable) => {
                return Err(format!(
                    "{} line {}: {unreadable}",
                    path.display(),
                    index + 1
                ));
            }
        }
    }
    if checkpoints.is_empty() {
        return Err(format!("{} holds no audit checkpoint line", path.display()));
    }
    Ok(checkpoints)
}

fn fail(message: &str) -> ExitCode {
    eprintln!("portcullis audit: {message}");
    ExitCode::from(2)
}
