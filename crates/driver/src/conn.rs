use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::{MysqlConnection, PgConnection, SqliteConnection};
use orchestrate_core::{Applied, Direction, Step, Version};

use crate::endpoint::{Backend, Endpoint};
use crate::error::DriverError;
use crate::record::{quote_literal, DecisionRecord, GID_PREFIX};
use crate::schema::{self, __diesel_schema_migrations, orchestrate_decisions, orchestrate_history};

/// The key of the transaction-scoped advisory lock every PostgreSQL batch takes first. It is
/// released by COMMIT, ROLLBACK, COMMIT PREPARED, ROLLBACK PREPARED or the end of the session,
/// never left behind by a crash; a prepared batch keeps it until it is resolved.
pub const LOCK_KEY: i64 = 0x6f72_6368_6573_7472; // "orchestr"

/// The name of the session-level lock a MySQL batch holds on its bind from start to end, as an
/// SQL expression: named locks are server-wide, so the name carries the database (hashed, to
/// stay within MySQL's 64 characters). A crashed coordinator's session ends, and the server
/// releases the lock with it, so a free lock proves no coordinator is still working on the bind.
pub const MYSQL_LOCK_NAME: &str = "CONCAT('orchestrate:', SHA1(DATABASE()))";

enum Conn {
    Pg(PgConnection),
    Sqlite(SqliteConnection),
    Mysql(MysqlConnection),
}

/// Runs the same diesel code on whichever backend the connection is.
macro_rules! on_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            Conn::Pg($c) => $body,
            Conn::Sqlite($c) => $body,
            Conn::Mysql($c) => $body,
        }
    };
}

/// What a database says about itself.
#[derive(Clone, Debug, Default)]
pub struct BindState {
    /// Whether the database (SQLite: the file) exists. A missing one has applied nothing.
    pub exists: bool,
    pub applied: Vec<Applied>,
    /// This tool's prepared transactions on this database: batches in doubt.
    pub in_doubt: Vec<PreparedXact>,
    /// MySQL: batches and migrations under way and not settled (see [`Mark`]).
    pub marks: Vec<Mark>,
}

/// A row of `orchestrate_in_progress` (MySQL binds): something started and not settled.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, serde::Serialize)]
pub struct Mark {
    /// `batch`: a batch touched this bind and its outcome is not settled here (`xa-batch`: the
    /// same, for a batch whose part here is an XA transaction); `migration`:
    /// a migration (or, with direction `undo-up`/`undo-down`, its undo) started and did not
    /// finish.
    pub kind: String,
    pub batch_id: String,
    /// The migration's version (`-` for a batch mark).
    pub version: String,
    /// The bind whose `orchestrate_decisions` decides the batch; empty when no bind of the
    /// batch could decide (only MySQL binds).
    pub decider: String,
    /// `up`, `down`, `undo-up` (reverting an applied migration) or `undo-down`.
    pub direction: String,
    pub name: String,
    pub statements_done: i64,
    pub statements_total: i64,
    pub started_at: String,
}

impl Mark {
    /// A batch mark: `batch` (a non-atomic participant) or `xa-batch` (an XA participant).
    pub fn is_batch(&self) -> bool {
        self.kind == "batch" || self.kind == "xa-batch"
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
        let what = match self.direction.as_str() {
            "up" => "applying",
            "down" => "reverting",
            "undo-up" => "undoing (reverting) the applied",
            _ => "undoing (re-applying) the reverted",
        };
        let progress = if self.statements_done == 0 && self.statements_total == 0 {
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
        };
        format!(
            "interrupted while {what} migration {} (batch {}, started {}): {progress}. Look at the database and bring migration {} either fully in or fully out by hand, then run `orchestrate resolve --bind <bind> {} --applied` if it is now fully in the database, or `--reverted` if none of it is; then `orchestrate recover` settles the rest of the batch",
            self.name,
            self.batch_id,
            self.started_at,
            self.name,
            self.version
        )
    }
}

/// A history row of one batch on one bind, newest first (for undoing a batch on MySQL).
#[derive(Clone, Debug)]
pub struct BatchStep {
    pub version: String,
    pub name: String,
    pub direction: String,
    pub down_sql: Option<String>,
    pub checksum: Option<String>,
}

/// A prepared transaction of this tool, found in `pg_prepared_xacts`.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct PreparedXact {
    #[diesel(sql_type = Text)]
    pub gid: String,
    #[diesel(sql_type = Text)]
    pub prepared_at: String,
    /// How long it has been prepared (`HH:MM:SS`, PostgreSQL's interval text).
    #[diesel(sql_type = Text)]
    pub age: String,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = Bool)]
    ok: bool,
}

/// The `application_name` of a batch's decider session.
fn decider_tag(batch_id: &str) -> String {
    format!("orchestrate-decider:{batch_id}")
}

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

/// One open connection to one bind.
pub struct BindConnection {
    endpoint: Endpoint,
    conn: Conn,
    lock_timeout: Duration,
    /// MySQL: the XA transaction this session has started (`XA START`), if any.
    xa: Option<String>,
}

