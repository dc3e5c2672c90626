//! The commands as a user meets them: the shipped example, --sql, status, bad input.

use std::fs;
use std::path::Path;

use diesel::prelude::*;
use diesel_migrations::MigrationHarness;

use crate::support::{state, Db, Project};

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The README's first command, on the shipped config and migrations (SQLite files).
#[test]
fn the_shipped_example_upgrades_and_downgrades() {
    let p = Project::new();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    copy_dir(&repo.join("config"), &p.path().join("config"));
    copy_dir(&repo.join("migrations"), &p.path().join("migrations"));
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(0);
    assert!(
        run.stdout.contains("committed on every bind"),
        "{}",
        run.stdout
    );
    let users = Db::Sqlite(p.path().join("var/users.sqlite3"));
    assert_eq!(
        users.state(),
        state(&["users"], &["20240101000000", "20240201000000"])
    );
    let run = p.run(&["status", "--json"]);
    run.expect(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let binds = v["binds"].as_array().unwrap();
    assert_eq!(binds.len(), 3);
    for b in binds {
        assert_eq!(b["backend"], "sqlite");
        assert_eq!(b["current"], b["head"]);
        assert_eq!(b["pending"].as_array().unwrap().len(), 0);
        assert_eq!(b["problems"].as_array().unwrap().len(), 0);
    }
    p.run(&["upgrade", "--all-binds"]).expect(0);
    p.run(&["downgrade", "--all-binds", "base"]).expect(0);
    assert_eq!(users.state(), state(&[], &[]));
}

#[test]
fn sql_prints_the_batch_and_touches_nothing() {
    let mut p = Project::new();
    p.add_pg("main").add_sqlite("side");
    p.migration(
        "main",
        "1_a",
        "CREATE TABLE a (id INT);",
        Some("DROP TABLE a;"),
    );
    p.migration(
        "side",
        "1_s",
        "CREATE TABLE s (id INT);",
        Some("DROP TABLE s;"),
    );
    let run = p.run(&["upgrade", "--all-binds", "--sql"]);
    run.expect(0);
    for needle in [
        "BEGIN;",
        "pg_try_advisory_xact_lock",
        "CREATE TABLE a (id INT);",
        "INSERT INTO __diesel_schema_migrations (version) VALUES ('1');",
        "PREPARE TRANSACTION 'orchestrate:<batch-id>:side:main';",
        "COMMIT PREPARED 'orchestrate:<batch-id>:side:main';",
        "BEGIN IMMEDIATE;",
        "UPDATE orchestrate_batches SET state = 'commit'",
        // The session settings, with the configured values (the test projects say 5000 ms).
        "SET lock_timeout = 5000;",
        "PRAGMA busy_timeout = 5000; PRAGMA synchronous = FULL;",
        "SET ROLE NONE;",
        "SAVEPOINT orchestrate_batch_guard_<random>;",
    ] {
        assert!(
            run.stdout.contains(needle),
            "missing {needle:?} in\n{}",
            run.stdout
        );
    }
    assert_eq!(p.db("main").state(), state(&[], &[]));
    assert!(
        !p.path().join("var/side.sqlite3").exists(),
        "--sql created the SQLite file"
    );
}

#[test]
fn diesel_sees_what_orchestrate_applied() {
    let mut p = Project::new();
    p.add_pg("main");
    p.migration(
        "main",
        "2024-01-01-000000_a",
        "CREATE TABLE a (id INT);",
        Some("DROP TABLE a;"),
    );
    p.migration(
        "main",
        "2024-01-02-000000_b",
        "CREATE TABLE b (id INT);",
        Some("DROP TABLE b;"),
    );
    p.run(&["upgrade", "--all-binds"]).expect(0);
    let Db::Pg(db) = p.db("main") else {
        unreachable!()
    };
    let mut conn: diesel::PgConnection = db.conn();
    let mut applied: Vec<String> = conn
        .applied_migrations()
        .unwrap()
        .into_iter()
        .map(|v| v.to_string())
        .collect();
    applied.sort();
    assert_eq!(applied, ["20240101000000", "20240102000000"]);
    let _ = conn.begin_test_transaction();
}

#[test]
fn numeric_order_and_targets() {
    let mut p = Project::new();
    p.add_sqlite("app");
    for v in [1, 2, 9, 10, 11] {
        p.migration(
            "app",
            &format!("{v}_m{v}"),
            &format!("CREATE TABLE t{v} (id INT);"),
            Some(&format!("DROP TABLE t{v};")),
        );
    }
    p.run(&["upgrade", "--bind", "app", "9"]).expect(0);
    assert_eq!(
        p.db("app").state(),
        state(&["t1", "t2", "t9"], &["1", "2", "9"])
    );
    p.run(&["upgrade", "--bind", "app", "+1"]).expect(0);
    assert_eq!(p.db("app").state().versions, ["1", "10", "2", "9"]);
    p.run(&["upgrade", "--bind", "app", "11_m"]).expect(0);
    p.run(&["downgrade", "--bind", "app", "-2"]).expect(0);
    assert_eq!(
        p.db("app").state(),
        state(&["t1", "t2", "t9"], &["1", "2", "9"])
    );
    let run = p.run(&["downgrade", "--bind", "app", "-4"]);
    run.expect(2);
    assert!(run.stderr.contains("below base"), "{}", run.stderr);
    let run = p.run(&["upgrade", "--bind", "app", "1"]);
    run.expect(2);
    assert!(
        run.stderr.contains("ambiguous") || run.stderr.contains("already applied"),
        "{}",
        run.stderr
    );
    p.run(&["downgrade", "--bind", "app", "base"]).expect(0);
    assert_eq!(p.db("app").state(), state(&[], &[]));
}

#[test]
fn several_binds_with_their_own_targets() {
    let mut p = Project::new();
    p.add_pg("one").add_pg("two");
    for bind in ["one", "two"] {
        for v in 1..=3 {
            p.migration(
                bind,
                &format!("{v}_x"),
                &format!("CREATE TABLE {bind}_{v} (id INT);"),
                Some(&format!("DROP TABLE {bind}_{v};")),
            );
        }
    }
    p.run(&["upgrade", "--all-binds", "--target", "two=1"])
        .expect(0);
    assert_eq!(
        p.db("one").state(),
        state(&["one_1", "one_2", "one_3"], &["1", "2", "3"])
    );
    assert_eq!(p.db("two").state(), state(&["two_1"], &["1"]));
    let run = p.run(&["upgrade", "--bind", "one", "--target", "two=2"]);
    run.expect(2);
    assert!(run.stderr.contains("not selected"), "{}", run.stderr);
    p.run(&["downgrade", "--all-binds", "--target", "one=1", "base"])
        .expect(0);
    assert_eq!(p.db("one").state(), state(&["one_1"], &["1"]));
    assert_eq!(p.db("two").state(), state(&[], &[]));
}

/// Invalid input: exit 2, a message naming what is wrong, nothing changed.
#[test]
fn bad_input_exits_2_and_changes_nothing() {
    let mut p = Project::new();
    p.add_pg("main").add_sqlite("side");
    p.migration("main", "1_a", "CREATE TABLE a (id INT);", None);
    p.migration("side", "1_s", "CREATE TABLE s (id INT);", None);
    let check = |p: &Project, args: &[&str], needle: &str| {
        let run = p.run(args);
        run.expect(2);
        assert!(
            run.stderr.contains(needle),
            "{args:?}: expected {needle:?} in\n{}",
            run.stderr
        );
        assert_eq!(p.db("main").state(), state(&[], &[]), "{args:?}");
        assert_eq!(p.db("side").state(), state(&[], &[]), "{args:?}");
    };
    check(&p, &["upgrade", "--all-binds", "nope"], "matches no");
    check(
        &p,
        &["upgrade", "--bind", "ghost"],
        "no bind is named `ghost`",
    );
    check(
        &p,
        &["upgrade", "--all-binds", "--target", "main"],
        "NAME=TARGET",
    );
    p.migration("side", "01_dup", "CREATE TABLE dup (id INT);", None);
    check(&p, &["upgrade", "--all-binds"], "same version");
    fs::remove_dir_all(p.path().join("migrations/side/01_dup")).unwrap();
    fs::create_dir_all(p.path().join("migrations/side/2_empty")).unwrap();
    fs::write(p.path().join("migrations/side/2_empty/up.sql"), "-- todo\n").unwrap();
    check(&p, &["upgrade", "--all-binds"], "is empty");
    fs::remove_file(p.path().join("migrations/side/2_empty/up.sql")).unwrap();
    check(&p, &["upgrade", "--all-binds"], "has no up.sql");
    fs::remove_dir_all(p.path().join("migrations/side/2_empty")).unwrap();
    let config = p.path().join("config/default.toml");
    let good = fs::read_to_string(&config).unwrap();
    fs::write(&config, good.replace("sqlite://", "sqlight://")).unwrap();
    check(&p, &["upgrade", "--all-binds"], "sqlight");
    fs::write(&config, format!("{good}\nunknown_key = 1\n")).unwrap();
    check(&p, &["upgrade", "--all-binds"], "unknown_key");
    fs::write(&config, good.replace("[binds.main]", "[binds.Main]")).unwrap();
    check(&p, &["status"], "Main");
    fs::write(&config, good.replace("[binds.main]", "[binds.main")).unwrap();
    check(&p, &["status"], "default.toml");
    fs::write(
        &config,
        format!("{good}\n[binds.down]\nurl = \"postgres://postgres@127.0.0.1:1/x\"\n"),
    )
    .unwrap();
    fs::create_dir_all(p.path().join("migrations/down/1_x")).unwrap();
    fs::write(p.path().join("migrations/down/1_x/up.sql"), "SELECT 1;").unwrap();
    check(&p, &["upgrade", "--all-binds"], "cannot connect");
    fs::write(&config, good).unwrap();
    p.run(&["upgrade", "--all-binds"]).expect(0);
}

/// A migration that commits by itself breaks atomicity; the tool refuses it before anything
/// runs (the check after each step, which compares transaction ids, stays as a second net).
#[test]
fn a_migration_that_ends_the_transaction_is_reported() {
    let mut p = Project::new();
    p.add_pg("main").add_sqlite("side");
    p.migration(
        "main",
        "1_a",
        "CREATE TABLE a (id INT);\nCOMMIT;\nCREATE TABLE a2 (id INT);",
        None,
    );
    p.migration("side", "1_s", "CREATE TABLE s (id INT);", None);
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(
        run.stderr
            .contains("migration 1_a, up.sql line 2: COMMIT ends the batch's transaction"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db("side").state(), state(&[], &[]));
    assert_eq!(p.db("main").state(), state(&[], &[]));
}

/// `check` as a CI gate: 0 when clean, 1 on drift or (with --no-pending) pending work, 2 when a
/// bind cannot be read. The database is never changed by it.
#[test]
fn check_exit_codes() {
    let mut p = Project::new();
    p.add_pg("main").add_sqlite("side");
    p.migration(
        "main",
        "1_a",
        "CREATE TABLE a (id INT);",
        Some("DROP TABLE a;"),
    );
    p.migration(
        "side",
        "1_s",
        "CREATE TABLE s (id INT);",
        Some("DROP TABLE s;"),
    );
    p.run(&["check"]).expect(0);
    let run = p.run(&["check", "--no-pending"]);
    run.expect(1);
    assert!(run.stdout.contains("pending migrations"), "{}", run.stdout);
    p.assert_states(&[("main", state(&[], &[])), ("side", state(&[], &[]))]);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    p.run(&["check", "--no-pending"]).expect(0);
    // An applied migration edited afterwards.
    fs::write(
        p.path().join("migrations/main/1_a/up.sql"),
        "CREATE TABLE a (id BIGINT);",
    )
    .unwrap();
    // Drift: the upgrade it gates would refuse it (exit 2), so check does too.
    let run = p.run(&["check", "--json"]);
    run.expect(2);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let main = &v["binds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bind"] == "main")
        .unwrap()["problems"];
    assert!(main[0].as_str().unwrap().contains("edited"), "{main}");
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(
        run.stderr.contains("1_a") && run.stderr.contains("edited"),
        "{}",
        run.stderr
    );
    let done = [
        ("main", state(&["a"], &["1"])),
        ("side", state(&["s"], &["1"])),
    ];
    p.assert_states(&done);
    fs::write(
        p.path().join("migrations/main/1_a/up.sql"),
        "CREATE TABLE a (id INT);",
    )
    .unwrap();
    p.run(&["check"]).expect(0);
    // A migrations folder that cannot be read.
    fs::create_dir_all(p.path().join("migrations/side/2_broken")).unwrap();
    let run = p.run(&["check"]);
    run.expect(2);
    assert!(run.stdout.contains("no up.sql"), "{}", run.stdout);
    p.assert_states(&done);
}

/// The `error: ...` lines a run printed.
fn error_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect()
}

