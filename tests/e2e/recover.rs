//! `orchestrate recover`, and what status and upgrade say while a batch is in doubt.

use std::process::Command;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use orchestrate_driver::{gid_for, Backend, DecisionRecord, Participant, RedoStep};

use crate::support::{state, Db, Project};

/// A batch id of this test's own: prepared transaction ids are unique per server, and tests
/// run in parallel on one server.
fn new_batch() -> String {
    format!("20260101T000000Z-{:08x}", rand::random::<u32>())
}

fn pg(p: &Project, bind: &str) -> diesel::PgConnection {
    match p.db(bind) {
        Db::Pg(db) => db.conn(),
        _ => panic!("{bind} is not PostgreSQL"),
    }
}

/// What a coordinator killed after preparing `side` leaves behind.
fn prepare_by_hand(p: &Project, bind: &str, decider: &str, batch: &str) -> String {
    let gid = gid_for(batch, decider, bind);
    pg(p, bind)
        .batch_execute(&format!(
            "BEGIN; CREATE TABLE x (id INT); \
             CREATE TABLE IF NOT EXISTS __diesel_schema_migrations (version VARCHAR(50) PRIMARY KEY NOT NULL, run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP); \
             INSERT INTO __diesel_schema_migrations (version) VALUES ('1'); \
             CREATE TABLE IF NOT EXISTS orchestrate_history (id BIGSERIAL PRIMARY KEY, batch_id TEXT NOT NULL, version TEXT NOT NULL, name TEXT NOT NULL, direction TEXT NOT NULL, checksum TEXT, down_sql TEXT, at TEXT NOT NULL); \
             INSERT INTO orchestrate_history (batch_id, version, name, direction, at) VALUES ('{batch}', '1', '1_x', 'up', 'now'); \
             PREPARE TRANSACTION '{gid}';"
        ))
        .unwrap();
    gid
}

fn record_decision(p: &Project, decider: &str, batch: &str, participants: Vec<Participant>) {
    let record = DecisionRecord {
        batch_id: batch.into(),
        direction: "up".into(),
        decider: decider.into(),
        participants,
    };
    let json = serde_json::to_string(&record).unwrap().replace('\'', "''");
    pg(p, decider)
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS orchestrate_decisions (batch_id TEXT PRIMARY KEY NOT NULL, decided_at TEXT NOT NULL, record TEXT NOT NULL); \
             INSERT INTO orchestrate_decisions VALUES ('{batch}', 'now', '{json}');"
        ))
        .unwrap();
}

fn two_pg() -> Project {
    let mut p = Project::new();
    p.add_pg("main").add_pg("side");
    p.migration(
        "main",
        "1_m",
        "CREATE TABLE m (id INT);",
        Some("DROP TABLE m;"),
    );
    p.migration(
        "side",
        "1_x",
        "CREATE TABLE x (id INT);",
        Some("DROP TABLE x;"),
    );
    p
}

#[test]
fn undecided_batch_is_reported_refused_and_rolled_back() {
    let batch = new_batch();
    let p = two_pg();
    let gid = prepare_by_hand(&p, "side", "main", &batch);

    let run = p.run(&["status"]);
    run.expect(3);
    assert!(
        run.stdout.contains(&gid) && run.stdout.contains("orchestrate recover"),
        "{}",
        run.stdout
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(3);
    assert!(
        run.stderr.contains(&gid) && run.stderr.contains("orchestrate recover"),
        "{}",
        run.stderr
    );
    assert_eq!(p.db("main").state(), state(&[], &[]));

    let run = p.run(&["recover", "--dry-run"]);
    run.expect(0);
    assert!(run.stdout.contains("would roll back"), "{}", run.stdout);
    assert_eq!(
        p.db("side").state().prepared,
        std::slice::from_ref(&gid),
        "--dry-run changed something"
    );

    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("rolled back"), "{}", run.stdout);
    assert_eq!(p.db("side").state(), state(&[], &[]));
    assert_eq!(p.db("main").state(), state(&[], &[]));
    p.run(&["recover"]).expect(0);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    assert_eq!(p.db("side").state(), state(&["x"], &["1"]));
}

#[test]
fn decided_batch_is_committed() {
    let batch = new_batch();
    let p = two_pg();
    let gid = prepare_by_hand(&p, "side", "main", &batch);
    record_decision(
        &p,
        "main",
        &batch,
        vec![Participant {
            bind: "side".into(),
            backend: Backend::Postgres,
            gid: Some(gid),
            redo: None,
        }],
    );
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("committed"), "{}", run.stdout);
    assert_eq!(p.db("side").state(), state(&["x"], &["1"]));
}

#[test]
fn a_batch_whose_decider_is_alive_is_left_alone() {
    let batch = new_batch();
    let p = two_pg();
    let gid = prepare_by_hand(&p, "side", "main", &batch);
    let mut coordinator = pg(&p, "main");
    coordinator
        .batch_execute(&format!(
            "SET application_name = 'orchestrate-decider:{batch}'; BEGIN;"
        ))
        .unwrap();
    let run = p.run(&["recover"]);
    run.expect(3);
    assert!(
        run.stdout.contains("still appears to be running"),
        "{}",
        run.stdout
    );
    assert_eq!(p.db("side").state().prepared, [gid]);
    drop(coordinator);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = p.run(&["recover"]);
        if run.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the decider session never went away: {}",
            run.stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(p.db("side").state(), state(&[], &[]));
}