impl BindConnection {
    /// Connects. With `create` a SQLite file (and its folder) is created when missing;
    /// without it a missing file is [`DriverError::NoSuchFile`], so that reading the state of
    /// a bind never creates anything. `lock_timeout` bounds every wait for a lock.
    pub fn connect(
        endpoint: &Endpoint,
        create: bool,
        lock_timeout: Duration,
    ) -> Result<BindConnection, DriverError> {
        let bind = endpoint.bind.clone();
        let connect_err = |source| DriverError::Connect {
            bind: bind.clone(),
            url: endpoint.redacted().to_string(),
            source,
        };
        let ms = lock_timeout.as_millis();
        let conn = match endpoint.backend {
            // The lock timeout travels in the startup packet: no extra round trip, and reads
            // never hang on locks held by a prepared (in-doubt) batch.
            Backend::Postgres => Conn::Pg(
                PgConnection::establish(
                    &endpoint.connect_url_with_options(&format!("-c lock_timeout={ms}")),
                )
                .map_err(connect_err)?,
            ),
            Backend::Mysql => {
                keep_openssl_initialised();
                Conn::Mysql(
                    MysqlConnection::establish(endpoint.connect_url()).map_err(connect_err)?,
                )
            }
            Backend::Sqlite => {
                let path = endpoint
                    .sqlite_path()
                    .expect("sqlite endpoints have a path");
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
                Conn::Sqlite(
                    SqliteConnection::establish(endpoint.connect_url()).map_err(connect_err)?,
                )
            }
        };
        let mut this = BindConnection {
            endpoint: endpoint.clone(),
            conn,
            lock_timeout,
            xa: None,
        };
        let seconds = ms.div_ceil(1000).max(1);
        let set_timeout = match &mut this.conn {
            Conn::Sqlite(c) => c.batch_execute(&format!("PRAGMA busy_timeout = {ms}")),
            Conn::Mysql(c) => c.batch_execute(&format!(
                "SET SESSION innodb_lock_wait_timeout = {seconds}, SESSION lock_wait_timeout = {seconds}"
            )),
            Conn::Pg(_) => Ok(()),
        };
        set_timeout.map_err(|source| this.query_err("cannot set the lock timeout", source))?;
        Ok(this)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn backend(&self) -> Backend {
        self.endpoint.backend
    }

    fn bind(&self) -> String {
        self.endpoint.bind.clone()
    }

    fn query_err(&self, what: &str, source: diesel::result::Error) -> DriverError {
        DriverError::Query {
            bind: self.bind(),
            what: what.into(),
            source,
        }
    }

    fn table_exists(&mut self, table: &str) -> Result<bool, DriverError> {
        // `table` is one of this crate's constant names, never user input.
        let sql = match self.conn {
            Conn::Pg(_) => format!(
                "SELECT CAST(CASE WHEN to_regclass('{table}') IS NULL THEN 0 ELSE 1 END AS BIGINT) AS n"
            ),
            Conn::Sqlite(_) => {
                format!("SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name = '{table}'")
            }
            Conn::Mysql(_) => format!(
                "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '{table}'"
            ),
        };
        let query = diesel::sql_query(sql);
        let row: Result<Count, _> = on_conn!(&mut self.conn, c => query.get_result(c));
        row.map(|r| r.n > 0)
            .map_err(|e| self.query_err("cannot read the catalog", e))
    }

    /// Which of diesel's version table, `orchestrate_history` and (MySQL)
    /// `orchestrate_in_progress` exist, in one round trip.
    fn bookkeeping_tables(&mut self) -> Result<(bool, bool, bool), DriverError> {
        let sql = match self.conn {
            Conn::Pg(_) => "SELECT CAST(CASE WHEN to_regclass('__diesel_schema_migrations') IS NULL THEN 0 ELSE 1 END \
                 + CASE WHEN to_regclass('orchestrate_history') IS NULL THEN 0 ELSE 2 END AS BIGINT) AS n",
            Conn::Sqlite(_) => "SELECT coalesce(sum(CASE name WHEN '__diesel_schema_migrations' THEN 1 \
                 WHEN 'orchestrate_history' THEN 2 ELSE 0 END), 0) AS n FROM sqlite_master WHERE type = 'table'",
            Conn::Mysql(_) => "SELECT CAST(coalesce(sum(CASE table_name WHEN '__diesel_schema_migrations' THEN 1 \
                 WHEN 'orchestrate_history' THEN 2 WHEN 'orchestrate_in_progress' THEN 4 ELSE 0 END), 0) AS SIGNED) AS n \
                 FROM information_schema.tables WHERE table_schema = DATABASE()",
        };
        let query = diesel::sql_query(sql);
        let row: Result<Count, _> = on_conn!(&mut self.conn, c => query.get_result(c));
        row.map(|r| (r.n & 1 != 0, r.n & 2 != 0, r.n & 4 != 0))
            .map_err(|e| self.query_err("cannot read the catalog", e))
    }

    /// Reads what the database has applied, and this tool's prepared transactions on it.
    /// Creates nothing.
    pub fn read_state(&mut self) -> Result<BindState, DriverError> {
        let mut state = self.read_applied()?;
        state.in_doubt = self.prepared()?;
        Ok(state)
    }

    /// Reads what the database has applied (not its prepared transactions). Creates nothing.
    pub fn read_applied(&mut self) -> Result<BindState, DriverError> {
        let mut state = BindState {
            exists: true,
            ..BindState::default()
        };
        let (has_versions, has_history, has_marks) = self.bookkeeping_tables()?;
        if has_marks {
            state.marks = self.load_marks()?;
        }
        if has_versions {
            let versions: Vec<String> =
                on_conn!(&mut self.conn, c => __diesel_schema_migrations::table
                .select(__diesel_schema_migrations::version)
                .load(c))
                .map_err(|e| self.query_err("cannot read __diesel_schema_migrations", e))?;
            let mut recorded: HashMap<String, (String, Option<String>, Option<String>)> =
                HashMap::new();
            if has_history {
                use schema::orchestrate_history::dsl as h;
                let rows: Vec<(String, String, Option<String>, Option<String>)> =
                    on_conn!(&mut self.conn, c => h::orchestrate_history
                        .filter(h::direction.eq_any(["up", "stamp"]))
                        .order(h::id.asc())
                        .select((h::version, h::name, h::checksum, h::down_sql))
                        .load(c))
                    .map_err(|e| self.query_err("cannot read orchestrate_history", e))?;
                for (version, name, checksum, down_sql) in rows {
                    recorded.insert(version, (name, checksum, down_sql));
                }
            }
            state.applied = versions
                .into_iter()
                .map(|v| {
                    let (name, checksum, down_sql) = match recorded.remove(&v) {
                        Some((n, c, d)) => (Some(n), c, d),
                        None => (None, None, None),
                    };
                    Applied {
                        version: Version::from_stored(&v),
                        name,
                        checksum,
                        down_sql,
                    }
                })
                .collect();
            state.applied.sort_by(|a, b| a.version.cmp(&b.version));
        }
        Ok(state)
    }

    /// This tool's prepared transactions on this database (none on SQLite).
    pub fn prepared(&mut self) -> Result<Vec<PreparedXact>, DriverError> {
        match &mut self.conn {
            Conn::Pg(c) => diesel::sql_query(
                "SELECT gid, CAST(prepared AS TEXT) AS prepared_at, \
                 CAST(date_trunc('second', now() - prepared) AS TEXT) AS age FROM pg_prepared_xacts \
                 WHERE database = current_database() AND starts_with(gid, $1) ORDER BY prepared",
            )
            .bind::<Text, _>(GID_PREFIX)
            .load(c)
            .map_err(|e| self.query_err("cannot read pg_prepared_xacts", e)),
            Conn::Mysql(_) => self.xa_prepared(),
            Conn::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// The databases of this PostgreSQL server whose name matches `pattern` (SQL `LIKE`), in
    /// name order; templates and databases that refuse connections are left out.
    pub fn databases_like(&mut self, pattern: &str) -> Result<Vec<String>, DriverError> {
        #[derive(QueryableByName)]
        struct Db {
            #[diesel(sql_type = Text)]
            datname: String,
        }
        let Conn::Pg(c) = &mut self.conn else {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: "only PostgreSQL servers can list their databases".into(),
            });
        };
        let rows: Vec<Db> = diesel::sql_query(
            "SELECT datname FROM pg_database WHERE datname LIKE $1 AND datallowconn AND NOT datistemplate ORDER BY datname",
        )
        .bind::<Text, _>(pattern)
        .load(c)
        .map_err(|e| self.query_err("cannot list the server's databases", e))?;
        Ok(rows.into_iter().map(|r| r.datname).collect())
    }

    /// The server's `max_prepared_transactions` (PostgreSQL only).
    pub fn max_prepared_transactions(&mut self) -> Result<Option<i64>, DriverError> {
        let Conn::Pg(c) = &mut self.conn else {
            return Ok(None);
        };
        let found: Count = diesel::sql_query(
            "SELECT CAST(setting AS BIGINT) AS n FROM pg_settings WHERE name = 'max_prepared_transactions'",
        )
        .get_result(c)
        .map_err(|e| self.query_err("cannot read max_prepared_transactions", e))?;
        Ok(Some(found.n))
    }

    /// Whether this bind's history carries rows of `batch_id`: the batch's work is committed
    /// here.
    pub fn has_batch(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        if !self.table_exists("orchestrate_history")? {
            return Ok(false);
        }
        let n: i64 = on_conn!(&mut self.conn, c => orchestrate_history::table
            .filter(orchestrate_history::batch_id.eq(batch_id))
            .filter(orchestrate_history::direction.eq_any(["up", "down"]))
            .count()
            .get_result(c))
        .map_err(|e| self.query_err("cannot read orchestrate_history", e))?;
        Ok(n > 0)
    }

    /// Whether a heuristic outcome of `batch_id` was already recorded here.
    pub fn has_heuristic(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        if !self.table_exists("orchestrate_history")? {
            return Ok(false);
        }
        let n: i64 = on_conn!(&mut self.conn, c => orchestrate_history::table
            .filter(orchestrate_history::batch_id.eq(batch_id))
            .filter(orchestrate_history::direction.eq("heuristic"))
            .count()
            .get_result(c))
        .map_err(|e| self.query_err("cannot read orchestrate_history", e))?;
        Ok(n > 0)
    }

    /// Records, once, that this bind's part of a decided batch was ended against the decision
    /// by someone else (a heuristic outcome), so that it is reported once and not retried.
    pub fn record_heuristic(
        &mut self,
        batch_id: &str,
        detail: &str,
        at: &str,
    ) -> Result<(), DriverError> {
        let ddl = self.history_ddl();
        on_conn!(&mut self.conn, c => c.batch_execute(ddl))
            .map_err(|e| self.query_err("cannot create orchestrate_history", e))?;
        use schema::orchestrate_history::dsl as h;
        let row = (
            h::batch_id.eq(batch_id),
            h::version.eq("-"),
            h::name.eq(detail),
            h::direction.eq("heuristic"),
            h::at.eq(at),
        );
        on_conn!(&mut self.conn, c => diesel::insert_into(h::orchestrate_history).values(row).execute(c))
            .map_err(|e| self.query_err("cannot record the heuristic outcome", e))?;
        Ok(())
    }

    /// Reads the decision of a batch this bind decided, if it was committed.
    pub fn read_decision(&mut self, batch_id: &str) -> Result<Option<DecisionRecord>, DriverError> {
        if !self.table_exists("orchestrate_decisions")? {
            return Ok(None);
        }
        let text: Option<String> = on_conn!(&mut self.conn, c => orchestrate_decisions::table
            .filter(orchestrate_decisions::batch_id.eq(batch_id))
            .select(orchestrate_decisions::record)
            .first(c)
            .optional())
        .map_err(|e| self.query_err("cannot read orchestrate_decisions", e))?;
        text.map(|t| {
            serde_json::from_str(&t).map_err(|e| DriverError::Other {
                bind: self.bind(),
                detail: format!("the decision record of batch {batch_id} is unreadable: {e}"),
            })
        })
        .transpose()
    }

    /// Names this session after the batch it decides, so that `recover` can tell a batch
    /// whose coordinator is still running from one whose coordinator is gone.
    pub fn tag_as_decider(&mut self, batch_id: &str) -> Result<(), DriverError> {
        if let Conn::Pg(c) = &mut self.conn {
            let sql = format!(
                "SET application_name = {}",
                quote_literal(&decider_tag(batch_id))
            );
            c.batch_execute(&sql)
                .map_err(|e| self.query_err("cannot set application_name", e))?;
        }
        Ok(())
    }

    /// Whether the decider of `batch_id` may still commit: on PostgreSQL its tagged session is
    /// alive; on SQLite someone holds the write lock (waiting at most the lock timeout).
    pub fn decider_alive(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        match &mut self.conn {
            Conn::Pg(c) => {
                let found: Count = diesel::sql_query(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
                )
                .bind::<Text, _>(decider_tag(batch_id))
                .get_result(c)
                .map_err(|e| self.query_err("cannot read pg_stat_activity", e))?;
                Ok(found.n > 0)
            }
            Conn::Sqlite(c) => match c.batch_execute("BEGIN IMMEDIATE") {
                Ok(()) => {
                    c.batch_execute("ROLLBACK")
                        .map_err(|e| self.query_err("cannot release the write lock", e))?;
                    Ok(false)
                }
                Err(e) if e.to_string().contains("locked") || e.to_string().contains("busy") => {
                    Ok(true)
                }
                Err(e) => Err(self.query_err("cannot take the write lock", e)),
            },
            // A MySQL bind decides only batches of MySQL binds alone; their coordinator holds
            // this bind's lock until the decision is written.
            Conn::Mysql(_) => Ok(!self.session_lock_free()?),
        }
    }

    /// Every decision this bind recorded.
    pub fn decisions(&mut self) -> Result<Vec<DecisionRecord>, DriverError> {
        if !self.table_exists("orchestrate_decisions")? {
            return Ok(Vec::new());
        }
        let texts: Vec<String> = on_conn!(&mut self.conn, c => orchestrate_decisions::table
            .order(orchestrate_decisions::batch_id.asc())
            .select(orchestrate_decisions::record)
            .load(c))
        .map_err(|e| self.query_err("cannot read orchestrate_decisions", e))?;
        texts
            .iter()
            .map(|t| {
                serde_json::from_str(t).map_err(|e| DriverError::Other {
                    bind: self.bind(),
                    detail: format!("a decision record is unreadable: {e}"),
                })
            })
            .collect()
    }

    /// Opens the batch's transaction, takes the migration lock (waiting at most the lock
    /// timeout) and makes sure the version tables exist.
    pub fn begin_batch(&mut self) -> Result<(), DriverError> {
        let started = Instant::now();
        let busy = |this: &Self| DriverError::Busy {
            bind: this.bind(),
            waited_ms: started.elapsed().as_millis() as u64,
        };
        match &mut self.conn {
            Conn::Pg(c) => {
                AnsiTransactionManager::begin_transaction(c)
                    .map_err(|e| self.query_err("cannot begin the batch transaction", e))?;
                loop {
                    let got: Result<Flag, _> =
                        diesel::sql_query("SELECT pg_try_advisory_xact_lock($1) AS ok")
                            .bind::<BigInt, _>(LOCK_KEY)
                            .get_result(self.pg());
                    match got {
                        Ok(Flag { ok: true }) => break,
                        Ok(Flag { ok: false }) if started.elapsed() < self.lock_timeout => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Ok(Flag { ok: false }) => {
                            let err = busy(self);
                            self.rollback();
                            return Err(err);
                        }
                        Err(e) => return Err(self.query_err("cannot take the migration lock", e)),
                    }
                }
            }
            Conn::Sqlite(c) => {
                // IMMEDIATE takes the write lock now (waiting up to busy_timeout), so two
                // runs cannot both plan against the same state.
                if let Err(e) = AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
                {
                    if e.to_string().contains("locked") || e.to_string().contains("busy") {
                        return Err(busy(self));
                    }
                    return Err(self.query_err("cannot begin the batch transaction", e));
                }
            }
            Conn::Mysql(_) => {
                // DDL commits on MySQL: the tables are made before the transaction opens.
                self.begin_nonatomic()?;
                let Conn::Mysql(c) = &mut self.conn else {
                    unreachable!()
                };
                AnsiTransactionManager::begin_transaction(c)
                    .map_err(|e| self.query_err("cannot begin the batch transaction", e))?;
                return Ok(());
            }
        }
        let history_ddl = self.history_ddl();
        for ddl in [schema::DIESEL_TABLE_DDL, history_ddl] {
            on_conn!(&mut self.conn, c => c.batch_execute(ddl))
                .map_err(|e| self.query_err("cannot create the version tables", e))?;
        }
        Ok(())
    }

    fn pg(&mut self) -> &mut PgConnection {
        match &mut self.conn {
            Conn::Pg(c) => c,
            _ => unreachable!("only called on PostgreSQL connections"),
        }
    }

    fn history_ddl(&self) -> &'static str {
        match self.conn {
            Conn::Pg(_) => schema::HISTORY_DDL_PG,
            Conn::Sqlite(_) => schema::HISTORY_DDL_SQLITE,
            Conn::Mysql(_) => schema::HISTORY_DDL_MYSQL,
        }
    }

