//! The library (`orchestrate::Orchestrator`): embedded and folder migrations, typed errors, and
//! the example application (crates/orchestrator/examples/app) migrating its three databases
//! at start, failing whole, and recovering a start it was killed in.

use std::path::{Path, PathBuf};
use std::process::Command;

use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use orchestrate::{Error, Migrations, Orchestrator, RefusalKind};

use crate::support::{state, Db, Project};

const USERS: EmbeddedMigrations = embed_migrations!("examples/app/migrations/users");
const BILLING: EmbeddedMigrations = embed_migrations!("examples/app/migrations/billing");
const EVENTS: EmbeddedMigrations = embed_migrations!("examples/app/migrations/events");
const EVENTS_FAILING: EmbeddedMigrations =
    embed_migrations!("../../tests/fixtures/library/events_failing");

fn app_migrations(bind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/app/migrations")
        .join(bind)
}

/// The example's three binds in a test project: two SQLite, one PostgreSQL.
fn project() -> Project {
    let mut p = Project::new();
    p.add_sqlite("users").add_sqlite("billing").add_pg("events");
    p
}

fn embedded(p: &Project) -> orchestrate::Builder {
    Orchestrator::builder()
        .config_dir(p.path().join("config"))
        .migrations("users", Migrations::embedded(&USERS))
        .migrations("billing", Migrations::embedded(&BILLING))
        .migrations("events", Migrations::embedded(&EVENTS))
}

fn at_head(p: &Project) {
    p.assert_states(&[
        (
            "users",
            state(&["users"], &["20240101000000", "20240201000000"]),
        ),
        ("billing", state(&["invoices"], &["20240101000000"])),
        (
            "events",
            state(&["events"], &["20240101000000", "20240201000000"]),
        ),
    ]);
}

fn untouched(p: &Project) {
    p.assert_states(&[
        ("users", state(&[], &[])),
        ("billing", state(&[], &[])),
        ("events", state(&[], &[])),
    ]);
}

/// Embedded migrations and the same folders are one chain: applied from the folders, the
/// embedded copy finds nothing to do, no drift, and downgrades with the stored down SQL
/// (which must match the embedded down.sql); and the other way round.
#[test]
fn embedded_and_folder_migrations_give_the_same_plan_and_checksums() {
    let p = project();
    let folders = Orchestrator::builder()
        .config_dir(p.path().join("config"))
        .migrations("users", Migrations::folder(app_migrations("users")))
        .migrations("billing", Migrations::folder(app_migrations("billing")))
        .migrations("events", Migrations::folder(app_migrations("events")))
        .build()
        .unwrap();
    let report = folders.upgrade().unwrap().expect("something to do");
    assert_eq!(report.binds.len(), 3);
    at_head(&p);
    let from_binary = embedded(&p).build().unwrap();
    assert!(from_binary.upgrade().unwrap().is_none());
    for bind in from_binary.status().unwrap() {
        assert!(bind.problems.is_empty(), "{bind:?}");
        assert!(bind.errors.is_empty(), "{bind:?}");
        assert_eq!(bind.current, bind.head, "{bind:?}");
    }
    // One step down through the embedded copy, and up again through the folders.
    from_binary
        .downgrade(&["events", "users"], "-1")
        .unwrap()
        .expect("something to do");
    p.assert_states(&[
        ("users", state(&["users"], &["20240101000000"])),
        ("billing", state(&["invoices"], &["20240101000000"])),
        ("events", state(&["events"], &["20240101000000"])),
    ]);
    folders.upgrade().unwrap().expect("something to do");
    at_head(&p);
}

/// A failing embedded migration on any of the three binds leaves all three as they were.
#[test]
fn a_failing_embedded_migration_leaves_every_bind_as_it_was() {
    let p = project();
    let o = embedded(&p)
        .migrations("events", Migrations::embedded(&EVENTS_FAILING))
        .build()
        .unwrap();
    match o.upgrade() {
        Err(Error::RolledBack { message, report }) => {
            assert!(message.contains("no_such_table"), "{message}");
            assert_eq!(report.binds.len(), 3);
        }
        other => panic!("expected a rolled-back batch, got {other:?}"),
    }
    untouched(&p);
    // Fixed (the application ships the right migrations): all three reach their head.
    embedded(&p).build().unwrap().upgrade().unwrap().unwrap();
    at_head(&p);
}

