//! The tables this tool reads and writes. Their layout is a format: other versions of this
//! tool, and diesel_cli, read them.
//!
//! - `__diesel_schema_migrations(version, run_on)`: diesel's own version table, so that
//!   `diesel migration list` agrees with us.
//! - `orchestrate_history(id, batch_id, version, name, direction, checksum, down_sql, at)`: one
//!   row per migration applied or reverted, never updated or deleted.
//! - `orchestrate_batches(batch_id, state, begun_at, decided_at, settled_at, record)`: on a
//!   decider, its batches and their decisions (see [`BATCHES_DDL`]).
//! - `orchestrate_in_progress(kind, batch_id, version, decider, direction, name,
//!   statements_done, statements_total, started_at)`: MySQL binds, and PostgreSQL binds that
//!   ran a migration outside any transaction: what is under way and not settled. A `batch` row (version `-`) says a batch touched this bind and its outcome is
//!   not settled here yet; a `migration` row says a migration (or its undo) started and did not
//!   finish: how many of its statements committed is in `statements_done`.
//!
//! Every statement names these tables fully qualified (see `Session::table` in `participant/session.rs`).

pub const DIESEL_TABLE: &str = "__diesel_schema_migrations";
pub const HISTORY: &str = "orchestrate_history";
pub const BATCHES: &str = "orchestrate_batches";
pub const IN_PROGRESS: &str = "orchestrate_in_progress";

// The DDL below names each table `{t}`: the connection puts the table's fully qualified name
// there (schema resolved when the connection opened, `main` on SQLite, the database on MySQL),
// so that a migration that moves `search_path`, attaches a database or runs `USE` cannot send
// bookkeeping elsewhere.

pub const IN_PROGRESS_DDL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       kind VARCHAR(16) NOT NULL, batch_id VARCHAR(64) NOT NULL, version VARCHAR(50) NOT NULL, \
       decider VARCHAR(64) NOT NULL, direction VARCHAR(16) NOT NULL, name TEXT NOT NULL, \
       statements_done BIGINT NOT NULL, statements_total BIGINT NOT NULL, \
       started_at VARCHAR(40) NOT NULL, PRIMARY KEY (kind, batch_id, version)) ENGINE=InnoDB";

/// PostgreSQL: the same marks, for migrations that run outside any transaction
/// (`run_in_transaction = false`, run by `upgrade --allow-non-atomic` as a segment of their own).
pub const IN_PROGRESS_DDL_PG: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       kind VARCHAR(16) NOT NULL, batch_id VARCHAR(64) NOT NULL, version VARCHAR(50) NOT NULL, \
       decider VARCHAR(64) NOT NULL, direction VARCHAR(16) NOT NULL, name TEXT NOT NULL, \
       statements_done BIGINT NOT NULL, statements_total BIGINT NOT NULL, \
       started_at VARCHAR(40) NOT NULL, PRIMARY KEY (kind, batch_id, version))";

pub const HISTORY_DDL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       id BIGINT AUTO_INCREMENT PRIMARY KEY, batch_id TEXT NOT NULL, version TEXT NOT NULL, \
       name TEXT NOT NULL, direction TEXT NOT NULL, checksum TEXT, down_sql LONGTEXT, \
       at TEXT NOT NULL) ENGINE=InnoDB";

/// diesel's table on MySQL, InnoDB whatever the server's default engine: its rows are written
/// in the same transaction that clears a migration's mark.
pub const DIESEL_TABLE_DDL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       version VARCHAR(50) PRIMARY KEY NOT NULL, \
       run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB";

pub const DIESEL_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       version VARCHAR(50) PRIMARY KEY NOT NULL, \
       run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";

pub const HISTORY_DDL_PG: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       id BIGSERIAL PRIMARY KEY, batch_id TEXT NOT NULL, version TEXT NOT NULL, \
       name TEXT NOT NULL, direction TEXT NOT NULL, checksum TEXT, down_sql TEXT, \
       at TEXT NOT NULL)";

pub const HISTORY_DDL_SQLITE: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       id INTEGER PRIMARY KEY AUTOINCREMENT, batch_id TEXT NOT NULL, version TEXT NOT NULL, \
       name TEXT NOT NULL, direction TEXT NOT NULL, checksum TEXT, down_sql TEXT, \
       at TEXT NOT NULL)";

/// The batches this bind decides, one row each, and the arbitration between a coordinator
/// and `recover`: the row is inserted (`begun`) and committed before any participant
/// prepares; the coordinator turns it into `commit` inside its batch transaction, `recover`
/// into `abort` in a transaction of its own, each only `WHERE state = 'begun'`, so the
/// database lets exactly one of them win. `settled_at` is set once every participant of a
/// `commit` has finished, so that `recover` reads only what is unsettled.
pub const BATCHES_DDL: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       batch_id VARCHAR(64) PRIMARY KEY NOT NULL, state VARCHAR(16) NOT NULL, \
       begun_at VARCHAR(40) NOT NULL, decided_at VARCHAR(40), settled_at VARCHAR(40), \
       record TEXT)";

