//! SQLite binds: the file (created only when a batch writes), the session's busy timeout and
//! `synchronous = FULL`, the batch transaction under the write lock (`BEGIN IMMEDIATE`) held
//! open until the decision, the guard savepoint that tells a migration's new transaction from
//! the batch's, the vote before the decision, and what SQLite's errors mean.

use std::fs;
use std::time::{Duration, Instant};

use diesel::connection::{AnsiTransactionManager, SimpleConnection};
use diesel::prelude::*;
use diesel::SqliteConnection;
use orchestrate_core::{Direction, Step};

use super::{wrong_backend, Arg, Atomic, BatchTransaction, CanDecide, Db, Decider, Row, Session};
use crate::endpoint::{Backend, Endpoint};
use crate::error::{message_of, DriverError, ErrorClass};
use crate::schema::{self, DIESEL_TABLE, HISTORY};

// The guard savepoint a SQLite batch transaction holds between steps (see `begin_batch`):
// `super::guard_name`.
fn guard() -> String {
    format!("SAVEPOINT {}", super::guard_name())
}

impl Db for SqliteConnection {
    const QUOTE: char = '"';
    const HISTORY_DDL: &'static str = schema::HISTORY_DDL_SQLITE;
    const BATCHES_DDL: &'static str = schema::BATCHES_DDL;
    /// The write lock, taken at BEGIN IMMEDIATE, already holds every row.
    const ROW_LOCK: &'static str = "";

    fn tables_sql(_schema: &str) -> String {
        "SELECT name AS s FROM main.sqlite_master WHERE type = 'table'".into()
    }

    fn hooks_sql(_schema: &str) -> String {
        "SELECT count(*) AS n FROM main.sqlite_master WHERE type = 'trigger' AND tbl_name = 'orchestrate_batches'".into()
    }

    fn classify(error: &diesel::result::Error) -> ErrorClass {
        classify(error)
    }

    fn exec_bound(&mut self, sql: &str, args: &[Arg]) -> QueryResult<usize> {
        bound!(sql, args).execute(self)
    }

    fn load_bound<T: Row>(&mut self, sql: &str, args: &[Arg]) -> QueryResult<Vec<T>> {
        bound!(sql, args).load::<T>(self)
    }

    /// `BEGIN IMMEDIATE`: the write lock is taken now, waiting up to the busy timeout (a
    /// deferred transaction that must upgrade its lock later gets SQLITE_BUSY at once), so two
    /// runs cannot both plan against the same state.
    fn begin_write(&mut self) -> QueryResult<()> {
        AnsiTransactionManager::begin_transaction_sql(self, "BEGIN IMMEDIATE")
    }

    /// SQLite cannot change `synchronous` inside a transaction: every connection sets
    /// `synchronous = FULL` when it opens, and this checks it is still so.
    fn make_commit_durable(s: &mut Session<Self>) -> Result<(), DriverError> {
        let level = s.count(
            "cannot read PRAGMA synchronous",
            "SELECT synchronous AS n FROM pragma_synchronous",
            &[],
        )?;
        if level >= 2 {
            return Ok(());
        }
        Err(s.other(format!("PRAGMA synchronous is {level} here (a migration lowered it?), so this COMMIT would not be durable; migrations must not change PRAGMA synchronous")))
    }

    /// A coordinator holds the write lock for its whole batch: whether `BEGIN IMMEDIATE` gets
    /// it at once.
    fn decision_held(s: &mut Session<Self>, _batch_id: &str) -> Result<bool, DriverError> {
        Self::set_write_wait(s, Duration::ZERO);
        let held = match s.conn.batch_execute("BEGIN IMMEDIATE") {
            Ok(()) => {
                let _ = s.conn.batch_execute("ROLLBACK");
                Ok(false)
            }
            Err(e) if classify(&e) == ErrorClass::LockWait => Ok(true),
            Err(e) => Err(e),
        };
        Self::set_write_wait(s, s.lock_timeout());
        held.map_err(|e| s.query_err("cannot probe the batch's row", e))
    }

