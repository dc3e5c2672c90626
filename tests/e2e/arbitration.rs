//! The arbitrated decision, and the holes a review found in the one before it. Each test
//! ends by looking at every database of the batch.
//!
//! - A decider migration that moves `search_path` (bookkeeping is qualified).
//! - A decider migration that resets its session, with a `recover` racing the live batch (the
//!   batch's row on the decider is the arbiter, not the session's tag).
//! - `synchronous_commit = off` on the decider, then a crash of its server.
//! - A SQLite decider whose file cannot be found: in doubt, never abort.
//! - A migration that ends its own transaction (caught after the step).
//! - MySQL with `autocommit = 0` for the user.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl};
use orchestrate_core::{Direction, Step, Version};
use orchestrate_driver::{
    Atomic, BatchTransaction, BindConnection, DecisionState, DriverError, Endpoint, Postgres,
    Sqlite, TwoPhase,
};

use crate::crash::{recover_until_clean, spawn, wait_until};
use crate::support::{mysql_admin_url, state, Db, MyDb, OwnCluster, PgDb, Project};

#[derive(diesel::QueryableByName)]
struct S {
    #[diesel(sql_type = diesel::sql_types::Text)]
    s: String,
}

fn pg_text(db: &Db, sql: &str) -> String {
    let Db::Pg(db) = db else {
        panic!("PostgreSQL only")
    };
    diesel::sql_query(sql)
        .get_result::<S>(&mut db.conn())
        .unwrap()
        .s
}

/// Two binds whose only migration creates one table each; `decider` decides.
fn two_binds(p: &mut Project, decider: &str, participant: &str, decider_up: &str) {
    p.config(&format!("decider = \"{decider}\""));
    p.migration(decider, "1_d", decider_up, Some("SELECT 1;"));
    p.create_table(participant, "1_p", "p");
}

/// A batch over `a_pg` (deciding) and `b_pg`, paused at `failpoints`, once `b_pg` is prepared.
fn live_pg_batch(failpoints: &str) -> (Project, std::process::Child) {
    let mut p = Project::new();
    p.add_pg("a_pg").add_pg("b_pg");
    two_binds(&mut p, "a_pg", "b_pg", "CREATE TABLE d (id INT);");
    let child = spawn(&p, &["upgrade", "--all-binds"], failpoints);
    wait_until("the participant is prepared", || {
        p.db("b_pg").state().prepared.len() == 1
    });
    (p, child)
}

/// Waits for a spawned `upgrade` and checks it committed on every bind.
pub(crate) fn committed(child: std::process::Child) {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("committed on every bind"), "{stdout}");
}

/// Runs `upgrade --all-binds` and kills it (SIGKILL) right after its decision committed.
fn killed_after_the_decision(p: &Project) {
    let run = p.run_with(
        &["upgrade", "--all-binds"],
        &[("FAILPOINTS", "after-decision=return")],
    );
    assert!(run.code != 0, "{run:?}");
}

#[test]
fn a_decider_migration_that_moves_search_path_keeps_the_decision_where_recover_looks() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_pg("b_pg");
    two_binds(
        &mut p,
        "a_pg",
        "b_pg",
        "CREATE SCHEMA app; SET search_path TO app, public; CREATE TABLE t (id INT);",
    );
    // Killed right after the decision: the participant is still prepared.
    killed_after_the_decision(&p);
    assert_eq!(p.db("b_pg").state().prepared.len(), 1);
    let seen = recover_until_clean(&p);
    assert!(seen.contains("committed"), "{seen}");
    assert_eq!(p.db("b_pg").state(), state(&["p"], &["1"]));
    assert_eq!(p.db("a_pg").state(), state(&[], &["1"]));
    // Every table of this tool is where the connection's search path put it, none in `app`.
    assert_eq!(
        pg_text(
            p.db("a_pg"),
            "SELECT string_agg(schemaname || '.' || tablename, ',' ORDER BY schemaname, tablename) AS s \
             FROM pg_tables WHERE schemaname IN ('public', 'app')"
        ),
        "app.t,public.__diesel_schema_migrations,public.orchestrate_batches,public.orchestrate_history"
    );
    p.run(&["status"]).expect(0);
    p.run(&["recover"]).expect(0);
}

/// A `recover` run while a real batch is paused before its decision must leave it alone, even
/// when the decider's migration has reset its session (and with it the session's tag); the
/// batch then commits on every bind.
fn recover_never_aborts_a_live_batch(mut p: Project, decider: &str) {
    let participant = if decider == "a_pg" { "b_pg" } else { "a_pg" };
    let up = if decider == "a_pg" {
        "RESET ALL; SET application_name = 'someone else'; CREATE TABLE d (id INT);"
    } else {
        "CREATE TABLE d (id INT);"
    };
    two_binds(&mut p, decider, participant, up);
    let child = spawn(
        &p,
        &["upgrade", "--all-binds"],
        "before-decision=sleep(4000)",
    );
    wait_until("the participant is prepared", || {
        p.db(participant).state().prepared.len() == 1
    });
    for args in [
        &["recover", "--wait", "1"][..],
        &["recover", "--dry-run"][..],
    ] {
        let run = p.run(args);
        run.expect(3);
        assert!(run.stdout.contains("still holds batch"), "{}", run.stdout);
    }
    assert_eq!(p.db(participant).state().prepared.len(), 1);
    committed(child);
    assert_eq!(p.db(decider).state(), state(&["d"], &["1"]));
    assert_eq!(p.db(participant).state(), state(&["p"], &["1"]));
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("Nothing to recover"), "{}", run.stdout);
}

