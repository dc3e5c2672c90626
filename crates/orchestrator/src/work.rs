//! A bind's share of a batch ([`BindWork`]), why a batch fails before its decision
//! ([`BatchError`]), running a bind's steps in its transaction ([`run_steps`]), and the crash
//! points of the `failpoints` feature: what the coordinator, the non-atomic binds and recover
//! share, so that none of them imports another.

use orchestrate_core::{Direction, Plan};
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
    for step in &work.plan.steps {
        check_signal()?;
        conn.run_step(batch_id, direction, step, at)?;
    }
    Ok(before)
}