/// `check` is the gate for what `upgrade --all-binds` would do: for each kind of batch that
/// upgrade refuses, check fails with the same exit code and the same error lines, touches
/// nothing, and with `--json` both say it in one JSON object on stdout.
#[test]
fn check_refuses_what_upgrade_refuses() {
    // A server that cannot hold the batch's prepared transactions.
    let cluster = crate::support::OwnCluster::start_with(&[("PG_MAX_PREPARED", "1")]);
    let mut small = Project::new();
    small.config("decider = \"a_lite\"");
    small
        .add_sqlite("a_lite")
        .add_pg_at("b_pg", &cluster.url)
        .add_pg_at("c_pg", &cluster.url);
    // A MySQL bind with a schema change, without --allow-non-atomic.
    let mut consent = Project::new();
    consent.add_pg("a_pg").add_mysql("shop");
    // A statement that cannot run inside the batch's transaction.
    let mut concurrently = Project::new();
    concurrently.add_pg("a_pg");
    concurrently.migration(
        "a_pg",
        "2_idx",
        "CREATE INDEX CONCURRENTLY t_idx ON t (id);",
        Some("DROP INDEX t_idx;"),
    );
    for (name, p) in [
        ("capacity", &mut small),
        ("consent", &mut consent),
        ("concurrently", &mut concurrently),
    ] {
        let binds: Vec<String> = p.binds.iter().map(|(b, _)| b.clone()).collect();
        for bind in &binds {
            p.create_table(bind, "1_t", &format!("t_{bind}"));
        }
        if name == "concurrently" {
            p.create_table("a_pg", "1_t", "t");
        }
        let upgrade = p.run(&["upgrade", "--all-binds"]);
        let check = p.run(&["check"]);
        assert!(upgrade.code != 0, "{name}: {upgrade:?}");
        assert_eq!(check.code, upgrade.code, "{name}: {check:?}\n{upgrade:?}");
        let wanted = error_lines(&upgrade.stderr);
        assert!(!wanted.is_empty(), "{name}: {upgrade:?}");
        for line in &wanted {
            assert!(
                check.stderr.contains(line),
                "{name}: check lacks `{line}`: {check:?}"
            );
        }
        assert!(check.stdout.contains("check failed"), "{name}: {check:?}");
        for args in [
            &["upgrade", "--all-binds", "--json"][..],
            &["check", "--json"][..],
        ] {
            let run = p.run(args);
            let v: serde_json::Value = serde_json::from_str(&run.stdout)
                .unwrap_or_else(|e| panic!("{name}: {args:?}: not JSON ({e}): {run:?}"));
            assert_eq!(v["error"]["exit"], upgrade.code, "{name}: {args:?}: {v}");
            assert_eq!(v["error"]["changed"], false, "{name}: {args:?}: {v}");
            assert!(
                wanted.contains(
                    &format!("error: {}", v["error"]["message"].as_str().unwrap()).as_str()
                ),
                "{name}: {args:?}: {v}"
            );
        }
        if name != "consent" {
            // --sql shows no plan that would be refused.
            let sql = p.run(&["upgrade", "--all-binds", "--sql"]);
            assert_eq!(sql.code, upgrade.code, "{name}: {sql:?}");
        }
        let untouched: Vec<(&str, crate::support::DbState)> = binds
            .iter()
            .map(|b| (b.as_str(), state(&[], &[])))
            .collect();
        p.assert_states(&untouched);
    }
}

