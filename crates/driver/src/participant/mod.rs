//! The participants of a batch: one type per backend, each in its own file, and the small
//! traits that say what each can do.
//!
//! - `postgres.rs`, [`Postgres`]: the batch transaction under a transaction-scoped advisory
//!   lock, a migration that left its transaction caught by the transaction id,
//!   `PREPARE TRANSACTION` checked in `pg_prepared_xacts`, `COMMIT`/`ROLLBACK PREPARED`, the
//!   decider's durable COMMIT.
//! - `sqlite.rs`, [`Sqlite`]: the transaction held open under the write lock, the guard
//!   savepoint, the vote before the decision.
//! - `mysql.rs`, [`Mysql`]: migrations run statement by statement under marks, `GET_LOCK`,
//!   autocommit turned back on.
//! - `xa.rs`, [`Xa`]: a MySQL session's XA transaction (start, prepare, recover, commit,
//!   rollback).
//! - `any.rs`, [`BindConnection`]: a connection to a bind of any backend, for what every
//!   backend does (reading state, deciding, stamping).
//!
//! Capabilities are traits, implemented only where they hold: [`Bookkeeping`] (all),
//! [`Decider`] (all but an XA transaction), [`Atomic`] (migrations inside a transaction that
//! rolls back whole: PostgreSQL, SQLite, XA), [`BatchTransaction`] (a transaction the bind
//! commits itself, so it can decide: PostgreSQL, SQLite), [`TwoPhase`] (PostgreSQL, XA) and
//! [`Resolve`] (ending prepared transactions: PostgreSQL, MySQL). Marks and statement-by-statement
//! migrations are methods of [`Mysql`] alone.
//!
//! The SQL that is the same everywhere is in `session.rs` (qualified table names, version
//! tables, history) and `decision.rs` (the arbitrated decision), written once for any [`Db`]:
//! the diesel connection type, with what differs per backend. Every participant gets them
//! through [`HasSession`].

use std::time::Duration;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
#[cfg(feature = "mysql")]
use diesel::mysql::Mysql as MysqlBackend;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};
use diesel::sqlite::Sqlite as SqliteBackend;
use orchestrate_core::{Applied, Direction, Step};

use crate::endpoint::{Backend, Endpoint};
use crate::error::{DriverError, ErrorClass};
use crate::record::DecisionRecord;

/// `sql` with `args` bound, boxed for the connection it runs on.
macro_rules! bound {
    ($sql:expr, $args:expr) => {{
        let mut query = diesel::sql_query($sql).into_boxed();
        for arg in $args {
            query = match *arg {
                $crate::participant::Arg::Text(v) => query.bind::<diesel::sql_types::Text, _>(v),
                $crate::participant::Arg::MaybeText(v) => {
                    query.bind::<diesel::sql_types::Nullable<diesel::sql_types::Text>, _>(v)
                }
                $crate::participant::Arg::Int(v) => query.bind::<diesel::sql_types::BigInt, _>(v),
            };
        }
        query
    }};
}

mod any;
mod decision;
mod marks;
#[cfg(feature = "mysql")]
mod mysql;
#[cfg(not(feature = "mysql"))]
#[path = "without_mysql.rs"]
mod mysql;
mod postgres;
mod session;
mod sqlite;
#[cfg(feature = "mysql")]
mod xa;

pub use any::BindConnection;
pub use marks::{BatchStep, Mark, MarkDirection, MarkKind};
#[cfg(not(feature = "mysql"))]
pub(crate) use mysql::not_built as mysql_not_built;
pub use mysql::{Mysql, Xa};
pub use postgres::{Postgres, LOCK_KEY};
pub(crate) use session::Session;
pub use sqlite::Sqlite;

/// A value bound to a bookkeeping statement (written with `?` placeholders).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg<'a> {
    Text(&'a str),
    MaybeText(Option<&'a str>),
    Int(i64),
}

/// The savepoint a batch transaction holds (SQLite between steps, PostgreSQL from its
/// start) to tell, after a migration ran, the batch's transaction from one the migration
/// began after ending it. Its name is drawn at random once per process, so that a migration
/// cannot take it again (`COMMIT; BEGIN; SAVEPOINT <name>;`) and pass unseen.
pub(crate) fn guard_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        format!("orchestrate_batch_guard_{random:016x}")
    })
}

