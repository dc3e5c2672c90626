//! The statement check: a migration holding a statement that would end or escape the batch's
//! transaction (COMMIT, BEGIN, PREPARE TRANSACTION, COMMIT AND CHAIN, USE, ...), or one that
//! cannot run inside a transaction block (CREATE INDEX CONCURRENTLY, also after an E-string
//! or a nested comment), is refused at plan time, in up.sql and in down.sql: exit 2, a message
//! naming the bind, the migration, the file and the line, and every database untouched.

use std::fs;

use crate::support::{state, Project};

#[track_caller]
fn refused(p: &Project, args: &[&str], needles: &[&str]) {
    let run = p.run(args);
    run.expect(2);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{args:?}: missing {needle:?} in\n{}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
}

/// Binds of every backend whose up.sql commits or leaves the batch: nothing runs anywhere,
/// `--sql` refuses the same way, and `check` reports them.
#[test]
fn escaping_up_sql_is_refused_on_every_backend() {
    let mut p = Project::new();
    p.add_pg("main").add_sqlite("side").add_mysql("shop");
    p.migration(
        "main",
        "1_s",
        "CREATE TABLE s(x int);\nCOMMIT;\nBEGIN;",
        Some("DROP TABLE s;"),
    );
    p.migration(
        "side",
        "1_t",
        "-- a comment\nCREATE TABLE t (x int);\n\nCOMMIT;",
        Some("DROP TABLE t;"),
    );
    p.migration(
        "shop",
        "1_u",
        "CREATE TABLE u (x INT);\nINSERT INTO u VALUES (1); -- COMMIT;\nSET autocommit = 0;",
        Some("DROP TABLE u;"),
    );
    let needles = [
        "bind `main`: migration 1_s, up.sql line 2: COMMIT ends the batch's transaction",
        "bind `side`: migration 1_t, up.sql line 4: COMMIT ends the batch's transaction",
        "bind `shop`: migration 1_u, up.sql line 3: SET autocommit",
        "Remove it",
    ];
    refused(&p, &["upgrade", "--all-binds"], &needles);
    refused(
        &p,
        &["upgrade", "--all-binds", "--allow-non-atomic"],
        &needles,
    );
    refused(&p, &["upgrade", "--all-binds", "--sql"], &needles);
    for (bind, s) in p.states() {
        assert_eq!(s, state(&[], &[]), "{bind}");
    }
    assert!(
        !p.path().join("var/side.sqlite3").exists(),
        "the SQLite file was created"
    );
    let run = p.run(&["check"]);
    run.expect(2);
    assert!(
        run.stdout.contains("migration 1_s, up.sql line 2: COMMIT"),
        "{}",
        run.stdout
    );
}

/// Each PostgreSQL form in up.sql, one at a time, next to a clean SQLite bind.
#[test]
fn postgres_forms_in_up_sql_are_refused() {
    let mut p = Project::new();
    p.add_pg("main").add_sqlite("side");
    p.create_table("side", "1_side", "side_t");
    for (sql, needle) in [
        (
            "CREATE TABLE s(x int);\nPREPARE TRANSACTION 'sneaky';",
            "up.sql line 2: PREPARE TRANSACTION",
        ),
        (
            "CREATE TABLE s(x int);\nCOMMIT AND CHAIN;\nCREATE TABLE s2(x int);",
            "up.sql line 2: COMMIT AND CHAIN",
        ),
        (
            "CREATE TABLE s(x int);\nINSERT INTO s VALUES (length(E'it\\'s'));\nCREATE INDEX CONCURRENTLY s_x ON s (x);",
            "up.sql line 3: CREATE INDEX CONCURRENTLY cannot run inside a transaction block",
        ),
        (
            "CREATE TABLE s(x int);\n/* outer /* nested */\n still the comment; */\nCREATE INDEX CONCURRENTLY s_x ON s (x);",
            "up.sql line 4: CREATE INDEX CONCURRENTLY",
        ),
        (
            "CREATE TABLE s(x int);\nSET SESSION AUTHORIZATION DEFAULT;",
            "up.sql line 2: SET SESSION AUTHORIZATION",
        ),
        (
            "CREATE TABLE s(x int);\nSET TRANSACTION READ ONLY;",
            "up.sql line 2: SET TRANSACTION",
        ),
    ] {
        p.migration("main", "1_s", sql, Some("DROP TABLE s;"));
        refused(
            &p,
            &["upgrade", "--all-binds"],
            &["bind `main`: migration 1_s, ", needle],
        );
        refused(&p, &["upgrade", "--all-binds", "--sql"], &[needle]);
        assert_eq!(p.db("main").state(), state(&[], &[]), "{sql}");
        assert_eq!(p.db("side").state(), state(&[], &[]), "{sql}");
    }
    // What is only in a string, a comment, a quoted name or a DO block is not refused.
    p.migration(
        "main",
        "1_s",
        "CREATE TABLE s(x int, \"commit\" text);\nINSERT INTO s VALUES (1, 'COMMIT; BEGIN;'); -- COMMIT;\n/* /* COMMIT; */ ROLLBACK; */\nDO $$ BEGIN IF true THEN PERFORM 1; END IF; END $$;",
        Some("DROP TABLE s;"),
    );
    p.run(&["upgrade", "--all-binds"]).expect(0);
    assert_eq!(p.db("main").state(), state(&["s"], &["1"]));
    assert_eq!(p.db("side").state(), state(&["side_t"], &["1"]));
}