    /// Checks, inside the batch transaction, that the database is still where the plan
    /// started from: every version the plan reverts is applied, every version it applies is
    /// not. Another run that got there first makes this fail, so nothing runs twice.
    pub fn check_plan_still_valid(
        &mut self,
        direction: Direction,
        steps: &[Step],
    ) -> Result<(), DriverError> {
        let applied: Vec<String> = on_conn!(&mut self.conn, c => __diesel_schema_migrations::table
            .select(__diesel_schema_migrations::version)
            .load(c))
        .map_err(|e| self.query_err("cannot read __diesel_schema_migrations", e))?;
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
        Ok(())
    }

    /// Runs one step of the batch and records it, inside the batch transaction.
    pub fn run_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError> {
        if matches!(self.conn, Conn::Mysql(_)) && self.xa.is_none() {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: "MySQL migrations cannot run inside a batch transaction".into(),
            });
        }
        on_conn!(&mut self.conn, c => c.batch_execute(&step.sql)).map_err(|source| {
            DriverError::Migration {
                bind: self.bind(),
                name: step.name.clone(),
                source,
            }
        })?;
        self.ensure_still_in_transaction(&step.name)?;
        self.record_step(batch_id, direction, &direction.to_string(), step, at)
    }

    /// Records a step in the version tables without running it: `up` adds the version to
    /// diesel's table, `down` removes it, and a history row with `label` (`up`, `down`, or
    /// `stamp` / `unstamp` for `orchestrate stamp`) keeps the batch, checksum and down SQL.
    pub fn record_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        label: &str,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError> {
        let version = step.version.as_str();
        match direction {
            Direction::Up => on_conn!(&mut self.conn, c => diesel::insert_into(__diesel_schema_migrations::table)
                .values(__diesel_schema_migrations::version.eq(version))
                .execute(c)),
            Direction::Down => on_conn!(&mut self.conn, c => diesel::delete(
                __diesel_schema_migrations::table.filter(__diesel_schema_migrations::version.eq(version)))
                .execute(c)),
        }
        .map_err(|e| self.query_err("cannot record the migration in __diesel_schema_migrations", e))?;
        use schema::orchestrate_history::dsl as h;
        let row = (
            h::batch_id.eq(batch_id),
            h::version.eq(version),
            h::name.eq(&step.name),
            h::direction.eq(label),
            h::checksum.eq(step.checksum.as_deref()),
            h::down_sql.eq(step.down_sql.as_deref()),
            h::at.eq(at),
        );
        on_conn!(&mut self.conn, c => diesel::insert_into(h::orchestrate_history).values(row).execute(c))
            .map_err(|e| self.query_err("cannot record the migration in orchestrate_history", e))?;
        Ok(())
    }

    /// Fails when a migration's own SQL ended the batch transaction (COMMIT, ROLLBACK, END):
    /// what ran before it on this bind may then be committed, and the batch is not atomic.
    fn ensure_still_in_transaction(&mut self, name: &str) -> Result<(), DriverError> {
        let inside = match &mut self.conn {
            // diesel follows libpq's transaction status after every statement.
            Conn::Pg(c) => matches!(
                AnsiTransactionManager::transaction_manager_status_mut(c).transaction_depth(),
                Ok(Some(_))
            ),
            // SQLite refuses BEGIN inside a transaction; success means we were outside.
            Conn::Sqlite(c) => match c.batch_execute("BEGIN") {
                Err(e) if e.to_string().contains("within a transaction") => true,
                Err(e) => return Err(self.query_err("cannot check the transaction", e)),
                Ok(()) => {
                    let _ = c.batch_execute("ROLLBACK");
                    false
                }
            },
            Conn::Mysql(_) => true,
        };
        if inside {
            Ok(())
        } else {
            Err(DriverError::LeftTransaction {
                bind: self.bind(),
                name: name.into(),
            })
        }
    }

    /// Writes the decision record in the batch transaction (on the decider).
    pub fn write_decision(&mut self, record: &DecisionRecord, at: &str) -> Result<(), DriverError> {
        let ddl = match self.conn {
            Conn::Mysql(_) => schema::DECISIONS_DDL_MYSQL,
            _ => schema::DECISIONS_DDL,
        };
        on_conn!(&mut self.conn, c => c.batch_execute(ddl))
            .map_err(|e| self.query_err("cannot create orchestrate_decisions", e))?;
        let text = serde_json::to_string(record).expect("decision records serialise");
        use schema::orchestrate_decisions::dsl as d;
        let row = (
            d::batch_id.eq(&record.batch_id),
            d::decided_at.eq(at),
            d::record.eq(&text),
        );
        on_conn!(&mut self.conn, c => diesel::insert_into(d::orchestrate_decisions).values(row).execute(c))
            .map_err(|e| self.query_err("cannot write the decision record", e))?;
        Ok(())
    }

    /// Makes deferred constraints fail now rather than as an ambiguous COMMIT error.
    pub fn check_deferred(&mut self) -> Result<(), DriverError> {
        if let Conn::Pg(c) = &mut self.conn {
            c.batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
                .map_err(|e| self.query_err("a deferred constraint failed", e))?;
        }
        Ok(())
    }

    /// Ends the batch transaction with `PREPARE TRANSACTION` and checks that it really was
    /// prepared: PostgreSQL answers success and prepares nothing when the transaction had
    /// already failed or ended.
    pub fn prepare(&mut self, gid: &str) -> Result<(), DriverError> {
        if matches!(self.conn, Conn::Mysql(_)) && self.xa.is_some() {
            return self.xa_prepare(gid);
        }
        let Conn::Pg(c) = &mut self.conn else {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: format!("{} cannot prepare a transaction", self.backend()),
            });
        };
        c.batch_execute(&format!("PREPARE TRANSACTION {}", quote_literal(gid)))
            .map_err(|source| DriverError::Prepare {
                bind: self.bind(),
                hint: crate::error::prepare_hint(&source.to_string()),
                source,
            })?;
        let found: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_prepared_xacts WHERE gid = $1 AND database = current_database()",
        )
        .bind::<Text, _>(gid)
        .get_result(self.pg())
        .map_err(|e| self.query_err("cannot verify the prepared transaction", e))?;
        if found.n != 1 {
            return Err(DriverError::PrepareNotRecorded {
                bind: self.bind(),
                gid: gid.into(),
            });
        }
        Ok(())
    }

    /// Commits the batch transaction.
    pub fn commit(&mut self) -> Result<(), DriverError> {
        on_conn!(&mut self.conn, c => AnsiTransactionManager::commit_transaction(c))
            .map_err(|e| self.query_err("COMMIT failed", e))
    }

    /// Rolls back the batch transaction if one is open; errors are ignored because dropping
    /// the connection rolls back too.
    pub fn rollback(&mut self) {
        if let Some(xid) = self.xa.take() {
            if let Conn::Mysql(c) = &mut self.conn {
                // An XA transaction must be ended before it can be rolled back; either may
                // fail when the other already happened. Closing the session rolls back too.
                let _ = c.batch_execute(&format!("XA END {xid}"));
                let _ = c.batch_execute(&format!("XA ROLLBACK {xid}"));
            }
            return;
        }
        let open = on_conn!(&mut self.conn, c => matches!(
            AnsiTransactionManager::transaction_manager_status_mut(c).transaction_depth(),
            Ok(Some(_))
        ));
        if open {
            if let Err(e) =
                on_conn!(&mut self.conn, c => AnsiTransactionManager::rollback_transaction(c))
            {
                tracing::warn!(bind = %self.endpoint.bind, error = %e, "rollback failed; the connection is dropped instead");
            }
        }
    }

    /// `COMMIT PREPARED` (outside any transaction).
    pub fn commit_prepared(&mut self, gid: &str) -> Result<(), DriverError> {
        if let Conn::Mysql(_) = self.conn {
            return self.xa_finish(gid, "COMMIT");
        }
        let sql = format!("COMMIT PREPARED {}", quote_literal(gid));
        self.pg()
            .batch_execute(&sql)
            .map_err(|e| self.query_err(&format!("COMMIT PREPARED of {gid} failed"), e))
    }

    /// `ROLLBACK PREPARED` (outside any transaction).
    pub fn rollback_prepared(&mut self, gid: &str) -> Result<(), DriverError> {
        if let Conn::Mysql(_) = self.conn {
            return self.xa_finish(gid, "ROLLBACK");
        }
        let sql = format!("ROLLBACK PREPARED {}", quote_literal(gid));
        self.pg()
            .batch_execute(&sql)
            .map_err(|e| self.query_err(&format!("ROLLBACK PREPARED of {gid} failed"), e))
    }
}