/// A row read by any backend.
#[cfg(feature = "mysql")]
pub(crate) trait Row:
    QueryableByName<Pg> + QueryableByName<SqliteBackend> + QueryableByName<MysqlBackend> + 'static
{
}
#[cfg(feature = "mysql")]
impl<T> Row for T where
    T: QueryableByName<Pg>
        + QueryableByName<SqliteBackend>
        + QueryableByName<MysqlBackend>
        + 'static
{
}
/// A row read by any backend.
#[cfg(not(feature = "mysql"))]
pub(crate) trait Row:
    QueryableByName<Pg> + QueryableByName<SqliteBackend> + 'static
{
}
#[cfg(not(feature = "mysql"))]
impl<T> Row for T where T: QueryableByName<Pg> + QueryableByName<SqliteBackend> + 'static {}

/// A backend, as the shared bookkeeping needs to know it: implemented by each diesel
/// connection type in its backend's file. The functions taking a [`Session`] are the points
/// where the shared protocol does what that backend needs.
pub(crate) trait Db:
    SimpleConnection
    + Connection<TransactionManager = AnsiTransactionManager>
    + diesel::r2d2::R2D2Connection
    + Send
    + 'static
{
    /// How identifiers are quoted.
    const QUOTE: char;
    /// The DDL of `orchestrate_history` and `orchestrate_batches` (see [`crate::schema`]).
    const HISTORY_DDL: &'static str;
    const BATCHES_DDL: &'static str;
    /// What locks a batch's row until the transaction ends.
    const ROW_LOCK: &'static str;

    /// A query listing the tables (column `s`) in `schema`, where this tool keeps its own.
    fn tables_sql(schema: &str) -> String;

    /// One statement reading at once what [`Db::tables_sql`], the history's `up` and `stamp`
    /// rows and diesel's versions give (as [`ReadRow`]s: `t` a table, `h` a history row,
    /// `v` a version), for a backend where that saves work; it fails, as a missing table
    /// ([`crate::ErrorClass::Missing`]), unless diesel's table and the history both exist.
    /// `None`: they are read one by one.
    fn read_all_sql(_schema: &str) -> Option<String> {
        None
    }

    /// A query counting (column `n`) what could change a row of `orchestrate_batches` in
    /// `schema` behind the writer's back: triggers, and on PostgreSQL rules, row security and
    /// any deferrable constraint trigger in the database.
    fn hooks_sql(schema: &str) -> String;

    /// Bookkeeping SQL's `?` placeholders as this backend writes them.
    fn placeholders(sql: String) -> String {
        sql
    }

    /// What an error of this backend means: the one place its errors are read.
    fn classify(error: &diesel::result::Error) -> ErrorClass;

    fn exec_bound(&mut self, sql: &str, args: &[Arg]) -> QueryResult<usize>;

    fn load_bound<T: Row>(&mut self, sql: &str, args: &[Arg]) -> QueryResult<Vec<T>>;

    /// Begins a transaction that will write.
    fn begin_write(&mut self) -> QueryResult<()> {
        AnsiTransactionManager::begin_transaction(self)
    }

    /// The marks of what is under way here, when `tables` has them (MySQL).
    fn marks(_: &mut Session<Self>, _tables: &[String]) -> Result<Vec<Mark>, DriverError> {
        Ok(Vec::new())
    }

    /// Makes the COMMIT of the open transaction wait until it is on disk (see
    /// [`BatchTransaction::prepare_to_decide`]).
    fn make_commit_durable(_: &mut Session<Self>) -> Result<(), DriverError> {
        Ok(())
    }

    /// Whether a coordinator holds the row of a `begun` batch right now, found without
    /// waiting and without writing anything.
    fn decision_held(s: &mut Session<Self>, batch_id: &str) -> Result<bool, DriverError>;

    /// Inside the transaction that writes `abort`: bound its wait to `wait`.
    fn limit_abort_wait(_: &mut Session<Self>, _wait: Duration) -> Result<(), DriverError> {
        Ok(())
    }

    /// How long a statement waits for the database's write lock (SQLite's busy timeout; other
    /// backends bound their waits per statement).
    fn set_write_wait(_: &mut Session<Self>, _wait: Duration) {}

    /// Whether orchestrate's guard on `orchestrate_batches` (PostgreSQL, see
    /// [`crate::schema::GUARD_BODY`]) is whole in this session's schema: both triggers, as
    /// installed, always enabled, calling the function as written. True where there is none.
    fn guard_whole(_: &mut Session<Self>) -> Result<bool, DriverError> {
        Ok(true)
    }

    /// Installs the guard when it is not whole, in a transaction of its own (PostgreSQL).
    fn ensure_guard(_: &mut Session<Self>) -> Result<(), DriverError> {
        Ok(())
    }

    /// The schemas other than this session's that hold an `orchestrate_batches` (PostgreSQL:
    /// decisions written under an earlier default search_path).
    fn other_batch_schemas(_: &mut Session<Self>) -> Result<Vec<String>, DriverError> {
        Ok(Vec::new())
    }

    /// Whether the `orchestrate_history` of another schema than this session's (PostgreSQL:
    /// where an earlier default search_path put it) has a row of `batch_id` matching
    /// `condition`. A batch id is unique, so a row there is this bind's.
    fn history_elsewhere(
        _: &mut Session<Self>,
        _batch_id: &str,
        _condition: &str,
    ) -> Result<bool, DriverError> {
        Ok(false)
    }

    /// The rows of `batch_id` in the `orchestrate_batches` of other schemas than this
    /// session's (PostgreSQL), with their schema.
    fn batch_rows_elsewhere(
        _: &mut Session<Self>,
        _batch_id: &str,
    ) -> Result<Vec<(String, BatchRow)>, DriverError> {
        Ok(Vec::new())
    }

    /// A batch's decision found outside the tables this session resolved (PostgreSQL: another
    /// schema).
    fn decision_elsewhere(
        _: &mut Session<Self>,
        _batch_id: &str,
    ) -> Result<Option<DecisionState>, DriverError> {
        Ok(None)
    }
}