#[test]
fn recover_never_aborts_a_live_batch_whose_postgres_decider_reset_its_session() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_pg("b_pg");
    recover_never_aborts_a_live_batch(p, "a_pg");
}

#[test]
fn recover_never_aborts_a_live_batch_with_a_sqlite_decider() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_sqlite("b_lite");
    recover_never_aborts_a_live_batch(p, "b_lite");
}

/// A SQLite participant that lost a decided batch (its open transaction died with the
/// coordinator after the decision) shows in status and check (exit 3), and upgrade refuses to
/// run over it until recover has brought it forward.
#[test]
fn a_sqlite_participant_that_lost_a_decided_batch_blocks_upgrade_until_recovered() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_sqlite("b_lite");
    two_binds(&mut p, "a_pg", "b_lite", "CREATE TABLE d (id INT);");
    killed_after_the_decision(&p);
    assert_eq!(p.db("b_lite").state(), state(&[], &[]));
    for args in [&["status"][..], &["check"][..]] {
        let run = p.run(args);
        run.expect(3);
        assert!(
            run.stdout.contains("lost its part of batch"),
            "{}",
            run.stdout
        );
    }
    p.create_table("b_lite", "2_q", "q");
    for args in [
        &["upgrade", "--all-binds"][..],
        &["upgrade", "--bind", "b_lite"][..],
    ] {
        let run = p.run(args);
        run.expect(3);
        assert!(
            run.stderr.contains("lost its part of batch"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(p.db("b_lite").state(), state(&[], &[]));
    let seen = recover_until_clean(&p);
    assert!(seen.contains("redone"), "{seen}");
    assert_eq!(p.db("b_lite").state(), state(&["p"], &["1"]));
    assert_eq!(p.db("a_pg").state(), state(&["d"], &["1"]));
    p.run(&["status"]).expect(0);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    assert_eq!(p.db("b_lite").state(), state(&["p", "q"], &["1", "2"]));
}

/// A second `upgrade` while a batch is prepared and its coordinator alive is told the bind is
/// busy (exit 1, nothing changed), never sent to `recover` over a live batch.
#[test]
fn a_second_upgrade_during_a_live_batch_is_busy_not_in_doubt() {
    let (p, child) = live_pg_batch("before-decision=sleep(3000)");
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(
        run.stderr.contains("in the middle of a batch here") && !run.stderr.contains("recover"),
        "{}",
        run.stderr
    );
    committed(child);
    assert_eq!(p.db("a_pg").state(), state(&["d"], &["1"]));
    assert_eq!(p.db("b_pg").state(), state(&["p"], &["1"]));
}

/// A `recover` run after the decision, while the coordinator is still committing, finishes
/// the batch the same way: committed everywhere, whoever commits each bind.
#[test]
fn recover_during_the_commit_phase_commits_too() {
    let (p, child) = live_pg_batch("after-decision=sleep(3000)");
    wait_until("the decision is committed", || {
        pg_text(
            p.db("a_pg"),
            "SELECT coalesce(max(state), 'none') AS s FROM orchestrate_batches",
        ) == "commit"
    });
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("committed"), "{}", run.stdout);
    committed(child);
    assert_eq!(p.db("a_pg").state(), state(&["d"], &["1"]));
    assert_eq!(p.db("b_pg").state(), state(&["p"], &["1"]));
}

/// With `synchronous_commit = off` on the decider's database, a plain COMMIT returns before
/// it is on disk while the participants' COMMIT PREPARED always is. The decider's COMMIT must
/// be durable all the same: its server is crashed right after the batch and must still have it.
#[test]
fn a_decider_with_synchronous_commit_off_still_decides_durably() {
    // The WAL writer waits 10 s between writes, so an asynchronous commit is lost by a crash.
    let cluster = OwnCluster::start_with(&[("PG_EXTRA_OPTS", "-c wal_writer_delay=10000")]);
    let mut p = Project::new();
    p.add_pg_at("a_pg", &cluster.url).add_pg("b_pg");
    two_binds(&mut p, "a_pg", "b_pg", "CREATE TABLE d (id INT);");
    let Db::Pg(decider) = p.db("a_pg") else {
        unreachable!()
    };
    decider
        .conn()
        .batch_execute(&format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            decider.name
        ))
        .unwrap();
    p.run(&["upgrade", "--all-binds"]).expect(0);
    cluster.crash_restart();
    assert_eq!(p.db("b_pg").state(), state(&["p"], &["1"]));
    assert_eq!(
        p.db("a_pg").state(),
        state(&["d"], &["1"]),
        "the decider lost its committed batch in the crash"
    );
    p.run(&["status"]).expect(0);
    // Settling is not durable on purpose (it is redone by recover): the crash may undo it.
    p.run(&["recover"]).expect(0);
}

