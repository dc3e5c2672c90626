//! The tables this tool reads and writes. Their layout is a format: other versions of this
//! tool, and diesel_cli, read them.

diesel::table! {
    /// diesel's own version table, so that `diesel migration list` agrees with us.
    __diesel_schema_migrations (version) {
        version -> VarChar,
        run_on -> Timestamp,
    }
}

diesel::table! {
    /// One row per migration applied or reverted, never updated or deleted: which batch did
    /// it, the checksum of `up.sql` and the `down.sql` as they were when it ran.
    orchestrate_history (id) {
        id -> BigInt,
        batch_id -> Text,
        version -> Text,
        name -> Text,
        direction -> Text,
        checksum -> Nullable<Text>,
        down_sql -> Nullable<Text>,
        at -> Text,
    }
}

diesel::table! {
    /// Decisions of the batches this bind decided (see `DecisionRecord`).
    orchestrate_decisions (batch_id) {
        batch_id -> Text,
        decided_at -> Text,
        record -> Text,
    }
}

diesel::table! {
    /// MySQL binds only: what is under way and not settled. A `batch` row (version `-`) says
    /// a batch touched this bind and its outcome is not settled here yet; a `migration` row
    /// says a migration (or its undo) started and did not finish: how many of its statements
    /// committed is in `statements_done`.
    orchestrate_in_progress (kind, batch_id, version) {
        kind -> Text,
        batch_id -> Text,
        version -> Text,
        decider -> Text,
        direction -> Text,
        name -> Text,
        statements_done -> BigInt,
        statements_total -> BigInt,
        started_at -> Text,
    }
}

pub const IN_PROGRESS_DDL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS orchestrate_in_progress (\
       kind VARCHAR(16) NOT NULL, batch_id VARCHAR(64) NOT NULL, version VARCHAR(50) NOT NULL, \
       decider VARCHAR(64) NOT NULL, direction VARCHAR(16) NOT NULL, name TEXT NOT NULL, \
       statements_done BIGINT NOT NULL, statements_total BIGINT NOT NULL, \
       started_at VARCHAR(40) NOT NULL, PRIMARY KEY (kind, batch_id, version)) ENGINE=InnoDB";

pub const HISTORY_DDL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS orchestrate_history (\
       id BIGINT AUTO_INCREMENT PRIMARY KEY, batch_id TEXT NOT NULL, version TEXT NOT NULL, \
       name TEXT NOT NULL, direction TEXT NOT NULL, checksum TEXT, down_sql LONGTEXT, \
       at TEXT NOT NULL) ENGINE=InnoDB";

/// diesel's table on MySQL, InnoDB whatever the server's default engine: its rows are written
/// in the same transaction that clears a migration's mark.
pub const DIESEL_TABLE_DDL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (\
       version VARCHAR(50) PRIMARY KEY NOT NULL, \
       run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP) ENGINE=InnoDB";

pub const DECISIONS_DDL_MYSQL: &str = "CREATE TABLE IF NOT EXISTS orchestrate_decisions (\
       batch_id VARCHAR(64) PRIMARY KEY NOT NULL, decided_at VARCHAR(40) NOT NULL, \
       record LONGTEXT NOT NULL) ENGINE=InnoDB";

pub const DIESEL_TABLE_DDL: &str = "CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (\
       version VARCHAR(50) PRIMARY KEY NOT NULL, \
       run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP)";

pub const HISTORY_DDL_PG: &str = "CREATE TABLE IF NOT EXISTS orchestrate_history (\
       id BIGSERIAL PRIMARY KEY, batch_id TEXT NOT NULL, version TEXT NOT NULL, \
       name TEXT NOT NULL, direction TEXT NOT NULL, checksum TEXT, down_sql TEXT, \
       at TEXT NOT NULL)";

pub const HISTORY_DDL_SQLITE: &str = "CREATE TABLE IF NOT EXISTS orchestrate_history (\
       id INTEGER PRIMARY KEY AUTOINCREMENT, batch_id TEXT NOT NULL, version TEXT NOT NULL, \
       name TEXT NOT NULL, direction TEXT NOT NULL, checksum TEXT, down_sql TEXT, \
       at TEXT NOT NULL)";

pub const DECISIONS_DDL: &str = "CREATE TABLE IF NOT EXISTS orchestrate_decisions (\
       batch_id TEXT PRIMARY KEY NOT NULL, decided_at TEXT NOT NULL, record TEXT NOT NULL)";
