//! The arbitrated decision, the same SQL on every backend: a batch's row in the decider's
//! `orchestrate_batches` goes `begun` -> `commit` (the coordinator, inside its batch
//! transaction) or `begun` -> `abort` (`recover`, or the coordinator after a failure), each only
//! `WHERE state = 'begun'`, so the database lets exactly one side win. Where backends differ
//! (how a COMMIT is made durable, how a held row is probed without waiting, where else a
//! PostgreSQL decision may be), [`Db`] says.

use std::time::{Duration, Instant};

use super::session::quote_ident;
use super::{Arg, BatchRow, Db, DecisionState, Session, VersionRow};
use crate::error::{DriverError, ErrorClass};
use crate::record::DecisionRecord;
use crate::schema::{self, BATCHES};

impl<C: Db> Session<C> {
    /// Runs `work` in a transaction of its own that is durable when it commits, whatever the
    /// database or role says (`synchronous_commit = off` would let a PostgreSQL COMMIT return
    /// before it is on disk, while the participants' COMMIT PREPARED always is).
    pub(crate) fn durable<T>(
        &mut self,
        work: impl FnOnce(&mut Self) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        // SQLite: the write lock is taken at BEGIN, where the busy timeout applies (a deferred
        // transaction that must upgrade its lock later gets SQLITE_BUSY at once).
        self.begin("cannot begin a transaction")?;
        let done = C::make_commit_durable(self)
            .and_then(|()| work(self))
            .and_then(|value| self.commit().map(|()| value));
        if done.is_err() {
            self.rollback();
        }
        done
    }

    /// A [`DriverError::Busy`] for a wait that began at `started`.
    pub(crate) fn busy(&self, started: Instant) -> DriverError {
        DriverError::Busy {
            bind: self.bind(),
            waited_ms: started.elapsed().as_millis() as u64,
        }
    }

    /// See [`super::Decider::begin_decision`].
    pub(crate) fn begin_decision(&mut self, batch_id: &str, at: &str) -> Result<(), DriverError> {
        let started = Instant::now();
        self.create_tables("cannot create orchestrate_batches", &[(C::BATCHES_DDL, BATCHES)])
            .and_then(|()| C::ensure_guard(self))
            .and_then(|()| {
                self.durable(|this| {
                    this.exec(
                        "cannot record the batch in orchestrate_batches",
                        "INSERT INTO {orchestrate_batches} (batch_id, state, begun_at) VALUES (?, 'begun', ?)",
                        &[Arg::Text(batch_id), Arg::Text(at)],
                    )
                    .map(|_| ())
                })
            })
            // A SQLite decider whose write lock another run holds for its whole batch.
            .map_err(|e| if e.is_lock_wait() { self.busy(started) } else { e })
    }

    /// See [`super::Decider::hold_decision`].
    pub(crate) fn hold_decision(&mut self, batch_id: &str) -> Result<(), DriverError> {
        let rows: Vec<BatchRow> = self.rows(
            "cannot lock the batch's row in orchestrate_batches",
            &format!(
                "SELECT batch_id, state, record FROM {{orchestrate_batches}} WHERE batch_id = ?{}",
                C::ROW_LOCK
            ),
            &[Arg::Text(batch_id)],
        )?;
        match rows.first().map(|r| r.state.as_str()) {
            Some("begun") => Ok(()),
            other => Err(self.decision_lost(batch_id, other.unwrap_or("missing"))),
        }
    }

    fn decision_lost(&self, batch_id: &str, state: &str) -> DriverError {
        DriverError::DecisionLost {
            bind: self.bind(),
            batch_id: batch_id.into(),
            state: state.into(),
        }
    }