/// No evidence is never a decision: a SQLite decider whose file is not where recover looks
/// leaves the batch in doubt (exit 3) and creates nothing; once the file is back, recover
/// finishes the batch, from any working directory.
#[test]
fn a_sqlite_decider_that_cannot_be_found_leaves_the_batch_in_doubt() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_sqlite("b_lite");
    two_binds(&mut p, "b_lite", "a_pg", "CREATE TABLE d (id INT);");
    killed_after_the_decision(&p);
    assert_eq!(p.db("a_pg").state().prepared.len(), 1);
    let Db::Sqlite(path) = p.db("b_lite") else {
        unreachable!()
    };
    let aside = path.with_extension("moved");
    std::fs::rename(path, &aside).unwrap();
    for args in [&["recover", "--dry-run"][..], &["recover"][..]] {
        let run = p.run(args);
        run.expect(3);
        assert!(
            run.stdout.contains("does not exist") && run.stdout.contains("left alone"),
            "{}",
            run.stdout
        );
        assert!(!path.exists(), "{args:?} created the SQLite file");
    }
    assert_eq!(
        p.db("a_pg").state().prepared.len(),
        1,
        "rolled back without evidence"
    );
    std::fs::rename(&aside, path).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let config_dir = p.path().join("config");
    let out = p
        .command(&["recover", "--config-dir", config_dir.to_str().unwrap()])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("committed"), "{stdout}");
    assert_eq!(p.db("a_pg").state(), state(&["p"], &["1"]));
    assert_eq!(p.db("b_lite").state(), state(&["d"], &["1"]));
}

/// A prepared transaction that is not this tool's but holds its migration lock (left by a
/// migration that prepared its own transaction) is shown by status (exit 3), by name.
#[test]
fn a_foreign_prepared_transaction_holding_the_lock_is_shown() {
    let mut p = Project::new();
    p.add_pg("a_pg");
    p.create_table("a_pg", "1_a", "a");
    let Db::Pg(db) = p.db("a_pg") else {
        unreachable!()
    };
    db.conn()
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({}); PREPARE TRANSACTION 'sneaky_{}';",
            orchestrate_driver::LOCK_KEY,
            db.name
        ))
        .unwrap();
    let run = p.run(&["status"]);
    run.expect(3);
    assert!(
        run.stdout.contains(&format!("sneaky_{}", db.name))
            && run.stdout.contains("not this tool's"),
        "{run:?}"
    );
    // A batch waits for the lock it holds, then names it.
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(
        run.stderr.contains(&format!("sneaky_{}", db.name))
            && run.stderr.contains("not this tool's"),
        "{run:?}"
    );
    // Recover never touches it.
    p.run(&["recover"]).expect(0);
    assert_eq!(
        p.db("a_pg").state().prepared,
        [format!("sneaky_{}", db.name)]
    );
    db.conn()
        .batch_execute(&format!("ROLLBACK PREPARED 'sneaky_{}'", db.name))
        .unwrap();
    p.run(&["status"]).expect(0);
}

fn step(sql: &str) -> Step {
    let mut step = Step::record_only(Version::from_stored("1"), "1_hostile".into(), None, None);
    step.sql = sql.into();
    step
}

/// Plan-time checks refuse transaction control in migrations; should one slip through (in a
/// form they cannot see), the step is still caught by the transaction's identity, not only by
/// "still in a transaction": `COMMIT AND CHAIN` leaves the session in a new one.
#[test]
fn a_step_that_ends_its_transaction_is_caught_by_the_transaction_id() {
    for sql in [
        "CREATE TABLE a (id INT); COMMIT AND CHAIN;",
        "CREATE TABLE a (id INT); COMMIT; BEGIN;",
        "CREATE TABLE a (id INT); ROLLBACK; BEGIN;",
        "CREATE TABLE a (id INT); PREPARE TRANSACTION 'sneaky_probe'; BEGIN;",
        "CREATE TABLE a (id INT); COMMIT;",
        // Left the transaction, then failed: still reported as leaving it, not as a failure
        // that rolled back (review 18: in a new transaction begun after the COMMIT, the
        // transaction id cannot be asked once the error aborted it).
        "CREATE TABLE a (id INT); COMMIT; SELECT 1/0;",
        "CREATE TABLE a (id INT); COMMIT; BEGIN; SELECT 1/0;",
        "CREATE TABLE a (id INT); COMMIT AND CHAIN; SELECT 1/0;",
        "ROLLBACK; CREATE TABLE a (id INT); BEGIN; INSERT INTO nope VALUES (1);",
    ] {
        let db = PgDb::new();
        let endpoint = Endpoint::parse("hostile", &db.url).unwrap();
        let mut conn = Postgres::connect(&endpoint, Duration::from_secs(5)).unwrap();
        conn.begin_batch().unwrap();
        let error = conn
            .run_step("b", Direction::Up, &step(sql), "now")
            .unwrap_err();
        assert!(
            matches!(error, DriverError::LeftTransaction { .. }),
            "{sql}: {error}"
        );
        conn.rollback();
        if sql.contains("sneaky_probe") {
            // What the migration prepared is its own, and stays until someone ends it.
            db.conn()
                .batch_execute("ROLLBACK PREPARED 'sneaky_probe'")
                .unwrap();
        }
    }
    // A plain failure inside the batch's transaction is a failure, not a departure: the
    // transaction is usable again after it (rolled back to the batch's savepoint), and the
    // bind is rolled back whole.
    let db = PgDb::new();
    let endpoint = Endpoint::parse("plain", &db.url).unwrap();
    let mut conn = Postgres::connect(&endpoint, Duration::from_secs(5)).unwrap();
    conn.begin_batch().unwrap();
    conn.run_step(
        "b",
        Direction::Up,
        &step("CREATE TABLE ok1 (id INT);"),
        "now",
    )
    .unwrap();
    let error = conn
        .run_step(
            "b",
            Direction::Up,
            &step("CREATE TABLE a (id INT); SELECT 1/0;"),
            "now",
        )
        .unwrap_err();
    assert!(matches!(error, DriverError::Migration { .. }), "{error}");
    conn.rollback();
    let left: S = diesel::sql_query(
        "SELECT count(*)::text AS s FROM pg_tables WHERE tablename IN ('a', 'ok1', '__diesel_schema_migrations')",
    )
    .get_result(&mut db.conn())
    .unwrap();
    assert_eq!(left.s, "0");
    // SQLite: a new transaction after the migration's COMMIT or ROLLBACK is not the batch's.
    for sql in [
        "CREATE TABLE a (id INT); COMMIT;",
        "CREATE TABLE a (id INT); COMMIT; BEGIN;",
        "CREATE TABLE a (id INT); ROLLBACK; BEGIN;",
        "CREATE TABLE a (id INT); END; BEGIN IMMEDIATE;",
        "CREATE TABLE a (id INT); COMMIT; BEGIN; INSERT INTO nope VALUES (1);",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.sqlite3").display());
        let endpoint = Endpoint::parse("hostile", &url).unwrap();
        let mut conn = Sqlite::connect(&endpoint, true, Duration::from_secs(5)).unwrap();
        conn.begin_batch().unwrap();
        let error = conn
            .run_step("b", Direction::Up, &step(sql), "now")
            .unwrap_err();
        assert!(
            matches!(error, DriverError::LeftTransaction { .. }),
            "{sql}: {error}"
        );
        conn.rollback();
    }
}

