//! The bookkeeping every backend does with the same SQL: one open diesel connection with where
//! this tool's tables are (fixed at connect), bound statements on them, diesel's version table
//! and `orchestrate_history`, and the plain transaction around them. What differs per backend
//! comes from [`Db`].

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, TransactionManager};
use diesel::r2d2::{ConnectionManager, PooledConnection, R2D2Connection};
use orchestrate_core::{Applied, Direction, Step, Version};

use super::{Arg, Count, Db, HistoryRow, Name, ReadRow, Row, VersionRow};
use crate::endpoint::Endpoint;
use crate::error::DriverError;
use crate::participant::BindState;
use crate::schema::{self, BATCHES, DIESEL_TABLE, HISTORY, IN_PROGRESS};

/// A session's connection: one this tool opened from the bind's URL, or one lent by the
/// application's pool ([`crate::Endpoint::with_pool`]).
pub(crate) enum Conn<C: R2D2Connection + Send + 'static> {
    Own(C),
    /// Never given back to the pool as it is: when the session ends it is marked broken, so
    /// the pool closes it and opens another. A migration may have changed its session (a
    /// `SET`, a role, a temporary table), and the application must not inherit that.
    Lent(PooledConnection<ConnectionManager<C>>),
}

impl<C: R2D2Connection + Send + 'static> Deref for Conn<C> {
    type Target = C;
    fn deref(&self) -> &C {
        match self {
            Conn::Own(c) => c,
            Conn::Lent(c) => c,
        }
    }
}

impl<C: R2D2Connection + Send + 'static> DerefMut for Conn<C> {
    fn deref_mut(&mut self) -> &mut C {
        match self {
            Conn::Own(c) => c,
            Conn::Lent(c) => c,
        }
    }
}

impl<C: R2D2Connection + Send + 'static> Drop for Conn<C> {
    fn drop(&mut self) {
        if let Conn::Lent(c) = self {
            // diesel's pool manager discards a connection whose transaction manager is in
            // error (`R2D2Connection::is_broken`).
            let c: &mut C = c;
            <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(c)
                .set_in_error();
        }
    }
}

/// One open connection to one bind, and where this tool's tables are on it.
pub(crate) struct Session<C: Db> {
    endpoint: Endpoint,
    pub(crate) conn: Conn<C>,
    lock_timeout: Duration,
    /// Where this tool's tables live, quoted, with a trailing dot: the PostgreSQL schema first
    /// in the search path when the connection opened, `main.` on SQLite, the database on MySQL.
    /// Fixed at connect, before any migration can move the search path.
    qualifier: String,
}

/// Quotes an identifier (a schema or database name read from the server) with the backend's
/// quote, doubling it inside.
pub(crate) fn quote_ident<C: Db>(name: &str) -> String {
    let q = C::QUOTE;
    format!("{q}{}{q}", name.replace(q, &format!("{q}{q}")))
}

