//! One atomic batch across binds, as a protocol read top to bottom in [`Batch::run`]:
//!
//! 0. [`Batch::open_decider`]: the batch's `begun` row is committed on the decider, then the
//!    decider's batch transaction opens and holds that row until the decision, so that
//!    `recover` cannot record `abort` while this coordinator can still commit.
//! 1. [`Batch::prepare_participants`]: every other atomic participant, in parallel (at most
//!    `parallelism` at once): open the batch transaction, take the lock, check the plan still
//!    holds, run its steps. PostgreSQL binds then `PREPARE TRANSACTION` (verified) and release
//!    their connection; MySQL data-only binds `XA PREPARE` and keep their session; SQLite
//!    binds keep their transaction, and write lock, open.
//! 2. [`Batch::decide`]: the decider runs its own steps, then the non-atomic MySQL binds run
//!    theirs under marks, then the decider turns its row to `commit` (with the decision
//!    record) and commits. That COMMIT is the decision. Any failure before it goes through
//!    [`Batch::fail_before_decision`]: every bind rolled back or undone, `abort` recorded.
//! 3. [`Batch::commit_everyone`]: `COMMIT PREPARED` (PostgreSQL, over a new connection),
//!    `XA COMMIT` (MySQL), `COMMIT` (SQLite), in parallel; marks cleared; decision settled.
//!
//! A decider COMMIT that fails because the connection was lost leaves the batch in doubt
//! ([`Batch::commit_unknown`]): nothing is rolled back on that error; `orchestrate recover`
//! reads the decision later. Batches of MySQL binds only: [`Batch::run_nonatomic_only`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use orchestrate_core::Direction;
use orchestrate_driver::{
    Atomic, Backend, BatchTransaction, BindConnection, Decider, DecisionRecord, DriverError,
    Endpoint, Mysql, Participant, Postgres, RedoStep, Resolve, Sqlite, TransactionId, TwoPhase,
};
use rayon::prelude::*;

use crate::nonatomic;
use crate::signals;
use crate::work::crash_point;
use crate::work::{check_signal, run_steps};
pub use crate::work::{BatchError, BindWork};

/// Where a bind ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindOutcome {
    /// The bind committed the batch.
    Committed,
    /// The bind's part was rolled back (or never began): it is as it was.
    RolledBack,
    /// A non-atomic (MySQL) bind whose migrations of this batch committed and were then
    /// reverted with their undo SQL, newest first.
    Undone {
        /// How many migrations were reverted.
        count: usize,
    },
    /// Prepared and not resolved: `orchestrate recover` will end it.
    LeftPrepared {
        /// The prepared transaction's id.
        gid: String,
    },
    /// What happened is not known or needs a person.
    Attention {
        /// What is known, and what to do.
        detail: String,
    },
}

/// How a batch ended.
#[derive(Debug)]
pub enum Verdict {
    /// Every bind committed.
    Committed,
    /// The batch failed before the decision and every bind is as it was.
    RolledBack {
        /// The first failure.
        error: BatchError,
    },
    /// Something needs a person or `orchestrate recover`.
    NeedsAttention {
        /// The failure, when one caused it.
        error: Option<BatchError>,
        /// What is known, and what to do.
        detail: String,
    },
}

#[derive(Debug)]
pub struct BatchReport {
    /// The batch's id, as recorded in every bind's history (`20261124T221000Z-0a1b2c3d`).
    pub batch_id: String,
    /// The bind whose own transaction decided the batch.
    pub decider: String,
    /// Up (upgrade) or down (downgrade).
    pub direction: Direction,
    /// Every bind of the batch, in the order of the works given.
    pub binds: Vec<(String, BindOutcome)>,
    /// Milliseconds each bind spent in its phases (connect, run, prepare, commit).
    pub timings: BTreeMap<String, u64>,
    /// Milliseconds each atomic bind that committed held its batch transaction, and with it
    /// every lock its migrations took: from the start of its batch (its first lock) to the end
    /// of its COMMIT (PREPARED). What a bind's application waits for at worst.
    pub lock_holds: BTreeMap<String, u64>,
    /// Further failures of the first phase beyond the one in the verdict.
    pub other_errors: Vec<String>,
    pub verdict: Verdict,
}

/// Where progress goes: lines, a bar per phase, or nowhere.
pub trait Progress: Sync {
    /// A line worth showing.
    fn line(&self, text: &str);
    /// A line about one bind that went as planned (prepared, committed): a printer may leave
    /// these out of a large batch's output. Failures and attention go through `line`.
    fn bind_line(&self, text: &str) {
        self.line(text)
    }
    /// A phase over `total` binds begins.
    fn phase(&self, name: &str, total: usize);
    /// One bind of the current phase is done.
    fn tick(&self);
}

/// How a batch runs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub preferred_decider: Option<String>,
    pub lock_timeout: Duration,
    /// How many binds work at once in the first and last phases.
    pub parallelism: usize,
    /// How many PostgreSQL participants keep their session from PREPARE to COMMIT PREPARED
    /// (the others close it once prepared and connect again to commit).
    pub keep_connections: usize,
}

/// A new batch id: UTC time and 32 random bits, `20261124T221000Z-0a1b2c3d`.
pub fn new_batch_id() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let compact: String = now.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    format!("{compact}-{:08x}", rand::random::<u32>())
}

fn now_text() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The decider: the configured one when it takes part and is atomic, else the first SQLite
/// participant (SQLite cannot prepare, so it must be the last resource), else the first atomic
/// participant. `None` when no bind of the batch is atomic (only MySQL binds).
pub fn choose_decider(works: &[BindWork], preferred: Option<&str>) -> Option<usize> {
    let atomic = |w: &BindWork| w.endpoint.backend.is_atomic();
    preferred
        .and_then(|p| works.iter().position(|w| w.endpoint.bind == p && atomic(w)))
        .or_else(|| {
            works
                .iter()
                .position(|w| w.endpoint.backend == Backend::Sqlite)
        })
        .or_else(|| works.iter().position(atomic))
}

/// Whether a MySQL bind's share joins the batch as a two-phase participant through XA: every
/// one of its migrations says it changes data only (`data_only = true` in metadata.toml).
/// It needs a PostgreSQL or SQLite bind in the batch to decide: MySQL binds alone run
/// statement by statement, data-only or not.
pub fn is_xa(works: &[BindWork], i: usize) -> bool {
    let work = &works[i];
    work.endpoint.backend == Backend::Mysql
        && !work.plan.steps.is_empty()
        && work.plan.steps.iter().all(|s| s.data_only)
        && works.iter().any(|w| w.endpoint.backend.is_atomic())
}