#[test]
fn a_sqlite_bind_that_lost_a_decided_batch_is_redone_once() {
    let batch = new_batch();
    let mut p = Project::new();
    p.add_pg("main").add_sqlite("side");
    p.migration(
        "side",
        "1_s",
        "CREATE TABLE s (id INT);",
        Some("DROP TABLE s;"),
    );
    record_decision(
        &p,
        "main",
        &batch,
        vec![Participant {
            bind: "side".into(),
            backend: Backend::Sqlite,
            gid: None,
            redo: Some(vec![RedoStep {
                version: "1".into(),
                name: "1_s".into(),
                sql: "CREATE TABLE s (id INT);".into(),
                checksum: Some(orchestrate_core::checksum("CREATE TABLE s (id INT);")),
                down_sql: Some("DROP TABLE s;".into()),
            }]),
        }],
    );
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("redone"), "{}", run.stdout);
    assert_eq!(p.db("side").state(), state(&["s"], &["1"]));
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(
        !run.stdout.contains("redone"),
        "redone twice: {}",
        run.stdout
    );
    let run = p.run(&["status", "--bind", "side", "--json"]);
    run.expect(0);
    assert!(run.stdout.contains("\"problems\": []"), "{}", run.stdout);
}

/// A real crash: the coordinator is killed with SIGKILL after one bind has prepared and while
/// another is still running. Recover rolls everything back and a new upgrade works.
#[test]
fn killed_after_a_prepare_recovers_to_nothing_applied() {
    let mut p = Project::new();
    p.add_pg("a_decider").add_pg("b_fast").add_pg("c_slow");
    p.migration("a_decider", "1_a", "CREATE TABLE a (id INT);", None);
    p.migration("b_fast", "1_b", "CREATE TABLE b (id INT);", None);
    p.migration(
        "c_slow",
        "1_c",
        "CREATE TABLE c (id INT);\nSELECT pg_sleep(2);",
        None,
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_orchestrate"))
        .current_dir(p.path())
        .args(["upgrade", "--all-binds"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.db("b_fast").state().prepared.is_empty() {
        assert!(Instant::now() < deadline, "b_fast never prepared");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(p.db("b_fast").state().prepared.len(), 1);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = p.run(&["recover"]);
        if run.code == 0 {
            assert!(run.stdout.contains("rolled back"), "{}", run.stdout);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recover never finished: {}\n{}",
            run.stdout,
            run.stderr
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (bind, st) in p.states() {
        assert_eq!(st, state(&[], &[]), "{bind}");
    }
    p.run(&["upgrade", "--all-binds"]).expect(0);
    assert_eq!(p.db("c_slow").state(), state(&["c"], &["1"]));
    assert_eq!(p.db("b_fast").state(), state(&["b"], &["1"]));
}

/// A prepared batch that locks the version table: status reports it without hanging, and says
/// what is known of the decision.
#[test]
fn status_does_not_hang_on_a_locking_in_doubt_batch() {
    let batch = new_batch();
    let p = two_pg();
    p.run(&["upgrade", "--all-binds"]).expect(0);
    let gid = gid_for(&batch, "main", "side");
    pg(&p, "side")
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE __diesel_schema_migrations IN ACCESS EXCLUSIVE MODE; PREPARE TRANSACTION '{gid}';"
        ))
        .unwrap();
    let started = Instant::now();
    let run = p.run(&["status", "--json"]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "status took {:?}",
        started.elapsed()
    );
    run.expect(3);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let side = v["binds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["bind"] == "side")
        .unwrap();
    assert_eq!(side["in_doubt"][0]["gid"], gid.as_str());
    assert_eq!(side["in_doubt"][0]["batch_id"], batch.as_str());
    assert_eq!(side["in_doubt"][0]["decision"], "none");
    assert!(
        side["errors"][0].as_str().unwrap().contains("locked"),
        "{side}"
    );
    let run = p.run(&["check"]);
    run.expect(3);
    assert!(run.stdout.contains("in doubt"), "{}", run.stdout);
    // Once a decision is recorded, status says recover will commit it.
    record_decision(&p, "main", &batch, vec![]);
    let run = p.run(&["status"]);
    run.expect(3);
    assert!(run.stdout.contains("decided to commit"), "{}", run.stdout);
    p.run(&["recover"]).expect(0);
    p.run(&["check"]).expect(0);
}

/// Someone ran ROLLBACK PREPARED by hand although the batch was decided: recover says so once,
/// records it, and does not loop on it.
#[test]
fn a_prepared_transaction_rolled_back_by_hand_is_a_heuristic_outcome() {
    let batch = new_batch();
    let p = two_pg();
    let gid = prepare_by_hand(&p, "side", "main", &batch);
    record_decision(
        &p,
        "main",
        &batch,
        vec![Participant {
            bind: "side".into(),
            backend: Backend::Postgres,
            gid: Some(gid.clone()),
            redo: None,
        }],
    );
    pg(&p, "side")
        .batch_execute(&format!("ROLLBACK PREPARED '{gid}'"))
        .unwrap();
    let run = p.run(&["recover"]);
    run.expect(3);
    assert!(
        run.stdout.contains("heuristic outcome") && run.stdout.contains(&gid),
        "{}",
        run.stdout
    );
    assert_eq!(p.db("side").state(), state(&[], &[]));
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(
        !run.stdout.contains("heuristic"),
        "reported twice: {}",
        run.stdout
    );
}
