//! MySQL/MariaDB binds: not atomic, and honest about it. Every test looks at every database
//! afterwards: tables, version rows, marks in `orchestrate_in_progress`, prepared transactions.

use std::time::{Duration, Instant};

use crate::crash::all_or_nothing;
use crate::support::{state, Project};

const ALLOW: &str = "--allow-non-atomic";

/// Two good migrations and a third whose second statement fails.
fn shop_chain(p: &mut Project, bind: &str) {
    p.create_table(bind, "1_create_a", "a")
        .migration(
            bind,
            "2_create_b",
            "CREATE TABLE b (id INT PRIMARY KEY);\nINSERT INTO b VALUES (1);",
            Some("DROP TABLE b;"),
        )
        .migration(
            bind,
            "3_half_broken",
            "CREATE TABLE c (id INT PRIMARY KEY);\nINSERT INTO no_such_table VALUES (1);",
            Some("DROP TABLE c;"),
        );
}

/// Waits until no session holds the bind's migration lock (a killed coordinator's session
/// may take a moment to end on the server).
fn wait_lock_free(p: &Project, bind: &str) {
    let started = Instant::now();
    while p
        .db(bind)
        .query_text("SELECT CAST(IS_FREE_LOCK('orchestrate_migrations') AS CHAR) AS name")
        != "1"
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the lock stays taken"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_mysql_bind_needs_consent_and_says_what_it_promises() {
    let mut p = Project::new();
    p.add_mysql("shop");
    shop_chain(&mut p, "shop");
    let db = p.db("shop");

    let run = p.run(&["upgrade", "--all-binds", "2"]);
    run.expect(2);
    assert!(run.stderr.contains("--allow-non-atomic"), "{}", run.stderr);
    assert!(run.stderr.contains("`shop` (mysql)"), "{}", run.stderr);
    assert_eq!(db.state(), state(&[], &[]), "nothing touched");

    let run = p.run(&["upgrade", "--all-binds", "2", "--sql"]);
    run.expect(0);
    assert!(run.stdout.contains("NOT atomic"), "{}", run.stdout);
    assert!(run.stdout.contains("GET_LOCK"), "{}", run.stdout);
    assert_eq!(db.state(), state(&[], &[]), "--sql touches nothing");

    let run = p.run(&["upgrade", "--all-binds", "2", ALLOW]);
    run.expect(0);
    assert!(run.stdout.contains("is NOT atomic"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("plan: shop (mysql): 2 migration(s) up; NOT atomic"),
        "{}",
        run.stdout
    );
    assert_eq!(db.state(), state(&["a", "b"], &["1", "2"]));
    assert!(db.marks().is_empty(), "{:?}", db.marks());

    let run = p.run(&["status"]);
    run.expect(0);
    assert!(run.stdout.contains("NOT atomic"), "{}", run.stdout);

    // Adopting a MariaDB database migrated by other means: stamp records, runs nothing.
    p.run(&["stamp", "--bind", "shop", "1"]).expect(0);
    assert_eq!(db.state(), state(&["a", "b"], &["1"]));
    p.run(&["stamp", "--bind", "shop", "2"]).expect(0);
    assert_eq!(db.state(), state(&["a", "b"], &["1", "2"]));

    // Down one step, and back.
    p.run(&["downgrade", "--all-binds", ALLOW]).expect(0);
    assert_eq!(db.state(), state(&["a"], &["1"]));
    p.run(&["upgrade", "--all-binds", "2", ALLOW]).expect(0);
    assert_eq!(db.state(), state(&["a", "b"], &["1", "2"]));
}

#[test]
fn a_migration_without_down_sql_is_refused_on_mysql() {
    let mut p = Project::new();
    p.add_mysql("shop");
    p.migration("shop", "1_create_a", "CREATE TABLE a (id INT);", None);
    let run = p.run(&["upgrade", "--all-binds", ALLOW]);
    run.expect(2);
    assert!(run.stderr.contains("1_create_a"), "{}", run.stderr);
    assert!(run.stderr.contains("no down.sql"), "{}", run.stderr);
    assert_eq!(p.db("shop").state(), state(&[], &[]));
}

/// The seed scenario on MariaDB alone: a migration fails after one of its statements
/// committed. Honest outcome: that statement's table is there, the migration is marked with
/// how far it got, everything reports it and nothing runs over it until a person resolves it;
/// then recover undoes the rest of the batch.
#[test]
fn a_half_applied_migration_is_marked_reported_and_resolved() {
    let mut p = Project::new();
    p.add_mysql("shop");
    shop_chain(&mut p, "shop");
    let db = p.db("shop");
    p.run(&["upgrade", "--all-binds", "1", ALLOW]).expect(0);

    let run = p.run(&["upgrade", "--all-binds", ALLOW]);
    run.expect(3);
    assert!(
        run.stderr.contains("no_such_table"),
        "the server's error: {}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("1 of its 2 statement(s) are known to have committed"),
        "{}",
        run.stdout
    );
    // What is really there: 2 applied and recorded, 3 half done (table c), nothing recorded
    // for it.
    assert_eq!(db.state(), state(&["a", "b", "c"], &["1", "2"]));
    let marks = db.marks();
    assert_eq!(marks.len(), 2, "{marks:?}");
    assert!(marks.iter().any(|m| m == "migration:3:up:1/2"), "{marks:?}");
    assert!(
        marks.iter().any(|m| m.starts_with("batch:-:up")),
        "{marks:?}"
    );

    let status = p.run(&["status"]);
    status.expect(3);
    assert!(status.stdout.contains("3_half_broken"), "{}", status.stdout);
    assert!(
        status.stdout.contains("orchestrate resolve --bind shop 3"),
        "{}",
        status.stdout
    );
    let check = p.run(&["check"]);
    check.expect(3);
    let again = p.run(&["upgrade", "--all-binds", ALLOW]);
    again.expect(3);
    assert!(again.stderr.contains("3_half_broken"), "{}", again.stderr);
    let recover = p.run(&["recover"]);
    recover.expect(3);
    assert!(
        recover.stdout.contains("3_half_broken"),
        "{}",
        recover.stdout
    );
    assert_eq!(
        db.state(),
        state(&["a", "b", "c"], &["1", "2"]),
        "recover alone changes nothing"
    );

    // Resolve: the person undoes the half by hand and says so.
    p.run(&["resolve", "--bind", "shop", "3"]).expect(2);
    p.run(&["resolve", "--bind", "shop", "9", "--reverted"])
        .expect(2);
    db.execute("DROP TABLE c");
    let run = p.run(&["resolve", "--bind", "shop", "3", "--reverted"]);
    run.expect(0);
    assert!(run.stdout.contains("orchestrate recover"), "{}", run.stdout);
    // The batch (only 2 and 3 were in it) was never decided: recover undoes 2.
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("undone"), "{}", run.stdout);
    assert_eq!(db.state(), state(&["a"], &["1"]));
    assert!(db.marks().is_empty(), "{:?}", db.marks());
    p.run(&["status"]).expect(0);
}