/// A down.sql that would escape the batch: the downgrade is refused before it runs anything;
/// an upgrade of a migration whose down.sql could never run in a batch goes on, and says so
/// (real histories hold such files: crates.io's has one).
#[test]
fn escaping_down_sql_is_refused() {
    let mut p = Project::new();
    p.add_pg("main").add_sqlite("side");
    p.migration(
        "main",
        "1_a",
        "CREATE TABLE a (x int);",
        Some("DROP TABLE a;"),
    );
    p.create_table("side", "1_side", "side_t");
    p.run(&["upgrade", "--all-binds"]).expect(0);
    let applied = |p: &Project| {
        assert_eq!(p.db("main").state(), state(&["a"], &["1"]));
        assert_eq!(p.db("side").state(), state(&["side_t"], &["1"]));
    };
    let down = p.path().join("migrations/main/1_a/down.sql");
    for (sql, needle) in [
        (
            "DROP INDEX IF EXISTS a_x;\nCREATE INDEX CONCURRENTLY a_x ON a (x);\nDROP TABLE a;",
            "down.sql line 2: CREATE INDEX CONCURRENTLY",
        ),
        (
            "DROP TABLE a;\nPREPARE TRANSACTION 'sneaky';",
            "down.sql line 2: PREPARE TRANSACTION",
        ),
        (
            "DROP TABLE a;\nCOMMIT AND CHAIN;",
            "down.sql line 2: COMMIT AND CHAIN",
        ),
        (
            "SELECT E'it\\'s';\nCREATE INDEX CONCURRENTLY a_x ON a (x);\nDROP TABLE a;",
            "down.sql line 2: CREATE INDEX CONCURRENTLY",
        ),
        (
            "/* /* */ */\nCREATE INDEX CONCURRENTLY a_x ON a (x);\nDROP TABLE a;",
            "down.sql line 2: CREATE INDEX CONCURRENTLY",
        ),
    ] {
        fs::write(&down, sql).unwrap();
        refused(
            &p,
            &["downgrade", "--all-binds"],
            &["bind `main`: migration 1_a, ", needle],
        );
        refused(&p, &["downgrade", "--all-binds", "--sql"], &[needle]);
        applied(&p);
    }
    fs::write(&down, "DROP TABLE a;").unwrap();
    fs::write(
        p.path().join("migrations/side/1_side/down.sql"),
        "DROP TABLE side_t;\nEND;",
    )
    .unwrap();
    refused(
        &p,
        &["downgrade", "--all-binds"],
        &["bind `side`: migration 1_side, down.sql line 2: END"],
    );
    applied(&p);
    // A new migration whose down.sql could not run in a batch is applied, with a note; its
    // downgrade is refused.
    p.migration(
        "main",
        "2_b",
        "CREATE TABLE b (x int);",
        Some("DROP INDEX CONCURRENTLY b_x;\nDROP TABLE b;"),
    );
    let run = p.run(&["upgrade", "--bind", "main"]);
    run.expect(0);
    assert!(
        run.stderr
            .contains("2_b: a downgrade of it would be refused")
            && run.stderr.contains("DROP INDEX CONCURRENTLY"),
        "{run:?}"
    );
    assert_eq!(p.db("main").state(), state(&["a", "b"], &["1", "2"]));
    refused(
        &p,
        &["downgrade", "--bind", "main", "1"],
        &["bind `main`: migration 2_b, down.sql line 1: DROP INDEX CONCURRENTLY"],
    );
    assert_eq!(p.db("main").state(), state(&["a", "b"], &["1", "2"]));
    fs::write(
        p.path().join("migrations/main/2_b/down.sql"),
        "DROP TABLE b;",
    )
    .unwrap();
    fs::write(
        p.path().join("migrations/side/1_side/down.sql"),
        "DROP TABLE side_t;",
    )
    .unwrap();
    p.run(&["downgrade", "--all-binds", "base"]).expect(0);
    assert_eq!(p.db("main").state(), state(&[], &[]));
    assert_eq!(p.db("side").state(), state(&[], &[]));
}