    /// See [`super::Decider::decide_commit`].
    pub(crate) fn decide_commit(
        &mut self,
        record: &DecisionRecord,
        at: &str,
    ) -> Result<(), DriverError> {
        let text = serde_json::to_string(record).expect("decision records serialise");
        self.refuse_hooks(true)?;
        // `settled_at` is written too: a decider migration could have set it on the `begun`
        // row, and a settled decision is one `recover` never looks at again.
        let updated = self.exec(
            "cannot write the decision",
            "UPDATE {orchestrate_batches} SET state = 'commit', decided_at = ?, record = ?, settled_at = NULL \
             WHERE batch_id = ? AND state = 'begun'",
            &[Arg::Text(at), Arg::Text(&text), Arg::Text(&record.batch_id)],
        )?;
        if updated == 1 {
            // Read back inside the same transaction: a trigger (or a rule) a migration left
            // on the table could have written something else than this decision, and the
            // COMMIT that follows is the decision only if the row says so.
            let rows: Vec<BatchRow> = self.rows(
                "cannot read back the decision",
                "SELECT batch_id, state, record FROM {orchestrate_batches} WHERE batch_id = ?",
                &[Arg::Text(&record.batch_id)],
            )?;
            let stored = rows
                .into_iter()
                .next()
                .map(|r| self.state_of(r))
                .transpose()?;
            let unsettled = self.count(
                "cannot read back the decision",
                "SELECT count(*) AS n FROM {orchestrate_batches} WHERE batch_id = ? AND settled_at IS NULL",
                &[Arg::Text(&record.batch_id)],
            )? == 1;
            let state = match stored {
                Some(DecisionState::Commit(stored)) if *stored == *record && unsettled => {
                    return Ok(())
                }
                Some(DecisionState::Commit(_)) if !unsettled => "commit, already marked settled",
                Some(DecisionState::Commit(_)) => "commit, with another decision record",
                Some(DecisionState::Abort) => "abort",
                Some(DecisionState::Begun) => "begun",
                None => "missing",
            };
            return Err(self.decision_lost(&record.batch_id, state));
        }
        let state = match self.decision_state(&record.batch_id) {
            Ok(Some(DecisionState::Abort)) => "abort",
            Ok(Some(DecisionState::Commit(_))) => "commit",
            Ok(Some(DecisionState::Begun)) => "begun",
            _ => "missing",
        };
        Err(self.decision_lost(&record.batch_id, state))
    }

    /// A trigger, rule or row security policy on `orchestrate_batches` (a migration may create
    /// one, under any spelling of its name; so may anyone) could rewrite a decision as it is
    /// written, or at COMMIT after it was read back: a decision is written only when there is
    /// none.
    ///
    /// `require_guard`: the guard must be whole too (a commit decision, written in the
    /// transaction the decider's migrations ran in). An abort is written in a transaction of
    /// its own that runs no migration, so it does not need the guard.
    fn refuse_hooks(&mut self, require_guard: bool) -> Result<(), DriverError> {
        let hooks = self.count(
            "cannot read the triggers on orchestrate_batches",
            &C::hooks_sql(&self.schema_name()),
            &[],
        )?;
        if hooks == 0 && require_guard && !C::guard_whole(self)? {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: format!(
                    "orchestrate's guard on orchestrate_batches (triggers {} and {}, function {}) is missing, disabled or changed since this run installed it: a migration of this batch (or someone) altered it, and without it code a migration leaves to run at COMMIT could rewrite the decision; nothing was decided. Remove what alters it from the migration; the next run reinstalls the guard",
                    schema::GUARD_TRIGGERS[0],
                    schema::GUARD_TRIGGERS[1],
                    schema::GUARD_FUNCTION
                ),
            });
        }
        if hooks > 0 {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: "orchestrate_batches has a trigger, rule or row security policy, or (PostgreSQL) the database has a deferrable constraint trigger, which runs at COMMIT after the decision is read back: either could change the batch's decision behind its back; nothing was decided. Drop it (orchestrate creates none) or make that trigger NOT DEFERRABLE, or choose another bind as decider (`decider = \"NAME\"`), and run again".into(),
            });
        }
        Ok(())
    }

    /// See [`super::Decider::decide_abort`].
    pub(crate) fn decide_abort(
        &mut self,
        batch_id: &str,
        at: &str,
        wait: Duration,
    ) -> Result<bool, DriverError> {
        // Best effort: a role that may write the table but does not own it cannot install the
        // guard, and writing `abort` does not need it.
        if let Err(e) = C::ensure_guard(self) {
            tracing::warn!(bind = %self.bind(), error = %e, "orchestrate's guard on orchestrate_batches could not be installed; writing the abort decision without it");
        }
        self.refuse_hooks(false)?;
        let started = Instant::now();
        let deadline = started + wait;
        C::set_write_wait(self, wait);
        let result = loop {
            let attempt = self.durable(|this| {
                C::limit_abort_wait(this, wait)?;
                this.exec(
                    "cannot write the abort decision",
                    "UPDATE {orchestrate_batches} SET state = 'abort', decided_at = ? \
                     WHERE batch_id = ? AND state = 'begun'",
                    &[Arg::Text(at), Arg::Text(batch_id)],
                )
            });
            match attempt {
                Ok(n) => break Ok(n == 1),
                Err(e) if e.is_lock_wait() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) if e.is_lock_wait() => break Err(self.busy(started)),
                Err(e) => break Err(e),
            }
        };
        C::set_write_wait(self, self.lock_timeout());
        result
    }

    /// In a transaction rolled back at once: whether locking the batch's row with `FOR UPDATE
    /// NOWAIT` finds it held by another session (PostgreSQL, MySQL).
    pub(crate) fn probe_row(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        let probe = self
            .sql("SELECT batch_id FROM {orchestrate_batches} WHERE batch_id = ? FOR UPDATE NOWAIT");
        let held = self
            .conn
            .transaction(|c| match c.exec_bound(&probe, &[Arg::Text(batch_id)]) {
                Ok(_) => Err(diesel::result::Error::RollbackTransaction),
                Err(e) if C::classify(&e) == ErrorClass::LockWait => Ok(true),
                Err(e) => Err(e),
            })
            .or_else(|e| match e {
                diesel::result::Error::RollbackTransaction => Ok(false),
                e => Err(e),
            });
        held.map_err(|e| self.query_err("cannot probe the batch's row", e))
    }

    /// See [`super::Decider::decision_state`].
    pub(crate) fn decision_state(
        &mut self,
        batch_id: &str,
    ) -> Result<Option<DecisionState>, DriverError> {
        let tables = self.existing_tables()?;
        if tables.iter().any(|t| t == BATCHES) {
            let rows: Vec<BatchRow> = self.rows(
                "cannot read orchestrate_batches",
                "SELECT batch_id, state, record FROM {orchestrate_batches} WHERE batch_id = ?",
                &[Arg::Text(batch_id)],
            )?;
            if let Some(row) = rows.into_iter().next() {
                let here = self.state_of(row)?;
                // A row of the same batch in another schema that says otherwise (a migration
                // can make one, and a schema early in the search path): which one decides
                // cannot be told, so nothing is decided from either.
                for (schema, other) in C::batch_rows_elsewhere(self, batch_id)? {
                    let other = self.state_of(other)?;
                    if other != here {
                        return Err(self.other(format!(
                            "batch {batch_id} has a row in orchestrate_batches of schema {} ({}) and another in schema {schema} ({}): a migration may have made one of them, and which one decides cannot be told, so nothing was changed for it. Find which is orchestrate's (the schema its version tables were in when the batch ran), drop the other, and run again",
                            self.schema_name(),
                            state_word(&here),
                            state_word(&other)
                        )));
                    }
                }
                return Ok(Some(here));
            }
        }
        if tables.iter().any(|t| t == schema::LEGACY_DECISIONS) {
            let rows: Vec<BatchRow> = self.rows(
                "cannot read orchestrate_decisions",
                "SELECT batch_id, 'commit' AS state, record FROM {orchestrate_decisions} WHERE batch_id = ?",
                &[Arg::Text(batch_id)],
            )?;
            if let Some(row) = rows.into_iter().next() {
                return self.state_of(row).map(Some);
            }
        }
        C::decision_elsewhere(self, batch_id)
    }
}