impl<C: Db> Session<C> {
    /// A session on `conn`, whose tables are found by `where_sql` (one row, column `s`: the
    /// schema or database name; `NULL` or no row: `missing` is the error).
    pub(crate) fn open(
        endpoint: &Endpoint,
        conn: Conn<C>,
        lock_timeout: Duration,
        where_sql: &str,
        missing: &str,
    ) -> Result<Session<C>, DriverError> {
        let mut session = Session {
            endpoint: endpoint.clone(),
            conn,
            lock_timeout,
            qualifier: String::new(),
        };
        let found: Vec<Name> = session.rows("cannot read the session's schema", where_sql, &[])?;
        let Some(name) = found.into_iter().next().and_then(|n| n.s) else {
            return Err(session.other(missing));
        };
        session.set_schema(&name);
        Ok(session)
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub(crate) fn lock_timeout(&self) -> Duration {
        self.lock_timeout
    }

    pub(crate) fn bind(&self) -> String {
        self.endpoint.bind.clone()
    }

    /// A bookkeeping table of another schema of this database that this bind's role may not
    /// read: it may hold this bind's records (written under an earlier search_path or other
    /// credentials) or another project's, and nothing is decided on a guess. Says what to
    /// grant. Any other error (a lock wait, a lost connection) is returned as it is.
    pub(crate) fn unreadable_elsewhere(
        &self,
        schema: &str,
        table: &str,
        error: DriverError,
    ) -> DriverError {
        let denied = error.class() == Some(crate::error::ErrorClass::Other)
            && error
                .database_error()
                .and_then(crate::error::message_of)
                .is_some_and(|m| m.contains("permission denied"));
        if !denied {
            return error;
        }
        let q = quote_ident::<C>(schema);
        DriverError::Other {
            bind: self.bind(),
            detail: format!(
                "schema {schema} of this database holds an {table} this bind's role may not read ({error}); it may hold this bind's records (written under an earlier search_path or other credentials) or another project's, and nothing is decided on a guess. Let the role in the bind's URL read it (GRANT USAGE ON SCHEMA {q} TO <role>; GRANT SELECT ON {q}.{table} TO <role>), or give each project its own database"
            ),
        }
    }

    pub(crate) fn query_err(&self, what: &str, source: diesel::result::Error) -> DriverError {
        DriverError::Query {
            bind: self.bind(),
            what: what.into(),
            class: C::classify(&source),
            source,
        }
    }

    pub(crate) fn migration_err(&self, name: &str, source: diesel::result::Error) -> DriverError {
        DriverError::Migration {
            bind: self.bind(),
            name: name.into(),
            at: None,
            class: C::classify(&source),
            source,
        }
    }

    /// [`Session::migration_err`] with where in `sql` (the file `file`) the error is, when
    /// the server gave a position.
    pub(crate) fn migration_err_in(
        &self,
        name: &str,
        file: &str,
        sql: &str,
        source: diesel::result::Error,
    ) -> DriverError {
        let at = match &source {
            diesel::result::Error::DatabaseError(_, info) => info
                .statement_position()
                .and_then(|p| locate(sql, p))
                .map(|(line, column, text)| {
                    format!("line {line}, column {column} of {file}: {text}")
                }),
            _ => None,
        };
        match self.migration_err(name, source) {
            DriverError::Migration {
                bind,
                name,
                class,
                source,
                ..
            } => DriverError::Migration {
                bind,
                name,
                at,
                class,
                source,
            },
            other => other,
        }
    }

    pub(crate) fn other(&self, detail: impl Into<String>) -> DriverError {
        DriverError::Other {
            bind: self.bind(),
            detail: detail.into(),
        }
    }

    /// From now on this tool's tables are in `schema` (PostgreSQL schema, MySQL database).
    pub(crate) fn set_schema(&mut self, schema: &str) {
        self.qualifier = format!("{}.", quote_ident::<C>(schema));
    }

    /// The PostgreSQL schema (or MySQL database) name behind the qualifier, unquoted.
    pub(crate) fn schema_name(&self) -> String {
        let q = C::QUOTE;
        let quoted = self.qualifier.trim_end_matches('.');
        quoted[1..quoted.len() - 1].replace(&format!("{q}{q}"), &q.to_string())
    }

    /// The fully qualified name of one of this tool's tables.
    pub(crate) fn table(&self, name: &str) -> String {
        format!("{}{}", self.qualifier, quote_ident::<C>(name))
    }

    /// A DDL template of [`schema`] with its table's qualified name.
    pub(crate) fn ddl(&self, template: &str, name: &str) -> String {
        template.replace("{t}", &self.table(name))
    }

    /// The bookkeeping statement `sql` with `{name}` placeholders replaced by qualified table
    /// names and `?` placeholders written as the backend wants them.
    pub(crate) fn sql(&self, sql: &str) -> String {
        let mut text = sql.to_string();
        for name in [
            DIESEL_TABLE,
            HISTORY,
            BATCHES,
            IN_PROGRESS,
            schema::LEGACY_DECISIONS,
        ] {
            text = text.replace(&format!("{{{name}}}"), &self.table(name));
        }
        C::placeholders(text)
    }

    /// Runs a bookkeeping statement.
    pub(crate) fn exec(
        &mut self,
        what: &str,
        sql: &str,
        args: &[Arg],
    ) -> Result<usize, DriverError> {
        let sql = self.sql(sql);
        let done = self.conn.exec_bound(&sql, args);
        done.map_err(|e| self.query_err(what, e))
    }

    /// Runs a bookkeeping query.
    pub(crate) fn rows<T: Row>(
        &mut self,
        what: &str,
        sql: &str,
        args: &[Arg],
    ) -> Result<Vec<T>, DriverError> {
        let sql = self.sql(sql);
        let done = self.conn.load_bound::<T>(&sql, args);
        done.map_err(|e| self.query_err(what, e))
    }

    pub(crate) fn count(
        &mut self,
        what: &str,
        sql: &str,
        args: &[Arg],
    ) -> Result<i64, DriverError> {
        let rows: Vec<Count> = self.rows(what, sql, args)?;
        Ok(rows.first().map_or(0, |r| r.n))
    }

    /// Runs plain SQL of this crate (no values).
    pub(crate) fn execute_plain(&mut self, what: &str, sql: &str) -> Result<(), DriverError> {
        let done = self.conn.batch_execute(sql);
        done.map_err(|e| self.query_err(what, e))
    }

    /// Creates each `(template, table)` of [`schema`] that is missing.
    pub(crate) fn create_tables(
        &mut self,
        what: &str,
        tables: &[(&str, &str)],
    ) -> Result<(), DriverError> {
        for (template, name) in tables {
            let ddl = self.ddl(template, name);
            self.execute_plain(what, &ddl)?;
        }
        Ok(())
    }

    /// Begins a transaction that will write (SQLite: taking the write lock now).
    pub(crate) fn begin(&mut self, what: &str) -> Result<(), DriverError> {
        let begun = self.conn.begin_write();
        begun.map_err(|e| self.query_err(what, e))
    }

    /// Commits the open transaction.
    pub(crate) fn commit(&mut self) -> Result<(), DriverError> {
        let done = AnsiTransactionManager::commit_transaction(&mut *self.conn);
        done.map_err(|e| self.query_err("COMMIT failed", e))
    }

    /// Whether diesel knows of an open transaction on this connection.
    pub(crate) fn in_transaction(&mut self) -> bool {
        matches!(
            AnsiTransactionManager::transaction_manager_status_mut(&mut *self.conn)
                .transaction_depth(),
            Ok(Some(_))
        )
    }

    /// Rolls back the open transaction, if there is one; errors are only logged because
    /// dropping the connection rolls back too.
    pub(crate) fn rollback(&mut self) {
        if !self.in_transaction() {
            return;
        }
        if let Err(e) = AnsiTransactionManager::rollback_transaction(&mut *self.conn) {
            tracing::warn!(bind = %self.endpoint.bind, error = %e, "rollback failed; the connection is dropped instead");
        }
    }

    /// Which of this tool's tables exist where this connection keeps them.
    pub(crate) fn existing_tables(&mut self) -> Result<Vec<String>, DriverError> {
        let sql = C::tables_sql(&self.schema_name());
        let rows: Vec<Name> = self.rows("cannot read the catalog", &sql, &[])?;
        Ok(rows.into_iter().filter_map(|r| r.s).collect())
    }

    pub(crate) fn table_exists(&mut self, table: &str) -> Result<bool, DriverError> {
        Ok(self.existing_tables()?.iter().any(|t| t == table))
    }
}

/// The version tables and `orchestrate_history`.
impl<C: Db> Session<C> {
    /// What the database has applied, its marks (MySQL) and its unsettled decisions. Creates
    /// nothing.
    pub(crate) fn read_applied(&mut self) -> Result<BindState, DriverError> {
        let mut state = BindState {
            exists: true,
            ..BindState::default()
        };
        if let Some(sql) = C::read_all_sql(&self.schema_name()) {
            match self.rows::<ReadRow>("cannot read the version tables", &sql, &[]) {
                Ok(rows) => return self.read_applied_from(state, rows),
                // A table is missing (a bind not yet migrated): read what is there.
                Err(e) if e.is_missing() => {}
                Err(e) => return Err(e),
            }
        }
        let tables = self.existing_tables()?;
        let has = |t: &str| tables.iter().any(|x| x == t);
        state.marks = C::marks(self, &tables)?;
        if has(BATCHES) || has(schema::LEGACY_DECISIONS) {
            state.unsettled = self.unsettled_decisions()?;
        }
        if has(DIESEL_TABLE) {
            let recorded = if has(HISTORY) {
                self.recorded_steps()?
            } else {
                HashMap::new()
            };
            state.applied = self.applied_with(recorded)?;
        }
        Ok(state)
    }

