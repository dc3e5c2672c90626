//! Environments side by side: `diff` and `promote` (staging, then production).

use std::fs;

use crate::support::{state, PgDb, Project};

/// A project whose binds `app` and `audit` have a database per environment: the defaults
/// (dev), `config/staging.toml` and `config/production.toml`. Returns the databases of staging
/// and production, kept alive with the project.
fn environments() -> (Project, Vec<PgDb>) {
    let mut p = Project::new();
    p.add_pg("app").add_pg("audit");
    for v in ["1_a", "2_b", "3_c"] {
        p.create_table("app", v, &format!("app_{}", &v[2..]));
    }
    for v in ["1_x", "2_y"] {
        p.create_table("audit", v, &format!("audit_{}", &v[2..]));
    }
    let mut dbs = Vec::new();
    for env in ["staging", "production"] {
        let mut text = if env == "production" {
            "protected = true\n".to_string()
        } else {
            String::new()
        };
        for bind in ["app", "audit"] {
            let db = PgDb::new();
            text.push_str(&format!("[binds.{bind}]\nurl = \"{}\"\n", db.url));
            dbs.push(db);
        }
        fs::write(p.path().join(format!("config/{env}.toml")), text).unwrap();
    }
    (p, dbs)
}

fn versions(db: &PgDb) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut c = db.conn();
    diesel::sql_query(
        "SELECT count(*) AS n FROM pg_tables WHERE tablename = '__diesel_schema_migrations'",
    )
    .get_result::<N>(&mut c)
    .map(|r| r.n)
    .ok()
    .filter(|n| *n > 0)
    .map(|_| {
        diesel::sql_query("SELECT count(*) AS n FROM __diesel_schema_migrations")
            .get_result::<N>(&mut c)
            .unwrap()
            .n
    })
    .unwrap_or(0)
}

/// Staging runs a part of the history; `diff` says what production lacks; `promote` brings
/// production to exactly staging's revisions (not to the folders' head), atomically; then the
/// two agree, and the folders are still ahead of both.
#[test]
fn promote_brings_production_to_exactly_what_staging_ran() {
    let (p, dbs) = environments();
    let (staging_app, staging_audit, prod_app, prod_audit) = (&dbs[0], &dbs[1], &dbs[2], &dbs[3]);
    p.run(&[
        "--env",
        "staging",
        "upgrade",
        "--all-binds",
        "--target",
        "app=2",
        "--target",
        "audit=1",
    ])
    .expect(0);
    assert_eq!((versions(staging_app), versions(staging_audit)), (2, 1));

    let diff = p.run(&["diff", "staging", "production"]);
    diff.expect(1);
    assert!(
        diff.stdout
            .contains("app:\n  applied in staging, not in production: 1, 2")
            && diff
                .stdout
                .contains("audit:\n  applied in staging, not in production: 1")
            && diff
                .stdout
                .contains("staging and production differ on 2 of 2 bind(s)"),
        "{diff:?}"
    );
    let json = p.run(&["diff", "staging", "production", "--json"]);
    json.expect(1);
    crate::cli::assert_matches_schema("diff.schema.json", &json);
    crate::cli::assert_matches_schema(
        "diff.schema.json",
        &p.run(&["diff", "staging", "nowhere", "--json"]),
    );
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["agree"], false);
    assert_eq!(
        value["binds"][0]["applied_only_in_from"],
        serde_json::json!(["1", "2"])
    );
    p.run(&["diff", "staging", "staging"]).expect(0);

    let sql = p.run(&[
        "promote",
        "--from",
        "staging",
        "--to",
        "production",
        "--sql",
    ]);
    sql.expect(0);
    assert!(sql.stdout.contains("CREATE TABLE app_b"), "{sql:?}");
    assert!(!sql.stdout.contains("CREATE TABLE app_c"), "{sql:?}");
    assert_eq!((versions(prod_app), versions(prod_audit)), (0, 0));

    let run = p.run(&["promote", "--from", "staging", "--to", "production"]);
    run.expect(0);
    assert!(run.stdout.contains("committed on every bind"), "{run:?}");
    assert_eq!((versions(prod_app), versions(prod_audit)), (2, 1));
    p.run(&["diff", "staging", "production"]).expect(0);
    let folders = p.run(&["diff", "production", "folders"]);
    folders.expect(1);
    assert!(
        folders
            .stdout
            .contains("applied in folders, not in production: 3"),
        "{folders:?}"
    );
    // The dev databases (the defaults) were never touched.
    assert_eq!(p.db("app").state(), state(&[], &[]));
}