/// A participant's [`Session`]: what gives it the shared bookkeeping and decision.
pub(crate) trait HasSession {
    type Conn: Db;
    fn session(&mut self) -> &mut Session<Self::Conn>;
    fn session_ref(&self) -> &Session<Self::Conn>;
}

/// `HasSession` for a participant that keeps its session in a field `s`.
macro_rules! has_session {
    ($participant:ty, $conn:ty) => {
        impl super::HasSession for $participant {
            type Conn = $conn;

            fn session(&mut self) -> &mut super::Session<$conn> {
                &mut self.s
            }

            fn session_ref(&self) -> &super::Session<$conn> {
                &self.s
            }
        }
    };
}
pub(crate) use has_session;

/// The participants that may decide a batch (not an XA transaction under way).
pub(crate) trait CanDecide: HasSession {}

/// What every participant does with diesel's version table and `orchestrate_history`.
pub trait Bookkeeping {
    /// The bind's database this participant is connected to.
    fn endpoint(&self) -> &Endpoint;

    /// Reads what the database has applied (not its prepared transactions). Creates nothing.
    fn read_applied(&mut self) -> Result<BindState, DriverError>;

    /// The versions in diesel's table.
    fn applied_versions(&mut self) -> Result<Vec<String>, DriverError>;

    /// Whether this bind's history carries rows of `batch_id`: the batch's work is committed
    /// here.
    fn has_batch(&mut self, batch_id: &str) -> Result<bool, DriverError>;

    /// Whether a heuristic outcome of `batch_id` was already recorded here.
    fn has_heuristic(&mut self, batch_id: &str) -> Result<bool, DriverError>;

    /// Every step recorded in `orchestrate_history`, oldest first (none when the table does
    /// not exist yet).
    fn history_events(&mut self) -> Result<Vec<HistoryEvent>, DriverError>;