/// Whether a bind's share of a batch can be rolled back until the decision.
pub fn is_atomic(works: &[BindWork], i: usize) -> bool {
    works[i].endpoint.backend.is_atomic() || is_xa(works, i)
}

/// What a bind promises in a batch whose decider is `decider`, for plans and `--sql`.
pub fn guarantee(works: &[BindWork], i: usize, decider: Option<usize>) -> &'static str {
    match works[i].endpoint.backend {
        Backend::Postgres if Some(i) == decider => "atomic: decider",
        Backend::Postgres => "atomic: two-phase commit",
        Backend::Sqlite if Some(i) == decider => "atomic: last resource (decider)",
        Backend::Sqlite => "atomic: held open until the decision, redone by recover",
        Backend::Mysql if is_xa(works, i) => {
            "atomic: XA two-phase commit (every migration is data_only)"
        }
        Backend::Mysql => "NOT atomic: DDL commits per statement; undone with down SQL on failure",
    }
}

/// What a participant holds after the first phase.
enum Held {
    /// A SQLite bind's open transaction, and the versions applied there before the batch.
    Open {
        conn: Box<Sqlite>,
        before: Vec<String>,
    },
    /// A PostgreSQL bind's prepared transaction; its connection is released.
    Prepared { gid: String },
    /// A PostgreSQL bind's prepared transaction, and the session that prepared it, kept to
    /// end it (under [`RunOptions::keep_connections`]). Should that session fail, a fresh
    /// one ends it, as for [`Held::Prepared`]: a prepared transaction belongs to no session.
    PreparedKept { conn: Box<Postgres>, gid: String },
    /// A PostgreSQL bind whose connection was lost while PREPARE was under way.
    ReplyLost { gid: String },
    /// A MySQL bind's prepared XA transaction, ended later on the same session: another
    /// session cannot end it while this one is attached (MariaDB answers XAER_NOTA).
    PreparedHere { conn: Box<Mysql>, gid: String },
}

/// One participant after the first phase: its index, its result (`None`: skipped because
/// another bind had failed), the milliseconds it took, and when it began (its first lock).
type PhaseOne = (usize, Option<Result<Held, Box<Failed>>>, u64, Instant);

/// A participant's first phase that failed, with what may need undoing.
struct Failed {
    error: BatchError,
    /// The transaction id, when the failure came at or after PREPARE was sent.
    maybe_prepared: Option<String>,
    /// The connection was lost while PREPARE was under way: whether it happened is unknown
    /// (the server may still be finishing it), so the bind is left to `recover`.
    prepare_reply_lost: bool,
}

fn direction_past(direction: Direction) -> &'static str {
    match direction {
        Direction::Up => "applied",
        Direction::Down => "reverted",
    }
}

fn decision_record(
    works: &[BindWork],
    batch_id: &str,
    decider: &str,
    direction: Direction,
    before: &BTreeMap<usize, Vec<String>>,
    decider_xid: Option<u64>,
) -> DecisionRecord {
    DecisionRecord {
        batch_id: batch_id.into(),
        direction: direction.to_string(),
        decider: decider.into(),
        participants: works
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let is_decider = w.endpoint.bind == decider;
                Participant {
                    bind: w.endpoint.bind.clone(),
                    backend: w.endpoint.backend,
                    gid: (!is_decider
                        && (w.endpoint.backend == Backend::Postgres || is_xa(works, i)))
                    .then(|| participant_gid(batch_id, decider, w, decider_xid)),
                    redo: (!is_decider && w.endpoint.backend == Backend::Sqlite).then(|| {
                        w.plan
                            .steps
                            .iter()
                            .map(|s| RedoStep {
                                version: s.version.to_string(),
                                name: s.name.clone(),
                                sql: s.sql.clone(),
                                checksum: s.checksum.clone(),
                                down_sql: s.down_sql.clone(),
                            })
                            .collect()
                    }),
                    before: before.get(&i).cloned(),
                }
            })
            .collect(),
    }
}

/// Runs one batch.
pub fn run_batch(
    works: Vec<BindWork>,
    direction: Direction,
    options: &RunOptions,
    progress: &dyn Progress,
) -> BatchReport {
    // From here a signal asks to stop cleanly: what is under way must be finished or undone.
    signals::writing();
    match choose_decider(&works, options.preferred_decider.as_deref()) {
        Some(decider) => Batch::new(&works, decider, direction, options, progress).run(),
        // MySQL binds alone: the first one records the decision.
        None => Batch::new(&works, 0, direction, options, progress).run_nonatomic_only(),
    }
}

/// The transaction id a participant prepares as. A PostgreSQL participant's names the
/// decider's batch transaction too, so that `recover` can ask the decider's server whether the
/// decision committed, whatever its row says; an XA id has no room for it.
fn participant_gid(
    batch_id: &str,
    decider: &str,
    work: &BindWork,
    decider_xid: Option<u64>,
) -> String {
    let id = TransactionId::new(batch_id, decider, &work.endpoint.bind);
    match work.endpoint.backend {
        Backend::Postgres => id.with_decider_xid(decider_xid).to_string(),
        _ => id.to_string(),
    }
}

/// One batch under way: what every phase needs. Its methods are the phases, in the order
/// [`Batch::run`] calls them.
struct Batch<'a> {
    id: String,
    works: &'a [BindWork],
    direction: Direction,
    options: &'a RunOptions,
    progress: &'a dyn Progress,
    pool: &'static rayon::ThreadPool,
    /// The index of the bind whose row decides the batch.
    decider: usize,
    /// When the batch's migrations ran, as recorded in their history.
    at: String,
}

/// What the participants hold after [`Batch::prepare_participants`].
struct Prepared {
    held: Vec<(usize, Held)>,
    /// Participants whose PREPARE was sent and failed: rolled back if it happened anyway.
    maybe_prepared: Vec<(usize, String)>,
    errors: Vec<BatchError>,
    /// SQLite participants: the versions applied before the batch (for the decision record).
    before: BTreeMap<usize, Vec<String>>,
    timings: BTreeMap<String, u64>,
    /// When each participant's batch began (its first lock).
    locked_at: BTreeMap<usize, Instant>,
}

