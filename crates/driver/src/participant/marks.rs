//! Marks in `orchestrate_in_progress`: what runs outside any transaction (a MySQL bind's
//! statements, a PostgreSQL migration with `run_in_transaction = false`) is covered by a mark
//! written before it starts and cleared, with the step's version-table rows, in one
//! transaction once it is done. A mark left behind says a step was interrupted: `status` shows
//! it, `recover` leaves it to `orchestrate resolve`.

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use orchestrate_core::{Direction, Step};

use super::{Arg, Db, Mark, Session};
use crate::error::DriverError;

impl<C: Db> Session<C> {
    /// Every mark on this bind (the table must exist).
    pub(crate) fn load_marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        self.rows(
            "cannot read orchestrate_in_progress",
            "SELECT kind, batch_id, version, decider, direction, name, statements_done, \
             statements_total, started_at FROM {orchestrate_in_progress} ORDER BY started_at, kind",
            &[],
        )
    }

    /// Writes a mark (committed at once, outside a transaction).
    pub(crate) fn put_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
        self.exec(
            "cannot write to orchestrate_in_progress",
            "INSERT INTO {orchestrate_in_progress} (kind, batch_id, version, decider, direction, name, \
             statements_done, statements_total, started_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            &[
                Arg::Text(&mark.kind),
                Arg::Text(&mark.batch_id),
                Arg::Text(&mark.version),
                Arg::Text(&mark.decider),
                Arg::Text(&mark.direction),
                Arg::Text(&mark.name),
                Arg::Int(mark.statements_done),
                Arg::Int(mark.statements_total),
                Arg::Text(&mark.started_at),
            ],
        )
        .map(|_| ())
    }

    /// Records how many statements of a marked migration have committed.
    pub(crate) fn set_mark_progress(&mut self, mark: &Mark, done: i64) -> Result<(), DriverError> {
        self.exec(
            "cannot write to orchestrate_in_progress",
            "UPDATE {orchestrate_in_progress} SET statements_done = ? WHERE kind = ? AND batch_id = ? AND version = ?",
            &[
                Arg::Int(done),
                Arg::Text(&mark.kind),
                Arg::Text(&mark.batch_id),
                Arg::Text(&mark.version),
            ],
        )
        .map(|_| ())
    }

    /// Removes a mark (committed at once, or with the open transaction). A mark that is not
    /// there is an error: someone else settled it, and what was about to be recorded with its
    /// removal must not be.
    pub(crate) fn clear_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
        let deleted = self.exec(
            "cannot write to orchestrate_in_progress",
            "DELETE FROM {orchestrate_in_progress} WHERE kind = ? AND batch_id = ? AND version = ?",
            &[
                Arg::Text(&mark.kind),
                Arg::Text(&mark.batch_id),
                Arg::Text(&mark.version),
            ],
        )?;
        if deleted == 1 {
            return Ok(());
        }
        Err(self.other(format!(
            "the mark of {} (batch {}) is gone: another run settled it meanwhile",
            if mark.is_batch() {
                "the batch"
            } else {
                &mark.name
            },
            mark.batch_id
        )))
    }

    /// Records a finished step in the version tables and clears its mark, in one
    /// transaction: either the step is recorded and unmarked, or still marked.
    pub(crate) fn finish_marked_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        label: &str,
        step: &Step,
        mark: &Mark,
        at: &str,
    ) -> Result<(), DriverError> {
        let begun = AnsiTransactionManager::begin_transaction(&mut self.conn);
        begun.map_err(|e| self.query_err("cannot begin a transaction", e))?;
        let done = self
            .record_step(batch_id, direction, label, step, at)
            .and_then(|()| self.clear_mark(mark))
            .and_then(|()| self.commit());
        if done.is_err() {
            self.rollback();
        }
        done
    }
}
