//! The text of what a batch runs on one bind, for `--sql`. Built from the same constants and
//! statements the participants (`crate::participant`) execute; values are shown as SQL literals.

use orchestrate_core::{Direction, Plan};

use crate::endpoint::Backend;
use crate::participant::LOCK_KEY;
use crate::record::quote_literal;
use crate::record::XaId;
use crate::schema;
use crate::schema::MYSQL_LOCK_NAME;

/// How a bind ends its part of a batch.
pub enum Ending<'a> {
    /// PostgreSQL participant: prepared, then committed after the decision.
    Prepare {
        /// The id to prepare the transaction under (see [`crate::TransactionId`]).
        gid: &'a str,
    },
    /// SQLite participant: the transaction stays open until the decision, then commits.
    HoldOpen,
    /// The decider: writes the decision record and commits; that COMMIT is the decision.
    Decide {
        /// The batch whose decision record the decider writes.
        batch_id: &'a str,
    },
}

/// The script of a MySQL bind's part of a batch whose migrations are all data-only: an XA
/// transaction, prepared, committed after the decision.
pub fn xa_script(plan: &Plan, batch_id: &str, decider: &str, bind: &str) -> String {
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    let xid = XaId::new(batch_id, bind);
    line(&mysql_preamble(
        "until this bind has ended its XA transaction",
    ));
    line(&insert_mark(
        "xa-batch", batch_id, "-", decider, plan, "", 0,
    ));
    line(&format!("XA START {xid};"));
    for step in &plan.steps {
        line(&format!("-- {} {} (data_only)", plan.direction, step.name));
        line(step.sql.trim_end());
        line(&record_step(plan.direction, step, batch_id));
    }
    line(&format!("XA END {xid};"));
    line(&format!("XA PREPARE {xid};"));
    line("XA RECOVER; -- must list it");
    line("-- once every bind is prepared and the decider has committed:");
    line(&format!("XA COMMIT {xid};"));
    line(&format!(
        "DELETE FROM orchestrate_in_progress WHERE kind = 'xa-batch' AND batch_id = {};",
        quote_literal(batch_id)
    ));
    out
}

/// The script of a MySQL bind's part of a batch: not atomic. Each statement commits as it
/// runs; marks in `orchestrate_in_progress` record what is under way.
pub fn nonatomic_script(plan: &Plan, batch_id: &str, decider: &str) -> String {
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    line("-- NOT ATOMIC: every statement below commits as it runs.");
    line(&mysql_preamble("held for the whole batch"));
    line(&insert_mark("batch", batch_id, "-", decider, plan, "", 0));
    for step in &plan.steps {
        let statements = orchestrate_core::split_statements(&step.sql);
        line(&format!("-- {} {}", plan.direction, step.name));
        line(&insert_mark(
            "migration",
            batch_id,
            step.version.as_str(),
            decider,
            plan,
            &step.name,
            statements.len(),
        ));
        for (i, statement) in statements.iter().enumerate() {
            line(&format!("{statement};"));
            line(&format!(
                "UPDATE orchestrate_in_progress SET statements_done = {} WHERE kind = 'migration' AND batch_id = {} AND version = {};",
                i + 1,
                quote_literal(batch_id),
                quote_literal(step.version.as_str())
            ));
        }
        line("BEGIN;");
        line(&record_step(plan.direction, step, batch_id));
        line(&format!(
            "DELETE FROM orchestrate_in_progress WHERE kind = 'migration' AND batch_id = {} AND version = {};",
            quote_literal(batch_id),
            quote_literal(step.version.as_str())
        ));
        line("COMMIT;");
    }
    line("-- if any bind fails before the decision: the steps above are undone newest first, each with its undo SQL (down.sql of an upgrade, up.sql of a downgrade), marked the same way");
    line("-- once the decider has committed:");
    line(&format!(
        "DELETE FROM orchestrate_in_progress WHERE kind = 'batch' AND batch_id = {};",
        quote_literal(batch_id)
    ));
    out
}