/// What a promotion refuses, touching nothing: production ahead of staging (it never
/// downgrades), drift in staging (an applied migration edited), an unknown environment.
#[test]
fn promote_refuses_what_it_cannot_promote_exactly() {
    let (p, dbs) = environments();
    let (prod_app, prod_audit) = (&dbs[2], &dbs[3]);
    p.run(&[
        "--env",
        "staging",
        "upgrade",
        "--all-binds",
        "--target",
        "app=1",
        "--target",
        "audit=1",
    ])
    .expect(0);
    p.run(&["--env", "production", "upgrade", "--bind", "audit"])
        .expect(0);
    let run = p.run(&["promote", "--from", "staging", "--to", "production"]);
    run.expect(2);
    assert!(
        run.stderr
            .contains("bind `audit`: production has applied 2 which staging has not; a promotion never downgrades"),
        "{run:?}"
    );
    assert_eq!((versions(prod_app), versions(prod_audit)), (0, 2));
    assert_eq!((versions(&dbs[0]), versions(&dbs[1])), (1, 1));

    let up = p.path().join("migrations/app/1_a/up.sql");
    let original = fs::read_to_string(&up).unwrap();
    fs::write(&up, format!("{original}\n-- edited after it ran")).unwrap();
    let run = p.run(&["promote", "--from", "staging", "--to", "production"]);
    run.expect(2);
    assert!(
        run.stderr.contains("bind `app` has drift in staging"),
        "{run:?}"
    );
    fs::write(&up, original).unwrap();
    assert_eq!((versions(prod_app), versions(prod_audit)), (0, 2));

    let run = p.run(&["diff", "staging", "nowhere"]);
    run.expect(2);
    assert!(
        run.stderr.contains("config/nowhere.toml does not exist"),
        "{run:?}"
    );
}

/// A protected environment (`protected = true` in config/production.toml): what reverts
/// migrations or rewrites the record of what is applied, and the `--allow-*` flags, need
/// `--yes`; without a terminal to ask on, they are refused with nothing changed. `--sql`
/// only prints; an unprotected environment needs nothing.
#[test]
fn a_protected_environment_asks_for_yes() {
    let (p, dbs) = environments();
    let prod_app = &dbs[2];
    let prod = |args: &[&str]| {
        let mut all = vec!["--env", "production"];
        all.extend_from_slice(args);
        p.run(&all)
    };
    prod(&["upgrade", "--bind", "app"]).expect(0);
    assert_eq!(versions(prod_app), 3);
    for args in [
        &["downgrade", "--bind", "app"][..],
        &["downgrade", "--bind", "app", "base"],
        &["stamp", "--bind", "app", "1"],
        &["resolve", "--bind", "app", "3", "--applied"],
        &["upgrade", "--all-binds", "--allow-out-of-order"],
    ] {
        let run = prod(args);
        run.expect(2);
        assert!(
            run.stderr.contains("environment `production` is protected")
                && run.stderr.contains("needs --yes"),
            "{args:?}: {run:?}"
        );
        assert_eq!(versions(prod_app), 3, "{args:?}");
    }
    let run = p.run(&[
        "promote",
        "--from",
        "staging",
        "--to",
        "production",
        "--allow-non-atomic",
    ]);
    run.expect(2);
    assert!(
        run.stderr
            .contains("`promote --allow-non-atomic` needs --yes"),
        "{run:?}"
    );
    prod(&["downgrade", "--bind", "app", "--sql"]).expect(0);
    assert_eq!(versions(prod_app), 3);
    prod(&["--yes", "downgrade", "--bind", "app"]).expect(0);
    assert_eq!(versions(prod_app), 2);
    let config = prod(&["config", "--json"]);
    config.expect(0);
    let value: serde_json::Value = serde_json::from_str(&config.stdout).unwrap();
    assert_eq!(value["protected"]["value"], true);
    // Staging is not protected.
    p.run(&["--env", "staging", "upgrade", "--bind", "app"])
        .expect(0);
    p.run(&["--env", "staging", "downgrade", "--bind", "app"])
        .expect(0);
}

