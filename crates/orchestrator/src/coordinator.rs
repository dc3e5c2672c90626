//! One atomic batch across binds.
//!
//! 1. Every participant but the decider: open the batch transaction, take the lock, check the
//!    plan still holds, run its steps. PostgreSQL binds then `PREPARE TRANSACTION` (verified);
//!    SQLite binds keep their transaction, and write lock, open.
//! 2. The decider runs its own steps in its own transaction, writes the decision record (with
//!    the steps of every SQLite participant, for redo) and commits. That COMMIT is the
//!    decision. Any failure before it rolls every bind back.
//! 3. `COMMIT PREPARED` on every PostgreSQL participant, `COMMIT` on every SQLite one.
//!
//! A decider COMMIT that fails because the connection was lost leaves the batch in doubt: the
//! others are never rolled back on that error; `orchestrate recover` reads the decision later.

use std::io::Write;
use std::time::Duration;

use crate::signals;

/// A named point where a test can stop or crash the coordinator (cargo feature `failpoints`,
/// set with `FAILPOINTS=name=action;...` in the `fail` crate's syntax). The action `return`
/// sends the process SIGKILL on the spot: no destructor, rollback or flush runs, as in a real
/// crash. `sleep(ms)`, `pause` and `panic` work as the `fail` crate defines them. Without the
/// feature this is nothing.
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| {
            eprintln!("failpoint {}: crashing with SIGKILL", $name);
            let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
            std::process::abort()
        });
    };
}

/// Why a batch failed before its decision.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Bind(#[from] DriverError),
    #[error("interrupted by a signal before the decision")]
    Interrupted,
}

fn check_signal() -> Result<(), BatchError> {
    if signals::interrupted() {
        Err(BatchError::Interrupted)
    } else {
        Ok(())
    }
}

use orchestrate_core::{Direction, Plan};
use orchestrate_driver::{
    gid_for, Backend, BindConnection, DecisionRecord, DriverError, Endpoint, Participant, RedoStep,
};

/// One bind's share of a batch.
#[derive(Clone, Debug)]
pub struct BindWork {
    pub endpoint: Endpoint,
    pub plan: Plan,
}

/// Where a bind ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindOutcome {
    Committed,
    RolledBack,
    /// Prepared and not resolved: `orchestrate recover` will end it.
    LeftPrepared {
        gid: String,
    },
    /// What happened is not known or needs a person.
    Attention {
        detail: String,
    },
}

/// How a batch ended.
#[derive(Debug)]
pub enum Verdict {
    /// Every bind committed.
    Committed,
    /// The batch failed before the decision and every bind is as it was.
    RolledBack { error: BatchError },
    /// Something needs a person or `orchestrate recover`.
    NeedsAttention {
        error: Option<BatchError>,
        detail: String,
    },
}