    /// [`Session::read_applied`] from the rows of [`Db::read_all_sql`], reading the marks and
    /// decisions when their tables exist.
    fn read_applied_from(
        &mut self,
        mut state: BindState,
        mut rows: Vec<ReadRow>,
    ) -> Result<BindState, DriverError> {
        // The newest history row of a version wins, as in `recorded_steps`.
        rows.sort_by_key(|r| r.n);
        let mut tables = Vec::new();
        let mut versions = Vec::new();
        let mut recorded = HashMap::new();
        for r in rows {
            match (r.k.as_str(), r.a) {
                ("t", Some(table)) => tables.push(table),
                ("v", Some(version)) => versions.push(version),
                ("h", Some(version)) => {
                    recorded.insert(
                        version.clone(),
                        HistoryRow {
                            version,
                            name: r.b.unwrap_or_default(),
                            direction: r.c.unwrap_or_default(),
                            checksum: r.d,
                            down_sql: r.e,
                        },
                    );
                }
                _ => {}
            }
        }
        let has = |t: &str| tables.iter().any(|x| x == t);
        state.marks = C::marks(self, &tables)?;
        if has(BATCHES) || has(schema::LEGACY_DECISIONS) {
            state.unsettled = self.unsettled_decisions()?;
        }
        state.applied = with_recorded(versions, recorded);
        Ok(state)
    }