/// A failure on the first statement of a migration: nothing of it committed, so the tool
/// can put the bind back by itself.
#[test]
fn a_failure_at_a_first_statement_is_undone_with_down_sql() {
    let mut p = Project::new();
    p.add_mysql("shop");
    p.create_table("shop", "1_create_a", "a")
        .migration(
            "shop",
            "2_create_b",
            "CREATE TABLE b (id INT);",
            Some("DROP TABLE b;"),
        )
        .migration(
            "shop",
            "3_broken",
            "INSERT INTO no_such_table VALUES (1);\nCREATE TABLE c (id INT);",
            Some("DROP TABLE c;"),
        );
    let db = p.db("shop");
    let run = p.run(&["upgrade", "--all-binds", ALLOW]);
    run.expect(1);
    assert!(
        run.stdout
            .contains("2 migration(s) of this batch had committed and were reverted"),
        "{}",
        run.stdout
    );
    assert_eq!(db.state(), state(&[], &[]));
    assert!(db.marks().is_empty(), "{:?}", db.marks());
    p.run(&["status"]).expect(0);
}

/// PostgreSQL, SQLite and two MariaDB binds in one batch, with a failure on each kind in
/// turn: every bind ends where it was, the MariaDB work undone.
#[test]
fn a_mixed_batch_with_a_failure_on_each_bind_in_turn() {
    for failing in ["pg", "lite", "shop"] {
        let mut p = Project::new();
        p.add_pg("pg")
            .add_sqlite("lite")
            .add_mysql("shop")
            .add_mysql("crm");
        for bind in ["pg", "lite", "shop", "crm"] {
            p.create_table(bind, "1_create_a", "a");
            let up = if bind == failing {
                "INSERT INTO no_such_table VALUES (1);"
            } else {
                "CREATE TABLE b (id INT PRIMARY KEY);"
            };
            p.migration(bind, "2_second", up, Some("DROP TABLE b;"));
        }
        let run = p.run(&["upgrade", "--all-binds", ALLOW]);
        run.expect(1);
        assert!(
            run.stderr.contains(&format!("bind `{failing}`")),
            "{failing}: {}",
            run.stderr
        );
        for (bind, st) in p.states() {
            assert_eq!(
                st,
                state(&[], &[]),
                "{failing} failed; bind {bind} must be as it was"
            );
        }
        for bind in ["shop", "crm"] {
            assert!(
                p.db(bind).marks().is_empty(),
                "{failing}: {bind}: {:?}",
                p.db(bind).marks()
            );
        }
        // Fixed, the same batch commits everywhere.
        p.migration(
            failing,
            "2_second",
            "CREATE TABLE b (id INT PRIMARY KEY);",
            Some("DROP TABLE b;"),
        );
        p.run(&["upgrade", "--all-binds", ALLOW]).expect(0);
        for (bind, st) in p.states() {
            assert_eq!(
                st,
                state(&["a", "b"], &["1", "2"]),
                "{failing} fixed: bind {bind}"
            );
        }
        p.run(&["status"]).expect(0);
    }
}

