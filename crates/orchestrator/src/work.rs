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
