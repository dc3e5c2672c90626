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

/// What a coordinator killed after preparing `side` leaves behind.
fn prepare_by_hand(p: &Project, bind: &str, decider: &str, batch: &str) -> String {
    let gid = gid_for(batch, decider, bind);
    p.db(bind).pg()
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

const BATCHES_DDL: &str = "CREATE TABLE IF NOT EXISTS orchestrate_batches (batch_id VARCHAR(64) PRIMARY KEY NOT NULL, state VARCHAR(16) NOT NULL, begun_at VARCHAR(40) NOT NULL, decided_at VARCHAR(40), settled_at VARCHAR(40), record TEXT)";

/// What a coordinator commits on its decider before any bind prepares: the batch's `begun` row.
fn begin_by_hand(p: &Project, decider: &str, batch: &str) {
    p.db(decider).pg()
        .batch_execute(&format!(
            "{BATCHES_DDL}; INSERT INTO orchestrate_batches (batch_id, state, begun_at) VALUES ('{batch}', 'begun', 'now');"
        ))
        .unwrap();
}

fn decision_json(decider: &str, batch: &str, participants: Vec<Participant>) -> String {
    let record = DecisionRecord {
        batch_id: batch.into(),
        direction: "up".into(),
        decider: decider.into(),
        participants,
    };
    serde_json::to_string(&record).unwrap().replace('\'', "''")
}

/// The decider's commit decision for a batch.
fn record_decision(p: &Project, decider: &str, batch: &str, participants: Vec<Participant>) {
    let json = decision_json(decider, batch, participants);
    p.db(decider).pg()
        .batch_execute(&format!(
            "{BATCHES_DDL}; INSERT INTO orchestrate_batches (batch_id, state, begun_at, decided_at, record) VALUES ('{batch}', 'commit', 'now', 'now', '{json}') \
             ON CONFLICT (batch_id) DO UPDATE SET state = 'commit', decided_at = 'now', record = EXCLUDED.record;"
        ))
        .unwrap();
}

/// A commit decision as versions before `orchestrate_batches` wrote it.
fn record_legacy_decision(p: &Project, decider: &str, batch: &str, participants: Vec<Participant>) {
    let json = decision_json(decider, batch, participants);
    p.db(decider).pg()
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS orchestrate_decisions (batch_id TEXT PRIMARY KEY NOT NULL, decided_at TEXT NOT NULL, record TEXT NOT NULL); \
             INSERT INTO orchestrate_decisions VALUES ('{batch}', 'now', '{json}');"
        ))
        .unwrap();
}

/// The state of a batch's row on a PostgreSQL decider (`missing` when there is none).
fn batch_state(p: &Project, decider: &str, batch: &str) -> String {
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        s: String,
    }
    use diesel::RunQueryDsl;
    diesel::sql_query(format!(
        "SELECT coalesce((SELECT state || CASE WHEN settled_at IS NULL THEN '' ELSE ',settled' END FROM orchestrate_batches WHERE batch_id = '{batch}'), 'missing') AS s"
    ))
    .get_result::<S>(&mut p.db(decider).pg())
    .unwrap()
    .s
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
    begin_by_hand(&p, "main", &batch);
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
    run.expect(3);
    assert!(run.stdout.contains("would roll back"), "{}", run.stdout);
    assert_eq!(
        p.db("side").state().prepared,
        std::slice::from_ref(&gid),
        "--dry-run changed something"
    );
    assert_eq!(
        batch_state(&p, "main", &batch),
        "begun",
        "--dry-run decided"
    );

    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("rolled back"), "{}", run.stdout);
    assert_eq!(batch_state(&p, "main", &batch), "abort");
    assert_eq!(p.db("side").state(), state(&[], &[]));
    assert_eq!(p.db("main").state(), state(&[], &[]));
    p.run(&["recover"]).expect(0);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    assert_eq!(p.db("side").state(), state(&["x"], &["1"]));
}

