//! MySQL and MariaDB binds: their DDL commits statement by statement, so a batch cannot be
//! rolled back there. Each migration runs one statement at a time between a mark written
//! before it and cleared (in the same transaction as the version-table rows) after it, so that
//! a crash leaves the exact migration, and how far it got, on record. Here: the connection
//! (a greeting within the connect timeout, autocommit set and checked), the per-database
//! `GET_LOCK`, the marks in `orchestrate_in_progress`, statements run with autocommit turned
//! back on after each, the history of a batch for undoing it, the durability a MySQL decider
//! needs, and what MySQL's errors mean. XA transactions are in `xa.rs`.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::MysqlConnection;
use orchestrate_core::Direction;
use orchestrate_core::Step;

pub use super::xa::Xa;
use super::{wrong_backend, Arg, BatchStep, CanDecide, Count, Db, HistoryRow, Mark, Row, Session};
use crate::endpoint::{Backend, Endpoint};
use crate::error::{message_of, DriverError, ErrorClass};
use crate::schema::{self, DIESEL_TABLE, HISTORY, IN_PROGRESS, MYSQL_LOCK_NAME};

/// MariaDB Connector/C tears OpenSSL down when its last connection closes
/// (`mariadb_deinitialize_ssl`, on by default). With connections opened and closed on several
/// threads (and libpq using OpenSSL too), a thread that ends afterwards runs OpenSSL's
/// thread-exit cleanup on freed state: observed here as SIGSEGV or heap corruption at thread exit
/// in about 1 run in 100. Turn that off once, before the first connection. (Alone this did not
/// remove the crash, 1 in 800 runs; with the orchestrator's worker threads never exiting, none
/// was seen in 1,000.) Looked up at run time so that a build against Oracle's libmysqlclient,
/// which has no such variable, works too.
fn keep_openssl_initialised() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: dlsym with a NUL-terminated name; the symbol, when present, is libmariadb's
        // `unsigned int mariadb_deinitialize_ssl`, written once before any connection exists.
        unsafe {
            let symbol = libc::dlsym(libc::RTLD_DEFAULT, c"mariadb_deinitialize_ssl".as_ptr());
            if !symbol.is_null() {
                *(symbol as *mut libc::c_uint) = 0;
            }
        }
    });
}

/// Whether a MySQL server at `host:port` accepts a connection and sends its greeting within
/// [`crate::endpoint::CONNECT_TIMEOUT`].
fn mysql_greets(host: &str, port: u16) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let timeout = crate::endpoint::CONNECT_TIMEOUT;
    let addresses: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("no address for {host}");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(stream) => return greeting(stream, timeout),
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(last)
}