/// A crash in the middle of a MariaDB migration, with PostgreSQL binds prepared: `status`
/// shows both the batch in doubt and the interrupted migration; `recover` rolls the
/// PostgreSQL side back and points at the migration; once resolved, `recover` undoes the
/// batch's other MariaDB migrations, and every bind is as before.
#[test]
fn a_crash_mid_mysql_migration_then_status_resolve_and_recover() {
    let mut p = Project::new();
    p.add_pg("users").add_pg("billing").add_mysql("shop");
    p.config("decider = \"users\"");
    for bind in ["users", "billing"] {
        p.create_table(bind, "1_create_a", "a");
    }
    p.create_table("shop", "1_create_a", "a").migration(
        "shop",
        "2_two_tables",
        "CREATE TABLE b (id INT);\nCREATE TABLE c (id INT);",
        Some("DROP TABLE c;\nDROP TABLE b;"),
    );
    let run = p.run_with(
        &["upgrade", "--all-binds", ALLOW],
        &[("FAILPOINTS", "mysql-mid-migration=return")],
    );
    assert_eq!(run.code, -1, "killed: {run:?}");
    wait_lock_free(&p, "shop");
    // billing is prepared; shop has 1 applied and 2 half done.
    assert_eq!(p.db("billing").state().prepared.len(), 1);
    assert_eq!(p.db("shop").state(), state(&["a", "b"], &["1"]));
    assert!(
        p.db("shop")
            .marks()
            .iter()
            .any(|m| m == "migration:2:up:1/2"),
        "{:?}",
        p.db("shop").marks()
    );

    let status = p.run(&["status"]);
    status.expect(3);
    assert!(status.stdout.contains("in doubt"), "{}", status.stdout);
    assert!(status.stdout.contains("2_two_tables"), "{}", status.stdout);
    assert!(
        status
            .stdout
            .contains("1 of its 2 statement(s) are known to have committed"),
        "{}",
        status.stdout
    );

    let run = p.run(&["recover"]);
    run.expect(3);
    assert!(run.stdout.contains("rolled back"), "{}", run.stdout);
    assert!(run.stdout.contains("2_two_tables"), "{}", run.stdout);
    assert_eq!(p.db("billing").state(), state(&[], &[]));
    assert_eq!(p.db("users").state(), state(&[], &[]));

    // The person finishes the migration by hand and says it is applied; recover then undoes
    // the whole batch on shop (it was never decided): 2 with its down SQL, then 1.
    p.db("shop").execute("CREATE TABLE c (id INT)");
    p.run(&["resolve", "--bind", "shop", "2_two_tables", "--applied"])
        .expect(0);
    assert_eq!(p.db("shop").state(), state(&["a", "b", "c"], &["1", "2"]));
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("undone"), "{}", run.stdout);
    for (bind, st) in p.states() {
        assert_eq!(st, state(&[], &[]), "bind {bind}");
    }
    assert!(p.db("shop").marks().is_empty());
    p.run(&["status"]).expect(0);
    // And the batch can run again, to the end.
    p.run(&["upgrade", "--all-binds", ALLOW]).expect(0);
    assert_eq!(p.db("shop").state(), state(&["a", "b", "c"], &["1", "2"]));
}