    /// Records, once, that this bind's part of a decided batch was ended against the decision
    /// by someone else (a heuristic outcome), so that it is reported once and not retried.
    fn record_heuristic(
        &mut self,
        batch_id: &str,
        detail: &str,
        at: &str,
    ) -> Result<(), DriverError>;

    /// Records a step in the version tables without running it: `up` adds the version to
    /// diesel's table, `down` removes it, and a history row with `label` (`up`, `down`,
    /// `undo`, or `stamp` / `unstamp` for `orchestrate stamp`) keeps the batch, checksum and
    /// down SQL.
    fn record_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        label: &str,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError>;

    /// Checks, inside the batch's transaction (MySQL: under its lock), that the database is
    /// still where the plan started from: every version the plan reverts is applied, every
    /// version it applies is not. Another run that got there first makes this fail, so
    /// nothing runs twice. Returns the versions applied before the batch.
    fn check_plan_still_valid(
        &mut self,
        direction: Direction,
        steps: &[Step],
    ) -> Result<Vec<String>, DriverError>;
}

impl<P: HasSession> Bookkeeping for P {
    fn endpoint(&self) -> &Endpoint {
        self.session_ref().endpoint()
    }

    fn read_applied(&mut self) -> Result<BindState, DriverError> {
        self.session().read_applied()
    }

    fn applied_versions(&mut self) -> Result<Vec<String>, DriverError> {
        self.session().applied_versions()
    }

    fn has_batch(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        const STEPS: &str = "direction IN ('up', 'down')";
        let s = self.session();
        Ok(s.has_history(batch_id, STEPS)? || P::Conn::history_elsewhere(s, batch_id, STEPS)?)
    }

    fn history_events(&mut self) -> Result<Vec<HistoryEvent>, DriverError> {
        self.session().history_events()
    }

    fn has_heuristic(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        const HEURISTIC: &str = "direction = 'heuristic'";
        let s = self.session();
        Ok(s.has_history(batch_id, HEURISTIC)?
            || P::Conn::history_elsewhere(s, batch_id, HEURISTIC)?)
    }

    fn record_heuristic(
        &mut self,
        batch_id: &str,
        detail: &str,
        at: &str,
    ) -> Result<(), DriverError> {
        self.session().record_heuristic(batch_id, detail, at)
    }

    fn record_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        label: &str,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError> {
        self.session()
            .record_step(batch_id, direction, label, step, at)
    }

    fn check_plan_still_valid(
        &mut self,
        direction: Direction,
        steps: &[Step],
    ) -> Result<Vec<String>, DriverError> {
        self.session().check_plan_still_valid(direction, steps)
    }
}

/// The arbitrated decision in a decider's `orchestrate_batches` (see `decision.rs`).
pub trait Decider: Bookkeeping {
    /// On the decider, before anything else of the batch: records the batch as `begun`, in a
    /// durable transaction of its own. From then on only the coordinator (with `commit`) or
    /// `recover` (with `abort`) can decide it, whichever turns the row first.
    fn begin_decision(&mut self, batch_id: &str, at: &str) -> Result<(), DriverError>;

    /// Inside the decider's batch transaction: locks the batch's row until the transaction
    /// ends (SQLite: the write lock already does), so that a `recover` trying to abort the
    /// batch waits for this coordinator, and checks that nobody has decided it meanwhile.
    fn hold_decision(&mut self, batch_id: &str) -> Result<(), DriverError>;

    /// The decision, inside the decider's batch transaction: turns the batch's `begun` row
    /// into `commit` with the record. Fails with [`DriverError::DecisionLost`] when the row is
    /// no longer `begun` (a `recover` aborted the batch first). Its COMMIT is the decision.
    fn decide_commit(&mut self, record: &DecisionRecord, at: &str) -> Result<(), DriverError>;

    /// Tries to decide `abort` for a batch still `begun`, in a durable transaction of its
    /// own, waiting at most `wait` for the batch's coordinator (which holds the row while it
    /// runs). `Ok(true)`: this call decided abort. `Ok(false)`: the batch was already decided
    /// (read it with [`Decider::decision_state`]). [`DriverError::Busy`]: its coordinator
    /// still holds the row.
    fn decide_abort(
        &mut self,
        batch_id: &str,
        at: &str,
        wait: Duration,
    ) -> Result<bool, DriverError>;