    fn set_write_wait(s: &mut Session<Self>, wait: Duration) {
        let _ = s
            .conn
            .batch_execute(&format!("PRAGMA busy_timeout = {}", wait.as_millis()));
    }
}

/// A connection to a SQLite bind.
pub struct Sqlite {
    s: Session<SqliteConnection>,
}

super::has_session!(Sqlite, SqliteConnection);

impl CanDecide for Sqlite {}

impl Sqlite {
    /// Connects. With `create` the file (and its folder) is created when missing; without it
    /// a missing file is [`DriverError::NoSuchFile`], so that reading the state of a bind
    /// never creates anything. The session waits for the write lock at most `lock_timeout`,
    /// and syncs every commit to disk (`synchronous = FULL`: durable in both journal modes).
    pub fn connect(
        endpoint: &Endpoint,
        create: bool,
        lock_timeout: Duration,
    ) -> Result<Sqlite, DriverError> {
        let bind = endpoint.bind.clone();
        let Some(path) = endpoint.sqlite_path() else {
            return Err(wrong_backend(endpoint, Backend::Sqlite));
        };
        if !path.exists() {
            if !create {
                return Err(DriverError::NoSuchFile {
                    bind,
                    path: path.display().to_string(),
                });
            }
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(parent).map_err(|e| DriverError::Other {
                    bind: bind.clone(),
                    detail: format!("cannot create folder {}: {e}", parent.display()),
                })?;
            }
        }
        let mut conn = SqliteConnection::establish(endpoint.connect_url()).map_err(|source| {
            DriverError::Connect {
                bind: bind.clone(),
                url: endpoint.redacted().to_string(),
                source,
            }
        })?;
        let ms = lock_timeout.as_millis();
        if let Err(source) = conn.batch_execute(&format!(
            "PRAGMA busy_timeout = {ms}; PRAGMA synchronous = FULL"
        )) {
            return Err(DriverError::Query {
                bind,
                what: "cannot set up the session".into(),
                class: classify(&source),
                source,
            });
        }
        let s = Session::open(
            endpoint,
            super::session::Conn::Own(conn),
            lock_timeout,
            "SELECT 'main' AS s",
            "the SQLite connection has no main database",
        )?;
        Ok(Sqlite { s })
    }

    /// Before the decision, for a bind whose transaction stays open until after it: the vote a
    /// SQLite bind cannot cast with PREPARE. A deferred foreign key that is violated would
    /// make its COMMIT fail after the decision, where nothing can be rolled back (and a redo
    /// would fail the same way): it fails the batch now instead. (Conservative: a violation
    /// that was there before the batch counts too.)
    pub fn vote(&mut self) -> Result<(), DriverError> {
        let n = self.s.count(
            "cannot check foreign keys",
            "SELECT CASE WHEN (SELECT foreign_keys FROM pragma_foreign_keys) = 1 \
             THEN (SELECT count(*) FROM pragma_foreign_key_check) ELSE 0 END AS n",
            &[],
        )?;
        if n > 0 {
            return Err(self.s.other(format!("{n} row(s) violate a foreign key (PRAGMA foreign_key_check), so this bind's COMMIT would fail after the decision; the batch is rolled back before it. Fix the data in the migration (a deferred foreign key must hold by the end of the batch)")));
        }
        Ok(())
    }
}

/// Whether a migration's own SQL ended the batch's transaction: the guard savepoint is gone
/// when it did, even if the migration began another transaction (`COMMIT; BEGIN;`), which is
/// then rolled back (it is not the batch's). The guard is released and taken again.
fn left_transaction(s: &mut Session<SqliteConnection>) -> Result<bool, DriverError> {
    match s
        .conn
        .batch_execute(&format!("RELEASE {}", super::guard_name()))
    {
        Ok(()) => {
            s.execute_plain("cannot check the transaction", &guard())?;
            Ok(false)
        }
        Err(e) if classify(&e) == ErrorClass::Missing => {
            let _ = s.conn.batch_execute("ROLLBACK");
            Ok(true)
        }
        Err(e) => Err(s.query_err("cannot check the transaction", e)),
    }
}