/// MySQL and MariaDB binds: their DDL commits statement by statement, so a batch cannot be
/// rolled back there. Each migration is run one statement at a time between a mark written
/// before it and cleared (in the same transaction as the version-table rows) after it, so that
/// a crash leaves the exact migration, and how far it got, on record.
impl BindConnection {
    fn mysql(&mut self) -> Result<&mut MysqlConnection, DriverError> {
        let bind = self.bind();
        match &mut self.conn {
            Conn::Mysql(c) => Ok(c),
            _ => Err(DriverError::Other {
                bind,
                detail: "only MySQL binds run migrations outside a transaction".into(),
            }),
        }
    }

    /// Takes the bind's session lock (waiting at most the lock timeout) and creates the
    /// version tables and `orchestrate_in_progress`. The lock stays until the connection
    /// closes, so a crash releases it.
    pub fn begin_nonatomic(&mut self) -> Result<(), DriverError> {
        let started = Instant::now();
        let seconds = self.lock_timeout.as_millis().div_ceil(1000).max(1);
        let got: Result<Count, _> = diesel::sql_query(format!(
            "SELECT CAST(coalesce(GET_LOCK({MYSQL_LOCK_NAME}, {seconds}), 0) AS SIGNED) AS n"
        ))
        .get_result(self.mysql()?);
        match got {
            Ok(Count { n: 1 }) => {}
            Ok(_) => {
                return Err(DriverError::Busy {
                    bind: self.bind(),
                    waited_ms: started.elapsed().as_millis() as u64,
                })
            }
            Err(e) => return Err(self.query_err("cannot take the migration lock", e)),
        }
        for ddl in [
            schema::DIESEL_TABLE_DDL_MYSQL,
            schema::HISTORY_DDL_MYSQL,
            schema::IN_PROGRESS_DDL_MYSQL,
        ] {
            let done = self.mysql()?.batch_execute(ddl);
            done.map_err(|e| self.query_err("cannot create the version tables", e))?;
        }
        Ok(())
    }

