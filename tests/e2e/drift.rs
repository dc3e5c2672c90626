//! Drift and bad input: edited, deleted and out-of-order migrations, stored down SQL,
//! statements that cannot be prepared or run in a transaction, secrets, stamp/new/init, and
//! one test per malformed input (exit 2, a message naming it, nothing changed).

use std::fs;

use crate::support::{state, Db, OwnCluster, Project};

fn simple(p: &mut Project, bind: &str, versions: &[u32]) {
    for v in versions {
        p.migration(
            bind,
            &format!("{v}_m{v}"),
            &format!("CREATE TABLE {bind}_{v} (id INT);"),
            Some(&format!("DROP TABLE {bind}_{v};")),
        );
    }
}

#[test]
fn out_of_order_is_refused_then_applied_on_request() {
    let mut p = Project::new();
    p.add_pg("app");
    simple(&mut p, "app", &[1, 3]);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    simple(&mut p, "app", &[2]);
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(
        run.stderr.contains("2_m2") && run.stderr.contains("--allow-out-of-order"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db("app").state(), state(&["app_1", "app_3"], &["1", "3"]));
    let run = p.run(&["status", "--json"]);
    assert!(
        run.stdout.contains("older than the newest applied"),
        "{}",
        run.stdout
    );
    p.run(&["upgrade", "--all-binds", "--allow-out-of-order"])
        .expect(0);
    assert_eq!(
        p.db("app").state(),
        state(&["app_1", "app_2", "app_3"], &["1", "2", "3"])
    );
}

#[test]
fn edited_migration_is_refused_unless_allowed() {
    let mut p = Project::new();
    p.add_sqlite("app");
    simple(&mut p, "app", &[1]);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    // The same SQL with CRLF line endings and a BOM is not an edit.
    fs::write(
        p.path().join("migrations/app/1_m1/up.sql"),
        "\u{feff}CREATE TABLE app_1 (id INT);",
    )
    .unwrap();
    p.run(&["check"]).expect(0);
    fs::write(
        p.path().join("migrations/app/1_m1/up.sql"),
        "CREATE TABLE app_1 (id BIGINT);",
    )
    .unwrap();
    simple(&mut p, "app", &[2]);
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(
        run.stderr.contains("1_m1 was edited") && run.stderr.contains("--allow-edited"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db("app").state(), state(&["app_1"], &["1"]));
    let run = p.run(&["history", "--bind", "app"]);
    assert!(run.stdout.contains("edited"), "{}", run.stdout);
    p.run(&["upgrade", "--all-binds", "--allow-edited"])
        .expect(0);
    assert_eq!(p.db("app").state(), state(&["app_1", "app_2"], &["1", "2"]));
}

#[test]
fn a_deleted_folder_is_reported_and_downgraded_with_the_stored_sql() {
    let mut p = Project::new();
    p.add_pg("app");
    simple(&mut p, "app", &[1, 2]);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    fs::remove_dir_all(p.path().join("migrations/app/2_m2")).unwrap();
    let run = p.run(&["status"]);
    assert!(
        run.stdout.contains("applied migration 2 has no folder"),
        "{}",
        run.stdout
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(run.stderr.contains("--allow-missing"), "{}", run.stderr);
    let run = p.run(&["history", "--bind", "app"]);
    assert!(
        run.stdout.contains("folder missing") && run.stdout.contains("2_m2"),
        "{}",
        run.stdout
    );
    let run = p.run(&["downgrade", "--bind", "app"]);
    run.expect(0);
    assert!(
        run.stdout
            .contains("2_m2 has no down.sql on disk; using the copy stored"),
        "{}",
        run.stdout
    );
    assert_eq!(p.db("app").state(), state(&["app_1"], &["1"]));
    // A down.sql that differs from the stored copy: the file is used, and the output says so.
    fs::write(
        p.path().join("migrations/app/1_m1/down.sql"),
        "DROP TABLE app_1;\n-- reviewed",
    )
    .unwrap();
    let run = p.run(&["downgrade", "--bind", "app"]);
    run.expect(0);
    assert!(
        run.stdout.contains("differs from the copy stored"),
        "{}",
        run.stdout
    );
    assert_eq!(p.db("app").state(), state(&[], &[]));
}

#[test]
fn a_migration_without_down_sql_cannot_be_reverted() {
    let mut p = Project::new();
    p.add_sqlite("app");
    p.migration("app", "1_keep", "CREATE TABLE keep (id INT);", None);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    let run = p.run(&["downgrade", "--bind", "app"]);
    run.expect(2);
    assert!(
        run.stderr.contains("1_keep cannot be reverted"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db("app").state(), state(&["keep"], &["1"]));
}

#[test]
fn statements_that_cannot_run_in_a_transaction_are_refused_at_plan_time() {
    let mut p = Project::new();
    p.add_pg("app").add_sqlite("side");
    p.migration("app", "1_t", "CREATE TABLE t (a INT);", None);
    p.migration(
        "app",
        "2_i",
        "CREATE INDEX CONCURRENTLY t_a ON t (a);",
        None,
    );
    simple(&mut p, "side", &[1]);
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(
        run.stderr.contains(
            "2_i, up.sql line 1: CREATE INDEX CONCURRENTLY cannot run inside a transaction block"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(p.db("app").state(), state(&[], &[]));
    assert_eq!(p.db("side").state(), state(&[], &[]));
    fs::write(
        p.path().join("migrations/app/2_i/up.sql"),
        "CREATE INDEX t_a ON t (a);",
    )
    .unwrap();
    fs::write(
        p.path().join("migrations/app/2_i/metadata.toml"),
        "run_in_transaction = false\n",
    )
    .unwrap();
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(
        run.stderr.contains("run_in_transaction = false"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db("app").state(), state(&[], &[]));
}

#[test]
fn a_temporary_table_makes_prepare_fail_with_a_reason() {
    let mut p = Project::new();
    p.add_pg("app").add_sqlite("side");
    p.migration(
        "app",
        "1_tmp",
        "CREATE TEMP TABLE scratch (id INT);\nCREATE TABLE kept (id INT);",
        None,
    );
    simple(&mut p, "side", &[1]);
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(
        run.stderr.contains("PREPARE TRANSACTION failed") && run.stderr.contains("temporary table"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db("app").state(), state(&[], &[]));
    assert_eq!(p.db("side").state(), state(&[], &[]));
}

#[test]
fn a_server_without_prepared_transactions_is_refused_before_anything_runs() {
    let cluster = OwnCluster::start_with(&[("PG_MAX_PREPARED", "0")]);
    let mut p = Project::new();
    p.add_pg_at("a", &cluster.url).add_pg_at("b", &cluster.url);
    simple(&mut p, "a", &[1]);
    simple(&mut p, "b", &[1]);
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(
        run.stderr.contains("max_prepared_transactions is 0"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db("a").state(), state(&[], &[]));
    assert_eq!(p.db("b").state(), state(&[], &[]));
    // One PostgreSQL bind alone needs no prepared transaction: it decides.
    p.run(&["upgrade", "--bind", "a"]).expect(0);
    drop(p);
}

/// No password from a URL, in a file or the environment, appears in any output or table.
#[test]
fn passwords_never_appear() {
    let secret = "s3cr3t-pw";
    let mut p = Project::new();
    p.add_pg("app").add_pg("side");
    simple(&mut p, "app", &[1]);
    simple(&mut p, "side", &[1]);
    let with_password = |bind: &str| {
        let url = p.db(bind).url();
        url.replacen(
            "postgres://postgres@",
            &format!("postgres://postgres:{secret}@"),
            1,
        )
    };
    let config = p.path().join("config/default.toml");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace(&p.db("app").url(), &with_password("app"));
    fs::write(&config, text).unwrap();
    let env_url = with_password("side");
    let env = [("ORCHESTRATE__BINDS__SIDE__URL", env_url.as_str())];
    let mut seen = String::new();
    for args in [
        vec!["status"],
        vec!["status", "--json"],
        vec!["upgrade", "--all-binds", "--sql"],
        vec!["upgrade", "--all-binds"],
        vec!["history", "--bind", "app"],
        vec!["check", "--json"],
        vec!["recover", "--json"],
        vec!["downgrade", "--all-binds", "--sql"],
    ] {
        let run = p.run_with(&args, &env);
        assert!(run.code == 0, "{args:?}: {run:?}");
        seen.push_str(&run.stdout);
        seen.push_str(&run.stderr);
    }
    assert!(seen.contains("***"), "URLs are shown redacted: {seen}");
    // An unreachable server's error names the URL, redacted.
    let bad = [(
        "ORCHESTRATE__BINDS__SIDE__URL",
        "postgres://postgres:s3cr3t-pw@127.0.0.1:1/x",
    )];
    let run = p.run_with(&["upgrade", "--all-binds"], &bad);
    run.expect(2);
    seen.push_str(&run.stderr);
    assert!(!seen.contains(secret), "a password leaked:\n{seen}");
    for bind in ["app", "side"] {
        let text = p.db(bind).all_text(&[
            "__diesel_schema_migrations",
            "orchestrate_history",
            "orchestrate_decisions",
        ]);
        assert!(
            text.contains("1_m1"),
            "{bind}: the tables were read: {text}"
        );
        assert!(
            !text.contains(secret),
            "{bind}'s tables hold the password: {text}"
        );
    }
}

#[test]
fn init_new_and_stamp() {
    let p = Project::new();
    fs::remove_dir_all(p.path().join("config")).ok();
    p.run(&["init"]).expect(0);
    let run = p.run(&["init"]);
    run.expect(2);
    assert!(run.stderr.contains("already exists"), "{}", run.stderr);
    p.run(&["new", "--bind", "main", "create", "users"])
        .expect(0);
    p.run(&["new", "--bind", "main", "Add e-mail!"]).expect(0);
    let mut folders: Vec<String> = fs::read_dir(p.path().join("migrations/main"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    assert!(
        folders[0].ends_with("_create_users") && folders[1].ends_with("_add_e_mail"),
        "{folders:?}"
    );
    // Empty up.sql files are refused until written.
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(run.stderr.contains("is empty"), "{}", run.stderr);
    for (i, f) in folders.iter().enumerate() {
        let dir = p.path().join("migrations/main").join(f);
        fs::write(dir.join("up.sql"), format!("CREATE TABLE t{i} (id INT);")).unwrap();
        fs::write(dir.join("down.sql"), format!("DROP TABLE t{i};")).unwrap();
    }
    let db = Db::Sqlite(p.path().join("var/main.sqlite3"));
    let first_version = folders[0].split('_').next().unwrap().replace('-', "");
    let second_version = folders[1].split('_').next().unwrap().replace('-', "");
    // Adopt a database that already has the first migration's table.
    fs::create_dir_all(p.path().join("var")).unwrap();
    db.execute("CREATE TABLE t0 (id INT);");
    let run = p.run(&["stamp", "--bind", "main", &folders[0]]);
    run.expect(0);
    assert!(
        run.stdout.contains("no migration was run"),
        "{}",
        run.stdout
    );
    assert_eq!(db.state(), state(&["t0"], &[&first_version]));
    p.run(&["upgrade", "--all-binds"]).expect(0);
    assert_eq!(
        db.state(),
        state(&["t0", "t1"], &[&first_version, &second_version])
    );
    p.run(&["stamp", "--bind", "main", "base"]).expect(0);
    assert_eq!(db.state(), state(&["t0", "t1"], &[]));
    let run = p.run(&["stamp", "--bind", "main", "nope"]);
    run.expect(2);
    assert!(run.stderr.contains("matches no"), "{}", run.stderr);
    let run = p.run(&["new", "--bind", "main", "!!"]);
    run.expect(2);
}

/// The malformed inputs not covered by `cli::bad_input_exits_2_and_changes_nothing`.
#[test]
fn more_bad_input() {
    let mut p = Project::new();
    p.add_sqlite("app");
    simple(&mut p, "app", &[11, 12]);
    let check = |p: &Project, args: &[&str], needle: &str| {
        let run = p.run(args);
        run.expect(2);
        assert!(
            run.stderr.contains(needle),
            "{args:?}: expected {needle:?} in\n{}",
            run.stderr
        );
        assert_eq!(p.db("app").state(), state(&[], &[]), "{args:?}");
        assert!(
            !p.path().join("var/app.sqlite3").exists() || p.db("app").state().versions.is_empty()
        );
    };
    check(&p, &["upgrade", "--all-binds", "1"], "ambiguous");
    check(
        &p,
        &["upgrade", "--all-binds", "+3"],
        "more migrations than are pending",
    );
    check(&p, &["downgrade", "--all-binds", "-1"], "goes below base");
    check(
        &p,
        &["upgrade", "--all-binds", "+x"],
        "not a valid relative target",
    );
    fs::create_dir_all(p.path().join("migrations/app/v3_bad")).unwrap();
    fs::write(p.path().join("migrations/app/v3_bad/up.sql"), "SELECT 1;").unwrap();
    check(&p, &["upgrade", "--all-binds"], "not made of digits");
    fs::rename(
        p.path().join("migrations/app/v3_bad"),
        p.path().join("migrations/app/nounderscore"),
    )
    .unwrap();
    check(&p, &["upgrade", "--all-binds"], "<version>_<description>");
    fs::remove_dir_all(p.path().join("migrations/app/nounderscore")).unwrap();
    fs::write(
        p.path().join("migrations/app/11_m11/metadata.toml"),
        "run_in_transaction = maybe\n",
    )
    .unwrap();
    check(&p, &["upgrade", "--all-binds"], "metadata.toml");
    fs::remove_file(p.path().join("migrations/app/11_m11/metadata.toml")).unwrap();
    fs::rename(
        p.path().join("migrations/app"),
        p.path().join("migrations/elsewhere"),
    )
    .unwrap();
    check(&p, &["upgrade", "--all-binds"], "migrations folder");
    fs::rename(
        p.path().join("migrations/elsewhere"),
        p.path().join("migrations/app"),
    )
    .unwrap();
    let run = p.run_with(&["status"], &[("ORCHESTRATE_ENV", "nowhere")]);
    run.expect(2);
    assert!(run.stderr.contains("nowhere.toml"), "{}", run.stderr);
    let run = p.run(&["status", "--config", "missing.toml"]);
    run.expect(2);
    assert!(run.stderr.contains("missing.toml"), "{}", run.stderr);
    p.run(&["upgrade", "--all-binds"]).expect(0);
}
