//! PostgreSQL binds: the batch transaction under a transaction-scoped advisory lock, a
//! migration that left its transaction caught by the transaction id, `PREPARE TRANSACTION`
//! (sent alone, as the login role) checked in `pg_prepared_xacts`, `COMMIT` / `ROLLBACK
//! PREPARED`, the decider's durable COMMIT, decisions found in another schema, what `status`
//! reads of the server (foreign lock holders, `max_prepared_transactions`, databases), and what
//! PostgreSQL's errors mean.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Text};
use diesel::PgConnection;
use orchestrate_core::{Direction, Step};

use super::session::{quote_ident, Conn};
use super::{
    wrong_backend, Arg, Atomic, BatchRow, BatchTransaction, CanDecide, Count, Db, Decider,
    DecisionState, Mark, Name, PreparedXact, Resolve, Row, ServerIdentity, Session, TwoPhase,
    XactStatus,
};
use crate::endpoint::{Backend, Endpoint};
use crate::error::{message_of, DriverError, ErrorClass, PrepareRefusal};
use crate::record::{quote_literal, GID_PREFIX};
use crate::schema::{self, DIESEL_TABLE, HISTORY};

/// The key of the transaction-scoped advisory lock every PostgreSQL batch takes first. It is
/// released by COMMIT, ROLLBACK, COMMIT PREPARED, ROLLBACK PREPARED or the end of the session,
/// never left behind by a crash; a prepared batch keeps it until it is resolved.
pub const LOCK_KEY: i64 = 0x6f72_6368_6573_7472; // "orchestr"

/// The key of the session advisory lock a migration running outside a transaction holds on
/// its own session, for as long as that session lives: if the run that started it dies, the
/// server may still be running its statement, and this lock says so.
pub const OUTSIDE_KEY: i64 = 0x6f72_6368_6f75_7473; // "orchouts"

/// The key of the transaction-scoped advisory lock under which the guard on
/// `orchestrate_batches` is installed.
const GUARD_LOCK_KEY: i64 = 0x6f72_6368_6775_6172; // "orchguar"

/// The first schema of the search path that already holds diesel's table (where diesel itself
/// reads it), else the first schema of the search path (where it would be created): a schema
/// named after the role, created by a migration, must not move the bookkeeping of every later
/// session.
const SCHEMA_SQL: &str = "SELECT coalesce((SELECT s.nspname FROM unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY AS s(nspname, n) \
     WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace \
     WHERE ns.nspname = s.nspname AND c.relname = '__diesel_schema_migrations' AND c.relkind IN ('r', 'p')) \
     ORDER BY s.n LIMIT 1), pg_catalog.current_schema()) AS s";

/// [`SCHEMA_SQL`] and what decides what a new session of this role and database gets, in one
/// read: the settings they give it (`ALTER DATABASE/ROLE ... SET`), the role's name, `LOGIN`
/// and `VALID UNTIL`, the role it acts as (`options=-c role=...`) and whether it is still a
/// member of it, and whether the role may still connect to the database (`CONNECT`,
/// `ALLOW_CONNECTIONS`).
/// A session_user renamed since shows its new name here.
const REUSE_SQL: &str = "SELECT (SELECT s FROM (SELECT coalesce((SELECT s.nspname FROM unnest(pg_catalog.current_schemas(false)) WITH ORDINALITY AS s(nspname, n) \
     WHERE EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace \
     WHERE ns.nspname = s.nspname AND c.relname = '__diesel_schema_migrations' AND c.relkind IN ('r', 'p')) \
     ORDER BY s.n LIMIT 1), pg_catalog.current_schema()) AS s) AS found) AS s, \
     coalesce((SELECT string_agg(CAST(d.setdatabase AS TEXT) || ':' || CAST(d.setrole AS TEXT) || ':' || pg_catalog.array_to_string(d.setconfig, ','), ';' ORDER BY d.setdatabase, d.setrole) \
     FROM pg_catalog.pg_db_role_setting d \
     WHERE d.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())) \
     AND d.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = session_user))), '') \
     || '; ' || coalesce((SELECT r.rolname || ' login ' || CAST(r.rolcanlogin AS TEXT) || ' until ' || coalesce(CAST(r.rolvaliduntil AS TEXT), '-') \
     FROM pg_catalog.pg_roles r WHERE r.rolname = session_user), 'no role') \
     || '; as ' || current_user || ' ' || CAST(pg_catalog.pg_has_role(session_user, current_user, 'MEMBER') AS TEXT) \
     || '; connect ' || CAST(pg_catalog.has_database_privilege(session_user, pg_catalog.current_database(), 'CONNECT') AS TEXT) \
     || ' ' || coalesce((SELECT CAST(datallowconn AS TEXT) FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()), '-') AS f";

/// What a session is, for comparing one lent by an application's pool with one the bind's URL
/// gives: the server (start time and port), the database, the session and current role, and
/// the settings the session starts with besides the server's own configuration (`options` in
/// the URL; `ALTER DATABASE`, `ALTER ROLE ... SET`: a pooled session opened before such a
/// change still starts with what was set then) but for the name the application gives itself
/// and the encoding diesel sets anyway. The effective `search_path` and the schemas it
/// resolves to, too: where this tool's tables are.
const LENT_SQL: &str = "SELECT CAST(pg_catalog.pg_postmaster_start_time() AS TEXT) || ', port ' || pg_catalog.current_setting('port') \
     || ', database ' || pg_catalog.current_database() || ', role ' || session_user \
     || ' as ' || current_user || ' (role setting ' || pg_catalog.current_setting('role') || ')' \
     || ', search_path ' || pg_catalog.current_setting('search_path') || ' (' || pg_catalog.array_to_string(pg_catalog.current_schemas(false), ',') || ')' \
     || ', options: ' || coalesce((SELECT string_agg(name || '=' || setting || ' (' || source || ')', ' ' ORDER BY name) FROM pg_catalog.pg_settings \
     WHERE source IN ('client', 'database', 'user', 'database user') AND name NOT IN ('application_name', 'client_encoding')), 'none') AS s";

#[derive(QueryableByName)]
struct SchemaAndDefaults {
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    s: Option<String>,
    #[diesel(sql_type = Text)]
    f: String,
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

impl Db for PgConnection {
    const QUOTE: char = '"';
    const HISTORY_DDL: &'static str = schema::HISTORY_DDL_PG;
    const BATCHES_DDL: &'static str = schema::BATCHES_DDL;
    const ROW_LOCK: &'static str = " FOR UPDATE";

