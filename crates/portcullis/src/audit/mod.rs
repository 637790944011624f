//! The audit log, the second sink of the exchange record: one event per finished request,
//! allowed or refused, and one per admin action, stored durably (SQLite or PostgreSQL) in a
//! hash chain that shows any edit, insertion, deletion or reordering ([`chain`]), with
//! signed checkpoints that show a cut tail. Records arrive already redacted (capability
//! segments masked, sensitive query values hidden); a user agent that looks like a secret
//! is masked as it is written ([`crate::redact::user_agent`]), as the access log does.
//!
//! The sink runs on the recorder's thread: it collects the records of each batch (every
//! 200 ms) and writes them in one transaction. It never drops an event: with the audit log
//! on, the recorder's queue makes a worker wait for room rather than lose a record, and a
//! batch the store refuses is retried until it is taken.

pub mod appender;
pub mod chain;
mod event;
mod key;
pub mod query;
pub mod retention;
pub mod spool;
pub mod store;
pub mod succession;
pub mod verify;

pub use key::{AUDIT_KEY_FILE, key_given, key_kept_apart, key_problem, load_key};

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tracing::{debug, error, info, warn};

use crate::base::exchange::{AdminAction, Caller, Decision, Exchange};
use crate::base::hex;
use crate::config::StoreLocation;
use crate::recorder::{Admission, Sink};
use crate::redact::Redactor;
use appender::SqliteAppender;
use chain::{CHECKPOINT_MESSAGE, ChainKey, Checkpoint, GENESIS};
use retention::Trimmed;
use spool::{Record, Spool, SpooledBatch};
use store::{AuditStore, AuditStoreError, StoredEvent};
use succession::CHAIN_START;

/// Whether `PORTCULLIS_AUDIT` (as `env` reads it) leaves the audit log on.
pub fn enabled_in(env: impl Fn(&str) -> Option<String>) -> bool {
    !matches!(
        env("PORTCULLIS_AUDIT")
            .map(|value| value.trim().to_ascii_lowercase())
            .as_deref(),
        Some("off" | "false" | "0" | "no" | "n" | "f")
    )
}

/// Looks for other chains' checkpoints come at most this often (a busy chain checkpoints
/// every 1000 events)...
const LOOK_GAP: Duration = Duration::from_secs(1);
/// ...may take this long on the writer's thread...
const LOOK_TIMEOUT: Duration = Duration::from_secs(1);
/// ...reach back to the last look, but never further than this...
const LOOK_REACH: Duration = Duration::from_secs(300);
/// ...and this much before it (other processes' clocks).
const LOOK_SLACK: Duration = Duration::from_secs(10);

/// The log target of checkpoint lines: the command line logs it at info whatever
/// `PORTCULLIS_LOG` says, so that a filter set to warn never silences what log shipping is
/// to carry off the host.
pub const CHECKPOINT_TARGET: &str = "portcullis::checkpoint";

/// The kind of the event that records a corrupted spool record skipped at replay.
pub const SPOOL_LOSS: &str = "spool_loss";

/// A checkpoint after this many events...
pub const CHECKPOINT_EVENTS: u64 = 1000;
/// ...or this long, whichever comes first, and at shutdown.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);

/// The most spooled batches replayed between two looks at the recorder's queue...
const REPLAY_SLICE: usize = 64;
/// ...and the most events, once a batch is replayed: batches hold up to 16 384 events, and
/// admissions waiting behind a slice are refused after
/// [`crate::recorder::ADMISSION_TIMEOUT`].
const REPLAY_SLICE_EVENTS: usize = 65_536;