/// The arbitration itself, on each backend that decides: whoever turns the `begun` row first
/// wins, the other sees it, and a held row makes `recover` wait and give up (Busy).
fn exactly_one_side_wins(url: &str) {
    let endpoint = Endpoint::parse("decider", url).unwrap();
    let connect = || BindConnection::connect(&endpoint, true, Duration::from_secs(5)).unwrap();
    let (coordinator, recover) = (&mut connect(), &mut connect());
    let wait = Duration::from_millis(500);
    let record = |batch: &str| orchestrate_driver::DecisionRecord {
        batch_id: batch.into(),
        direction: "up".into(),
        decider: "decider".into(),
        participants: Vec::new(),
    };

    // recover first: the coordinator then cannot decide.
    coordinator.begin_decision("b1", "now").unwrap();
    assert!(recover.decide_abort("b1", "now", wait).unwrap());
    coordinator.begin_batch().unwrap();
    assert!(matches!(
        coordinator.hold_decision("b1"),
        Err(DriverError::DecisionLost { .. })
    ));
    assert!(matches!(
        coordinator.decide_commit(&record("b1"), "now"),
        Err(DriverError::DecisionLost { .. })
    ));
    coordinator.rollback();
    assert_eq!(
        recover.decision_state("b1").unwrap(),
        Some(DecisionState::Abort)
    );

    // The coordinator holds its batch: recover waits, then gives up without deciding.
    coordinator.begin_decision("b2", "now").unwrap();
    coordinator.begin_batch().unwrap();
    coordinator.hold_decision("b2").unwrap();
    assert!(recover
        .decide_abort("b2", "now", wait)
        .unwrap_err()
        .is_lock_wait());
    assert!(recover.decision_held("b2").unwrap());
    coordinator.decide_commit(&record("b2"), "now").unwrap();
    coordinator.commit().unwrap();
    // Decided: recover cannot turn it any more.
    assert!(!recover.decision_held("b2").unwrap());
    assert!(!recover.decide_abort("b2", "now", wait).unwrap());
    assert!(matches!(
        recover.decision_state("b2").unwrap(),
        Some(DecisionState::Commit(_))
    ));
    // No row at all is no decision either way.
    assert_eq!(recover.decision_state("b3").unwrap(), None);
    assert!(!recover.decide_abort("b3", "now", wait).unwrap());
}

#[test]
fn exactly_one_side_wins_on_postgres() {
    let db = PgDb::new();
    exactly_one_side_wins(&db.url);
}

#[test]
fn exactly_one_side_wins_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    exactly_one_side_wins(&format!(
        "sqlite://{}",
        dir.path().join("d.sqlite3").display()
    ));
}

/// Restores the server's `init_connect` when the test ends, however it ends.
struct InitConnect(String);

impl Drop for InitConnect {
    fn drop(&mut self) {
        if let Ok(mut c) = diesel::MysqlConnection::establish(&self.0) {
            let _ = c.batch_execute("SET GLOBAL init_connect = ''");
        }
    }
}

