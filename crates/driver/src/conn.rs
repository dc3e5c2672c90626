use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::mysql::Mysql;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel::sqlite::Sqlite;
use diesel::{MysqlConnection, PgConnection, SqliteConnection};
use orchestrate_core::{Applied, Direction, Step, Version};

use crate::endpoint::{Backend, Endpoint};
use crate::error::{DriverError, ErrorClass};
use crate::participant::{self, mysql, postgres, sqlite};
use crate::record::{quote_literal, DecisionRecord, TransactionId, GID_PREFIX};
use crate::schema::{self, BATCHES, DIESEL_TABLE, HISTORY, IN_PROGRESS};

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

/// A value bound to a bookkeeping statement (written with `?` placeholders).
#[derive(Clone, Copy, Debug)]
enum Arg<'a> {
    Text(&'a str),
    MaybeText(Option<&'a str>),
    Int(i64),
}

/// `sql` with `args` bound, boxed for whichever backend the connection is.
macro_rules! bound {
    ($sql:expr, $args:expr) => {{
        let mut query = diesel::sql_query($sql).into_boxed();
        for arg in $args {
            query = match *arg {
                Arg::Text(v) => query.bind::<Text, _>(v),
                Arg::MaybeText(v) => query.bind::<Nullable<Text>, _>(v),
                Arg::Int(v) => query.bind::<BigInt, _>(v),
            };
        }
        query
    }};
}

/// In a transaction rolled back at once: whether locking the batch's row with `probe` (a
/// `FOR UPDATE NOWAIT`) finds it held by another session.
macro_rules! probe_row {
    ($c:expr, $probe:expr, $batch_id:expr, $classify:path) => {
        $c.transaction(|c| {
            match diesel::sql_query($probe.as_str())
                .bind::<Text, _>($batch_id)
                .execute(c)
            {
                Ok(_) => Err(diesel::result::Error::RollbackTransaction),
                Err(e) if $classify(&e) == ErrorClass::LockWait => Ok(true),
                Err(e) => Err(e),
            }
        })
        .or_else(|e| match e {
            diesel::result::Error::RollbackTransaction => Ok(false),
            e => Err(e),
        })
    };
}

/// A row read by any backend.
trait Row: QueryableByName<Pg> + QueryableByName<Sqlite> + QueryableByName<Mysql> + 'static {}
impl<T: QueryableByName<Pg> + QueryableByName<Sqlite> + QueryableByName<Mysql> + 'static> Row
    for T
{
}

/// PostgreSQL numbers its placeholders: `?` becomes `$1`, `$2`, ... (bookkeeping SQL holds no
/// other `?`).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Quotes an identifier (a schema or database name read from the server): `"x"` on
/// PostgreSQL and SQLite, `` `x` `` on MySQL, doubling the quote inside.
fn quote_ident(backend: Backend, name: &str) -> String {
    let q = if backend == Backend::Mysql { '`' } else { '"' };
    format!("{q}{}{q}", name.replace(q, &format!("{q}{q}")))
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
    pub applied: Vec<Applied>,
    /// This tool's prepared transactions on this database: batches in doubt.
    pub in_doubt: Vec<PreparedXact>,
    /// MySQL: batches and migrations under way and not settled (see [`Mark`]).
    pub marks: Vec<Mark>,
    /// The commit decisions this bind holds as a decider whose participants are not all known
    /// to have finished (normally none).
    pub unsettled: Vec<DecisionRecord>,
}

/// A row of `orchestrate_in_progress` (MySQL binds): something started and not settled.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName, serde::Serialize)]
pub struct Mark {
    /// `batch`: a batch touched this bind and its outcome is not settled here (`xa-batch`: the
    /// same, for a batch whose part here is an XA transaction); `migration`:
    /// a migration (or, with direction `undo-up`/`undo-down`, its undo) started and did not
    /// finish.
    #[diesel(sql_type = Text)]
    pub kind: String,
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
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = BigInt)]
    pub statements_done: i64,
    #[diesel(sql_type = BigInt)]
    pub statements_total: i64,
    #[diesel(sql_type = Text)]
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

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Nullable<Text>)]
    s: Option<String>,
}

#[derive(QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = Text)]
    version: String,
}

#[derive(QueryableByName)]
struct HistoryRow {
    #[diesel(sql_type = Text)]
    version: String,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    direction: String,
    #[diesel(sql_type = Nullable<Text>)]
    checksum: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    down_sql: Option<String>,
}

#[derive(QueryableByName)]
struct BatchRow {
    #[diesel(sql_type = Text)]
    batch_id: String,
    #[diesel(sql_type = Text)]
    state: String,
    #[diesel(sql_type = Nullable<Text>)]
    record: Option<String>,
}

/// The savepoint a SQLite batch transaction holds between steps (see `begin_batch`).
const SQLITE_GUARD_NAME: &str = "orchestrate_batch_guard";
const SQLITE_GUARD: &str = "SAVEPOINT orchestrate_batch_guard";

/// Whether a MySQL server at `host:port` accepts a connection and sends its greeting within
/// [`crate::endpoint::CONNECT_TIMEOUT`].
fn mysql_greets(host: &str, port: u16) -> Result<(), String> {
    use std::io::Read;
    use std::net::{TcpStream, ToSocketAddrs};
    let timeout = crate::endpoint::CONNECT_TIMEOUT;
    let addresses: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    let mut last = format!("no address for {host}");
    for address in addresses {
        match TcpStream::connect_timeout(&address, timeout) {
            Ok(mut stream) => {
                stream
                    .set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                let mut first = [0u8; 1];
                return match stream.read(&mut first) {
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
                };
            }
            Err(e) => last = format!("{address}: {e}"),
        }
    }
    Err(last)
}