    /// Whether no session holds this bind's migration lock: no coordinator is working on it.
    pub fn session_lock_free(&mut self) -> Result<bool, DriverError> {
        let found: Result<Count, _> = diesel::sql_query(format!(
            "SELECT CAST(coalesce(IS_FREE_LOCK({MYSQL_LOCK_NAME}), 0) AS SIGNED) AS n"
        ))
        .get_result(self.mysql()?);
        found
            .map(|c| c.n == 1)
            .map_err(|e| self.query_err("cannot read the migration lock", e))
    }

    fn load_marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        use schema::orchestrate_in_progress::dsl as m;
        let rows = m::orchestrate_in_progress
            .order((m::started_at.asc(), m::kind.asc()))
            .load::<Mark>(self.mysql()?);
        rows.map_err(|e| self.query_err("cannot read orchestrate_in_progress", e))
    }

    /// What is under way and not settled on this bind (MySQL; nothing elsewhere).
    pub fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        if !matches!(self.conn, Conn::Mysql(_)) || !self.table_exists("orchestrate_in_progress")? {
            return Ok(Vec::new());
        }
        self.load_marks()
    }

    /// Writes a mark (committed at once).
    pub fn put_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
        use schema::orchestrate_in_progress::dsl as m;
        let row = (
            m::kind.eq(&mark.kind),
            m::batch_id.eq(&mark.batch_id),
            m::version.eq(&mark.version),
            m::decider.eq(&mark.decider),
            m::direction.eq(&mark.direction),
            m::name.eq(&mark.name),
            m::statements_done.eq(mark.statements_done),
            m::statements_total.eq(mark.statements_total),
            m::started_at.eq(&mark.started_at),
        );
        let done = diesel::insert_into(m::orchestrate_in_progress)
            .values(row)
            .execute(self.mysql()?);
        done.map(|_| ())
            .map_err(|e| self.query_err("cannot write to orchestrate_in_progress", e))
    }

    /// Records how many statements of a marked migration have committed.
    pub fn set_mark_progress(&mut self, mark: &Mark, done: i64) -> Result<(), DriverError> {
        use schema::orchestrate_in_progress::dsl as m;
        let updated = diesel::update(
            m::orchestrate_in_progress
                .filter(m::kind.eq(&mark.kind))
                .filter(m::batch_id.eq(&mark.batch_id))
                .filter(m::version.eq(&mark.version)),
        )
        .set(m::statements_done.eq(done))
        .execute(self.mysql()?);
        updated
            .map(|_| ())
            .map_err(|e| self.query_err("cannot write to orchestrate_in_progress", e))
    }

    /// Removes a mark (committed at once, or with the open transaction). A mark that is not
    /// there is an error: someone else settled it, and what was about to be recorded with its
    /// removal must not be.
    pub fn clear_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
        use schema::orchestrate_in_progress::dsl as m;
        let deleted = diesel::delete(
            m::orchestrate_in_progress
                .filter(m::kind.eq(&mark.kind))
                .filter(m::batch_id.eq(&mark.batch_id))
                .filter(m::version.eq(&mark.version)),
        )
        .execute(self.mysql()?);
        match deleted {
            Ok(1) => Ok(()),
            Ok(_) => Err(DriverError::Other {
                bind: self.bind(),
                detail: format!(
                    "the mark of {} (batch {}) is gone: another run settled it meanwhile",
                    if mark.is_batch() {
                        "the batch"
                    } else {
                        &mark.name
                    },
                    mark.batch_id
                ),
            }),
            Err(e) => Err(self.query_err("cannot write to orchestrate_in_progress", e)),
        }
    }

    /// Runs one statement of a migration, outside any transaction (it commits by itself).
    pub fn run_statement(&mut self, name: &str, sql: &str) -> Result<(), DriverError> {
        let done = self.mysql()?.batch_execute(sql);
        done.map_err(|source| DriverError::Migration {
            bind: self.bind(),
            name: name.into(),
            source,
        })
    }

    /// Records a finished step in the version tables and clears its mark, in one
    /// transaction: either the step is recorded and unmarked, or still marked.
    pub fn finish_marked_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        label: &str,
        step: &Step,
        mark: &Mark,
        at: &str,
    ) -> Result<(), DriverError> {
        AnsiTransactionManager::begin_transaction(self.mysql()?)
            .map_err(|e| self.query_err("cannot begin a transaction", e))?;
        let done = self
            .record_step(batch_id, direction, label, step, at)
            .and_then(|()| self.clear_mark(mark))
            .and_then(|()| self.commit());
        if done.is_err() {
            self.rollback();
        }
        done
    }

    /// The steps `batch_id` applied or reverted on this bind and that no undo has reverted
    /// since, newest first.
    pub fn batch_steps(&mut self, batch_id: &str) -> Result<Vec<BatchStep>, DriverError> {
        if !self.table_exists("orchestrate_history")? {
            return Ok(Vec::new());
        }
        use schema::orchestrate_history::dsl as h;
        type Row = (String, String, String, Option<String>, Option<String>);
        let rows: Vec<Row> = on_conn!(&mut self.conn, c => h::orchestrate_history
                .filter(h::batch_id.eq(batch_id))
                .order(h::id.asc())
                .select((h::version, h::name, h::direction, h::down_sql, h::checksum))
                .load(c))
        .map_err(|e| self.query_err("cannot read orchestrate_history", e))?;
        let mut steps: Vec<BatchStep> = Vec::new();
        for (version, name, direction, down_sql, checksum) in rows {
            match direction.as_str() {
                "up" | "down" => steps.push(BatchStep {
                    version,
                    name,
                    direction,
                    down_sql,
                    checksum,
                }),
                "undo" => steps.retain(|s| s.version != version),
                _ => {}
            }
        }
        steps.reverse();
        Ok(steps)
    }
}