/// A MySQL user whose sessions start with `autocommit = 0`: the decision row and the marks of
/// a MySQL-only batch must still be committed (every connection turns autocommit on).
#[test]
fn mysql_with_autocommit_off_still_commits_its_bookkeeping() {
    let admin = mysql_admin_url();
    let (a, b) = (MyDb::new(), MyDb::new());
    let user = format!("orch_ac0_{:08x}", rand::random::<u32>());
    let mut root = diesel::MysqlConnection::establish(&admin).unwrap();
    root.batch_execute(&format!(
        "CREATE USER '{user}'@'%'; GRANT ALL PRIVILEGES ON {}.* TO '{user}'@'%'; GRANT ALL PRIVILEGES ON {}.* TO '{user}'@'%';",
        a.name, b.name
    ))
    .unwrap();
    // Applies to users without SUPER only: this one, not the tests' admin.
    root.batch_execute("SET GLOBAL init_connect = 'SET autocommit = 0'")
        .unwrap();
    let _restore = InitConnect(admin.clone());
    let as_user = |url: &str| {
        let (scheme, rest) = url.split_once("://").unwrap();
        let host = rest.split_once('@').map_or(rest, |(_, h)| h);
        format!("{scheme}://{user}@{host}")
    };
    let mut p = Project::new();
    p.config(&format!(
        "[binds.a_my]\nurl = \"{}\"\n[binds.b_my]\nurl = \"{}\"",
        as_user(&a.url),
        as_user(&b.url)
    ));
    for bind in ["a_my", "b_my"] {
        std::fs::create_dir_all(p.path().join("migrations").join(bind)).unwrap();
        p.create_table(bind, "1_t", &format!("{bind}_t"));
    }
    let run = p.run(&["upgrade", "--all-binds", "--allow-non-atomic"]);
    run.expect(0);
    let rows = |db: &MyDb, sql: &str| -> String {
        diesel::sql_query(sql)
            .get_result::<S>(&mut db.conn())
            .unwrap()
            .s
    };
    assert_eq!(
        rows(
            &a,
            "SELECT CAST(group_concat(state) AS CHAR) AS s FROM orchestrate_batches"
        ),
        "commit"
    );
    for (db, table) in [(&a, "a_my_t"), (&b, "b_my_t")] {
        assert_eq!(
            rows(
                db,
                "SELECT CAST(count(*) AS CHAR) AS s FROM orchestrate_in_progress"
            ),
            "0",
            "a mark was left"
        );
        assert_eq!(
            rows(
                db,
                "SELECT CAST(group_concat(version) AS CHAR) AS s FROM __diesel_schema_migrations"
            ),
            "1"
        );
        assert_eq!(
            rows(db, &format!("SELECT CAST(count(*) AS CHAR) AS s FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = '{table}'")),
            "1"
        );
    }
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("Nothing to recover"), "{}", run.stdout);
    root.batch_execute(&format!("DROP USER '{user}'@'%'"))
        .unwrap();
}

/// How many batches the decider has a row for.
fn batch_rows(p: &Project, decider: &str) -> i64 {
    pg_text(
        p.db(decider),
        "SELECT CASE WHEN to_regclass('orchestrate_batches') IS NULL THEN '0' ELSE \
         (SELECT CAST(count(*) AS TEXT) FROM orchestrate_batches) END AS s",
    )
    .parse()
    .unwrap()
}

/// What a kill interrupted, told from the evidence it left (read before recover runs):
/// `rows_before` is how many batches the decider had before this one started.
fn landed_in(p: &Project, decider: &str, rows_before: i64) -> &'static str {
    if batch_rows(p, decider) == rows_before {
        return "before the batch began";
    }
    let decision = pg_text(
        p.db(decider),
        "SELECT state AS s FROM orchestrate_batches ORDER BY begun_at DESC, batch_id DESC LIMIT 1",
    );
    let prepared = p.states().iter().any(|(_, s)| !s.prepared.is_empty());
    match (decision.as_str(), prepared) {
        ("commit", _) => "commit phase (or after)",
        (_, true) => "prepared, before the decision",
        _ => "begun, nothing prepared",
    }
}

/// SIGKILL in every phase of real batches, with `recover` racing the live coordinator every
/// few batches: every kill ends all-or-nothing after recover, with nothing prepared left, and
/// both outcomes occur. ORCHESTRATE_KILL_LOOPS sets the count (default 20; 200 on demand).
#[test]
fn killed_in_every_phase_with_recover_racing() {
    let loops: usize = std::env::var("ORCHESTRATE_KILL_LOOPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg")
        .add_sqlite("b_lite")
        .add_pg("c_pg")
        .add_sqlite("d_lite");
    crate::crash::two_migrations_each(&mut p, "0.05");
    let started = std::time::Instant::now();
    p.run(&["upgrade", "--all-binds"]).expect(0);
    let window_ms = (started.elapsed().as_millis() as u64 * 6 / 5).max(1);
    p.run(&["downgrade", "--all-binds", "base"]).expect(0);
    let mut landed: std::collections::BTreeMap<&str, usize> = Default::default();
    let (mut committed, mut rolled_back, mut raced, mut raced_late) = (0, 0, 0, 0);
    for i in 0..loops {
        let mode = [
            "random",
            "after-prepare",
            "before-decision",
            "after-decision",
            "after-first-commit",
        ][i % 5];
        let failpoints = match mode {
            "random" => String::new(),
            point => format!("{point}=sleep(1500)"),
        };
        let rows_before = batch_rows(&p, "a_pg");
        let mut child = spawn(&p, &["upgrade", "--all-binds"], &failpoints);
        let prepared = || p.states().iter().any(|(_, s)| !s.prepared.is_empty());
        match mode {
            "random" => {
                std::thread::sleep(Duration::from_millis(rand::random::<u64>() % window_ms))
            }
            "after-prepare" | "before-decision" => {
                wait_until("a bind is prepared", prepared);
                if mode == "before-decision" || i % 3 == 0 {
                    // A recover racing the live coordinator leaves its batch alone; one that
                    // starts after the coordinator decided (a loaded machine can take longer
                    // than the pause) finishes the decided batch. Never a rollback.
                    raced += 1;
                    let run = p.run(&["recover", "--wait", "0"]);
                    let held = run.code == 3 && run.stdout.contains("still holds batch");
                    let decided = run.code == 0 && run.stdout.contains("committed");
                    assert!(
                        (held || decided) && !run.stdout.contains("rolled back"),
                        "loop {i}: recover against a live batch: {run:?}"
                    );
                    raced_late += usize::from(decided);
                }
            }
            _ => {
                wait_until("the batch is decided", || {
                    landed_in(&p, "a_pg", rows_before).starts_with("commit phase")
                });
                std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 300));
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        *landed
            .entry(landed_in(&p, "a_pg", rows_before))
            .or_default() += 1;
        // One recover settles it: a killed coordinator's session that is still ending holds the
        // batch's row for a moment, and recover waits for it (up to lock_timeout_ms).
        let run = p.run(&["recover"]);
        assert_eq!(
            run.code, 0,
            "loop {i} ({mode}): one recover did not settle the batch: {run:?}"
        );
        let seen = run.stdout;
        match crate::crash::all_or_nothing(&p) {
            Some(true) => {
                committed += 1;
                p.run(&["downgrade", "--all-binds", "base"]).expect(0);
            }
            Some(false) => rolled_back += 1,
            None => panic!(
                "loop {i} ({mode}): a mixed state after recover:\n{seen}\n{:#?}",
                p.states()
            ),
        }
    }
    eprintln!(
        "killed_in_every_phase_with_recover_racing: {loops} kills; landed: {landed:?}; {committed} committed, {rolled_back} rolled back; {raced} recover runs raced a live batch ({raced_late} of them after it had decided)"
    );
    if loops >= 5 {
        assert!(
            committed > 0 && rolled_back > 0,
            "both outcomes must occur: {committed} committed, {rolled_back} rolled back"
        );
        assert!(
            landed.get("commit phase (or after)").copied().unwrap_or(0) > 0,
            "{landed:?}"
        );
        assert!(
            landed
                .get("prepared, before the decision")
                .copied()
                .unwrap_or(0)
                > 0,
            "{landed:?}"
        );
    }
    p.run(&["upgrade", "--all-binds"]).expect(0);
    assert_eq!(crate::crash::all_or_nothing(&p), Some(true));
}

