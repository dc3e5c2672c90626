//! The statement check: every migration a batch would run is refused at plan time, before
//! anything is written anywhere, when it holds a statement that would end or escape the
//! batch's transaction (`COMMIT`, `BEGIN`, `PREPARE TRANSACTION`, `SET SESSION
//! AUTHORIZATION`, `SET autocommit`, `ATTACH`, ...) or that the database refuses inside a
//! transaction block (`CREATE INDEX CONCURRENTLY`, `VACUUM`, ...).
//!
//! It owns the choice of reader per backend: PostgreSQL SQL is parsed by PostgreSQL's own
//! parser (`pg_query`, libpg_query) and its top-level statements are looked at as parse
//! nodes; SQL it cannot parse (an extension's syntax, a newer server's) is read by the hand
//! lexer of `orchestrate-core` instead, silently. SQLite and MySQL SQL is read by that lexer.
//! The bodies of PostgreSQL functions, procedures and `DO` blocks are looked into too (a body
//! in SQL gets the whole check, a PL/pgSQL body a reading of its text for dblink and for
//! database, role or session settings); a `DO` block or a call that leaves the transaction at
//! run time is also caught by the check after each step (`BindConnection`). On every backend,
//! a migration may not name orchestrate's own tables (anywhere outside comments) nor release
//! or roll back to a savepoint it did not open.
//! The kinds of statement and the words a user reads are `orchestrate_core::Hazard`'s.

use orchestrate_core::{
    blank_comments, code_at, escaping_statement, foreign_savepoint, names_bookkeeping,
    string_literals, touches_bookkeeping, Chain, Dialect, DownSqlSource, Found, Hazard,
    MigrationFile, Plan, PlanError, Refusal,
};
use pg_query::protobuf::{
    AlterTableType, DiscardMode, ObjectType, TransactionStmtKind, VariableSetKind,
};
use pg_query::NodeEnum;

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use crate::Backend;

fn dialect(backend: Backend) -> Dialect {
    match backend {
        Backend::Postgres => Dialect::Postgres,
        Backend::Sqlite => Dialect::Sqlite,
        Backend::Mysql => Dialect::Mysql,
    }
}

/// The first statement of `sql` that cannot be part of a batch on `backend`, if any.
///
/// Remembered for the process: the binds of a template share one chain, and every one of them
/// would otherwise have the same files parsed again.
pub fn check_sql(backend: Backend, sql: &str) -> Option<Found> {
    type Checked = Mutex<HashMap<(u8, String), Option<Found>>>;
    static CHECKED: OnceLock<Checked> = OnceLock::new();
    let key = (backend as u8, sql.to_string());
    let checked = CHECKED.get_or_init(Default::default);
    if let Some(found) = checked.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return found.clone();
    }
    let found = check_sql_uncached(backend, sql);
    checked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, found.clone());
    found
}

fn check_sql_uncached(backend: Backend, sql: &str) -> Option<Found> {
    let statements = if backend == Backend::Postgres {
        match pg_query::parse(sql, pg_query::ParserOptions::DEFAULT) {
            Ok(parsed) => check_parsed(sql, &parsed, 0),
            // What pg_query cannot parse is read by the lexer, and every string in it as a
            // body could be (the lexer cannot tell which strings are bodies).
            Err(_) => escaping_statement(Dialect::Postgres, sql).or_else(|| {
                string_literals(sql).into_iter().find_map(|(line, text)| {
                    let body = unquote_body(&text);
                    body_hazard(&body, 1).map(|(statement, hazard)| Found {
                        line,
                        statement: format!("{statement} in a string or body"),
                        hazard,
                    })
                })
            }),
        }
    } else {
        escaping_statement(dialect(backend), sql)
    };
    statements
        .or_else(|| touches_bookkeeping(dialect(backend), sql))
        .or_else(|| foreign_savepoint(dialect(backend), sql))
}

/// PostgreSQL SQL that pg_query parsed: its top-level statements, its calls, then the bodies
/// of the functions, procedures and `DO` blocks it holds (`depth` bodies deep).
fn check_parsed(sql: &str, parsed: &pg_query::ParseResult, depth: usize) -> Option<Found> {
    postgres(sql, &parsed.protobuf)
        .or_else(|| own_tables(sql, parsed))
        .or_else(|| other_connection(sql, parsed))
        .or_else(|| session_setting_call(sql, parsed))
        .or_else(|| orchestrate_core::calls_function(Dialect::Postgres, sql, "DBLINK"))
        .or_else(|| bodies(sql, &parsed.protobuf, depth))
}

/// A table of orchestrate's own named by a statement, as PostgreSQL's parser reads the name
/// (`U&"orchestrate\005fbatches"` is `orchestrate_batches`).
fn own_tables(sql: &str, parsed: &pg_query::ParseResult) -> Option<Found> {
    let table = parsed
        .tables()
        .into_iter()
        .find_map(|t| names_bookkeeping(t.rsplit('.').next().unwrap_or(&t)))?;
    Some(Found {
        line: 1,
        statement: format!("a statement naming {table}"),
        hazard: Hazard::Bookkeeping,
    })
    .map(|f| Found {
        line: touches_bookkeeping(Dialect::Postgres, sql).map_or(f.line, |t| t.line),
        ..f
    })
}

/// The text inside a string literal as the lexer gave it: `$tag$...$tag$`, `'...'` (doubled
/// quotes undone), or `E'...'`.
fn unquote_body(literal: &str) -> String {
    if let Some(after) = literal.strip_prefix('$') {
        if let Some(end) = after.find('$') {
            let tag = &literal[..end + 2];
            return literal
                .get(tag.len()..literal.len().saturating_sub(tag.len()))
                .unwrap_or("")
                .to_string();
        }
    }
    let inner = literal.trim_start_matches(['E', 'e', 'U', 'u', '&']);
    inner
        .get(1..inner.len().saturating_sub(1))
        .unwrap_or("")
        .replace("''", "'")
}

/// A refused statement inside the body of a `DO` block, function or procedure: run later, at
/// once for `DO`, so the top-level check alone would let it through. A body that pg_query
/// parses as SQL (`LANGUAGE sql`) gets the whole check; any other body (PL/pgSQL) is read as
/// text for what no such body may do in a migration: call dblink, change a database's or
/// role's defaults, or the session's identity or string syntax. SQL a body builds at run time
/// from pieces (`EXECUTE 'ALTER ' || 'DATABASE ...'`) cannot be read before it runs.
fn bodies(sql: &str, parsed: &pg_query::protobuf::ParseResult, depth: usize) -> Option<Found> {
    for raw in &parsed.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let (options, what) = match node {
            NodeEnum::DoStmt(d) => (&d.args, "a DO block"),
            NodeEnum::CreateFunctionStmt(f) => (&f.options, "a function or procedure body"),
            _ => continue,
        };
        let offset = usize::try_from(raw.stmt_location).unwrap_or(0);
        let (line, _) = code_at(Dialect::Postgres, sql, offset);
        for body in body_texts(options) {
            if let Some((statement, hazard)) = body_hazard(&body, depth) {
                return Some(Found {
                    line,
                    statement: format!("{statement} in {what}"),
                    hazard,
                });
            }
        }
    }
    None
}

/// The text of the `AS` option of a `DO` block or `CREATE FUNCTION` (its body; for a C
/// function, its file and symbol).
fn body_texts(options: &[pg_query::protobuf::Node]) -> Vec<String> {
    let mut texts = Vec::new();
    for option in options {
        let Some(NodeEnum::DefElem(def)) = &option.node else {
            continue;
        };
        if def.defname != "as" {
            continue;
        }
        match def.arg.as_ref().and_then(|a| a.node.as_ref()) {
            Some(NodeEnum::String(s)) => texts.push(s.sval.clone()),
            Some(NodeEnum::List(list)) => {
                texts.extend(list.items.iter().filter_map(|i| match &i.node {
                    Some(NodeEnum::String(s)) => Some(s.sval.clone()),
                    _ => None,
                }))
            }
            _ => {}
        }
    }
    texts
}