    /// The newest `up` or `stamp` history row of each version: name, checksum, down SQL.
    fn recorded_steps(&mut self) -> Result<HashMap<String, HistoryRow>, DriverError> {
        let rows: Vec<HistoryRow> = self.rows(
            "cannot read orchestrate_history",
            "SELECT version, name, direction, checksum, down_sql FROM {orchestrate_history} \
             WHERE direction IN ('up', 'stamp') ORDER BY id",
            &[],
        )?;
        Ok(rows.into_iter().map(|r| (r.version.clone(), r)).collect())
    }

    /// diesel's versions, with what the history recorded of each, in version order.
    fn applied_with(
        &mut self,
        recorded: HashMap<String, HistoryRow>,
    ) -> Result<Vec<Applied>, DriverError> {
        Ok(with_recorded(self.applied_versions()?, recorded))
    }

    /// The versions in diesel's table.
    pub(crate) fn applied_versions(&mut self) -> Result<Vec<String>, DriverError> {
        let rows: Vec<VersionRow> = self.rows(
            "cannot read __diesel_schema_migrations",
            "SELECT version FROM {__diesel_schema_migrations}",
            &[],
        )?;
        Ok(rows.into_iter().map(|r| r.version).collect())
    }

    /// Whether the history holds rows of `batch_id` matching `condition`.
    /// Every row of `orchestrate_history`, oldest first.
    pub(crate) fn history_events(&mut self) -> Result<Vec<super::HistoryEvent>, DriverError> {
        if !self.table_exists(HISTORY)? {
            return Ok(Vec::new());
        }
        self.rows(
            "cannot read orchestrate_history",
            "SELECT batch_id, version, name, direction, at FROM {orchestrate_history} ORDER BY id",
            &[],
        )
    }

    pub(crate) fn has_history(
        &mut self,
        batch_id: &str,
        condition: &str,
    ) -> Result<bool, DriverError> {
        if !self.table_exists(HISTORY)? {
            return Ok(false);
        }
        let n = self.count(
            "cannot read orchestrate_history",
            &format!("SELECT count(*) AS n FROM {{orchestrate_history}} WHERE batch_id = ? AND {condition}"),
            &[Arg::Text(batch_id)],
        )?;
        Ok(n > 0)
    }

    /// Records, once, that this bind's part of a decided batch was ended against the decision
    /// by someone else (a heuristic outcome).
    pub(crate) fn record_heuristic(
        &mut self,
        batch_id: &str,
        detail: &str,
        at: &str,
    ) -> Result<(), DriverError> {
        self.create_tables(
            "cannot create orchestrate_history",
            &[(C::HISTORY_DDL, HISTORY)],
        )?;
        let row = Step::record_only(Version::from_stored("-"), detail.into(), None, None);
        self.insert_history(batch_id, "heuristic", &row, at)
            .map_err(|e| match e {
                DriverError::Query {
                    bind,
                    source,
                    class,
                    ..
                } => DriverError::Query {
                    bind,
                    what: "cannot record the heuristic outcome".into(),
                    class,
                    source,
                },
                other => other,
            })
    }