/// Each refusal comes back as a typed error, and nothing is changed.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn refusals_are_typed_errors() {
    let p = project();
    // Building: a bad URL, an unknown bind, an unknown decider, an invalid chain.
    let config_error = |b: orchestrate::Builder| match b.build() {
        Err(Error::Config(m)) => m,
        other => panic!("expected a configuration error, got {other:?}"),
    };
    let m = config_error(Orchestrator::builder().bind(
        "a",
        "sqlite://file:x?mode=memory",
        Migrations::embedded(&USERS),
    ));
    assert!(m.contains("in-memory"), "{m}");
    let m = config_error(embedded(&p).migrations("nope", Migrations::embedded(&USERS)));
    assert!(m.contains("`nope`, which is not configured"), "{m}");
    let m = config_error(embedded(&p).decider("nope"));
    assert!(m.contains("decider `nope`"), "{m}");
    let m = config_error(embedded(&p).migrations("users", Migrations::folder("/nonexistent")));
    assert!(m.contains("does not exist"), "{m}");
    assert!(matches!(
        Orchestrator::builder().build(),
        Err(Error::Config(_))
    ));
    untouched(&p);

    // Drift: an applied migration edited since it ran is refused (exit 2 on the command line).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("users");
    copy_dir(&app_migrations("users"), &copy);
    let folders = || {
        embedded(&p)
            .migrations("users", Migrations::folder(&copy))
            .build()
            .unwrap()
    };
    folders().upgrade().unwrap().unwrap();
    std::fs::write(
        copy.join("2024-01-01-000000_create_users/up.sql"),
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);",
    )
    .unwrap();
    std::fs::create_dir_all(copy.join("2024-03-01-000000_more")).unwrap();
    std::fs::write(
        copy.join("2024-03-01-000000_more/up.sql"),
        "CREATE TABLE more (id INTEGER);",
    )
    .unwrap();
    match folders().upgrade() {
        Err(Error::Refused {
            kind,
            errors,
            reasons,
        }) => {
            assert_eq!(kind, RefusalKind::Invalid);
            assert!(errors.iter().any(|e| e.contains("changed")), "{errors:?}");
            assert_eq!(reasons, vec![orchestrate::Reason::Drift], "{errors:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    at_head(&p);

    // A batch in doubt (a command-line run killed after PREPARE): refused until recovered.
    let mut q = project();
    q.migration(
        "users",
        "1_u",
        "CREATE TABLE u (id INT);",
        Some("DROP TABLE u;"),
    );
    q.migration(
        "events",
        "1_e",
        "CREATE TABLE e (id INT);",
        Some("DROP TABLE e;"),
    );
    q.config("decider = \"users\"");
    q.run_stopped_at(&["upgrade", "--all-binds"], "before-decision");
    assert_eq!(q.db("events").state().prepared.len(), 1);
    let cli_config = || {
        Orchestrator::builder()
            .config_dir(q.path().join("config"))
            .build()
            .unwrap()
    };
    match cli_config().upgrade() {
        Err(Error::Refused {
            kind,
            errors,
            reasons,
        }) => {
            assert_eq!(kind, RefusalKind::Attention, "{errors:?}");
            assert!(
                reasons.iter().all(|r| *r == orchestrate::Reason::InDoubt),
                "{reasons:?} {errors:?}"
            );
        }
        other => panic!("expected a refusal for the batch in doubt, got {other:?}"),
    }
    // recover through the library rolls it back (it was not decided), then the upgrade runs.
    let report = cli_config().recover().unwrap();
    assert!(!report.actions.is_empty());
    q.assert_states(&[
        ("users", state(&[], &[])),
        ("billing", state(&[], &[])),
        ("events", state(&[], &[])),
    ]);
    cli_config().upgrade().unwrap().unwrap();
    q.assert_states(&[
        ("users", state(&["u"], &["1"])),
        ("billing", state(&[], &[])),
        ("events", state(&["e"], &["1"])),
    ]);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The example application, built as its users build it (with the crash points of this test
/// build), in `target/<profile>/examples/app`.
fn example_app() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let app = profile_dir.join("examples/app");
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "-p", "orchestrate", "--example", "app"]);
    if cfg!(feature = "failpoints") {
        build.args(["--features", "failpoints"]);
    }
    // Up to date when the suite was built whole; a filtered run builds it here.
    let status = build.status().expect("run cargo");
    assert!(status.success(), "cargo build --example app failed");
    assert!(app.exists(), "{} was not built", app.display());
    app
}

fn run_app(app: &Path, p: &Project, failpoint: Option<&str>) -> (i32, String, String) {
    let mut cmd = Command::new(app);
    cmd.env("APP_EVENTS_URL", p.db("events").url())
        .env("APP_DATA_DIR", p.path().join("var"))
        .env_remove("FAILPOINTS");
    if let Some(f) = failpoint {
        cmd.env("FAILPOINTS", format!("{f}=return"));
    }
    let out = cmd.output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    (
        out.status
            .code()
            .unwrap_or(-out.status.signal().unwrap_or(0)),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The example migrates its three databases at start from its embedded migrations, then
/// works; started again, it has nothing to migrate. Killed after its decision, its next
/// start recovers through the library (commits PostgreSQL's prepared part, redoes the SQLite
/// participant's) and goes on.
#[test]
fn the_example_migrates_at_start_and_recovers_a_start_it_was_killed_in() {
    let app = example_app();
    let p = project();
    let (code, out, err) = run_app(&app, &p, None);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("1 user(s), 1 invoice(s), 1 event(s)"), "{out}");
    assert!(err.contains("migrated 3 database(s)"), "{err}");
    let (code, out, err) = run_app(&app, &p, None);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("every database is up to date"), "{err}");
    assert!(out.contains("2 user(s)"), "{out}");

    // Two instances starting at once on fresh databases: one migrates, the other finds
    // nothing to do; both go on with their work.
    let two = project();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let mut cmd = Command::new(&app);
            cmd.env("APP_EVENTS_URL", two.db("events").url())
                .env("APP_DATA_DIR", two.path().join("var"))
                .env_remove("FAILPOINTS")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            cmd.spawn().unwrap()
        })
        .collect();
    for child in runs {
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    at_head(&two);

    if !cfg!(feature = "failpoints") {
        return;
    }
    let q = project();
    let (code, _, err) = run_app(&app, &q, Some("after-decision"));
    assert_eq!(code, -9, "{err}");
    assert_eq!(q.db("events").state().prepared.len(), 1, "{err}");
    let (code, out, err) = run_app(&app, &q, None);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("recover: committed"), "{err}");
    assert!(out.contains("1 user(s), 1 invoice(s), 1 event(s)"), "{out}");
    assert!(q.db("events").state().prepared.is_empty());

    // Killed before its decision: the next start rolls the batch back, then migrates.
    let r = project();
    let (code, _, err) = run_app(&app, &r, Some("before-decision"));
    assert_eq!(code, -9, "{err}");
    let (code, out, err) = run_app(&app, &r, None);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("recover: rolled back"), "{err}");
    assert!(err.contains("migrated 3 database(s)"), "{err}");
}