/// Whether the server on `stream` sends its first byte within `timeout`.
fn greeting(mut stream: std::net::TcpStream, timeout: Duration) -> Result<(), String> {
    use std::io::Read;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    match stream.read(&mut first) {
        Ok(1) => Ok(()),
        Ok(_) => Err("the server closed the connection without a greeting".into()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Err(format!(
                "the server accepted the connection but sent nothing within {} s; is this a MySQL server?",
                timeout.as_secs()
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

impl Db for MysqlConnection {
    const QUOTE: char = '`';
    const HISTORY_DDL: &'static str = schema::HISTORY_DDL_MYSQL;
    const BATCHES_DDL: &'static str = schema::BATCHES_DDL_MYSQL;
    const ROW_LOCK: &'static str = " FOR UPDATE";

    fn tables_sql(_schema: &str) -> String {
        "SELECT CAST(table_name AS CHAR) AS s FROM information_schema.tables WHERE table_schema = DATABASE()".into()
    }

    fn hooks_sql(_schema: &str) -> String {
        "SELECT count(*) AS n FROM information_schema.triggers WHERE event_object_schema = DATABASE() AND event_object_table = 'orchestrate_batches'".into()
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

    fn marks(s: &mut Session<Self>, tables: &[String]) -> Result<Vec<Mark>, DriverError> {
        if !tables.iter().any(|t| t == IN_PROGRESS) {
            return Ok(Vec::new());
        }
        s.load_marks()
    }

    /// InnoDB's durability is the server's (`innodb_flush_log_at_trx_commit`, checked by
    /// [`Mysql::check_durable_commits`]).
    fn make_commit_durable(_: &mut Session<Self>) -> Result<(), DriverError> {
        Ok(())
    }

    fn decision_held(s: &mut Session<Self>, batch_id: &str) -> Result<bool, DriverError> {
        s.probe_row(batch_id)
    }
}

/// A connection to a MySQL or MariaDB bind.
pub struct Mysql {
    s: Session<MysqlConnection>,
}

super::has_session!(Mysql, MysqlConnection);

/// A batch of MySQL binds alone is decided on its first bind.
impl CanDecide for Mysql {}

impl Mysql {
    /// Connects. The session waits for locks at most `lock_timeout` and commits every
    /// statement (`autocommit = 1`, checked: a server or user default of 0 would leave marks
    /// and decisions uncommitted).
    pub fn connect(endpoint: &Endpoint, lock_timeout: Duration) -> Result<Mysql, DriverError> {
        if endpoint.backend != Backend::Mysql {
            return Err(wrong_backend(endpoint, Backend::Mysql));
        }
        let bind = endpoint.bind.clone();
        // The client library has no connect timeout diesel can set: a server that accepts and
        // never answers would hold the command for the OS's TCP timeout.
        if let Some((host, port)) = endpoint.mysql_tcp_address() {
            mysql_greets(&host, port).map_err(|detail| DriverError::Other {
                bind: bind.clone(),
                detail: format!("cannot connect to {}: {detail}", endpoint.redacted()),
            })?;
        }
        keep_openssl_initialised();
        let mut conn = MysqlConnection::establish(endpoint.connect_url()).map_err(|source| {
            DriverError::Connect {
                bind: bind.clone(),
                url: endpoint.redacted().to_string(),
                source,
            }
        })?;
        let seconds = lock_timeout.as_millis().div_ceil(1000).max(1);
        if let Err(source) = conn.batch_execute(&format!(
            "SET SESSION autocommit = 1, SESSION completion_type = 0, SESSION innodb_lock_wait_timeout = {seconds}, SESSION lock_wait_timeout = {seconds}"
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
            "SELECT CASE WHEN @@autocommit = 1 THEN DATABASE() END AS s",
            "the session has no database selected, or autocommit cannot be turned on; put the database in the URL (mysql://user@host/DATABASE)",
        )?;
        Ok(Mysql { s })
    }

    /// Takes the bind's session lock (waiting at most the lock timeout) and creates the
    /// version tables and `orchestrate_in_progress`. The lock stays until the connection
    /// closes, so a crash releases it.
    pub fn begin_nonatomic(&mut self) -> Result<(), DriverError> {
        let started = Instant::now();
        let seconds = self.s.lock_timeout().as_millis().div_ceil(1000).max(1);
        let got: Result<Count, _> = diesel::sql_query(format!(
            "SELECT CAST(coalesce(GET_LOCK({MYSQL_LOCK_NAME}, {seconds}), 0) AS SIGNED) AS n"
        ))
        .get_result(&mut *self.s.conn);
        match got {
            Ok(Count { n: 1 }) => {}
            Ok(_) => return Err(self.s.busy(started)),
            Err(e) => return Err(self.s.query_err("cannot take the migration lock", e)),
        }
        self.s.create_tables(
            "cannot create the version tables",
            &[
                (schema::DIESEL_TABLE_DDL_MYSQL, DIESEL_TABLE),
                (schema::HISTORY_DDL_MYSQL, HISTORY),
                (schema::IN_PROGRESS_DDL_MYSQL, IN_PROGRESS),
            ],
        )
    }

    /// The lock and tables of [`Mysql::begin_nonatomic`], then a transaction for bookkeeping
    /// (`stamp`): DDL commits on MySQL, so the tables are made before it opens.
    pub fn begin_batch(&mut self) -> Result<(), DriverError> {
        self.begin_nonatomic()?;
        self.s.begin("cannot begin the batch transaction")
    }

    /// Commits the open bookkeeping transaction.
    pub fn commit(&mut self) -> Result<(), DriverError> {
        self.s.commit()
    }

    /// Rolls back the open bookkeeping transaction, if there is one.
    pub fn rollback(&mut self) {
        self.s.rollback()
    }

    /// Whether no session holds this bind's migration lock: no coordinator is working on it.
    pub fn session_lock_free(&mut self) -> Result<bool, DriverError> {
        let found: Result<Count, _> = diesel::sql_query(format!(
            "SELECT CAST(coalesce(IS_FREE_LOCK({MYSQL_LOCK_NAME}), 0) AS SIGNED) AS n"
        ))
        .get_result(&mut *self.s.conn);
        found
            .map(|c| c.n == 1)
            .map_err(|e| self.s.query_err("cannot read the migration lock", e))
    }

    /// Refuses to decide on a server whose InnoDB does not flush its log at every commit
    /// (`innodb_flush_log_at_trx_commit` other than 1): a decision there could be lost by a
    /// crash after the binds were told it was made.
    pub fn check_durable_commits(&mut self) -> Result<(), DriverError> {
        let n = self.s.count(
            "cannot read innodb_flush_log_at_trx_commit",
            "SELECT CAST(@@innodb_flush_log_at_trx_commit AS SIGNED) AS n",
            &[],
        )?;
        if n != 1 {
            return Err(self.s.other(format!("this server has innodb_flush_log_at_trx_commit = {n}, so a committed decision can be lost in a crash; a batch of MySQL binds alone records its decision here. Set it to 1 (SET GLOBAL innodb_flush_log_at_trx_commit = 1), or add a PostgreSQL or SQLite bind to the batch to decide it")));
        }
        Ok(())
    }

    /// What is under way and not settled on this bind.
    pub fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        if !self.s.table_exists(IN_PROGRESS)? {
            return Ok(Vec::new());
        }
        self.s.load_marks()
    }

    /// Writes a mark (committed at once).
    pub fn put_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
        self.s.put_mark(mark)
    }

    /// Records how many statements of a marked migration have committed.
    pub fn set_mark_progress(&mut self, mark: &Mark, done: i64) -> Result<(), DriverError> {
        self.s.set_mark_progress(mark, done)
    }

    /// Removes a mark (see [`Session::clear_mark`]).
    pub fn clear_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
        self.s.clear_mark(mark)
    }

    /// Removes every batch mark (`batch`, `xa-batch`) of `batch_id`.
    pub(crate) fn clear_batch_marks(&mut self, batch_id: &str) -> Result<usize, DriverError> {
        self.s.exec(
            "cannot write to orchestrate_in_progress",
            "DELETE FROM {orchestrate_in_progress} WHERE kind IN ('batch', 'xa-batch') AND batch_id = ?",
            &[Arg::Text(batch_id)],
        )
    }

    /// Turns autocommit back on, and COMMIT back to a plain commit: marks and decisions
    /// written next must commit on their own, and keep the session (and its lock), whatever a
    /// statement did to the session (a procedure it called may have turned autocommit off or
    /// set `completion_type = RELEASE`; turning autocommit back on commits what that statement
    /// left open, as it would have anyway).
    pub(crate) fn autocommit(&mut self) -> Result<(), DriverError> {
        self.s.execute_plain(
            "cannot turn autocommit back on",
            "SET SESSION autocommit = 1, SESSION completion_type = 0",
        )
    }

    /// Runs one statement of a migration, outside any transaction (it commits by itself).
    pub fn run_statement(&mut self, name: &str, sql: &str) -> Result<(), DriverError> {
        let done = self.s.conn.batch_execute(sql);
        done.map_err(|source| self.s.migration_err(name, source))?;
        self.autocommit()
    }

    /// Records a finished step and clears its mark, in one transaction (see
    /// [`Session::finish_marked_step`]).
    pub fn finish_marked_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        label: &str,
        step: &Step,
        mark: &Mark,
        at: &str,
    ) -> Result<(), DriverError> {
        self.s
            .finish_marked_step(batch_id, direction, label, step, mark, at)
    }

    /// The steps `batch_id` applied or reverted on this bind and that no undo has reverted
    /// since, newest first.
    pub fn batch_steps(&mut self, batch_id: &str) -> Result<Vec<BatchStep>, DriverError> {
        if !self.s.table_exists(HISTORY)? {
            return Ok(Vec::new());
        }
        let rows: Vec<HistoryRow> = self.s.rows(
            "cannot read orchestrate_history",
            "SELECT version, name, direction, checksum, down_sql FROM {orchestrate_history} \
             WHERE batch_id = ? ORDER BY id",
            &[Arg::Text(batch_id)],
        )?;
        let mut steps: Vec<BatchStep> = Vec::new();
        for row in rows {
            match row.direction.as_str() {
                "up" | "down" => steps.push(BatchStep {
                    version: row.version,
                    name: row.name,
                    direction: row.direction,
                    down_sql: row.down_sql,
                    checksum: row.checksum,
                }),
                "undo" => steps.retain(|s| s.version != row.version),
                _ => {}
            }
        }
        steps.reverse();
        Ok(steps)
    }
}

/// What a MySQL or MariaDB error means. diesel keeps the error number to itself, so the fixed
/// messages of the numbers this tool acts on are read, here only, in any case (libmysqlclient
/// says "MySQL server has gone away", libmariadb "Server has gone away"):
///
/// - lost: client errors 2006 `CR_SERVER_GONE_ERROR` ("... server has gone away"), 2013
///   `CR_SERVER_LOST` and 2055 `CR_SERVER_LOST_EXTENDED` ("Lost connection to ...");
/// - lock wait: 1205 `ER_LOCK_WAIT_TIMEOUT` ("Lock wait timeout exceeded"), 3572
///   `ER_LOCK_NOWAIT` ("... NOWAIT is set");
/// - missing: 1146 `ER_NO_SUCH_TABLE` ("Table '...' doesn't exist"), 1305
///   `ER_SP_DOES_NOT_EXIST` ("SAVEPOINT ... does not exist").
pub(crate) fn classify(error: &diesel::result::Error) -> ErrorClass {
    if let Some(class) = ErrorClass::from_diesel(error) {
        return class;
    }
    let Some(m) = message_of(error) else {
        return ErrorClass::Other;
    };
    let has = |text: &str| m.contains(text);
    if has("server has gone away") || has("lost connection to") {
        ErrorClass::ConnectionLost
    } else if has("lock wait timeout exceeded") || has("nowait is set") {
        ErrorClass::LockWait
    } else if (has("table") && has("doesn't exist")) || (has("savepoint") && has("does not exist"))
    {
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
    fn mysql_errors_are_classified() {
        let unknown = |m: &str| {
            classify(&Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(m.to_string()),
            ))
        };
        for lost in [
            "MySQL server has gone away",
            "Server has gone away",
            "Lost connection to MySQL server during query",
            "Lost connection to server during query",
            "Lost connection to server at 'handshake: reading initial communication packet', system error: 104",
        ] {
            assert_eq!(unknown(lost), ErrorClass::ConnectionLost, "{lost}");
        }
        assert_eq!(
            unknown("Lock wait timeout exceeded; try restarting transaction"),
            ErrorClass::LockWait
        );
        assert_eq!(
            unknown("Statement aborted because lock(s) could not be acquired immediately and NOWAIT is set."),
            ErrorClass::LockWait
        );
        assert_eq!(
            unknown("Table 'app.__diesel_schema_migrations' doesn't exist"),
            ErrorClass::Missing
        );
        assert_eq!(unknown("SAVEPOINT x does not exist"), ErrorClass::Missing);
        assert_eq!(
            unknown("You have an error in your SQL syntax"),
            ErrorClass::Other
        );
        assert_eq!(
            classify(&Error::BrokenTransactionManager),
            ErrorClass::ConnectionLost
        );
    }
}
