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
//!   statements_done, statements_total, started_at)`: MySQL binds only, what is under way and
//!   not settled. A `batch` row (version `-`) says a batch touched this bind and its outcome is
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

pub const BATCHES_DDL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS {t} (\
       batch_id VARCHAR(64) PRIMARY KEY NOT NULL, state VARCHAR(16) NOT NULL, \
       begun_at VARCHAR(40) NOT NULL, decided_at VARCHAR(40), settled_at VARCHAR(40), \
       record LONGTEXT) ENGINE=InnoDB";

/// The table of decisions written by versions before `orchestrate_batches`: a row there is a
/// commit decision. It is read, never written.
pub const LEGACY_DECISIONS: &str = "orchestrate_decisions";