    /// One row of `orchestrate_history`: `step`'s version, name, checksum and down SQL under
    /// `direction` (`up`, `down`, `stamp`, `unstamp`, `undo`, `heuristic`).
    fn insert_history(
        &mut self,
        batch_id: &str,
        direction: &str,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError> {
        self.exec(
            "cannot record the migration in orchestrate_history",
            "INSERT INTO {orchestrate_history} (batch_id, version, name, direction, checksum, down_sql, at) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
            &[
                Arg::Text(batch_id),
                Arg::Text(step.version.as_str()),
                Arg::Text(&step.name),
                Arg::Text(direction),
                Arg::MaybeText(step.checksum.as_deref()),
                Arg::MaybeText(step.down_sql.as_deref()),
                Arg::Text(at),
            ],
        )
        .map(|_| ())
    }

    /// Records a step in the version tables without running it (see
    /// [`super::Bookkeeping::record_step`]).
    pub(crate) fn record_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        label: &str,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError> {
        let version = step.version.as_str();
        let sql = match direction {
            Direction::Up => "INSERT INTO {__diesel_schema_migrations} (version) VALUES (?)",
            Direction::Down => "DELETE FROM {__diesel_schema_migrations} WHERE version = ?",
        };
        self.exec(
            "cannot record the migration in __diesel_schema_migrations",
            sql,
            &[Arg::Text(version)],
        )?;
        self.insert_history(batch_id, label, step, at)
    }

    /// See [`super::Bookkeeping::check_plan_still_valid`].
    pub(crate) fn check_plan_still_valid(
        &mut self,
        direction: Direction,
        steps: &[Step],
    ) -> Result<Vec<String>, DriverError> {
        let applied = self.applied_versions()?;
        for step in steps {
            let is_applied = applied.iter().any(|v| v == step.version.as_str());
            let expected = direction == Direction::Down;
            if is_applied != expected {
                return Err(DriverError::Moved {
                    bind: self.bind(),
                    detail: format!(
                        "{} is {} now",
                        step.name,
                        if is_applied { "applied" } else { "not applied" }
                    ),
                });
            }
        }
        Ok(applied)
    }

    /// Runs one migration's SQL in the open batch transaction and records it. `left` says
    /// (its flag: after the migration failed) whether the batch's transaction ended under the
    /// migration (then
    /// [`DriverError::LeftTransaction`] is the answer, even when the migration failed
    /// afterwards: what it ran before may be committed, which "rolled back" would hide).
    /// `in_batch`, the batch transaction's id where the backend has one (PostgreSQL), lets
    /// both bookkeeping rows go in one statement ([`Session::record_step_in`]).
    pub(crate) fn run_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        step: &Step,
        at: &str,
        left: impl Fn(&mut Self, bool) -> Result<bool, DriverError>,
        in_batch: Option<i64>,
    ) -> Result<(), DriverError> {
        let left_transaction = |bind: String| DriverError::LeftTransaction {
            bind,
            name: step.name.clone(),
        };
        if let Err(source) = self.conn.batch_execute(&step.sql) {
            if matches!(left(self, true), Ok(true)) {
                return Err(left_transaction(self.bind()));
            }
            let file = match (direction, step.down_source) {
                (Direction::Up, _) => "up.sql",
                (Direction::Down, Some(orchestrate_core::DownSqlSource::Stored)) => {
                    "the down SQL stored when it was applied"
                }
                (Direction::Down, _) => "down.sql",
            };
            return Err(self.migration_err_in(&step.name, file, &step.sql, source));
        }
        // Whether the batch's transaction is still the one open is asked first, on its own:
        // after a failed write, a transaction a migration opened in its place (or its own
        // aborted one) could not be asked.
        if left(self, false)? {
            return Err(left_transaction(self.bind()));
        }
        let recorded = match in_batch {
            // Both bookkeeping rows in one statement, still written only in that transaction.
            Some(xact) => self.record_step_in(xact, batch_id, direction, step, at)?,
            None => {
                self.record_step(batch_id, direction, &direction.to_string(), step, at)?;
                true
            }
        };
        if !recorded {
            return Err(left_transaction(self.bind()));
        }
        Ok(())
    }