impl<'a> Batch<'a> {
    fn new(
        works: &'a [BindWork],
        decider: usize,
        direction: Direction,
        options: &'a RunOptions,
        progress: &'a dyn Progress,
    ) -> Batch<'a> {
        Batch {
            id: new_batch_id(),
            works,
            direction,
            options,
            progress,
            pool: crate::workers(options.parallelism.max(1)),
            decider,
            at: now_text(),
        }
    }

    fn decider_name(&self) -> &str {
        &self.works[self.decider].endpoint.bind
    }

    fn nonatomic(&self) -> Vec<usize> {
        (0..self.works.len())
            .filter(|i| !is_atomic(self.works, *i))
            .collect()
    }

    /// A report with every bind rolled back and the verdict `Committed`, to be filled in.
    fn report(&self) -> BatchReport {
        BatchReport {
            batch_id: self.id.clone(),
            decider: self.decider_name().to_string(),
            direction: self.direction,
            binds: self
                .works
                .iter()
                .map(|w| (w.endpoint.bind.clone(), BindOutcome::RolledBack))
                .collect(),
            timings: BTreeMap::new(),
            lock_holds: BTreeMap::new(),
            other_errors: Vec::new(),
            verdict: Verdict::Committed,
        }
    }

    /// The protocol: open the decider, prepare the participants, run the decider and the
    /// non-atomic binds, decide, commit everyone. One failure path before the decision
    /// ([`Batch::fail_before_decision`]); after it, everything commits or is left to recover.
    fn run(&self) -> BatchReport {
        self.progress.line(&format!(
            "batch {}: {} bind(s), decider `{}`",
            self.id,
            self.works.len(),
            self.decider_name()
        ));
        let started = Instant::now();
        let mut decider_conn = match self.open_decider() {
            Ok(conn) => conn,
            Err(error) => return self.abort(self.report(), Vec::new(), Vec::new(), error.into()),
        };
        let decider_xid = decider_conn.transaction_xid();
        let mut prepared = self.prepare_participants(decider_xid);
        let mut report = self.report();
        report.timings = std::mem::take(&mut prepared.timings);
        if prepared.errors.is_empty() && signals::interrupted() {
            prepared.errors.push(BatchError::Interrupted);
        }
        if !prepared.errors.is_empty() {
            let first = prepared.errors.remove(0);
            report.other_errors = prepared.errors.iter().map(|e| e.to_string()).collect();
            return self.fail_before_decision(decider_conn, report, prepared, Vec::new(), first);
        }
        let record = decision_record(
            self.works,
            &self.id,
            self.decider_name(),
            self.direction,
            &prepared.before,
            decider_xid,
        );
        crash_point!("before-decision");
        let (running, decided) = self.decide(&mut *decider_conn, &record);
        let failure = match decided {
            Err(error) => Some(error),
            Ok(()) => match decider_conn.commit() {
                Ok(()) => None,
                Err(error) if error.is_connection_lost() => {
                    drop(running);
                    drop(decider_conn);
                    return self.commit_unknown(report, &prepared.held, error);
                }
                Err(error) => Some(error.into()),
            },
        };
        if let Some(error) = failure {
            return self.fail_before_decision(decider_conn, report, prepared, running, error);
        }
        let decider_ms = started.elapsed().as_millis() as u64;
        report
            .timings
            .insert(self.decider_name().to_string(), decider_ms);
        report
            .lock_holds
            .insert(self.decider_name().to_string(), decider_ms);
        crash_point!("after-decision");
        self.progress.line(&format!(
            "  {}: {} migration(s) {}, decision committed",
            self.decider_name(),
            self.works[self.decider].plan.steps.len(),
            direction_past(self.direction)
        ));
        self.commit_everyone(report, prepared, running, decider_conn, &record)
    }

    /// Phase 0: the batch's row, committed before anything else (from here on the batch is
    /// decided by whoever turns it first, this run or `recover`), then the decider's batch
    /// transaction, which holds that row until the decision.
    fn open_decider(&self) -> Result<Box<dyn BatchTransaction>, DriverError> {
        let endpoint = &self.works[self.decider].endpoint;
        let mut conn = BindConnection::connect(endpoint, true, self.options.lock_timeout)
            .and_then(BindConnection::into_batch_transaction)?;
        conn.begin_decision(&self.id, &now_text())?;
        if let Err(e) = conn.begin_deciding(&self.id) {
            conn.rollback();
            // Best effort (see record_abort); the error that stopped the batch is reported.
            let _ = record_abort(&mut *conn, &self.id);
            return Err(e);
        }
        Ok(conn)
    }

    /// Phase 1: every other atomic participant, in parallel, up to PREPARE (or up to holding
    /// its transaction open). Once one fails, those not yet started do not start.
    fn prepare_participants(&self, decider_xid: Option<u64>) -> Prepared {
        let participants: Vec<usize> = (0..self.works.len())
            .filter(|i| *i != self.decider && is_atomic(self.works, *i))
            .collect();
        let failed_flag = AtomicBool::new(false);
        let keep = AtomicUsize::new(self.options.keep_connections);
        self.progress.phase("prepare", participants.len());
        let results: Vec<PhaseOne> = self.pool.install(|| {
            participants
                .par_iter()
                .map(|&i| {
                    if failed_flag.load(Ordering::SeqCst) || signals::interrupted() {
                        return (i, None, 0, Instant::now());
                    }
                    let started = Instant::now();
                    let share = Share {
                        work: &self.works[i],
                        batch_id: &self.id,
                        decider: self.decider_name(),
                        direction: self.direction,
                        at: &self.at,
                        decider_xid,
                        keep: &keep,
                    };
                    let result = phase_one(&share, self.options.lock_timeout);
                    match &result {
                        Ok(_) => self.progress.bind_line(&self.prepared_line(i)),
                        Err(_) => failed_flag.store(true, Ordering::SeqCst),
                    }
                    self.progress.tick();
                    (
                        i,
                        Some(result),
                        started.elapsed().as_millis() as u64,
                        started,
                    )
                })
                .collect()
        });
        let mut prepared = Prepared {
            held: Vec::new(),
            maybe_prepared: Vec::new(),
            errors: Vec::new(),
            before: BTreeMap::new(),
            timings: BTreeMap::new(),
            locked_at: BTreeMap::new(),
        };
        for (i, result, ms, started) in results {
            prepared.locked_at.insert(i, started);
            prepared
                .timings
                .insert(self.works[i].endpoint.bind.clone(), ms);
            match result {
                Some(Ok(h)) => {
                    if let Held::Open { before: b, .. } = &h {
                        prepared.before.insert(i, b.clone());
                    }
                    prepared.held.push((i, h))
                }
                Some(Err(f)) => {
                    let f = *f;
                    if let Some(gid) = f.maybe_prepared {
                        if f.prepare_reply_lost {
                            prepared.held.push((i, Held::ReplyLost { gid }));
                        } else {
                            prepared.maybe_prepared.push((i, gid));
                        }
                    }
                    prepared.errors.push(f.error);
                }
                None => {}
            }
        }
        prepared
    }

    fn prepared_line(&self, i: usize) -> String {
        let work = &self.works[i];
        format!(
            "  {}: {} migration(s) {}, {}",
            work.endpoint.bind,
            work.plan.steps.len(),
            direction_past(self.direction),
            if work.endpoint.backend != Backend::Sqlite {
                "prepared"
            } else {
                "holding its transaction open"
            }
        )
    }

    /// Phase 2: the decider's own steps, then the non-atomic binds (last: the decision is
    /// made only if they succeed), then the decision row turned to `commit`, inside the
    /// decider's transaction. Returns the non-atomic binds reached, and whether all went well.
    fn decide(
        &self,
        decider_conn: &mut dyn BatchTransaction,
        record: &DecisionRecord,
    ) -> (Vec<nonatomic::Running>, Result<(), BatchError>) {
        let decider = &self.works[self.decider];
        let mut running = Vec::new();
        let decided = run_steps(
            &mut *decider_conn,
            decider,
            &self.id,
            self.direction,
            &self.at,
        )
        .and_then(|_| {
            let (ran, result) = self.nonatomic_phase(&self.nonatomic());
            running = ran;
            result
        })
        // Deferred constraints (and the triggers they fire) are checked before the decision
        // is written, so that nothing a migration deferred runs after its read-back.
        .and_then(|()| Ok(decider_conn.prepare_to_decide(&last_step_name(decider))?))
        .and_then(|()| Ok(decider_conn.decide_commit(record, &now_text())?))
        .and_then(|()| check_signal());
        (running, decided)
    }

    /// The decider's COMMIT failed because its connection was lost: whether the batch
    /// committed is unknown. Nothing is rolled back; `recover` finishes it either way.
    fn commit_unknown(
        &self,
        mut report: BatchReport,
        held: &[(usize, Held)],
        error: DriverError,
    ) -> BatchReport {
        let nonatomic = self.nonatomic();
        for (i, (_, outcome)) in report.binds.iter_mut().enumerate() {
            *outcome = if i == self.decider {
                BindOutcome::Attention {
                    detail: "the decider's COMMIT may or may not have happened".into(),
                }
            } else {
                match held.iter().find(|(j, _)| *j == i) {
                    Some((_, Held::Prepared { gid }))
                    | Some((_, Held::PreparedKept { gid, .. }))
                    | Some((_, Held::PreparedHere { gid, .. })) => {
                        BindOutcome::LeftPrepared { gid: gid.clone() }
                    }
                    _ if nonatomic.contains(&i) => BindOutcome::Attention {
                        detail: "NOT atomic: its migrations of this batch are committed and marked; `orchestrate recover` keeps them if the batch was decided, or reverts them".into(),
                    },
                    _ => BindOutcome::Attention {
                        detail: "its open transaction was dropped; `orchestrate recover` re-applies it if the batch was decided".into(),
                    },
                }
            };
        }
        report.verdict = Verdict::NeedsAttention {
            detail: format!(
                "the connection to the decider `{}` was lost during its COMMIT, so whether batch {} committed is unknown. Nothing was rolled back. Run `orchestrate recover` to finish it either way",
                self.decider_name(),
                self.id
            ),
            error: Some(error.into()),
        };
        report
    }

    /// The one failure path before the decision: the decider rolls back and records `abort`,
    /// the non-atomic binds are undone, every participant is rolled back.
    fn fail_before_decision(
        &self,
        mut decider_conn: Box<dyn BatchTransaction>,
        report: BatchReport,
        prepared: Prepared,
        running: Vec<nonatomic::Running>,
        error: BatchError,
    ) -> BatchReport {
        decider_conn.rollback();
        if let Err(e) = record_abort(&mut *decider_conn, &self.id) {
            self.progress.line(&format!(
                "  could not record `abort` on the decider `{}` ({e}); the decision was not taken, so nothing commits anywhere, and `orchestrate recover` records it",
                self.decider_name()
            ));
        }
        let undone = self.undo_all(running);
        let report = self.abort(report, prepared.held, prepared.maybe_prepared, error);
        with_outcomes(report, undone, true)
    }

    /// Phase 3, after the decision: every participant commits, in parallel; the non-atomic
    /// binds' batch marks are cleared; the decision is marked settled when all is done.
    fn commit_everyone(
        &self,
        mut report: BatchReport,
        prepared: Prepared,
        running: Vec<nonatomic::Running>,
        mut decider_conn: Box<dyn BatchTransaction>,
        record: &DecisionRecord,
    ) -> BatchReport {
        let Prepared {
            held, locked_at, ..
        } = prepared;
        self.progress.phase("commit", held.len());
        let first_commit = AtomicBool::new(true);
        let committed: Vec<(usize, BindOutcome, Option<String>, u64)> = self.pool.install(|| {
            held.into_par_iter()
                .map(|(i, h)| {
                    let started = Instant::now();
                    let (outcome, problem) = self.commit_one(i, h);
                    if outcome == BindOutcome::Committed
                        && first_commit.swap(false, Ordering::SeqCst)
                    {
                        crash_point!("after-first-commit");
                    }
                    self.progress.tick();
                    (i, outcome, problem, started.elapsed().as_millis() as u64)
                })
                .collect()
        });
        let mut attention = Vec::new();
        let mut outcomes: BTreeMap<usize, BindOutcome> = BTreeMap::new();
        for (i, outcome, problem, ms) in committed {
            let bind = &self.works[i].endpoint.bind;
            *report.timings.entry(bind.clone()).or_default() += ms;
            if let (BindOutcome::Committed, Some(at)) = (&outcome, locked_at.get(&i)) {
                // Measured here, after every commit: at most the commit phase later than
                // the bind's own COMMIT PREPARED, never earlier.
                report
                    .lock_holds
                    .insert(bind.clone(), at.elapsed().as_millis() as u64);
            }
            outcomes.insert(i, outcome);
            attention.extend(problem);
        }
        for mut r in running {
            let outcome = match r.conn.clear_mark(&r.batch_mark) {
                Ok(()) => BindOutcome::Committed,
                Err(e) => {
                    let detail = format!("committed, but its batch mark could not be cleared ({e}); `orchestrate recover` clears it");
                    attention.push(format!("{}: {detail}", self.works[r.index].endpoint.bind));
                    BindOutcome::Attention { detail }
                }
            };
            outcomes.insert(r.index, outcome);
        }
        for (i, (_, outcome)) in report.binds.iter_mut().enumerate() {
            *outcome = outcomes.remove(&i).unwrap_or(BindOutcome::Committed);
        }
        if signals::interrupted() {
            self.progress.line(
                "  interrupted after the decision: finished committing every bind before stopping",
            );
        }
        if !attention.is_empty() {
            report.verdict = Verdict::NeedsAttention {
                error: None,
                detail: format!(
                    "batch {} was decided (committed on `{}`) but not every bind finished: {}",
                    self.id,
                    self.decider_name(),
                    attention.join("; ")
                ),
            };
        } else if let Err(e) = decider_conn.settle_decision(record, &now_text()) {
            // Harmless: `recover` finds every participant finished and settles it then.
            tracing::warn!(batch = %self.id, error = %e, "the batch committed everywhere, but it could not be marked settled on its decider");
        }
        report
    }

    /// Commits one participant after the decision. Returns its outcome and, when it did not
    /// simply commit, what went wrong.
    fn commit_one(&self, i: usize, held: Held) -> (BindOutcome, Option<String>) {
        let endpoint = &self.works[i].endpoint;
        let timeout = self.options.lock_timeout;
        let problem = |outcome: &BindOutcome, e: &DriverError| {
            (*outcome != BindOutcome::Committed).then(|| format!("{}: {e}", endpoint.bind))
        };
        match held {
            Held::Prepared { gid } => {
                let first =
                    Postgres::connect(endpoint, timeout).and_then(|mut c| c.commit_prepared(&gid));
                match first {
                    Ok(()) => (BindOutcome::Committed, None),
                    Err(e) => {
                        let outcome = resolve_prepared(endpoint, &gid, &self.id, true, timeout);
                        let problem = problem(&outcome, &e);
                        (outcome, problem)
                    }
                }
            }
            Held::PreparedKept { mut conn, gid } => match conn.commit_prepared(&gid) {
                Ok(()) => (BindOutcome::Committed, None),
                Err(e) => {
                    drop(conn);
                    let outcome = resolve_prepared(endpoint, &gid, &self.id, true, timeout);
                    let problem = problem(&outcome, &e);
                    (outcome, problem)
                }
            },
            Held::PreparedHere { mut conn, gid } => match conn.commit_prepared(&gid) {
                Ok(()) => (BindOutcome::Committed, None),
                Err(e) => {
                    drop(conn);
                    let outcome = resolve_prepared_later(endpoint, &gid, &self.id, true, timeout);
                    let problem = problem(&outcome, &e);
                    (outcome, problem)
                }
            },
            Held::ReplyLost { gid } => (
                BindOutcome::LeftPrepared { gid: gid.clone() },
                Some(format!(
                    "{}: the reply to PREPARE TRANSACTION {gid} was lost",
                    endpoint.bind
                )),
            ),
            Held::Open { mut conn, .. } => match conn.commit() {
                Ok(()) => (BindOutcome::Committed, None),
                Err(e) => (
                    BindOutcome::Attention {
                        detail: format!("COMMIT failed after the decision ({e}); run `orchestrate recover` to re-apply it"),
                    },
                    Some(format!("{}: {e}", endpoint.bind)),
                ),
            },
        }
    }

    /// Rolls back every participant after a failure before the decision.
    fn abort(
        &self,
        mut report: BatchReport,
        held: Vec<(usize, Held)>,
        maybe_prepared: Vec<(usize, String)>,
        error: BatchError,
    ) -> BatchReport {
        self.progress.line(&format!("  failed: {error}"));
        for other in &report.other_errors {
            self.progress.line(&format!("  failed too: {other}"));
        }
        self.progress.line("  rolling back every bind");
        let mut todo: Vec<(usize, Held)> = held;
        todo.extend(
            maybe_prepared
                .into_iter()
                .map(|(i, gid)| (i, Held::Prepared { gid })),
        );
        let undone: Vec<(usize, BindOutcome)> = self.pool.install(|| {
            todo.into_par_iter()
                .map(|(i, h)| (i, self.roll_back_one(i, h)))
                .collect()
        });
        let mut outcomes: BTreeMap<usize, BindOutcome> = undone.into_iter().collect();
        // The bind whose migration left the batch's transaction is not "as it was".
        if let BatchError::Bind(DriverError::LeftTransaction { bind, name }) = &error {
            if let Some(i) = self.works.iter().position(|w| &w.endpoint.bind == bind) {
                outcomes.insert(
                    i,
                    BindOutcome::Attention {
                        detail: format!("migration {name} ended the batch's transaction here: what it ran may be committed; check this bind by hand"),
                    },
                );
            }
        }
        for (i, (_, outcome)) in report.binds.iter_mut().enumerate() {
            *outcome = outcomes.remove(&i).unwrap_or(BindOutcome::RolledBack);
        }
        report.verdict = abort_verdict(&report, error);
        report
    }

    /// Rolls back one participant before the decision.
    fn roll_back_one(&self, i: usize, held: Held) -> BindOutcome {
        let endpoint = &self.works[i].endpoint;
        let timeout = self.options.lock_timeout;
        match held {
            Held::Open { mut conn, .. } => {
                conn.rollback();
                BindOutcome::RolledBack
            }
            Held::ReplyLost { gid } => BindOutcome::Attention {
                detail: format!("the reply to PREPARE TRANSACTION {gid} was lost, so whether it is prepared is unknown; the batch is recorded as aborted, so `orchestrate recover` rolls it back if it is there"),
            },
            Held::Prepared { gid } => resolve_prepared(endpoint, &gid, &self.id, false, timeout),
            Held::PreparedKept { mut conn, gid } => match conn.rollback_prepared(&gid) {
                Ok(()) => BindOutcome::RolledBack,
                Err(_) => {
                    drop(conn);
                    resolve_prepared(endpoint, &gid, &self.id, false, timeout)
                }
            },
            Held::PreparedHere { mut conn, gid } => match conn.rollback_prepared(&gid) {
                Ok(()) => BindOutcome::RolledBack,
                Err(_) => {
                    drop(conn);
                    resolve_prepared_later(endpoint, &gid, &self.id, false, timeout)
                }
            },
        }
    }

    /// Runs these non-atomic (MySQL) binds' shares, in parallel. Returns every bind that was
    /// reached (to be committed or undone) and the first failure, if any.
    fn nonatomic_phase(
        &self,
        indices: &[usize],
    ) -> (Vec<nonatomic::Running>, Result<(), BatchError>) {
        if indices.is_empty() {
            return (Vec::new(), Ok(()));
        }
        self.progress.phase("non-atomic", indices.len());
        // Once one bind has failed, binds not yet started do not start: less to undo.
        let failed = AtomicBool::new(false);
        let results: Vec<Result<nonatomic::Running, Box<nonatomic::Failure>>> =
            self.pool.install(|| {
                indices
                    .par_iter()
                    .filter(|_| !failed.load(Ordering::SeqCst))
                    .map(|&i| {
                        let started = Instant::now();
                        let result = nonatomic::run(
                            i,
                            &self.works[i],
                            &self.id,
                            self.decider_name(),
                            self.direction,
                            self.options.lock_timeout,
                            &self.at,
                        );
                        match &result {
                            Err(_) => failed.store(true, Ordering::SeqCst),
                            Ok(_) => self.progress.bind_line(&format!(
                                "  {}: {} migration(s) {} and committed (NOT atomic: undone if the batch fails), {} ms",
                                self.works[i].endpoint.bind,
                                self.works[i].plan.steps.len(),
                                direction_past(self.direction),
                                started.elapsed().as_millis()
                            )),
                        }
                        self.progress.tick();
                        result
                    })
                    .collect()
            });
        let mut running = Vec::new();
        let mut first: Option<BatchError> = None;
        for result in results {
            match result {
                Ok(r) => running.push(r),
                Err(failure) => {
                    let nonatomic::Failure { error, reached } = *failure;
                    running.extend(reached);
                    if first.is_none() {
                        first = Some(error);
                    } else {
                        self.progress.line(&format!("  failed too: {error}"));
                    }
                }
            }
        }
        (running, first.map_or(Ok(()), Err))
    }

    /// Undoes what the non-atomic binds did in this batch, newest first on each bind, and
    /// settles their batch marks. Returns each bind's outcome.
    fn undo_all(&self, running: Vec<nonatomic::Running>) -> Vec<(usize, BindOutcome)> {
        if running.is_empty() {
            return Vec::new();
        }
        self.progress
            .line("  undoing the non-atomic binds' migrations of this batch, newest first");
        self.pool.install(|| {
            running
                .into_par_iter()
                .map(|mut r| {
                    let bind = &self.works[r.index].endpoint.bind;
                    if let Some(partial) = &r.partial {
                        let detail = format!(
                            "NOT rolled back: {}. The {} migration(s) this batch completed before it here stay until then; after `orchestrate resolve`, `orchestrate recover` undoes them",
                            partial.describe().replace("<bind>", bind),
                            r.done.len()
                        );
                        return (r.index, BindOutcome::Attention { detail });
                    }
                    let undos = nonatomic::undos_of(&r, self.direction);
                    let undone =
                        nonatomic::undo(&mut r.conn, &self.id, self.decider_name(), &undos, &self.at)
                            .and_then(|()| {
                                r.conn.clear_mark(&r.batch_mark).map_err(|e| e.to_string())
                            });
                    let outcome = match undone {
                        Ok(()) => BindOutcome::Undone { count: undos.len() },
                        Err(detail) => BindOutcome::Attention {
                            detail: format!("NOT rolled back: {}", detail.replace("<bind>", bind)),
                        },
                    };
                    (r.index, outcome)
                })
                .collect()
        })
    }

    /// A batch of non-atomic (MySQL) binds only. They run in parallel; if any fails, what
    /// the others did is undone. The first bind keeps the decision: its row in
    /// `orchestrate_batches`, turned to `commit` (one InnoDB update) once every bind has
    /// succeeded and before any batch mark is cleared, so that `recover` keeps the batch
    /// everywhere or undoes it everywhere.
    fn run_nonatomic_only(&self) -> BatchReport {
        self.progress.line(&format!(
            "batch {}: {} bind(s), none atomic; `{}` records the decision; failures are undone with down SQL",
            self.id,
            self.works.len(),
            self.decider_name()
        ));
        let mut report = self.report();
        // The decider first, alone: it takes its lock, then writes the batch's `begun` row
        // (nonatomic::run); the lock, held until the decision is written, is what tells
        // `recover` that this coordinator may still decide.
        let (mut running, mut result) = self.nonatomic_phase(&[0]);
        if result.is_ok() && self.works.len() > 1 {
            let rest: Vec<usize> = (1..self.works.len()).collect();
            let (more, r) = self.nonatomic_phase(&rest);
            running.extend(more);
            result = r;
        }
        if let Err(error) = result.and_then(|()| check_signal()) {
            return self.undo_everything(running, error, report);
        }
        crash_point!("before-decision");
        let record = decision_record(
            self.works,
            &self.id,
            self.decider_name(),
            self.direction,
            &BTreeMap::new(),
            None,
        );
        let decider_conn = &mut running
            .iter_mut()
            .find(|r| r.index == 0)
            .expect("every bind ran")
            .conn;
        // Checked again here: a migration (a procedure it called, an event) may have turned
        // the server's durability down since the batch began.
        let written = decider_conn
            .check_durable_commits()
            .and_then(|()| decider_conn.decide_commit(&record, &now_text()));
        match written {
            Ok(()) => {
                crash_point!("after-decision");
                self.clear_marks(report, running, &record)
            }
            Err(error) if error.is_connection_lost() => {
                // Whether the decision row committed is unknown: undo nothing; the marks stay
                // and recover settles every bind by what the decider's table says.
                drop(running);
                for (_, outcome) in report.binds.iter_mut() {
                    *outcome = BindOutcome::Attention {
                        detail: "NOT atomic: its migrations are committed and marked; `orchestrate recover` keeps them if the decision was written, or reverts them".into(),
                    };
                }
                report.verdict = Verdict::NeedsAttention {
                    detail: format!(
                        "the connection to `{}` was lost while writing the decision of batch {}; run `orchestrate recover`",
                        self.decider_name(),
                        self.id
                    ),
                    error: Some(error.into()),
                };
                report
            }
            Err(error) => self.undo_everything(running, error.into(), report),
        }
    }

    /// A connection to the decider of a MySQL-only batch.
    fn connect_decider(&self) -> Result<Mysql, DriverError> {
        Mysql::connect(
            &self.works[self.decider].endpoint,
            self.options.lock_timeout,
        )
    }

    /// A MySQL-only batch that failed before its decision: every bind undone, `abort` recorded.
    fn undo_everything(
        &self,
        running: Vec<nonatomic::Running>,
        error: BatchError,
        mut report: BatchReport,
    ) -> BatchReport {
        self.progress.line(&format!("  failed: {error}"));
        let undone = self.undo_all(running);
        if let Ok(mut conn) = self.connect_decider() {
            // Best effort (see record_abort): the batch marks, not this row, drive recovery.
            let _ = record_abort(&mut conn, &self.id);
        }
        report.verdict = Verdict::RolledBack { error };
        with_outcomes(report, undone, false)
    }

    /// A decided MySQL-only batch: every bind's batch mark cleared, then the decision settled.
    fn clear_marks(
        &self,
        mut report: BatchReport,
        running: Vec<nonatomic::Running>,
        record: &DecisionRecord,
    ) -> BatchReport {
        let mut attention = Vec::new();
        for mut r in running {
            report.binds[r.index].1 = match r.conn.clear_mark(&r.batch_mark) {
                Ok(()) => BindOutcome::Committed,
                Err(e) => {
                    attention.push(format!("{}: {e}", self.works[r.index].endpoint.bind));
                    BindOutcome::Attention {
                        detail: format!("committed and decided, but its batch mark could not be cleared ({e}); `orchestrate recover` clears it"),
                    }
                }
            };
        }
        if !attention.is_empty() {
            report.verdict = Verdict::NeedsAttention {
                error: None,
                detail: attention.join("; "),
            };
        } else if let Err(e) = self
            .connect_decider()
            .and_then(|mut c| c.settle_decision(record, &now_text()))
        {
            tracing::warn!(batch = %self.id, error = %e, "the batch committed everywhere, but it could not be marked settled on its decider");
        }
        report
    }
}