/// No evidence is never a decision: a prepared transaction whose decider has no row for its
/// batch (a restored or replaced database, a hand-made transaction) stays as it is, exit 3.
#[test]
fn a_batch_without_its_row_on_the_decider_is_in_doubt_not_aborted() {
    let batch = new_batch();
    let p = two_pg();
    let gid = prepare_by_hand(&p, "side", "main", &batch);
    for args in [&["recover"][..], &["recover", "--dry-run"][..]] {
        let run = p.run(args);
        run.expect(3);
        assert!(
            run.stdout.contains("no row for batch") && run.stdout.contains("left alone"),
            "{}",
            run.stdout
        );
    }
    assert_eq!(p.db("side").state().prepared, std::slice::from_ref(&gid));
    let run = p.run(&["status", "--json"]);
    run.expect(3);
    assert!(run.stdout.contains("unknown: no row"), "{}", run.stdout);
    // Once the evidence is there, recover acts on it.
    record_decision(&p, "main", &batch, vec![]);
    p.run(&["recover"]).expect(0);
    assert_eq!(p.db("side").state(), state(&["x"], &["1"]));
    assert_eq!(p.db("main").state(), state(&[], &[]));
}

/// A decision written by a version before `orchestrate_batches` still counts, and recover
/// settles it once, so that later runs no longer read it.
#[test]
fn a_decision_of_an_older_version_is_committed_and_settled() {
    let batch = new_batch();
    let p = two_pg();
    let gid = prepare_by_hand(&p, "side", "main", &batch);
    record_legacy_decision(
        &p,
        "main",
        &batch,
        vec![Participant {
            bind: "side".into(),
            backend: Backend::Postgres,
            gid: Some(gid),
            redo: None,
            before: None,
        }],
    );
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("committed"), "{}", run.stdout);
    assert_eq!(p.db("side").state(), state(&["x"], &["1"]));
    assert_eq!(batch_state(&p, "main", &batch), "commit,settled");
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
            before: None,
        }],
    );
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("committed"), "{}", run.stdout);
    assert_eq!(p.db("side").state(), state(&["x"], &["1"]));
    assert_eq!(batch_state(&p, "main", &batch), "commit,settled");
}

#[test]
fn a_batch_whose_decider_is_alive_is_left_alone() {
    let batch = new_batch();
    let p = two_pg();
    begin_by_hand(&p, "main", &batch);
    let gid = prepare_by_hand(&p, "side", "main", &batch);
    // A coordinator holds its batch's row from before any bind prepares until it decides.
    let mut coordinator = p.db("main").pg();
    coordinator
        .batch_execute(&format!(
            "BEGIN; SELECT * FROM orchestrate_batches WHERE batch_id = '{batch}' FOR UPDATE;"
        ))
        .unwrap();
    for args in [
        &["recover", "--wait", "1"][..],
        &["recover", "--dry-run"][..],
    ] {
        let run = p.run(args);
        run.expect(3);
        assert!(run.stdout.contains("still holds batch"), "{}", run.stdout);
    }
    assert_eq!(p.db("side").state().prepared, [gid]);
    assert_eq!(batch_state(&p, "main", &batch), "begun");
    drop(coordinator);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = p.run(&["recover", "--wait", "1"]);
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
    // The coordinator had created the file when it opened the bind's (then lost) transaction.
    std::fs::create_dir_all(p.path().join("var")).unwrap();
    p.db("side").execute("SELECT 1;");
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
            before: None,
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
    assert_eq!(batch_state(&p, "main", &batch), "commit,settled");
}

