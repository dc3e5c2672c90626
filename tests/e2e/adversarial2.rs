//! Probes of a second adversarial review (each failed on the reviewed commit, ceb4c37, and
//! passes since the fix): SQL that hid refused statements from the check (views, dynamic SQL,
//! MariaDB's compound statements, NO_BACKSLASH_ESCAPES), session state the bookkeeping
//! depended on (completion_type, the batch's lock), an environment variable that added a
//! bind, and a check that passed where upgrade refused.

use crate::support::{state, Project};

const ALLOW: &str = "--allow-non-atomic";

/// A view whose select list names columns `trigger` and `begin`: the statement check takes
/// `begin` for a trigger body and skips the rest of the file, so a `COMMIT` runs. The
/// after-step check notices the batch's transaction is gone, but what the migration did
/// before the COMMIT is committed on the SQLite bind while the batch fails.
#[test]
fn review2_sqlite_view_columns_hide_a_commit() {
    let mut p = Project::new();
    p.add_sqlite("a").add_sqlite("b");
    p.config("decider = \"a\"");
    p.create_table("a", "1_one", "one");
    p.migration(
        "b",
        "1_two",
        "CREATE TABLE leaked (x INTEGER);\n\
         CREATE VIEW v AS SELECT 1 AS trigger, 2 AS begin;\n\
         COMMIT;\n",
        Some("DROP VIEW v; DROP TABLE leaked;"),
    );
    let check = p.run(&["check"]);
    eprintln!(
        "check: exit {}\n{}\n{}",
        check.code, check.stdout, check.stderr
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    eprintln!("upgrade: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
    eprintln!("states: {:?}", p.states());
    // Refused at plan time, nothing touched.
    assert_eq!(run.code, 2, "{run:?}");
    p.assert_states(&[("a", state(&[], &[])), ("b", state(&[], &[]))]);
}

/// A data-only MySQL bind (an XA participant) commits its own work before the decision with
/// dynamic SQL (`EXECUTE IMMEDIATE`), which the statement check does not look into; the XA id
/// is in the bind's own batch mark. The batch then fails (its XA PREPARE finds no XA
/// transaction) and every other bind rolls back, but the MySQL rows, version and history stay.
#[test]
fn review2_mysql_xa_participant_commits_itself_through_execute_immediate() {
    let mut p = Project::new();
    p.add_pg("users").add_mysql("shop");
    p.config("decider = \"users\"");
    p.create_table("shop", "1_create_a", "a");
    p.run(&["upgrade", "--bind", "shop", ALLOW]).expect(0);
    p.create_table("users", "1_create_a", "a");
    p.migration(
        "shop",
        "2_rows",
        "INSERT INTO a VALUES (1);\n\
         SET @x = (SELECT CONCAT('''orchestrate:', batch_id, ''',''shop''') FROM orchestrate_in_progress WHERE kind = 'xa-batch');\n\
         EXECUTE IMMEDIATE CONCAT('XA END ', @x);\n\
         EXECUTE IMMEDIATE CONCAT('XA COMMIT ', @x, ' ONE PHASE');\n",
        Some("DELETE FROM a;"),
    )
    .metadata("shop", "2_rows", "data_only = true\n");
    let check = p.run(&["check"]);
    eprintln!(
        "check: exit {}\n{}\n{}",
        check.code, check.stdout, check.stderr
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    eprintln!("upgrade: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
    let rows = p
        .db("shop")
        .query_text("SELECT CAST(count(*) AS CHAR) AS name FROM a");
    eprintln!("states: {:?}; rows in shop.a: {rows}", p.states());
    assert_eq!(run.code, 2, "refused at plan time: {run:?}");
    assert_eq!(rows, "0");
    p.assert_states(&[("users", state(&[], &[])), ("shop", state(&["a"], &["1"]))]);
}

/// With NO_BACKSLASH_ESCAPES (set by the migration here; a server's sql_mode may have it
/// already) `'a\'` is a whole string for the server, while the lexer (and split_statements)
/// read the `\'` as an escaped quote: `LOCK TABLES` runs unseen.
#[test]
fn review2_mysql_no_backslash_escapes_hides_lock_tables() {
    let mut p = Project::new();
    p.add_mysql("shop");
    p.create_table("shop", "1_create_a", "a");
    p.migration(
        "shop",
        "2_lock",
        "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES';\n\
         SELECT 'a\\'; LOCK TABLES a WRITE; SELECT '\\';\n\
         -- '\n",
        Some("SELECT 1;"),
    );
    let check = p.run(&["check"]);
    eprintln!(
        "check: exit {}\n{}\n{}",
        check.code, check.stdout, check.stderr
    );
    let run = p.run(&["upgrade", "--all-binds", ALLOW]);
    eprintln!("upgrade: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
    eprintln!("states: {:?} marks {:?}", p.states(), p.db("shop").marks());
    assert_eq!(
        run.code, 2,
        "LOCK TABLES must be refused at plan time: {run:?}"
    );
    p.assert_states(&[("shop", state(&[], &[]))]);
}

/// `SET completion_type = 'RELEASE'` is not refused; the bookkeeping's own COMMIT (a
/// migration's version rows and mark, `finish_marked_step`) then ends the session, and with
/// it the bind's GET_LOCK, in the middle of the batch.
#[test]
fn review2_mysql_completion_type_release_drops_the_session() {
    let mut p = Project::new();
    p.add_mysql("shop");
    p.migration(
        "shop",
        "1_a",
        "SET SESSION completion_type = 'RELEASE';\nCREATE TABLE a (id INT);",
        Some("DROP TABLE a;"),
    );
    p.create_table("shop", "2_b", "b");
    let check = p.run(&["check"]);
    eprintln!(
        "check: exit {}\n{}\n{}",
        check.code, check.stdout, check.stderr
    );
    let run = p.run(&["upgrade", "--all-binds", ALLOW]);
    eprintln!("upgrade: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
    eprintln!("states: {:?} marks {:?}", p.states(), p.db("shop").marks());
    // Either refused at plan time, or the batch runs to the end.
    assert!(run.code == 2 || run.code == 0, "{run:?}");
}

/// The fix for `recover` aborting a live batch of MySQL binds alone rests on the decider's
/// GET_LOCK, which a migration on that bind could give up (`RELEASE_LOCK`,
/// `RELEASE_ALL_LOCKS`, completion_type = RELEASE); `recover` then recorded `abort` for a
/// batch whose coordinator was alive. Such a migration is now refused before anything runs.
#[test]
fn review2_a_migration_that_releases_the_batch_lock_is_refused() {
    let mut p = Project::new();
    p.add_mysql("m0").add_mysql("m1");
    p.migration(
        "m0",
        "1_a",
        "CREATE TABLE a (id INT PRIMARY KEY);\nDO RELEASE_LOCK(CONCAT('orchestrate:', SHA1(DATABASE())));",
        Some("DROP TABLE a;"),
    );
    p.create_table("m1", "1_b", "b");
    let run = p.run(&["upgrade", "--all-binds", ALLOW]);
    run.expect(2);
    assert!(run.stderr.contains("RELEASE_LOCK"), "{run:?}");
    p.assert_states(&[("m0", state(&[], &[])), ("m1", state(&[], &[]))]);
}

/// An environment variable that adds a bind no file defines is refused, unless its name
/// puts a `.` where `__` goes: config-rs reads `ORCHESTRATE__BINDS.X__URL` (and
/// `ORCHESTRATE__BINDS.X.URL`) as `binds.x.url`, but check_env_overrides splits on `__` only
/// and never sees the section `BINDS`.
#[test]
fn review2_env_var_with_a_dot_adds_an_undefined_bind() {
    let mut p = Project::new();
    p.add_sqlite("a");
    p.create_table("a", "1_one", "one");
    std::fs::create_dir_all(p.path().join("migrations/x/1_x")).unwrap();
    std::fs::write(
        p.path().join("migrations/x/1_x/up.sql"),
        "CREATE TABLE x (id INT);",
    )
    .unwrap();
    let url = format!("sqlite://{}", p.path().join("var/x.sqlite3").display());
    for var in [
        "ORCHESTRATE__BINDS__X__URL",
        "ORCHESTRATE__BINDS.X__URL",
        "ORCHESTRATE__BINDS.X.URL",
    ] {
        let run = p.run_with(&["status", "--json"], &[(var, url.as_str())]);
        eprintln!("{var}: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
        assert_eq!(run.code, 2, "{var} must be refused: {run:?}");
        assert!(
            !run.stdout.contains("\"x\""),
            "{var} added bind x: {}",
            run.stdout
        );
    }
}

/// `check --allow-non-atomic` passes where `upgrade --all-binds --allow-non-atomic` refuses:
/// a batch of MySQL binds alone on a server with innodb_flush_log_at_trx_commit = 2 (the
/// refusal is in nonatomic::run, not in check_batch). Changes the test server's global
/// setting, restored at the end.
#[test]
fn review2_check_passes_where_upgrade_refuses_a_non_durable_mysql_decider() {
    let mut p = Project::new();
    p.add_mysql("m");
    p.create_table("m", "1_a", "a");
    p.db("m")
        .execute("SET GLOBAL innodb_flush_log_at_trx_commit = 2");
    let check = p.run(&["check", ALLOW]);
    let run = p.run(&["upgrade", "--all-binds", ALLOW]);
    p.db("m")
        .execute("SET GLOBAL innodb_flush_log_at_trx_commit = 1");
    eprintln!(
        "check: exit {}\n{}\n{}",
        check.code, check.stdout, check.stderr
    );
    eprintln!("upgrade: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
    assert_eq!(check.code, run.code, "check must fail as upgrade does");
}
