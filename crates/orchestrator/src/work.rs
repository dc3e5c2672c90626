//! A bind's share of a batch ([`BindWork`]), why a batch fails before its decision
//! ([`BatchError`]), running a bind's steps in its transaction ([`run_steps`]), and the crash
//! points of the `failpoints` feature: what the coordinator, the non-atomic binds and recover
//! share, so that none of them imports another.

use orchestrate_core::{Direction, Plan, Version};
use orchestrate_driver::{Atomic, DriverError, Endpoint};

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

pub(crate) use crash_point;

/// Where a test can crash a MySQL migration between two of its statements.
pub(crate) fn crash_point_mid_migration() {
    crash_point!("mysql-mid-migration");
}

/// Where a test can crash a PostgreSQL migration that runs outside a transaction, between
/// two of its statements.
pub(crate) fn crash_point_outside() {
    crash_point!("outside-mid-migration");
}

/// Why a batch failed before its decision.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// A bind's database refused or failed (its message names the bind and the migration).
    #[error(transparent)]
    Bind(#[from] DriverError),
    /// SIGINT, SIGTERM or SIGHUP (command line only) before the decision.
    #[error("interrupted by a signal before the decision")]
    Interrupted,
}

/// Fails with [`BatchError::Interrupted`] once a signal asked to stop.
pub(crate) fn check_signal() -> Result<(), BatchError> {
    if signals::interrupted() {
        Err(BatchError::Interrupted)
    } else {
        Ok(())
    }
}

/// One bind's share of a batch.
#[derive(Clone, Debug)]
pub struct BindWork {
    pub endpoint: Endpoint,
    pub plan: Plan,
    /// PostgreSQL: the server (as it identified itself) and the connections it accepts
    /// (`ServerIdentity::max_connections`), when its state was read: what decides whether
    /// prepared participants may keep their sessions (see `keep_connections_for`).
    pub server: Option<(String, i64)>,
}

/// How many PostgreSQL participants of `works` may keep their session from PREPARE to COMMIT
/// PREPARED: `keep` when, on every server, the batch's participants are no more than `keep`
/// and, with `parallelism` working and the decider, take at most half the connections the
/// server accepts; otherwise none (a batch may span more binds than a server accepts
/// connections, and the application keeps its own). A server whose limit was not read keeps
/// none.
pub fn keep_connections_for(works: &[BindWork], keep: usize, parallelism: usize) -> usize {
    let mut by_server: std::collections::BTreeMap<String, (usize, Option<i64>)> =
        Default::default();
    for w in works
        .iter()
        .filter(|w| w.endpoint.backend == orchestrate_driver::Backend::Postgres)
    {
        let (key, room) = match &w.server {
            Some((server, room)) => (server.clone(), Some(*room)),
            None => (w.endpoint.server().unwrap_or_default(), None),
        };
        let entry = by_server.entry(key).or_insert((0, room));
        entry.0 += 1;
        entry.1 = match (entry.1, room) {
            (Some(a), Some(b)) => Some(a.min(b)),
            _ => None,
        };
    }
    let fits = by_server.values().all(|(n, room)| {
        room.is_some_and(|room| *n <= keep && 2 * (*n + parallelism + 1) as i64 <= room)
    });
    if fits {
        keep
    } else {
        0
    }
}

/// Runs a bind's steps in its open batch transaction.
pub(crate) fn run_steps<P: Atomic + ?Sized>(
    conn: &mut P,
    work: &BindWork,
    batch_id: &str,
    direction: Direction,
    at: &str,
) -> Result<Vec<String>, BatchError> {
    let before = conn.check_plan_still_valid(direction, &work.plan.steps)?;
    still_planned_from(&work.plan, &before)?;
    for step in &work.plan.steps {
        check_signal()?;
        conn.run_step(batch_id, direction, step, at)?;
    }
    Ok(before)
}

/// Under the bind's lock: the versions applied now are the ones the plan was made from.
/// Another run may have changed them between the plan and the lock; a plan for `-1` or
/// `head` from the old state would then revert or apply the wrong migrations (checking only
/// the planned steps would not see a newer one applied meanwhile).
pub(crate) fn still_planned_from(plan: &Plan, applied_now: &[String]) -> Result<(), BatchError> {
    let Some(from) = &plan.from else {
        return Ok(());
    };
    let mut now: Vec<Version> = applied_now
        .iter()
        .map(|v| Version::from_stored(v))
        .collect();
    now.sort();
    let mut then = from.clone();
    then.sort();
    if now == then {
        return Ok(());
    }
    let names = |v: &[Version]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(Version::as_str).collect::<Vec<_>>().join(", ")
        }
    };
    Err(BatchError::Bind(DriverError::Moved {
        bind: plan.bind.clone(),
        detail: format!(
            "its applied migrations changed since the plan was made (another run?): planned from [{}], now [{}]",
            names(&then),
            names(&now)
        ),
    }))
}