#[derive(Debug)]
pub struct BatchReport {
    pub batch_id: String,
    pub decider: String,
    pub direction: Direction,
    pub binds: Vec<(String, BindOutcome)>,
    pub verdict: Verdict,
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

/// The decider: the configured one when it takes part, else the first SQLite participant
/// (SQLite cannot prepare, so it must be the last resource), else the first participant.
pub fn choose_decider(works: &[BindWork], preferred: Option<&str>) -> usize {
    preferred
        .and_then(|p| works.iter().position(|w| w.endpoint.bind == p))
        .or_else(|| {
            works
                .iter()
                .position(|w| w.endpoint.backend == Backend::Sqlite)
        })
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Open,
    Preparing,
    Prepared,
}

struct Live {
    endpoint: Endpoint,
    conn: BindConnection,
    gid: Option<String>,
    stage: Stage,
}

/// Runs one batch. `progress` receives one line per notable step.
pub fn run_batch(
    works: Vec<BindWork>,
    direction: Direction,
    preferred_decider: Option<&str>,
    lock_timeout: Duration,
    progress: &mut dyn Write,
) -> BatchReport {
    let batch_id = new_batch_id();
    let decider_index = choose_decider(&works, preferred_decider);
    let decider_name = works[decider_index].endpoint.bind.clone();
    let mut report = BatchReport {
        batch_id: batch_id.clone(),
        decider: decider_name.clone(),
        direction,
        binds: Vec::new(),
        verdict: Verdict::Committed,
    };
    let _ = writeln!(
        progress,
        "batch {batch_id}: {} bind(s), decider `{decider_name}`",
        works.len()
    );

    // The decider's transaction opens first and its session carries the batch id, so that
    // `recover` can never presume abort while this coordinator could still decide: a
    // prepared bind of this batch always has a live decider or a finished one.
    let decider = &works[decider_index];
    let mut decider_conn = match BindConnection::connect(&decider.endpoint, true, lock_timeout)
        .and_then(|mut conn| {
            conn.tag_as_decider(&batch_id)?;
            conn.begin_batch()?;
            Ok(conn)
        }) {
        Ok(conn) => conn,
        Err(error) => return abort(report, Vec::new(), &works, error.into(), progress),
    };

    // Phase 1: every participant but the decider.
    let mut live: Vec<Live> = Vec::new();
    let mut order: Vec<usize> = (0..works.len()).filter(|i| *i != decider_index).collect();
    order.push(decider_index);
    let at = now_text();
    for &i in &order[..order.len() - 1] {
        let work = &works[i];
        match phase_one(
            work,
            &batch_id,
            &decider_name,
            direction,
            lock_timeout,
            &at,
            &mut live,
        ) {
            Ok(()) => {
                let _ = writeln!(
                    progress,
                    "  {}: {} migration(s) {}, {}",
                    work.endpoint.bind,
                    work.plan.steps.len(),
                    direction_past(direction),
                    if work.endpoint.backend == Backend::Postgres {
                        "prepared"
                    } else {
                        "holding its transaction open"
                    }
                );
            }
            Err(error) => {
                decider_conn.rollback();
                return abort(report, live, &works, error, progress);
            }
        }
    }

    // Phase 2: the decider.
    let record = DecisionRecord {
        batch_id: batch_id.clone(),
        direction: direction.to_string(),
        decider: decider_name.clone(),
        participants: works
            .iter()
            .map(|w| {
                let is_decider = w.endpoint.bind == decider_name;
                Participant {
                    bind: w.endpoint.bind.clone(),
                    backend: w.endpoint.backend,
                    gid: (!is_decider && w.endpoint.backend == Backend::Postgres)
                        .then(|| gid_for(&batch_id, &decider_name, &w.endpoint.bind)),
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
                }
            })
            .collect(),
    };
    crash_point!("before-decision");
    let decided = run_steps(&mut decider_conn, decider, &batch_id, direction, &at)
        .and_then(|()| Ok(decider_conn.write_decision(&record, &now_text())?))
        .and_then(|()| Ok(decider_conn.check_deferred()?))
        .and_then(|()| check_signal());
    if let Err(error) = decided {
        decider_conn.rollback();
        return abort(report, live, &works, error, progress);
    }
    if let Err(error) = decider_conn.commit() {
        if error.is_connection_lost() {
            drop(decider_conn);
            report.binds = live
                .iter()
                .map(|l| {
                    let outcome = match &l.gid {
                        Some(gid) => BindOutcome::LeftPrepared { gid: gid.clone() },
                        None => BindOutcome::Attention {
                            detail: "its open transaction was dropped; recover re-applies it if the batch was decided".into(),
                        },
                    };
                    (l.endpoint.bind.clone(), outcome)
                })
                .chain(std::iter::once((
                    decider_name.clone(),
                    BindOutcome::Attention {
                        detail: "the decider's COMMIT may or may not have happened".into(),
                    },
                )))
                .collect();
            report.verdict = Verdict::NeedsAttention {
                detail: format!(
                    "the connection to the decider `{decider_name}` was lost during its COMMIT, so whether batch {batch_id} committed is unknown. Nothing was rolled back. Run `orchestrate recover` to finish it either way"
                ),
                error: Some(error.into()),
            };
            return report;
        }
        decider_conn.rollback();
        return abort(report, live, &works, error.into(), progress);
    }
    crash_point!("after-decision");
    let _ = writeln!(
        progress,
        "  {decider_name}: {} migration(s) {}, decision committed",
        decider.plan.steps.len(),
        direction_past(direction)
    );

    // Phase 3: commit everyone else.
    let mut attention = Vec::new();
    for mut l in live {
        let outcome = match (l.stage, &l.gid) {
            (Stage::Prepared, Some(gid)) => match l.conn.commit_prepared(gid) {
                Ok(()) => BindOutcome::Committed,
                Err(first) => {
                    let outcome = resolve_prepared(&l.endpoint, gid, &batch_id, true, lock_timeout);
                    if outcome != BindOutcome::Committed {
                        attention.push(format!("{}: {first}", l.endpoint.bind));
                    }
                    outcome
                }
            },
            _ => match l.conn.commit() {
                Ok(()) => BindOutcome::Committed,
                Err(e) => {
                    attention.push(format!("{}: {e}", l.endpoint.bind));
                    BindOutcome::Attention {
                        detail: format!("COMMIT failed after the decision ({e}); run `orchestrate recover` to re-apply it"),
                    }
                }
            },
        };
        report.binds.push((l.endpoint.bind.clone(), outcome));
        crash_point!("after-first-commit");
    }
    report
        .binds
        .push((decider_name.clone(), BindOutcome::Committed));
    if signals::interrupted() {
        let _ = writeln!(
            progress,
            "  interrupted after the decision: finished committing every bind before stopping"
        );
    }
    if !attention.is_empty() {
        report.verdict = Verdict::NeedsAttention {
            error: None,
            detail: format!(
                "batch {batch_id} was decided (committed on `{decider_name}`) but not every bind finished: {}",
                attention.join("; ")
            ),
        };
    }
    report
}

fn direction_past(direction: Direction) -> &'static str {
    match direction {
        Direction::Up => "applied",
        Direction::Down => "reverted",
    }
}