    /// Compared against the schema fixed at connect, not against whatever the session's search
    /// path is now.
    fn tables_sql(schema: &str) -> String {
        format!(
            "SELECT c.relname AS s FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = {} AND c.relkind IN ('r', 'p') AND (c.relname LIKE 'orchestrate%' OR c.relname = '__diesel_schema_migrations')",
            quote_literal(schema)
        )
    }

    /// The catalog, the history and the versions in one statement: on a backend that has
    /// just started, every statement costs the server far more than the round trip.
    fn read_all_sql(schema: &str) -> Option<String> {
        Some(format!(
            "SELECT 't' AS k, CAST(c.relname AS TEXT) AS a, NULL AS b, NULL AS c, NULL AS d, NULL AS e, 0::bigint AS n \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace \
             WHERE ns.nspname = {} AND c.relkind IN ('r', 'p') AND (c.relname LIKE 'orchestrate%' OR c.relname = '__diesel_schema_migrations') \
             UNION ALL SELECT 'h', version, name, direction, checksum, down_sql, id FROM {{orchestrate_history}} \
             WHERE direction IN ('up', 'stamp') \
             UNION ALL SELECT 'v', CAST(version AS TEXT), NULL, NULL, NULL, NULL, 0 FROM {{__diesel_schema_migrations}}",
            quote_literal(schema)
        ))
    }

    fn hooks_sql(schema: &str) -> String {
        let of = format!(
            "JOIN pg_catalog.pg_class c ON c.oid = {{}} JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace \
             WHERE ns.nspname = {} AND c.relname = 'orchestrate_batches'",
            quote_literal(schema)
        );
        // The guard's own triggers are not counted here: `guard_whole` checks they are ours.
        // Also any deferrable constraint trigger of the database's own (not a foreign key's):
        // one fired by SET CONSTRAINTS ALL IMMEDIATE can defer again, and what it queues runs
        // at COMMIT, after the decision was read back.
        format!(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_trigger t {} AND NOT t.tgisinternal \
                AND t.tgname NOT IN ('orchestrate_guard', 'orchestrate_guard_truncate')) \
             + (SELECT count(*) FROM pg_catalog.pg_rewrite r {}) \
             + (SELECT count(*) FROM pg_catalog.pg_class x {} AND x.relrowsecurity) \
             + (SELECT count(*) FROM pg_catalog.pg_trigger d WHERE d.tgdeferrable AND NOT d.tgisinternal) AS n",
            of.replace("{}", "t.tgrelid"),
            of.replace("{}", "r.ev_class"),
            of.replace("{}", "x.oid"),
        )
    }