    /// Whether a coordinator holds the row of a `begun` batch right now (it is running, or
    /// its session is still ending), found without waiting and without writing anything.
    fn decision_held(&mut self, batch_id: &str) -> Result<bool, DriverError>;

    /// What this bind's `orchestrate_batches` (or, for batches of older versions, its
    /// `orchestrate_decisions`) says of a batch; `None` when it has no row for it. Creates
    /// nothing.
    fn decision_state(&mut self, batch_id: &str) -> Result<Option<DecisionState>, DriverError>;

    /// Every commit decision this bind holds whose participants are not all known to have
    /// finished (older versions' decisions count as unsettled until `recover` settles them).
    /// Creates nothing.
    fn unsettled_decisions(&mut self) -> Result<Vec<DecisionRecord>, DriverError>;

    /// Records that every participant of a committed batch has finished, so that `recover`
    /// no longer reads it. A decision of an older version is copied in as settled.
    fn settle_decision(&mut self, record: &DecisionRecord, at: &str) -> Result<(), DriverError>;

    /// The batches still `begun` here, oldest first (none without the table). Creates nothing.
    fn begun_batches(&mut self) -> Result<Vec<String>, DriverError>;
}

impl<P: CanDecide> Decider for P {
    fn begin_decision(&mut self, batch_id: &str, at: &str) -> Result<(), DriverError> {
        self.session().begin_decision(batch_id, at)
    }

    fn hold_decision(&mut self, batch_id: &str) -> Result<(), DriverError> {
        self.session().hold_decision(batch_id)
    }

    fn decide_commit(&mut self, record: &DecisionRecord, at: &str) -> Result<(), DriverError> {
        self.session().decide_commit(record, at)
    }

    fn decide_abort(
        &mut self,
        batch_id: &str,
        at: &str,
        wait: Duration,
    ) -> Result<bool, DriverError> {
        self.session().decide_abort(batch_id, at, wait)
    }

    fn decision_held(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        P::Conn::decision_held(self.session(), batch_id)
    }

    fn decision_state(&mut self, batch_id: &str) -> Result<Option<DecisionState>, DriverError> {
        self.session().decision_state(batch_id)
    }

    fn unsettled_decisions(&mut self) -> Result<Vec<DecisionRecord>, DriverError> {
        self.session().unsettled_decisions()
    }

    fn settle_decision(&mut self, record: &DecisionRecord, at: &str) -> Result<(), DriverError> {
        self.session().settle_decision(record, at)
    }

    fn begun_batches(&mut self) -> Result<Vec<String>, DriverError> {
        self.session().begun_batches()
    }
}

/// A bind whose migrations run inside the batch's transaction, which rolls back whole:
/// PostgreSQL, SQLite, and MySQL through [`Xa`]. A plain MySQL session is not: its DDL commits
/// statement by statement (see [`Mysql::run_statement`]).
pub trait Atomic: Bookkeeping {
    /// Runs one step of the batch and records it, inside the batch's transaction. A migration
    /// whose own SQL ended that transaction fails with [`DriverError::LeftTransaction`].
    fn run_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError>;

    /// Rolls back the batch's transaction if one is open; errors are ignored because closing
    /// the connection rolls back too.
    fn rollback(&mut self);
}

/// A batch transaction the bind commits itself (PostgreSQL, SQLite): it can be the decider's,
/// whose COMMIT is the decision.
pub trait BatchTransaction: Atomic + Decider {
    /// Opens the batch's transaction, takes the migration lock (waiting at most the lock
    /// timeout) and makes sure the version tables exist.
    fn begin_batch(&mut self) -> Result<(), DriverError>;

    /// On the decider, after [`Decider::begin_decision`]: opens its batch transaction and
    /// holds the batch's row in it ([`Decider::hold_decision`]).
    fn begin_deciding(&mut self, batch_id: &str) -> Result<(), DriverError>;

