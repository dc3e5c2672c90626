//! MySQL and MariaDB binds in a batch.
//!
//! A bind whose migrations in a batch are all `data_only` joins as a two-phase participant
//! through XA ([`begin_xa`], then the coordinator's usual prepare and commit) when a
//! PostgreSQL or SQLite bind decides. Any other MySQL bind is honestly not atomic: its DDL
//! commits statement by statement and is refused inside XA transactions, so its part of a
//! batch can never be rolled back. What this module does instead:
//!
//! - they run after every atomic bind has prepared and the decider has run its own steps, so
//!   that the decision is made only if they succeed;
//! - each bind's lock (`GET_LOCK`) is held for the whole batch; a `batch` mark says the batch
//!   touched the bind and is not settled there, cleared once the decision is committed;
//! - each migration runs one statement at a time between a `migration` mark (with a count of
//!   the statements that committed) and its version-table rows, which are written together
//!   with clearing the mark;
//! - when anything fails before the decision, the migrations this batch applied are undone
//!   newest first with their undo SQL (down.sql of an upgrade, up.sql of a downgrade), each
//!   marked the same way. A migration that failed after some of its statements committed is
//!   left marked: nobody knows how to undo half a migration, so `orchestrate resolve` records
//!   what a person found, and `orchestrate recover` then undoes the rest of the batch.

use std::time::Duration;

use orchestrate_core::{split_statements, Direction, Step};
use orchestrate_driver::{
    Bookkeeping, Decider, DriverError, Mark, MarkDirection, MarkKind, Mysql, Xa,
};

use crate::signals;
use crate::work::{BatchError, BindWork};

/// A MySQL bind that has run (part of) its share of a batch and still holds its lock.
pub struct Running {
    pub index: usize,
    pub conn: Mysql,
    /// The steps that completed, in the order they ran.
    pub done: Vec<Step>,
    pub batch_mark: Mark,
    /// A migration that failed after some of its statements committed: left marked.
    pub partial: Option<Mark>,
}

/// The mark of one migration (or its undo) about to run `sql`, with the number of its
/// statements.
pub fn migration_mark(
    batch_id: &str,
    decider: &str,
    direction: MarkDirection,
    step: &Step,
    sql: &str,
    at: &str,
) -> Mark {
    Mark {
        kind: MarkKind::Migration.as_str().into(),
        batch_id: batch_id.into(),
        version: step.version.as_str().into(),
        decider: decider.into(),
        direction: direction.as_str().into(),
        name: step.name.clone(),
        statements_done: 0,
        statements_total: split_statements(sql).len() as i64,
        started_at: at.into(),
    }
}

/// The same as [`batch_mark`], for a bind whose part is an XA transaction: `status` and
/// `recover` look for prepared XA transactions only where such a mark exists.
pub fn xa_batch_mark(batch_id: &str, decider: &str, direction: Direction, at: &str) -> Mark {
    Mark {
        kind: MarkKind::XaBatch.as_str().into(),
        ..batch_mark(batch_id, decider, direction, at)
    }
}

/// The mark that says a batch touched a MySQL bind and is not settled there.
pub fn batch_mark(batch_id: &str, decider: &str, direction: Direction, at: &str) -> Mark {
    Mark {
        kind: MarkKind::Batch.as_str().into(),
        batch_id: batch_id.into(),
        version: "-".into(),
        decider: decider.into(),
        direction: direction.to_string(),
        name: String::new(),
        statements_done: 0,
        statements_total: 0,
        started_at: at.into(),
    }
}

/// Takes a MySQL bind's lock (and makes its tables), and fails when an earlier batch left
/// anything unsettled there.
fn lock_settled(conn: &mut Mysql) -> Result<(), DriverError> {
    conn.begin_nonatomic()?;
    match conn.marks()?.first() {
        Some(m) => Err(DriverError::Other {
            bind: conn.endpoint().bind.clone(),
            detail: format!(
                "an earlier batch is not settled here: {}",
                m.describe().replace("<bind>", &conn.endpoint().bind)
            ),
        }),
        None => Ok(()),
    }
}

/// Opens a MySQL bind's part of a batch as an XA transaction: the lock and the bookkeeping
/// tables first (DDL is refused inside XA), a check that nothing earlier is unsettled, the
/// batch mark naming the decider (committed, so that recover can find the decision), then
/// `XA START`.
pub fn begin_xa<'a>(
    conn: &'a mut Mysql,
    batch_id: &str,
    mark: &Mark,
) -> Result<Xa<'a>, BatchError> {
    lock_settled(conn)?;
    conn.put_mark(mark)?;
    Ok(conn.start_xa(batch_id)?)
}

/// Runs `sql` statement by statement under `mark`. Returns `Ok(true)` when every statement
/// committed; on a failure, the error and whether it is known that nothing of it committed and
/// no mark is left: the mark could not be written (so nothing ran), or, with
/// `clear_on_first_failure`, the first statement failed (a failed statement is taken to have
/// changed nothing: true of InnoDB statements and of MySQL 8's atomic DDL, not of MariaDB's
/// multi-table `DROP TABLE a, b` or of non-transactional engines).
fn run_marked(
    conn: &mut Mysql,
    m: &mut Mark,
    name: &str,
    sql: &str,
    clear_on_first_failure: bool,
) -> Result<(), (DriverError, bool)> {
    let statements = split_statements(sql);
    conn.put_mark(m).map_err(|e| (e, true))?;
    for (i, statement) in statements.iter().enumerate() {
        if let Err(e) = conn.run_statement(name, statement) {
            if i == 0 && clear_on_first_failure {
                let cleared = conn.clear_mark(m).is_ok();
                return Err((e, cleared));
            }
            return Err((e, false));
        }
        conn.set_mark_progress(m, i as i64 + 1)
            .map_err(|e| (e, false))?;
        m.statements_done = i as i64 + 1;
        if i == 0 && statements.len() > 1 {
            crate::work::crash_point_mid_migration();
        }
    }
    Ok(())
}