/// A crash after the decision: the MariaDB work stays, and recover only settles the mark.
#[test]
fn a_crash_after_the_decision_keeps_the_mysql_work() {
    let mut p = Project::new();
    p.add_pg("users").add_pg("billing").add_mysql("shop");
    p.config("decider = \"users\"");
    for bind in ["users", "billing", "shop"] {
        p.create_table(bind, "1_create_a", "a");
    }
    let run = p.run_with(
        &["upgrade", "--all-binds", ALLOW],
        &[("FAILPOINTS", "after-decision=return")],
    );
    assert_eq!(run.code, -1, "killed: {run:?}");
    wait_lock_free(&p, "shop");
    assert!(p.db("shop").marks().iter().any(|m| m.starts_with("batch:")));
    p.run(&["status"]).expect(3);
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("settled"), "{}", run.stdout);
    for (bind, st) in p.states() {
        assert_eq!(st, state(&["a"], &["1"]), "bind {bind}");
    }
    assert!(p.db("shop").marks().is_empty());
}

/// How many prepared XA transactions `status` reports in doubt on this bind.
fn xa_listed(p: &Project, bind: &str) -> usize {
    p.run(&["status", "--bind", bind, "--json"])
        .stdout
        .matches("\"gid\"")
        .count()
}

/// A project with a PostgreSQL decider, a PostgreSQL participant and a MariaDB bind whose
/// table exists (created non-atomically) and whose next migration is data-only.
fn xa_project() -> Project {
    let mut p = Project::new();
    p.add_pg("users").add_pg("billing").add_mysql("shop");
    p.config("decider = \"users\"");
    p.create_table("shop", "1_create_a", "a");
    p.run(&["upgrade", "--bind", "shop", ALLOW]).expect(0);
    for bind in ["users", "billing"] {
        p.create_table(bind, "1_create_a", "a");
    }
    p.migration(
        "shop",
        "2_rows",
        "INSERT INTO a VALUES (1);\nINSERT INTO a VALUES (2);",
        Some("DELETE FROM a;"),
    )
    .metadata("shop", "2_rows", "data_only = true\n");
    p
}

fn rows_in_a(p: &Project) -> String {
    p.db("shop")
        .query_text("SELECT CAST(count(*) AS CHAR) AS name FROM a")
}