/// The verdict of a batch that failed before its decision, once every bind was rolled back
/// or could not be.
fn abort_verdict(report: &BatchReport, error: BatchError) -> Verdict {
    let left: Vec<String> = report
        .binds
        .iter()
        .filter_map(|(b, o)| match o {
            BindOutcome::LeftPrepared { gid } => Some(format!("{b} ({gid})")),
            BindOutcome::Attention { detail } => Some(format!("{b}: {detail}")),
            _ => None,
        })
        .collect();
    if let BatchError::Bind(DriverError::LeftTransaction { bind, name }) = &error {
        Verdict::NeedsAttention {
            detail: format!(
                "migration {name} ended the batch's transaction on bind `{bind}` itself, so what ran there before it may be committed; every other bind was rolled back{}. Check bind `{bind}` by hand (`orchestrate status --bind {bind}`)",
                if left.is_empty() { String::new() } else { format!(", except: {}", left.join(", ")) }
            ),
            error: Some(error),
        }
    } else if left.is_empty() {
        Verdict::RolledBack { error }
    } else {
        Verdict::NeedsAttention {
            detail: format!(
                "the batch failed before its decision, but these binds could not be rolled back for sure: {}. Run `orchestrate recover`",
                left.join(", ")
            ),
            error: Some(error),
        }
    }
}