/// An empty selection is an error, never "every bind"; a protected environment's downgrade
/// needs the application's explicit consent (the command line's `--yes`).
#[test]
fn empty_selections_and_protected_environments_are_refused() {
    let mut p = project();
    let o = embedded(&p).build().unwrap();
    o.upgrade().unwrap().unwrap();
    for result in [o.downgrade(&[], "-1"), o.upgrade_to(&[])] {
        assert!(matches!(result, Err(Error::Config(_))), "{result:?}");
    }
    at_head(&p);
    p.config("protected = true");
    match embedded(&p).build().unwrap().downgrade(&["users"], "-1") {
        Err(Error::Refused {
            kind,
            errors,
            reasons,
        }) => {
            assert_eq!(kind, RefusalKind::Invalid);
            assert!(errors[0].contains("protected"), "{errors:?}");
            assert_eq!(reasons, vec![orchestrate::Reason::Protected]);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    at_head(&p);
    embedded(&p)
        .allow_protected(true)
        .build()
        .unwrap()
        .downgrade(&["users"], "-1")
        .unwrap()
        .unwrap();
    p.assert_states(&[
        ("users", state(&["users"], &["20240101000000"])),
        ("billing", state(&["invoices"], &["20240101000000"])),
        (
            "events",
            state(&["events"], &["20240101000000", "20240201000000"]),
        ),
    ]);
}

/// Several instances of an application starting at once (here four threads of one process):
/// one migrates, the others find nothing left to do; none reports a failure.
#[test]
fn applications_starting_at_once_do_not_fail() {
    let p = project();
    let o = std::sync::Arc::new(embedded(&p).build().unwrap());
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let o = o.clone();
            std::thread::spawn(move || o.upgrade().map(|r| r.is_some()))
        })
        .collect();
    let results: Vec<_> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert_eq!(
        results.iter().filter(|r| matches!(r, Ok(true))).count(),
        1,
        "{results:?}"
    );
    at_head(&p);
}