/// What every MySQL script starts with: the bind's lock and the bookkeeping tables (DDL, which
/// commits and is refused inside XA, so it comes first).
fn mysql_preamble(lock_held: &str) -> String {
    let mut text = format!(
        "SELECT GET_LOCK({}, <lock_timeout_ms in seconds>); -- {lock_held}",
        MYSQL_LOCK_NAME
    );
    for (ddl, name) in [
        (schema::DIESEL_TABLE_DDL_MYSQL, schema::DIESEL_TABLE),
        (schema::HISTORY_DDL_MYSQL, schema::HISTORY),
        (schema::IN_PROGRESS_DDL_MYSQL, schema::IN_PROGRESS),
    ] {
        text.push_str(&format!("\n{};", ddl_for(ddl, name)));
    }
    text
}

/// The row of `orchestrate_in_progress` a MySQL script writes before what it marks.
fn insert_mark(
    kind: &str,
    batch_id: &str,
    version: &str,
    decider: &str,
    plan: &Plan,
    name: &str,
    total: usize,
) -> String {
    format!(
        "INSERT INTO orchestrate_in_progress (kind, batch_id, version, decider, direction, name, statements_done, statements_total, started_at) VALUES ('{kind}', {}, {}, {}, '{}', {}, 0, {total}, <now>);",
        quote_literal(batch_id),
        quote_literal(version),
        quote_literal(decider),
        plan.direction,
        quote_literal(name),
    )
}

/// The version-table writes that record one step (two lines).
fn record_step(direction: Direction, step: &orchestrate_core::Step, batch_id: &str) -> String {
    let version = quote_literal(step.version.as_str());
    let versions = match direction {
        Direction::Up => {
            format!("INSERT INTO __diesel_schema_migrations (version) VALUES ({version});")
        }
        Direction::Down => {
            format!("DELETE FROM __diesel_schema_migrations WHERE version = {version};")
        }
    };
    format!(
        "{versions}\nINSERT INTO orchestrate_history (batch_id, version, name, direction, checksum, down_sql, at) VALUES ({}, {version}, {}, '{direction}', {}, {}, <now>);",
        quote_literal(batch_id),
        quote_literal(&step.name),
        nullable(step.checksum.as_deref()),
        nullable(step.down_sql.as_deref()),
    )
}

fn nullable(text: Option<&str>) -> String {
    text.map(quote_literal).unwrap_or_else(|| "NULL".into())
}

/// A DDL template of [`schema`] for printing: the table by its plain name (a real run
/// qualifies it with the schema it resolved when it connected).
fn ddl_for(template: &str, name: &str) -> String {
    template.replace("{t}", name)
}

/// The settings a bind's session takes when it connects, before its part of the batch (and,
/// on the decider, the tag it carries), as SQL with the configured values.
pub fn session_script(backend: Backend, lock_timeout_ms: u128, decider_of: Option<&str>) -> String {
    let mut out = String::new();
    match backend {
        Backend::Postgres => {
            out.push_str(&format!(
                "SET lock_timeout = {lock_timeout_ms}; -- sent at connect (startup options): every wait for a lock is bounded\n"
            ));
            if let Some(batch_id) = decider_of {
                out.push_str(&format!(
                    "SET application_name = {}; -- for people reading pg_stat_activity; nothing depends on it\n",
                    quote_literal(&format!("orchestrate-decider:{batch_id}"))
                ));
            }
        }
        Backend::Sqlite => out.push_str(&format!(
            "PRAGMA busy_timeout = {lock_timeout_ms}; PRAGMA synchronous = FULL; -- at connect: bounded waits for the write lock, durable commits\n"
        )),
        Backend::Mysql => out.push_str(
            "SET SESSION autocommit = 1; -- at connect (checked), and again after every migration statement and XA COMMIT/ROLLBACK\n",
        ),
    }
    out
}