/// The name of the last migration a bind runs in the batch, for messages.
fn last_step_name(work: &BindWork) -> String {
    work.plan
        .steps
        .last()
        .map_or_else(|| "(none)".into(), |s| s.name.clone())
}

/// After a failure before the decision, with the decider's transaction rolled back: records
/// `abort` for the batch, so that `recover` rolls back whatever a crash of this run leaves
/// prepared without having to decide. Best effort: without it `recover` decides abort itself
/// (the batch's row stays `begun`, and a `begun` row whose coordinator is gone is aborted).
fn record_abort<D: Decider + ?Sized>(decider: &mut D, batch_id: &str) -> Result<(), DriverError> {
    decider
        .decide_abort(batch_id, &now_text(), Duration::from_secs(2))
        .map(|_| ())
        .inspect_err(|e| {
            tracing::warn!(batch = %batch_id, error = %e, "could not record the abort decision; `orchestrate recover` will decide it");
        })
}

/// A participant's part of the batch, as its first phase needs it.
struct Share<'a> {
    work: &'a BindWork,
    batch_id: &'a str,
    decider: &'a str,
    direction: Direction,
    at: &'a str,
    /// The decider's batch transaction, named in PostgreSQL participants' ids.
    decider_xid: Option<u64>,
    /// Sessions still allowed to stay open after PREPARE (counted down).
    keep: &'a AtomicUsize,
}