fn state_word(state: &DecisionState) -> &'static str {
    match state {
        DecisionState::Begun => "begun",
        DecisionState::Commit(_) => "commit",
        DecisionState::Abort => "abort",
    }
}

impl<C: Db> Session<C> {
    /// The state column of a batch's row in `orchestrate_batches`, if there is one.
    fn batch_row_state(&mut self, batch_id: &str) -> Result<Option<String>, DriverError> {
        let rows: Vec<BatchRow> = self.rows(
            "cannot read orchestrate_batches",
            "SELECT batch_id, state, record FROM {orchestrate_batches} WHERE batch_id = ?",
            &[Arg::Text(batch_id)],
        )?;
        Ok(rows.into_iter().next().map(|r| r.state))
    }

    pub(crate) fn state_of(&self, row: BatchRow) -> Result<DecisionState, DriverError> {
        match row.state.as_str() {
            "begun" => Ok(DecisionState::Begun),
            "abort" => Ok(DecisionState::Abort),
            "commit" => self
                .parse_record(&row.batch_id, row.record.as_deref().unwrap_or(""))
                .map(|r| DecisionState::Commit(Box::new(r))),
            other => Err(self.other(format!(
                "batch {} has state `{other}` in orchestrate_batches, which this version does not know",
                row.batch_id
            ))),
        }
    }

    fn parse_record(&self, batch_id: &str, text: &str) -> Result<DecisionRecord, DriverError> {
        serde_json::from_str(text).map_err(|e| {
            self.other(format!(
                "the decision record of batch {batch_id} is unreadable: {e}"
            ))
        })
    }

    /// See [`super::Decider::begun_batches`].
    pub(crate) fn begun_batches(&mut self) -> Result<Vec<String>, DriverError> {
        if !self.existing_tables()?.iter().any(|t| t == BATCHES) {
            return Ok(Vec::new());
        }
        let rows: Vec<VersionRow> = self.rows(
            "cannot read orchestrate_batches",
            "SELECT batch_id AS version FROM {orchestrate_batches} WHERE state = 'begun' ORDER BY batch_id",
            &[],
        )?;
        Ok(rows.into_iter().map(|r| r.version).collect())
    }