    /// Before the decider's COMMIT: the batch transaction is still the one that began (a
    /// migration did not end it), deferred constraints are checked now rather than as an
    /// ambiguous COMMIT error, and the COMMIT will be durable.
    fn prepare_to_decide(&mut self, last_step: &str) -> Result<(), DriverError>;

    /// Commits the batch transaction.
    fn commit(&mut self) -> Result<(), DriverError>;

    /// The id of the open batch transaction, where the server can later say whether it
    /// committed (PostgreSQL's `txid_current()`): the decider's COMMIT is the decision, so
    /// its participants carry this id (see [`crate::TransactionId`]).
    fn transaction_xid(&self) -> Option<u64> {
        None
    }
}

/// What a PostgreSQL server says of a transaction (`txid_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum XactStatus {
    /// The transaction committed.
    Committed,
    /// The transaction rolled back, or never finished because its server crashed.
    Aborted,
    /// The transaction has not ended yet: it is still running, or is prepared.
    InProgress,
}

impl std::fmt::Display for XactStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XactStatus::Committed => "committed",
            XactStatus::Aborted => "aborted",
            XactStatus::InProgress => "in progress",
        })
    }
}

/// Two-phase commit: the batch's transaction is prepared, then ended after the decision by
/// [`Resolve`]. PostgreSQL (`PREPARE TRANSACTION`) and MySQL through [`Xa`] only.
pub trait TwoPhase: Atomic {
    /// Ends the batch's transaction by preparing it as `gid` (a [`crate::TransactionId`]), and
    /// checks that it really was prepared (PostgreSQL answers success and prepares nothing when
    /// the transaction had already failed or ended).
    fn prepare(&mut self, gid: &str) -> Result<(), DriverError>;
}

/// Ending the prepared transactions of this tool that a bind holds: PostgreSQL (`COMMIT` /
/// `ROLLBACK PREPARED`) and MySQL (`XA COMMIT` / `XA ROLLBACK`). SQLite has none.
pub trait Resolve: Bookkeeping {
    /// This tool's prepared transactions on this database.
    fn prepared(&mut self) -> Result<Vec<PreparedXact>, DriverError>;

    /// Commits the prepared transaction `gid` (outside any transaction).
    fn commit_prepared(&mut self, gid: &str) -> Result<(), DriverError>;

    /// Rolls back the prepared transaction `gid` (outside any transaction).
    fn rollback_prepared(&mut self, gid: &str) -> Result<(), DriverError>;

    /// What is marked under way and not settled on this bind (`orchestrate_in_progress`).
    fn marks(&mut self) -> Result<Vec<Mark>, DriverError>;
}

/// What a decider's `orchestrate_batches` says of one batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecisionState {
    /// Begun and not decided: its coordinator may still decide, unless `recover` wins the row.
    Begun,
    /// Decided to commit.
    Commit(Box<DecisionRecord>),
    /// Decided not to commit (by its coordinator after a failure, or by `recover`).
    Abort,
}

/// What a database says about itself.
#[derive(Clone, Debug, Default)]
pub struct BindState {
    /// Whether the database (SQLite: the file) exists. A missing one has applied nothing.
    pub exists: bool,
    /// The migrations diesel's version table lists, with what `orchestrate_history` recorded
    /// about each.
    pub applied: Vec<Applied>,
    /// This tool's prepared transactions on this database: batches in doubt.
    pub in_doubt: Vec<PreparedXact>,
    /// MySQL: batches and migrations under way and not settled (see [`Mark`]).
    pub marks: Vec<Mark>,
    /// The commit decisions this bind holds as a decider whose participants are not all known
    /// to have finished (normally none).
    pub unsettled: Vec<DecisionRecord>,
    /// PostgreSQL: which server and database this is, as the server says (whatever URL
    /// reached it). `None` elsewhere.
    pub server: Option<ServerIdentity>,
}