/// How long a failed batch waits before it is tried again, and the spool's replay after
/// the store refused it (twice as long after each further refusal in a row, up to
/// [`REPLAY_BACKOFF_MAX`]: each try holds the writer's thread as long as the store takes
/// to refuse).
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// The longest a replay waits after a refusal.
const REPLAY_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// How long shutdown keeps trying to store the last batch.
const CLOSE_PATIENCE: Duration = Duration::from_secs(10);
/// How long one write of a batch, with the look for it that a replay makes first, may take
/// before it counts as failed (a store that hangs: a table someone holds locked, a server
/// that stopped answering). Under [`crate::recorder::ADMISSION_TIMEOUT`], so that a strict
/// request waiting on a batch, or behind a replay, is admitted from the spool rather than
/// refused. A batch is 200 ms of events (the writer stores 64 000 a second on PostgreSQL,
/// bench/RESULTS.md); one larger than [`WRITE_RATE_FLOOR`] writes in this time (kept
/// bodies) gets longer, or a slow store could never take it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// The slowest a store that works is taken to write, in bytes a second.
const WRITE_RATE_FLOOR: u64 = 4 << 20;
/// How long one replay goes on starting batches before it looks at the recorder's queue.
const REPLAY_SLICE_TIME: Duration = Duration::from_secs(1);

/// Why the audit log could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The chain key is missing or unreadable.
    #[error("audit key: {0}")]
    Key(String),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] AuditStoreError),
    /// Its runtime could not be started.
    #[error("audit log: {0}")]
    Runtime(std::io::Error),
    /// The store did not take an event in time; the event is lost.
    #[error("the audit store did not take the event: {0}")]
    Unrecorded(String),
}

/// Where the audit log's batches are going, for `/ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditState {
    /// Into the store.
    Ok,
    /// Into the spool, while the store does not take them.
    Degraded,
    /// Nowhere: neither the store nor the spool takes them, and records pile up in memory
    /// until the gateway has to stop serving.
    Failing,
}

/// The audit log's [`AuditState`], shared with `/ready`.
#[derive(Debug, Clone, Default)]
pub struct AuditHealth(Arc<std::sync::atomic::AtomicU8>);