/// A batch of MySQL binds alone records its decision on its first bind: on a server whose
/// InnoDB does not flush its log at every commit the decision could be lost in a crash, so the
/// batch is refused before anything runs.
#[test]
fn a_mysql_only_batch_refuses_a_server_that_does_not_flush_at_commit() {
    let server = crate::support::OwnMariaDb::start();
    let mut root = diesel::MysqlConnection::establish(&server.url).unwrap();
    root.batch_execute("SET GLOBAL innodb_flush_log_at_trx_commit = 2")
        .unwrap();
    let mut p = Project::new();
    p.config(&format!(
        "[binds.a_my]\nurl = \"{}\"\n[binds.b_my]\nurl = \"{}\"",
        server.database("a"),
        server.database("b")
    ));
    for bind in ["a_my", "b_my"] {
        p.create_table(bind, "1_t", &format!("{bind}_t"));
    }
    let run = p.run(&["upgrade", "--all-binds", "--allow-non-atomic"]);
    run.expect(2);
    assert!(
        run.stderr.contains("innodb_flush_log_at_trx_commit = 2"),
        "{run:?}"
    );
    // check says the same, as the gate for that upgrade.
    let check = p.run(&["check", "--allow-non-atomic"]);
    check.expect(2);
    assert!(
        check.stderr.contains("innodb_flush_log_at_trx_commit = 2"),
        "{check:?}"
    );
    let admin = server.url.clone();
    let tables = |db: &str| -> String {
        let mut c = diesel::MysqlConnection::establish(&admin).unwrap();
        diesel::sql_query(format!(
            "SELECT CAST(coalesce(group_concat(table_name ORDER BY table_name), '') AS CHAR) AS s FROM information_schema.tables WHERE table_schema = '{db}'"
        ))
        .get_result::<S>(&mut c)
        .unwrap()
        .s
    };
    assert_eq!(tables("a"), "", "something was written");
    assert_eq!(tables("b"), "");
    root.batch_execute("SET GLOBAL innodb_flush_log_at_trx_commit = 1")
        .unwrap();
    p.run(&["upgrade", "--all-binds", "--allow-non-atomic"])
        .expect(0);
    assert!(tables("a").contains("a_my_t") && tables("b").contains("b_my_t"));
}

/// A migration that switches role with `SET ROLE` (a common way to create objects as their
/// owner): the prepared transaction must still belong to the connection's role, or neither
/// the batch nor `recover` could end it.
#[test]
fn a_participant_that_sets_role_can_still_be_committed() {
    let suffix = format!("{:08x}", rand::random::<u32>());
    let (app, owner) = (format!("orch_app_{suffix}"), format!("orch_owner_{suffix}"));
    let mut p = Project::new();
    p.add_pg("a_pg").add_pg("b_pg");
    let mut admin = diesel::PgConnection::establish(&crate::support::pg_admin_url()).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {owner}; CREATE ROLE {app} LOGIN IN ROLE {owner};"
        ))
        .unwrap();
    let mut config = String::from("lock_timeout_ms = 5000\ndecider = \"a_pg\"\n");
    for bind in ["a_pg", "b_pg"] {
        let Db::Pg(db) = p.db(bind) else {
            unreachable!()
        };
        db.conn()
            .batch_execute(&format!(
                "GRANT ALL ON DATABASE {0} TO {app}; GRANT ALL ON SCHEMA public TO {app}, {owner};",
                db.name
            ))
            .unwrap();
        let url = db.url.replacen("postgres@", &format!("{app}@"), 1);
        config.push_str(&format!("[binds.{bind}]\nurl = \"{url}\"\n"));
    }
    std::fs::write(p.path().join("config/default.toml"), config).unwrap();
    p.create_table("a_pg", "1_a", "a");
    p.migration(
        "b_pg",
        "1_b",
        &format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {owner}; GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {owner}; SET ROLE {owner}; CREATE TABLE b (id INT PRIMARY KEY);"),
        Some("DROP TABLE b;"),
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(0);
    assert_eq!(p.db("a_pg").state(), state(&["a"], &["1"]));
    assert_eq!(p.db("b_pg").state(), state(&["b"], &["1"]));
    drop(p);
    let _ = admin.batch_execute(&format!(
        "DROP ROLE IF EXISTS {app}; DROP ROLE IF EXISTS {owner};"
    ));
}