/// A down.sql that differs from the copy stored when its migration was applied is used, and
/// the application hears of it (the command line prints the same note).
#[test]
fn a_changed_down_sql_is_reported_to_the_application() {
    let p = project();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("events");
    copy_dir(&app_migrations("events"), &copy);
    let notes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = notes.clone();
    let o = embedded(&p)
        .migrations("events", Migrations::folder(&copy))
        .on_progress(move |e| {
            if let orchestrate::Event::Line(line) = e {
                seen.lock().unwrap().push(line.to_string());
            }
        })
        .build()
        .unwrap();
    o.upgrade().unwrap().unwrap();
    std::fs::write(
        copy.join("2024-02-01-000000_index_events/down.sql"),
        "DROP INDEX IF EXISTS events_by_kind;",
    )
    .unwrap();
    o.downgrade(&["events"], "-1").unwrap().unwrap();
    let notes = notes.lock().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("down.sql differs from the copy stored")),
        "{notes:?}"
    );
}

/// Every refusal a batch can meet through the library comes back with its [`Reason`], the
/// command line refuses the same batch with that reason's exit code, and nothing changes.
#[test]
fn each_refusal_has_its_reason_and_the_command_lines_exit_code() {
    use orchestrate::Reason;
    let no_prepared = crate::support::OwnCluster::start_with(&[("PG_MAX_PREPARED", "0")]);
    struct Case {
        reason: Reason,
        project: Project,
        cli: Vec<&'static str>,
        call: fn(&Orchestrator) -> Result<Option<orchestrate::BatchReport>, Error>,
    }
    impl Case {
        /// `upgrade` through the library, `upgrade --all-binds` on the command line.
        fn upgrade(reason: Reason, project: Project) -> Case {
            Case {
                reason,
                project,
                cli: vec!["upgrade", "--all-binds"],
                call: |o| o.upgrade(),
            }
        }
    }
    let mut cases = Vec::new();

    // A target that names no migration.
    let mut p = Project::new();
    p.add_sqlite("a").create_table("a", "1_a", "a");
    cases.push(Case {
        reason: Reason::Target,
        project: p,
        cli: vec!["upgrade", "--all-binds", "--target", "a=nope"],
        call: |o| o.upgrade_to(&[("a", "nope")]),
    });

    // A database that cannot be reached.
    let mut p = Project::new();
    p.add_sqlite("a").create_table("a", "1_a", "a");
    p.create_table("gone", "1_g", "g");
    std::fs::create_dir_all(p.path().join("migrations/gone")).unwrap();
    p.config("[binds.gone]\nurl = \"postgres://postgres@127.0.0.1:1/gone?connect_timeout=2\"");
    cases.push(Case::upgrade(Reason::Unreachable, p));

    // A statement that would escape the batch.
    let mut p = Project::new();
    p.add_pg("a").migration(
        "a",
        "1_a",
        "CREATE TABLE a (id INT); COMMIT;",
        Some("DROP TABLE a;"),
    );
    cases.push(Case::upgrade(Reason::Escapes, p));

    // A migration outside a transaction, without consent.
    let mut p = Project::new();
    p.add_pg("a").create_table("a", "1_a", "a");
    p.metadata("a", "1_a", "run_in_transaction = false\n");
    cases.push(Case::upgrade(Reason::NonTransactional, p));

    // MySQL DDL next to a PostgreSQL bind, without consent.
    let mut p = Project::new();
    p.add_pg("a").create_table("a", "1_a", "a");
    p.add_mysql("m").create_table("m", "1_m", "m");
    cases.push(Case::upgrade(Reason::NotAtomic, p));

    // One database under two names (TCP and the server's socket), which only the server can
    // tell.
    let mut p = Project::new();
    p.add_pg_at("a", &no_prepared.url)
        .create_table("a", "1_a", "a");
    let other = no_prepared.socket_url(&p.db("a").pg_name());
    p.create_table("b", "1_b", "b");
    p.config(&format!("[binds.b]\nurl = \"{other}\""));
    cases.push(Case::upgrade(Reason::SameDatabase, p));

    // A SQLite file under a folder that is a dangling symbolic link.
    let mut p = Project::new();
    p.add_sqlite("a").create_table("a", "1_a", "a");
    std::os::unix::fs::symlink(p.path().join("nowhere"), p.path().join("dangling")).unwrap();
    p.create_table("s", "1_s", "s");
    p.config("[binds.s]\nurl = \"sqlite://dangling/s.sqlite3\"");
    cases.push(Case::upgrade(Reason::SqlitePath, p));

    // A server that allows no prepared transactions.
    let mut p = Project::new();
    p.add_pg_at("a", &no_prepared.url)
        .create_table("a", "1_a", "a");
    p.add_pg_at("b", &no_prepared.url)
        .create_table("b", "1_b", "b");
    cases.push(Case::upgrade(Reason::PreparedTransactions, p));

    // A downgrade of a migration that has no down SQL.
    let mut p = Project::new();
    p.add_sqlite("a")
        .migration("a", "1_a", "CREATE TABLE a (id INT);", None);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    cases.push(Case {
        reason: Reason::NoDownSql,
        project: p,
        cli: vec!["downgrade", "--bind", "a"],
        call: |o| o.downgrade(&["a"], "-1"),
    });

    // Drift: an applied migration's up.sql edited since.
    let mut p = Project::new();
    p.add_sqlite("a").create_table("a", "1_a", "a");
    p.run(&["upgrade", "--all-binds"]).expect(0);
    p.migration(
        "a",
        "1_a",
        "CREATE TABLE a (id INT, x INT);",
        Some("DROP TABLE a;"),
    );
    p.create_table("a", "2_b", "b");
    cases.push(Case::upgrade(Reason::Drift, p));

    for case in cases {
        let before = case.project.states();
        let o = Orchestrator::builder()
            .config_dir(case.project.path().join("config"))
            .build()
            .unwrap();
        match (case.call)(&o) {
            Err(Error::Refused {
                kind,
                errors,
                reasons,
            }) => {
                assert_eq!(reasons.len(), errors.len(), "{errors:?}");
                assert!(
                    reasons.contains(&case.reason),
                    "{:?}: {reasons:?} {errors:?}",
                    case.reason
                );
                let expected_kind = match case.reason.code() {
                    1 => RefusalKind::Busy,
                    3 => RefusalKind::Attention,
                    _ => RefusalKind::Invalid,
                };
                assert_eq!(kind, expected_kind, "{:?}", case.reason);
            }
            other => panic!("{:?}: expected a refusal, got {other:?}", case.reason),
        }
        assert_eq!(case.project.states(), before, "{:?}", case.reason);
        let run = case.project.run(&case.cli);
        assert_eq!(run.code, case.reason.code(), "{:?}: {run:?}", case.reason);
        assert_eq!(case.project.states(), before, "{:?}", case.reason);
    }
}