    /// See [`super::Decider::unsettled_decisions`].
    pub(crate) fn unsettled_decisions(&mut self) -> Result<Vec<DecisionRecord>, DriverError> {
        let tables = self.existing_tables()?;
        let has_batches = tables.iter().any(|t| t == BATCHES);
        let mut rows: Vec<BatchRow> = Vec::new();
        if has_batches {
            rows = self.rows(
                "cannot read orchestrate_batches",
                "SELECT batch_id, state, record FROM {orchestrate_batches} \
                 WHERE state = 'commit' AND settled_at IS NULL ORDER BY batch_id",
                &[],
            )?;
        }
        if tables.iter().any(|t| t == schema::LEGACY_DECISIONS) {
            rows.extend(self.unsettled_legacy_decisions(has_batches)?);
        }
        // PostgreSQL: decisions written under an earlier default search_path count too.
        for schema in C::other_batch_schemas(self)? {
            let qualifier = quote_ident::<C>(&schema);
            let found = self
                .rows::<BatchRow>(
                    "cannot read orchestrate_batches",
                    &format!(
                        "SELECT batch_id, state, record FROM {qualifier}.\"orchestrate_batches\" \
                         WHERE state = 'commit' AND settled_at IS NULL ORDER BY batch_id"
                    ),
                    &[],
                )
                .map_err(|e| self.unreadable_elsewhere(&schema, BATCHES, e))?;
            rows.extend(found);
        }
        rows.into_iter()
            .map(|row| self.parse_record(&row.batch_id, row.record.as_deref().unwrap_or("")))
            .collect()
    }

    /// The decisions of `orchestrate_decisions` not yet copied into `orchestrate_batches`.
    fn unsettled_legacy_decisions(
        &mut self,
        has_batches: bool,
    ) -> Result<Vec<BatchRow>, DriverError> {
        let legacy: Vec<BatchRow> = self.rows(
            "cannot read orchestrate_decisions",
            "SELECT batch_id, 'commit' AS state, record FROM {orchestrate_decisions} ORDER BY batch_id",
            &[],
        )?;
        let settled: Vec<String> = if has_batches {
            let known: Vec<VersionRow> = self.rows(
                "cannot read orchestrate_batches",
                "SELECT batch_id AS version FROM {orchestrate_batches}",
                &[],
            )?;
            known.into_iter().map(|r| r.version).collect()
        } else {
            Vec::new()
        };
        Ok(legacy
            .into_iter()
            .filter(|r| !settled.contains(&r.batch_id))
            .collect())
    }

    /// See [`super::Decider::settle_decision`].
    pub(crate) fn settle_decision(
        &mut self,
        record: &DecisionRecord,
        at: &str,
    ) -> Result<(), DriverError> {
        // The row may be in another schema than this session resolved (the default
        // search_path changed since the batch began): settle it there, never write a copy.
        if !self.existing_tables()?.iter().any(|t| t == BATCHES)
            || self.batch_row_state(&record.batch_id)?.is_none()
        {
            C::decision_elsewhere(self, &record.batch_id)?;
        }
        self.create_tables(
            "cannot create orchestrate_batches",
            &[(C::BATCHES_DDL, BATCHES)],
        )?;
        let updated = self.exec(
            "cannot settle the batch in orchestrate_batches",
            "UPDATE {orchestrate_batches} SET settled_at = ? WHERE batch_id = ? AND state = 'commit' AND settled_at IS NULL",
            &[Arg::Text(at), Arg::Text(&record.batch_id)],
        )?;
        if updated > 0 {
            return Ok(());
        }
        if let Some(state) = self.batch_row_state(&record.batch_id)? {
            if state == "commit" {
                // Settled already (by its coordinator, or another recover): the first
                // settlement stands.
                return Ok(());
            }
            return Err(self.other(format!(
                "batch {} is `{state}` in orchestrate_batches here, not `commit`: its decision is not what this run committed",
                record.batch_id
            )));
        }
        let text = serde_json::to_string(record).expect("decision records serialise");
        self.exec(
            "cannot settle the batch in orchestrate_batches",
            "INSERT INTO {orchestrate_batches} (batch_id, state, begun_at, decided_at, settled_at, record) \
             VALUES (?, 'commit', ?, ?, ?, ?)",
            &[
                Arg::Text(&record.batch_id),
                Arg::Text(at),
                Arg::Text(at),
                Arg::Text(at),
                Arg::Text(&text),
            ],
        )
        .map(|_| ())
    }
}
