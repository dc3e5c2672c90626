//! Probes of a third adversarial review. Each test states the promise it checks and fails on
//! the reviewed commit (02f2b11) where the promise does not hold.

use std::time::Duration;

use crate::support::{state, Project};

/// SQLite: `PRAGMA 'journal_mode' = OFF` (the pragma's name quoted, which SQLite accepts)
/// passes the statement check, which refuses only the unquoted word. SQLite allows the
/// change inside the batch's transaction as long as nothing was written yet, and from then
/// on a ROLLBACK cannot undo pages that were spilled to the file: the batch fails on the
/// decider, every bind is "rolled back", yet the participant keeps its migration's changes.
#[test]
fn review3_sqlite_quoted_journal_mode_off_survives_rollback() {
    let mut p = Project::new();
    p.add_sqlite("a").add_sqlite("b");
    p.config("decider = \"a\"");
    p.migration(
        "b",
        "1_keep",
        "CREATE TABLE keep (x INTEGER);\nINSERT INTO keep VALUES (42);",
        Some("DROP TABLE keep;"),
    );
    p.run(&["upgrade", "--all-binds"]).expect(0);
    p.migration(
        "b",
        "2_bulk",
        "PRAGMA 'journal_mode' = OFF;\n\
         PRAGMA cache_size = 5;\n\
         UPDATE keep SET x = 0;\n\
         CREATE TABLE big (x BLOB);\n\
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)\n\
         INSERT INTO big SELECT randomblob(400) FROM n;\n",
        Some("DROP TABLE big;"),
    );
    // The decider fails on its own step, after b has run and holds its transaction open.
    p.migration("a", "1_fail", "INSERT INTO no_such_table VALUES (1);", None);
    let check = p.run(&["check"]);
    eprintln!(
        "check: exit {}\n{}\n{}",
        check.code, check.stdout, check.stderr
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    eprintln!("upgrade: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
    let kept = {
        use diesel::prelude::*;
        #[derive(QueryableByName)]
        struct V {
            #[diesel(sql_type = diesel::sql_types::Text)]
            v: String,
        }
        let path = p.path().join("var/b.sqlite3");
        let mut c = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
        diesel::sql_query("SELECT CAST(x AS TEXT) AS v FROM keep")
            .get_result::<V>(&mut c)
            .unwrap()
            .v
    };
    eprintln!("b.keep.x after the batch: {kept}; states {:?}", p.states());
    // Either refused before anything runs, or rolled back whole: keep.x is still 42.
    assert!(
        run.code == 2 || kept == "42",
        "the batch failed and reported every bind rolled back, but b kept keep.x = {kept} (exit {})",
        run.code
    );
}

/// SQLite: `PRAGMA 'locking_mode' = EXCLUSIVE` (also `[locking_mode]`, `` `locking_mode` ``)
/// passes the check that refuses `PRAGMA locking_mode = ...`.
#[test]
fn review3_sqlite_quoted_pragma_names_pass_the_check() {
    let mut p = Project::new();
    p.add_sqlite("a");
    p.migration(
        "a",
        "1_x",
        "CREATE TABLE t (x INTEGER);\nPRAGMA 'locking_mode' = EXCLUSIVE;",
        Some("DROP TABLE t;"),
    );
    let run = p.run(&["upgrade", "--all-binds", "--sql"]);
    eprintln!(
        "upgrade --sql: exit {}\n{}\n{}",
        run.code, run.stdout, run.stderr
    );
    assert_eq!(
        run.code, 2,
        "PRAGMA 'locking_mode' must be refused as PRAGMA locking_mode is"
    );
    p.assert_states(&[("a", state(&[], &[]))]);
}

/// PostgreSQL: `dblink_exec` runs SQL on another connection, which commits on its own. The
/// batch fails on another bind and every bind is reported rolled back, but the table created
/// through dblink on bind `a` stays. Nothing refuses it and nothing after the step sees it.
#[test]
fn review3_pg_dblink_exec_escapes_the_batch() {
    let mut p = Project::new();
    p.add_pg("a").add_pg("b");
    // b decides: its own steps run after a has run and prepared.
    p.config("decider = \"b\"");
    let url = p.db("a").url();
    p.migration(
        "a",
        "1_a",
        &format!(
            "CREATE EXTENSION IF NOT EXISTS dblink;\n\
             CREATE TABLE t (id int);\n\
             SELECT dblink_exec('{url}', 'CREATE TABLE leaked (x int)');\n"
        ),
        Some("DROP TABLE t;"),
    );
    p.migration(
        "b",
        "1_b",
        "CREATE TABLE u (id int);\nSELECT 1 / 0;",
        Some("DROP TABLE u;"),
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    eprintln!("upgrade: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
    let states = p.states();
    eprintln!("states: {states:?}");
    assert!(
        run.code == 2 || !p.db("a").state().tables.contains("leaked"),
        "the batch rolled back (exit {}) but `leaked`, created by the migration through dblink, stays on a",
        run.code
    );
}

/// PostgreSQL: `SET transaction_read_only = on` is refused at plan time ("refused whatever
/// the setting"), `SELECT set_config('transaction_read_only', 'on', true)` is not: check
/// passes and the upgrade fails at run time instead.
#[test]
fn review3_pg_set_config_is_not_refused_like_set() {
    let mut p = Project::new();
    p.add_pg("a");
    p.migration(
        "a",
        "1_a",
        "SELECT set_config('transaction_read_only', 'on', true);\nSELECT 1;",
        Some("SELECT 1;"),
    );
    let check = p.run(&["check"]);
    eprintln!(
        "check: exit {}\n{}\n{}",
        check.code, check.stdout, check.stderr
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    eprintln!("upgrade: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
    assert_eq!(check.code, run.code, "check must fail as upgrade does");
    assert_eq!(
        run.code, 2,
        "refused at plan time as SET transaction_read_only is"
    );
}

/// `check` is documented to fail exactly as `upgrade --all-binds` would (same exit code, same
/// error lines). With an applied migration edited, upgrade refuses with exit 2; check exits 1.
#[test]
fn review3_check_and_upgrade_disagree_on_drift() {
    let mut p = Project::new();
    p.add_sqlite("a");
    p.create_table("a", "1_a", "t");
    p.run(&["upgrade", "--all-binds"]).expect(0);
    p.migration(
        "a",
        "1_a",
        "CREATE TABLE t (id INT PRIMARY KEY, x INT);",
        Some("DROP TABLE t;"),
    );
    p.create_table("a", "2_b", "u");
    let check = p.run(&["check"]);
    eprintln!(
        "check: exit {}\n{}\n{}",
        check.code, check.stdout, check.stderr
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    eprintln!("upgrade: exit {}\n{}\n{}", run.code, run.stdout, run.stderr);
    assert_eq!(check.code, run.code, "check must fail as upgrade does");
}

/// While a batch is running (its participants prepared, its decider holding the row),
/// `upgrade` says the bind is busy (exit 1, "not in doubt"); `check` reports the running
/// batch's prepared transaction as in doubt and exits 3 ("run `orchestrate recover`").
#[test]
fn review3_check_calls_a_running_batch_in_doubt() {
    let mut p = Project::new();
    p.add_pg("a").add_pg("b");
    p.config("decider = \"a\"");
    p.create_table("a", "1_a", "t");
    p.create_table("b", "1_b", "u");
    let mut running = p.command(&["upgrade", "--all-binds"]);
    running.env("FAILPOINTS", "before-decision=sleep(6000)");
    let child = running
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for b's prepared transaction.
    let mut prepared = false;
    for _ in 0..100 {
        if !p.db("b").state().prepared.is_empty() {
            prepared = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(prepared, "b never prepared");
    let check = p.run(&["check"]);
    let upgrade = p.run(&["upgrade", "--all-binds"]);
    let out = child.wait_with_output().unwrap();
    eprintln!(
        "check: exit {}\n{}\n{}",
        check.code, check.stdout, check.stderr
    );
    eprintln!(
        "upgrade: exit {}\n{}\n{}",
        upgrade.code, upgrade.stdout, upgrade.stderr
    );
    eprintln!("first run: {:?}", out.status);
    assert_eq!(check.code, upgrade.code, "check must fail as upgrade does");
}

/// With `--json` every outcome is JSON: a usage error (no --bind/--all-binds) is clap's text.
#[test]
fn review3_json_usage_errors_are_not_json() {
    let mut p = Project::new();
    p.add_sqlite("a");
    for args in [
        &["upgrade", "--json"][..],
        &["status", "--json", "--bogus"][..],
        &["recover", "--json", "--wait", "soon"][..],
    ] {
        let run = p.run(args);
        eprintln!(
            "{args:?}: exit {}\nstdout: {}\nstderr: {}",
            run.code, run.stdout, run.stderr
        );
        assert!(
            serde_json::from_str::<serde_json::Value>(&run.stdout).is_ok(),
            "{args:?} printed no JSON (exit {})",
            run.code
        );
    }
}