/// The decider's database gets another default search_path after a crash (a DBA's change):
/// recover still finds the batch's decision where it was written, and finishes the batch.
#[test]
fn a_decision_is_found_after_the_default_search_path_changed() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_pg("b_pg");
    two_binds(&mut p, "a_pg", "b_pg", "CREATE TABLE d (id INT);");
    killed_after_the_decision(&p);
    let Db::Pg(decider) = p.db("a_pg") else {
        unreachable!()
    };
    decider
        .conn()
        .batch_execute(&format!(
            "CREATE SCHEMA app; ALTER DATABASE {} SET search_path = app",
            decider.name
        ))
        .unwrap();
    let seen = recover_until_clean(&p);
    assert!(seen.contains("committed"), "{seen}");
    assert_eq!(p.db("b_pg").state(), state(&["p"], &["1"]));
    // The test's own reader looks through the search path too: put it back to read.
    decider
        .conn()
        .batch_execute(&format!(
            "ALTER DATABASE {} RESET search_path",
            decider.name
        ))
        .unwrap();
    assert_eq!(p.db("a_pg").state(), state(&["d"], &["1"]));
}

/// A MySQL-only batch whose decider's migration calls a procedure that turns autocommit off:
/// the decision and the marks are still committed (each statement is followed by turning
/// autocommit back on), so the batch is committed everywhere and recover has nothing to undo.
#[test]
fn a_procedure_that_turns_autocommit_off_cannot_hide_a_mysql_decision() {
    let (a, b) = (MyDb::new(), MyDb::new());
    a.conn()
        .batch_execute("CREATE PROCEDURE ac_off() SET autocommit = 0")
        .unwrap();
    let mut p = Project::new();
    p.config(&format!(
        "[binds.a_my]\nurl = \"{}\"\n[binds.b_my]\nurl = \"{}\"",
        a.url, b.url
    ));
    p.migration(
        "a_my",
        "1_a",
        "CREATE TABLE a (id INT);\nCALL ac_off();\nINSERT INTO a VALUES (1);",
        Some("DROP TABLE a;"),
    );
    p.create_table("b_my", "1_b", "b_t");
    p.run(&["upgrade", "--all-binds", "--allow-non-atomic"])
        .expect(0);
    let text = |db: &MyDb, sql: &str| -> String {
        diesel::sql_query(sql)
            .get_result::<S>(&mut db.conn())
            .unwrap()
            .s
    };
    assert_eq!(
        text(
            &a,
            "SELECT CAST(group_concat(state) AS CHAR) AS s FROM orchestrate_batches"
        ),
        "commit"
    );
    assert_eq!(text(&a, "SELECT CAST(count(*) AS CHAR) AS s FROM a"), "1");
    for db in [&a, &b] {
        assert_eq!(
            text(
                db,
                "SELECT CAST(count(*) AS CHAR) AS s FROM orchestrate_in_progress"
            ),
            "0"
        );
    }
    p.run(&["status"]).expect(0);
    let run = p.run(&["recover"]);
    run.expect(0);
    assert_eq!(text(&a, "SELECT CAST(count(*) AS CHAR) AS s FROM a"), "1");
}

/// Two deploys racing over SQLite binds: the second waits for the decider's lock up to
/// lock_timeout_ms (5 s here) before it says the bind is busy, and changes nothing.
#[test]
fn a_second_run_waits_for_a_busy_sqlite_decider() {
    let mut p = Project::new();
    p.add_sqlite("b_lite").add_sqlite("c_lite");
    two_binds(&mut p, "b_lite", "c_lite", "CREATE TABLE d (id INT);");
    let child = spawn(
        &p,
        &["upgrade", "--all-binds"],
        "before-decision=sleep(8000)",
    );
    let Db::Sqlite(path) = p.db("b_lite") else {
        unreachable!()
    };
    wait_until("the first batch has begun", || {
        path.exists()
            && diesel::SqliteConnection::establish(path.to_str().unwrap())
                .ok()
                .and_then(|mut c| {
                    diesel::sql_query(
                        "SELECT CAST(count(*) AS TEXT) AS s FROM sqlite_master WHERE name = 'orchestrate_batches'",
                    )
                    .get_result::<S>(&mut c)
                    .ok()
                })
                .is_some_and(|r| r.s == "1")
    });
    std::thread::sleep(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(
        started.elapsed() >= Duration::from_millis(4500)
            && run.stderr.contains("holds this database's migration lock"),
        "gave up after {:?}: {run:?}",
        started.elapsed()
    );
    committed(child);
    assert_eq!(p.db("b_lite").state(), state(&["d"], &["1"]));
    assert_eq!(p.db("c_lite").state(), state(&["p"], &["1"]));
}

/// The connection to the decider is lost during its COMMIT (its backend is terminated while
/// the COMMIT waits for a synchronous standby that never answers): whether the batch committed
/// is unknown, so nothing may be rolled back (exit 3); recover then finds the decision and
/// commits everywhere.
#[test]
fn a_decider_commit_whose_outcome_is_unknown_leaves_the_batch_to_recover() {
    let cluster = OwnCluster::start();
    let mut p = Project::new();
    p.add_pg_at("a_pg", &cluster.url)
        .add_pg("b_pg")
        .add_sqlite("c_lite")
        .add_mysql("d_my");
    two_binds(&mut p, "a_pg", "b_pg", "CREATE TABLE d (id INT);");
    p.create_table("c_lite", "1_c", "c");
    p.create_table("d_my", "1_m", "m");
    let child = spawn(
        &p,
        &["upgrade", "--all-binds", "--allow-non-atomic"],
        "before-decision=sleep(2000)",
    );
    wait_until("the participant is prepared", || {
        p.db("b_pg").state().prepared.len() == 1
    });
    let mut admin = diesel::PgConnection::establish(&cluster.url).unwrap();
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).unwrap();
    }
    let Db::Pg(decider) = p.db("a_pg") else {
        unreachable!()
    };
    let name = decider.name.clone();
    wait_until("the decider's COMMIT waits for the standby", || {
        pg_text(
            p.db("a_pg"),
            "SELECT CAST(count(*) AS TEXT) AS s FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
        ) == "1"
    });
    for sql in [
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND datname = '{name}'"),
        "ALTER SYSTEM RESET synchronous_standby_names".into(),
        "SELECT pg_reload_conf()".into(),
    ] {
        admin.batch_execute(&sql).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("whether batch") && stderr.contains("orchestrate recover"),
        "{stderr}"
    );
    // Nothing was rolled back: the participant is still prepared, and each bind says what it
    // is left in.
    assert_eq!(p.db("b_pg").state().prepared.len(), 1);
    for line in [
        "  a_pg: the decider's COMMIT may or may not have happened",
        "  b_pg: left prepared as orchestrate:",
        "  c_lite: its open transaction was dropped; `orchestrate recover` re-applies it",
        "  d_my: NOT atomic: its migrations of this batch are committed and marked",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    let seen = recover_until_clean(&p);
    assert!(seen.contains("committed"), "{seen}");
    p.assert_states(&[
        ("a_pg", state(&["d"], &["1"])),
        ("b_pg", state(&["p"], &["1"])),
        ("c_lite", state(&["c"], &["1"])),
        ("d_my", state(&["m"], &["1"])),
    ]);
}