/// What a body may not do (see [`bodies`]), by the statement's name and hazard.
fn body_hazard(body: &str, depth: usize) -> Option<(String, Hazard)> {
    if depth < 4 {
        if let Ok(parsed) = pg_query::parse(body, pg_query::ParserOptions::DEFAULT) {
            if let Some(found) = check_parsed(body, &parsed, depth + 1) {
                return Some((found.statement, found.hazard));
            }
        }
    }
    // PL/pgSQL (or SQL that did not parse), read as lowercase words with single spaces, its
    // comments and double quotes (quoted names) taken out: `"dblink_exec"/**/(` is a call.
    // Read twice: with the comments PostgreSQL sees, and with every `/* */` and `--` taken
    // out even inside strings, since a string may be SQL that `EXECUTE` runs.
    word_hazard(&blank_comments(Dialect::Postgres, body))
        .or_else(|| word_hazard(&strip_comment_marks(body)))
}

/// `text` without anything between `/*` and `*/`, or from `--` to the end of its line.
fn strip_comment_marks(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    loop {
        let block = rest.find("/*");
        let line = rest.find("--");
        match (block, line) {
            (Some(b), l) if l.is_none_or(|l| b < l) => {
                out.push_str(&rest[..b]);
                out.push(' ');
                rest = rest[b + 2..]
                    .split_once("*/")
                    .map_or("", |(_, after)| after);
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                out.push(' ');
                rest = rest[l..].split_once('\n').map_or("", |(_, after)| after);
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// What [`body_hazard`] finds in a body's text, read word by word.
fn word_hazard(body: &str) -> Option<(String, Hazard)> {
    let text = body
        .to_ascii_lowercase()
        .replace('"', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace(" (", "(")
        .replace("( ", "(");
    let word_at = |i: usize| {
        i == 0 || {
            let c = text.as_bytes()[i - 1];
            !(c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
        }
    };
    let found = |needle: &str| text.match_indices(needle).any(|(i, _)| word_at(i));
    // `dblink(` or `dblink_...(`, not `dblinks_count(`.
    for (i, _) in text.match_indices("dblink") {
        let rest = &text[i + "dblink".len()..];
        let name_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (suffix, after) = rest.split_at(name_end);
        if word_at(i) && (suffix.is_empty() || suffix.starts_with('_')) && after.starts_with('(') {
            return Some(("a dblink call".into(), Hazard::OtherConnection));
        }
    }
    // `ALTER DATABASE|ROLE|USER ... SET|RESET ...` within one statement (up to a `;`): what
    // later sessions start with. An `ALTER ROLE` without SET, or the words in a message
    // (`RAISE EXCEPTION 'cannot alter user x; ...'`), pass.
    for what in ["alter database", "alter role", "alter user"] {
        for (i, _) in text.match_indices(what) {
            let statement = text[i..].split(';').next().unwrap_or("");
            if word_at(i) && (statement.contains(" set ") || statement.contains(" reset ")) {
                return Some((
                    "ALTER DATABASE / ROLE ... SET (the setting it changes cannot be checked in a body)"
                        .into(),
                    Hazard::SearchPathDefault,
                ));
            }
        }
    }
    // Changing the session's identity or string syntax (reading them passes).
    for (needle, statement, hazard) in [
        (
            "set session authorization",
            "SET SESSION AUTHORIZATION",
            Hazard::SessionIdentity,
        ),
        (
            "reset session authorization",
            "RESET SESSION AUTHORIZATION",
            Hazard::SessionIdentity,
        ),
        (
            "set_config('session_authorization'",
            "SESSION AUTHORIZATION",
            Hazard::SessionIdentity,
        ),
        (
            "set standard_conforming_strings",
            "standard_conforming_strings",
            Hazard::StringSyntax,
        ),
        (
            "set_config('standard_conforming_strings'",
            "standard_conforming_strings",
            Hazard::StringSyntax,
        ),
        // A body that changes the client encoding (SET, SET LOCAL, set_config) would make the
        // server read this bind's later migrations in an encoding this check does not (SJIS
        // can hide a quote's backslash): any mention of it in a body is refused.
        (
            "client_encoding",
            "client_encoding in a body",
            Hazard::StringSyntax,
        ),
        ("set names '", "SET NAMES", Hazard::StringSyntax),
        ("set session names '", "SET NAMES", Hazard::StringSyntax),
        ("set local names '", "SET NAMES", Hazard::StringSyntax),
    ] {
        if found(needle) {
            return Some((statement.into(), hazard));
        }
    }
    None
}

/// SQL of a PostgreSQL migration that runs outside any transaction (`run_in_transaction =
/// false`): each statement alone, as it will run. What only a transaction block refuses
/// (`CREATE INDEX CONCURRENTLY`, `VACUUM`) is what such a migration is for; everything else
/// (transaction control, session settings, orchestrate's own tables, ...) is refused as
/// anywhere else.
pub fn check_sql_outside(backend: Backend, sql: &str) -> Option<Found> {
    let mut cursor = 0;
    for statement in orchestrate_core::split_statements(sql) {
        let at = sql[cursor..]
            .find(statement.trim())
            .map_or(cursor, |i| cursor + i);
        cursor = at;
        let line = sql[..at].matches('\n').count();
        if let Some(found) = check_sql(backend, &statement) {
            // Only what a migration outside a transaction is for: building, dropping or
            // rebuilding without locking writes, VACUUM. Not ALTER SYSTEM, databases or
            // tablespaces, which reach past this bind.
            let meant = found.statement.contains("CONCURRENTLY") || found.statement == "VACUUM";
            if found.hazard != Hazard::OutsideTransaction || !meant {
                return Some(Found {
                    line: found.line + line,
                    ..found
                });
            }
        }
    }
    touches_bookkeeping(dialect(backend), sql)
}

/// Both files of a migration: `up.sql`, then `down.sql` (each statement alone for a
/// PostgreSQL migration that runs outside any transaction, see [`check_sql_outside`]).
pub fn check_migration(backend: Backend, file: &MigrationFile) -> Result<(), Refusal> {
    let check = |sql: &str| {
        if backend == Backend::Postgres && !file.run_in_transaction {
            check_sql_outside(backend, sql)
        } else {
            check_sql(backend, sql)
        }
    };
    if let Some(found) = check(&file.up_sql) {
        return Err(Refusal::new("up.sql", found));
    }
    if let Some(found) = file.down_sql.as_deref().and_then(check) {
        return Err(Refusal::new("down.sql", found));
    }
    Ok(())
}

/// What an upgrade refuses of a migration: its `up.sql`; on MySQL also its `down.sql`,
/// which undoes it if the batch fails. On PostgreSQL and SQLite the `down.sql` runs only in a
/// downgrade, which checks it then; an upgrade reports it ([`down_sql_refusal`]).
pub fn check_upgrade(backend: Backend, file: &MigrationFile) -> Result<(), Refusal> {
    // MySQL: the down.sql undoes a failed batch. A PostgreSQL migration outside a transaction:
    // its down.sql undoes it where it succeeded when another bind fails it.
    if backend == Backend::Mysql || !file.run_in_transaction {
        return check_migration(backend, file);
    }
    let up_only = MigrationFile {
        down_sql: None,
        ..file.clone()
    };
    check_migration(backend, &up_only)
}

/// A `down.sql` that a downgrade of this migration would refuse (PostgreSQL and SQLite: an
/// upgrade goes on, and says so).
pub fn down_sql_refusal(backend: Backend, file: &MigrationFile) -> Option<Refusal> {
    if backend == Backend::Mysql || !file.run_in_transaction {
        return None;
    }
    let down_only = MigrationFile {
        up_sql: String::new(),
        ..file.clone()
    };
    check_migration(backend, &down_only).err()
}

/// Every migration of `files` an upgrade would refuse, as errors naming `bind`.
pub fn check_migrations<'f>(
    backend: Backend,
    bind: &str,
    files: impl IntoIterator<Item = &'f MigrationFile>,
) -> Vec<PlanError> {
    files
        .into_iter()
        .filter_map(|file| {
            check_upgrade(backend, file)
                .err()
                .map(|refusal| PlanError::Refused {
                    bind: bind.to_string(),
                    name: file.name.clone(),
                    refusal,
                })
        })
        .collect()
}

/// What a plan would run, checked: an upgrade's migrations, `up.sql` (on MySQL also the
/// `down.sql` that undoes it if the batch fails, see [`check_upgrade`]); a
/// downgrade's down SQL (the file or the stored copy) and, on MySQL, the `up.sql` that undoes
/// it if the batch fails. Applied migrations the batch does not touch are not checked.
pub fn check_plan(backend: Backend, chain: &Chain, plan: &Plan) -> Result<(), PlanError> {
    let refuse = |name: &str, refusal: Refusal| PlanError::Refused {
        bind: plan.bind.clone(),
        name: name.to_string(),
        refusal,
    };
    for step in &plan.steps {
        match step.down_source {
            None => {
                if let Some(file) = chain.find(&step.version) {
                    check_upgrade(backend, file).map_err(|r| refuse(&step.name, r))?;
                } else if let Some(found) = check_sql(backend, &step.sql) {
                    return Err(refuse(&step.name, Refusal::new("up.sql", found)));
                }
            }
            Some(source) => {
                let file = match source {
                    DownSqlSource::Stored => "the down.sql stored when it was applied",
                    DownSqlSource::File | DownSqlSource::FileDiffersFromStored => "down.sql",
                };
                if let Some(found) = check_sql(backend, &step.sql) {
                    return Err(refuse(&step.name, Refusal::new(file, found)));
                }
                if backend == Backend::Mysql {
                    if let Some(found) =
                        step.undo_sql.as_deref().and_then(|s| check_sql(backend, s))
                    {
                        return Err(refuse(&step.name, Refusal::new("up.sql", found)));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The first refused top-level statement of parsed PostgreSQL SQL.
fn postgres(sql: &str, parsed: &pg_query::protobuf::ParseResult) -> Option<Found> {
    for raw in &parsed.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            continue;
        };
        let offset = usize::try_from(raw.stmt_location).unwrap_or(0);
        let (line, first_word) = code_at(Dialect::Postgres, sql, offset);
        if let Some((statement, hazard)) = postgres_statement(node, &first_word) {
            return Some(Found {
                line,
                statement,
                hazard,
            });
        }
    }
    None
}

/// A call of a `dblink` function anywhere in `sql` (in a SELECT, a DO block's text is not
/// parsed): SQL on another connection, which commits whatever the batch does.
fn other_connection(sql: &str, parsed: &pg_query::ParseResult) -> Option<Found> {
    let name = parsed.functions().into_iter().find(|f| {
        let bare = f.rsplit('.').next().unwrap_or(f).to_ascii_lowercase();
        bare == "dblink" || bare.starts_with("dblink_")
    })?;
    let bare = name
        .rsplit('.')
        .next()
        .unwrap_or(&name)
        .to_ascii_lowercase();
    let offset = sql.to_ascii_lowercase().find(&bare).unwrap_or(0);
    let (line, _) = code_at(Dialect::Postgres, sql, line_start(sql, offset));
    Some(Found {
        line,
        statement: format!("{bare}(...)"),
        hazard: Hazard::OtherConnection,
    })
}

/// `set_config(name, ...)` of a setting `SET` may not change in a migration (the transaction's
/// characteristics, the session's identity), or of a name that is not a literal (which one it
/// is cannot be read): the function form of a refused `SET`.
fn session_setting_call(sql: &str, parsed: &pg_query::ParseResult) -> Option<Found> {
    if !parsed.functions().iter().any(|f| {
        f.rsplit('.')
            .next()
            .unwrap_or(f)
            .eq_ignore_ascii_case("set_config")
    }) {
        return None;
    }
    // Comments are blanked (same length): `-- no set_config(here)` is not a call.
    let lower = blank_comments(Dialect::Postgres, sql).to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("set_config") {
        let start = from + at;
        from = start + "set_config".len();
        let rest = lower[from..].trim_start();
        let Some(args) = rest.strip_prefix('(') else {
            continue;
        };
        let args = args.trim_start();
        let name = args
            .strip_prefix('\'')
            .and_then(|a| a.split_once('\''))
            .map(|(name, _)| name.to_string());
        let (statement, hazard) = match name.as_deref() {
            Some(
                "transaction_read_only"
                | "transaction_isolation"
                | "transaction_deferrable"
                | "default_transaction_read_only"
                | "default_transaction_isolation"
                | "default_transaction_deferrable",
            ) => (
                "set_config of a transaction setting",
                Hazard::TransactionSettings,
            ),
            Some("standard_conforming_strings" | "client_encoding") => {
                ("set_config of how strings are read", Hazard::StringSyntax)
            }
            Some("session_authorization") => (
                "set_config('session_authorization')",
                Hazard::SessionIdentity,
            ),
            Some(_) => continue,
            None => ("set_config of a name not written out", Hazard::Unreadable),
        };
        let (line, _) = code_at(Dialect::Postgres, sql, line_start(sql, start));
        return Some(Found {
            line,
            statement: statement.into(),
            hazard,
        });
    }
    // Called, but not written `set_config(` (a quoted name, a comment before the parenthesis):
    // which setting it changes cannot be read.
    if !lower.contains("set_config(") {
        return Some(Found {
            line: 1,
            statement: "set_config written so that its setting cannot be read".into(),
            hazard: Hazard::Unreadable,
        });
    }
    None
}

/// The offset of the start of the line holding `offset`.
fn line_start(sql: &str, offset: usize) -> usize {
    sql[..offset].rfind('\n').map_or(0, |i| i + 1)
}

/// Whether an option (`CONCURRENTLY`, `CONCURRENTLY true`) is on.
fn option_on(node: &pg_query::protobuf::Node, name: &str) -> bool {
    let Some(NodeEnum::DefElem(def)) = &node.node else {
        return false;
    };
    if !def.defname.eq_ignore_ascii_case(name) {
        return false;
    }
    match def.arg.as_ref().and_then(|a| a.node.as_ref()) {
        None => true,
        Some(NodeEnum::Boolean(b)) => b.boolval,
        Some(NodeEnum::Integer(i)) => i.ival != 0,
        Some(NodeEnum::String(s)) => !matches!(
            s.sval.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ),
        Some(_) => true,
    }
}

/// Whether an `ALTER DATABASE` / `ALTER ROLE ... SET` changes the default search_path
/// (setting or resetting it, or `RESET ALL`).
fn sets_search_path(set: Option<&pg_query::protobuf::VariableSetStmt>) -> bool {
    set.is_some_and(|v| {
        [
            "search_path",
            "role",
            "session_authorization",
            "standard_conforming_strings",
            "client_encoding",
        ]
        .iter()
        .any(|n| v.name.eq_ignore_ascii_case(n))
            || VariableSetKind::try_from(v.kind).ok() == Some(VariableSetKind::VarResetAll)
    })
}

/// `ALTER DATABASE|ROLE ... SET <name>`, or `(RESET ALL)`.
fn alter_set_name(what: &str, set: Option<&pg_query::protobuf::VariableSetStmt>) -> String {
    let name = set.map_or("", |v| v.name.as_str());
    format!(
        "ALTER {what} ... SET {}",
        if name.is_empty() { "(RESET ALL)" } else { name }
    )
}

/// What one top-level statement would do to a batch, if anything. `first_word` is the
/// statement's first word as written (`END` and `COMMIT` are one node).
fn postgres_statement(node: &NodeEnum, first_word: &str) -> Option<(String, Hazard)> {
    let named = |s: &str, h: Hazard| Some((s.to_string(), h));
    match node {
        NodeEnum::TransactionStmt(t) => transaction_statement(t, first_word),
        NodeEnum::VariableSetStmt(v) => variable_set(v),
        NodeEnum::AlterDatabaseSetStmt(a) if sets_search_path(a.setstmt.as_ref()) => Some((
            alter_set_name("DATABASE", a.setstmt.as_ref()),
            Hazard::SearchPathDefault,
        )),
        NodeEnum::AlterRoleSetStmt(a) if sets_search_path(a.setstmt.as_ref()) => Some((
            alter_set_name("ROLE", a.setstmt.as_ref()),
            Hazard::SearchPathDefault,
        )),
        NodeEnum::DiscardStmt(d) if d.target == DiscardMode::DiscardAll as i32 => {
            named("DISCARD ALL", Hazard::SessionIdentity)
        }
        NodeEnum::IndexStmt(i) if i.concurrent => {
            named("CREATE INDEX CONCURRENTLY", Hazard::OutsideTransaction)
        }
        NodeEnum::DropStmt(d)
            if d.concurrent && d.remove_type == ObjectType::ObjectIndex as i32 =>
        {
            named("DROP INDEX CONCURRENTLY", Hazard::OutsideTransaction)
        }
        NodeEnum::ReindexStmt(r) if r.params.iter().any(|p| option_on(p, "concurrently")) => {
            named("REINDEX CONCURRENTLY", Hazard::OutsideTransaction)
        }
        NodeEnum::VacuumStmt(v) if v.is_vacuumcmd => named("VACUUM", Hazard::OutsideTransaction),
        NodeEnum::CreatedbStmt(_) => named("CREATE DATABASE", Hazard::OutsideTransaction),
        NodeEnum::DropdbStmt(_) => named("DROP DATABASE", Hazard::OutsideTransaction),
        NodeEnum::AlterSystemStmt(_) => named("ALTER SYSTEM", Hazard::OutsideTransaction),
        NodeEnum::CreateTableSpaceStmt(_) => named("CREATE TABLESPACE", Hazard::OutsideTransaction),
        NodeEnum::DropTableSpaceStmt(_) => named("DROP TABLESPACE", Hazard::OutsideTransaction),
        NodeEnum::AlterDatabaseStmt(a) if a.options.iter().any(|o| option_on(o, "tablespace")) => {
            named(
                "ALTER DATABASE ... SET TABLESPACE",
                Hazard::OutsideTransaction,
            )
        }
        NodeEnum::AlterTableStmt(a) if detaches_concurrently(a) => named(
            "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY",
            Hazard::OutsideTransaction,
        ),
        _ => None,
    }
}

/// Transaction control: what ends, opens or two-phases the batch's transaction (savepoints
/// are fine).
fn transaction_statement(
    t: &pg_query::protobuf::TransactionStmt,
    first_word: &str,
) -> Option<(String, Hazard)> {
    let named = |s: &str, h: Hazard| Some((s.to_string(), h));
    let chain = if t.chain { " AND CHAIN" } else { "" };
    match TransactionStmtKind::try_from(t.kind).ok()? {
        TransactionStmtKind::TransStmtBegin => named("BEGIN", Hazard::StartsTransaction),
        TransactionStmtKind::TransStmtStart => {
            named("START TRANSACTION", Hazard::StartsTransaction)
        }
        TransactionStmtKind::TransStmtCommit | TransactionStmtKind::TransStmtRollback => {
            Some((format!("{first_word}{chain}"), Hazard::EndsTransaction))
        }
        TransactionStmtKind::TransStmtPrepare => named("PREPARE TRANSACTION", Hazard::TwoPhase),
        TransactionStmtKind::TransStmtCommitPrepared => named("COMMIT PREPARED", Hazard::TwoPhase),
        TransactionStmtKind::TransStmtRollbackPrepared => {
            named("ROLLBACK PREPARED", Hazard::TwoPhase)
        }
        TransactionStmtKind::TransStmtSavepoint
        | TransactionStmtKind::TransStmtRelease
        | TransactionStmtKind::TransStmtRollbackTo
        | TransactionStmtKind::Undefined => None,
    }
}

/// `SET` / `RESET` of the session's identity, transaction characteristics or string syntax.
fn variable_set(v: &pg_query::protobuf::VariableSetStmt) -> Option<(String, Hazard)> {
    let named = |s: &str, h: Hazard| Some((s.to_string(), h));
    let kind = VariableSetKind::try_from(v.kind).ok()?;
    let name = v.name.to_ascii_lowercase();
    match name.as_str() {
        "session_authorization" if kind == VariableSetKind::VarReset => {
            named("RESET SESSION AUTHORIZATION", Hazard::SessionIdentity)
        }
        "session_authorization" => named("SET SESSION AUTHORIZATION", Hazard::SessionIdentity),
        "default_transaction_read_only"
        | "default_transaction_isolation"
        | "default_transaction_deferrable" => {
            Some((format!("SET {name}"), Hazard::TransactionSettings))
        }
        "client_encoding" if !safe_encoding(v) => named(
            "SET client_encoding of an encoding this check cannot read",
            Hazard::StringSyntax,
        ),
        "transaction" | "transaction snapshot" => {
            named("SET TRANSACTION", Hazard::TransactionSettings)
        }
        "session characteristics" => named(
            "SET SESSION CHARACTERISTICS AS TRANSACTION",
            Hazard::TransactionSettings,
        ),
        "standard_conforming_strings" => {
            named("SET standard_conforming_strings", Hazard::StringSyntax)
        }
        "transaction_isolation" | "transaction_read_only" | "transaction_deferrable" => {
            let verb = if kind == VariableSetKind::VarReset {
                "RESET"
            } else {
                "SET"
            };
            Some((format!("{verb} {name}"), Hazard::TransactionSettings))
        }
        _ => None,
    }
}

/// Whether `SET client_encoding` (or `SET NAMES`) names an encoding in which no byte of a
/// character is a backslash or a quote, so that the server reads strings as this check does.
fn safe_encoding(v: &pg_query::protobuf::VariableSetStmt) -> bool {
    let value = v.args.first().and_then(|a| match a.node.as_ref() {
        Some(NodeEnum::AConst(c)) => match c.val.as_ref() {
            Some(pg_query::protobuf::a_const::Val::Sval(s)) => Some(s.sval.to_ascii_uppercase()),
            _ => None,
        },
        _ => None,
    });
    // Only what the check reads the files as (UTF-8; SQL_ASCII passes the bytes as they are):
    // another encoding re-encodes every later migration's text (LATIN1 turns `café` into
    // `cafÃ©`), and DEFAULT or RESET brings back whatever the server, database or role says.
    matches!(
        value.as_deref(),
        Some("UTF8" | "UTF-8" | "UNICODE" | "SQL_ASCII")
    )
}

/// `ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY`.
fn detaches_concurrently(a: &pg_query::protobuf::AlterTableStmt) -> bool {
    a.cmds.iter().any(|c| {
        let Some(NodeEnum::AlterTableCmd(cmd)) = &c.node else {
            return false;
        };
        cmd.subtype == AlterTableType::AtDetachPartition as i32
            && matches!(
                cmd.def.as_ref().and_then(|d| d.node.as_ref()),
                Some(NodeEnum::PartitionCmd(p)) if p.concurrent
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(backend: Backend, sql: &str) -> Option<(String, usize)> {
        check_sql(backend, sql).map(|f| (f.statement, f.line))
    }

    fn parses(sql: &str) -> bool {
        pg_query::parse(sql, pg_query::ParserOptions::DEFAULT).is_ok()
    }

    #[track_caller]
    fn refused(sql: &str, name: &str, line: usize) {
        assert!(parses(sql), "pg_query should parse {sql}");
        assert_eq!(
            find(Backend::Postgres, sql),
            Some((name.to_string(), line)),
            "{sql}"
        );
    }

    #[track_caller]
    fn allowed(sql: &str) {
        assert!(parses(sql), "pg_query should parse {sql}");
        assert_eq!(find(Backend::Postgres, sql), None, "{sql}");
    }

    #[test]
    fn postgres_statements_that_end_or_escape_the_batch() {
        for (sql, name) in [
            ("COMMIT", "COMMIT"),
            ("COMMIT AND CHAIN", "COMMIT AND CHAIN"),
            ("END", "END"),
            ("ROLLBACK", "ROLLBACK"),
            ("ABORT", "ABORT"),
            ("BEGIN", "BEGIN"),
            ("START TRANSACTION", "START TRANSACTION"),
            ("PREPARE TRANSACTION 'sneaky'", "PREPARE TRANSACTION"),
            ("COMMIT PREPARED 'x'", "COMMIT PREPARED"),
            ("ROLLBACK PREPARED 'x'", "ROLLBACK PREPARED"),
            (
                "SET SESSION AUTHORIZATION postgres",
                "SET SESSION AUTHORIZATION",
            ),
            ("RESET SESSION AUTHORIZATION", "RESET SESSION AUTHORIZATION"),
            ("DISCARD ALL", "DISCARD ALL"),
            ("SET TRANSACTION READ ONLY", "SET TRANSACTION"),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                "SET SESSION CHARACTERISTICS AS TRANSACTION",
            ),
            (
                "SET transaction_read_only = on",
                "SET transaction_read_only",
            ),
            (
                "CREATE INDEX CONCURRENTLY i ON t (a)",
                "CREATE INDEX CONCURRENTLY",
            ),
            (
                "CREATE UNIQUE INDEX CONCURRENTLY i ON t (a)",
                "CREATE INDEX CONCURRENTLY",
            ),
            ("DROP INDEX CONCURRENTLY i", "DROP INDEX CONCURRENTLY"),
            ("REINDEX INDEX CONCURRENTLY i", "REINDEX CONCURRENTLY"),
            ("REINDEX (CONCURRENTLY) TABLE t", "REINDEX CONCURRENTLY"),
            ("VACUUM t", "VACUUM"),
            ("CREATE DATABASE x", "CREATE DATABASE"),
            ("DROP DATABASE x", "DROP DATABASE"),
            ("ALTER SYSTEM SET work_mem = '1MB'", "ALTER SYSTEM"),
            ("CREATE TABLESPACE s LOCATION '/x'", "CREATE TABLESPACE"),
            ("DROP TABLESPACE s", "DROP TABLESPACE"),
            (
                "ALTER DATABASE x SET TABLESPACE s",
                "ALTER DATABASE ... SET TABLESPACE",
            ),
            (
                "ALTER TABLE p DETACH PARTITION c CONCURRENTLY",
                "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY",
            ),
        ] {
            refused(
                &format!("CREATE TABLE s (x int);\n-- then\n\n{sql};\nSELECT 1;"),
                name,
                4,
            );
        }
    }

    /// Found by a third adversarial review: `dblink_exec` ran DDL on another connection,
    /// which stayed committed when the batch rolled back.
    #[test]
    fn set_config_of_refused_settings_is_refused() {
        refused(
            "SELECT set_config('transaction_read_only', 'on', true);",
            "set_config of a transaction setting",
            1,
        );
        refused(
            "SELECT 1;\nSELECT set_config('session_authorization', 'bob', false);",
            "set_config('session_authorization')",
            2,
        );
        assert_eq!(
            find(
                Backend::Postgres,
                "SELECT set_config('search_path', 'app, public', true);"
            ),
            None
        );
    }

    #[test]
    fn dblink_calls_are_refused() {
        refused(
            "CREATE TABLE t (x int);\nSELECT dblink_exec('dbname=app', 'CREATE TABLE leaked (x int)');",
            "dblink_exec(...)",
            2,
        );
        refused(
            "SELECT * FROM public.dblink('dbname=app', 'SELECT 1') AS t(x int);",
            "dblink(...)",
            1,
        );
    }

    #[test]
    fn search_path_defaults_are_refused() {
        refused(
            "CREATE SCHEMA app;\nALTER DATABASE mydb SET search_path = app;",
            "ALTER DATABASE ... SET search_path",
            2,
        );
        refused(
            "ALTER ROLE app IN DATABASE mydb SET search_path TO app, public;",
            "ALTER ROLE ... SET search_path",
            1,
        );
        refused(
            "ALTER ROLE app RESET ALL;",
            "ALTER ROLE ... SET (RESET ALL)",
            1,
        );
        refused(
            "ALTER ROLE postgres IN DATABASE x SET role = 'owner';",
            "ALTER ROLE ... SET role",
            1,
        );
        refused(
            "SET standard_conforming_strings = off;",
            "SET standard_conforming_strings",
            1,
        );
        allowed("ALTER DATABASE mydb SET work_mem = '64MB'; SET search_path TO app, public;");
    }

    #[test]
    fn postgres_statements_that_are_fine() {
        allowed(
            "SAVEPOINT a; ROLLBACK TO SAVEPOINT a; RELEASE a; ANALYZE t; REINDEX INDEX i; \
             DISCARD PLANS; RESET ALL; SET search_path = app; SET LOCAL lock_timeout = '1s'; \
             SET ROLE app; RESET ROLE; PREPARE q AS SELECT 1; EXECUTE q; \
             ALTER DATABASE x SET work_mem = '1MB'; ALTER TABLE p DETACH PARTITION c; \
             CREATE INDEX i ON t (a); DROP INDEX i; REINDEX (CONCURRENTLY false) TABLE t;",
        );
    }

    #[test]
    fn postgres_lexical_cases() {
        refused(
            "INSERT INTO t VALUES (E'it\\'s');\nCREATE INDEX CONCURRENTLY i ON t (a);",
            "CREATE INDEX CONCURRENTLY",
            2,
        );
        refused(
            "/* outer /* nested */ still; COMMIT; */\nCREATE INDEX CONCURRENTLY i ON t (a);",
            "CREATE INDEX CONCURRENTLY",
            2,
        );
        allowed("SELECT 'COMMIT; BEGIN'; -- COMMIT;\n/* /* */ COMMIT; */ SELECT E'\\'; COMMIT;';");
        allowed("CREATE TABLE \"commit\" (\"end\" int); SELECT \"begin\" FROM \"commit\";");
        allowed("DO $$ BEGIN PERFORM 1; END $$;");
        allowed("DO $do$ BEGIN IF true THEN COMMIT; END IF; END $do$;");
        allowed(
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$\nBEGIN\n  IF true THEN\n    PERFORM 1;\n  END IF;\nEND\n$f$;",
        );
        allowed(
            "CREATE FUNCTION f(a int) RETURNS int LANGUAGE SQL BEGIN ATOMIC SELECT CASE WHEN a > 0 THEN 1 END; END;",
        );
        refused("SELECT '$$';\nCOMMIT;", "COMMIT", 2);
        refused("SELECT $a$ $$ COMMIT; $$ $a$;\n\nROLLBACK;", "ROLLBACK", 3);
        refused("SELECT 1; -- first\n/* a\n b */ END;", "END", 3);
    }

    #[test]
    fn unparsable_postgres_falls_back_to_the_lexer() {
        let sql = "CREATE MAGIC THING x;\nCOMMIT;";
        assert!(!parses(sql));
        assert_eq!(
            find(Backend::Postgres, sql),
            Some(("COMMIT".to_string(), 2))
        );
        assert_eq!(find(Backend::Postgres, "CREATE MAGIC THING x;"), None);
    }

    /// Found by a sixth adversarial review: a DO block or a function body called dblink, or
    /// changed the database's default search_path, past a check that read top-level
    /// statements only.
    #[test]
    fn review6_bodies_are_read() {
        refused(
            "CREATE TABLE t (id int);\nDO $$ BEGIN PERFORM dblink_exec('dbname=a', 'CREATE TABLE leaked (x int)'); END $$;",
            "a dblink call in a DO block",
            2,
        );
        refused(
            "CREATE FUNCTION leak(q text) RETURNS text LANGUAGE sql AS 'SELECT dblink_exec(''dbname=a'', q)';",
            "dblink_exec(...) in a function or procedure body",
            1,
        );
        refused(
            "DO $$ BEGIN EXECUTE 'ALTER DATABASE app SET search_path = elsewhere'; END $$;",
            "ALTER DATABASE / ROLE ... SET (the setting it changes cannot be checked in a body) in a DO block",
            1,
        );
        refused(
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $f$\nBEGIN\n  PERFORM set_config('session_authorization', 'x', false);\nEND $f$;",
            "SESSION AUTHORIZATION in a function or procedure body",
            1,
        );
        refused(
            "CREATE PROCEDURE p() LANGUAGE sql AS $$ ALTER ROLE app SET search_path = x $$;",
            "ALTER ROLE ... SET search_path in a function or procedure body",
            1,
        );
        // Ordinary bodies pass: DDL, dynamic SQL, a function's own search_path setting.
        allowed(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_tables WHERE tablename = 't') THEN EXECUTE format('CREATE TABLE %I (id int)', 't'); END IF; END $$;",
        );
        allowed(
            "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql SET search_path = public AS $$\nBEGIN NEW.updated_at := now(); RETURN NEW; END $$;",
        );
        allowed("CREATE FUNCTION add(a int, b int) RETURNS int LANGUAGE sql AS 'SELECT a + b';");
        allowed("CREATE FUNCTION old_dblinker() RETURNS int LANGUAGE sql AS 'SELECT 1';");
    }

    /// Found by a seventh adversarial review: ways around the body reading (a quoted or
    /// commented call, a file pg_query cannot parse, words run together), and escaped
    /// spellings of the tool's own tables.
    #[test]
    fn review7_bodies_and_names_however_written() {
        refused(
            "DO $$ BEGIN PERFORM \"dblink_exec\"('dbname=a', 'CREATE TABLE leaked (x int)'); END $$;",
            "a dblink call in a DO block",
            1,
        );
        refused(
            "DO $$ BEGIN PERFORM dblink_exec/**/('dbname=a', 'x'); END $$;",
            "a dblink call in a DO block",
            1,
        );
        refused(
            "DO $$ BEGIN EXECUTE 'ALTER/**/DATABASE app SET search_path = x'; END $$;",
            "ALTER DATABASE / ROLE ... SET (the setting it changes cannot be checked in a body) in a DO block",
            1,
        );
        refused(
            "DO $$ BEGIN EXECUTE 'ALTER DATABASE\"app\" SET search_path = x'; END $$;",
            "ALTER DATABASE / ROLE ... SET (the setting it changes cannot be checked in a body) in a DO block",
            1,
        );
        // A file pg_query cannot parse: its strings are read as bodies.
        let unparsable = "CREATE TABLE audit (id int, system_user text);\nDO $$ BEGIN PERFORM dblink_exec('dbname=a', 'x'); END $$;";
        assert!(!parses(unparsable) || find(Backend::Postgres, unparsable).is_some());
        assert_eq!(
            find(Backend::Postgres, "CREATE TABLE t (x int) WITH SOMETHING NEW;\nDO $$ BEGIN PERFORM dblink_exec('dbname=a', 'x'); END $$;"),
            Some(("a dblink call in a string or body".to_string(), 2))
        );
        for sql in [
            "CREATE TRIGGER x BEFORE UPDATE ON U&\"orchestrate\\005fbatches\" FOR EACH ROW EXECUTE FUNCTION f();",
            "DELETE FROM U&\"orchestrate\\005fhistory\";",
            "UPDATE public.U&\"__diesel\\005fschema\\005fmigrations\" SET version = '9';",
            "DO $$ BEGIN EXECUTE U&'DELETE FROM orchestrate\\005fhistory'; END $$;",
            "DO $$ BEGIN EXECUTE E'DELETE FROM orchestrate\\x5fhistory'; END $$;",
            "DO $$ BEGIN EXECUTE E'DELETE FROM orchestrate\\137history'; END $$;",
            // Found by an eighth review: an escape character of the text's own, and `\U`.
            "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN UPDATE U&\"orchestrate!005fbatches\" UESCAPE '!' SET state = 'abort'; RETURN NULL; END $$;",
            "SELECT E'orchestrate\\U0000005Fbatches';",
            "SELECT U&'orchestrate!+00005fbatches' UESCAPE '!';",
        ] {
            assert!(
                find(Backend::Postgres, sql).is_some_and(|(n, _)| n.starts_with("a statement naming")),
                "{sql}: {:?}",
                find(Backend::Postgres, sql)
            );
        }
    }

    /// Ordinary migrations the seventh review found refused.
    #[test]
    fn review7_ordinary_migrations_pass() {
        allowed("CREATE FUNCTION guard() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  RAISE EXCEPTION 'You cannot alter user admin; ask a DBA';\nEND $$;");
        allowed("CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n  INSERT INTO audit_log VALUES (current_setting('session_authorization'), now());\n  RETURN NEW;\nEND $$;");
        allowed("CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$\nBEGIN\n  -- Note: we never ALTER ROLE x SET anything here\n  PERFORM 1;\nEND $$;");
        allowed("SELECT dblinks_count();");
        allowed("SAVEPOINT \"a\";\nCREATE TABLE t (id int);\nROLLBACK TO a;");
        allowed("SAVEPOINT a;\nROLLBACK TO SAVEPOINT \"a\";");
        allowed("-- we avoid set_config(here) on purpose\nSELECT set_config('search_path', 'public', true);");
        allowed("CREATE TABLE orchestrate_history_view (id int);");
        assert_eq!(
            find(
                Backend::Sqlite,
                "CREATE TABLE t (orchestrate_history_view int);"
            ),
            None
        );
    }

    /// Found by the seventh review: `RELEASE s` then `ROLLBACK TO s` reached the savepoint an
    /// earlier migration left open.
    #[test]
    fn review7_a_released_savepoint_is_gone() {
        refused(
            "SAVEPOINT s;\nRELEASE s;\nROLLBACK TO s;",
            "ROLLBACK TO SAVEPOINT s",
            3,
        );
        refused(
            "SAVEPOINT s;\nSAVEPOINT t;\nRELEASE s;\nRELEASE t;",
            "RELEASE SAVEPOINT t",
            4,
        );
        allowed("SAVEPOINT s;\nSAVEPOINT t;\nROLLBACK TO s;\nRELEASE s;");
        refused(
            "SAVEPOINT s;\nSAVEPOINT t;\nROLLBACK TO s;\nRELEASE t;",
            "RELEASE SAVEPOINT t",
            4,
        );
    }

    /// A PostgreSQL migration that runs outside a transaction may hold what only a
    /// transaction block refuses, statement by statement; nothing else.
    #[test]
    fn outside_a_transaction_only_the_concurrent_forms_are_allowed() {
        let outside =
            |sql: &str| check_sql_outside(Backend::Postgres, sql).map(|f| (f.statement, f.line));
        assert_eq!(
            outside("CREATE INDEX CONCURRENTLY i ON t (a);\nDROP INDEX CONCURRENTLY IF EXISTS j;"),
            None
        );
        assert_eq!(
            outside("CREATE INDEX CONCURRENTLY i ON t (a);\n\nCOMMIT;").map(|f| f.1),
            Some(3)
        );
        assert!(outside("CREATE INDEX CONCURRENTLY i ON t (a);\nDISCARD ALL;").is_some());
        assert!(outside("CREATE INDEX CONCURRENTLY i ON orchestrate_batches (state);").is_some());
        // Found by a twelfth review: what reaches past the bind stays refused.
        for sql in [
            "ALTER SYSTEM SET search_path = nowhere;",
            "DROP DATABASE other;",
            "CREATE TABLESPACE ts LOCATION '/tmp';",
        ] {
            assert!(outside(sql).is_some(), "{sql}");
        }
        assert_eq!(outside("VACUUM ANALYZE t;"), None);
        // In a transaction the same statement is refused.
        assert!(check_sql(Backend::Postgres, "CREATE INDEX CONCURRENTLY i ON t (a);").is_some());
    }

    /// Found by a sixth adversarial review: a migration's trigger turned the decider's
    /// `commit` into `abort`, and a MySQL migration deleted its own marks.
    #[test]
    fn review6_bookkeeping_tables_are_refused() {
        refused(
            "CREATE TABLE d (id int);\nCREATE TRIGGER flip BEFORE UPDATE ON orchestrate_batches FOR EACH ROW EXECUTE FUNCTION flip();",
            "a statement naming orchestrate_batches",
            2,
        );
        refused(
            "DO $$ BEGIN EXECUTE 'DELETE FROM \"orchestrate_history\"'; END $$;",
            "a statement naming orchestrate_history",
            1,
        );
        refused(
            "SELECT count(*) FROM public.__diesel_schema_migrations;",
            "a statement naming __diesel_schema_migrations",
            1,
        );
        // The guard on orchestrate_batches, by its names.
        refused(
            "ALTER TABLE t DISABLE TRIGGER orchestrate_guard;",
            "a statement naming orchestrate_guard",
            1,
        );
        refused(
            "DROP FUNCTION orchestrate_batches_guard() CASCADE;",
            "a statement naming orchestrate_batches_guard",
            1,
        );
        allowed("CREATE TABLE orchestrate_guards (id int);");
        allowed("-- orchestrate_batches is orchestrate's own\nCREATE TABLE batches (id int);");
        for backend in [Backend::Mysql, Backend::Sqlite] {
            assert_eq!(
                find(
                    backend,
                    "CREATE TABLE m (id int);\nDELETE FROM `orchestrate_in_progress`;"
                ),
                Some(("a statement naming orchestrate_in_progress".to_string(), 2)),
                "{backend:?}"
            );
            assert_eq!(
                find(backend, "# orchestrate_in_progress\nSELECT 1;").is_some(),
                backend == Backend::Sqlite
            );
        }
    }

    /// Found by a sixth adversarial review: a savepoint left open by one migration was rolled
    /// back to by the next, undoing the first one's version row.
    #[test]
    fn review6_savepoints_stay_within_their_migration() {
        allowed("SAVEPOINT a;\nCREATE TABLE t (id int);\nROLLBACK TO SAVEPOINT a;\nRELEASE a;");
        allowed("SAVEPOINT \"A b\";\nROLLBACK TRANSACTION TO \"A b\";");
        refused(
            "CREATE TABLE t (id int);\nROLLBACK TO SAVEPOINT s;",
            "ROLLBACK TO SAVEPOINT s",
            2,
        );
        refused("RELEASE SAVEPOINT s;", "RELEASE SAVEPOINT s", 1);
        refused("SAVEPOINT t;\nRELEASE s;", "RELEASE SAVEPOINT s", 2);
        for backend in [Backend::Mysql, Backend::Sqlite] {
            assert_eq!(
                find(backend, "INSERT INTO t VALUES (1);\nROLLBACK WORK TO s;"),
                Some(("ROLLBACK TO SAVEPOINT s".to_string(), 2)),
                "{backend:?}"
            );
            assert_eq!(
                find(backend, "SAVEPOINT s;\nROLLBACK TO s;"),
                None,
                "{backend:?}"
            );
        }
    }

    /// Found by a sixth adversarial review: a MySQL migration turned off the server's
    /// durability (`innodb_flush_log_at_trx_commit = 0`) before the batch's decision.
    #[test]
    fn review6_mysql_server_settings_are_refused() {
        for sql in [
            "SET GLOBAL innodb_flush_log_at_trx_commit = 0;",
            "SET @@global.sync_binlog = 0;",
            "SET PERSIST max_connections = 10;",
            "SET PERSIST_ONLY x = 1;",
            "SET @a = 1, GLOBAL sync_binlog = 0;",
        ] {
            assert!(
                find(Backend::Mysql, sql).is_some_and(|(n, _)| n.contains("whole server")),
                "{sql}: {:?}",
                find(Backend::Mysql, sql)
            );
        }
        assert_eq!(find(Backend::Mysql, "SET @global = 1;"), None);
        assert_eq!(find(Backend::Mysql, "SET @x = 'GLOBAL';"), None);
    }

    #[test]
    fn other_backends_use_their_lexer() {
        assert_eq!(
            find(Backend::Sqlite, "CREATE TABLE s (x int);\nCOMMIT;"),
            Some(("COMMIT".to_string(), 2))
        );
        assert_eq!(
            find(Backend::Mysql, "SELECT 'a\\'; COMMIT';\nUSE x;"),
            Some(("USE".to_string(), 2))
        );
        assert_eq!(
            find(Backend::Mysql, "CREATE PROCEDURE p() BEGIN COMMIT; END"),
            None
        );
    }

    fn file(up: &str, down: Option<&str>) -> MigrationFile {
        let chain = Chain::new(
            "app",
            vec![orchestrate_core::MigrationSource {
                folder: "1_x".into(),
                location: "migrations/app/1_x".into(),
                up_sql: Some(up.into()),
                down_sql: down.map(String::from),
                run_in_transaction: true,
                data_only: false,
            }],
        )
        .unwrap();
        chain.migrations[0].clone()
    }

    #[test]
    fn both_files_are_checked_and_named() {
        let ok = file("CREATE TABLE t (id int);", Some("DROP TABLE t;"));
        assert_eq!(check_migration(Backend::Postgres, &ok), Ok(()));
        let bad_down = file(
            "CREATE TABLE t (id int);",
            Some("DROP TABLE t;\nCREATE INDEX CONCURRENTLY i ON u (a);"),
        );
        let r = check_migration(Backend::Postgres, &bad_down).unwrap_err();
        assert_eq!((r.file.as_str(), r.line), ("down.sql", 2));
        // An upgrade refuses only the up.sql on PostgreSQL (the down.sql is reported, and
        // refused by the downgrade that would run it); on MySQL the down.sql undoes a failed
        // batch, so it is refused with the upgrade.
        assert!(check_migrations(Backend::Postgres, "app", [&ok, &bad_down]).is_empty());
        assert_eq!(
            down_sql_refusal(Backend::Postgres, &bad_down).map(|r| (r.file, r.line)),
            Some(("down.sql".to_string(), 2))
        );
        assert_eq!(down_sql_refusal(Backend::Postgres, &ok), None);
        let bad_down_mysql = file(
            "CREATE TABLE t (id int);",
            Some("DROP TABLE t;\nLOCK TABLES u WRITE;"),
        );
        let errors = check_migrations(Backend::Mysql, "app", [&ok, &bad_down_mysql]);
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert!(
            text.starts_with("bind `app`: migration 1_x, down.sql line 2: LOCK TABLES"),
            "{text}"
        );
    }
}

/// Probes of a fourth adversarial review (PostgreSQL through pg_query).
#[cfg(test)]
mod review4 {
    use super::*;

    fn passing<'a>(sqls: &[&'a str]) -> Vec<&'a str> {
        sqls.iter()
            .copied()
            .filter(|sql| check_sql(Backend::Postgres, sql).is_none())
            .collect()
    }

    /// A realistic migration pg_query 18 cannot parse but a PostgreSQL <= 15 server runs
    /// (`system_user` is a reserved word from 16 on): the whole file falls back to the hand
    /// lexer, which knows neither dblink nor set_config nor ALTER ROLE ... SET search_path.
    #[test]
    fn review4_postgres_fallback_drops_refusals() {
        let head = "CREATE TABLE audit (id int, system_user text);\n";
        assert!(
            pg_query::parse(head, pg_query::ParserOptions::DEFAULT).is_err(),
            "pg_query should not parse {head}"
        );
        let passed: Vec<String> = [
            "SELECT dblink_exec('dbname=other', 'INSERT INTO log VALUES (1)');",
            "SELECT set_config('transaction_read_only', 'on', false);",
            "ALTER ROLE app SET search_path = other;",
            "SET standard_conforming_strings = off;",
        ]
        .iter()
        .map(|s| format!("{head}{s}"))
        .filter(|sql| check_sql(Backend::Postgres, sql).is_none())
        .collect();
        assert!(passed.is_empty(), "these pass the check: {passed:#?}");
    }

    /// dblink called where pg_query's function list may not look: a CHECK constraint or a
    /// volatile DEFAULT is evaluated for every existing row when the column/constraint is
    /// added.
    #[test]
    fn review4_dblink_in_ddl_expressions() {
        let passed = passing(&[
            "ALTER TABLE t ADD CONSTRAINT c CHECK (dblink_exec('dbname=o', 'DELETE FROM x') IS NOT NULL);",
            "ALTER TABLE t ADD COLUMN c text DEFAULT dblink_exec('dbname=o', 'DELETE FROM x');",
            "UPDATE t SET c = (SELECT dblink_exec('dbname=o', 'DELETE FROM x'));",
            "CREATE TABLE t2 AS SELECT dblink_exec('dbname=o', 'DELETE FROM x') AS r;",
        ]);
        assert!(passed.is_empty(), "these pass the check: {passed:?}");
    }

    /// set_config through a quoted function name (what SQL generators write): pg_query lists
    /// `set_config`, the text scan finds `"set_config"(` and skips it.
    #[test]
    fn review4_set_config_quoted_name() {
        let passed = passing(&[
            "SELECT \"set_config\"('transaction_read_only', 'on', false);",
            "SELECT pg_catalog.\"set_config\"('session_authorization', 'bob', false);",
            "SELECT set_config /* x */ ('transaction_read_only', 'on', false);",
        ]);
        assert!(passed.is_empty(), "these pass the check: {passed:?}");
    }

    /// The function and per-database/role forms of the refused `SET standard_conforming_strings`,
    /// and `SET client_encoding` to an encoding whose second byte can be `\` (SJIS, BIG5, GBK,
    /// GB18030, JOHAB): PostgreSQL converts a query from the client encoding *before* lexing,
    /// so UTF-8 `丁` (E4 B8 81) + `\\'` is read as E4B8, 815C, then `\'` (an escaped quote in
    /// an E'' string), while the check reads `\\` and the string's end. A later migration of
    /// the same batch (`SELECT E'丁\\', ' ; COMMIT; -- ';`) then commits the batch's work so far.
    #[test]
    fn review4_postgres_string_syntax_other_forms() {
        let passed = passing(&[
            "SELECT set_config('standard_conforming_strings', 'off', false);",
            "SELECT pg_catalog.set_config('standard_conforming_strings', 'off', true);",
            "ALTER DATABASE app SET standard_conforming_strings = off;",
            "ALTER ROLE app SET standard_conforming_strings = off;",
            "SET client_encoding = 'SJIS';",
            "SET NAMES 'BIG5';",
            "SELECT set_config('client_encoding', 'GBK', false);",
        ]);
        assert!(passed.is_empty(), "these pass the check: {passed:?}");
    }

    /// Review 18: the client encoding changed from a body (where the top-level check does not
    /// look), or to an encoding that re-encodes later migrations' text, or back to a default
    /// the server decides. The encodings the check reads as the server does still pass.
    #[test]
    fn review18_client_encoding_in_bodies_and_defaults() {
        let passed = passing(&[
            "DO $$ BEGIN PERFORM set_config('client_encoding', 'SJIS', false); END $$;",
            "DO $$ DECLARE x int; BEGIN SET client_encoding = 'SJIS'; END $$;",
            "DO $$ BEGIN SET LOCAL client_encoding TO 'BIG5'; END $$;",
            "DO $$ BEGIN SET NAMES 'GBK'; END $$;",
            "CREATE FUNCTION f() RETURNS void LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'SET client_encoding = ''SJIS'''; END $$;",
            "SET client_encoding = 'LATIN1';",
            "SET client_encoding TO DEFAULT;",
            "RESET client_encoding;",
            "SET NAMES DEFAULT;",
        ]);
        assert!(passed.is_empty(), "these pass the check: {passed:?}");
        for fine in [
            "SET client_encoding = 'UTF8';",
            "SET NAMES 'UTF8';",
            "SET client_encoding TO 'SQL_ASCII';",
        ] {
            assert_eq!(
                check_sql(Backend::Postgres, fine),
                None,
                "{fine} is refused"
            );
        }
    }

    /// Review 18: the objects PostgreSQL names after the bookkeeping tables are bookkeeping too.
    #[test]
    fn review18_bookkeeping_sequences_and_keys() {
        let passed = passing(&[
            "ALTER SEQUENCE orchestrate_history_id_seq INCREMENT BY -1 MINVALUE -1000000 RESTART WITH -1;",
            "ALTER INDEX orchestrate_batches_pkey RENAME TO x;",
            "SELECT setval('orchestrate_history_id_seq', 1);",
        ]);
        assert!(passed.is_empty(), "these pass the check: {passed:?}");
    }

    /// `SET default_transaction_*` is what `SET SESSION CHARACTERISTICS AS TRANSACTION` sets
    /// (refused); the GUC spelling is not.
    #[test]
    fn review4_postgres_session_characteristics_as_gucs() {
        let passed = passing(&[
            "SET default_transaction_read_only = on;",
            "SET SESSION default_transaction_isolation = 'serializable';",
            "SELECT set_config('default_transaction_read_only', 'on', false);",
        ]);
        assert!(passed.is_empty(), "these pass the check: {passed:?}");
    }
}