    fn placeholders(sql: String) -> String {
        numbered(&sql)
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

    /// `SET LOCAL synchronous_commit = on`: a migration, the database or the role may have set
    /// it off.
    fn make_commit_durable(s: &mut Session<Self>) -> Result<(), DriverError> {
        s.execute_plain(
            "cannot make the commit durable",
            "SET LOCAL synchronous_commit = on",
        )
    }

    fn decision_held(s: &mut Session<Self>, batch_id: &str) -> Result<bool, DriverError> {
        s.probe_row(batch_id)
    }

    fn marks(s: &mut Session<Self>, tables: &[String]) -> Result<Vec<Mark>, DriverError> {
        if !tables.iter().any(|t| t == schema::IN_PROGRESS) {
            return Ok(Vec::new());
        }
        s.load_marks()
    }

    fn limit_abort_wait(s: &mut Session<Self>, wait: Duration) -> Result<(), DriverError> {
        s.execute_plain(
            "cannot set the lock timeout",
            &format!("SET LOCAL lock_timeout = {}", wait.as_millis().max(1)),
        )
    }

    fn guard_whole(s: &mut Session<Self>) -> Result<bool, DriverError> {
        let schema = s.schema_name();
        let whole = s.count(
            "cannot read orchestrate's guard on orchestrate_batches",
            "SELECT count(*) AS n FROM pg_catalog.pg_trigger t \
             JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid \
             JOIN pg_catalog.pg_namespace ns ON ns.oid = c.relnamespace \
             JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid \
             JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace \
             JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
             WHERE ns.nspname = ? AND c.relname = 'orchestrate_batches' \
             AND ((t.tgname = 'orchestrate_guard' AND t.tgtype = 27) \
                  OR (t.tgname = 'orchestrate_guard_truncate' AND t.tgtype = 34)) \
             AND t.tgenabled = 'A' AND t.tgqual IS NULL AND t.tgnargs = 0 AND t.tgconstraint = 0 \
             AND pg_catalog.cardinality(t.tgattr::pg_catalog.int2[]) = 0 \
             AND pn.nspname = ? AND p.proname = 'orchestrate_batches_guard' AND p.pronargs = 0 \
             AND l.lanname = 'plpgsql' AND p.prosrc = ? AND p.proconfig IS NULL AND NOT p.prosecdef",
            &[Arg::Text(&schema), Arg::Text(&schema), Arg::Text(schema::GUARD_BODY)],
        )?;
        Ok(whole == schema::GUARD_TRIGGERS.len() as i64)
    }

    /// Under an advisory lock of its own, so that two first runs do not install it at once;
    /// DROP TRIGGER waits (up to `lock_timeout`) for any batch holding a row of the table.
    fn ensure_guard(s: &mut Session<Self>) -> Result<(), DriverError> {
        if Self::guard_whole(s)? {
            return Ok(());
        }
        let table = s.table(schema::BATCHES);
        let function = s.table(schema::GUARD_FUNCTION);
        let what = "cannot install orchestrate's guard on orchestrate_batches (it needs the table's owner: run orchestrate once as the role that owns orchestrate_batches, or make this role its owner with ALTER TABLE orchestrate_batches OWNER TO ...)";
        s.durable(|s| {
            s.execute_plain(
                what,
                &format!("SELECT pg_catalog.pg_advisory_xact_lock({GUARD_LOCK_KEY})"),
            )?;
            if Self::guard_whole(s)? {
                return Ok(());
            }
            for statement in schema::GUARD_DDL_PG {
                let sql = statement
                    .replace("{t}", &table)
                    .replace("{f}", &function)
                    .replace("{body}", schema::GUARD_BODY);
                s.execute_plain(what, &sql)?;
            }
            tracing::info!(bind = %s.endpoint().bind, "installed orchestrate's guard on {table}");
            Ok(())
        })
    }

    /// The batch's row in an `orchestrate_batches` of another schema than the one this
    /// connection resolved (the database's or role's default search_path changed since the
    /// batch began). A batch id is unique, so finding it there is no guess; the rest of this
    /// connection's work on the batch then uses that schema.
    fn other_batch_schemas(s: &mut Session<Self>) -> Result<Vec<String>, DriverError> {
        other_schemas_with(s, schema::BATCHES)
    }

    fn history_elsewhere(
        s: &mut Session<Self>,
        batch_id: &str,
        condition: &str,
    ) -> Result<bool, DriverError> {
        let here = s.schema_name();
        // Every one, readable or not: who owns a table, or what this role may read today,
        // does not say whether this bind's batches wrote it (credentials rotate, grants are
        // revoked). One it cannot read leaves the question open: an error, in doubt.
        for schema in other_schemas_with(s, HISTORY)? {
            let n = s
                .count(
                    "cannot read orchestrate_history",
                    &format!(
                        "SELECT count(*) AS n FROM {}.\"orchestrate_history\" WHERE batch_id = ? AND {condition}",
                        quote_ident::<Self>(&schema)
                    ),
                    &[Arg::Text(batch_id)],
                )
                .map_err(|e| s.unreadable_elsewhere(&schema, "orchestrate_history", e))?;
            if n > 0 {
                tracing::warn!(bind = %s.endpoint().bind, batch = %batch_id, schema = %schema, "the batch's history is in schema {schema}, not in {here} where this session's search_path points now");
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn batch_rows_elsewhere(
        s: &mut Session<Self>,
        batch_id: &str,
    ) -> Result<Vec<(String, BatchRow)>, DriverError> {
        let mut found = Vec::new();
        for schema in Self::other_batch_schemas(s)? {
            let qualifier = format!("{}.", quote_ident::<Self>(&schema));
            let rows: Vec<BatchRow> = s
                .rows(
                    "cannot read orchestrate_batches",
                    &format!("SELECT batch_id, state, record FROM {qualifier}\"orchestrate_batches\" WHERE batch_id = ?"),
                    &[Arg::Text(batch_id)],
                )
                .map_err(|e| s.unreadable_elsewhere(&schema, "orchestrate_batches", e))?;
            found.extend(rows.into_iter().map(|r| (schema.clone(), r)));
        }
        Ok(found)
    }

    fn decision_elsewhere(
        s: &mut Session<Self>,
        batch_id: &str,
    ) -> Result<Option<DecisionState>, DriverError> {
        let here = s.schema_name();
        if let Some((schema, row)) = Self::batch_rows_elsewhere(s, batch_id)?.into_iter().next() {
            tracing::warn!(bind = %s.endpoint().bind, batch = %batch_id, schema = %schema, "the batch's decision is in schema {schema}, not in {here} where this session's search_path points now");
            s.set_schema(&schema);
            return s.state_of(row).map(Some);
        }
        Ok(None)
    }
}

/// The schemas other than this session's that hold a table named `table` (this tool's
/// bookkeeping written under an earlier default search_path, or another project's).
fn other_schemas_with(
    s: &mut Session<PgConnection>,
    table: &str,
) -> Result<Vec<String>, DriverError> {
    let here = s.schema_name();
    let schemas: Vec<Name> = s.rows(
        "cannot read the catalog",
        "SELECT n.nspname AS s FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relname = ? AND c.relkind IN ('r', 'p') AND n.nspname <> ? ORDER BY 1",
        &[Arg::Text(table), Arg::Text(&here)],
    )?;
    Ok(schemas.into_iter().filter_map(|n| n.s).collect())
}

/// A connection to a PostgreSQL bind.
pub struct Postgres {
    s: Session<PgConnection>,
    /// The transaction id of the open batch transaction, to notice a migration that ended it
    /// and started another (`COMMIT AND CHAIN`, `COMMIT; BEGIN`).
    xact: Option<i64>,
}

super::has_session!(Postgres, PgConnection);

impl CanDecide for Postgres {}

impl Postgres {
    /// Connects. `lock_timeout` bounds every wait for a lock: it travels in the startup packet
    /// (no extra round trip), so reads never hang on locks held by a prepared (in-doubt) batch.
    /// So does `default_transaction_read_only = off`: a migration's `ALTER DATABASE` / `ALTER
    /// ROLE ... SET default_transaction_read_only = on` must not stop this tool's own sessions
    /// (recover among them) from writing their bookkeeping.
    pub fn connect(endpoint: &Endpoint, lock_timeout: Duration) -> Result<Postgres, DriverError> {
        if endpoint.backend != Backend::Postgres {
            return Err(wrong_backend(endpoint, Backend::Postgres));
        }
        let conn = match endpoint.lending() {
            Some(lending) => Postgres::borrow(endpoint, lending, lock_timeout)?,
            None => {
                let url = endpoint.connect_url_with_options(&format!(
                    "-c lock_timeout={} -c default_transaction_read_only=off",
                    lock_timeout.as_millis()
                ));
                Conn::Own(
                    PgConnection::establish(&url).map_err(|source| DriverError::Connect {
                        bind: endpoint.bind.clone(),
                        url: endpoint.redacted().to_string(),
                        source,
                    })?,
                )
            }
        };
        let s = Session::open(
            endpoint,
            conn,
            lock_timeout,
            SCHEMA_SQL,
            "the search_path of this database and role names no schema that exists, so there is nowhere to keep the version tables; set search_path (for example to public)",
        )?;
        Ok(Postgres { s, xact: None })
    }

    /// A connection lent by the application's pool, made to start as one this tool opens
    /// would: whatever the pool's customizer or an earlier user left on its session is
    /// undone (an open transaction, `SET` and `SET ROLE`, cursors, `LISTEN`, advisory locks,
    /// temporary tables: what `DISCARD ALL` does, but for diesel's prepared statements, which
    /// it still uses), diesel's own settings are made again, then the lock timeout and
    /// read-write transactions are set. It must then be the session the bind's URL gives
    /// ([`LENT_SQL`]): the same server, database and role, starting with the same settings
    /// (a pool whose URL sets another `search_path` would keep the bookkeeping where the
    /// command line does not look). A session that is not is closed and another taken, as many
    /// times as the pool has connections (those it opened before an `ALTER DATABASE ... SET`
    /// give way to new ones); then the batch is refused. A lent session is closed, not given
    /// back, when it ends (see [`Conn::Lent`]).
    fn borrow(
        endpoint: &Endpoint,
        lending: &crate::endpoint::Lending,
        lock_timeout: Duration,
    ) -> Result<Conn<PgConnection>, DriverError> {
        let tries = lending.pool.max_size().max(1) + 1;
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Postgres::lend_once(endpoint, lending, lock_timeout, started)? {
                Ok(conn) => return Ok(conn),
                // Closed as it drops: the pool opens a new session in its place.
                Err((lent, reference)) if attempt >= tries => {
                    return Err(DriverError::Other {
                        bind: endpoint.bind.clone(),
                        detail: format!(
                            "the application's pool lends sessions unlike the one the bind's URL ({}) gives ({attempt} tried): pool {lent}; URL {reference}. A batch through the pool would not run as the command line's would, or would keep its bookkeeping where the command line does not look: give the pool the URL's database, role and options (or the URL the pool's); sessions the pool opened before an ALTER DATABASE or ALTER ROLE ... SET start with the old settings until it replaces them",
                            endpoint.redacted()
                        ),
                    });
                }
                Err(_) => continue,
            }
        }
    }

    /// One connection from the pool, reset and compared with what the URL gives (read again
    /// when older than [`crate::endpoint::Lending::REFERENCE_FOR`] or when it differs, but
    /// not twice since `started`): `Ok(Err((lent, reference)))` when they differ (the
    /// connection is closed as it drops).
    #[allow(clippy::type_complexity)]
    fn lend_once(
        endpoint: &Endpoint,
        lending: &crate::endpoint::Lending,
        lock_timeout: Duration,
        started: std::time::Instant,
    ) -> Result<Result<Conn<PgConnection>, (String, String)>, DriverError> {
        let refused = |detail: String| DriverError::Other {
            bind: endpoint.bind.clone(),
            detail,
        };
        // Lent from here on: whatever happens next, the pool closes it rather than give the
        // application a session this reset (or a refused check) left behind.
        let mut conn = Conn::Lent(lending.pool.get().map_err(|e| {
            let e = e.to_string();
            // r2d2 adds the last error it met opening a connection, if any.
            match e.split_once(": ") {
                Some((_, cause)) => refused(format!(
                    "no connection from the application's pool within its connection_timeout, and its last attempt to open one failed: {}; check the pool's URL and its connection customizer",
                    crate::endpoint::redact_text(cause)
                )),
                None => refused(format!(
                    "no connection from the application's pool within its connection_timeout ({e}); a batch needs up to 2 of its connections free at once for each bind the pool serves: raise its max_size, or migrate before the application takes them"
                )),
            }
        })?);
        conn.batch_execute(
            "ROLLBACK; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; \
             SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES; \
             SET TIME ZONE 'UTC'; SET CLIENT_ENCODING TO 'UTF8'",
        )
        .map_err(|e| {
            refused(format!(
                "cannot reset the session lent by the application's pool: {e}"
            ))
        })?;
        let lent: Name = diesel::sql_query(LENT_SQL)
            .get_result(&mut *conn)
            .map_err(|e| {
                refused(format!(
                    "cannot read the session lent by the application's pool: {e}"
                ))
            })?;
        let lent = lent.s.unwrap_or_default();
        // Read again when it differs (the server restarted since, say) or is a batch old.
        let cached = lending
            .reference
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let reference = match cached {
            Some((r, read))
                if (r == lent && read.elapsed() < crate::endpoint::Lending::REFERENCE_FOR)
                    || read >= started =>
            {
                r
            }
            _ => {
                let mut own = PgConnection::establish(endpoint.connect_url()).map_err(|source| {
                    refused(format!(
                        "cannot connect with the bind's URL ({}) to check that the application's pool reaches the same database as the command line would: {}",
                        endpoint.redacted(),
                        crate::endpoint::redact_text(&source.to_string())
                    ))
                })?;
                let r: Name = diesel::sql_query(LENT_SQL)
                    .get_result(&mut own)
                    .map_err(|e| {
                        refused(format!("cannot read the session the bind's URL gives: {e}"))
                    })?;
                let r = r.s.unwrap_or_default();
                *lending.reference.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((r.clone(), std::time::Instant::now()));
                r
            }
        };
        if lent != reference {
            return Ok(Err((lent, reference)));
        }
        conn.batch_execute(&format!(
            "SET lock_timeout = {}; SET default_transaction_read_only = off",
            lock_timeout.as_millis()
        ))
        .map_err(|e| {
            refused(format!(
                "cannot set up the session lent by the application's pool: {e}"
            ))
        })?;
        Ok(Ok(conn))
    }

    /// What a session of this database and role starts with besides the server's own
    /// configuration: every `ALTER DATABASE ... SET` and `ALTER ROLE ... SET` that applies
    /// (`pg_db_role_setting`), and whether and as whom the role may still connect (see
    /// [`REUSE_SQL`]), as one text. A kept session whose text changed since it opened would
    /// read with settings (a search path) or rights a new session no longer gets.
    pub fn session_defaults(&mut self) -> Result<String, DriverError> {
        let row: SchemaAndDefaults = diesel::sql_query(REUSE_SQL)
            .get_result(&mut *self.s.conn)
            .map_err(|e| {
                self.s
                    .query_err("cannot read the database's and role's settings", e)
            })?;
        Ok(row.f)
    }

    /// Before a kept session reads again: it still answers, the database's and role's
    /// settings are still `defaults_at_open` (otherwise an error: open a new session), and
    /// this tool's tables are looked for again as a new session would (a schema created
    /// since, such as one named after the role, may now come first in the search path).
    pub fn prepare_reuse(&mut self, defaults_at_open: &str) -> Result<(), DriverError> {
        let row: SchemaAndDefaults = diesel::sql_query(REUSE_SQL)
            .get_result(&mut *self.s.conn)
            .map_err(|e| self.s.query_err("the kept session no longer answers", e))?;
        if row.f != defaults_at_open {
            return Err(self.s.other(
                "the database's or role's settings or rights changed since this session opened; a new session reads with the new ones, or is refused",
            ));
        }
        let Some(schema) = row.s else {
            return Err(self
                .s
                .other("the search_path of this database and role names no schema that exists"));
        };
        self.s.set_schema(&schema);
        Ok(())
    }

    /// Prepared transactions that are not this tool's but hold its migration lock here (a
    /// migration that ran `PREPARE TRANSACTION` itself, in a form the plan-time check could not
    /// see): every later batch would wait on them.
    pub fn foreign_lock_holders(&mut self) -> Result<Vec<String>, DriverError> {
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
        .load(&mut *self.s.conn);
        rows.map(|r| r.into_iter().filter_map(|n| n.s).collect())
            .map_err(|e| self.s.query_err("cannot read pg_locks", e))
    }

    /// This tool's prepared transactions here ([`Resolve::prepared`]) and the foreign ones that
    /// hold its migration lock ([`Postgres::foreign_lock_holders`]), in one statement: what
    /// `status` reads of every bind before its version tables.
    pub fn prepared_and_foreign(
        &mut self,
    ) -> Result<(Vec<PreparedXact>, Vec<String>), DriverError> {
        #[derive(QueryableByName)]
        struct Found {
            #[diesel(sql_type = Text)]
            gid: String,
            #[diesel(sql_type = Text)]
            prepared_at: String,
            #[diesel(sql_type = Text)]
            age: String,
            #[diesel(sql_type = Bool)]
            ours: bool,
            #[diesel(sql_type = Bool)]
            holds_lock: bool,
        }
        let rows: Vec<Found> = diesel::sql_query(
            "SELECT p.gid, CAST(p.prepared AS TEXT) AS prepared_at, \
             CAST(date_trunc('second', now() - p.prepared) AS TEXT) AS age, starts_with(p.gid, $1) AS ours, \
             EXISTS (SELECT 1 FROM pg_catalog.pg_locks t \
               JOIN pg_catalog.pg_locks l ON l.virtualtransaction = t.virtualtransaction AND l.pid IS NULL \
               WHERE t.locktype = 'transactionid' AND t.transactionid = p.transaction \
               AND l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
               AND l.objsubid = 1 AND ((l.classid::bigint << 32) | l.objid::bigint) = $2) AS holds_lock \
             FROM pg_catalog.pg_prepared_xacts p WHERE p.database = pg_catalog.current_database() ORDER BY p.prepared",
        )
        .bind::<Text, _>(GID_PREFIX)
        .bind::<BigInt, _>(LOCK_KEY)
        .load(&mut *self.s.conn)
        .map_err(|e| self.s.query_err("cannot read pg_prepared_xacts", e))?;
        let mut ours = Vec::new();
        let mut foreign = Vec::new();
        for r in rows {
            if r.ours {
                ours.push(PreparedXact {
                    gid: r.gid,
                    prepared_at: r.prepared_at,
                    age: r.age,
                });
            } else if r.holds_lock {
                foreign.push(r.gid);
            }
        }
        Ok((ours, foreign))
    }

    /// The databases of this server whose name matches `pattern` (SQL `LIKE`), in name order;
    /// templates and databases that refuse connections are left out.
    pub fn databases_like(&mut self, pattern: &str) -> Result<Vec<String>, DriverError> {
        #[derive(QueryableByName)]
        struct Database {
            #[diesel(sql_type = Text)]
            datname: String,
        }
        let rows: Vec<Database> = diesel::sql_query(
            "SELECT datname FROM pg_database WHERE datname LIKE $1 AND datallowconn AND NOT datistemplate ORDER BY datname",
        )
        .bind::<Text, _>(pattern)
        .load(&mut *self.s.conn)
        .map_err(|e| self.s.query_err("cannot list the server's databases", e))?;
        Ok(rows.into_iter().map(|r| r.datname).collect())
    }

    /// Which server and database this is, and the server's `max_prepared_transactions`.
    pub fn server_identity(&mut self) -> Result<ServerIdentity, DriverError> {
        diesel::sql_query(
            "SELECT CAST(pg_catalog.pg_postmaster_start_time() AS TEXT) || ', port ' || \
             pg_catalog.current_setting('port') AS server, \
             CAST(pg_catalog.current_database() AS TEXT) AS database, \
             CAST(pg_catalog.current_setting('max_prepared_transactions') AS BIGINT) AS max_prepared, \
             CAST(pg_catalog.current_setting('max_connections') AS BIGINT) \
             - CAST(pg_catalog.current_setting('superuser_reserved_connections') AS BIGINT) \
             - coalesce(CAST(pg_catalog.current_setting('reserved_connections', true) AS BIGINT), 0) AS max_connections",
        )
        .get_result(&mut *self.s.conn)
        .map_err(|e| self.s.query_err("cannot read which server this is", e))
    }

    /// What this server knows of transaction `xid` (epoch and id, as `txid_current()` gives
    /// them): `None` once its status has been discarded. An id this server has not reached yet
    /// is an error (the database is not the one the batch ran on).
    pub fn transaction_status(&mut self, xid: u64) -> Result<Option<XactStatus>, DriverError> {
        let xid = i64::try_from(xid).map_err(|_| {
            self.s
                .other(format!("transaction id {xid} is out of range"))
        })?;
        let rows: Vec<Name> = self.s.rows(
            "cannot read the decider's transaction status (txid_status)",
            "SELECT pg_catalog.txid_status(?) AS s",
            &[Arg::Int(xid)],
        )?;
        match rows.into_iter().next().and_then(|r| r.s).as_deref() {
            None => Ok(None),
            Some("committed") => Ok(Some(XactStatus::Committed)),
            Some("aborted") => Ok(Some(XactStatus::Aborted)),
            Some("in progress") => Ok(Some(XactStatus::InProgress)),
            Some(other) => Err(self.s.other(format!(
                "txid_status answered `{other}`, which this version does not know"
            ))),
        }
    }

    /// The server's `max_prepared_transactions`.
    pub fn max_prepared_transactions(&mut self) -> Result<i64, DriverError> {
        let found: Count = diesel::sql_query(
            "SELECT CAST(setting AS BIGINT) AS n FROM pg_settings WHERE name = 'max_prepared_transactions'",
        )
        .get_result(&mut *self.s.conn)
        .map_err(|e| self.s.query_err("cannot read max_prepared_transactions", e))?;
        Ok(found.n)
    }

    /// Names this session after the batch it decides, for people reading
    /// `pg_stat_activity`. Nothing depends on it: a migration may change it.
    fn tag_as_decider(&mut self, batch_id: &str) -> Result<(), DriverError> {
        let sql = format!(
            "SET application_name = {}",
            quote_literal(&decider_tag(batch_id))
        );
        self.s.execute_plain("cannot set application_name", &sql)
    }

    /// Takes the migration lock in the open transaction, trying until the lock timeout. A
    /// busy lock held by a prepared transaction that is not this tool's is named.
    /// Inside the batch transaction: the bind's lock, the transaction's id, the version tables.
    fn lock_and_tables(&mut self, started: Instant) -> Result<(), DriverError> {
        self.take_lock(started)?;
        self.xact = Some(transaction_id(&mut self.s)?);
        self.s.create_tables(
            "cannot create the version tables",
            &[
                (schema::DIESEL_TABLE_DDL, DIESEL_TABLE),
                (schema::HISTORY_DDL_PG, HISTORY),
            ],
        )?;
        self.s.execute_plain(
            "cannot take the batch's savepoint",
            &format!("SAVEPOINT {}", super::guard_name()),
        )
    }

    fn take_lock(&mut self, started: Instant) -> Result<(), DriverError> {
        loop {
            let got: Result<Flag, _> =
                diesel::sql_query("SELECT pg_catalog.pg_try_advisory_xact_lock($1) AS ok")
                    .bind::<BigInt, _>(LOCK_KEY)
                    .get_result(&mut *self.s.conn);
            match got {
                Ok(Flag { ok: true }) => return Ok(()),
                Ok(Flag { ok: false }) if started.elapsed() < self.s.lock_timeout() => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(Flag { ok: false }) => {
                    let busy = self.s.busy(started);
                    self.rollback();
                    return Err(match self.foreign_lock_holders() {
                        Ok(gids) if !gids.is_empty() => self.s.other(format!("prepared transaction `{}`, which is not this tool's, holds this database's migration lock (a migration ran PREPARE TRANSACTION itself?); no orchestrate run does. Look at it and end it by hand: COMMIT PREPARED or ROLLBACK PREPARED '{}'", gids[0], gids[0])),
                        _ => busy,
                    });
                }
                Err(e) => return Err(self.s.query_err("cannot take the migration lock", e)),
            }
        }
    }

    /// Takes this database's migration lock for the session (not a transaction: what runs
    /// next commits statement by statement), waiting up to `lock_timeout`, and makes
    /// `orchestrate_in_progress`. For a migration with `run_in_transaction = false`: the
    /// bookkeeping connection holds the lock; the migration's statements run on another.
    pub fn begin_outside(&mut self) -> Result<(), DriverError> {
        let started = Instant::now();
        while !self.try_session_lock(LOCK_KEY)? {
            if started.elapsed() >= self.s.lock_timeout() {
                return Err(self.s.busy(started));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // A statement of an earlier migration outside a transaction may still be running on
        // a session its dead run left: wait for it as for the lock.
        while !self.outside_free()? {
            if started.elapsed() >= self.s.lock_timeout() {
                self.end_outside();
                return Err(self.s.other(format!(
                    "a migration statement started outside a transaction by an earlier run is still running on this database (waited {} ms); let it finish (see pg_stat_activity), then run again",
                    started.elapsed().as_millis()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.s.create_tables(
            "cannot create orchestrate's tables",
            &[
                (schema::DIESEL_TABLE_DDL, DIESEL_TABLE),
                (schema::HISTORY_DDL_PG, HISTORY),
                (schema::IN_PROGRESS_DDL_PG, schema::IN_PROGRESS),
            ],
        )
    }

    /// Releases the session's migration lock (the end of the session releases it too).
    pub fn end_outside(&mut self) {
        let _ = self.s.execute_plain(
            "cannot release the migration lock",
            &format!("SELECT pg_catalog.pg_advisory_unlock({LOCK_KEY})"),
        );
    }

    /// Whether no other session holds this database's migration lock (a batch, or a
    /// migration running outside a transaction) nor runs a migration statement outside a
    /// transaction, found without waiting and without holding either lock past the probe.
    pub fn lock_free(&mut self) -> Result<bool, DriverError> {
        Ok(self.probe(LOCK_KEY)? && self.outside_free()?)
    }

    /// Whether no session runs a migration statement outside a transaction here.
    fn outside_free(&mut self) -> Result<bool, DriverError> {
        self.probe(OUTSIDE_KEY)
    }

    /// `pg_try_advisory_lock(key)`: takes the session lock `key` if no other session holds it.
    fn try_session_lock(&mut self, key: i64) -> Result<bool, DriverError> {
        diesel::sql_query("SELECT pg_catalog.pg_try_advisory_lock($1) AS ok")
            .bind::<BigInt, _>(key)
            .get_result::<Flag>(&mut *self.s.conn)
            .map(|f| f.ok)
            .map_err(|e| self.s.query_err("cannot take the migration lock", e))
    }

    /// Whether no other session holds the session lock `key` (taken and given back at once).
    fn probe(&mut self, key: i64) -> Result<bool, DriverError> {
        let free = self.try_session_lock(key)?;
        if free {
            let _ = self.s.execute_plain(
                "cannot release the migration lock",
                &format!("SELECT pg_catalog.pg_advisory_unlock({key})"),
            );
        }
        Ok(free)
    }

    /// On the session that runs a migration's statements outside a transaction: holds
    /// [`OUTSIDE_KEY`] for as long as the session lives (it is never given back: the session
    /// ends with the migration).
    pub fn hold_outside(&mut self) -> Result<(), DriverError> {
        if self.try_session_lock(OUTSIDE_KEY)? {
            Ok(())
        } else {
            Err(self.s.other("a migration statement started outside a transaction by an earlier run is still running on this database; let it finish, then run again"))
        }
    }

    /// What is under way and not settled on this bind: marks of migrations that ran outside
    /// a transaction and did not finish.
    pub fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        if !self.s.table_exists(schema::IN_PROGRESS)? {
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

    /// Removes a mark.
    pub fn clear_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
        self.s.clear_mark(mark)
    }

    /// Records a finished step and clears its mark, in one transaction.
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

    /// Runs one statement of a migration outside any transaction, alone (a statement such as
    /// `CREATE INDEX CONCURRENTLY` refuses to run inside a transaction block, which a string
    /// of several statements is).
    pub fn run_statement(&mut self, name: &str, sql: &str) -> Result<(), DriverError> {
        let done = self.s.conn.batch_execute(sql);
        done.map_err(|source| self.s.migration_err(name, source))
    }

    /// Indexes left invalid (`pg_index.indisvalid = false`), as `schema.name`: what a failed
    /// or interrupted `CREATE INDEX CONCURRENTLY` leaves behind.
    pub fn invalid_indexes(&mut self) -> Result<Vec<String>, DriverError> {
        let rows: Vec<Name> = self.s.rows(
            "cannot read pg_index",
            "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) AS s \
             FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE NOT i.indisvalid AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1",
            &[],
        )?;
        Ok(rows.into_iter().filter_map(|n| n.s).collect())
    }

    /// `SET ROLE NONE`, then `sql`, each alone: COMMIT/ROLLBACK PREPARED run as the login role
    /// (see [`TwoPhase::prepare`]), and cannot run inside a transaction block, which a
    /// multi-statement string is.
    fn as_login_role(&mut self, sql: &str, what: &str) -> Result<(), DriverError> {
        self.s
            .execute_plain("cannot reset the role", "SET ROLE NONE")?;
        self.s.execute_plain(what, sql)
    }
}

// The batch's guard savepoint (`super::guard_name`): held from the batch transaction's
// start (after its lock and version tables, see `lock_and_tables`). After a migration failed,
// the transaction open can be asked nothing, whether it is the batch's (aborted by the
// failure) or one the migration began after ending the batch's (`COMMIT; BEGIN; ...` then an
// error): rolling back to this savepoint tells them apart.

/// After a migration failed: whether it had ended the batch's transaction first. The guard
/// savepoint is there only in the batch's transaction; rolling back to it also makes that
/// transaction usable again (it is rolled back whole next). A lost connection is not an
/// answer (`Err`).
fn left_after_failure(s: &mut Session<PgConnection>) -> Result<bool, DriverError> {
    match s
        .conn
        .batch_execute(&format!("ROLLBACK TO SAVEPOINT {}", super::guard_name()))
    {
        Ok(()) => Ok(false),
        Err(e) => {
            let gone = message_of(&e).is_some_and(|m| {
                (m.contains("savepoint") && m.contains("does not exist"))
                    || m.contains("can only be used in transaction blocks")
            });
            if gone {
                Ok(true)
            } else {
                Err(s.query_err(
                    "cannot tell whether the batch's transaction is still open",
                    e,
                ))
            }
        }
    }
}

fn transaction_id(s: &mut Session<PgConnection>) -> Result<i64, DriverError> {
    s.count(
        "cannot read the transaction id",
        "SELECT pg_catalog.txid_current() AS n",
        &[],
    )
}

/// Whether a migration's own SQL ended the batch transaction `xact` (COMMIT, ROLLBACK, END,
/// `COMMIT AND CHAIN`, PREPARE TRANSACTION): what ran before it may then be committed. "Still
/// in a transaction" is not enough (`COMMIT AND CHAIN` opens another): the transaction id must
/// be the batch's. diesel follows libpq's transaction status after every statement.
fn left_transaction(s: &mut Session<PgConnection>, xact: Option<i64>) -> Result<bool, DriverError> {
    if !s.in_transaction() {
        return Ok(true);
    }
    match xact {
        Some(id) => Ok(transaction_id(s)? != id),
        None => Ok(false),
    }
}

impl Atomic for Postgres {
    fn run_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError> {
        let xact = self.xact;
        self.s.run_step(
            batch_id,
            direction,
            step,
            at,
            |s, failed| {
                if failed {
                    left_after_failure(s)
                } else {
                    left_transaction(s, xact)
                }
            },
            xact,
        )
    }

    fn rollback(&mut self) {
        self.s.rollback()
    }
}

impl BatchTransaction for Postgres {
    fn begin_batch(&mut self) -> Result<(), DriverError> {
        let started = Instant::now();
        self.s.begin("cannot begin the batch transaction")?;
        self.lock_and_tables(started)
    }

    /// The session is tagged with the batch first, for people reading `pg_stat_activity`.
    /// The batch's row is held before the bind's lock is waited for: from then on `recover`
    /// sees a live coordinator, however long another batch keeps that lock.
    fn begin_deciding(&mut self, batch_id: &str) -> Result<(), DriverError> {
        self.tag_as_decider(batch_id)?;
        let started = Instant::now();
        self.s.begin("cannot begin the batch transaction")?;
        self.hold_decision(batch_id)?;
        self.lock_and_tables(started)
    }

    fn prepare_to_decide(&mut self, last_step: &str) -> Result<(), DriverError> {
        if left_transaction(&mut self.s, self.xact)? {
            return Err(DriverError::LeftTransaction {
                bind: self.s.bind(),
                name: last_step.into(),
            });
        }
        self.s.execute_plain(
            "a deferred constraint failed",
            "SET CONSTRAINTS ALL IMMEDIATE",
        )?;
        // A cursor a migration left open WITH HOLD would run its query inside COMMIT, after
        // the decision was read back: closed here, it never runs.
        self.s
            .execute_plain("cannot close the migrations' cursors", "CLOSE ALL")?;
        PgConnection::make_commit_durable(&mut self.s)
    }

    fn commit(&mut self) -> Result<(), DriverError> {
        self.s.commit()
    }

    fn transaction_xid(&self) -> Option<u64> {
        self.xact.and_then(|x| u64::try_from(x).ok())
    }
}

impl TwoPhase for Postgres {
    /// The prepared transaction belongs to the role current at PREPARE, and only that role
    /// (or a superuser) may end it: a migration's `SET ROLE` (or a role default set with
    /// ALTER ROLE ... SET role) would leave it unfinishable by this tool. `SET ROLE NONE`
    /// brings back the login role; COMMIT/ROLLBACK PREPARED run as it too. Two statements,
    /// not one string: outside a transaction a multi-statement string is an implicit
    /// transaction of its own, which PREPARE would prepare (empty) instead of warning.
    fn prepare(&mut self, gid: &str) -> Result<(), DriverError> {
        self.s
            .execute_plain("cannot reset the role before PREPARE", "SET ROLE NONE")?;
        let prepared = self
            .s
            .conn
            .batch_execute(&format!("PREPARE TRANSACTION {}", quote_literal(gid)));
        prepared.map_err(|source| DriverError::Prepare {
            bind: self.s.bind(),
            class: classify(&source),
            source,
        })?;
        let found: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM pg_catalog.pg_prepared_xacts WHERE gid = $1 AND database = pg_catalog.current_database()",
        )
        .bind::<Text, _>(gid)
        .get_result(&mut *self.s.conn)
        .map_err(|e| self.s.query_err("cannot verify the prepared transaction", e))?;
        if found.n != 1 {
            return Err(DriverError::PrepareNotRecorded {
                bind: self.s.bind(),
                gid: gid.into(),
            });
        }
        Ok(())
    }
}

impl Resolve for Postgres {
    fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        Postgres::marks(self)
    }

    fn prepared(&mut self) -> Result<Vec<PreparedXact>, DriverError> {
        diesel::sql_query(
            "SELECT gid, CAST(prepared AS TEXT) AS prepared_at, \
             CAST(date_trunc('second', now() - prepared) AS TEXT) AS age FROM pg_catalog.pg_prepared_xacts \
             WHERE database = pg_catalog.current_database() AND starts_with(gid, $1) ORDER BY prepared",
        )
        .bind::<Text, _>(GID_PREFIX)
        .load(&mut *self.s.conn)
        .map_err(|e| self.s.query_err("cannot read pg_prepared_xacts", e))
    }

    fn commit_prepared(&mut self, gid: &str) -> Result<(), DriverError> {
        self.as_login_role(
            &format!("COMMIT PREPARED {}", quote_literal(gid)),
            &format!("COMMIT PREPARED of {gid} failed"),
        )
    }

    fn rollback_prepared(&mut self, gid: &str) -> Result<(), DriverError> {
        self.as_login_role(
            &format!("ROLLBACK PREPARED {}", quote_literal(gid)),
            &format!("ROLLBACK PREPARED of {gid} failed"),
        )
    }
}

/// What a PostgreSQL error means. diesel keeps the SQLSTATE to itself (it only maps class
/// `08`, connection exceptions, and a broken connection to `ClosedConnection`), so the fixed
/// primary messages of the codes this tool acts on are read, here only:
///
/// - lost: libpq's own messages when the server went away ("server closed the connection
///   unexpectedly", "no connection to the server", "connection to server ... lost"), and
///   `57P01`-`57P03` ("terminating connection due to ...");
/// - `55P03` `lock_not_available`: "canceling statement due to lock timeout", "could not
///   obtain lock on ...";
/// - `42P01` `undefined_table`: "relation ... does not exist";
/// - `PREPARE TRANSACTION` refused: `0A000` (temporary objects; LISTEN/NOTIFY), `55000`
///   ("prepared transactions are disabled"), `53200` ("maximum number of prepared
///   transactions reached").
pub(crate) fn classify(error: &diesel::result::Error) -> ErrorClass {
    if let Some(class) = ErrorClass::from_diesel(error) {
        return class;
    }
    let Some(m) = message_of(error) else {
        return ErrorClass::Other;
    };
    let has = |text: &str| m.contains(text);
    if has("server closed the connection")
        || has("terminating connection")
        || has("no connection to the server")
        || has("connection to server")
    {
        ErrorClass::ConnectionLost
    } else if has("lock timeout") || has("could not obtain lock") {
        ErrorClass::LockWait
    } else if has("relation") && has("does not exist") {
        ErrorClass::Missing
    } else if has("cannot prepare") && has("temporary objects") {
        ErrorClass::CannotPrepare(PrepareRefusal::TemporaryObjects)
    } else if has("cannot prepare") && (has("listen") || has("notify")) {
        ErrorClass::CannotPrepare(PrepareRefusal::ListenNotify)
    } else if has("prepared transactions are disabled") {
        ErrorClass::CannotPrepare(PrepareRefusal::Disabled)
    } else if has("maximum number of prepared transactions") {
        ErrorClass::CannotPrepare(PrepareRefusal::Full)
    } else {
        ErrorClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    fn db(kind: DatabaseErrorKind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_string()))
    }

    #[test]
    fn postgres_errors_are_classified() {
        let unknown = |m: &str| classify(&db(DatabaseErrorKind::Unknown, m));
        assert_eq!(
            classify(&db(DatabaseErrorKind::ClosedConnection, "anything")),
            ErrorClass::ConnectionLost
        );
        assert_eq!(
            classify(&Error::BrokenTransactionManager),
            ErrorClass::ConnectionLost
        );
        for lost in [
            "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally",
            "terminating connection due to administrator command",
            "no connection to the server",
            "Connection to server was lost",
        ] {
            assert_eq!(unknown(lost), ErrorClass::ConnectionLost, "{lost}");
        }
        assert_eq!(
            unknown("canceling statement due to lock timeout"),
            ErrorClass::LockWait
        );
        assert_eq!(
            unknown("could not obtain lock on row in relation \"orchestrate_batches\""),
            ErrorClass::LockWait
        );
        assert_eq!(
            unknown("relation \"public.__diesel_schema_migrations\" does not exist"),
            ErrorClass::Missing
        );
        assert_eq!(
            unknown("cannot PREPARE a transaction that has operated on temporary objects"),
            ErrorClass::CannotPrepare(PrepareRefusal::TemporaryObjects)
        );
        assert_eq!(
            unknown("cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY"),
            ErrorClass::CannotPrepare(PrepareRefusal::ListenNotify)
        );
        assert_eq!(
            unknown("prepared transactions are disabled"),
            ErrorClass::CannotPrepare(PrepareRefusal::Disabled)
        );
        assert_eq!(
            unknown("maximum number of prepared transactions reached"),
            ErrorClass::CannotPrepare(PrepareRefusal::Full)
        );
        assert_eq!(
            unknown("relation \"listeners\" does not exist"),
            ErrorClass::Missing
        );
        assert_eq!(unknown("division by zero"), ErrorClass::Other);
        assert_eq!(
            classify(&db(
                DatabaseErrorKind::UniqueViolation,
                "duplicate key value"
            )),
            ErrorClass::Other
        );
        assert_eq!(classify(&Error::NotFound), ErrorClass::Other);
        let lost_commit = Error::RollbackErrorOnCommit {
            rollback_error: Box::new(db(
                DatabaseErrorKind::Unknown,
                "no connection to the server",
            )),
            commit_error: Box::new(db(
                DatabaseErrorKind::Unknown,
                "server closed the connection unexpectedly",
            )),
        };
        assert_eq!(classify(&lost_commit), ErrorClass::ConnectionLost);
    }
}
