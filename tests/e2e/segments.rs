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