/// Runs a bind's steps in its open batch transaction.
pub(crate) fn run_steps(
    conn: &mut BindConnection,
    work: &BindWork,
    batch_id: &str,
    direction: Direction,
    at: &str,
) -> Result<(), BatchError> {
    conn.check_plan_still_valid(direction, &work.plan.steps)?;
    for step in &work.plan.steps {
        check_signal()?;
        conn.run_step(batch_id, direction, step, at)?;
    }
    Ok(())
}

fn phase_one(
    work: &BindWork,
    batch_id: &str,
    decider: &str,
    direction: Direction,
    lock_timeout: Duration,
    at: &str,
    live: &mut Vec<Live>,
) -> Result<(), BatchError> {
    check_signal()?;
    let conn = BindConnection::connect(&work.endpoint, true, lock_timeout)?;
    live.push(Live {
        endpoint: work.endpoint.clone(),
        conn,
        gid: None,
        stage: Stage::Open,
    });
    let l = live.last_mut().expect("just pushed");
    l.conn.begin_batch()?;
    run_steps(&mut l.conn, work, batch_id, direction, at)?;
    if work.endpoint.backend == Backend::Postgres {
        let gid = gid_for(batch_id, decider, &work.endpoint.bind);
        l.gid = Some(gid.clone());
        l.stage = Stage::Preparing;
        crash_point!("before-prepare");
        l.conn.prepare(&gid)?;
        l.stage = Stage::Prepared;
        crash_point!("after-prepare");
    }
    Ok(())
}

/// Rolls back every participant after a failure before the decision.
fn abort(
    mut report: BatchReport,
    live: Vec<Live>,
    works: &[BindWork],
    error: BatchError,
    progress: &mut dyn Write,
) -> BatchReport {
    let _ = writeln!(progress, "  failed: {error}");
    let _ = writeln!(progress, "  rolling back every bind");
    let mut left = Vec::new();
    for mut l in live {
        let outcome = match (l.stage, l.gid.clone()) {
            (Stage::Open, _) => {
                l.conn.rollback();
                BindOutcome::RolledBack
            }
            (_, Some(gid)) => match l.conn.rollback_prepared(&gid) {
                Ok(()) => BindOutcome::RolledBack,
                Err(_) => {
                    drop(l.conn);
                    resolve_prepared(
                        &l.endpoint,
                        &gid,
                        &report.batch_id,
                        false,
                        Duration::from_secs(10),
                    )
                }
            },
            (_, None) => BindOutcome::RolledBack,
        };
        if let BindOutcome::LeftPrepared { gid } = &outcome {
            left.push(format!("{} ({gid})", l.endpoint.bind));
        }
        report.binds.push((l.endpoint.bind.clone(), outcome));
    }
    for w in works {
        if !report.binds.iter().any(|(b, _)| b == &w.endpoint.bind) {
            report
                .binds
                .push((w.endpoint.bind.clone(), BindOutcome::RolledBack));
        }
    }
    report.verdict = if left.is_empty() {
        Verdict::RolledBack { error }
    } else {
        Verdict::NeedsAttention {
            detail: format!(
                "the batch failed before its decision, but these prepared transactions could not be rolled back: {}. Run `orchestrate recover`",
                left.join(", ")
            ),
            error: Some(error),
        }
    };
    report
}

/// Ends a prepared transaction over a fresh connection, after the first attempt failed (a lost
/// reply, a lost connection). Resolved by looking: a transaction that is gone and whose batch
/// left history rows on the bind was committed.
pub fn resolve_prepared(
    endpoint: &Endpoint,
    gid: &str,
    batch_id: &str,
    commit: bool,
    lock_timeout: Duration,
) -> BindOutcome {
    let attempt = || -> Result<BindOutcome, DriverError> {
        let mut conn = BindConnection::connect(endpoint, false, lock_timeout)?;
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