/// What an application's pool does to each new connection: a session setting, and a
/// temporary table named like a table a migration creates and fills.
#[derive(Debug)]
struct AppSession;

impl diesel::r2d2::CustomizeConnection<diesel::PgConnection, diesel::r2d2::Error> for AppSession {
    fn on_acquire(&self, conn: &mut diesel::PgConnection) -> Result<(), diesel::r2d2::Error> {
        use diesel::connection::SimpleConnection;
        conn.batch_execute("SET work_mem = '5MB'; CREATE TEMP TABLE pooled (id INT)")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

fn app_pool(
    url: &str,
) -> diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<diesel::PgConnection>> {
    app_pool_of(url, 2)
}

fn app_pool_of(
    url: &str,
    size: u32,
) -> diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<diesel::PgConnection>> {
    diesel::r2d2::Pool::builder()
        .max_size(size)
        .connection_timeout(std::time::Duration::from_secs(3))
        .connection_customizer(Box::new(AppSession))
        .build(diesel::r2d2::ConnectionManager::new(url))
        .unwrap()
}

/// A pool whose sessions were opened before an `ALTER DATABASE ... SET search_path`: after
/// their reset they start with the old search path, the command line's new sessions with the
/// new one. The library does not run the batch on them (its bookkeeping would be where the
/// command line does not look, and the command line would apply the migrations again): they
/// are closed and the pool's new sessions used, so the library and the command line agree.
#[test]
fn sessions_a_pool_opened_before_an_alter_database_are_not_used_as_they_were() {
    let p = project();
    let Db::Pg(db) = p.db("events") else {
        unreachable!()
    };
    // Six connections open now, before the change: more than the library borrows, and none
    // opened in advance in place of one it closes (`min_idle` 0), so that it is lent old ones.
    let pool = diesel::r2d2::Pool::builder()
        .max_size(6)
        .min_idle(Some(0))
        .connection_timeout(std::time::Duration::from_secs(3))
        .connection_customizer(Box::new(AppSession))
        .build(diesel::r2d2::ConnectionManager::<diesel::PgConnection>::new(&db.url))
        .unwrap();
    drop((0..6).map(|_| pool.get().unwrap()).collect::<Vec<_>>());
    assert_eq!(pool.state().idle_connections, 6);
    {
        use diesel::connection::SimpleConnection;
        p.db("events")
            .pg()
            .batch_execute(&format!(
                "CREATE SCHEMA app; ALTER DATABASE {} SET search_path = app",
                db.name
            ))
            .unwrap();
    }
    embedded(&p)
        .pool("events", pool.clone())
        .build()
        .unwrap()
        .upgrade()
        .unwrap()
        .expect("something to do");
    // The bind's URL, whose sessions start in `app` (the command line's), finds everything
    // applied.
    assert!(embedded(&p).build().unwrap().upgrade().unwrap().is_none());
    let tables = |schema: &str| {
        p.db("events").count(&format!(
            "SELECT count(*) AS n FROM pg_catalog.pg_tables WHERE schemaname = '{schema}' AND tablename IN ('events', '__diesel_schema_migrations')"
        ))
    };
    assert_eq!((tables("app"), tables("public")), (2, 0));
    // The end-of-test checks read `public`: the tables are moved there.
    {
        use diesel::connection::SimpleConnection;
        p.db("events")
            .pg()
            .batch_execute(&format!(
                "ALTER DATABASE {} RESET search_path; ALTER SCHEMA public RENAME TO public_before; ALTER SCHEMA app RENAME TO public",
                db.name
            ))
            .unwrap();
    }
}

/// A PostgreSQL bind served by the application's own r2d2 pool: its sessions start as the
/// bind's URL would give them (what the pool's customizer did is undone), what a migration
/// set on its session never reaches the application's later connections, a failure on
/// another bind leaves it as it was, a pool the application holds entirely refuses the batch,
/// and so does a pool whose sessions are not the URL's (another database, another
/// `search_path`), with nothing changed.
#[test]
fn a_bind_can_borrow_the_applications_pool() {
    use diesel::RunQueryDsl;
    let p = project();
    let events_url = p.db("events").url();
    let pool = app_pool(&events_url);
    // The events chain, and a third migration that changes its session.
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events");
    copy_dir(&app_migrations("events"), &events);
    let third = events.join("2024-03-01-000000_session");
    std::fs::create_dir_all(&third).unwrap();
    std::fs::write(
        third.join("up.sql"),
        "SET work_mem = '7MB'; CREATE TABLE pooled (id INT); INSERT INTO pooled VALUES (1);",
    )
    .unwrap();
    std::fs::write(third.join("down.sql"), "DROP TABLE pooled;").unwrap();
    let builder_with = |pool: &diesel::r2d2::Pool<_>, events_migrations: Migrations| {
        Orchestrator::builder()
            .bind("users", &p.db("users").url(), Migrations::embedded(&USERS))
            .bind(
                "billing",
                &p.db("billing").url(),
                Migrations::embedded(&BILLING),
            )
            .bind("events", &events_url, events_migrations)
            .pool("events", pool.clone())
            .build()
            .unwrap()
    };
    let builder = |events_migrations: Migrations| builder_with(&pool, events_migrations);
    // Pools whose sessions are not the URL's: refused before anything runs.
    let other = crate::support::PgDb::new();
    let mut admin = p.db("events").pg();
    diesel::sql_query("CREATE SCHEMA app")
        .execute(&mut admin)
        .unwrap();
    // A role the URL's user may become, with its own schema first in its search path: a
    // batch as that role would keep its bookkeeping where the command line does not look.
    {
        use diesel::connection::SimpleConnection;
        admin
            .batch_execute(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'app_role') THEN CREATE ROLE app_role; END IF; END $$; \
                 GRANT app_role TO CURRENT_USER; CREATE SCHEMA app_role AUTHORIZATION app_role",
            )
            .unwrap();
    }
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        work_mem: String,
    }
    let work_mem = |pool: &diesel::r2d2::Pool<_>| -> String {
        let mut conn = pool.get().unwrap();
        let s: Setting = diesel::sql_query("SHOW work_mem")
            .get_result(&mut *conn)
            .unwrap();
        s.work_mem
    };
    for (what, url) in [
        ("another database", other.url.clone()),
        (
            "another search_path",
            format!("{events_url}?options=-csearch_path%3Dapp"),
        ),
        (
            "another role",
            format!("{events_url}?options=-crole%3Dapp_role"),
        ),
    ] {
        // One connection: the one the refused batch reset is the one the application would
        // get next, were it given back.
        let pool = app_pool_of(&url, 1);
        match builder_with(&pool, Migrations::folder(&events)).upgrade() {
            Err(Error::Refused { errors, .. }) => assert!(
                errors
                    .iter()
                    .any(|e| e.contains("unlike the one the bind's URL")),
                "{what}: {errors:?}"
            ),
            other => panic!("{what}: expected a refusal, got {other:?}"),
        }
        untouched(&p);
        // The application's next connection is a new one its customizer set up, not the
        // session the refused batch reset.
        assert_eq!(work_mem(&pool), "5MB", "{what}");
    }
    // A pool that cannot open a connection at all says why, not that it is too small.
    let unreachable = diesel::r2d2::Pool::builder()
        .max_size(1)
        .connection_timeout(std::time::Duration::from_secs(2))
        .build_unchecked(diesel::r2d2::ConnectionManager::new(format!(
            "{}_missing",
            events_url
        )));
    match builder_with(&unreachable, Migrations::folder(&events)).upgrade() {
        Err(Error::Refused { errors, .. }) => assert!(
            errors
                .iter()
                .any(|e| e.contains("its last attempt to open one failed")
                    && e.contains("does not exist")),
            "{errors:?}"
        ),
        other => panic!("expected a refusal, got {other:?}"),
    }
    untouched(&p);
    // A failing migration on events: every bind as it was.
    match builder(Migrations::embedded(&EVENTS_FAILING)).upgrade() {
        Err(Error::RolledBack { .. }) => {}
        other => panic!("expected a rolled-back batch, got {other:?}"),
    }
    untouched(&p);
    assert_eq!(p.db("events").state().prepared.len(), 0);
    // The application holds every connection of its pool: refused, nothing changed.
    {
        let _held = (pool.get().unwrap(), pool.get().unwrap());
        match builder(Migrations::folder(&events)).upgrade() {
            Err(Error::Refused {
                errors, reasons, ..
            }) => {
                assert!(
                    errors.iter().any(|e| e.contains("application's pool")),
                    "{errors:?}"
                );
                assert!(reasons.contains(&orchestrate::Reason::Unreachable));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        untouched(&p);
    }
    // With its connections free: the batch runs through the pool.
    let o = builder(Migrations::folder(&events));
    o.upgrade().unwrap().expect("something to do");
    // The migration's row is in its table, not in the pool's temporary one.
    assert_eq!(
        p.db("events")
            .count("SELECT count(*) AS n FROM public.pooled"),
        1
    );
    // The migration's SET stayed with a connection the pool has since closed.
    let mut both = [pool.get().unwrap(), pool.get().unwrap()];
    for conn in &mut both {
        let s: Setting = diesel::sql_query("SHOW work_mem")
            .get_result(&mut **conn)
            .unwrap();
        assert_ne!(s.work_mem, "7MB");
    }
    drop(both);
    p.assert_states(&[
        (
            "users",
            state(&["users"], &["20240101000000", "20240201000000"]),
        ),
        ("billing", state(&["invoices"], &["20240101000000"])),
        (
            "events",
            state(
                &["events", "pooled"],
                &["20240101000000", "20240201000000", "20240301000000"],
            ),
        ),
    ]);
    assert!(o.status().unwrap().iter().all(|b| b.errors.is_empty()));
    // One step down through the pool too, and recover finds nothing.
    o.downgrade(&["events"], "-1").unwrap().unwrap();
    assert!(o.recover().unwrap().actions.is_empty());
    at_head(&p);
}