/// The script of one bind's part of a batch.
pub fn script(backend: Backend, plan: &Plan, batch_id: &str, ending: Ending<'_>) -> String {
    let mut out = String::new();
    let mut line = |s: &str| {
        out.push_str(s);
        out.push('\n');
    };
    if let Ending::Decide { batch_id } = &ending {
        line(&format!(
            "{};",
            ddl_for(schema::BATCHES_DDL, schema::BATCHES)
        ));
        line(&format!(
            "INSERT INTO orchestrate_batches (batch_id, state, begun_at) VALUES ({}, 'begun', <now>); -- committed (durably) before any bind prepares",
            quote_literal(batch_id)
        ));
        if backend == Backend::Postgres {
            line("-- orchestrate's guard on orchestrate_batches, installed once if missing or changed: the function orchestrate_batches_guard() and the triggers orchestrate_guard (BEFORE UPDATE OR DELETE, each row) and orchestrate_guard_truncate, enabled ALWAYS; once decided, a batch's row can only be settled");
        }
    }
    let hold_row = |batch_id: &str, lock: &str| {
        format!(
            "SELECT state FROM orchestrate_batches WHERE batch_id = {}{lock}; -- must be 'begun'; held until COMMIT, so a `recover` waits for this run",
            quote_literal(batch_id)
        )
    };
    match backend {
        Backend::Postgres => {
            line("BEGIN;");
            if let Ending::Decide { batch_id } = &ending {
                // The decider holds its row before it waits for the bind's lock.
                line(&hold_row(batch_id, " FOR UPDATE"));
            }
            line(&format!(
                "SELECT pg_try_advisory_xact_lock({LOCK_KEY}); -- repeated until it returns true, for at most lock_timeout_ms"
            ));
        }
        Backend::Sqlite => {
            line("BEGIN IMMEDIATE; -- waits at most lock_timeout_ms for the write lock");
            line("SAVEPOINT orchestrate_batch_guard_<random>; -- released and taken again after every step: gone means a migration ended the transaction");
        }
        Backend::Mysql => return nonatomic_script(plan, batch_id, ""),
    }
    if let (Ending::Decide { batch_id }, Backend::Sqlite) = (&ending, backend) {
        line(&hold_row(batch_id, ""));
    }
    line(&format!(
        "{};",
        ddl_for(schema::DIESEL_TABLE_DDL, schema::DIESEL_TABLE)
    ));
    line(&format!(
        "{};",
        ddl_for(
            match backend {
                Backend::Postgres => schema::HISTORY_DDL_PG,
                Backend::Sqlite => schema::HISTORY_DDL_SQLITE,
                Backend::Mysql => schema::HISTORY_DDL_MYSQL,
            },
            schema::HISTORY
        )
    ));
    for step in &plan.steps {
        line(&format!("-- {} {}", plan.direction, step.name));
        line(step.sql.trim_end());
        line(&record_step(plan.direction, step, batch_id));
    }
    match ending {
        Ending::Prepare { gid } => {
            line("SET ROLE NONE; -- the login role owns the prepared transaction, whatever role a migration set");
            line(&format!("PREPARE TRANSACTION {};", quote_literal(gid)));
            line("SELECT count(*) FROM pg_prepared_xacts WHERE gid = <the id above> AND database = current_database(); -- must be 1");
            line("-- once every bind is prepared and the decider has committed, on a new connection:");
            line("SET ROLE NONE;");
            line(&format!("COMMIT PREPARED {};", quote_literal(gid)));
        }
        Ending::HoldOpen => {
            line("PRAGMA foreign_key_check; -- the vote: must return nothing, since this COMMIT comes after the decision");
            line("-- the transaction stays open until the decider has committed, then:");
            line("COMMIT;");
        }
        Ending::Decide { batch_id } => {
            if backend == Backend::Postgres {
                line("SET CONSTRAINTS ALL IMMEDIATE;");
                line(
                    "CLOSE ALL; -- a cursor left open WITH HOLD would run its query inside COMMIT",
                );
                line("SET LOCAL synchronous_commit = on;");
            } else {
                line("PRAGMA synchronous; -- must still be FULL (2), as set at connect: a migration that lowered it fails the batch");
            }
            if backend == Backend::Postgres {
                line("-- orchestrate_batches must have no trigger but the guard, which must be as installed; no rule, no row security (they could rewrite the decision)");
            } else {
                line("-- orchestrate_batches must have no trigger, rule or row security (they could rewrite the decision)");
            }
            line(&format!(
                "UPDATE orchestrate_batches SET state = 'commit', decided_at = <now>, record = <the batch's participants and the SQL of its SQLite binds, as JSON> WHERE batch_id = {} AND state = 'begun'; -- must change 1 row: else a `recover` aborted the batch first",
                quote_literal(batch_id)
            ));
            line(&format!(
                "SELECT state, record FROM orchestrate_batches WHERE batch_id = {}; -- must read back exactly what was written",
                quote_literal(batch_id)
            ));
            line("COMMIT; -- the decision: the batch commits everywhere from here on");
        }
    }
    out
}
