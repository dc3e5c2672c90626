//! Marks in `orchestrate_in_progress`: what runs outside any transaction (a MySQL bind's
//! statements, a PostgreSQL migration with `run_in_transaction = false`) is covered by a mark
//! written before it starts and cleared, with the step's version-table rows, in one
//! transaction once it is done. A mark left behind says a step was interrupted: `status` shows
//! it, `recover` leaves it to `orchestrate resolve`.

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use orchestrate_core::{Direction, Step};

use super::{Arg, Db, Session};
use crate::error::DriverError;

/// A row of `orchestrate_in_progress` (MySQL binds): something started and not settled.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct Mark {
    /// `batch`: a batch touched this bind and its outcome is not settled here (`xa-batch`: the
    /// same, for a batch whose part here is an XA transaction); `migration`:
    /// a migration (or, with direction `undo-up`/`undo-down`, its undo) started and did not
    /// finish.
    #[diesel(sql_type = Text)]
    pub kind: String,
    /// The batch the work belongs to.
    #[diesel(sql_type = Text)]
    pub batch_id: String,
    /// The migration's version (`-` for a batch mark).
    #[diesel(sql_type = Text)]
    pub version: String,
    /// The bind whose `orchestrate_batches` decides the batch.
    #[diesel(sql_type = Text)]
    pub decider: String,
    /// `up`, `down`, `undo-up` (reverting an applied migration) or `undo-down`.
    #[diesel(sql_type = Text)]
    pub direction: String,
    /// The migration's folder name (empty for a batch mark).
    #[diesel(sql_type = Text)]
    pub name: String,
    /// How many of the migration's statements are known to have committed, counted as they
    /// commit (0 for a batch mark).
    #[diesel(sql_type = BigInt)]
    pub statements_done: i64,
    /// How many statements the migration's SQL has (0 for a batch mark, and for an undo
    /// with no SQL).
    #[diesel(sql_type = BigInt)]
    pub statements_total: i64,
    /// When the work started, as text from the caller (the orchestrator writes an RFC 3339
    /// UTC time); marks are listed in this order.
    #[diesel(sql_type = Text)]
    pub started_at: String,
}

/// What a mark stands for (its `kind` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkKind {
    /// A non-atomic participant's batch, unsettled here (`batch`).
    Batch,
    /// An XA participant's batch, unsettled here (`xa-batch`).
    XaBatch,
    /// A migration, or its undo, under way (`migration`).
    Migration,
}

impl MarkKind {
    /// The `kind` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkKind::Batch => "batch",
            MarkKind::XaBatch => "xa-batch",
            MarkKind::Migration => "migration",
        }
    }
}

/// What a marked migration was doing (its `direction` column).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkDirection {
    /// Applying it (`up`).
    Up,
    /// Reverting it (`down`).
    Down,
    /// Undoing an applied migration, that is reverting it, in a failed batch (`undo-up`).
    UndoUp,
    /// Undoing a reverted migration, that is applying it again (`undo-down`).
    UndoDown,
}

impl MarkDirection {
    /// The `direction` column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            MarkDirection::Up => "up",
            MarkDirection::Down => "down",
            MarkDirection::UndoUp => "undo-up",
            MarkDirection::UndoDown => "undo-down",
        }
    }

    /// The undo of a step that ran in `ran`.
    pub fn undo_of(ran: Direction) -> MarkDirection {
        match ran {
            Direction::Up => MarkDirection::UndoUp,
            Direction::Down => MarkDirection::UndoDown,
        }
    }

    /// How the migration is recorded once it has fully happened: the version-table change
    /// (applied: up; reverted: down) and the history label (`up`, `down` or `undo`).
    pub fn recorded_as(self) -> (Direction, &'static str) {
        match self {
            MarkDirection::Up => (Direction::Up, "up"),
            MarkDirection::Down => (Direction::Down, "down"),
            MarkDirection::UndoUp => (Direction::Down, "undo"),
            MarkDirection::UndoDown => (Direction::Up, "undo"),
        }
    }

    /// Whether the migration is in the database once this has fully happened.
    pub fn leaves_it_applied(self) -> bool {
        matches!(self, MarkDirection::Up | MarkDirection::UndoDown)
    }
}