/// One open connection to one bind.
pub struct BindConnection {
    endpoint: Endpoint,
    conn: Conn,
    lock_timeout: Duration,
    /// Where this tool's tables live, quoted, with a trailing dot: the PostgreSQL schema first
    /// in the search path when the connection opened, `main.` on SQLite, the database on MySQL.
    /// Fixed at connect, before any migration can move the search path.
    qualifier: String,
    /// PostgreSQL: the transaction id of the open batch transaction, to notice a migration
    /// that ended it and started another (`COMMIT AND CHAIN`, `COMMIT; BEGIN`).
    xact: Option<i64>,
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
                // The client library has no connect timeout diesel can set: a server that
                // accepts and never answers would hold the command for the OS's TCP timeout.
                if let Some((host, port)) = endpoint.mysql_tcp_address() {
                    mysql_greets(&host, port).map_err(|detail| DriverError::Other {
                        bind: bind.clone(),
                        detail: format!("cannot connect to {}: {detail}", endpoint.redacted()),
                    })?;
                }
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
            qualifier: String::new(),
            xact: None,
            xa: None,
        };
        this.settle_session(ms)?;
        Ok(this)
    }

    /// Sets what every session of this tool needs, and fixes where the bookkeeping tables are:
    /// SQLite waits for locks and syncs every commit to disk (`synchronous = FULL`: durable in
    /// both journal modes); MySQL waits for locks at most the lock timeout and commits every
    /// statement (`autocommit = 1`, checked: a server or user default of 0 would leave marks
    /// and decisions uncommitted).
    fn settle_session(&mut self, ms: u128) -> Result<(), DriverError> {
        let seconds = ms.div_ceil(1000).max(1);
        let set = match &mut self.conn {
            Conn::Sqlite(c) => c.batch_execute(&format!(
                "PRAGMA busy_timeout = {ms}; PRAGMA synchronous = FULL"
            )),
            Conn::Mysql(c) => c.batch_execute(&format!(
                "SET SESSION autocommit = 1, SESSION innodb_lock_wait_timeout = {seconds}, SESSION lock_wait_timeout = {seconds}"
            )),
            Conn::Pg(_) => Ok(()),
        };
        set.map_err(|source| self.query_err("cannot set up the session", source))?;
        let where_sql = match self.conn {
            // The first schema of the search path that already holds diesel's table (where
            // diesel itself reads it), else the first schema of the search path (where it
            // would be created): a schema named after the role, created by a migration, must
            // not move the bookkeeping of every later session.
            Conn::Pg(_) => "SELECT coalesce((SELECT s.nspname FROM unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY AS s(nspname, n) \
                 WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace \
                 WHERE ns.nspname = s.nspname AND c.relname = '__diesel_schema_migrations' AND c.relkind IN ('r', 'p')) \
                 ORDER BY s.n LIMIT 1), pg_catalog.current_schema()) AS s",
            Conn::Mysql(_) => "SELECT CASE WHEN @@autocommit = 1 THEN DATABASE() END AS s",
            Conn::Sqlite(_) => "SELECT 'main' AS s",
        };
        let found: Vec<Name> = self.rows("cannot read the session's schema", where_sql, &[])?;
        let Some(name) = found.into_iter().next().and_then(|n| n.s) else {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: match self.conn {
                    Conn::Pg(_) => "the search_path of this database and role names no schema that exists, so there is nowhere to keep the version tables; set search_path (for example to public)".into(),
                    _ => "the session has no database selected, or autocommit cannot be turned on; put the database in the URL (mysql://user@host/DATABASE)".into(),
                },
            });
        };
        self.qualifier = format!("{}.", quote_ident(self.backend(), &name));
        Ok(())
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
            class: participant::classify(self.backend(), &source),
            source,
        }
    }

    /// The fully qualified name of one of this tool's tables.
    fn table(&self, name: &str) -> String {
        format!("{}{}", self.qualifier, quote_ident(self.backend(), name))
    }

    /// A DDL template of [`schema`] with its table's qualified name.
    fn ddl(&self, template: &str, name: &str) -> String {
        template.replace("{t}", &self.table(name))
    }

    /// The bookkeeping statement `sql` with `{name}` placeholders replaced by qualified table
    /// names and `?` placeholders numbered for PostgreSQL.
    fn sql(&self, sql: &str) -> String {
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
        match self.conn {
            Conn::Pg(_) => numbered(&text),
            _ => text,
        }
    }

    /// Runs a bookkeeping statement.
    fn exec(&mut self, what: &str, sql: &str, args: &[Arg]) -> Result<usize, DriverError> {
        let sql = self.sql(sql);
        let done = on_conn!(&mut self.conn, c => bound!(sql.as_str(), args).execute(c));
        done.map_err(|e| self.query_err(what, e))
    }

    /// Runs a bookkeeping query.
    fn rows<T: Row>(&mut self, what: &str, sql: &str, args: &[Arg]) -> Result<Vec<T>, DriverError> {
        let sql = self.sql(sql);
        let done = on_conn!(&mut self.conn, c => bound!(sql.as_str(), args).load::<T>(c));
        done.map_err(|e| self.query_err(what, e))
    }

    fn count(&mut self, what: &str, sql: &str, args: &[Arg]) -> Result<i64, DriverError> {
        let rows: Vec<Count> = self.rows(what, sql, args)?;
        Ok(rows.first().map_or(0, |r| r.n))
    }

    /// Runs plain SQL of this crate (no values).
    fn execute_plain(&mut self, what: &str, sql: &str) -> Result<(), DriverError> {
        let done = on_conn!(&mut self.conn, c => c.batch_execute(sql));
        done.map_err(|e| self.query_err(what, e))
    }

    /// Which of this tool's tables exist where this connection keeps them.
    fn existing_tables(&mut self) -> Result<Vec<String>, DriverError> {
        let sql = match self.conn {
            Conn::Pg(_) => "SELECT c.relname AS s FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = pg_catalog.current_schema() AND c.relkind IN ('r', 'p') AND (c.relname LIKE 'orchestrate%' OR c.relname = '__diesel_schema_migrations')",
            Conn::Sqlite(_) => "SELECT name AS s FROM main.sqlite_master WHERE type = 'table'",
            Conn::Mysql(_) => "SELECT CAST(table_name AS CHAR) AS s FROM information_schema.tables WHERE table_schema = DATABASE()",
        };
        // The schema was fixed at connect; on PostgreSQL compare against it, not against
        // whatever the session's search path is now.
        let sql = match self.conn {
            Conn::Pg(_) => sql.replace(
                "pg_catalog.current_schema()",
                &quote_literal(&self.schema_name()),
            ),
            _ => sql.to_string(),
        };
        let rows: Vec<Name> = self.rows("cannot read the catalog", &sql, &[])?;
        Ok(rows.into_iter().filter_map(|r| r.s).collect())
    }

    /// The PostgreSQL schema (or MySQL database) name behind the qualifier, unquoted.
    fn schema_name(&self) -> String {
        let q = self.qualifier.trim_end_matches('.');
        let inner = &q[1..q.len() - 1];
        match self.backend() {
            Backend::Mysql => inner.replace("``", "`"),
            _ => inner.replace("\"\"", "\""),
        }
    }

    fn table_exists(&mut self, table: &str) -> Result<bool, DriverError> {
        Ok(self.existing_tables()?.iter().any(|t| t == table))
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
        let tables = self.existing_tables()?;
        let has = |t: &str| tables.iter().any(|x| x == t);
        if has(IN_PROGRESS) && self.backend() == Backend::Mysql {
            state.marks = self.load_marks()?;
        }
        if has(BATCHES) || has(schema::LEGACY_DECISIONS) {
            state.unsettled = self.unsettled_decisions()?;
        }
        if has(DIESEL_TABLE) {
            let versions = self.applied_versions()?;
            let mut recorded: HashMap<String, (String, Option<String>, Option<String>)> =
                HashMap::new();
            if has(HISTORY) {
                let rows: Vec<HistoryRow> = self.rows(
                    "cannot read orchestrate_history",
                    "SELECT version, name, direction, checksum, down_sql FROM {orchestrate_history} \
                     WHERE direction IN ('up', 'stamp') ORDER BY id",
                    &[],
                )?;
                for r in rows {
                    recorded.insert(r.version, (r.name, r.checksum, r.down_sql));
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

    /// The versions in diesel's table.
    pub fn applied_versions(&mut self) -> Result<Vec<String>, DriverError> {
        let rows: Vec<VersionRow> = self.rows(
            "cannot read __diesel_schema_migrations",
            "SELECT version FROM {__diesel_schema_migrations}",
            &[],
        )?;
        Ok(rows.into_iter().map(|r| r.version).collect())
    }

    /// This tool's prepared transactions on this database (none on SQLite).
    pub fn prepared(&mut self) -> Result<Vec<PreparedXact>, DriverError> {
        match &mut self.conn {
            Conn::Pg(c) => diesel::sql_query(
                "SELECT gid, CAST(prepared AS TEXT) AS prepared_at, \
                 CAST(date_trunc('second', now() - prepared) AS TEXT) AS age FROM pg_catalog.pg_prepared_xacts \
                 WHERE database = pg_catalog.current_database() AND starts_with(gid, $1) ORDER BY prepared",
            )
            .bind::<Text, _>(GID_PREFIX)
            .load(c)
            .map_err(|e| self.query_err("cannot read pg_prepared_xacts", e)),
            Conn::Mysql(_) => self.xa_prepared(),
            Conn::Sqlite(_) => Ok(Vec::new()),
        }
    }

    /// Prepared transactions that are not this tool's but hold its migration lock here
    /// (a migration that ran `PREPARE TRANSACTION` itself, in a form the plan-time check could
    /// not see): every later batch would wait on them. PostgreSQL only.
    pub fn foreign_lock_holders(&mut self) -> Result<Vec<String>, DriverError> {
        let Conn::Pg(c) = &mut self.conn else {
            return Ok(Vec::new());
        };
        let rows: Result<Vec<Name>, _> = diesel::sql_query(
            "SELECT p.gid AS s FROM pg_catalog.pg_prepared_xacts p \
             JOIN pg_catalog.pg_locks t ON t.locktype = 'transactionid' AND t.transactionid = p.transaction \
             JOIN pg_catalog.pg_locks l ON l.virtualtransaction = t.virtualtransaction AND l.pid IS NULL \
             WHERE p.database = pg_catalog.current_database() AND NOT starts_with(p.gid, $1) \
             AND l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
             AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = $2 ORDER BY p.prepared",
        )
        .bind::<Text, _>(GID_PREFIX)
        .bind::<BigInt, _>(LOCK_KEY)
        .load(c);
        rows.map(|r| r.into_iter().filter_map(|n| n.s).collect())
            .map_err(|e| self.query_err("cannot read pg_locks", e))
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
        self.has_history(batch_id, "direction IN ('up', 'down')")
    }

    /// Whether a heuristic outcome of `batch_id` was already recorded here.
    pub fn has_heuristic(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        self.has_history(batch_id, "direction = 'heuristic'")
    }

    fn has_history(&mut self, batch_id: &str, condition: &str) -> Result<bool, DriverError> {
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
    /// by someone else (a heuristic outcome), so that it is reported once and not retried.
    pub fn record_heuristic(
        &mut self,
        batch_id: &str,
        detail: &str,
        at: &str,
    ) -> Result<(), DriverError> {
        let ddl = self.ddl(self.history_ddl(), HISTORY);
        self.execute_plain("cannot create orchestrate_history", &ddl)?;
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

    fn batches_ddl(&self) -> String {
        let template = match self.conn {
            Conn::Mysql(_) => schema::BATCHES_DDL_MYSQL,
            _ => schema::BATCHES_DDL,
        };
        self.ddl(template, BATCHES)
    }

    /// Runs `work` in a transaction of its own that is durable when it commits, whatever the
    /// database or role says (`synchronous_commit = off` would let a PostgreSQL COMMIT return
    /// before it is on disk, while the participants' COMMIT PREPARED always is).
    fn durable<T>(
        &mut self,
        work: impl FnOnce(&mut Self) -> Result<T, DriverError>,
    ) -> Result<T, DriverError> {
        // SQLite: take the write lock at BEGIN, where the busy timeout applies (a deferred
        // transaction that must upgrade its lock later gets SQLITE_BUSY at once).
        let begun = match &mut self.conn {
            Conn::Sqlite(c) => AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE"),
            Conn::Pg(c) => AnsiTransactionManager::begin_transaction(c),
            Conn::Mysql(c) => AnsiTransactionManager::begin_transaction(c),
        };
        begun.map_err(|e| self.query_err("cannot begin a transaction", e))?;
        let done = self
            .make_commit_durable()
            .and_then(|()| work(self))
            .and_then(|value| self.commit().map(|()| value));
        if done.is_err() {
            self.rollback();
        }
        done
    }

    /// Makes the COMMIT of the open transaction wait until it is on disk: PostgreSQL
    /// `SET LOCAL synchronous_commit = on` (a migration, the database or the role may have set
    /// it off). SQLite cannot change it inside a transaction: every connection sets
    /// `synchronous = FULL` when it opens, and this checks it is still so. InnoDB's durability
    /// is the server's (`innodb_flush_log_at_trx_commit`, checked by
    /// [`BindConnection::check_durable_commits`]).
    pub fn make_commit_durable(&mut self) -> Result<(), DriverError> {
        match self.conn {
            Conn::Pg(_) => self.execute_plain(
                "cannot make the commit durable",
                "SET LOCAL synchronous_commit = on",
            ),
            Conn::Sqlite(_) => {
                let level = self.count(
                    "cannot read PRAGMA synchronous",
                    "SELECT synchronous AS n FROM pragma_synchronous",
                    &[],
                )?;
                if level >= 2 {
                    return Ok(());
                }
                Err(DriverError::Other {
                    bind: self.bind(),
                    detail: format!("PRAGMA synchronous is {level} here (a migration lowered it?), so this COMMIT would not be durable; migrations must not change PRAGMA synchronous"),
                })
            }
            Conn::Mysql(_) => Ok(()),
        }
    }

    /// MySQL: refuses to decide on a server whose InnoDB does not flush its log at every
    /// commit (`innodb_flush_log_at_trx_commit` other than 1): a decision there could be lost
    /// by a crash after the binds were told it was made.
    pub fn check_durable_commits(&mut self) -> Result<(), DriverError> {
        if !matches!(self.conn, Conn::Mysql(_)) {
            return Ok(());
        }
        let n = self.count(
            "cannot read innodb_flush_log_at_trx_commit",
            "SELECT CAST(@@innodb_flush_log_at_trx_commit AS SIGNED) AS n",
            &[],
        )?;
        if n != 1 {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: format!("this server has innodb_flush_log_at_trx_commit = {n}, so a committed decision can be lost in a crash; a batch of MySQL binds alone records its decision here. Set it to 1 (SET GLOBAL innodb_flush_log_at_trx_commit = 1), or add a PostgreSQL or SQLite bind to the batch to decide it"),
            });
        }
        Ok(())
    }

    /// On the decider, before anything else of the batch: records the batch as `begun`, in a
    /// durable transaction of its own. From then on only the coordinator (with `commit`) or
    /// `recover` (with `abort`) can decide it, whichever turns the row first.
    pub fn begin_decision(&mut self, batch_id: &str, at: &str) -> Result<(), DriverError> {
        let started = Instant::now();
        let ddl = self.batches_ddl();
        self.execute_plain("cannot create orchestrate_batches", &ddl)
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
            .map_err(|e| {
                if e.is_lock_wait() {
                    DriverError::Busy {
                        bind: self.bind(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    }
                } else {
                    e
                }
            })
    }

    /// Inside the decider's batch transaction: locks the batch's row until the transaction
    /// ends (SQLite: the write lock already does), so that a `recover` trying to abort the
    /// batch waits for this coordinator, and checks that nobody has decided it meanwhile.
    pub fn hold_decision(&mut self, batch_id: &str) -> Result<(), DriverError> {
        let lock = match self.conn {
            Conn::Sqlite(_) => "",
            _ => " FOR UPDATE",
        };
        let rows: Vec<BatchRow> = self.rows(
            "cannot lock the batch's row in orchestrate_batches",
            &format!("SELECT batch_id, state, record FROM {{orchestrate_batches}} WHERE batch_id = ?{lock}"),
            &[Arg::Text(batch_id)],
        )?;
        match rows.first().map(|r| r.state.as_str()) {
            Some("begun") => Ok(()),
            other => Err(DriverError::DecisionLost {
                bind: self.bind(),
                batch_id: batch_id.into(),
                state: other.unwrap_or("missing").into(),
            }),
        }
    }

    /// The decision, inside the decider's batch transaction: turns the batch's `begun` row into
    /// `commit` with the record. Fails with [`DriverError::DecisionLost`] when the row is no
    /// longer `begun` (a `recover` aborted the batch first). Its COMMIT is the decision.
    pub fn decide_commit(&mut self, record: &DecisionRecord, at: &str) -> Result<(), DriverError> {
        let text = serde_json::to_string(record).expect("decision records serialise");
        let updated = self.exec(
            "cannot write the decision",
            "UPDATE {orchestrate_batches} SET state = 'commit', decided_at = ?, record = ? \
             WHERE batch_id = ? AND state = 'begun'",
            &[Arg::Text(at), Arg::Text(&text), Arg::Text(&record.batch_id)],
        )?;
        if updated != 1 {
            let state = self
                .decision_state(&record.batch_id)
                .ok()
                .flatten()
                .map(|s| match s {
                    DecisionState::Abort => "abort",
                    DecisionState::Commit(_) => "commit",
                    DecisionState::Begun => "begun",
                })
                .unwrap_or("missing");
            return Err(DriverError::DecisionLost {
                bind: self.bind(),
                batch_id: record.batch_id.clone(),
                state: state.into(),
            });
        }
        Ok(())
    }

    /// Tries to decide `abort` for a batch still `begun`, in a durable transaction of its own,
    /// waiting at most `wait` for the batch's coordinator (which holds the row while it runs).
    /// `Ok(true)`: this call decided abort. `Ok(false)`: the batch was already decided (read
    /// it with [`BindConnection::decision_state`]). [`DriverError::Busy`]: its coordinator still
    /// holds the row.
    pub fn decide_abort(
        &mut self,
        batch_id: &str,
        at: &str,
        wait: Duration,
    ) -> Result<bool, DriverError> {
        let started = Instant::now();
        let deadline = started + wait;
        self.set_sqlite_busy_timeout(wait);
        let result = loop {
            let attempt = self.durable(|this| {
                if let Conn::Pg(_) = this.conn {
                    this.execute_plain(
                        "cannot set the lock timeout",
                        &format!("SET LOCAL lock_timeout = {}", wait.as_millis().max(1)),
                    )?;
                }
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
                Err(e) if e.is_lock_wait() => {
                    break Err(DriverError::Busy {
                        bind: self.bind(),
                        waited_ms: started.elapsed().as_millis() as u64,
                    })
                }
                Err(e) => break Err(e),
            }
        };
        self.set_sqlite_busy_timeout(self.lock_timeout);
        result
    }

    /// Whether a coordinator holds the row of a `begun` batch right now (it is running, or its
    /// session is still ending), found without waiting and without writing anything.
    pub fn decision_held(&mut self, batch_id: &str) -> Result<bool, DriverError> {
        self.set_sqlite_busy_timeout(Duration::ZERO);
        let probe = match self.conn {
            Conn::Sqlite(_) => "BEGIN IMMEDIATE".to_string(),
            _ => self.sql(
                "SELECT batch_id FROM {orchestrate_batches} WHERE batch_id = ? FOR UPDATE NOWAIT",
            ),
        };
        let held = match &mut self.conn {
            Conn::Sqlite(c) => match c.batch_execute(&probe) {
                Ok(()) => {
                    let _ = c.batch_execute("ROLLBACK");
                    Ok(false)
                }
                Err(e) if sqlite::classify(&e) == ErrorClass::LockWait => Ok(true),
                Err(e) => Err(e),
            },
            Conn::Pg(c) => probe_row!(c, probe, batch_id, postgres::classify),
            Conn::Mysql(c) => probe_row!(c, probe, batch_id, mysql::classify),
        };
        self.set_sqlite_busy_timeout(self.lock_timeout);
        held.map_err(|e| self.query_err("cannot probe the batch's row", e))
    }

    /// SQLite: how long a statement waits for the write lock (the lock timeout, except while
    /// probing). Nothing elsewhere: PostgreSQL and MySQL bound their waits per statement.
    fn set_sqlite_busy_timeout(&mut self, wait: Duration) {
        if let Conn::Sqlite(c) = &mut self.conn {
            let _ = c.batch_execute(&format!("PRAGMA busy_timeout = {}", wait.as_millis()));
        }
    }

    /// What this bind's `orchestrate_batches` (or, for batches of older versions, its
    /// `orchestrate_decisions`) says of a batch; `None` when it has no row for it. Creates
    /// nothing.
    pub fn decision_state(&mut self, batch_id: &str) -> Result<Option<DecisionState>, DriverError> {
        let tables = self.existing_tables()?;
        if tables.iter().any(|t| t == BATCHES) {
            let rows: Vec<BatchRow> = self.rows(
                "cannot read orchestrate_batches",
                "SELECT batch_id, state, record FROM {orchestrate_batches} WHERE batch_id = ?",
                &[Arg::Text(batch_id)],
            )?;
            if let Some(row) = rows.into_iter().next() {
                return self.state_of(row).map(Some);
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
        self.decision_state_elsewhere(batch_id)
    }

    /// PostgreSQL: the batch's row in an `orchestrate_batches` of another schema than the one
    /// this connection resolved (the database's or role's default search_path changed since
    /// the batch began). A batch id is unique, so finding it there is no guess; the rest of
    /// this connection's work on the batch then uses that schema.
    fn decision_state_elsewhere(
        &mut self,
        batch_id: &str,
    ) -> Result<Option<DecisionState>, DriverError> {
        if !matches!(self.conn, Conn::Pg(_)) {
            return Ok(None);
        }
        let here = self.schema_name();
        for schema in self.other_batch_schemas()? {
            let qualifier = format!("{}.", quote_ident(Backend::Postgres, &schema));
            let rows: Vec<BatchRow> = self.rows(
                "cannot read orchestrate_batches",
                &format!("SELECT batch_id, state, record FROM {qualifier}\"orchestrate_batches\" WHERE batch_id = ?"),
                &[Arg::Text(batch_id)],
            )?;
            if let Some(row) = rows.into_iter().next() {
                tracing::warn!(bind = %self.endpoint.bind, batch = %batch_id, schema = %schema, "the batch's decision is in schema {schema}, not in {here} where this session's search_path points now");
                self.qualifier = qualifier;
                return self.state_of(row).map(Some);
            }
        }
        Ok(None)
    }

    /// PostgreSQL: the schemas other than this session's that hold an `orchestrate_batches`.
    fn other_batch_schemas(&mut self) -> Result<Vec<String>, DriverError> {
        if !matches!(self.conn, Conn::Pg(_)) {
            return Ok(Vec::new());
        }
        let here = self.schema_name();
        let schemas: Vec<Name> = self.rows(
            "cannot read the catalog",
            "SELECT n.nspname AS s FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = 'orchestrate_batches' AND c.relkind IN ('r', 'p') AND n.nspname <> ? ORDER BY 1",
            &[Arg::Text(&here)],
        )?;
        Ok(schemas.into_iter().filter_map(|n| n.s).collect())
    }

    /// The state column of a batch's row in `orchestrate_batches`, if there is one.
    fn batch_row_state(&mut self, batch_id: &str) -> Result<Option<String>, DriverError> {
        let rows: Vec<BatchRow> = self.rows(
            "cannot read orchestrate_batches",
            "SELECT batch_id, state, record FROM {orchestrate_batches} WHERE batch_id = ?",
            &[Arg::Text(batch_id)],
        )?;
        Ok(rows.into_iter().next().map(|r| r.state))
    }

    fn state_of(&self, row: BatchRow) -> Result<DecisionState, DriverError> {
        match row.state.as_str() {
            "begun" => Ok(DecisionState::Begun),
            "abort" => Ok(DecisionState::Abort),
            "commit" => self
                .parse_record(&row.batch_id, row.record.as_deref().unwrap_or(""))
                .map(|r| DecisionState::Commit(Box::new(r))),
            other => Err(DriverError::Other {
                bind: self.bind(),
                detail: format!(
                    "batch {} has state `{other}` in orchestrate_batches, which this version does not know",
                    row.batch_id
                ),
            }),
        }
    }

    fn parse_record(&self, batch_id: &str, text: &str) -> Result<DecisionRecord, DriverError> {
        serde_json::from_str(text).map_err(|e| DriverError::Other {
            bind: self.bind(),
            detail: format!("the decision record of batch {batch_id} is unreadable: {e}"),
        })
    }

    /// The batches still `begun` in this bind's `orchestrate_batches`, oldest first (none
    /// without the table). Creates nothing.
    pub fn begun_batches(&mut self) -> Result<Vec<String>, DriverError> {
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

    /// Every commit decision this bind holds whose participants are not all known to have
    /// finished (older versions' decisions count as unsettled until `recover` settles them).
    /// Creates nothing.
    pub fn unsettled_decisions(&mut self) -> Result<Vec<DecisionRecord>, DriverError> {
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
            rows.extend(
                legacy
                    .into_iter()
                    .filter(|r| !settled.contains(&r.batch_id)),
            );
        }
        // PostgreSQL: decisions written under an earlier default search_path count too.
        for schema in self.other_batch_schemas()? {
            let qualifier = quote_ident(Backend::Postgres, &schema);
            rows.extend(self.rows::<BatchRow>(
                "cannot read orchestrate_batches",
                &format!(
                    "SELECT batch_id, state, record FROM {qualifier}.\"orchestrate_batches\" \
                     WHERE state = 'commit' AND settled_at IS NULL ORDER BY batch_id"
                ),
                &[],
            )?);
        }
        rows.into_iter()
            .map(|row| self.parse_record(&row.batch_id, row.record.as_deref().unwrap_or("")))
            .collect()
    }

    /// Records that every participant of a committed batch has finished, so that `recover`
    /// no longer reads it. A decision of an older version is copied in as settled.
    pub fn settle_decision(
        &mut self,
        record: &DecisionRecord,
        at: &str,
    ) -> Result<(), DriverError> {
        // The row may be in another schema than this session resolved (the default
        // search_path changed since the batch began): settle it there, never write a copy.
        if !self.existing_tables()?.iter().any(|t| t == BATCHES)
            || self.batch_row_state(&record.batch_id)?.is_none()
        {
            self.decision_state_elsewhere(&record.batch_id)?;
        }
        let ddl = self.batches_ddl();
        self.execute_plain("cannot create orchestrate_batches", &ddl)?;
        let updated = self.exec(
            "cannot settle the batch in orchestrate_batches",
            "UPDATE {orchestrate_batches} SET settled_at = ? WHERE batch_id = ? AND state = 'commit'",
            &[Arg::Text(at), Arg::Text(&record.batch_id)],
        )?;
        if updated == 0 {
            if let Some(state) = self.batch_row_state(&record.batch_id)? {
                return Err(DriverError::Other {
                    bind: self.bind(),
                    detail: format!(
                        "batch {} is `{state}` in orchestrate_batches here, not `commit`: its decision is not what this run committed",
                        record.batch_id
                    ),
                });
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
            )?;
        }
        Ok(())
    }

    /// Names this session after the batch it decides, for people reading
    /// `pg_stat_activity`. Nothing depends on it: a migration may change it.
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
                        diesel::sql_query("SELECT pg_catalog.pg_try_advisory_xact_lock($1) AS ok")
                            .bind::<BigInt, _>(LOCK_KEY)
                            .get_result(self.pg());
                    match got {
                        Ok(Flag { ok: true }) => break,
                        Ok(Flag { ok: false }) if started.elapsed() < self.lock_timeout => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Ok(Flag { ok: false }) => {
                            let mut err = busy(self);
                            self.rollback();
                            if let Ok(gids) = self.foreign_lock_holders() {
                                if let Some(gid) = gids.first() {
                                    err = DriverError::Other {
                                        bind: self.bind(),
                                        detail: format!("prepared transaction `{gid}`, which is not this tool's, holds this database's migration lock (a migration ran PREPARE TRANSACTION itself?); no orchestrate run does. Look at it and end it by hand: COMMIT PREPARED or ROLLBACK PREPARED '{gid}'"),
                                    };
                                }
                            }
                            return Err(err);
                        }
                        Err(e) => return Err(self.query_err("cannot take the migration lock", e)),
                    }
                }
                let id = self.count(
                    "cannot read the transaction id",
                    "SELECT pg_catalog.txid_current() AS n",
                    &[],
                )?;
                self.xact = Some(id);
            }
            Conn::Sqlite(c) => {
                // IMMEDIATE takes the write lock now (waiting up to busy_timeout), so two
                // runs cannot both plan against the same state.
                if let Err(e) = AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
                {
                    if sqlite::classify(&e) == ErrorClass::LockWait {
                        return Err(busy(self));
                    }
                    return Err(self.query_err("cannot begin the batch transaction", e));
                }
                // A savepoint that a COMMIT or ROLLBACK in a migration would end with the
                // transaction: released and taken again after every step, it tells a new
                // transaction (`COMMIT; BEGIN;`) from the batch's.
                c.batch_execute(SQLITE_GUARD)
                    .map_err(|e| self.query_err("cannot begin the batch transaction", e))?;
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
        let diesel_ddl = self.ddl(schema::DIESEL_TABLE_DDL, DIESEL_TABLE);
        let history_ddl = self.ddl(self.history_ddl(), HISTORY);
        for ddl in [diesel_ddl, history_ddl] {
            self.execute_plain("cannot create the version tables", &ddl)?;
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
    /// not. Another run that got there first makes this fail, so nothing runs twice. Returns
    /// the versions applied before the batch.
    pub fn check_plan_still_valid(
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
        let ran = on_conn!(&mut self.conn, c => c.batch_execute(&step.sql));
        if let Err(source) = ran {
            // A migration that left the batch's transaction and then failed: what it ran
            // before failing may be committed, which "rolled back" would hide.
            if let Err(left @ DriverError::LeftTransaction { .. }) =
                self.ensure_still_in_transaction(&step.name)
            {
                return Err(left);
            }
            return Err(DriverError::Migration {
                bind: self.bind(),
                name: step.name.clone(),
                class: participant::classify(self.backend(), &source),
                source,
            });
        }
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

    /// Fails when a migration's own SQL ended the batch transaction (COMMIT, ROLLBACK, END,
    /// `COMMIT AND CHAIN`, PREPARE TRANSACTION): what ran before it on this bind may then be
    /// committed, and the batch is not atomic. On PostgreSQL "still in a transaction" is not
    /// enough (`COMMIT AND CHAIN` opens another): the transaction id must be the batch's.
    fn ensure_still_in_transaction(&mut self, name: &str) -> Result<(), DriverError> {
        let inside = match &mut self.conn {
            // diesel follows libpq's transaction status after every statement.
            Conn::Pg(c) => matches!(
                AnsiTransactionManager::transaction_manager_status_mut(c).transaction_depth(),
                Ok(Some(_))
            ),
            // The guard savepoint is gone when the batch's transaction ended, even if a
            // migration began another one.
            Conn::Sqlite(c) => match c.batch_execute(&format!("RELEASE {SQLITE_GUARD_NAME}")) {
                Ok(()) => {
                    c.batch_execute(SQLITE_GUARD)
                        .map_err(|e| self.query_err("cannot check the transaction", e))?;
                    true
                }
                Err(e) if sqlite::classify(&e) == ErrorClass::Missing => {
                    // Whatever the migration left open is not the batch's: end it.
                    let _ = c.batch_execute("ROLLBACK");
                    false
                }
                Err(e) => return Err(self.query_err("cannot check the transaction", e)),
            },
            Conn::Mysql(_) => true,
        };
        let same = match (inside, self.xact) {
            (true, Some(id)) => {
                let now = self.count(
                    "cannot read the transaction id",
                    "SELECT pg_catalog.txid_current() AS n",
                    &[],
                )?;
                now == id
            }
            (inside, _) => inside,
        };
        if same {
            Ok(())
        } else {
            Err(DriverError::LeftTransaction {
                bind: self.bind(),
                name: name.into(),
            })
        }
    }

    /// SQLite, before the decision, for a bind whose transaction stays open until after it:
    /// the vote a SQLite bind cannot cast with PREPARE. A deferred foreign key that is violated
    /// would make its COMMIT fail after the decision, where nothing can be rolled back (and a
    /// redo would fail the same way): it fails the batch now instead. (Conservative: a
    /// violation that was there before the batch counts too.)
    pub fn vote(&mut self) -> Result<(), DriverError> {
        if !matches!(self.conn, Conn::Sqlite(_)) {
            return Ok(());
        }
        let n = self.count(
            "cannot check foreign keys",
            "SELECT CASE WHEN (SELECT foreign_keys FROM pragma_foreign_keys) = 1 \
             THEN (SELECT count(*) FROM pragma_foreign_key_check) ELSE 0 END AS n",
            &[],
        )?;
        if n > 0 {
            return Err(DriverError::Other {
                bind: self.bind(),
                detail: format!("{n} row(s) violate a foreign key (PRAGMA foreign_key_check), so this bind's COMMIT would fail after the decision; the batch is rolled back before it. Fix the data in the migration (a deferred foreign key must hold by the end of the batch)"),
            });
        }
        Ok(())
    }

    /// Before the decider's COMMIT: the batch transaction is still the one that began
    /// (a migration did not end it), deferred constraints are checked now rather than as an
    /// ambiguous COMMIT error, and the COMMIT will be durable.
    pub fn prepare_to_decide(&mut self, last_step: &str) -> Result<(), DriverError> {
        self.ensure_still_in_transaction(last_step)?;
        if let Conn::Pg(c) = &mut self.conn {
            c.batch_execute("SET CONSTRAINTS ALL IMMEDIATE")
                .map_err(|e| self.query_err("a deferred constraint failed", e))?;
        }
        self.make_commit_durable()
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
        // The prepared transaction belongs to the role current at PREPARE, and only that role
        // (or a superuser) may end it: a migration's `SET ROLE` (or a role default set with
        // ALTER ROLE ... SET role) would leave it unfinishable by this tool. `SET ROLE NONE`
        // brings back the login role; COMMIT/ROLLBACK PREPARED run as it too. Two statements,
        // not one string: outside a transaction a multi-statement string is an implicit
        // transaction of its own, which PREPARE would prepare (empty) instead of warning.
        c.batch_execute("SET ROLE NONE")
            .map_err(|e| self.query_err("cannot reset the role before PREPARE", e))?;
        let Conn::Pg(c) = &mut self.conn else {
            unreachable!("checked above")
        };
        c.batch_execute(&format!("PREPARE TRANSACTION {}", quote_literal(gid)))
            .map_err(|source| DriverError::Prepare {
                bind: self.bind(),
                class: postgres::classify(&source),
                source,
            })?;
        let found: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_catalog.pg_prepared_xacts WHERE gid = $1 AND database = pg_catalog.current_database()",
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
        // As the login role (see `prepare`), in a statement of its own: COMMIT PREPARED
        // cannot run inside a transaction block, which a multi-statement string is.
        self.pg()
            .batch_execute("SET ROLE NONE")
            .map_err(|e| self.query_err("cannot reset the role", e))?;
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
        // As the login role (see `prepare`), in a statement of its own: ROLLBACK PREPARED
        // cannot run inside a transaction block, which a multi-statement string is.
        self.pg()
            .batch_execute("SET ROLE NONE")
            .map_err(|e| self.query_err("cannot reset the role", e))?;
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
        for (template, name) in [
            (schema::DIESEL_TABLE_DDL_MYSQL, DIESEL_TABLE),
            (schema::HISTORY_DDL_MYSQL, HISTORY),
            (schema::IN_PROGRESS_DDL_MYSQL, IN_PROGRESS),
        ] {
            let ddl = self.ddl(template, name);
            self.execute_plain("cannot create the version tables", &ddl)?;
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
        self.rows(
            "cannot read orchestrate_in_progress",
            "SELECT kind, batch_id, version, decider, direction, name, statements_done, \
             statements_total, started_at FROM {orchestrate_in_progress} ORDER BY started_at, kind",
            &[],
        )
    }

    /// What is under way and not settled on this bind (MySQL; nothing elsewhere).
    pub fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        if !matches!(self.conn, Conn::Mysql(_)) || !self.table_exists(IN_PROGRESS)? {
            return Ok(Vec::new());
        }
        self.load_marks()
    }

    /// Writes a mark (committed at once).
    pub fn put_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
        self.mysql()?;
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
    pub fn set_mark_progress(&mut self, mark: &Mark, done: i64) -> Result<(), DriverError> {
        self.mysql()?;
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
    pub fn clear_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
        self.mysql()?;
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
        Err(DriverError::Other {
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
        })
    }

    /// Runs one statement of a migration, outside any transaction (it commits by itself).
    pub fn run_statement(&mut self, name: &str, sql: &str) -> Result<(), DriverError> {
        let done = self.mysql()?.batch_execute(sql);
        done.map_err(|source| DriverError::Migration {
            bind: self.bind(),
            name: name.into(),
            class: mysql::classify(&source),
            source,
        })?;
        // Marks and decisions written next must commit on their own whatever the statement
        // did to the session (a procedure it called may have turned autocommit off; turning
        // it back on commits what that statement left open, as it would have anyway).
        let reset = self.mysql()?.batch_execute("SET SESSION autocommit = 1");
        reset.map_err(|e| self.query_err("cannot turn autocommit back on", e))
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
        if !self.table_exists(HISTORY)? {
            return Ok(Vec::new());
        }
        let rows: Vec<HistoryRow> = self.rows(
            "cannot read orchestrate_history",
            "SELECT version, name, direction, checksum, down_sql FROM {orchestrate_history} \
             WHERE batch_id = ? ORDER BY id",
            &[Arg::Text(batch_id)],
        )?;
        let mut steps: Vec<BatchStep> = Vec::new();
        for HistoryRow {
            version,
            name,
            direction,
            checksum,
            down_sql,
        } in rows
        {
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
fn split_gid(gid: &str) -> Option<(String, String)> {
    gid.parse::<TransactionId>()
        .ok()
        .map(|t| (t.batch_id, t.bind))
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
            class: mysql::classify(&source),
            source,
        })?;
        self.xa = None;
        if !self
            .xa_recover()?
            .iter()
            .any(|(b, bind)| split_gid(gid).is_some_and(|(gb, gbind)| gb == *b && gbind == *bind))
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
        let id = xid(&batch, &bind);
        let done = self.mysql()?.batch_execute(&format!("XA {verb} {id}"));
        done.map_err(|e| self.query_err(&format!("XA {verb} of {gid} failed"), e))?;
        // The mark is removed next, and must commit whatever a migration did to autocommit.
        let reset = self.mysql()?.batch_execute("SET SESSION autocommit = 1");
        reset.map_err(|e| self.query_err("cannot turn autocommit back on", e))?;
        let cleared = self.exec(
            "cannot write to orchestrate_in_progress",
            "DELETE FROM {orchestrate_in_progress} WHERE kind IN ('batch', 'xa-batch') AND batch_id = ?",
            &[Arg::Text(&batch)],
        );
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
        assert_eq!(
            split_gid(&gid),
            Some(("20261125T000000Z-0a1b2c3d".into(), "shop".into()))
        );
        assert_eq!(split_gid("someone_else:1"), None);
        assert_eq!(
            xid("20261125T000000Z-0a1b2c3d", "shop"),
            "'orchestrate:20261125T000000Z-0a1b2c3d','shop'"
        );
    }
}
