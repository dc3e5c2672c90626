//! `orchestrate recover`: finish every batch a crash or a lost connection left behind.
//!
//! - Every prepared transaction of this tool (`orchestrate:<batch>:<decider>:<bind>`) on every
//!   configured PostgreSQL bind is committed when the decider bind holds the batch's decision,
//!   and rolled back when it does not (presumed abort) — but only once the decider can no longer
//!   commit: its tagged session is gone (PostgreSQL) or its write lock is free (SQLite). A batch
//!   whose decider is alive belongs to a running coordinator and is left alone.
//! - Every SQLite participant of a decided batch whose history lacks the batch (its open
//!   transaction was lost after the decision) is brought forward from the decision record, in
//!   one transaction, after checking that its state is still the one the batch started from.

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrate_core::{Direction, Step, Version};
use orchestrate_driver::{Backend, BindConnection, DecisionRecord, DriverError, GID_PREFIX};

use crate::coordinator::{run_steps, BindWork};
use crate::settings::Settings;

/// What recover did, or would do, for one batch on one bind.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Action {
    pub bind: String,
    pub batch_id: String,
    /// committed, rolled back, redone, would commit, would roll back, would redo, left alone,
    /// attention
    pub action: String,
    pub detail: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RecoverReport {
    pub actions: Vec<Action>,
    /// Binds that could not be examined.
    pub errors: Vec<String>,
}

impl RecoverReport {
    /// Whether anything is left for a person or a later run.
    pub fn needs_attention(&self) -> bool {
        !self.errors.is_empty()
            || self
                .actions
                .iter()
                .any(|a| a.action == "attention" || a.action == "left alone")
    }
}

struct Gid {
    batch_id: String,
    decider: String,
    bind: String,
}

fn parse_gid(gid: &str) -> Option<Gid> {
    let rest = gid.strip_prefix(GID_PREFIX)?;
    let mut parts = rest.splitn(3, ':');
    Some(Gid {
        batch_id: parts.next()?.to_string(),
        decider: parts.next()?.to_string(),
        bind: parts.next()?.to_string(),
    })
}

/// What the decider knows of a batch.
enum Decision {
    Commit,
    Abort,
    /// The decider may still commit, or cannot be read.
    Unknown(String),
}

fn decision_of(settings: &Settings, decider: &str, batch_id: &str) -> Decision {
    let Some(bind) = settings.bind(decider) else {
        return Decision::Unknown(format!(
            "its decider `{decider}` is not a configured bind; configure it and run recover again"
        ));
    };
    let look = || -> Result<Decision, DriverError> {
        let mut conn = BindConnection::connect(&bind.endpoint, false, settings.lock_timeout)?;
        // Read first: a recorded decision is final whatever the coordinator is doing.
        if conn.read_decision(batch_id)?.is_some() {
            return Ok(Decision::Commit);
        }
        if conn.decider_alive(batch_id)? {
            return Ok(Decision::Unknown(format!(
                "its coordinator still appears to be running (the decider `{decider}` is busy); run recover again once it has finished or died"
            )));
        }
        // The decider can no longer commit; read again in case it did just before.
        Ok(if conn.read_decision(batch_id)?.is_some() {
            Decision::Commit
        } else {
            Decision::Abort
        })
    };
    match look() {
        Ok(d) => d,
        Err(DriverError::NoSuchFile { .. }) => Decision::Abort,
        Err(e) => Decision::Unknown(format!("its decider `{decider}` cannot be read: {e}")),
    }
}

