//! [`BindConnection`]: a connection to a bind of any backend, for what every backend does —
//! reading a bind's state, the decision, stamping — with one `match` per method onto the
//! backend's own type. What only some backends do is reached through those types (or
//! [`BindConnection::resolver`]), never answered "unsupported" at run time.

use std::time::Duration;

use orchestrate_core::{Direction, Step};

use super::{
    BatchTransaction, BindState, Bookkeeping, Decider, DecisionState, HasSession, HistoryEvent,
    Mark, Mysql, Postgres, PreparedXact, Resolve, Sqlite, XactStatus,
};
use crate::endpoint::{Backend, Endpoint};
use crate::error::DriverError;
use crate::record::DecisionRecord;

/// One open connection to one bind, of whichever backend its URL names.
pub enum BindConnection {
    /// A PostgreSQL bind's connection.
    Postgres(Postgres),
    /// A SQLite bind's connection.
    Sqlite(Sqlite),
    /// A MySQL or MariaDB bind's connection.
    Mysql(Mysql),
}

/// `$body` on the backend's own connection, whichever it is.
macro_rules! each {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            BindConnection::Postgres($c) => $body,
            BindConnection::Sqlite($c) => $body,
            BindConnection::Mysql($c) => $body,
        }
    };
}

/// The MySQL account a session acts as, its global privileges and its privileges on the
/// session's database, as one text (see [`BindConnection::session_defaults`]).
const MYSQL_RIGHTS_SQL: &str = "SELECT CONCAT(CURRENT_USER(), '|', COALESCE((SELECT GROUP_CONCAT(PRIVILEGE_TYPE ORDER BY PRIVILEGE_TYPE SEPARATOR ',') FROM information_schema.USER_PRIVILEGES WHERE GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')), ''), '|', COALESCE((SELECT GROUP_CONCAT(PRIVILEGE_TYPE ORDER BY PRIVILEGE_TYPE SEPARATOR ',') FROM information_schema.SCHEMA_PRIVILEGES WHERE TABLE_SCHEMA = DATABASE() AND GRANTEE = CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), '''')), '')) AS s";

impl BindConnection {
    /// Connects. With `create` a SQLite file (and its folder) is created when missing;
    /// without it a missing file is [`DriverError::NoSuchFile`], so that reading the state of
    /// a bind never creates anything. `lock_timeout` bounds every wait for a lock.
    pub fn connect(
        endpoint: &Endpoint,
        create: bool,
        lock_timeout: Duration,
    ) -> Result<BindConnection, DriverError> {
        Ok(match endpoint.backend {
            Backend::Postgres => {
                BindConnection::Postgres(Postgres::connect(endpoint, lock_timeout)?)
            }
            Backend::Sqlite => {
                BindConnection::Sqlite(Sqlite::connect(endpoint, create, lock_timeout)?)
            }
            Backend::Mysql => BindConnection::Mysql(Mysql::connect(endpoint, lock_timeout)?),
        })
    }

    /// The bind's database this connection was opened to.
    pub fn endpoint(&self) -> &Endpoint {
        each!(self, c => c.endpoint())
    }

    /// The bind's backend, which is also which variant this is.
    pub fn backend(&self) -> Backend {
        self.endpoint().backend
    }

    /// The bind as a holder of prepared transactions (PostgreSQL; MySQL through XA). A SQLite
    /// bind holds none: its transaction stays open instead.
    pub fn into_resolver(self) -> Result<Box<dyn Resolve>, DriverError> {
        match self {
            BindConnection::Postgres(c) => Ok(Box::new(c)),
            BindConnection::Mysql(c) => Ok(Box::new(c)),
            BindConnection::Sqlite(c) => Err(DriverError::Other {
                bind: c.endpoint().bind.clone(),
                detail: "a SQLite bind holds no prepared transactions".into(),
            }),
        }
    }

    /// The bind as the decider of an atomic batch (PostgreSQL, SQLite). A MySQL bind cannot
    /// be one: its DDL commits statement by statement, so its COMMIT cannot be the decision.
    pub fn into_batch_transaction(self) -> Result<Box<dyn BatchTransaction>, DriverError> {
        match self {
            BindConnection::Postgres(c) => Ok(Box::new(c)),
            BindConnection::Sqlite(c) => Ok(Box::new(c)),
            BindConnection::Mysql(c) => Err(DriverError::Other {
                bind: c.endpoint().bind.clone(),
                detail: "a MySQL bind cannot decide an atomic batch: its DDL commits statement by statement".into(),
            }),
        }
    }