/// A decided batch is replayed only onto the database it was decided for, in the state it
/// began from: a SQLite file reset (or replaced) since gets nothing, and recover says why.
#[test]
fn a_reset_sqlite_file_never_gets_a_decided_batch_replayed() {
    let batch = new_batch();
    let mut p = Project::new();
    p.add_pg("main").add_sqlite("side");
    p.create_table("side", "1_a", "a");
    p.create_table("side", "2_b", "b");
    p.run(&["upgrade", "--all-binds", "--target", "side=1"])
        .expect(0);
    record_decision(
        &p,
        "main",
        &batch,
        vec![Participant {
            bind: "side".into(),
            backend: Backend::Sqlite,
            gid: None,
            redo: Some(vec![RedoStep {
                version: "2".into(),
                name: "2_b".into(),
                sql: "CREATE TABLE b (id INT PRIMARY KEY);".into(),
                checksum: Some(orchestrate_core::checksum(
                    "CREATE TABLE b (id INT PRIMARY KEY);",
                )),
                down_sql: Some("DROP TABLE b;".into()),
            }]),
            before: Some(vec!["1".into()]),
        }],
    );
    // The file is replaced by a fresh one.
    let Db::Sqlite(path) = p.db("side") else {
        unreachable!()
    };
    std::fs::remove_file(path).unwrap();
    p.db("side").execute("CREATE TABLE other (id INT);");
    for args in [&["recover", "--dry-run"][..], &["recover"][..]] {
        let run = p.run(args);
        run.expect(3);
        assert!(
            run.stdout.contains("not in the state the batch began from"),
            "{}",
            run.stdout
        );
    }
    // The decided batch stays unsettled: a person must look at `side`.
    p.leaves_batches_in_doubt();
    p.assert_states(&[("main", state(&[], &[])), ("side", state(&["other"], &[]))]);
    assert_eq!(batch_state(&p, "main", &batch), "commit");
    // With the file gone altogether, recover neither creates it nor replays anything.
    std::fs::remove_file(path).unwrap();
    p.run(&["recover"]).expect(3);
    p.run(&["recover", "--dry-run"]).expect(3);
    assert!(!path.exists(), "recover created the SQLite file");
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
    begin_by_hand(&p, "main", &batch);
    p.db("side").pg()
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
            before: None,
        }],
    );
    p.db("side")
        .pg()
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

/// The end-of-test check can fail: each kind of broken promise, forged in the bookkeeping of
/// a batch that committed everywhere, is reported; put back, the check passes again.
#[test]
fn the_end_of_test_check_sees_each_broken_promise() {
    let mut p = Project::new();
    p.config("decider = \"main\"");
    p.add_pg("main").add_sqlite("side").add_pg("other");
    for bind in ["main", "side", "other"] {
        p.create_table(bind, "1_a", &format!("{bind}_a"));
    }
    p.run(&["upgrade", "--all-binds"]).expect(0);
    p.assert_consistent();
    // The guard on orchestrate_batches refuses a change to a decided row: forge around it.
    let unguarded = |sql: &str| {
        if sql.contains("orchestrate_batches") {
            format!(
                "ALTER TABLE orchestrate_batches DISABLE TRIGGER orchestrate_guard; {sql}; \
                 ALTER TABLE orchestrate_batches ENABLE ALWAYS TRIGGER orchestrate_guard"
            )
        } else {
            sql.to_string()
        }
    };
    let broken = |forge: &str, undo: &str, bind: &str, says: &str| {
        let (forge, undo) = (&unguarded(forge), &unguarded(undo));
        p.db(bind).execute(forge);
        let caught =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.assert_consistent()));
        p.db(bind).execute(undo);
        let message = caught.expect_err(&format!("not caught: {forge}"));
        let text = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(text.contains(says), "{forge}: {text}");
    };
    broken(
        "UPDATE orchestrate_batches SET state = 'abort'",
        "UPDATE orchestrate_batches SET state = 'commit'",
        "main",
        "holds 1 history row(s)",
    );
    broken(
        "UPDATE orchestrate_batches SET settled_at = NULL",
        "UPDATE orchestrate_batches SET settled_at = decided_at",
        "main",
        "left `commit` and unsettled",
    );
    broken(
        "UPDATE orchestrate_history SET direction = 'forged'",
        "UPDATE orchestrate_history SET direction = 'up'",
        "other",
        "other has no history of it",
    );
    broken(
        "UPDATE orchestrate_batches SET state = 'begun'",
        "UPDATE orchestrate_batches SET state = 'commit'",
        "main",
        "is `begun` on its decider main, yet side holds",
    );
    p.assert_consistent();
}

/// A bind that cannot be reached is reported once by recover, which says it could not look
/// (exit 3: what it holds is unknown), and changes nothing elsewhere.
#[test]
fn an_unreachable_bind_is_reported_once() {
    let mut p = Project::new();
    p.add_sqlite("local");
    p.config("[binds.gone]\nurl = \"postgres://postgres@127.0.0.1:1/nowhere\"");
    let run = p.run(&["recover"]);
    run.expect(3);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:") && l.contains("gone"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    p.assert_states(&[("local", state(&[], &[]))]);
}