#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub const BATCHES_DDL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       batch_id VARCHAR(64) PRIMARY KEY NOT NULL, state VARCHAR(16) NOT NULL, \
       begun_at VARCHAR(40) NOT NULL, decided_at VARCHAR(40), settled_at VARCHAR(40), \
       record LONGTEXT) ENGINE=InnoDB";

/// The table of decisions written by versions before `orchestrate_batches`: a row there is a
/// commit decision. It is read, never written.
pub const LEGACY_DECISIONS: &str = "orchestrate_decisions";

/// PostgreSQL: orchestrate's guard on `orchestrate_batches`, a function of that name in the
/// table's schema and two triggers calling it, enabled `ALWAYS` (so `session_replication_role`
/// does not silence them). Once a batch is decided its row never changes again but for
/// `settled_at`: a change of state, record or batch id, a DELETE or a TRUNCATE raises, whatever
/// runs it, and `settled_at` is set only on a `commit` row, once (a migration that set it on
/// its own `begun` row would hide the decision from `recover`). That includes code a migration
/// leaves to run inside the decider's COMMIT, after the
/// decision was read back (a deferred foreign-key check calling a PL/pgSQL operator, for one):
/// the COMMIT then fails, and nothing is decided. The decider checks the guard is whole before
/// it decides (see `Db::guard_sql`), and installs it when it is missing or changed.
pub const GUARD_FUNCTION: &str = "orchestrate_batches_guard";
/// The guard's two triggers: rows (UPDATE, DELETE) and the TRUNCATE statement.
pub const GUARD_TRIGGERS: [&str; 2] = ["orchestrate_guard", "orchestrate_guard_truncate"];
/// The guard function's body, compared with `pg_proc.prosrc` before every decision.
pub const GUARD_BODY: &str = "
BEGIN
  IF TG_OP = 'TRUNCATE' THEN
    RAISE EXCEPTION 'orchestrate_batches holds the decisions of orchestrate''s batches: it cannot be truncated';
  END IF;
  IF TG_OP = 'DELETE' THEN
    RAISE EXCEPTION 'batch % (%): a row of orchestrate_batches cannot be deleted', OLD.batch_id, OLD.state;
  END IF;
  IF NEW.settled_at IS DISTINCT FROM OLD.settled_at
     AND NOT (OLD.state = 'commit' AND NEW.state = 'commit' AND OLD.settled_at IS NULL) THEN
    RAISE EXCEPTION 'batch % (%): only a decided commit is marked settled in orchestrate_batches, once', OLD.batch_id, OLD.state;
  END IF;
  IF NEW.batch_id IS DISTINCT FROM OLD.batch_id
     OR (OLD.state <> 'begun'
         AND (NEW.state IS DISTINCT FROM OLD.state OR NEW.record IS DISTINCT FROM OLD.record)) THEN
    RAISE EXCEPTION 'batch % is decided (%): its decision in orchestrate_batches cannot change (orchestrate''s guard refused it; when a batch''s COMMIT fails on this, a migration of the decider left code that rewrote the decision, and the batch is rolled back)', OLD.batch_id, OLD.state;
  END IF;
  RETURN NEW;
END
";
/// The statements installing the guard, in one transaction: `{t}` is the table, `{f}` the
/// function, both fully qualified; `{body}` is [`GUARD_BODY`].
pub const GUARD_DDL_PG: [&str; 7] = [
    "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $orchestrate_guard${body}$orchestrate_guard$",
    "DROP TRIGGER IF EXISTS orchestrate_guard ON {t}",
    "DROP TRIGGER IF EXISTS orchestrate_guard_truncate ON {t}",
    "CREATE TRIGGER orchestrate_guard BEFORE UPDATE OR DELETE ON {t} FOR EACH ROW EXECUTE FUNCTION {f}()",
    "CREATE TRIGGER orchestrate_guard_truncate BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION {f}()",
    "ALTER TABLE {t} ENABLE ALWAYS TRIGGER orchestrate_guard",
    "ALTER TABLE {t} ENABLE ALWAYS TRIGGER orchestrate_guard_truncate",
];

/// The name of the session-level lock a MySQL batch holds on its bind from start to end, as an
/// SQL expression: named locks are server-wide, so the name carries the database (hashed, to
/// stay within MySQL's 64 characters). A crashed coordinator's session ends, and the server
/// releases the lock with it, so a free lock proves no coordinator is still working on the bind.
pub(crate) const MYSQL_LOCK_NAME: &str = "CONCAT('orchestrate:', SHA1(DATABASE()))";
