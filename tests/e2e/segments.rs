//! PostgreSQL migrations with `run_in_transaction = false` (`CREATE INDEX CONCURRENTLY`):
//! with `--allow-non-atomic` a batch becomes segments, atomic batches around each such
//! migration, which runs outside any transaction, marked until it is recorded.

use crate::support::{state, Project};

/// Two PostgreSQL binds and a SQLite one; each PostgreSQL chain is a table, an index built
/// concurrently (`index_sql`, outside a transaction), then another table.
fn project(index_sql: &str) -> Project {
    let mut p = Project::new();
    p.config("decider = \"sa\"");
    for bind in ["pa", "pb"] {
        p.add_pg(bind);
        p.migration(
            bind,
            "1_t",
            "CREATE TABLE t (a int);\nINSERT INTO t SELECT g FROM generate_series(1, 50) g;",
            Some("DROP TABLE t;"),
        );
        p.migration(
            bind,
            "2_idx",
            index_sql,
            Some("DROP INDEX CONCURRENTLY IF EXISTS t_a;\nDROP INDEX CONCURRENTLY IF EXISTS t_b;"),
        );
        p.metadata(bind, "2_idx", "run_in_transaction = false\n");
        p.create_table(bind, "3_u", "u");
    }
    p.add_sqlite("sa").create_table("sa", "1_s", "s");
    p
}

fn valid_indexes(p: &Project, bind: &str) -> String {
    let mut found = Vec::new();
    for name in ["t_a", "t_b"] {
        let count = |valid: &str| {
            p.db(bind).count(&format!(
                "SELECT count(*) AS n FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
                 WHERE c.relname = '{name}'{valid}"
            ))
        };
        if count("") > 0 {
            found.push(format!("{name}:{}", count(" AND i.indisvalid") > 0));
        }
    }
    found.join(",")
}

fn marks(p: &Project, bind: &str) -> i64 {
    p.db(bind)
        .count("SELECT count(*) AS n FROM orchestrate_in_progress")
}

/// Refused without consent; with it, three segments bring every bind to its head, the index
/// valid on both PostgreSQL binds and no mark left.
#[test]
fn segments_around_a_concurrent_index_bring_every_bind_to_head() {
    let p = project("CREATE INDEX CONCURRENTLY t_a ON t (a);");
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(run.stderr.contains("--allow-non-atomic"), "{run:?}");
    let sql = p.run(&["upgrade", "--all-binds", "--allow-non-atomic", "--sql"]);
    sql.expect(0);
    assert!(
        sql.stdout
            .contains("-- segment 1 of 3: an atomic batch over 3 bind(s)")
            && sql
                .stdout
                .contains("-- segment 2 of 3: outside any transaction")
            && sql
                .stdout
                .contains("CREATE INDEX CONCURRENTLY t_a ON t (a);")
            && sql
                .stdout
                .contains("-- segment 3 of 3: an atomic batch over 2 bind(s)"),
        "{sql:?}"
    );
    p.run(&["check", "--allow-non-atomic"]).expect(0);
    let run = p.run(&["upgrade", "--all-binds", "--allow-non-atomic"]);
    run.expect(0);
    assert!(run.stdout.contains("every segment (3) finished"), "{run:?}");
    for bind in ["pa", "pb"] {
        assert_eq!(
            p.db(bind).state(),
            state(&["t", "u"], &["1", "2", "3"]),
            "{bind}"
        );
        assert_eq!(valid_indexes(&p, bind), "t_a:true");
        assert_eq!(marks(&p, bind), 0);
    }
    assert_eq!(p.db("sa").state(), state(&["s"], &["1"]));
    p.run(&["status"]).expect(0);
    p.assert_consistent();
}