    /// Reads what the database has applied, and this tool's prepared transactions on it.
    /// Creates nothing.
    pub fn read_state(&mut self) -> Result<BindState, DriverError> {
        let mut state = self.read_applied()?;
        state.in_doubt = self.prepared()?;
        if let BindConnection::Postgres(c) = self {
            state.server = Some(c.server_identity()?);
        }
        Ok(state)
    }

    /// Reads what the database has applied (not its prepared transactions). Creates nothing.
    pub fn read_applied(&mut self) -> Result<BindState, DriverError> {
        each!(self, c => c.read_applied())
    }

    /// This tool's prepared transactions on this database (none on SQLite).
    pub fn prepared(&mut self) -> Result<Vec<PreparedXact>, DriverError> {
        match self {
            BindConnection::Postgres(c) => c.prepared(),
            BindConnection::Mysql(c) => c.prepared(),
            BindConnection::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// Prepared transactions that are not this tool's but hold its migration lock here
    /// (PostgreSQL; see [`Postgres::foreign_lock_holders`]). Other backends have none.
    pub fn foreign_lock_holders(&mut self) -> Result<Vec<String>, DriverError> {
        match self {
            BindConnection::Postgres(c) => c.foreign_lock_holders(),
            _ => Ok(Vec::new()),
        }
    }

    /// [`BindConnection::prepared`] and [`BindConnection::foreign_lock_holders`] at once (one
    /// statement on PostgreSQL).
    pub fn prepared_and_foreign(
        &mut self,
    ) -> Result<(Vec<PreparedXact>, Vec<String>), DriverError> {
        match self {
            BindConnection::Postgres(c) => c.prepared_and_foreign(),
            BindConnection::Mysql(c) => Ok((c.prepared()?, Vec::new())),
            BindConnection::Sqlite(_) => Ok((Vec::new(), Vec::new())),
        }
    }

    /// What the server knows of the decider's batch transaction `xid` (named in its
    /// participants' transaction ids, see [`crate::TransactionId`]): `None` where it cannot
    /// tell (not PostgreSQL; a transaction so old its status was discarded).
    pub fn transaction_status(&mut self, xid: u64) -> Result<Option<XactStatus>, DriverError> {
        match self {
            BindConnection::Postgres(c) => c.transaction_status(xid),
            _ => Ok(None),
        }
    }

    /// The server's `max_prepared_transactions` (`None`: not a PostgreSQL server).
    pub fn max_prepared_transactions(&mut self) -> Result<Option<i64>, DriverError> {
        match self {
            BindConnection::Postgres(c) => c.max_prepared_transactions().map(Some),
            _ => Ok(None),
        }
    }

    /// What is under way and not settled on this bind (MySQL marks, and PostgreSQL marks of
    /// migrations run outside a transaction; nothing on SQLite).
    pub fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        match self {
            BindConnection::Mysql(c) => c.marks(),
            BindConnection::Postgres(c) => c.marks(),
            BindConnection::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// The versions in diesel's table.
    pub fn applied_versions(&mut self) -> Result<Vec<String>, DriverError> {
        each!(self, c => c.applied_versions())
    }

    /// See [`Bookkeeping::has_batch`].
    pub fn has_batch(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        each!(self, c => c.has_batch(batch_id))
    }

    /// See [`Bookkeeping::history_events`].
    pub fn history_events(&mut self) -> Result<Vec<HistoryEvent>, DriverError> {
        each!(self, c => c.history_events())
    }

    /// See [`Bookkeeping::has_heuristic`].
    pub fn has_heuristic(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        each!(self, c => c.has_heuristic(batch_id))
    }

    /// See [`Bookkeeping::record_heuristic`].
    pub fn record_heuristic(
        &mut self,
        batch_id: &str,
        detail: &str,
        at: &str,
    ) -> Result<(), DriverError> {
        each!(self, c => c.record_heuristic(batch_id, detail, at))
    }

    /// See [`Bookkeeping::record_step`].
    pub fn record_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        label: &str,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError> {
        each!(self, c => c.record_step(batch_id, direction, label, step, at))
    }

    /// Opens a transaction for bookkeeping under the bind's migration lock, with the version
    /// tables made (PostgreSQL and SQLite: the batch transaction; MySQL: see
    /// [`Mysql::begin_batch`]).
    pub fn begin_batch(&mut self) -> Result<(), DriverError> {
        each!(self, c => c.begin_batch())
    }

    /// Commits the transaction [`BindConnection::begin_batch`] opened.
    pub fn commit(&mut self) -> Result<(), DriverError> {
        each!(self, c => c.commit())
    }

    /// Rolls back the open transaction, if there is one; errors are ignored because dropping
    /// the connection rolls back too.
    pub fn rollback(&mut self) {
        match self {
            BindConnection::Postgres(c) => super::Atomic::rollback(c),
            BindConnection::Sqlite(c) => super::Atomic::rollback(c),
            BindConnection::Mysql(c) => c.rollback(),
        }
    }

    /// See [`Decider::begin_decision`].
    pub fn begin_decision(&mut self, batch_id: &str, at: &str) -> Result<(), DriverError> {
        each!(self, c => c.begin_decision(batch_id, at))
    }

    /// See [`Decider::hold_decision`].
    pub fn hold_decision(&mut self, batch_id: &str) -> Result<(), DriverError> {
        each!(self, c => c.hold_decision(batch_id))
    }

    /// See [`Decider::decide_commit`].
    pub fn decide_commit(&mut self, record: &DecisionRecord, at: &str) -> Result<(), DriverError> {
        each!(self, c => c.decide_commit(record, at))
    }

    /// See [`Decider::decide_abort`].
    pub fn decide_abort(
        &mut self,
        batch_id: &str,
        at: &str,
        wait: Duration,
    ) -> Result<bool, DriverError> {
        each!(self, c => c.decide_abort(batch_id, at, wait))
    }

    /// See [`Decider::decision_held`].
    pub fn decision_held(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        each!(self, c => c.decision_held(batch_id))
    }

    /// See [`Decider::decision_state`].
    pub fn decision_state(&mut self, batch_id: &str) -> Result<Option<DecisionState>, DriverError> {
        each!(self, c => c.decision_state(batch_id))
    }

    /// See [`Decider::unsettled_decisions`].
    pub fn unsettled_decisions(&mut self) -> Result<Vec<DecisionRecord>, DriverError> {
        each!(self, c => c.unsettled_decisions())
    }

    /// See [`Decider::begun_batches`].
    pub fn begun_batches(&mut self) -> Result<Vec<String>, DriverError> {
        each!(self, c => c.begun_batches())
    }

    /// See [`Decider::settle_decision`].
    pub fn settle_decision(
        &mut self,
        record: &DecisionRecord,
        at: &str,
    ) -> Result<(), DriverError> {
        each!(self, c => c.settle_decision(record, at))
    }

    /// What a new session of this bind starts with that a kept one would not see change
    /// (PostgreSQL: [`Postgres::session_defaults`]; MySQL: the account, and its global
    /// privileges and those on this database, which a session that is not new keeps until
    /// its next `USE`; nothing on SQLite).
    pub fn session_defaults(&mut self) -> Result<String, DriverError> {
        match self {
            BindConnection::Postgres(c) => c.session_defaults(),
            BindConnection::Mysql(_) => {
                let rows: Result<Vec<super::Name>, _> = each!(self, c => c.session().rows("cannot read the account's privileges", MYSQL_RIGHTS_SQL, &[]));
                Ok(rows?
                    .into_iter()
                    .next()
                    .and_then(|r| r.s)
                    .unwrap_or_default())
            }
            BindConnection::Sqlite(_) => Ok(String::new()),
        }
    }

    /// Before a kept connection is read with again: it still answers, and it reads as a new
    /// session would: the same settings, rights and account ([`Postgres::prepare_reuse`];
    /// MySQL: [`BindConnection::session_defaults`] unchanged); an error means: open a new one.
    pub fn prepare_reuse(&mut self, defaults_at_open: &str) -> Result<(), DriverError> {
        match self {
            BindConnection::Postgres(c) => c.prepare_reuse(defaults_at_open),
            BindConnection::Mysql(_) => {
                if self.session_defaults()? == defaults_at_open {
                    return Ok(());
                }
                Err(DriverError::Other {
                    bind: self.endpoint().bind.clone(),
                    detail: "the account or its privileges changed since this session opened; a new session reads with the new ones, or is refused".into(),
                })
            }
            BindConnection::Sqlite(_) => {
                each!(self, c => c.session().execute_plain("the connection no longer answers", "SELECT 1"))
            }
        }
    }

    /// Whether no transaction is open on this connection: only such a connection may be kept
    /// for later reads (one left in a transaction would hold its locks and snapshot).
    pub fn is_idle(&mut self) -> bool {
        each!(self, c => !c.session().in_transaction())
    }

    /// The connection limits a new connection of this bind counts against, each as a name and how
    /// many connections it allows; the server's comes first. The server is named as it names
    /// itself, whatever URL reached it, and the same after a restart (PostgreSQL: its system
    /// identifier and port; MySQL: its host name and port); it allows `max_connections`
    /// (PostgreSQL: less `superuser_reserved_connections` and, from 16, `reserved_connections`).
    /// Then, where they are set: PostgreSQL's `CONNECTION LIMIT` of the role (superusers are
    /// exempt) and of the database (every session there counts), and MySQL's `max_user_connections`
    /// of the account. Empty for SQLite, which has no server.
    pub fn connection_limits(&mut self) -> Result<Vec<(String, i64)>, DriverError> {
        const WHAT: &str = "cannot read which server this is and how many connections it accepts";
        let sql = match self {
            BindConnection::Postgres(c) => {
                // `pg_control_system()` is open to every role by default; where it was revoked
                // (a query that names it fails even where it is not called), the start time
                // stands in, and changes with a restart.
                let system = c.session().count(
                    WHAT,
                    "SELECT CAST(CASE WHEN pg_catalog.has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE') THEN 1 ELSE 0 END AS BIGINT) AS n",
                    &[],
                )? == 1;
                let id = if system {
                    "(SELECT 'system ' || CAST(system_identifier AS TEXT) FROM pg_catalog.pg_control_system())"
                } else {
                    "'started ' || CAST(pg_catalog.pg_postmaster_start_time() AS TEXT)"
                };
                format!(
                    "WITH me AS (SELECT 'PostgreSQL ' || {id} || ', port ' || pg_catalog.current_setting('port') AS id) \
                     SELECT id AS s, CAST(pg_catalog.current_setting('max_connections') AS BIGINT) \
                     - CAST(pg_catalog.current_setting('superuser_reserved_connections') AS BIGINT) \
                     - coalesce(CAST(pg_catalog.current_setting('reserved_connections', true) AS BIGINT), 0) AS n, 0 AS o FROM me \
                     UNION ALL SELECT me.id || ', role ' || r.rolname, CAST(r.rolconnlimit AS BIGINT), 1 FROM me, pg_catalog.pg_roles r \
                     WHERE r.rolname = session_user AND r.rolconnlimit >= 0 AND NOT r.rolsuper \
                     UNION ALL SELECT me.id || ', database ' || d.datname, CAST(d.datconnlimit AS BIGINT), 2 FROM me, pg_catalog.pg_database d \
                     WHERE d.datname = pg_catalog.current_database() AND d.datconnlimit >= 0 ORDER BY o"
                )
            }
            BindConnection::Mysql(_) => {
                "SELECT CONCAT('MySQL ', @@hostname, ':', @@port) AS s, CAST(@@max_connections AS SIGNED) AS n, 0 AS o \
                 UNION ALL SELECT CONCAT('MySQL ', @@hostname, ':', @@port, ', account ', CURRENT_USER()), \
                 CAST(@@max_user_connections AS SIGNED), 1 FROM DUAL WHERE @@max_user_connections > 0 ORDER BY o"
                    .to_string()
            }
            BindConnection::Sqlite(_) => return Ok(Vec::new()),
        };
        let rows: Result<Vec<super::ServerRoom>, _> =
            each!(self, c => c.session().rows(WHAT, &sql, &[]));
        Ok(rows?.into_iter().map(|r| (r.s, r.n)).collect())
    }
}