impl Atomic for Sqlite {
    fn run_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError> {
        self.s.run_step(
            batch_id,
            direction,
            step,
            at,
            |s, _| left_transaction(s),
            None,
        )
    }

    fn rollback(&mut self) {
        self.s.rollback()
    }
}

impl BatchTransaction for Sqlite {
    fn begin_batch(&mut self) -> Result<(), DriverError> {
        let started = Instant::now();
        if let Err(e) = self.s.begin("cannot begin the batch transaction") {
            return Err(if e.is_lock_wait() {
                self.s.busy(started)
            } else {
                e
            });
        }
        // A savepoint that a COMMIT or ROLLBACK in a migration would end with the
        // transaction: released and taken again after every step, it tells a new transaction
        // (`COMMIT; BEGIN;`) from the batch's.
        self.s
            .execute_plain("cannot begin the batch transaction", &guard())?;
        self.s.create_tables(
            "cannot create the version tables",
            &[
                (schema::DIESEL_TABLE_DDL, DIESEL_TABLE),
                (schema::HISTORY_DDL_SQLITE, HISTORY),
            ],
        )
    }

    /// The write lock taken by `begin_batch` holds the batch's row.
    fn begin_deciding(&mut self, batch_id: &str) -> Result<(), DriverError> {
        self.begin_batch()?;
        self.hold_decision(batch_id)
    }

    fn prepare_to_decide(&mut self, last_step: &str) -> Result<(), DriverError> {
        if left_transaction(&mut self.s)? {
            return Err(DriverError::LeftTransaction {
                bind: self.s.bind(),
                name: last_step.into(),
            });
        }
        SqliteConnection::make_commit_durable(&mut self.s)
    }

    fn commit(&mut self) -> Result<(), DriverError> {
        self.s.commit()
    }
}

/// What a SQLite error means. diesel keeps the result code to itself (it only maps constraint
/// codes to kinds), so the fixed messages SQLite gives the codes this tool acts on are read,
/// here only:
///
/// - `SQLITE_BUSY` (5, "database is locked") and `SQLITE_LOCKED` (6, "database table is
///   locked", "database schema is locked: ..."), and "database is busy": a lock wait;
/// - `SQLITE_ERROR` with "no such table" or "no such savepoint": missing.
///
/// A SQLite connection is a file handle: it is never lost, except as diesel's broken
/// transaction manager.
pub(crate) fn classify(error: &diesel::result::Error) -> ErrorClass {
    if let Some(class) = ErrorClass::from_diesel(error) {
        return class;
    }
    let Some(m) = message_of(error) else {
        return ErrorClass::Other;
    };
    if m.contains("is locked") || m.contains("database is busy") {
        ErrorClass::LockWait
    } else if m.contains("no such table") || m.contains("no such savepoint") {
        ErrorClass::Missing
    } else {
        ErrorClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    #[test]
    fn sqlite_errors_are_classified() {
        let unknown = |m: &str| {
            classify(&Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(m.to_string()),
            ))
        };
        for locked in [
            "database is locked",
            "database table is locked",
            "database schema is locked: main",
            "Database is busy",
        ] {
            assert_eq!(unknown(locked), ErrorClass::LockWait, "{locked}");
        }
        assert_eq!(
            unknown("no such savepoint: orchestrate_batch_guard"),
            ErrorClass::Missing
        );
        assert_eq!(
            unknown("no such table: main.__diesel_schema_migrations"),
            ErrorClass::Missing
        );
        assert_eq!(unknown("near \"x\": syntax error"), ErrorClass::Other);
        assert_eq!(
            classify(&Error::BrokenTransactionManager),
            ErrorClass::ConnectionLost
        );
        let busy_commit = Error::RollbackErrorOnCommit {
            rollback_error: Box::new(Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new("cannot rollback - no transaction is active".to_string()),
            )),
            commit_error: Box::new(Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new("database is locked".to_string()),
            )),
        };
        assert_eq!(classify(&busy_commit), ErrorClass::LockWait);
    }
}