/// An environment variable that would override a bind no file defines (a typo of its name) is
/// refused, naming the variable and the binds that exist, instead of migrating the file's URL.
#[test]
fn an_override_for_a_bind_that_does_not_exist_is_refused() {
    let mut p = Project::new();
    p.add_sqlite("users");
    p.create_table("users", "1_t", "t");
    let run = p.run_with(
        &["upgrade", "--bind", "users"],
        &[(
            "ORCHESTRATE__BINDS__USER__URL",
            "sqlite://var/elsewhere.sqlite3",
        )],
    );
    run.expect(2);
    assert!(
        run.stderr.contains("ORCHESTRATE__BINDS__USER__URL")
            && run.stderr.contains("configured binds: users"),
        "{}",
        run.stderr
    );
    p.assert_states(&[("users", state(&[], &[]))]);
    // The right name overrides as before.
    let Db::Sqlite(path) = p.db("users") else {
        unreachable!()
    };
    let url = format!("sqlite://{}", path.display());
    p.run_with(
        &["upgrade", "--bind", "users"],
        &[("ORCHESTRATE__BINDS__USERS__URL", &url)],
    )
    .expect(0);
    p.assert_states(&[("users", state(&["t"], &["1"]))]);
}

/// Validates a command's JSON output against its published schema in `schemas/`.
#[track_caller]
pub(crate) fn assert_matches_schema(schema: &str, run: &crate::support::Run) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas")
        .join(schema);
    let schema_json: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema_json)
        .unwrap_or_else(|e| panic!("{schema} is not a valid schema: {e}"));
    let value: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not one JSON document ({e}): {run:?}"));
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{schema}: {errors:?}\n{}", run.stdout);
}