/// Found by a thirteenth adversarial review: what `promote` would run is checked against what
/// staging ran: a migration in production's folder that staging never ran, an up.sql that
/// differs from staging's, a migration staging only stamped, and a bind that is one database
/// in both environments (a variable applied to both) are refused, touching nothing. A bind
/// with drift on one side is a difference; a protected environment stays protected whatever a
/// later layer says.
#[test]
fn review13_promote_runs_only_what_staging_ran() {
    let (p, dbs) = environments();
    let (prod_app, prod_audit) = (&dbs[2], &dbs[3]);
    p.run(&[
        "--env",
        "staging",
        "upgrade",
        "--all-binds",
        "--target",
        "app=2",
        "--target",
        "audit=1",
    ])
    .expect(0);
    // Production reads its own folder for app: one more migration, and 2_b changed.
    let prod_folder = p.path().join("migrations/app_prod");
    fs::create_dir_all(&prod_folder).unwrap();
    for v in ["1_a", "2_b"] {
        fs::create_dir_all(prod_folder.join(v)).unwrap();
        for f in ["up.sql", "down.sql"] {
            fs::copy(
                p.path().join("migrations/app").join(v).join(f),
                prod_folder.join(v).join(f),
            )
            .unwrap();
        }
    }
    fs::write(
        prod_folder.join("2_b/up.sql"),
        "CREATE TABLE app_b_other (id INT PRIMARY KEY);",
    )
    .unwrap();
    fs::create_dir_all(prod_folder.join("0_extra")).unwrap();
    fs::write(
        prod_folder.join("0_extra/up.sql"),
        "CREATE TABLE app_extra (id INT);",
    )
    .unwrap();
    fs::write(
        prod_folder.join("0_extra/down.sql"),
        "DROP TABLE app_extra;",
    )
    .unwrap();
    let production = p.path().join("config/production.toml");
    let text = fs::read_to_string(&production).unwrap().replacen(
        "[binds.app]\n",
        "[binds.app]\nmigrations = \"migrations/app_prod\"\n",
        1,
    );
    fs::write(&production, &text).unwrap();
    let run = p.run(&["promote", "--from", "staging", "--to", "production"]);
    run.expect(2);
    assert!(
        run.stderr
            .contains("bind `app`: 2's up.sql in production's folder is not the one staging ran")
            && run.stderr.contains("bind `app`: production's folder has 0 before staging's newest, which staging never ran"),
        "{run:?}"
    );
    assert_eq!((versions(prod_app), versions(prod_audit)), (0, 0));
    // The same folder again, but staging only stamped 2 on audit.
    fs::write(
        &production,
        text.replacen("migrations = \"migrations/app_prod\"\n", "", 1),
    )
    .unwrap();
    p.run(&["--env", "staging", "--yes", "stamp", "--bind", "audit", "2"])
        .expect(0);
    let run = p.run(&["promote", "--from", "staging", "--to", "production"]);
    run.expect(2);
    assert!(
        run.stderr
            .contains("bind `audit`: 2 recorded in staging by `stamp`"),
        "{run:?}"
    );
    p.run(&["--env", "staging", "--yes", "stamp", "--bind", "audit", "1"])
        .expect(0);
    // A variable that points production's app at staging's database applies to both sides.
    let staging_app = dbs[0].url.clone();
    let run = p.run_with(
        &["promote", "--from", "staging", "--to", "production"],
        &[("ORCHESTRATE__BINDS__APP__URL", &staging_app)],
    );
    run.expect(2);
    assert!(
        run.stderr
            .contains("bind `app` is the same database in staging and production"),
        "{run:?}"
    );
    assert_eq!((versions(prod_app), versions(prod_audit)), (0, 0));
    // Protected stays protected.
    let run = p.run_with(
        &["--env", "production", "stamp", "--bind", "app", "1"],
        &[("ORCHESTRATE__PROTECTED", "false")],
    );
    run.expect(2);
    assert!(run.stderr.contains("is protected"), "{run:?}");
    // Drift (an applied migration edited since) is a difference.
    p.run(&["--env", "production", "upgrade", "--bind", "audit"])
        .expect(0);
    let up = p.path().join("migrations/audit/1_x/up.sql");
    let original = fs::read_to_string(&up).unwrap();
    fs::write(&up, format!("{original}\n-- edited")).unwrap();
    let diff = p.run(&["diff", "production", "production"]);
    fs::write(&up, original).unwrap();
    diff.expect(1);
    assert!(diff.stdout.contains("drift in production"), "{diff:?}");
    p.assert_consistent();
}