fn opposite(direction: Direction) -> Direction {
    match direction {
        Direction::Up => Direction::Down,
        Direction::Down => Direction::Up,
    }
}

/// Why a MySQL bind's share failed, and the bind when it was reached (to be undone).
pub struct Failure {
    pub error: BatchError,
    pub reached: Option<Running>,
}

/// A MySQL bind's share of a batch. On failure the bind is returned too (when it was
/// reached), so that what it did can be undone.
pub fn run(
    index: usize,
    work: &BindWork,
    batch_id: &str,
    decider: &str,
    direction: Direction,
    lock_timeout: Duration,
    at: &str,
) -> Result<Running, Box<Failure>> {
    let bare = |e: DriverError| {
        Box::new(Failure {
            error: BatchError::from(e),
            reached: None,
        })
    };
    let fail = |error: BatchError, running: Running| {
        Box::new(Failure {
            error,
            reached: Some(running),
        })
    };
    let mut conn = Mysql::connect(&work.endpoint, lock_timeout).map_err(bare)?;
    let decides = work.endpoint.bind == decider;
    if decides {
        // A server that does not flush InnoDB's log at commit could lose the decision of a
        // batch decided here: refused before anything is written.
        conn.check_durable_commits().map_err(bare)?;
    }
    lock_settled(&mut conn).map_err(bare)?;
    if decides {
        // A batch of MySQL binds alone, decided here: its `begun` row is written under this
        // bind's lock, which the coordinator holds until the decision, so that `recover`
        // never finds the row of a live batch unheld.
        conn.begin_decision(batch_id, at).map_err(bare)?;
    }
    let applied = conn
        .check_plan_still_valid(direction, &work.plan.steps)
        .map_err(bare)?;
    crate::work::still_planned_from(&work.plan, &applied).map_err(|e| match e {
        BatchError::Bind(d) => bare(d),
        other => bare(DriverError::Other {
            bind: work.endpoint.bind.clone(),
            detail: other.to_string(),
        }),
    })?;
    let batch_mark = batch_mark(batch_id, decider, direction, at);
    conn.put_mark(&batch_mark).map_err(bare)?;
    let mut running = Running {
        index,
        conn,
        done: Vec::new(),
        batch_mark,
        partial: None,
    };
    for step in &work.plan.steps {
        if signals::interrupted() {
            return Err(fail(BatchError::Interrupted, running));
        }
        let marked = match direction {
            Direction::Up => MarkDirection::Up,
            Direction::Down => MarkDirection::Down,
        };
        let mut m = migration_mark(batch_id, decider, marked, step, &step.sql, at);
        if let Err((e, cleared)) =
            run_marked(&mut running.conn, &mut m, &step.name, &step.sql, true)
        {
            if !cleared {
                running.partial = Some(m);
            }
            return Err(fail(e.into(), running));
        }
        let label = direction.to_string();
        if let Err(e) = running
            .conn
            .finish_marked_step(batch_id, direction, &label, step, &m, at)
        {
            running.partial = Some(m);
            return Err(fail(e.into(), running));
        }
        running.done.push(step.clone());
    }
    Ok(running)
}

/// One step to undo: the step as it ran, and the SQL that undoes it.
pub struct Undo {
    pub step: Step,
    /// The direction the step ran in.
    pub ran: Direction,
    pub sql: String,
}

/// Undoes `undos` (newest first) on a MySQL bind whose lock this connection holds. Stops at
/// the first failure, leaving that undo marked, and says what is left.
pub fn undo(
    conn: &mut Mysql,
    batch_id: &str,
    decider: &str,
    undos: &[Undo],
    at: &str,
) -> Result<(), String> {
    for u in undos {
        let direction = MarkDirection::undo_of(u.ran);
        let mut m = migration_mark(batch_id, decider, direction, &u.step, &u.sql, at);
        if u.sql.trim().is_empty() {
            // Nothing says how to undo it: a person must.
            return Err(match conn.put_mark(&m) {
                Ok(()) => m.describe(),
                Err(e) => format!(
                    "{} has no SQL to undo it, and the mark saying so could not be written: {e}",
                    u.step.name
                ),
            });
        }
        // A failed undo stays marked even when its first statement failed: running the same
        // undo again would fail again, so a person settles it with `resolve`.
        if let Err((e, not_started)) = run_marked(conn, &mut m, &u.step.name, &u.sql, false) {
            return Err(if not_started {
                format!(
                    "undoing {} could not start: {e}. Nothing of it ran; run `orchestrate recover` again",
                    u.step.name
                )
            } else {
                format!("undoing {} failed: {e}. {}", u.step.name, m.describe())
            });
        }
        conn.finish_marked_step(batch_id, opposite(u.ran), "undo", &u.step, &m, at)
            .map_err(|e| format!("{} was undone but could not be recorded: {e}", u.step.name))?;
    }
    Ok(())
}

/// The undo list of what a running bind completed in this batch, newest first.
pub fn undos_of(running: &Running, direction: Direction) -> Vec<Undo> {
    running
        .done
        .iter()
        .rev()
        .map(|s| Undo {
            step: s.clone(),
            ran: direction,
            sql: s.undo_sql.clone().unwrap_or_default(),
        })
        .collect()
}