impl Mark {
    /// The mark's kind; an unknown value (a newer version's) reads as a migration mark, the
    /// kind that needs a person.
    pub fn kind(&self) -> MarkKind {
        match self.kind.as_str() {
            "batch" => MarkKind::Batch,
            "xa-batch" => MarkKind::XaBatch,
            _ => MarkKind::Migration,
        }
    }

    /// A migration mark's direction (`None` for a batch mark or an unknown value).
    pub fn direction(&self) -> Option<MarkDirection> {
        match self.direction.as_str() {
            "up" => Some(MarkDirection::Up),
            "down" => Some(MarkDirection::Down),
            "undo-up" => Some(MarkDirection::UndoUp),
            "undo-down" => Some(MarkDirection::UndoDown),
            _ => None,
        }
    }

    /// A batch mark: `batch` (a non-atomic participant) or `xa-batch` (an XA participant).
    pub fn is_batch(&self) -> bool {
        matches!(self.kind(), MarkKind::Batch | MarkKind::XaBatch)
    }

    /// What the mark means, for people.
    pub fn describe(&self) -> String {
        if self.is_batch() {
            return format!(
                "batch {} (decider `{}`) started here at {} and its outcome is not settled on this bind; run `orchestrate recover`",
                self.batch_id,
                if self.decider.is_empty() { "none" } else { &self.decider },
                self.started_at
            );
        }
        let what = match self.direction() {
            Some(MarkDirection::Up) => "applying",
            Some(MarkDirection::Down) => "reverting",
            Some(MarkDirection::UndoUp) => "undoing (reverting) the applied",
            _ => "undoing (re-applying) the reverted",
        };
        // A PostgreSQL migration run outside a transaction (no decider): nothing else of its
        // segment waits for it; the same upgrade goes on once it is resolved.
        let then = if self.decider.is_empty() {
            "then run the same `orchestrate upgrade --allow-non-atomic` again"
        } else {
            "then `orchestrate recover` settles the rest of the batch"
        };
        format!(
            "interrupted while {what} migration {} (batch {}, started {}): {}. Look at the database and bring migration {} either fully in or fully out by hand, then run `orchestrate resolve --bind <bind> {} --applied` if it is now fully in the database, or `--reverted` if none of it is; {then}",
            self.name,
            self.batch_id,
            self.started_at,
            self.progress(),
            self.name,
            self.version
        )
    }

    /// How far a marked migration got, for people.
    fn progress(&self) -> String {
        if self.statements_done == 0 && self.statements_total == 0 {
            "there is no SQL to undo it, so it must be undone by hand".to_string()
        } else if self.statements_done >= self.statements_total {
            format!(
                "all {} of its statement(s) committed; only the record is missing",
                self.statements_total
            )
        } else {
            format!(
                "{} of its {} statement(s) are known to have committed; statement {} failed or was running, so check whether its change is there; the rest did not run",
                self.statements_done,
                self.statements_total,
                self.statements_done + 1
            )
        }
    }
}

/// A history row of one batch on one bind, newest first (for undoing a batch on MySQL).
#[derive(Clone, Debug)]
pub struct BatchStep {
    /// The migration's version, as recorded.
    pub version: String,
    /// The migration's folder name, as recorded.
    pub name: String,
    /// What the batch did to it: `up` (applied) or `down` (reverted).
    pub direction: String,
    /// The down SQL recorded with the step, if any.
    pub down_sql: Option<String>,
    /// The checksum of `up.sql` recorded with the step, if any.
    pub checksum: Option<String>,
}

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
        let begun = AnsiTransactionManager::begin_transaction(&mut *self.conn);
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