/// A PostgreSQL database as its server identifies it: two URLs (a host name and an address, a
/// socket and TCP) that reach the same server give the same `server`.
#[derive(Clone, Debug, Default, PartialEq, Eq, QueryableByName)]
pub struct ServerIdentity {
    /// When the server started, and its port: `2026-11-26 06:00:01.123+00, port 5432`.
    #[diesel(sql_type = Text)]
    pub server: String,
    /// The database's name on that server (`current_database()`).
    #[diesel(sql_type = Text)]
    pub database: String,
    /// The server's `max_prepared_transactions`.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub max_prepared: i64,
    /// The connections the server accepts from roles that are not superusers: `max_connections`
    /// less `superuser_reserved_connections` and (from PostgreSQL 16) `reserved_connections`.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub max_connections: i64,
}

/// A prepared transaction of this tool, found in `pg_prepared_xacts` (or by `XA RECOVER`).
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct PreparedXact {
    /// The transaction's id, a [`crate::TransactionId`] as text (on MySQL, rebuilt from the XA
    /// id and the decider named in the bind's `xa-batch` mark).
    #[diesel(sql_type = Text)]
    pub gid: String,
    /// When it was prepared: PostgreSQL's timestamp text; on MySQL, when the bind's
    /// `xa-batch` mark was written.
    #[diesel(sql_type = Text)]
    pub prepared_at: String,
    /// How long it has been prepared (`HH:MM:SS`, PostgreSQL's interval text).
    #[diesel(sql_type = Text)]
    pub age: String,
}

/// A connection limit's name and how many connections it allows.
#[derive(QueryableByName)]
pub(crate) struct ServerRoom {
    #[diesel(sql_type = Text)]
    pub(crate) s: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

#[derive(QueryableByName)]
pub(crate) struct Count {
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

#[derive(QueryableByName)]
pub(crate) struct Name {
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) s: Option<String>,
}

#[derive(QueryableByName)]
pub(crate) struct VersionRow {
    #[diesel(sql_type = Text)]
    pub(crate) version: String,
}

/// One row of `orchestrate_history`: a step a batch took on this bind, in the order taken.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct HistoryEvent {
    /// The batch that took the step; `orchestrate stamp` records under `stamp-<batch id>`.
    #[diesel(sql_type = Text)]
    pub batch_id: String,
    /// The migration's version (`-` for a `heuristic` row).
    #[diesel(sql_type = Text)]
    pub version: String,
    /// The migration's folder name (for a `heuristic` row, what happened to the batch here).
    #[diesel(sql_type = Text)]
    pub name: String,
    /// `up`, `down`, `undo` (a MySQL step taken back), `stamp`, `unstamp`, `heuristic`.
    #[diesel(sql_type = Text)]
    pub direction: String,
    /// When the step was recorded (RFC 3339, UTC).
    #[diesel(sql_type = Text)]
    pub at: String,
}

#[derive(QueryableByName)]
pub(crate) struct HistoryRow {
    #[diesel(sql_type = Text)]
    pub(crate) version: String,
    #[diesel(sql_type = Text)]
    pub(crate) name: String,
    #[diesel(sql_type = Text)]
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) direction: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) checksum: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) down_sql: Option<String>,
}

/// A row of [`Db::read_all_sql`]: its kind, then text columns whose meaning the kind gives.
#[derive(QueryableByName)]
pub(crate) struct ReadRow {
    #[diesel(sql_type = Text)]
    pub(crate) k: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) a: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) b: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) c: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) d: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) e: Option<String>,
    #[diesel(sql_type = BigInt)]
    pub(crate) n: i64,
}

#[derive(QueryableByName)]
pub(crate) struct BatchRow {
    #[diesel(sql_type = Text)]
    pub(crate) batch_id: String,
    #[diesel(sql_type = Text)]
    pub(crate) state: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) record: Option<String>,
}

/// The error for an endpoint of another backend than the participant type asked for.
pub(crate) fn wrong_backend(endpoint: &Endpoint, wanted: Backend) -> DriverError {
    DriverError::Other {
        bind: endpoint.bind.clone(),
        detail: format!(
            "{} is a {} database, where a {wanted} one is needed",
            endpoint.redacted(),
            endpoint.backend
        ),
    }
}