/// Every command's `--json` output, success and refusal, matches its schema in `schemas/`.
#[test]
fn json_outputs_match_their_schemas() {
    let mut p = Project::new();
    p.config("decider = \"a_lite\"");
    p.add_sqlite("a_lite").add_pg("b_pg");
    for bind in ["a_lite", "b_pg"] {
        p.create_table(bind, "1_t", &format!("t_{bind}"));
        p.create_table(bind, "2_u", &format!("u_{bind}"));
    }
    assert_matches_schema("status.schema.json", &p.run(&["status", "--json"]));
    assert_matches_schema("check.schema.json", &p.run(&["check", "--json"]));
    let up = p.run(&["upgrade", "--all-binds", "--json", "1"]);
    up.expect(0);
    assert_matches_schema("migrate.schema.json", &up);
    let nothing = p.run(&["upgrade", "--all-binds", "--json", "1"]);
    assert_matches_schema("migrate.schema.json", &nothing);
    assert_matches_schema(
        "history.schema.json",
        &p.run(&["history", "--bind", "b_pg", "--json"]),
    );
    assert_matches_schema("recover.schema.json", &p.run(&["recover", "--json"]));
    // A failing batch: rolled back, with its error.
    p.migration("b_pg", "3_bad", "CREATE TABLE nope (;", Some("SELECT 1;"));
    let failed = p.run(&["upgrade", "--all-binds", "--json"]);
    failed.expect(1);
    assert_matches_schema("migrate.schema.json", &failed);
    // Refusals: a bad target, an unknown bind, an edited migration.
    for args in [
        &["upgrade", "--all-binds", "--json", "nonsense!"][..],
        &["downgrade", "--bind", "nobody", "--json"][..],
        &["status", "--bind", "nobody", "--json"][..],
        &["history", "--bind", "nobody", "--json"][..],
    ] {
        let run = p.run(args);
        run.expect(2);
        let schema = match args[0] {
            "upgrade" | "downgrade" => "migrate.schema.json",
            other => &format!("{other}.schema.json"),
        };
        assert_matches_schema(schema, &run);
    }
    fs::remove_dir_all(p.path().join("migrations/b_pg/3_bad")).unwrap();
    fs::write(
        p.path().join("migrations/b_pg/1_t/up.sql"),
        "CREATE TABLE t_b_pg (id BIGINT);",
    )
    .unwrap();
    let edited = p.run(&["upgrade", "--all-binds", "--json"]);
    edited.expect(2);
    assert_matches_schema("migrate.schema.json", &edited);
    assert_matches_schema("check.schema.json", &p.run(&["check", "--json"]));
    // A configuration that cannot load is a refusal too.
    let broken = p.run_with(&["status", "--json"], &[("ORCHESTRATE__PARALLELISM", "0")]);
    broken.expect(2);
    assert_matches_schema("status.schema.json", &broken);
}

