//! The seed scenarios of the atomic upgrade, on real PostgreSQL (and SQLite): a broken revision
//! leaves every bind exactly as it was, whichever bind it is on and whenever it surfaces.

use crate::support::{state, Project};

/// A chain of four revisions where the third is broken after doing some work.
fn four_with_broken_third(p: &mut Project, bind: &str) {
    p.migration(bind, "1_create_a", "CREATE TABLE a (id INT PRIMARY KEY);", Some("DROP TABLE a;"))
        .migration(bind, "2_create_b", "CREATE TABLE b (id INT PRIMARY KEY);", Some("DROP TABLE b;"))
        .migration(
            bind,
            "3_broken",
            "CREATE TABLE c (id INT PRIMARY KEY);\nINSERT INTO c VALUES (1);\nINSERT INTO no_such_table VALUES (1);",
            Some("DROP TABLE c;"),
        )
        .migration(bind, "4_create_d", "CREATE TABLE d (id INT PRIMARY KEY);", Some("DROP TABLE d;"));
}

#[test]
fn seed_scenario_on_one_postgres_database() {
    let mut p = Project::new();
    p.add_pg("app");
    four_with_broken_third(&mut p, "app");
    let db = p.db("app");

    // 1. Upgrade to the first revision on a fresh database.
    p.run(&["upgrade", "--bind", "app", "1"]).expect(0);
    assert_eq!(db.state(), state(&["a"], &["1"]));

    // 2. Upgrade to the second, then try the third.
    p.run(&["upgrade", "--bind", "app", "2"]).expect(0);
    assert_eq!(db.state(), state(&["a", "b"], &["1", "2"]));
    let run = p.run(&["upgrade", "--bind", "app", "3"]);
    run.expect(1);
    assert!(run.stderr.contains("bind `app`"), "{}", run.stderr);
    assert!(run.stderr.contains("3_broken"), "{}", run.stderr);
    assert!(
        run.stderr.contains("no_such_table"),
        "the database's own error: {}",
        run.stderr
    );
    assert_eq!(
        db.state(),
        state(&["a", "b"], &["1", "2"]),
        "no trace of the third"
    );

    // 3. Downgrade to the first, then upgrade to head: back at the first, the fourth never ran.
    p.run(&["downgrade", "--bind", "app", "1"]).expect(0);
    assert_eq!(db.state(), state(&["a"], &["1"]));
    let run = p.run(&["upgrade", "--bind", "app"]);
    run.expect(1);
    assert!(run.stderr.contains("3_broken"), "{}", run.stderr);
    assert_eq!(db.state(), state(&["a"], &["1"]));
    assert!(!run.stdout.contains("4_create_d") && !run.stderr.contains("4_create_d"));

    // The history shows the same: 1 applied, the rest pending.
    let run = p.run(&["history", "--bind", "app"]);
    run.expect(0);
    let listed = |state: &str, name: &str| {
        run.stdout.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.len() >= 2 && words[0] == state && words[1] == name
        })
    };
    assert!(listed("applied", "1_create_a"), "{}", run.stdout);
    assert!(listed("pending", "2_create_b"), "{}", run.stdout);
    assert!(listed("pending", "3_broken"), "{}", run.stdout);
}