/// Finds and finishes what earlier batches left behind. With `dry_run` it only reports.
pub fn recover(settings: &Settings, dry_run: bool) -> RecoverReport {
    let mut report = RecoverReport::default();
    let timeout = settings.lock_timeout;

    // 1. Prepared transactions on PostgreSQL binds.
    let mut decisions: BTreeMap<(String, String), Decision> = BTreeMap::new();
    for bind in settings
        .binds
        .iter()
        .filter(|b| b.endpoint.backend == Backend::Postgres)
    {
        let mut conn = match BindConnection::connect(&bind.endpoint, false, timeout) {
            Ok(c) => c,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        let prepared = match conn.prepared() {
            Ok(p) => p,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        for xact in prepared {
            let Some(gid) = parse_gid(&xact.gid) else {
                report.actions.push(Action {
                    bind: bind.name.clone(),
                    batch_id: String::new(),
                    action: "attention".into(),
                    detail: format!("prepared transaction {} has an id this version does not understand; end it by hand", xact.gid),
                });
                continue;
            };
            let decision = decisions
                .entry((gid.batch_id.clone(), gid.decider.clone()))
                .or_insert_with(|| decision_of(settings, &gid.decider, &gid.batch_id));
            let (action, result) = match decision {
                Decision::Unknown(why) => ("left alone".to_string(), Err(why.clone())),
                Decision::Commit if dry_run => ("would commit".into(), Ok(())),
                Decision::Abort if dry_run => ("would roll back".into(), Ok(())),
                Decision::Commit => (
                    "committed".into(),
                    conn.commit_prepared(&xact.gid).map_err(|e| e.to_string()),
                ),
                Decision::Abort => (
                    "rolled back".into(),
                    conn.rollback_prepared(&xact.gid).map_err(|e| e.to_string()),
                ),
            };
            let (action, detail) = match result {
                Ok(()) => (
                    action,
                    format!(
                        "prepared transaction {} (bind `{}` of the batch, since {})",
                        xact.gid, gid.bind, xact.prepared_at
                    ),
                ),
                Err(why) if action == "left alone" => {
                    (action, format!("prepared transaction {}: {why}", xact.gid))
                }
                Err(why) => (
                    "attention".into(),
                    format!("could not end {}: {why}", xact.gid),
                ),
            };
            report.actions.push(Action {
                bind: bind.name.clone(),
                batch_id: gid.batch_id.clone(),
                action,
                detail,
            });
        }
    }

    // 2. SQLite participants of decided batches that lost their transaction.
    let mut records: Vec<DecisionRecord> = Vec::new();
    for bind in &settings.binds {
        match BindConnection::connect(&bind.endpoint, false, timeout)
            .and_then(|mut c| c.decisions())
        {
            Ok(found) => records.extend(found),
            Err(DriverError::NoSuchFile { .. }) => {}
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    for record in records {
        for participant in &record.participants {
            if let Some(gid) = &participant.gid {
                if let Some(action) =
                    check_committed(settings, &record, &participant.bind, gid, dry_run)
                {
                    report.actions.push(action);
                }
                continue;
            }
            let Some(steps) = &participant.redo else {
                continue;
            };
            let Some(bind) = settings.bind(&participant.bind) else {
                report.actions.push(Action {
                    bind: participant.bind.clone(),
                    batch_id: record.batch_id.clone(),
                    action: "attention".into(),
                    detail: format!("the decided batch includes bind `{}`, which is not configured; it cannot be checked", participant.bind),
                });
                continue;
            };
            let outcome = redo(bind, &record, steps, timeout, dry_run);
            if let Some(action) = outcome {
                report.actions.push(action);
            }
        }
    }
    report
}

/// For a PostgreSQL participant of a decided batch: its prepared transaction is gone (step 1
/// committed what it found), so its history must carry the batch. If it does not, someone
/// rolled the transaction back by hand against the decision: a heuristic outcome, reported once
/// and recorded on the bind so that it is not reported or retried again.
fn check_committed(
    settings: &Settings,
    record: &DecisionRecord,
    bind_name: &str,
    gid: &str,
    dry_run: bool,
) -> Option<Action> {
    let bind = settings.bind(bind_name)?;
    let action = |action: &str, detail: String| Action {
        bind: bind_name.into(),
        batch_id: record.batch_id.clone(),
        action: action.into(),
        detail,
    };
    let look = || -> Result<Option<Action>, DriverError> {
        let mut conn = BindConnection::connect(&bind.endpoint, false, settings.lock_timeout)?;
        if conn.prepared()?.iter().any(|p| p.gid == gid)
            || conn.has_batch(&record.batch_id)?
            || conn.has_heuristic(&record.batch_id)?
        {
            return Ok(None);
        }
        let detail = format!(
            "heuristic outcome: prepared transaction {gid} was rolled back by someone else although batch {} was decided to commit; this bind does not have the batch's migrations (see `orchestrate status`). Recorded; it will not be reported again",
            record.batch_id
        );
        if !dry_run {
            let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            conn.record_heuristic(
                &record.batch_id,
                "rolled back by hand against the commit decision",
                &at,
            )?;
        }
        Ok(Some(action("attention", detail)))
    };
    match look() {
        Ok(a) => a,
        Err(DriverError::NoSuchFile { .. }) => None,
        Err(e) => Some(action(
            "attention",
            format!("cannot check prepared transaction {gid}: {e}"),
        )),
    }
}

/// Brings one SQLite participant forward, unless its history already carries the batch.
fn redo(
    bind: &crate::settings::BindSettings,
    record: &DecisionRecord,
    steps: &[orchestrate_driver::RedoStep],
    timeout: Duration,
    dry_run: bool,
) -> Option<Action> {
    let action = |action: &str, detail: String| Action {
        bind: bind.name.clone(),
        batch_id: record.batch_id.clone(),
        action: action.into(),
        detail,
    };
    let mut conn = match BindConnection::connect(&bind.endpoint, true, timeout) {
        Ok(c) => c,
        Err(e) => return Some(action("attention", e.to_string())),
    };
    match conn.has_batch(&record.batch_id) {
        Ok(true) => return None,
        Ok(false) => {}
        Err(e) => return Some(action("attention", e.to_string())),
    }
    if dry_run {
        return Some(action(
            "would redo",
            format!(
                "{} step(s) of the decided batch are missing here",
                steps.len()
            ),
        ));
    }
    let direction = record.direction();
    let work = BindWork {
        endpoint: bind.endpoint.clone(),
        plan: orchestrate_core::Plan {
            bind: bind.name.clone(),
            direction,
            steps: steps
                .iter()
                .map(|s| Step {
                    version: Version::from_stored(&s.version),
                    name: s.name.clone(),
                    sql: s.sql.clone(),
                    checksum: s.checksum.clone(),
                    down_sql: s.down_sql.clone(),
                    down_source: (direction == Direction::Down)
                        .then_some(orchestrate_core::DownSqlSource::Stored),
                })
                .collect(),
        },
    };
    let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let done = conn.begin_batch().and_then(|()| {
        // Inside the lock: someone may have finished it meanwhile.
        if conn.has_batch(&record.batch_id)? {
            return Ok(false);
        }
        run_steps(&mut conn, &work, &record.batch_id, direction, &at).map_err(|e| match e {
            crate::coordinator::BatchError::Bind(e) => e,
            other => DriverError::Other {
                bind: bind.name.clone(),
                detail: other.to_string(),
            },
        })?;
        conn.commit()?;
        Ok(true)
    });
    match done {
        Ok(true) => Some(action(
            "redone",
            format!(
                "{} step(s) re-applied from the decision record",
                steps.len()
            ),
        )),
        Ok(false) => {
            conn.rollback();
            None
        }
        Err(e) => {
            conn.rollback();
            Some(action(
                "attention",
                format!("could not re-apply the decided batch: {e}"),
            ))
        }
    }
}