/// The XA id of a bind's part of a batch on MySQL: `'orchestrate:<batch>','<bind>'` (XA allows
/// 64 bytes for each part, too few for the PostgreSQL transaction id's four parts). The decider
/// is found in the bind's batch mark, written before `XA START`.
pub(crate) fn xid(batch_id: &str, bind: &str) -> String {
    format!(
        "{},{}",
        quote_literal(&format!("{GID_PREFIX}{batch_id}")),
        quote_literal(bind)
    )
}

/// Whether a server keeps prepared XA transactions after their session ends: MariaDB from
/// 10.5.2, MySQL from 5.7.7.
fn xa_survives_disconnect(version: &str) -> bool {
    let numbers: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let v = (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
        numbers.get(2).copied().unwrap_or(0),
    );
    if version.to_ascii_lowercase().contains("mariadb") {
        v >= (10, 5, 2)
    } else {
        v >= (5, 7, 7)
    }
}

/// The batch and bind of a transaction id `orchestrate:<batch>:<decider>:<bind>`.
fn split_gid(gid: &str) -> Option<(&str, &str)> {
    let rest = gid.strip_prefix(GID_PREFIX)?;
    let mut parts = rest.splitn(3, ':');
    let batch = parts.next()?;
    let _decider = parts.next()?;
    Some((batch, parts.next()?))
}