/// PostgreSQL answers PREPARE TRANSACTION with success, and prepares nothing, when no
/// transaction is open (or it had already failed): every PREPARE is checked in
/// pg_prepared_xacts.
#[test]
fn a_prepare_that_prepared_nothing_is_caught() {
    let db = PgDb::new();
    let endpoint = Endpoint::parse("p", &db.url).unwrap();
    let mut conn = Postgres::connect(&endpoint, Duration::from_secs(5)).unwrap();
    conn.begin_batch().unwrap();
    // The batch's transaction is gone (here ended by hand): PREPARE outside a transaction
    // only warns.
    conn.rollback();
    let gid = format!(
        "orchestrate:20260101T000000Z-{:08x}:p:p",
        rand::random::<u32>()
    );
    let error = conn.prepare(&gid).unwrap_err();
    assert!(
        matches!(error, DriverError::PrepareNotRecorded { .. }),
        "{error}"
    );
    let prepared = diesel::sql_query(
        "SELECT CAST(count(*) AS TEXT) AS s FROM pg_prepared_xacts WHERE database = current_database()",
    )
    .get_result::<S>(&mut db.conn())
    .unwrap()
    .s;
    assert_eq!(prepared, "0");
}

/// A SQLite bind that is not the decider cannot PREPARE: its COMMIT after the decision must
/// not be able to fail on a deferred foreign key. It votes before the decision instead, and
/// the batch rolls back everywhere.
#[test]
fn a_deferred_foreign_key_on_a_sqlite_participant_fails_before_the_decision() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_sqlite("b_lite");
    p.config("decider = \"a_pg\"");
    p.create_table("a_pg", "1_a", "a");
    p.migration(
        "b_lite",
        "1_b",
        "CREATE TABLE parent (id INTEGER PRIMARY KEY);\n\
         CREATE TABLE child (pid INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED);\n\
         INSERT INTO child VALUES (42);",
        Some("DROP TABLE child; DROP TABLE parent;"),
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(run.stderr.contains("foreign key"), "{run:?}");
    assert_eq!(p.db("a_pg").state(), state(&[], &[]));
    assert_eq!(p.db("b_lite").state(), state(&[], &[]));
    p.run(&["status"]).expect(0);
}

/// A migration that creates a schema named after the login role (first in the default
/// search_path, `"$user"`) must not move the bookkeeping of later sessions: the next run
/// still finds what was applied and applies nothing twice.
#[test]
fn a_schema_named_after_the_role_does_not_move_the_bookkeeping() {
    let mut p = Project::new();
    p.add_pg("a_pg");
    p.migration(
        "a_pg",
        "1_a",
        "CREATE SCHEMA IF NOT EXISTS postgres;\nCREATE TABLE public.audit (msg TEXT);\nINSERT INTO public.audit VALUES ('once');",
        Some("DROP TABLE public.audit; DROP SCHEMA postgres;"),
    );
    p.run(&["upgrade", "--all-binds"]).expect(0);
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(0);
    assert!(run.stdout.contains("Nothing to do"), "{run:?}");
    assert_eq!(
        pg_text(
            p.db("a_pg"),
            "SELECT CAST(count(*) AS TEXT) AS s FROM public.audit"
        ),
        "1"
    );
    assert_eq!(
        pg_text(
            p.db("a_pg"),
            "SELECT CAST(count(*) AS TEXT) AS s FROM pg_tables WHERE tablename = '__diesel_schema_migrations'"
        ),
        "1"
    );
    p.run(&["status"]).expect(0);
}