/// A failure before anything could be prepared.
fn early(error: BatchError) -> Box<Failed> {
    Box::new(Failed {
        error,
        maybe_prepared: None,
        prepare_reply_lost: false,
    })
}

impl Share<'_> {
    fn gid(&self) -> String {
        participant_gid(self.batch_id, self.decider, self.work, self.decider_xid)
    }

    /// Runs the bind's steps in the transaction `opened` began; on any failure it is rolled
    /// back. Returns the versions applied before the batch.
    fn run<P: Atomic + ?Sized>(
        &self,
        conn: &mut P,
        opened: Result<(), BatchError>,
    ) -> Result<Vec<String>, Box<Failed>> {
        let ran = opened
            .and_then(|()| run_steps(conn, self.work, self.batch_id, self.direction, self.at));
        ran.map_err(|error| {
            conn.rollback();
            early(error)
        })
    }
}

/// PREPARE, with the crash points around it; on failure the transaction is rolled back and
/// the failure says whether the reply to PREPARE was lost.
fn prepare<P: TwoPhase + ?Sized>(conn: &mut P, gid: &str) -> Result<(), Box<Failed>> {
    crash_point!("before-prepare");
    if let Err(e) = conn.prepare(gid) {
        let prepare_reply_lost = e.is_connection_lost();
        conn.rollback();
        return Err(Box::new(Failed {
            error: e.into(),
            maybe_prepared: Some(gid.into()),
            prepare_reply_lost,
        }));
    }
    crash_point!("after-prepare");
    Ok(())
}