impl AuditHealth {
    /// Where batches went last.
    pub fn state(&self) -> AuditState {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => AuditState::Ok,
            1 => AuditState::Degraded,
            _ => AuditState::Failing,
        }
    }

    /// Whether neither the store nor the spool takes events now.
    pub fn refuses_writes(&self) -> bool {
        self.state() == AuditState::Failing
    }

    fn set(&self, state: AuditState) {
        let value = match state {
            AuditState::Ok => 0,
            AuditState::Degraded => 1,
            AuditState::Failing => 2,
        };
        self.0.store(value, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Where the sink writes: the store (searched, and written on PostgreSQL through its
/// pool, driven by a runtime of the sink's own) and, on SQLite, the writer's own
/// connection, which appends every batch.
struct Target {
    runtime: tokio::runtime::Runtime,
    store: AuditStore,
    appender: Option<SqliteAppender>,
}

impl Target {
    /// Whether `batch` (its first event or, with none, its checkpoint) is in the store
    /// already: a commit whose answer was lost, or a spooled batch replayed before. `None`
    /// when the store did not answer within `limit`.
    fn holds(
        &self,
        events: &[StoredEvent],
        checkpoint: Option<&Checkpoint>,
        limit: Duration,
    ) -> Option<bool> {
        let probe = async {
            match (events.first(), checkpoint) {
                (Some(first), _) => {
                    self.store
                        .holds(&first.chain_id, first.seq, &first.hash)
                        .await
                }
                (None, Some(checkpoint)) => self.store.holds_checkpoint(checkpoint).await,
                (None, None) => Ok(true),
            }
        };
        self.runtime
            .block_on(async { tokio::time::timeout(limit, probe).await })
            .ok()
            .and_then(Result::ok)
    }

    /// Stores `events` and `checkpoint` in one transaction: on PostgreSQL within `limit`;
    /// on SQLite, waiting at most `limit` for a lock another connection holds, but as
    /// long as the disk takes to write (a disk that hangs holds the recorder's thread;
    /// strict-mode requests are then refused after [`crate::recorder::ADMISSION_TIMEOUT`],
    /// and shutdown does not wait for it past its own timeout).
    fn append(
        &mut self,
        events: &[StoredEvent],
        checkpoint: Option<&Checkpoint>,
        limit: Duration,
    ) -> Result<(), String> {
        if let Some(appender) = &mut self.appender {
            return appender
                .append(events, checkpoint, limit)
                .map_err(|error| error.to_string());
        }
        let attempt = self.store.append(events, checkpoint);
        match self
            .runtime
            .block_on(async { tokio::time::timeout(limit, attempt).await })
        {
            Ok(stored) => stored.map_err(|error| error.to_string()),
            Err(_) => Err(format!("no answer within {limit:?}")),
        }
    }
}

/// The audit sink.
pub struct AuditLog {
    target: Target,
    key: ChainKey,
    chain: String,
    seq: i64,
    head: String,
    pending: Vec<StoredEvent>,
    /// Requests held until the batch pending (which holds their admission events) is
    /// committed.
    admitted: Vec<Admission>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// Set when shutdown begins, so that a store that is down cannot hold it up forever.
    closing: Arc<AtomicBool>,
    health: AuditHealth,
    /// Chains trimmed by retention, to record as events.
    trimmed: Option<std::sync::mpsc::Receiver<Trimmed>>,
    /// Where batches go while the store does not take them; none for `portcullis token`,
    /// whose one event must reach the store.
    spool: Option<Spool>,
    /// When a replay of the spool last found the store refusing, and how many replays in
    /// a row it refused.
    last_refusal: Option<Instant>,
    refusals: u32,
    /// Where in the spool the corrupted records skipped since the last batch were, to
    /// record as events.
    spool_losses: Vec<u64>,
    /// Whether the spool, replayed whole, is to be emptied once the next batch (which
    /// records its losses) is in the store.
    spool_to_clear: bool,
    /// The other chains this chain named (each is named once).
    named: HashSet<String>,
    /// When this chain may next look for other chains' checkpoints (at once: none), and
    /// when it last did, as the store's times go.
    next_look: Option<Instant>,
    looked_at_ms: i64,
    /// What bodies may show.
    redactor: Redactor,
}

impl AuditLog {
    /// Opens the store at `location`, replays the spool in `spool_dir` (if given, where
    /// batches go while the store does not take them) and starts a new chain; `closing`
    /// is set when shutdown begins. Blocks: call it outside any async runtime (the sink
    /// keeps a runtime of its own, for the thread it runs on).
    pub fn open(
        location: &StoreLocation,
        spool_dir: Option<&std::path::Path>,
        key: ChainKey,
        closing: Arc<AtomicBool>,
    ) -> Result<Self, AuditError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(AuditError::Runtime)?;
        let store = runtime.block_on(AuditStore::open_for_writer(location))?;
        let appender = match location {
            StoreLocation::DataDir(dir) => Some(SqliteAppender::open(dir)?),
            StoreLocation::Postgres(_) => None,
        };
        // The chain's id and its first event carry the same start time.
        let started = SystemTime::now();
        let chain = new_chain_id(started);
        let mut log = Self {
            target: Target {
                runtime,
                store,
                appender,
            },
            key,
            chain,
            seq: 0,
            head: GENESIS.to_owned(),
            pending: Vec::new(),
            admitted: Vec::new(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            closing,
            health: AuditHealth::default(),
            trimmed: None,
            spool: spool_dir.map(Spool::open),
            last_refusal: None,
            refusals: 0,
            spool_losses: Vec::new(),
            spool_to_clear: false,
            named: HashSet::new(),
            next_look: None,
            looked_at_ms: 0,
            redactor: Redactor::default(),
        };
        // What a process before left in the spool goes first.
        log.replay_all();
        // The chain's first event names the heads of the chains before it that no chain
        // named yet (succession), so that deleting any of them, or cutting it short of
        // that point, shows; its first batch is checkpointed, so that the chains running
        // and the next to start name this one.
        let follows = log
            .target
            .runtime
            .block_on(succession::to_name(&log.target.store, &log.key))?;
        info!(chain = %log.chain, follows = follows.len(), "audit log open: a new chain starts");
        let time_ms = now_ms(started);
        log.push(StoredEvent {
            time_ms,
            kind: CHAIN_START.to_owned(),
            payload: succession::naming_payload(&follows),
            ..StoredEvent::default()
        });
        log.looked_at_ms = time_ms;
        log.named
            .extend(follows.into_iter().map(|point| point.chain));
        log.take_spool_losses();
        log.since_checkpoint = CHECKPOINT_EVENTS;
        Ok(log)
    }

    /// Redacts kept bodies with `redactor` (the operator's sensitive names besides the
    /// built-in ones).
    pub fn redacting(&mut self, redactor: Redactor) {
        self.redactor = redactor;
    }

    /// Records each chain retention trims, as `trimmed` reports it, as a `retention`
    /// event.
    pub fn record_retention(&mut self, trimmed: std::sync::mpsc::Receiver<Trimmed>) {
        self.trimmed = Some(trimmed);
    }

    /// Chains retention trimmed since the last batch, as events.
    fn take_trimmed(&mut self) {
        let trimmed: Vec<Trimmed> = self
            .trimmed
            .as_ref()
            .map(|receiver| receiver.try_iter().collect())
            .unwrap_or_default();
        for chain in trimmed {
            self.push(event::retention(&chain));
        }
    }

    /// The corrupted spool records skipped since the last batch, as `spool_loss` events
    /// in this chain: once the spool is emptied, they are what still shows that events
    /// were lost (a gap in a chain shows it too, but not a lost tail).
    fn take_spool_losses(&mut self) {
        for offset in std::mem::take(&mut self.spool_losses) {
            self.push(event::spool_loss(offset));
        }
    }

    /// Whether the next batch carries a checkpoint: [`CHECKPOINT_EVENTS`] events or
    /// [`CHECKPOINT_INTERVAL`] since the last.
    fn checkpoint_due(&self) -> bool {
        self.since_checkpoint >= CHECKPOINT_EVENTS
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
    }

    /// With each checkpoint (at most every [`LOOK_GAP`], and a minute after a look that
    /// failed), while the store takes writes: names, in a `follows` event, the newest
    /// checkpoint of every other chain that wrote one since the last look and that this
    /// chain has not named yet ([`succession`]), so that a chain that started after this
    /// one (a token command's, a replica's) is named at once, not by the next start. Each
    /// chain is named once: enough to show its deletion whole, and `follows` events stay
    /// as few as the chains.
    fn name_new_chains(&mut self) {
        if !self.checkpoint_due()
            || self.next_look.is_some_and(|at| Instant::now() < at)
            || self.health.state() != AuditState::Ok
        {
            return;
        }
        let now = now_ms(SystemTime::now());
        // Back at most a few minutes (however long since the last look), less the other
        // processes' clocks' lag.
        let since =
            self.looked_at_ms.max(now - query::millis(LOOK_REACH)) - query::millis(LOOK_SLACK);
        let look =
            succession::checkpointed_since(&self.target.store, &self.key, since, &self.chain);
        let found = self
            .target
            .runtime
            .block_on(async { tokio::time::timeout(LOOK_TIMEOUT, look).await });
        let found = match found {
            Ok(Ok(found)) => {
                self.looked_at_ms = now;
                self.next_look = Some(Instant::now() + LOOK_GAP);
                found
            }
            failed => {
                // Not again for a minute: a store that is slow must not hold the writer.
                self.next_look = Some(Instant::now() + CHECKPOINT_INTERVAL);
                let error = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {LOOK_TIMEOUT:?}"),
                };
                warn!(%error, "audit log: cannot look for other chains' checkpoints; they are named by the next chain to start");
                return;
            }
        };
        let new: Vec<succession::ChainPoint> = found
            .into_iter()
            .filter(|point| self.named.insert(point.chain.clone()))
            .collect();
        if new.is_empty() {
            return;
        }
        self.push(StoredEvent {
            time_ms: now,
            kind: succession::FOLLOWS.to_owned(),
            payload: succession::naming_payload(&new),
            ..StoredEvent::default()
        });
    }

    /// Whether the store takes the writes, as `/ready` reports it.
    pub fn health(&self) -> AuditHealth {
        self.health.clone()
    }

    /// Links `event` (its columns and payload) into the chain and queues it.
    fn push(&mut self, mut event: StoredEvent) {
        self.seq += 1;
        event.hash = event::link(&self.key, &self.chain, self.seq, &self.head, &event);
        event.prev_hash = std::mem::replace(&mut self.head, event.hash.clone());
        event.chain_id.clone_from(&self.chain);
        event.seq = self.seq;
        self.pending.push(event);
        self.since_checkpoint += 1;
    }

    /// Replays the spool into the store, batch by batch, in order, at most
    /// [`REPLAY_SLICE`] batches or [`REPLAY_SLICE_EVENTS`] events a call (so that the
    /// recorder's queue, and the admissions in it, are not left waiting behind a long
    /// spool), and empties it once all of it is stored. A corrupted record is reported and
    /// skipped. Stops at the first batch the store refuses (the rest waits for the next
    /// attempt).
    fn replay(&mut self) {
        let Some(spool) = &self.spool else { return };
        let mut reader = match spool.unreplayed() {
            Ok(reader) => reader,
            Err(error) => {
                error!(%error, "audit log: cannot read the spool");
                return;
            }
        };
        let mut replayed = 0;
        let began = Instant::now();
        for _ in 0..REPLAY_SLICE {
            if replayed >= REPLAY_SLICE_EVENTS || began.elapsed() >= REPLAY_SLICE_TIME {
                break;
            }
            let record = match reader.next_record() {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(error) => {
                    error!(%error, "audit log: cannot read the spool");
                    return;
                }
            };
            let offset = match record {
                Record::Batch(batch, offset) => {
                    let checkpoint = batch.checkpoint.as_ref();
                    // The look and the write share one limit: a try holds the writer's
                    // thread for one timeout at most.
                    let began = Instant::now();
                    let limit = write_limit(&batch.events);
                    let stored = match self.target.holds(&batch.events, checkpoint, limit) {
                        Some(true) => Ok(()),
                        Some(false) => {
                            // Zero when the look took it all: then no lock is waited for.
                            let left = limit.saturating_sub(began.elapsed());
                            self.target.append(&batch.events, checkpoint, left)
                        }
                        None => Err("no answer to the look for the batch".to_owned()),
                    };
                    if let Err(cause) = stored {
                        debug!(error = %cause, "audit log: the store still refuses the spooled batches");
                        self.last_refusal = Some(Instant::now());
                        self.refusals = self.refusals.saturating_add(1);
                        return;
                    }
                    self.refusals = 0;
                    replayed += batch.events.len();
                    offset
                }
                Record::Corrupt { at, next } => {
                    error!(
                        offset = at,
                        "audit log: a corrupted spool record was skipped; its events are lost (recorded as a spool_loss event, which audit verify reports)"
                    );
                    self.spool_losses.push(at);
                    next
                }
            };
            if let Some(spool) = &mut self.spool {
                spool.replayed_to(offset);
            }
        }
        if let Some(spool) = &mut self.spool {
            if replayed > 0 {
                debug!(events = replayed, "audit log: spooled batches replayed");
            }
            if !reader.at_end() {
                return; // more next time
            }
            if !self.spool_losses.is_empty() {
                // Emptied once the loss is recorded in the store: a process that stops
                // before then finds the corrupted record again.
                self.spool_to_clear = true;
                return;
            }
            if clear_replayed(spool) {
                self.health.set(AuditState::Ok);
            }
        }
    }

    /// Replays the whole spool, slice after slice, until it is drained or the store refuses:
    /// at start, before anything is queued, and at shutdown, after the last record.
    fn replay_all(&mut self) {
        self.last_refusal = None;
        while let Some(before) = self
            .spool
            .as_ref()
            .filter(|spool| !spool.is_drained())
            .map(Spool::replayed)
        {
            self.replay();
            // Stop on a refusal, or when a slice got nowhere (the spool cannot be read).
            let moved = self
                .spool
                .as_ref()
                .is_some_and(|spool| spool.replayed() != before);
            if self.last_refusal.is_some() || !moved {
                break;
            }
        }
    }

    /// Whether batches must go to the spool: it holds batches not yet replayed (they go
    /// first) and the store did not take them just now.
    fn spooling(&mut self) -> bool {
        let Some(spool) = &self.spool else {
            return false;
        };
        if spool.is_drained() {
            return false;
        }
        // A store that refused is asked again after a backoff, not at every batch.
        let backoff = replay_backoff(self.refusals);
        if self.last_refusal.is_none_or(|at| at.elapsed() >= backoff) {
            self.replay();
        }
        self.spool.as_ref().is_some_and(|spool| !spool.is_drained())
    }

    /// Writes what is pending (with a checkpoint when one is due, or `force`d) to the
    /// store, or, when it does not take it, to the spool; when neither does, retries until
    /// one does, for at most `patience` when one is given. Admissions waiting on the batch
    /// are let go once it is written either way, and refused as soon as neither took it.
    /// `Err` carries why, when patience ran out and the batch was given up.
    fn write(&mut self, force: bool, patience: Option<Duration>) -> Result<(), String> {
        let due = force || self.checkpoint_due();
        if self.pending.is_empty() && !due {
            // Nothing new, but what waits in the spool goes in as soon as the store
            // takes it (tried after a backoff).
            self.spooling();
            return Ok(());
        }
        let checkpoint = due.then(|| {
            let mut checkpoint = Checkpoint {
                chain: self.chain.clone(),
                seq: self.seq,
                head: self.head.clone(),
                time_ms: now_ms(SystemTime::now()),
                mac: String::new(),
            };
            checkpoint.mac = self.key.seal(&checkpoint);
            checkpoint
        });
        let started = Instant::now();
        let mut failures = 0u32;
        loop {
            let behind_the_spool = self.spooling();
            let stored = if behind_the_spool {
                Err("the spool holds earlier batches".to_owned())
            } else {
                let limit = write_limit(&self.pending);
                self.target
                    .append(&self.pending, checkpoint.as_ref(), limit)
            };
            let cause = match stored {
                Ok(()) => {
                    self.health.set(AuditState::Ok);
                    break;
                }
                // A commit whose answer was lost may have happened: retrying it would fail
                // on its own rows forever.
                Err(_)
                    if failures > 0
                        && self
                            .target
                            .holds(&self.pending, checkpoint.as_ref(), WRITE_TIMEOUT)
                            == Some(true) =>
                {
                    self.health.set(AuditState::Ok);
                    break;
                }
                Err(cause) => cause,
            };
            if let Some(spool) = &mut self.spool {
                let batch = SpooledBatch {
                    events: std::mem::take(&mut self.pending),
                    checkpoint: checkpoint.clone(),
                };
                let spooled = spool.append(&batch);
                self.pending = batch.events;
                match spooled {
                    Ok(()) => {
                        // The store just failed this batch: the spool's replay waits out a
                        // backoff too, rather than try it again at the next batch.
                        if !behind_the_spool {
                            self.last_refusal = Some(Instant::now());
                            self.refusals = self.refusals.max(1);
                        }
                        if self.health.state() != AuditState::Degraded {
                            warn!(error = %cause, "audit log: the store does not take writes; batches go to the spool until it does");
                        }
                        self.health.set(AuditState::Degraded);
                        break;
                    }
                    Err(error) => {
                        if failures == 0 {
                            error!(%error, "audit log: the spool cannot be written either");
                        }
                    }
                }
            }
            failures += 1;
            self.health.set(AuditState::Failing);
            // Held requests are refused now rather than kept waiting; their admission
            // events are written with the batch when it is, followed by their 503s.
            self.admitted.clear();
            // Once shutdown began, the store gets a last chance, not an unbounded one.
            let patience = patience.or_else(|| {
                self.closing
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .then_some(CLOSE_PATIENCE)
            });
            if patience.is_some_and(|limit| started.elapsed() >= limit) {
                error!(error = %cause, events = self.pending.len(), "audit log: the store refused the last events; they are lost");
                self.pending.clear();
                return Err(cause);
            }
            // Once per failure streak at warn, then quietly: the store is down.
            if failures == 1 {
                warn!(error = %cause, events = self.pending.len(), "audit log: the store refused a batch; retrying until it takes it");
            }
            std::thread::sleep(RETRY_BACKOFF);
        }
        if failures > 0 {
            info!(attempts = failures + 1, "audit log: the batch is written");
        }
        // Losses found while this batch was written are in the next one.
        if self.spool_to_clear
            && self.spool_losses.is_empty()
            && self.health.state() == AuditState::Ok
        {
            self.spool_to_clear = false;
            if let Some(spool) = &mut self.spool {
                clear_replayed(spool);
            }
        }
        for admission in self.admitted.drain(..) {
            admission.durable();
        }
        self.pending.clear();
        if let Some(checkpoint) = checkpoint {
            // One line carrying the whole checkpoint, for log shipping to take off the host;
            // `audit verify --checkpoint` reads it back in either log format. Its target
            // is logged at info whatever the filter ([`CHECKPOINT_TARGET`]).
            info!(
                target: CHECKPOINT_TARGET,
                chain = %checkpoint.chain,
                seq = checkpoint.seq,
                head = %checkpoint.head,
                time_ms = checkpoint.time_ms,
                mac = %checkpoint.mac,
                "{CHECKPOINT_MESSAGE}"
            );
            self.since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
        }
        Ok(())
    }
}

impl AuditLog {
    /// Stores the chain's first event at once, with a checkpoint, within 10 s: what
    /// `portcullis token` does before it changes anything, so that a store that does not
    /// take writes stops the command before the change rather than after it.
    pub fn start_now(&mut self) -> Result<(), AuditError> {
        self.write(true, Some(CLOSE_PATIENCE))
            .map_err(AuditError::Unrecorded)
    }

    /// Records an admin action taken outside the gateway (`portcullis token`), with `cli`
    /// as the acting principal, and stores it at once, within 10 s, with a checkpoint.
    pub fn record_cli_action(&mut self, action: AdminAction) -> Result<(), AuditError> {
        let exchange = Exchange {
            caller: Some(Caller {
                kind: "cli",
                id: None,
                name: std::borrow::Cow::Borrowed("cli"),
                tenant: None,
            }),
            decision: Decision::Allowed,
            admin: true,
            action: Some(action),
            ..Exchange::begin(
                crate::base::context::new_request_id(),
                IpAddr::from([127, 0, 0, 1]),
                "cli",
            )
        };
        if let Some(event) = event::admin_action(&exchange) {
            self.push(event);
        }
        self.write(true, Some(CLOSE_PATIENCE))
            .map_err(AuditError::Unrecorded)
    }
}

impl Sink for AuditLog {
    fn record(&mut self, exchange: &Exchange) {
        self.push(event::request(exchange, &self.redactor));
        if let Some(event) = event::admin_action(exchange) {
            self.push(event);
        }
    }

    fn admit(&mut self, exchange: &Exchange, admission: Admission) -> Option<Admission> {
        self.push(event::admission(exchange));
        self.admitted.push(admission);
        None
    }

    fn flush(&mut self) {
        self.take_trimmed();
        self.take_spool_losses();
        self.name_new_chains();
        // Without patience, the batch is retried until it is written.
        let _ = self.write(false, None);
    }

    fn close(&mut self) {
        self.take_trimmed();
        self.replay_all();
        self.take_spool_losses();
        // What the store refused to the end is logged as lost; shutdown goes on.
        let _ = self.write(true, Some(CLOSE_PATIENCE));
    }
}

/// How long a batch of `events` may take to write ([`WRITE_TIMEOUT`], or longer for one
/// that a store writing [`WRITE_RATE_FLOOR`] bytes a second would need longer for).
fn write_limit(events: &[StoredEvent]) -> Duration {
    // The payload, and about as much again for the columns and the index entries.
    let bytes: usize = events
        .iter()
        .map(|event| 2 * event.payload.len() + 256)
        .sum();
    let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
    WRITE_TIMEOUT.max(Duration::from_millis(bytes / (WRITE_RATE_FLOOR / 1000)))
}

/// How long a replay waits after `refusals` in a row: [`RETRY_BACKOFF`], doubled after
/// each further one, up to [`REPLAY_BACKOFF_MAX`].
fn replay_backoff(refusals: u32) -> Duration {
    RETRY_BACKOFF
        .saturating_mul(1 << refusals.saturating_sub(1).min(4))
        .min(REPLAY_BACKOFF_MAX)
}

/// Empties `spool`, all of it replayed into the store; whether it could.
fn clear_replayed(spool: &mut Spool) -> bool {
    match spool.clear() {
        Ok(()) => {
            info!("audit log: the spool is replayed into the store");
            true
        }
        Err(error) => {
            error!(%error, "audit log: cannot empty the replayed spool");
            false
        }
    }
}

/// The id of a chain started at `started`: 16 bytes in hex, the time in milliseconds
/// (6 bytes, big-endian) and then 10 random ones. A chain started later sorts later, so the
/// chain being written sits at the end of the events' key index, where SQLite finds the
/// last page without a search from the root. Random ids put each new chain among the
/// older ones: with eight earlier chains in the file, 3 300 more instructions an event
/// (callgrind, bench/RESULTS.md, 2026-11-28). Chains with random ids, from earlier builds,
/// sort after these until retention has deleted their events.
fn new_chain_id(started: SystemTime) -> String {
    let millis = u64::try_from(now_ms(started)).unwrap_or(0).to_be_bytes();
    let mut id = [0u8; 16];
    id[..6].copy_from_slice(&millis[2..]);
    id[6..].copy_from_slice(&rand::random::<[u8; 10]>());
    hex::encode(&id)
}

/// `at` in Unix milliseconds.
pub fn now_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    #[test]
    fn a_store_that_keeps_refusing_is_asked_less_and_less_often() {
        let waits: Vec<u128> = (0..8).map(|n| replay_backoff(n).as_millis()).collect();
        assert_eq!(waits, [500, 500, 1000, 2000, 4000, 8000, 8000, 8000]);
        assert_eq!(replay_backoff(u32::MAX), REPLAY_BACKOFF_MAX);
    }

    /// A corrupted spool record found at open is recorded as a `spool_loss` event, and the
    /// spool is emptied only once that event is in the store: a process stopped before
    /// then finds the record again.
    #[test]
    fn the_spool_is_emptied_only_once_its_losses_are_stored() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path());
        let event = StoredEvent {
            chain_id: "c".repeat(32),
            seq: 1,
            payload: "{}".to_owned(),
            ..StoredEvent::default()
        };
        let batch = SpooledBatch {
            events: vec![event],
            checkpoint: None,
        };
        spool.append(&batch).unwrap();
        let path = dir.path().join(spool::SPOOL_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&path, &bytes).unwrap();

        let key = ChainKey::new(SecretString::from("k".repeat(32)));
        let location = StoreLocation::DataDir(dir.path().to_owned());
        let closing = Arc::new(AtomicBool::new(false));
        let mut log = AuditLog::open(&location, Some(dir.path()), key, closing).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), bytes.len() as u64);
        log.flush();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let stored = log
            .target
            .runtime
            .block_on(log.target.store.events(&log.chain, 0, 10))
            .unwrap();
        let kinds: Vec<&str> = stored.iter().map(|event| event.kind.as_str()).collect();
        assert_eq!(kinds, [CHAIN_START, SPOOL_LOSS]);
    }

    #[test]
    fn a_chain_started_later_sorts_later() {
        let first = UNIX_EPOCH + Duration::from_millis(1_795_184_538_007);
        let ids: Vec<String> = [0, 1, 2, 3_600_000]
            .iter()
            .map(|later| new_chain_id(first + Duration::from_millis(*later)))
            .collect();
        assert!(ids.is_sorted(), "{ids:?}");
        assert!(ids[0].starts_with("01a1f9563197"), "{}", ids[0]);
        // A cursor names its chain by id (query::CURSOR_PATTERN).
        for id in &ids {
            let cursor = query::Cursor::parse(&format!("1-{id}-2"));
            assert_eq!(cursor.map(|c| c.chain_id), Some(id.clone()));
        }
        // Started in the same millisecond, two chains still differ.
        assert_ne!(new_chain_id(first), new_chain_id(first));
    }
}