/// A unique index built concurrently fails on `pb` (duplicates there): it is undone on `pa`
/// where it had succeeded, the invalid index it left on `pb` is named with how to drop it,
/// the last segment runs nowhere, exit 1. Cleaned up, the same command resumes.
#[test]
fn a_concurrent_index_that_fails_on_one_bind_is_applied_nowhere_and_the_run_resumes() {
    let p = project("CREATE UNIQUE INDEX CONCURRENTLY t_b ON t ((a % 10));");
    let args = ["upgrade", "--all-binds", "--allow-non-atomic"];
    // The first segment alone, then pa's rows made distinct modulo 10 (pb's stay repeated).
    let run = p.run(&["upgrade", "--all-binds", "1", "--allow-non-atomic"]);
    run.expect(0);
    p.db("pa").execute("DELETE FROM t WHERE a > 10");
    let run = p.run(&args);
    run.expect(1);
    assert!(
        run.stdout.contains("pa: 2_idx applied")
            && run.stdout.contains("pb: 2_idx failed")
            && run.stdout.contains("pa: 2_idx undone with its down.sql"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("invalid index(es) public.t_b")
            && run.stderr.contains("DROP INDEX CONCURRENTLY IF EXISTS")
            && run.stderr.contains("stopped at segment 1 of 2"),
        "{run:?}"
    );
    assert_eq!(p.db("pa").state(), state(&["t"], &["1"]));
    assert_eq!(p.db("pb").state(), state(&["t"], &["1"]));
    assert_eq!(valid_indexes(&p, "pa"), "");
    assert_eq!(valid_indexes(&p, "pb"), "t_b:false");
    assert_eq!(marks(&p, "pa") + marks(&p, "pb"), 0);
    assert_eq!(p.db("sa").state(), state(&["s"], &["1"]));

    p.db("pb").execute("DROP INDEX CONCURRENTLY IF EXISTS t_b");
    p.db("pb").execute("DELETE FROM t WHERE a > 10");
    p.run(&args).expect(0);
    for bind in ["pa", "pb"] {
        assert_eq!(
            p.db(bind).state(),
            state(&["t", "u"], &["1", "2", "3"]),
            "{bind}"
        );
        assert_eq!(valid_indexes(&p, bind), "t_b:true");
    }
    p.assert_consistent();
}

/// A crash between two statements of a migration running outside a transaction leaves its
/// mark: `status` and `recover` say it is interrupted (exit 3) and `upgrade` refuses until
/// `resolve` records what a person found; then the same command finishes.
#[test]
fn an_interrupted_migration_outside_a_transaction_waits_for_resolve() {
    let p = project(
        "CREATE INDEX CONCURRENTLY t_a ON t (a);\nCREATE INDEX CONCURRENTLY t_b ON t ((a % 10));",
    );
    let args = ["upgrade", "--all-binds", "--allow-non-atomic"];
    p.run_stopped_at(&args, "outside-mid-migration");
    assert_eq!(valid_indexes(&p, "pa"), "t_a:true");
    assert_eq!(marks(&p, "pa"), 1);
    let status = p.run(&["status"]);
    status.expect(3);
    assert!(
        status
            .stdout
            .contains("interrupted while applying migration 2_idx")
            && status
                .stdout
                .contains("1 of its 2 statement(s) are known to have committed")
            && status.stdout.contains("resolve --bind pa 2 --applied")
            && status
                .stdout
                .contains("then run the same `orchestrate upgrade --allow-non-atomic` again"),
        "{status:?}"
    );
    let recover = p.run(&["recover"]);
    recover.expect(3);
    assert!(
        recover.stdout.contains("2_idx") || recover.stderr.contains("2_idx"),
        "{recover:?}"
    );
    p.run(&args).expect(3);
    // The person finishes it by hand and says so.
    p.db("pa")
        .execute("CREATE INDEX CONCURRENTLY t_b ON t ((a % 10))");
    let resolved = p.run(&["resolve", "--bind", "pa", "2", "--applied"]);
    resolved.expect(0);
    assert!(
        resolved
            .stdout
            .contains("Run the same `orchestrate upgrade --allow-non-atomic` again"),
        "{resolved:?}"
    );
    assert_eq!(marks(&p, "pa"), 0);
    p.run(&args).expect(0);
    for bind in ["pa", "pb"] {
        assert_eq!(
            p.db(bind).state(),
            state(&["t", "u"], &["1", "2", "3"]),
            "{bind}"
        );
        assert_eq!(valid_indexes(&p, bind), "t_a:true,t_b:true");
    }
    p.run(&["status"]).expect(0);
    p.assert_consistent();
}

/// A real history: crates.io's 285 migrations, 7 of them outside a transaction (concurrent
/// index builds and drops), on three fresh PostgreSQL databases of one template: one command
/// brings every bind to the head, in segments, with no mark left and every index valid.
#[test]
fn crates_io_history_reaches_its_head_on_every_bind_in_one_command() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/crates-io/migrations")
        .canonicalize()
        .unwrap();
    let versions = std::fs::read_dir(&folder)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count() as i64;
    assert_eq!(versions, 285);
    let mut p = Project::new();
    for bind in ["c1", "c2", "c3"] {
        p.add_pg(bind);
        let own = p.path().join("migrations").join(bind);
        std::fs::remove_dir(&own).unwrap();
        std::os::unix::fs::symlink(&folder, &own).unwrap();
    }
    let run = p.run(&["upgrade", "--all-binds", "--allow-non-atomic"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains("every segment (14) finished on every bind"),
        "{run:?}"
    );
    for bind in ["c1", "c2", "c3"] {
        let db = p.db(bind);
        assert_eq!(
            db.count("SELECT count(*) AS n FROM __diesel_schema_migrations"),
            versions,
            "{bind}"
        );
        assert_eq!(
            db.count("SELECT count(*) AS n FROM orchestrate_in_progress"),
            0
        );
        assert_eq!(
            db.count("SELECT count(*) AS n FROM pg_index WHERE NOT indisvalid"),
            0,
            "{bind}"
        );
        assert!(db.state().prepared.is_empty());
    }
    p.run(&["status"]).expect(0);
    p.run(&["upgrade", "--all-binds", "--allow-non-atomic"])
        .expect(0);
}

/// Found by a twelfth adversarial review: the down.sql of a migration outside a transaction
/// runs during an upgrade (it undoes the migration where it succeeded when another bind fails
/// it), so the upgrade checks it: here it names orchestrate's own table, and nothing runs.
#[test]
fn review12_the_down_sql_of_a_migration_outside_a_transaction_is_checked_by_the_upgrade() {
    let mut p = project("CREATE INDEX CONCURRENTLY t_a ON t (a);");
    for bind in ["pa", "pb"] {
        p.migration(
            bind,
            "2_idx",
            "CREATE INDEX CONCURRENTLY t_a ON t (a);",
            Some("DROP INDEX CONCURRENTLY IF EXISTS t_a;\nDELETE FROM __diesel_schema_migrations WHERE version = '1';"),
        );
    }
    let run = p.run(&["upgrade", "--all-binds", "--allow-non-atomic"]);
    run.expect(2);
    assert!(
        run.stderr.contains(
            "migration 2_idx, down.sql line 2: a statement naming __diesel_schema_migrations"
        ),
        "{run:?}"
    );
    for bind in ["pa", "pb"] {
        assert_eq!(p.db(bind).state(), state(&[], &[]), "{bind}");
    }
}

/// Found by a twelfth adversarial review: an undo whose first statement fails leaves the
/// migration applied; its mark stays, so `status` and `recover` say so (exit 3) instead of
/// "nothing to recover".
#[test]
fn review12_an_undo_that_fails_leaves_its_mark() {
    let mut p = project("CREATE INDEX CONCURRENTLY t_a ON t (a);");
    p.migration(
        "pa",
        "2_idx",
        "CREATE INDEX CONCURRENTLY t_a ON t (a);",
        Some("DROP INDEX CONCURRENTLY t_wrong_name;"),
    );
    p.migration(
        "pb",
        "2_idx",
        "CREATE INDEX CONCURRENTLY t_a ON t (nope);",
        Some("DROP INDEX CONCURRENTLY IF EXISTS t_a;"),
    );
    let run = p.run(&["upgrade", "--all-binds", "--allow-non-atomic"]);
    run.expect(3);
    assert!(
        run.stdout.contains("pa: 2_idx could not be undone"),
        "{run:?}"
    );
    assert_eq!(marks(&p, "pa"), 1);
    assert_eq!(p.db("pa").state(), state(&["t"], &["1", "2"]));
    assert_eq!(p.db("pb").state(), state(&["t"], &["1"]));
    assert_eq!(p.db("sa").state(), state(&["s"], &["1"]));
    assert_eq!(marks(&p, "pb"), 0);
    p.run(&["status"]).expect(3);
    p.run(&["recover"]).expect(3);
}

/// Found by a twelfth adversarial review: when the run dies while the server still runs a
/// statement of a migration outside a transaction, that statement holds the bind's
/// migration lock on its own session: `resolve` and a new `upgrade` wait for it instead of
/// settling or running it a second time; once it ended, `resolve` records what happened.
#[test]
fn review12_a_statement_still_running_after_its_run_died_is_not_run_twice() {
    let mut p = project("CREATE INDEX CONCURRENTLY t_a ON t (a);");
    for bind in ["pa", "pb"] {
        p.migration(
            bind,
            "2_idx",
            "INSERT INTO t SELECT -1 FROM pg_sleep(4);",
            Some("DELETE FROM t WHERE a = -1;"),
        );
    }
    let args = ["upgrade", "--all-binds", "--allow-non-atomic", "1"];
    p.run(&args).expect(0);
    let mut child = crate::crash::spawn(&p, &["upgrade", "--all-binds", "--allow-non-atomic"], "");
    crate::crash::wait_until("pa runs the sleeping insert", || {
        p.db("pa").count(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'INSERT INTO t SELECT -1%' AND state = 'active'",
        ) == 1
    });
    child.kill().unwrap();
    child.wait().unwrap();
    // Shorter waits than the statement's four seconds.
    let short = [("ORCHESTRATE__LOCK_TIMEOUT_MS", "1000")];
    let resolve = p.run_with(&["resolve", "--bind", "pa", "2", "--reverted"], &short);
    assert_ne!(resolve.code, 0, "{resolve:?}");
    assert!(resolve.stderr.contains("still running"), "{resolve:?}");
    let again = p.run_with(&["upgrade", "--all-binds", "--allow-non-atomic"], &short);
    again.expect(1);
    assert!(
        again.stderr.contains("running outside a transaction now"),
        "{again:?}"
    );
    crate::crash::wait_until("the sleeping insert ended", || {
        p.db("pa").count(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE 'INSERT INTO t SELECT -1%' AND state = 'active'",
        ) == 0
    });
    assert_eq!(
        p.db("pa").count("SELECT count(*) AS n FROM t WHERE a = -1"),
        1
    );
    p.run(&["status"]).expect(3);
    p.run(&["resolve", "--bind", "pa", "2", "--applied"])
        .expect(0);
    p.run(&["upgrade", "--all-binds", "--allow-non-atomic"])
        .expect(0);
    assert_eq!(
        p.db("pa").count("SELECT count(*) AS n FROM t WHERE a = -1"),
        1
    );
    assert_eq!(
        p.db("pb").count("SELECT count(*) AS n FROM t WHERE a = -1"),
        1
    );
    p.assert_consistent();
}