#[derive(QueryableByName)]
struct XaRow {
    #[diesel(sql_type = BigInt)]
    gtrid_length: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    data: Vec<u8>,
}

/// MySQL data-only migrations as true two-phase participants, through XA.
impl BindConnection {
    /// `XA START` for this bind's part of `batch_id`. DDL inside it is refused by the server
    /// (`XAER_RMFAIL`), which fails the batch like any failed migration. Servers whose
    /// prepared XA transactions do not survive a disconnect are refused.
    pub fn start_xa(&mut self, batch_id: &str) -> Result<(), DriverError> {
        #[derive(QueryableByName)]
        struct V {
            #[diesel(sql_type = Text)]
            v: String,
        }
        let found: Result<V, _> =
            diesel::sql_query("SELECT VERSION() AS v").get_result(self.mysql()?);
        let version = found
            .map_err(|e| self.query_err("cannot read the server version", e))?
            .v;
        if !xa_survives_disconnect(&version) {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: format!("this server ({version}) loses prepared XA transactions when the session ends, so data_only migrations cannot be atomic on it; it needs MariaDB 10.5.2 or MySQL 5.7.7 or newer. Remove `data_only = true` to migrate it non-atomically"),
            });
        }
        let id = xid(batch_id, &self.endpoint.bind);
        let done = self.mysql()?.batch_execute(&format!("XA START {id}"));
        done.map_err(|e| self.query_err("XA START failed", e))?;
        self.xa = Some(id);
        Ok(())
    }

    fn xa_prepare(&mut self, gid: &str) -> Result<(), DriverError> {
        let id = self.xa.clone().expect("an XA transaction was started");
        let done = self
            .mysql()?
            .batch_execute(&format!("XA END {id}; XA PREPARE {id}"));
        done.map_err(|source| DriverError::Prepare {
            bind: self.bind(),
            hint: None,
            source,
        })?;
        self.xa = None;
        if !self
            .xa_recover()?
            .iter()
            .any(|(b, bind)| split_gid(gid).is_some_and(|(gb, gbind)| gb == b && gbind == bind))
        {
            // Not listed: end whatever there is on this session.
            let _ = self.mysql()?.batch_execute(&format!("XA ROLLBACK {id}"));
            return Err(DriverError::PrepareNotRecorded {
                bind: self.bind(),
                gid: gid.into(),
            });
        }
        Ok(())
    }

    /// This tool's prepared XA transactions on this server: (batch id, bind).
    fn xa_recover(&mut self) -> Result<Vec<(String, String)>, DriverError> {
        let rows: Result<Vec<XaRow>, _> = diesel::sql_query("XA RECOVER").load(self.mysql()?);
        let rows = rows.map_err(|e| {
            self.query_err(
                "cannot list prepared XA transactions (XA RECOVER; MySQL 8 needs the XA_RECOVER_ADMIN privilege)",
                e,
            )
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let split = usize::try_from(r.gtrid_length).ok()?.min(r.data.len());
                let gtrid = std::str::from_utf8(&r.data[..split]).ok()?;
                let bqual = std::str::from_utf8(&r.data[split..]).ok()?;
                let batch = gtrid.strip_prefix(GID_PREFIX)?;
                Some((batch.to_string(), bqual.to_string()))
            })
            .collect())
    }

    /// This bind's prepared XA transactions, as transaction ids with the decider from the
    /// bind's batch marks. XA RECOVER lists the whole server: only this bind's are kept.
    fn xa_prepared(&mut self) -> Result<Vec<PreparedXact>, DriverError> {
        let marks: Vec<Mark> = self
            .marks()?
            .into_iter()
            .filter(|m| m.kind == "xa-batch")
            .collect();
        if marks.is_empty() {
            // Every XA participant writes its `xa-batch` mark before XA START and it stays
            // until the transaction is resolved: without one there is nothing to look for,
            // and XA RECOVER (which MySQL 8 reserves to XA_RECOVER_ADMIN) is not run.
            return Ok(Vec::new());
        }
        let bind = self.bind();
        Ok(self
            .xa_recover()?
            .into_iter()
            // XA RECOVER lists the whole server: keep this bind's, of batches marked here.
            .filter(|(batch, b)| *b == bind && marks.iter().any(|m| m.batch_id == *batch))
            .map(|(batch, _)| {
                let mark = marks.iter().find(|m| m.batch_id == batch);
                PreparedXact {
                    gid: crate::record::gid_for(
                        &batch,
                        mark.map(|m| m.decider.as_str()).unwrap_or("?"),
                        &bind,
                    ),
                    prepared_at: mark
                        .map(|m| m.started_at.clone())
                        .unwrap_or_else(|| "unknown".into()),
                    age: "unknown".into(),
                }
            })
            .collect())
    }

    /// `XA COMMIT` or `XA ROLLBACK` of a prepared transaction, then its batch mark is cleared.
    fn xa_finish(&mut self, gid: &str, verb: &str) -> Result<(), DriverError> {
        let Some((batch, bind)) = split_gid(gid) else {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: format!("`{gid}` is not a transaction id of this tool"),
            });
        };
        let (batch, id) = (batch.to_string(), xid(batch, bind));
        let done = self.mysql()?.batch_execute(&format!("XA {verb} {id}"));
        done.map_err(|e| self.query_err(&format!("XA {verb} of {gid} failed"), e))?;
        use schema::orchestrate_in_progress::dsl as m;
        let cleared = diesel::delete(
            m::orchestrate_in_progress
                .filter(m::kind.eq_any(["batch", "xa-batch"]))
                .filter(m::batch_id.eq(&batch)),
        )
        .execute(self.mysql()?);
        // The transaction is ended either way; a mark left behind is settled by recover by the
        // batch's decision, and blocks new batches on this bind until then.
        if let Err(e) = cleared {
            tracing::warn!(bind = %self.endpoint.bind, error = %e, "XA {verb} done, but the batch mark could not be cleared; `orchestrate recover` clears it");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xa_needs_servers_that_keep_prepared_transactions() {
        assert!(xa_survives_disconnect("10.11.19-MariaDB-0+deb12u1"));
        assert!(xa_survives_disconnect("10.5.2-MariaDB"));
        assert!(!xa_survives_disconnect("10.5.1-MariaDB"));
        assert!(!xa_survives_disconnect("10.4.30-MariaDB-log"));
        assert!(xa_survives_disconnect("8.0.36"));
        assert!(xa_survives_disconnect("5.7.7-log"));
        assert!(!xa_survives_disconnect("5.6.51"));
    }

    #[test]
    fn transaction_ids_split_into_batch_and_bind() {
        let gid = crate::record::gid_for("20261125T000000Z-0a1b2c3d", "users", "shop");
        assert_eq!(split_gid(&gid), Some(("20261125T000000Z-0a1b2c3d", "shop")));
        assert_eq!(split_gid("someone_else:1"), None);
        assert_eq!(
            xid("20261125T000000Z-0a1b2c3d", "shop"),
            "'orchestrate:20261125T000000Z-0a1b2c3d','shop'"
        );
    }
}