/// Every invalid migration folder is named, not only the first, and while the chain is invalid
/// `status` says its head is unknown instead of showing an empty chain.
#[test]
fn every_invalid_folder_is_reported_and_status_says_the_chain_is_invalid() {
    let mut p = Project::new();
    p.add_sqlite("app");
    p.create_table("app", "1_t", "t");
    p.migration("app", "2_later", "-- to be written", None);
    p.migration("app", "3_empty", "", None);
    let status = p.run(&["status"]);
    status.expect(2);
    assert!(
        status.stdout.contains("head:    unknown") && status.stdout.contains("pending: unknown"),
        "{}",
        status.stdout
    );
    for run in [
        &status,
        &p.run(&["upgrade", "--all-binds"]),
        &p.run(&["check"]),
    ] {
        let text = format!("{}{}", run.stdout, run.stderr);
        assert!(
            text.contains("2_later") && text.contains("3_empty"),
            "{run:?}"
        );
    }
    assert_matches_schema("status.schema.json", &p.run(&["status", "--json"]));
    p.assert_states(&[("app", state(&[], &[]))]);
}

/// `--target` names: an unknown bind is said to be unknown, a bind not selected is said to be
/// not selected, and a bind given two targets is refused; nothing is touched.
#[test]
fn target_names_are_checked() {
    let mut p = Project::new();
    p.add_sqlite("users").add_sqlite("billing");
    p.create_table("users", "1_u", "u");
    p.create_table("billing", "1_b", "b");
    for (args, says) in [
        (
            &["upgrade", "--all-binds", "--target", "user=head"][..],
            "no bind is named `user`; configured binds: billing, users",
        ),
        (
            &["upgrade", "--bind", "users", "--target", "billing=head"][..],
            "bind `billing` is not selected",
        ),
        (
            &[
                "upgrade",
                "--all-binds",
                "--target",
                "users=head",
                "--target",
                "users=1",
            ][..],
            "bind `users` is given a target twice",
        ),
    ] {
        let run = p.run(args);
        run.expect(2);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
    p.assert_states(&[("billing", state(&[], &[])), ("users", state(&[], &[]))]);
}

/// A batch over many binds prints a summary, not a line per bind: how many committed, the
/// slowest, and a line only for a bind that did not end cleanly; `status` groups binds by
/// where they are and shows in full only those that need a look. `--verbose` gives every line.
#[test]
fn output_scales_with_the_number_of_binds() {
    let mut p = Project::new();
    let binds: Vec<String> = (0..25).map(|i| format!("t{i:02}")).collect();
    for b in &binds {
        p.add_sqlite(b);
        p.create_table(b, "1_first", &format!("first_{b}"));
    }
    let up = p.run(&["upgrade", "--all-binds"]);
    up.expect(0);
    assert!(
        up.stdout.contains("25 binds: 25 committed; slowest: "),
        "{}",
        up.stdout
    );
    assert!(!up.stdout.contains("t07: committed"), "{}", up.stdout);
    assert!(up.stdout.lines().count() < 15, "{}", up.stdout);
    // status: one group line for the 24 binds up to date, the 25th (pending) in its own group.
    p.create_table("t07", "2_second", "second_t07");
    let st = p.run(&["status"]);
    st.expect(0);
    assert!(
        st.stdout
            .contains("24 bind(s) at 1_first, up to date: t00, t01"),
        "{}",
        st.stdout
    );
    assert!(
        st.stdout
            .contains("1 bind(s) at 1_first, 1 pending (2_second): t07"),
        "{}",
        st.stdout
    );
    assert!(st.stdout.lines().count() < 6, "{}", st.stdout);
    let verbose = p.run(&["status", "--verbose"]);
    verbose.expect(0);
    assert_eq!(verbose.stdout.matches("  current: 1_first").count(), 25);
    // A failing batch over every bind: every bind rolled back, the failure named on stderr.
    let down = p.run(&["downgrade", "--all-binds", "base"]);
    down.expect(0);
    assert!(
        down.stdout.contains("25 binds: 25 committed"),
        "{}",
        down.stdout
    );
    p.migration("t11", "2_bad", "CREATE TABLE nope (;", Some("SELECT 1;"));
    let failed = p.run(&["upgrade", "--all-binds"]);
    failed.expect(1);
    assert!(
        failed
            .stdout
            .contains("25 binds: 0 committed; 25 rolled back, unchanged"),
        "{}",
        failed.stdout
    );
    assert!(failed.stderr.contains("t11"), "{}", failed.stderr);
    fs::remove_dir_all(p.path().join("migrations/t11/2_bad")).unwrap();
    let verbose_up = p.run(&["upgrade", "--all-binds", "--verbose"]);
    verbose_up.expect(0);
    assert!(
        verbose_up.stdout.contains("  t07: committed"),
        "{}",
        verbose_up.stdout
    );
    let expected: Vec<(&str, crate::support::DbState)> = binds
        .iter()
        .map(|b| {
            let first = format!("first_{b}");
            let st = if b == "t07" {
                crate::support::state(&[&first, "second_t07"], &["1", "2"])
            } else {
                crate::support::state(&[&first], &["1"])
            };
            (b.as_str(), st)
        })
        .collect();
    p.assert_states(&expected);
}

/// A failing PostgreSQL migration's error says where in up.sql it failed (the server's error
/// position, as a line and column, with the line's text), and the batch rolls back.
#[test]
fn a_postgres_error_names_the_line_of_up_sql() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_sqlite("b_lite");
    p.create_table("b_lite", "1_t", "t_b");
    p.migration(
        "a_pg",
        "1_t",
        "CREATE TABLE t_a (id INT);\n\n  SELECT * FROM no_such_table;\n",
        Some("DROP TABLE t_a;"),
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(
        run.stderr.contains(
            "migration 1_t failed at line 3, column 17 of up.sql: SELECT * FROM no_such_table;"
        ),
        "{}",
        run.stderr
    );
    p.assert_states(&[
        ("a_pg", crate::support::state(&[], &[])),
        ("b_lite", crate::support::state(&[], &[])),
    ]);
}

/// Deploys that start at the same moment (several instances' start-up jobs, two pipelines)
/// run the same command at once: one applies, the others find nothing left to do, and none
/// fails.
#[test]
fn upgrades_started_at_once_do_not_fail() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_pg("b_pg").add_sqlite("c_lite");
    for bind in ["a_pg", "b_pg", "c_lite"] {
        p.create_table(bind, "1_t", &format!("t_{bind}"));
        p.create_table(bind, "2_u", &format!("u_{bind}"));
    }
    let children: Vec<_> = (0..4)
        .map(|_| {
            p.command(&["upgrade", "--all-binds"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let runs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let shown: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{:?}\n{}\n{}",
                r.status.code(),
                String::from_utf8_lossy(&r.stdout),
                String::from_utf8_lossy(&r.stderr)
            )
        })
        .collect();
    assert!(
        runs.iter().all(|r| r.status.code() == Some(0)),
        "{}",
        shown.join("\n----\n")
    );
    // One applied the batch; the others found nothing left to do (at once, or after
    // planning again).
    let applied = runs
        .iter()
        .filter(|r| !String::from_utf8_lossy(&r.stdout).contains("Nothing to do"))
        .count();
    assert_eq!(applied, 1, "{}", shown.join("\n----\n"));
    for bind in ["a_pg", "b_pg", "c_lite"] {
        assert_eq!(p.db(bind).state().versions.len(), 2, "{bind}");
    }
}