/// Data-only MySQL migrations join through XA: atomic, no --allow-non-atomic needed, and a
/// failure elsewhere rolls them back.
#[test]
fn data_only_mysql_migrations_are_atomic_through_xa() {
    let mut p = xa_project();
    let run = p.run(&["upgrade", "--all-binds", "--sql"]);
    run.expect(0);
    assert!(run.stdout.contains("XA PREPARE"), "{}", run.stdout);
    assert!(
        run.stdout.contains("atomic: XA two-phase commit"),
        "{}",
        run.stdout
    );

    // A failure on billing: shop's rows are rolled back with the rest.
    p.migration(
        "billing",
        "2_broken",
        "SELECT * FROM no_such_table;",
        Some("SELECT 1;"),
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert_eq!(rows_in_a(&p), "0");
    assert_eq!(p.db("shop").state(), state(&["a"], &["1"]));
    assert!(
        p.db("shop").marks().is_empty(),
        "{:?}",
        p.db("shop").marks()
    );
    for bind in ["users", "billing"] {
        assert_eq!(p.db(bind).state(), state(&[], &[]), "{bind}");
    }

    // Fixed: everything commits, shop's part through XA COMMIT.
    p.migration("billing", "2_broken", "SELECT 1;", Some("SELECT 1;"));
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(0);
    assert!(!run.stdout.contains("NOT atomic"), "{}", run.stdout);
    assert_eq!(rows_in_a(&p), "2");
    assert_eq!(p.db("shop").state(), state(&["a"], &["1", "2"]));
    assert!(
        p.db("shop").marks().is_empty(),
        "{:?}",
        p.db("shop").marks()
    );
    assert_eq!(xa_listed(&p, "shop"), 0);
    p.run(&["status"]).expect(0);
}

/// DDL in a migration that claims to be data-only is refused by the server inside XA: the
/// batch fails and nothing changes anywhere.
#[test]
fn ddl_in_a_data_only_migration_fails_the_batch_cleanly() {
    let mut p = xa_project();
    p.migration(
        "shop",
        "2_rows",
        "CREATE TABLE sneaky (id INT);",
        Some("DROP TABLE sneaky;"),
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(run.stderr.contains("2_rows"), "{}", run.stderr);
    assert_eq!(p.db("shop").state(), state(&["a"], &["1"]));
    assert!(
        p.db("shop").marks().is_empty(),
        "{:?}",
        p.db("shop").marks()
    );
    for bind in ["users", "billing"] {
        assert_eq!(p.db(bind).state(), state(&[], &[]), "{bind}");
    }
}

/// A crash with shop's XA transaction prepared: status shows it in doubt; recover rolls it
/// back (no decision) or commits it (decided).
#[test]
fn a_prepared_xa_transaction_is_recovered_either_way() {
    for (point, decided) in [("before-decision", false), ("after-decision", true)] {
        let p = xa_project();
        let run = p.run_with(
            &["upgrade", "--all-binds"],
            &[("FAILPOINTS", &format!("{point}=return"))],
        );
        assert_eq!(run.code, -1, "{point}: killed: {run:?}");
        let status = p.run(&["status", "--bind", "shop"]);
        status.expect(3);
        assert!(
            status.stdout.contains("in doubt"),
            "{point}: {}",
            status.stdout
        );
        let run = p.run(&["recover"]);
        run.expect(0);
        let (rows, versions, tables): (&str, &[&str], &[&str]) = if decided {
            ("2", &["1", "2"], &["a"])
        } else {
            ("0", &["1"], &[])
        };
        assert!(
            run.stdout
                .contains(if decided { "committed" } else { "rolled back" }),
            "{point}: {}",
            run.stdout
        );
        assert_eq!(rows_in_a(&p), rows, "{point}");
        assert_eq!(p.db("shop").state(), state(&["a"], versions), "{point}");
        assert!(
            p.db("shop").marks().is_empty(),
            "{point}: {:?}",
            p.db("shop").marks()
        );
        for bind in ["users", "billing"] {
            assert_eq!(
                p.db(bind).state(),
                state(tables, if decided { &["1"] } else { &[] }),
                "{point}: {bind}"
            );
        }
        assert_eq!(xa_listed(&p, "shop"), 0, "{point}");
        p.run(&["status"]).expect(0);
    }
}

/// A downgrade that fails part-way on MariaDB: the step it already reverted is re-applied
/// with its up.sql (an `undo-down`), and the bind ends where it was.
#[test]
fn a_failed_mysql_downgrade_is_undone_with_up_sql() {
    let mut p = Project::new();
    p.add_mysql("shop");
    p.migration(
        "shop",
        "1_create_a",
        "CREATE TABLE a (id INT PRIMARY KEY);",
        Some("DROP TABLE no_such_table;"),
    )
    .create_table("shop", "2_create_b", "b");
    p.run(&["upgrade", "--all-binds", ALLOW]).expect(0);
    let run = p.run(&["downgrade", "--all-binds", "base", ALLOW]);
    run.expect(1);
    assert!(run.stderr.contains("no_such_table"), "{}", run.stderr);
    assert!(
        run.stdout
            .contains("1 migration(s) of this batch had committed and were reverted"),
        "{}",
        run.stdout
    );
    assert_eq!(p.db("shop").state(), state(&["a", "b"], &["1", "2"]));
    assert!(
        p.db("shop").marks().is_empty(),
        "{:?}",
        p.db("shop").marks()
    );
    p.run(&["status"]).expect(0);
}

/// An undo that fails stays marked for a person, even when nothing of it ran: running it
/// again would fail the same way.
#[test]
fn a_failed_undo_is_marked_for_resolve() {
    let mut p = Project::new();
    p.add_mysql("shop");
    p.create_table("shop", "1_create_a", "a")
        .migration(
            "shop",
            "2_create_b",
            "CREATE TABLE b (id INT PRIMARY KEY);",
            Some("DROP TABLE no_such_table;"),
        )
        .migration(
            "shop",
            "3_broken",
            "INSERT INTO no_such_table VALUES (1);",
            Some("SELECT 1;"),
        );
    let db = p.db("shop");
    let run = p.run(&["upgrade", "--all-binds", ALLOW]);
    run.expect(3);
    assert!(
        run.stdout.contains("undoing 2_create_b failed"),
        "{}",
        run.stdout
    );
    assert_eq!(db.state(), state(&["a", "b"], &["1", "2"]));
    assert!(
        db.marks().iter().any(|m| m == "migration:2:undo-up:0/1"),
        "{:?}",
        db.marks()
    );
    p.run(&["status"]).expect(3);
    p.run(&["recover"]).expect(3);
    // The person reverts 2 by hand; recover then reverts 1, as the batch was not decided.
    db.execute("DROP TABLE b");
    p.run(&["resolve", "--bind", "shop", "2", "--reverted"])
        .expect(0);
    assert_eq!(db.state(), state(&["a"], &["1"]));
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("undone"), "{}", run.stdout);
    assert_eq!(db.state(), state(&[], &[]));
    assert!(db.marks().is_empty(), "{:?}", db.marks());
}

/// MariaDB binds alone: the first one records the decision, so a crash before it undoes the
/// batch on every bind, and a crash after it keeps it on every bind.
#[test]
fn a_mysql_only_batch_is_settled_the_same_way_everywhere() {
    for (point, decided) in [("before-decision", false), ("after-decision", true)] {
        let mut p = Project::new();
        p.add_mysql("shop").add_mysql("crm");
        for bind in ["shop", "crm"] {
            p.create_table(bind, "1_create_a", "a");
        }
        let run = p.run_with(
            &["upgrade", "--all-binds", ALLOW],
            &[("FAILPOINTS", &format!("{point}=return"))],
        );
        assert_eq!(run.code, -1, "{point}: killed: {run:?}");
        for bind in ["shop", "crm"] {
            wait_lock_free(&p, bind);
            assert!(
                p.db(bind).marks().iter().any(|m| m.starts_with("batch:")),
                "{point}: {bind}"
            );
        }
        p.run(&["status"]).expect(3);
        let run = p.run(&["recover"]);
        run.expect(0);
        for bind in ["shop", "crm"] {
            let expected = if decided {
                state(&["a"], &["1"])
            } else {
                state(&[], &[])
            };
            assert_eq!(
                p.db(bind).state(),
                expected,
                "{point}: {bind}: {}",
                run.stdout
            );
            assert!(p.db(bind).marks().is_empty(), "{point}: {bind}");
        }
        p.run(&["status"]).expect(0);
    }
}

/// A process killed at random moments of mixed batches (PostgreSQL, SQLite and two MariaDB
/// binds whose migrations are slow and have two statements each), `ORCHESTRATE_KILL_LOOPS`
/// times (default 5). After each kill, recover runs; where it reports an interrupted MariaDB
/// migration, the test does what a person would: looks whether the migration's table is
/// there and says so with `resolve`. In the end every bind holds the whole batch or none of it.
#[test]
fn mixed_batches_killed_at_random_moments() {
    use std::process::Stdio;
    let loops: usize = std::env::var("ORCHESTRATE_KILL_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut p = Project::new();
    p.add_pg("a_pg")
        .add_sqlite("b_lite")
        .add_mysql("c_my")
        .add_mysql("d_my");
    for bind in ["a_pg", "b_lite", "c_my", "d_my"] {
        let pause = match bind {
            "a_pg" => "\nSELECT pg_sleep(0.1);",
            "b_lite" => "",
            _ => "\nSELECT SLEEP(0.1);",
        };
        for v in 1..=2 {
            p.migration(
                bind,
                &format!("{v}_step"),
                &format!("CREATE TABLE {bind}_{v} (id INT);{pause}"),
                Some(&format!("DROP TABLE {bind}_{v};")),
            );
        }
    }
    let binds = ["a_pg", "b_lite", "c_my", "d_my"];
    let has_table = |p: &Project, bind: &str, table: &str| {
        p.db(bind).query_text(&format!(
            "SELECT CAST(count(*) AS CHAR) AS name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '{table}'"
        )) == "1"
    };
    // recover until clean, resolving interrupted migrations by looking at the database.
    let settle = |p: &Project| -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = String::new();
        loop {
            let run = p.run(&["recover"]);
            seen.push_str(&run.stdout);
            if run.code == 0 {
                return seen;
            }
            for bind in ["c_my", "d_my"] {
                for m in p.db(bind).marks() {
                    let parts: Vec<&str> = m.split(':').collect();
                    let done_total: Vec<&str> = parts[3].split('/').collect();
                    if parts[0] != "migration" || done_total[0] == done_total[1] {
                        continue;
                    }
                    let there = has_table(p, bind, &format!("{bind}_{}", parts[1]));
                    let flag = if there { "--applied" } else { "--reverted" };
                    seen.push_str(&format!("[test resolves {bind} {m} {flag}]\n"));
                    p.run(&["resolve", "--bind", bind, parts[1], flag])
                        .expect(0);
                }
            }
            assert!(
                Instant::now() < deadline,
                "recover never finished:\n{seen}\n{}",
                run.stderr
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let started = Instant::now();
    p.run(&["upgrade", "--all-binds", ALLOW]).expect(0);
    let window_ms = (started.elapsed().as_millis() as u64 * 6 / 5).max(1);
    p.run(&["downgrade", "--all-binds", "base", ALLOW])
        .expect(0);
    assert_eq!(all_or_nothing(&p), Some(false));
    let (mut committed, mut rolled_back, mut resolved, mut undone) = (0, 0, 0, 0);
    for i in 0..loops {
        let mut child = p
            .command(&["upgrade", "--all-binds", ALLOW])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % window_ms));
        let _ = child.kill();
        let _ = child.wait();
        let seen = settle(&p);
        resolved += seen.matches("[test resolves").count();
        undone += seen.matches(": undone: ").count();
        match all_or_nothing(&p) {
            Some(true) => {
                committed += 1;
                p.run(&["downgrade", "--all-binds", "base", ALLOW])
                    .expect(0);
            }
            Some(false) => rolled_back += 1,
            None => panic!(
                "loop {i}: a mixed state after recover:\n{seen}\n{:#?}",
                p.states()
            ),
        }
        for bind in binds {
            assert!(
                p.db(bind).marks().is_empty(),
                "loop {i}: {bind}: {:?}",
                p.db(bind).marks()
            );
        }
    }
    eprintln!(
        "mixed_batches_killed_at_random_moments: {loops} kills within {window_ms} ms, {committed} ended committed, {rolled_back} rolled back; {resolved} interrupted MariaDB migration(s) resolved by looking, {undone} MariaDB batch(es) undone by recover"
    );
    p.run(&["upgrade", "--all-binds", ALLOW]).expect(0);
    assert_eq!(all_or_nothing(&p), Some(true));
}

/// Data-only migrations on MariaDB binds alone have nobody to decide for XA: they run like
/// any other MySQL migration, and the plan says so.
#[test]
fn data_only_without_an_atomic_decider_is_not_called_atomic() {
    let mut p = Project::new();
    p.add_mysql("shop");
    p.create_table("shop", "1_create_a", "a");
    p.run(&["upgrade", "--all-binds", ALLOW]).expect(0);
    p.migration("shop", "2_rows", "INSERT INTO a VALUES (1);", None)
        .metadata("shop", "2_rows", "data_only = true\n");
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(run.stderr.contains("--allow-non-atomic"), "{}", run.stderr);
    let run = p.run(&["upgrade", "--all-binds", ALLOW]);
    run.expect(2);
    assert!(run.stderr.contains("no down.sql"), "{}", run.stderr);
    assert_eq!(p.db("shop").state(), state(&["a"], &["1"]));
}