/// A participant's first phase: everything up to PREPARE (PostgreSQL, MySQL through XA) or up
/// to holding its transaction open (SQLite).
fn phase_one(share: &Share, lock_timeout: Duration) -> Result<Held, Box<Failed>> {
    check_signal().map_err(early)?;
    let conn = BindConnection::connect(&share.work.endpoint, true, lock_timeout)
        .map_err(|e| early(e.into()))?;
    match conn {
        BindConnection::Postgres(mut conn) => {
            let opened = conn.begin_batch().map_err(BatchError::from);
            share.run(&mut conn, opened)?;
            let gid = share.gid();
            prepare(&mut conn, &gid)?;
            let kept = share
                .keep
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if kept {
                return Ok(Held::PreparedKept {
                    conn: Box::new(conn),
                    gid,
                });
            }
            // The prepared transaction needs no connection: release it now.
            drop(conn);
            Ok(Held::Prepared { gid })
        }
        BindConnection::Sqlite(mut conn) => {
            let opened = conn.begin_batch().map_err(BatchError::from);
            let before = share.run(&mut conn, opened)?;
            if let Err(e) = conn.vote() {
                conn.rollback();
                return Err(early(e.into()));
            }
            Ok(Held::Open {
                conn: Box::new(conn),
                before,
            })
        }
        BindConnection::Mysql(conn) => phase_one_xa(share, conn),
    }
}