    /// Records a step run in the batch transaction whose id is `xact` (PostgreSQL's
    /// `txid_current()`), in one statement that writes nothing unless the transaction open
    /// now is still that one. Returns whether it wrote (false: a migration ended the batch's
    /// transaction). The rows are the same [`Session::record_step`] writes.
    pub(crate) fn record_step_in(
        &mut self,
        xact: i64,
        batch_id: &str,
        direction: Direction,
        step: &Step,
        at: &str,
    ) -> Result<bool, DriverError> {
        let version_sql = match direction {
            Direction::Up => {
                "v AS (INSERT INTO {__diesel_schema_migrations} (version) SELECT ? FROM t WHERE t.ok RETURNING 1)"
            }
            Direction::Down => {
                "v AS (DELETE FROM {__diesel_schema_migrations} WHERE version = ? AND (SELECT ok FROM t) RETURNING 1)"
            }
        };
        let sql = format!(
            "WITH t AS (SELECT pg_catalog.txid_current() = ? AS ok), {version_sql}, \
             h AS (INSERT INTO {{orchestrate_history}} (batch_id, version, name, direction, checksum, down_sql, at) \
             SELECT ?, ?, ?, ?, ?, ?, ? FROM t WHERE t.ok RETURNING 1) \
             SELECT count(*) AS n FROM h"
        );
        let label = direction.to_string();
        let written = self.count(
            "cannot record the migration in __diesel_schema_migrations and orchestrate_history",
            &sql,
            &[
                Arg::Int(xact),
                Arg::Text(step.version.as_str()),
                Arg::Text(batch_id),
                Arg::Text(step.version.as_str()),
                Arg::Text(&step.name),
                Arg::Text(&label),
                Arg::MaybeText(step.checksum.as_deref()),
                Arg::MaybeText(step.down_sql.as_deref()),
                Arg::Text(at),
            ],
        )?;
        Ok(written == 1)
    }
}

/// diesel's `versions`, with what the history `recorded` of each, in version order.
fn with_recorded(versions: Vec<String>, mut recorded: HashMap<String, HistoryRow>) -> Vec<Applied> {
    let mut applied: Vec<Applied> = versions
        .into_iter()
        .map(|v| {
            let row = recorded.remove(&v);
            Applied {
                version: Version::from_stored(&v),
                name: row.as_ref().map(|r| r.name.clone()),
                checksum: row.as_ref().and_then(|r| r.checksum.clone()),
                down_sql: row.and_then(|r| r.down_sql),
            }
        })
        .collect();
    applied.sort_by(|a, b| a.version.cmp(&b.version));
    applied
}

/// The line and column (from 1) of the character at `position` (1-based, in characters, as
/// PostgreSQL counts its error position) in `sql`, and that line's text (trimmed, at most 120
/// characters). One past the last character ("syntax error at end of input") is the end of
/// the last line. `None` when the position is outside the text.
pub(crate) fn locate(sql: &str, position: i32) -> Option<(usize, usize, String)> {
    let index = usize::try_from(position).ok()?.checked_sub(1)?;
    let mut line = 1;
    let mut column = 1;
    let mut line_start = 0;
    let text_of = |start: usize| -> String {
        sql[start..]
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .chars()
            .take(120)
            .collect()
    };
    let mut count = 0;
    for (i, (byte, c)) in sql.char_indices().enumerate() {
        count = i + 1;
        if i == index {
            return Some((line, column, text_of(line_start)));
        }
        if c == '\n' {
            line += 1;
            column = 1;
            line_start = byte + 1;
        } else {
            column += 1;
        }
    }
    if index != count || count == 0 {
        return None;
    }
    // At the end of input: the end of the last line with text (a file ends with a newline).
    let trimmed = sql.trim_end();
    if trimmed.len() < sql.len() && !trimmed.is_empty() {
        return locate(trimmed, trimmed.chars().count() as i32 + 1);
    }
    Some((line, column, text_of(line_start)))
}

#[cfg(test)]
mod locate_tests {
    use super::locate;

    #[test]
    fn finds_the_line_and_column_of_a_position() {
        let sql = "CREATE TABLE a (id INT);\n\n  SELECT * FROM nope;\n";
        let pos = sql.find("nope").unwrap() as i32 + 1;
        assert_eq!(
            locate(sql, pos),
            Some((3, 17, "SELECT * FROM nope;".to_string()))
        );
        assert_eq!(
            locate(sql, 1),
            Some((1, 1, "CREATE TABLE a (id INT);".into()))
        );
        // Characters, not bytes.
        let sql = "-- é\nSELECT x;";
        assert_eq!(locate(sql, 7), Some((2, 2, "SELECT x;".into())));
        assert_eq!(locate(sql, 0), None);
        assert_eq!(locate(sql, 500), None);
        // At end of input: one past the last character.
        for sql in [
            "SELECT 1;\nCREATE TABLE t (",
            "SELECT 1;\nCREATE TABLE t (\n\n",
        ] {
            assert_eq!(
                locate(sql, sql.chars().count() as i32 + 1),
                Some((2, 17, "CREATE TABLE t (".into())),
                "{sql:?}"
            );
        }
    }
}