/// Three binds, each with two revisions; every bind starts at its first. The second revision of
/// `broken` fails in the way `failure` describes; the batch must leave every bind at its first.
fn three_binds_fail_on(kinds: [&str; 3], broken: &str, failure: &str) {
    let names = ["a_users", "b_billing", "c_audit"];
    let mut p = Project::new();
    for (name, kind) in names.iter().zip(kinds) {
        if kind == "pg" {
            p.add_pg(name);
        } else {
            p.add_sqlite(name);
        }
        let table = format!("{name}_one");
        p.migration(
            name,
            "1_one",
            &format!("CREATE TABLE {table} (id INT PRIMARY KEY);"),
            Some(&format!("DROP TABLE {table};")),
        );
        let second = if *name == broken {
            match failure {
                "error" => format!(
                    "CREATE TABLE {name}_two (id INT PRIMARY KEY);\nINSERT INTO {name}_two VALUES (1);\nSELECT * FROM no_such_table;"
                ),
                // A constraint checked only at commit time (PREPARE or the decider's COMMIT).
                "commit" => format!(
                    "CREATE TABLE {name}_two (id INT PRIMARY KEY);\n\
                     CREATE TABLE {name}_child (parent INT REFERENCES {name}_two (id) DEFERRABLE INITIALLY DEFERRED);\n\
                     INSERT INTO {name}_child VALUES (42);"
                ),
                other => panic!("unknown failure {other}"),
            }
        } else {
            format!("CREATE TABLE {name}_two (id INT PRIMARY KEY);")
        };
        p.migration(
            name,
            "2_two",
            &second,
            Some(&format!("DROP TABLE {name}_two;")),
        );
    }
    p.run(&["upgrade", "--all-binds", "+1"]).expect(0);
    let before = p.states();
    for (name, st) in &before {
        assert_eq!(st, &state(&[&format!("{name}_one")], &["1"]), "{name}");
    }

    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(
        run.stderr.contains(&format!("bind `{broken}`")),
        "names the bind: {}",
        run.stderr
    );
    assert!(run.stderr.contains("rolled back"), "{}", run.stderr);
    if failure == "error" {
        assert!(
            run.stderr.contains("2_two"),
            "names the migration: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains("no_such_table"),
            "the database's error: {}",
            run.stderr
        );
    } else {
        assert!(
            run.stderr.contains("foreign key"),
            "the database's error: {}",
            run.stderr
        );
    }
    assert_eq!(
        p.states(),
        before,
        "every bind ends as it began\n{}",
        run.stdout
    );

    // And once the broken migration is fixed, the same batch goes through everywhere.
    p.migration(
        broken,
        "2_two",
        &format!("CREATE TABLE {broken}_two (id INT PRIMARY KEY);"),
        None,
    );
    p.run(&["upgrade", "--all-binds"]).expect(0);
    for (name, st) in p.states() {
        assert_eq!(
            st,
            state(
                &[&format!("{name}_one"), &format!("{name}_two")],
                &["1", "2"]
            ),
            "{name}"
        );
    }
}

// All-PostgreSQL: `a_users` is the decider (it runs last), `b_billing` prepares first,
// `c_audit` second.
#[test]
fn three_postgres_binds_error_on_the_first() {
    three_binds_fail_on(["pg", "pg", "pg"], "b_billing", "error");
}

#[test]
fn three_postgres_binds_error_on_the_middle() {
    three_binds_fail_on(["pg", "pg", "pg"], "c_audit", "error");
}

#[test]
fn three_postgres_binds_error_on_the_last() {
    three_binds_fail_on(["pg", "pg", "pg"], "a_users", "error");
}

#[test]
fn three_postgres_binds_commit_time_failure_at_prepare() {
    three_binds_fail_on(["pg", "pg", "pg"], "c_audit", "commit");
}

#[test]
fn three_postgres_binds_commit_time_failure_on_the_decider() {
    three_binds_fail_on(["pg", "pg", "pg"], "a_users", "commit");
}

#[test]
fn three_postgres_binds_commit_time_failure_on_the_first() {
    three_binds_fail_on(["pg", "pg", "pg"], "b_billing", "commit");
}

// Mixed: the SQLite bind `b_billing` is the decider; the PostgreSQL binds prepare.
#[test]
fn mixed_binds_error_on_a_postgres_participant() {
    three_binds_fail_on(["pg", "sqlite", "pg"], "a_users", "error");
}

#[test]
fn mixed_binds_error_on_the_sqlite_decider() {
    three_binds_fail_on(["pg", "sqlite", "pg"], "b_billing", "error");
}

#[test]
fn mixed_binds_commit_time_failure_at_prepare() {
    three_binds_fail_on(["pg", "sqlite", "pg"], "c_audit", "commit");
}

// All SQLite, the embedded default: the first is the decider, the others hold their
// transactions open until it commits.
#[test]
fn sqlite_binds_error_on_each() {
    for broken in ["a_users", "b_billing", "c_audit"] {
        three_binds_fail_on(["sqlite", "sqlite", "sqlite"], broken, "error");
    }
}