/// A MySQL participant's first phase through XA: lock and tables first (DDL cannot run inside
/// XA), then the batch mark that names the decider (committed, for recover), then XA START,
/// the steps and XA PREPARE. The prepared transaction stays on this session.
fn phase_one_xa(share: &Share, mut conn: Mysql) -> Result<Held, Box<Failed>> {
    let mark = nonatomic::xa_batch_mark(share.batch_id, share.decider, share.direction, share.at);
    let gid = share.gid();
    let prepared = match nonatomic::begin_xa(&mut conn, share.batch_id, &mark) {
        Err(error) => Err(early(error)),
        Ok(mut xa) => share
            .run(&mut xa, Ok(()))
            .and_then(|_| prepare(&mut xa, &gid)),
    };
    match prepared {
        Ok(()) => Ok(Held::PreparedHere {
            conn: Box::new(conn),
            gid,
        }),
        Err(failed) => {
            if failed.maybe_prepared.is_none() {
                // Best effort: a mark left behind is settled by recover (no XA, no decision).
                let _ = conn.clear_mark(&mark);
            } else if !failed.prepare_reply_lost && conn.clear_mark(&mark).is_err() {
                // The XA transaction is rolled back with the session: settle its mark too.
                tracing::warn!(bind = %share.work.endpoint.bind, "the XA batch mark could not be cleared; `orchestrate recover` settles it");
            }
            Err(failed)
        }
    }
}

/// [`resolve_prepared`] once the session that prepared a MySQL XA transaction has been
/// closed: the server detaches it asynchronously, so a few tries are given.
fn resolve_prepared_later(
    endpoint: &Endpoint,
    gid: &str,
    batch_id: &str,
    commit: bool,
    lock_timeout: Duration,
) -> BindOutcome {
    let mut outcome = BindOutcome::LeftPrepared { gid: gid.into() };
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        outcome = resolve_prepared(endpoint, gid, batch_id, commit, lock_timeout);
        if matches!(outcome, BindOutcome::Committed | BindOutcome::RolledBack) {
            break;
        }
    }
    outcome
}

/// Ends a prepared transaction over a fresh connection. Resolved by looking: a transaction
/// that is gone and whose batch left history rows on the bind was committed.
pub fn resolve_prepared(
    endpoint: &Endpoint,
    gid: &str,
    batch_id: &str,
    commit: bool,
    lock_timeout: Duration,
) -> BindOutcome {
    let attempt = || -> Result<BindOutcome, DriverError> {
        let mut conn = BindConnection::connect(endpoint, false, lock_timeout)?.into_resolver()?;
        let still_prepared = conn.prepared()?.iter().any(|p| p.gid == gid);
        if still_prepared {
            if commit {
                conn.commit_prepared(gid)?;
                return Ok(BindOutcome::Committed);
            }
            conn.rollback_prepared(gid)?;
            return Ok(BindOutcome::RolledBack);
        }
        let committed = conn.has_batch(batch_id)?;
        Ok(match (commit, committed) {
            (true, true) => BindOutcome::Committed,
            (false, false) => BindOutcome::RolledBack,
            (true, false) => BindOutcome::Attention {
                detail: format!("prepared transaction {gid} is gone and its work is not there: it was rolled back by someone else although batch {batch_id} was decided to commit (a heuristic outcome); this bind is not migrated"),
            },
            (false, true) => BindOutcome::Attention {
                detail: format!("prepared transaction {gid} was committed by someone else although batch {batch_id} was not decided (a heuristic outcome); this bind is migrated"),
            },
        })
    };
    match attempt() {
        Ok(outcome) => outcome,
        Err(_) => BindOutcome::LeftPrepared { gid: gid.into() },
    }
}

/// Puts the non-atomic binds' outcomes into a report; any that needs a person makes the
/// batch need attention.
fn with_outcomes(
    mut report: BatchReport,
    outcomes: Vec<(usize, BindOutcome)>,
    has_atomic: bool,
) -> BatchReport {
    let mut left = Vec::new();
    for (i, outcome) in outcomes {
        if let BindOutcome::Attention { detail } = &outcome {
            left.push(format!("{}: {detail}", report.binds[i].0));
        }
        report.binds[i].1 = outcome;
    }
    if !left.is_empty() {
        let verdict = std::mem::replace(&mut report.verdict, Verdict::Committed);
        let (error, mut detail) = match verdict {
            Verdict::RolledBack { error } => (Some(error), String::new()),
            Verdict::NeedsAttention { error, detail } => (error, format!("{detail}; ")),
            Verdict::Committed => (None, String::new()),
        };
        detail.push_str(&format!(
            "the batch failed before its decision{}, but not every non-atomic bind could be put back: {}",
            if has_atomic {
                "; the atomic binds rolled back"
            } else {
                ""
            },
            left.join("; ")
        ));
        report.verdict = Verdict::NeedsAttention { error, detail };
    }
    report
}
