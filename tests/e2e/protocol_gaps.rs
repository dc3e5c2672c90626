//! Tests written for the mutants that cargo-mutants found surviving (see MUTANTS.md): each pins
//! down a property of the protocol that no other test checked.

use std::fs;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Bool;

use crate::support::{state, Db, Project};

/// The decision record a real batch writes names each PostgreSQL participant's prepared
/// transaction: killed after its decision, with that transaction then rolled back by hand,
/// the batch is reported by `recover` as a heuristic outcome (once), not settled as if the
/// participant had committed.
#[test]
fn a_participant_rolled_back_by_hand_after_a_real_decision_is_a_heuristic_outcome() {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg");
    p.create_table("a_pg", "1_a", "a");
    p.create_table("b_pg", "1_b", "b");
    p.run_stopped_at(&["upgrade", "--all-binds"], "after-decision");
    let prepared = p.db("b_pg").state().prepared;
    assert_eq!(prepared.len(), 1, "{prepared:?}");
    p.db("b_pg")
        .pg()
        .batch_execute(&format!("ROLLBACK PREPARED '{}'", prepared[0]))
        .unwrap();
    let heuristic_rows = || {
        p.db("b_pg")
            .count("SELECT count(*) AS n FROM orchestrate_history WHERE direction = 'heuristic'")
    };
    // A dry run records nothing; the real run records the heuristic outcome on the bind.
    let dry = p.run(&["recover", "--dry-run"]);
    dry.expect(3);
    assert_eq!(heuristic_rows(), 0, "{}", dry.stdout);
    assert!(dry.stdout.contains("Would be recorded"), "{}", dry.stdout);
    let run = p.run(&["recover"]);
    run.expect(3);
    assert!(
        run.stdout.contains("heuristic outcome") && run.stdout.contains(&prepared[0]),
        "{}",
        run.stdout
    );
    assert_eq!(heuristic_rows(), 1, "{}", run.stdout);
    // Reported and recorded once, the batch is settled: nothing is left for status to flag.
    let status = p.run(&["status"]);
    status.expect(0);
    let again = p.run(&["recover"]);
    again.expect(0);
    assert!(!again.stdout.contains("heuristic"), "{}", again.stdout);
    p.assert_states(&[("a_pg", state(&["a"], &["1"])), ("b_pg", state(&[], &[]))]);
}

/// A decider migration that breaks a deferred constraint (which PostgreSQL would only check at
/// COMMIT, after the decision was written) fails before the decision, where the tool checks
/// every deferred constraint: every bind is rolled back (exit 1), nothing is left in doubt.
#[test]
fn a_decider_migration_that_breaks_a_deferred_constraint_rolls_every_bind_back() {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg");
    p.migration(
        "a_pg",
        "1_a",
        "CREATE TABLE parent (id INT PRIMARY KEY);\n\
         CREATE TABLE child (pid INT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);\n\
         INSERT INTO child VALUES (1);",
        Some("DROP TABLE child; DROP TABLE parent;"),
    );
    p.create_table("b_pg", "1_b", "b");
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(
        run.stderr.contains("foreign key constraint"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("rolled back: every bind is as it was before"),
        "{}",
        run.stderr
    );
    p.assert_states(&[("a_pg", state(&[], &[])), ("b_pg", state(&[], &[]))]);
    p.run(&["status"]).expect(0);
}

/// Once a participant fails, the participants not yet started never start: with
/// `parallelism = 1` they run one at a time in name order, and a sequence (which no rollback
/// undoes) shows whether the later bind's migration ran.
#[test]
fn participants_not_started_when_one_fails_never_start() {
    #[derive(QueryableByName)]
    struct Called {
        #[diesel(sql_type = Bool)]
        is_called: bool,
    }
    let mut p = Project::new();
    p.config("decider = \"a_lite\"\nparallelism = 1");
    p.add_sqlite("a_lite").add_pg("b_pg").add_pg("c_pg");
    p.create_table("a_lite", "1_a", "a");
    p.migration(
        "b_pg",
        "1_b",
        "SELECT * FROM no_such_table;",
        Some("SELECT 1;"),
    );
    p.db("c_pg")
        .pg()
        .batch_execute("CREATE SEQUENCE probe")
        .unwrap();
    p.migration(
        "c_pg",
        "1_c",
        "CREATE TABLE c (id INT);\nSELECT nextval('probe');",
        Some("DROP TABLE c;"),
    );
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    assert!(run.stderr.contains("no_such_table"), "{}", run.stderr);
    let called: Called = diesel::sql_query("SELECT is_called FROM probe")
        .get_result(&mut p.db("c_pg").pg())
        .unwrap();
    assert!(
        !called.is_called,
        "c_pg's migration ran although b_pg had already failed"
    );
    p.assert_states(&[
        ("a_lite", state(&[], &[])),
        ("b_pg", state(&[], &[])),
        ("c_pg", state(&[], &[])),
    ]);
}

/// A SQLite decider whose COMMIT cannot get its write lock (another program keeps a read
/// transaction open on the file) gets an answer, "database is locked", not a lost connection:
/// the decision did not commit, so every bind is rolled back (exit 1) and nothing is left
/// prepared. The reader still holds the file when the run records `abort`, so the run says that
/// it could not, and `recover` records it.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn a_sqlite_decider_commit_that_cannot_get_its_lock_rolls_every_bind_back() {
    use std::io::BufRead;
    let mut p = Project::new();
    p.config("decider = \"a_lite\"");
    p.add_sqlite("a_lite").add_pg("b_pg");
    p.create_table("a_lite", "1_a", "a");
    p.create_table("b_pg", "1_b", "b");
    let mut child = crate::crash::spawn(
        &p,
        &["upgrade", "--all-binds"],
        "before-decision=sleep(1500)",
    );
    crate::crash::wait_until("b_pg is prepared", || {
        p.db("b_pg").state().prepared.len() == 1
    });
    let Db::Sqlite(path) = p.db("a_lite") else {
        panic!("a_lite is SQLite")
    };
    // A reader's transaction: it keeps a shared lock on the file until it ends.
    let mut reader = diesel::SqliteConnection::establish(&path.display().to_string()).unwrap();
    reader
        .batch_execute("BEGIN; SELECT count(*) FROM sqlite_master;")
        .unwrap();
    // Kept until the batch says it failed.
    let stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("failed") {
            reader.batch_execute("ROLLBACK").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{seen}\n{stderr}");
    assert!(seen.contains("locked"), "{seen}\n{stderr}");
    assert!(
        seen.contains("could not record `abort` on the decider `a_lite`"),
        "{seen}\n{stderr}"
    );
    assert!(
        stderr.contains("rolled back: every bind is as it was before"),
        "{seen}\n{stderr}"
    );
    assert!(p.db("b_pg").state().prepared.is_empty());
    let recover = p.run(&["recover"]);
    recover.expect(0);
    assert!(
        recover.stdout.contains("recorded abort"),
        "{}",
        recover.stdout
    );
    p.assert_states(&[("a_lite", state(&[], &[])), ("b_pg", state(&[], &[]))]);
    p.run(&["status"]).expect(0);
}

/// A batch over `a_pg` (deciding, `CREATE TABLE d`) and `b_pg` (`CREATE TABLE p`), spawned with
/// `failpoints`, returned once `b_pg` is prepared.
fn live_pg_batch(failpoints: &str) -> (Project, std::process::Child) {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg");
    p.create_table("a_pg", "1_d", "d");
    p.create_table("b_pg", "1_p", "p");
    let child = crate::crash::spawn(&p, &["upgrade", "--all-binds"], failpoints);
    crate::crash::wait_until("b_pg is prepared", || {
        p.db("b_pg").state().prepared.len() == 1
    });
    (p, child)
}

/// `recover --wait` run while a live coordinator holds its batch before the decision waits for
/// it, and when the coordinator then decides to commit, follows that decision: exit 0,
/// committed everywhere, not "changed while deciding".
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_that_waits_for_a_live_coordinator_follows_its_commit() {
    let (p, child) = live_pg_batch("before-decision=sleep(2000)");
    let run = p.run(&["recover", "--wait", "60"]);
    run.expect(0);
    assert!(run.stdout.contains("committed"), "{}", run.stdout);
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    p.assert_states(&[
        ("a_pg", state(&["d"], &["1"])),
        ("b_pg", state(&["p"], &["1"])),
    ]);
}

/// When `recover` cannot record `abort` on a decider for another reason than a held row (here
/// a trigger someone put on the decider's `orchestrate_batches`, which recover refuses to
/// write through), it says why, not that a coordinator still holds the batch; nothing is
/// changed, and once the trigger is gone recover finishes.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_that_cannot_write_the_decision_says_why() {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg");
    p.create_table("a_pg", "1_d", "d");
    p.create_table("b_pg", "1_p", "p");
    p.run_stopped_at(&["upgrade", "--all-binds"], "before-decision");
    assert_eq!(p.db("b_pg").state().prepared.len(), 1);
    p.db("a_pg").execute(
        "CREATE FUNCTION deny() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN RAISE EXCEPTION 'no'; END $f$;\n\
         CREATE TRIGGER deny BEFORE UPDATE ON orchestrate_batches FOR EACH ROW EXECUTE FUNCTION deny();",
    );
    let run = p.run(&["recover", "--wait", "1"]);
    run.expect(3);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(
        said.contains("has a trigger, rule or row security policy"),
        "{said}"
    );
    assert!(!said.contains("still holds"), "{said}");
    assert_eq!(
        p.db("b_pg").state().prepared.len(),
        1,
        "nothing was changed"
    );
    p.db("a_pg")
        .execute("DROP TRIGGER deny ON orchestrate_batches; DROP FUNCTION deny();");
    let run = p.run(&["recover"]);
    run.expect(0);
    p.assert_states(&[("a_pg", state(&[], &[])), ("b_pg", state(&[], &[]))]);
}

/// `recover` that cannot end a prepared transaction says so and leaves it (exit 3), in either
/// direction (a batch decided to commit, and one never decided); it never reports a
/// transaction ended that is still prepared. Here the bind's URL names a role that may connect
/// but not finish another role's prepared transaction (PostgreSQL allows only the role that
/// prepared it, or a superuser); with the right role, recover finishes it.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_that_cannot_end_a_prepared_transaction_says_so() {
    let cluster = crate::support::OwnCluster::start();
    let mut admin = diesel::PgConnection::establish(&cluster.url).unwrap();
    let role = format!("orch_other_{:08x}", rand::random::<u32>());
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .unwrap();
    for (failpoint, decided) in [
        ("after-decision=return", true),
        ("before-decision=return", false),
    ] {
        let mut p = Project::new();
        p.config("decider = \"a_pg\"");
        p.add_pg_at("a_pg", &cluster.url)
            .add_pg_at("b_pg", &cluster.url);
        p.create_table("a_pg", "1_d", "d");
        p.create_table("b_pg", "1_p", "p");
        let run = p.run_with(&["upgrade", "--all-binds"], &[("FAILPOINTS", failpoint)]);
        assert!(run.code != 0, "{failpoint}: {run:?}");
        let prepared = p.db("b_pg").state().prepared;
        assert_eq!(prepared.len(), 1, "{failpoint}");
        let Db::Pg(b) = p.db("b_pg") else {
            unreachable!()
        };
        let other = b.url.replacen("postgres@", &format!("{role}@"), 1);
        assert_ne!(other, b.url, "the test's URL names the postgres role");
        let run = p.run_with(&["recover"], &[("ORCHESTRATE__BINDS__B_PG__URL", &other)]);
        run.expect(3);
        let said = format!("{}{}", run.stdout, run.stderr);
        assert!(
            said.contains(&format!("could not end {}", prepared[0]))
                && said.contains("permission denied"),
            "{failpoint}: {said}"
        );
        assert_eq!(
            p.db("b_pg").state().prepared,
            prepared,
            "{failpoint}: still prepared"
        );
        // Still prepared is neither a heuristic outcome nor something that cannot be checked.
        assert!(
            !said.contains("heuristic") && !said.contains("cannot check"),
            "{failpoint}: {said}"
        );
        p.run(&["recover"]).expect(0);
        if decided {
            p.assert_states(&[
                ("a_pg", state(&["d"], &["1"])),
                ("b_pg", state(&["p"], &["1"])),
            ]);
        } else {
            p.assert_states(&[("a_pg", state(&[], &[])), ("b_pg", state(&[], &[]))]);
        }
    }
    admin.batch_execute(&format!("DROP ROLE {role}")).unwrap();
}

/// `recover --dry-run` changes nothing, whatever the decision: a batch decided to commit keeps
/// its prepared transaction (reported as "would commit"), one never decided keeps its `begun`
/// row and prepared transaction ("would roll back"); a real recover then finishes each.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_dry_run_changes_nothing_whatever_the_decision() {
    for (failpoint, decided) in [
        ("after-decision=return", true),
        ("before-decision=return", false),
    ] {
        let mut p = Project::new();
        p.config("decider = \"a_pg\"");
        p.add_pg("a_pg").add_pg("b_pg");
        p.create_table("a_pg", "1_d", "d");
        p.create_table("b_pg", "1_p", "p");
        let run = p.run_with(&["upgrade", "--all-binds"], &[("FAILPOINTS", failpoint)]);
        assert!(run.code != 0, "{failpoint}: {run:?}");
        let before = p.states();
        assert_eq!(p.db("b_pg").state().prepared.len(), 1, "{failpoint}");
        for _ in 0..2 {
            let dry = p.run(&["recover", "--dry-run"]);
            dry.expect(3);
            let expected = if decided {
                "would commit"
            } else {
                "would roll back"
            };
            assert!(dry.stdout.contains(expected), "{failpoint}: {}", dry.stdout);
            assert_eq!(
                p.states(),
                before,
                "{failpoint}: --dry-run changed something"
            );
        }
        p.run(&["recover"]).expect(0);
        if decided {
            p.assert_states(&[
                ("a_pg", state(&["d"], &["1"])),
                ("b_pg", state(&["p"], &["1"])),
            ]);
        } else {
            p.assert_states(&[("a_pg", state(&[], &[])), ("b_pg", state(&[], &[]))]);
        }
    }
}

/// A batch abandoned before anything was prepared leaves only its `begun` row; when recover
/// cannot record `abort` there (a trigger on the decider refuses every decision write), it says
/// why (exit 3) instead of passing over it, and records it once it can.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_that_cannot_record_an_abandoned_batch_says_why() {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg");
    p.create_table("a_pg", "1_d", "d");
    p.create_table("b_pg", "1_p", "p");
    p.run_stopped_at(&["upgrade", "--all-binds"], "before-prepare");
    assert!(p.db("b_pg").state().prepared.is_empty());
    p.db("a_pg")
        .pg()
        .batch_execute(
            "CREATE FUNCTION refuse_decisions() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'decision writes are refused here'; END $$; \
             CREATE TRIGGER refuse_decisions BEFORE UPDATE ON orchestrate_batches \
             FOR EACH ROW EXECUTE FUNCTION refuse_decisions();",
        )
        .unwrap();
    let run = p.run(&["recover"]);
    run.expect(3);
    let said = format!("{}{}", run.stdout, run.stderr);
    // Refused by recover itself: it writes no decision through a trigger.
    assert!(
        said.contains("has a trigger, rule or row security policy"),
        "{said}"
    );
    p.db("a_pg")
        .pg()
        .batch_execute("DROP TRIGGER refuse_decisions ON orchestrate_batches")
        .unwrap();
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("recorded abort"), "{}", run.stdout);
    p.assert_states(&[("a_pg", state(&[], &[])), ("b_pg", state(&[], &[]))]);
}

/// The coordinator's own decision write fails (a trigger on the decider refuses it): the batch
/// was not decided, so every bind is rolled back (exit 1), nothing is left prepared, the run
/// says that it could not record `abort` either, and `recover` records it once it can.
#[test]
fn a_decision_write_that_fails_rolls_every_bind_back() {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg");
    p.create_table("a_pg", "1_d", "d");
    p.create_table("b_pg", "1_p", "p");
    p.run(&["upgrade", "--all-binds"]).expect(0);
    p.create_table("a_pg", "2_d", "d2");
    p.create_table("b_pg", "2_p", "p2");
    p.db("a_pg")
        .pg()
        .batch_execute(
            "CREATE FUNCTION refuse_decisions() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'decision writes are refused here'; END $$; \
             CREATE TRIGGER refuse_decisions BEFORE UPDATE ON orchestrate_batches \
             FOR EACH ROW EXECUTE FUNCTION refuse_decisions();",
        )
        .unwrap();
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(1);
    // Refused before the UPDATE: no decision is written through a trigger.
    assert!(
        run.stderr
            .contains("has a trigger, rule or row security policy"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout
            .contains("could not record `abort` on the decider `a_pg`"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr
            .contains("rolled back: every bind is as it was before"),
        "{}",
        run.stderr
    );
    assert!(p.db("b_pg").state().prepared.is_empty());
    p.db("a_pg")
        .pg()
        .batch_execute("DROP TRIGGER refuse_decisions ON orchestrate_batches")
        .unwrap();
    let rec = p.run(&["recover"]);
    rec.expect(0);
    assert!(rec.stdout.contains("recorded abort"), "{}", rec.stdout);
    p.assert_states(&[
        ("a_pg", state(&["d"], &["1"])),
        ("b_pg", state(&["p"], &["1"])),
    ]);
}

#[derive(QueryableByName)]
struct LockHolder {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    holder: Option<i64>,
}

/// Who holds a MySQL bind's migration lock (its connection id), if anyone.
fn lock_holder(conn: &mut diesel::MysqlConnection) -> Option<i64> {
    diesel::sql_query(
        "SELECT CAST(IS_USED_LOCK(CONCAT('orchestrate:', SHA1(DATABASE()))) AS SIGNED) AS holder",
    )
    .get_result::<LockHolder>(conn)
    .unwrap()
    .holder
}

/// A MySQL bind with nothing to recover is not recover's business even while another session
/// holds its migration lock: recover says there is nothing to recover (exit 0), not that a
/// batch is running there.
#[test]
fn recover_passes_over_a_locked_mysql_bind_with_nothing_to_recover() {
    let mut p = Project::new();
    p.add_mysql("a_my").add_sqlite("b_lite");
    p.create_table("a_my", "1_a", "a");
    p.create_table("b_lite", "1_b", "b");
    p.run(&["upgrade", "--all-binds", "--allow-non-atomic"])
        .expect(0);
    let mut holder = p.db("a_my").my();
    diesel::sql_query("DO GET_LOCK(CONCAT('orchestrate:', SHA1(DATABASE())), 0)")
        .execute(&mut holder)
        .unwrap();
    assert!(lock_holder(&mut p.db("a_my").my()).is_some());
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(run.stdout.contains("Nothing to recover"), "{}", run.stdout);
    drop(holder);
}

/// `recover` undoing a MySQL batch that was never decided holds the bind's migration lock while
/// it runs the undo SQL, so no batch can start there meanwhile.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_holds_a_mysql_bind_s_lock_while_undoing_it() {
    let mut p = Project::new();
    p.add_mysql("a_my").add_mysql("b_my");
    for bind in ["a_my", "b_my"] {
        p.migration(
            bind,
            "1_t",
            &format!("CREATE TABLE t_{bind} (id INT)"),
            Some(&format!("SELECT SLEEP(1.5);\nDROP TABLE t_{bind}")),
        );
    }
    p.run_stopped_at(
        &["upgrade", "--all-binds", "--allow-non-atomic"],
        "before-decision",
    );
    let mut child = p
        .command(&["recover"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut watch: Vec<diesel::MysqlConnection> = vec![p.db("a_my").my(), p.db("b_my").my()];
    let mut seen_held = false;
    while child.try_wait().unwrap().is_none() {
        seen_held |= watch.iter_mut().any(|c| lock_holder(c).is_some());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        seen_held,
        "recover undid the batch without holding the lock"
    );
    p.assert_states(&[("a_my", state(&[], &[])), ("b_my", state(&[], &[]))]);
}

/// An undecided MySQL downgrade is undone by `recover` with each migration's up.sql from its
/// folder (re-applying what the downgrade reverted): every bind is back where it was.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_undoes_an_undecided_mysql_downgrade_with_the_folders_up_sql() {
    let p = two_mysql_binds();
    p.run(&["upgrade", "--all-binds", "--allow-non-atomic"])
        .expect(0);
    p.run_stopped_at(
        &["downgrade", "--all-binds", "--allow-non-atomic"],
        "before-decision",
    );
    assert_eq!(p.db("a_my").state(), state(&[], &[]), "the downgrade ran");
    let rec = p.run(&["recover"]);
    rec.expect(0);
    p.assert_states(&[
        ("a_my", state(&["a"], &["1"])),
        ("b_my", state(&["b"], &["1"])),
    ]);
}

/// Two MariaDB binds, `a_my` and `b_my`, each with one migration that creates a table.
fn two_mysql_binds() -> Project {
    let mut p = Project::new();
    p.add_mysql("a_my").add_mysql("b_my");
    p.create_table("a_my", "1_a", "a");
    p.create_table("b_my", "1_b", "b");
    p
}

/// Rows of `orchestrate_in_progress` (MySQL marks) on a bind.
fn marks(p: &Project, bind: &str) -> i64 {
    p.db(bind)
        .count("SELECT count(*) AS n FROM orchestrate_in_progress")
}

/// `recover --dry-run` writes nothing on MySQL binds either: the batch marks of a batch decided
/// to commit stay (reported as "would settle") until a real recover settles them.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_dry_run_leaves_mysql_marks_alone() {
    let p = two_mysql_binds();
    p.run_stopped_at(
        &["upgrade", "--all-binds", "--allow-non-atomic"],
        "after-decision",
    );
    let before = (marks(&p, "a_my"), marks(&p, "b_my"));
    assert!(before.0 > 0 && before.1 > 0, "{before:?}");
    let dry = p.run(&["recover", "--dry-run"]);
    dry.expect(3);
    assert!(dry.stdout.contains("would settle"), "{}", dry.stdout);
    assert_eq!((marks(&p, "a_my"), marks(&p, "b_my")), before);
    p.run(&["recover"]).expect(0);
    assert_eq!((marks(&p, "a_my"), marks(&p, "b_my")), (0, 0));
    p.assert_states(&[
        ("a_my", state(&["a"], &["1"])),
        ("b_my", state(&["b"], &["1"])),
    ]);
}

/// A MySQL migration whose every statement committed but whose mark was not yet turned into a
/// record (the process died in between) is recorded by `recover`, not reported as interrupted;
/// the batch, never decided, is then undone everywhere.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_records_a_mysql_migration_that_ran_to_its_end() {
    let mut p = Project::new();
    p.add_mysql("a_my").add_mysql("b_my");
    p.migration(
        "a_my",
        "1_a",
        "CREATE TABLE a1 (id INT);\nCREATE TABLE a2 (id INT);",
        Some("DROP TABLE a2;\nDROP TABLE a1;"),
    );
    p.create_table("b_my", "1_b", "b");
    p.run_stopped_at(
        &["upgrade", "--all-binds", "--allow-non-atomic"],
        "mysql-mid-migration",
    );
    // What the dead process would have done next: the second statement, and its progress.
    p.db("a_my")
        .my()
        .batch_execute(
            "CREATE TABLE a2 (id INT); \
             UPDATE orchestrate_in_progress SET statements_done = statements_total \
             WHERE kind = 'migration'",
        )
        .unwrap();
    let rec = p.run(&["recover"]);
    rec.expect(0);
    assert!(!rec.stdout.contains("resolve"), "{}", rec.stdout);
    p.assert_states(&[("a_my", state(&[], &[])), ("b_my", state(&[], &[]))]);
}

/// An undecided MySQL downgrade whose migration folder is gone by the time `recover` runs:
/// recover cannot re-apply that migration without its up.sql, so it undoes what it can, stops
/// there and says a person must redo it and then `resolve` it; once they have, recover
/// finishes and every bind is where it was.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_stops_at_a_mysql_step_it_cannot_undo_until_it_is_resolved() {
    let p = two_mysql_binds();
    p.run(&["upgrade", "--all-binds", "--allow-non-atomic"])
        .expect(0);
    let run = p.run_stopped_at(
        &["downgrade", "--all-binds", "--allow-non-atomic"],
        "before-decision",
    );
    assert_eq!(p.db("a_my").state(), state(&[], &[]), "{run:?}");
    // The folder disappears before recover runs (a checkout of another branch).
    fs::remove_dir_all(p.path().join("migrations/a_my/1_a")).unwrap();
    let rec = p.run(&["recover"]);
    rec.expect(3);
    assert!(
        rec.stdout.contains("no SQL to undo") || rec.stdout.contains("must be undone"),
        "{}",
        rec.stdout
    );
    assert!(rec.stdout.contains("resolve"), "{}", rec.stdout);
    assert_eq!(
        p.db("b_my").state(),
        state(&["b"], &["1"]),
        "b_my was undone"
    );
    // The person redoes it by hand and says so.
    p.db("a_my")
        .my()
        .batch_execute("CREATE TABLE a (id INT PRIMARY KEY)")
        .unwrap();
    p.run(&["resolve", "--bind", "a_my", "1", "--applied"])
        .expect(0);
    p.run(&["recover"]).expect(0);
    p.assert_states(&[
        ("a_my", state(&["a"], &["1"])),
        ("b_my", state(&["b"], &["1"])),
    ]);
}

/// Each bind's plan line says what the batch promises it, and which bind decides: a
/// PostgreSQL decider and participant, SQLite participants; then a SQLite decider.
#[test]
fn plans_name_the_decider_and_each_binds_guarantee() {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg").add_sqlite("c_lite");
    for bind in ["a_pg", "b_pg", "c_lite"] {
        p.create_table(bind, &format!("1_{bind}"), &format!("t_{bind}"));
    }
    let sql = p.run(&["upgrade", "--all-binds", "--sql"]);
    sql.expect(0);
    let line = |bind: &str| -> String {
        sql.stdout
            .lines()
            .find(|l| l.contains(&format!("{bind} (")) && l.contains("atomic"))
            .unwrap_or_else(|| panic!("no plan line for {bind}: {}", sql.stdout))
            .to_string()
    };
    assert!(line("a_pg").contains("atomic: decider"), "{}", sql.stdout);
    assert!(
        line("b_pg").contains("atomic: two-phase commit"),
        "{}",
        sql.stdout
    );
    assert!(
        line("c_lite").contains("atomic: held open until the decision"),
        "{}",
        sql.stdout
    );

    let mut q = Project::new();
    q.add_pg("a_pg").add_sqlite("b_lite").add_sqlite("c_lite");
    for bind in ["a_pg", "b_lite", "c_lite"] {
        q.create_table(bind, &format!("1_{bind}"), &format!("t_{bind}"));
    }
    let sql = q.run(&["upgrade", "--all-binds", "--sql"]);
    sql.expect(0);
    let line = |bind: &str| -> String {
        sql.stdout
            .lines()
            .find(|l| l.contains(&format!("{bind} (")) && l.contains("atomic"))
            .unwrap_or_else(|| panic!("no plan line for {bind}: {}", sql.stdout))
            .to_string()
    };
    assert!(
        line("a_pg").contains("atomic: two-phase commit"),
        "{}",
        sql.stdout
    );
    assert!(
        line("b_lite").contains("atomic: last resource (decider)"),
        "{}",
        sql.stdout
    );
    assert!(
        line("c_lite").contains("atomic: held open until the decision"),
        "{}",
        sql.stdout
    );
}

/// In a batch of MySQL binds only, the decider runs first and alone: when its migration
/// fails, the other binds never start (nothing to undo, no mark left anywhere).
#[test]
fn a_mysql_only_batch_whose_decider_fails_starts_no_other_bind() {
    let mut p = Project::new();
    p.add_mysql("a_my").add_mysql("b_my");
    p.migration(
        "a_my",
        "1_a",
        "SELECT * FROM no_such_table;",
        Some("SELECT 1;"),
    );
    p.create_table("b_my", "1_b", "b");
    let run = p.run(&["upgrade", "--all-binds", "--allow-non-atomic"]);
    run.expect(1);
    assert!(run.stderr.contains("no_such_table"), "{}", run.stderr);
    assert!(
        p.db("b_my").marks().is_empty(),
        "{:?}",
        p.db("b_my").marks()
    );
    assert!(
        p.db("a_my").marks().is_empty(),
        "{:?}",
        p.db("a_my").marks()
    );
    p.assert_states(&[("a_my", state(&[], &[])), ("b_my", state(&[], &[]))]);
}

/// A MySQL-only batch whose decider connection is lost while it writes the decision: whether
/// the decision committed is unknown, so nothing is undone (the other bind keeps its work and
/// marks) and the run exits 3; `recover` then finds no decision and undoes the batch.
#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn a_mysql_only_batch_that_loses_its_decider_while_deciding_is_left_to_recover() {
    let p = two_mysql_binds();
    let crate::support::Db::My(a) = p.db("a_my") else {
        panic!("a_my is MariaDB")
    };
    let a_name = a.name.clone();
    let child = crate::crash::spawn(
        &p,
        &["upgrade", "--all-binds", "--allow-non-atomic"],
        "before-decision=sleep(3000)",
    );
    crate::crash::wait_until("both binds ran their migration", || {
        p.db("b_my").state().versions == vec!["1".to_string()]
            && p.db("a_my").state().versions == vec!["1".to_string()]
    });
    // The decider's session goes (a network cut, a DBA's KILL).
    let mut admin = p.db("b_my").my();
    let ids = p.db("b_my").query_text(&format!(
        "SELECT CAST(coalesce(group_concat(id), '') AS CHAR) AS name FROM information_schema.processlist WHERE db = '{a_name}'"
    ));
    assert!(!ids.is_empty(), "no session on a_my");
    for id in ids.split(',') {
        let _ = admin.batch_execute(&format!("KILL {id}"));
    }
    let (code, text) = finished(child);
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("was lost while writing the decision"),
        "{text}"
    );
    assert_eq!(
        p.db("b_my").state(),
        state(&["b"], &["1"]),
        "b_my was undone: {text}"
    );
    assert!(!p.db("b_my").marks().is_empty(), "{text}");
    p.run(&["recover"]).expect(0);
    p.assert_states(&[("a_my", state(&[], &[])), ("b_my", state(&[], &[]))]);
}

/// A batch of `a_pg` (decider) and `b_pg` whose decider's migration sleeps 3 s and then fails:
/// it runs in the background and is returned once `b_pg` has prepared. `config`: more
/// configuration lines.
fn batch_failing_after_b_pg_prepared(config: &str) -> (Project, std::process::Child) {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.config(config);
    p.add_pg("a_pg").add_pg("b_pg");
    p.migration(
        "a_pg",
        "1_a",
        "CREATE TABLE a (id int);\nSELECT pg_sleep(3);\nSELECT 1/0;",
        Some("DROP TABLE a;"),
    );
    p.create_table("b_pg", "1_b", "b");
    let child = crate::crash::spawn(&p, &["upgrade", "--all-binds"], "");
    crate::crash::wait_until("b_pg is prepared", || {
        !p.db("b_pg").state().prepared.is_empty()
    });
    (p, child)
}

/// A background run's exit code, and its stdout and stderr together.
fn finished(child: std::process::Child) -> (Option<i32>, String) {
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Waits for `child` while b_pg's database accepts no new connection.
fn finished_without_new_connections(
    p: &Project,
    child: std::process::Child,
) -> (Option<i32>, String) {
    use diesel::Connection;
    let b_name = p.db("b_pg").pg_name();
    let mut admin = diesel::PgConnection::establish(&crate::support::pg_admin_url()).unwrap();
    admin
        .batch_execute(&format!("ALTER DATABASE {b_name} ALLOW_CONNECTIONS false"))
        .unwrap();
    let finished = finished(child);
    admin
        .batch_execute(&format!("ALTER DATABASE {b_name} ALLOW_CONNECTIONS true"))
        .unwrap();
    finished
}

/// A failure before the decision (the decider's migration fails) while a prepared participant
/// cannot be reached to roll it back: the run says so and exits 3, never "every bind is as it
/// was"; `recover` rolls it back once it can.
#[test]
fn a_failed_batch_with_a_participant_left_prepared_says_so() {
    // b_pg's session is not kept: it must connect again to roll back, and cannot.
    let (p, child) = batch_failing_after_b_pg_prepared("keep_connections = 0");
    let (code, text) = finished_without_new_connections(&p, child);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("could not be rolled back for sure"), "{text}");
    assert!(!text.contains("every bind is as it was"), "{text}");
    assert_eq!(p.db("b_pg").state().prepared.len(), 1, "{text}");
    p.run(&["recover"]).expect(0);
    p.assert_states(&[("a_pg", state(&[], &[])), ("b_pg", state(&[], &[]))]);
}

/// The same failure with b_pg's session kept (the default): it is rolled back on that
/// session, although no new connection to its database is allowed.
#[test]
fn a_failed_batch_rolls_back_a_kept_participant_without_connecting_again() {
    let (p, child) = batch_failing_after_b_pg_prepared("");
    let (code, text) = finished_without_new_connections(&p, child);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("every bind is as it was"), "{text}");
    assert!(p.db("b_pg").state().prepared.is_empty(), "{text}");
    p.assert_states(&[("a_pg", state(&[], &[])), ("b_pg", state(&[], &[]))]);
    p.run(&["recover"]).expect(0);
}

/// A failure before the decision (a deferred constraint on the decider) after a non-atomic
/// MySQL bind ran, whose undo then fails: the run says that bind could not be put back and
/// exits 3, never "every bind is as it was".
#[test]
fn a_failed_batch_whose_mysql_undo_fails_says_so() {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_mysql("c_my");
    p.migration(
        "a_pg",
        "1_a",
        "CREATE TABLE parent (id INT PRIMARY KEY);\n\
         CREATE TABLE child (pid INT REFERENCES parent (id) DEFERRABLE INITIALLY DEFERRED);\n\
         INSERT INTO child VALUES (1);",
        Some("DROP TABLE child; DROP TABLE parent;"),
    );
    p.migration(
        "c_my",
        "1_c",
        "CREATE TABLE c (id INT);",
        Some("DROP TABLE no_such_table;"),
    );
    let run = p.run(&["upgrade", "--all-binds", "--allow-non-atomic"]);
    run.expect(3);
    assert!(
        run.stderr.contains("could not be rolled back for sure")
            || run
                .stderr
                .contains("not every non-atomic bind could be put back"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("every bind is as it was"), "{run:?}");
    assert_eq!(p.db("a_pg").state(), state(&[], &[]));
    assert!(!p.db("c_my").marks().is_empty(), "{run:?}");
    // A person takes the migration out by hand and says so; recover settles the rest.
    p.db("c_my").execute("DROP TABLE c");
    p.run(&["resolve", "--bind", "c_my", "1", "--reverted"])
        .expect(0);
    p.run(&["recover"]).expect(0);
    p.assert_states(&[("a_pg", state(&[], &[])), ("c_my", state(&[], &[]))]);
}

/// A failure before the decision after someone committed a participant's prepared transaction
/// by hand (a heuristic outcome): that bind is migrated and cannot be rolled back, so the run
/// says so and exits 3, never "every bind is as it was".
#[test]
fn a_failed_batch_with_a_participant_committed_by_hand_says_so() {
    // b_pg keeps its session: ROLLBACK PREPARED fails there, and a fresh one looks.
    let (p, child) = batch_failing_after_b_pg_prepared("");
    let gid = p.db("b_pg").state().prepared[0].clone();
    p.db("b_pg").execute(&format!("COMMIT PREPARED '{gid}'"));
    let (code, text) = finished(child);
    assert_eq!(code, Some(3), "{text}");
    assert!(text.contains("could not be rolled back for sure"), "{text}");
    assert!(text.contains("heuristic outcome"), "{text}");
    assert!(!text.contains("every bind is as it was"), "{text}");
    // b_pg is migrated by the hand that committed it; a_pg is not: a person must reconcile.
    assert_eq!(p.db("b_pg").state(), state(&["b"], &["1"]));
    assert_eq!(p.db("a_pg").state(), state(&[], &[]));
    p.db("b_pg").execute(
        "DROP TABLE b; DELETE FROM __diesel_schema_migrations; DELETE FROM orchestrate_history;",
    );
    p.run(&["recover"]).expect(0);
    p.assert_states(&[("a_pg", state(&[], &[])), ("b_pg", state(&[], &[]))]);
}

/// Review 18: a downgrade planned while another run's upgrade held the bind's lock (its new
/// migration not yet visible) took the lock after that upgrade committed and reverted the
/// migration below the new one, leaving a hole. Under the lock the applied versions must be
/// the ones the plan was made from; the downgrade now stops, nothing changed.
#[test]
fn a_plan_made_before_another_run_committed_is_not_run() {
    let mut p = Project::new();
    p.add_pg("app");
    p.create_table("app", "1_a", "a");
    p.create_table("app", "2_b", "b");
    p.migration(
        "app",
        "3_c",
        "CREATE TABLE c (id INT); SELECT pg_sleep(3);",
        Some("DROP TABLE c;"),
    );
    p.run(&["upgrade", "--bind", "app", "2"]).expect(0);
    let upgrade = crate::crash::spawn(&p, &["upgrade", "--all-binds"], "");
    // The upgrade holds the bind's lock while its migration sleeps.
    wait_for_migration_lock(&p, "app", "the upgrade holds the lock");
    let down = p.run(&["downgrade", "--bind", "app"]);
    assert_ne!(down.code, 0, "{down:?}");
    assert!(
        down.stdout.contains("changed since the plan was made")
            || down.stderr.contains("changed since the plan was made"),
        "{down:?}"
    );
    let (code, text) = finished(upgrade);
    assert_eq!(code, Some(0), "{text}");
    p.assert_states(&[("app", state(&["a", "b", "c"], &["1", "2", "3"]))]);
    // Run again, the downgrade plans from what is there: one step is 3_c.
    p.run(&["downgrade", "--bind", "app"]).expect(0);
    p.assert_states(&[("app", state(&["a", "b"], &["1", "2"]))]);
}

/// A participant's history is where its search_path pointed when the batch ran. When an
/// operator then moves the database's search_path (`ALTER DATABASE ... SET search_path`) to a
/// schema without the tool's tables, `recover` must still find the committed batch there: not
/// conclude from an empty schema that someone rolled it back (a false heuristic outcome,
/// recorded for good).
#[test]
fn recover_finds_a_participants_history_after_its_search_path_moved() {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg");
    p.create_table("a_pg", "1_a", "a");
    p.create_table("b_pg", "1_b", "b");
    p.run_stopped_at(&["upgrade", "--all-binds"], "after-decision");
    assert_eq!(p.db("b_pg").state().prepared.len(), 1);
    let Db::Pg(db) = p.db("b_pg") else {
        unreachable!()
    };
    p.db("b_pg")
        .pg()
        .batch_execute(&format!(
            "CREATE SCHEMA app; ALTER DATABASE {} SET search_path = app",
            db.name
        ))
        .unwrap();
    let run = p.run(&["recover"]);
    run.expect(0);
    assert!(!run.stdout.contains("heuristic"), "{}", run.stdout);
    let history_tables = |schema: &str| {
        p.db("b_pg").count(&format!(
            "SELECT count(*) AS n FROM pg_catalog.pg_tables t WHERE t.schemaname = '{schema}' AND t.tablename = 'orchestrate_history'"
        ))
    };
    // Nothing was written into the new schema.
    assert_eq!(history_tables("app"), 0, "{}", run.stdout);
    assert_eq!(
        p.db("b_pg").count(
            "SELECT count(*) AS n FROM public.orchestrate_history WHERE direction = 'heuristic'"
        ),
        0
    );
    assert_eq!(
        p.db("b_pg").count(
            "SELECT count(*) AS n FROM pg_catalog.pg_prepared_xacts WHERE database = pg_catalog.current_database()"
        ),
        0
    );
    assert_eq!(
        p.db("b_pg")
            .count("SELECT count(*) AS n FROM public.__diesel_schema_migrations"),
        1
    );
    let again = p.run(&["recover"]);
    again.expect(0);
    p.db("b_pg")
        .pg()
        .batch_execute(&format!("ALTER DATABASE {} RESET search_path", db.name))
        .unwrap();
    p.assert_states(&[
        ("a_pg", state(&["a"], &["1"])),
        ("b_pg", state(&["b"], &["1"])),
    ]);
}

/// Review 25: a batch whose non-atomic MariaDB bind had committed its migration, and had it
/// undone with its down.sql when another bind found its database moved, did run something:
/// it is not planned again as if nothing had happened (the application's row written in
/// between went with the undone table). The run stops, says what was undone, exit 1.
#[test]
fn a_moved_batch_that_undid_a_non_atomic_bind_is_not_planned_again() {
    let mut p = Project::new();
    p.config("decider = \"a_my\"");
    p.add_mysql("a_my").add_mysql("b_my");
    p.migration(
        "a_my",
        "1_a",
        "CREATE TABLE ta (id INT);\nINSERT INTO ta VALUES (1);\nDO SLEEP(3);",
        Some("DROP TABLE ta;"),
    );
    p.create_table("b_my", "1_b", "tb");
    let first = crate::crash::spawn(&p, &["upgrade", "--all-binds", "--allow-non-atomic"], "");
    crate::crash::wait_until("a_my's migration ran", || {
        p.db("a_my").count(
            "SELECT count(*) AS n FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = 'ta'",
        ) > 0
    });
    p.run(&["upgrade", "--bind", "b_my", "--allow-non-atomic"])
        .expect(0);
    let (code, text) = finished(first);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("undone"), "{text}");
    assert!(!text.contains("planning again"), "{text}");
    p.assert_states(&[("a_my", state(&[], &[])), ("b_my", state(&["tb"], &["1"]))]);
    p.run(&["upgrade", "--all-binds", "--allow-non-atomic"])
        .expect(0);
    p.assert_states(&[
        ("a_my", state(&["ta"], &["1"])),
        ("b_my", state(&["tb"], &["1"])),
    ]);
}

/// Review 25: an upgrade to a revision that another run's upgrade went past while it waited
/// is not planned again into a refusal that advises a downgrade: it stops as a moved batch
/// (exit 1, nothing applied, run it again).
#[test]
fn an_upgrade_to_a_revision_overtaken_by_another_run_is_not_planned_again() {
    let mut p = Project::new();
    p.add_pg("app");
    p.migration(
        "app",
        "1_a",
        "CREATE TABLE a (id INT); SELECT pg_sleep(2);",
        Some("DROP TABLE a;"),
    );
    p.create_table("app", "2_b", "b");
    let head = crate::crash::spawn(&p, &["upgrade", "--all-binds"], "");
    wait_for_migration_lock(&p, "app", "the upgrade holds the lock");
    let to_one = p.run(&["upgrade", "--all-binds", "1"]);
    assert_eq!(to_one.code, 1, "{to_one:?}");
    assert!(
        to_one
            .stderr
            .contains("changed while the batch was being planned"),
        "{to_one:?}"
    );
    assert!(!to_one.stderr.contains("downgrade"), "{to_one:?}");
    let (code, text) = finished(head);
    assert_eq!(code, Some(0), "{text}");
    p.assert_states(&[("app", state(&["a", "b"], &["1", "2"]))]);
}

/// Reviews 25 and 26: an `orchestrate_history` in another schema of the bind's database that
/// the bind's role cannot read may hold the batch's history (written under other credentials
/// before they rotated) or be another project's: recover cannot tell, so it decides nothing
/// and records nothing (exit 3), says which schema and what to grant; once the role may read
/// it, the heuristic outcome is found and recorded.
#[test]
fn an_unreadable_history_elsewhere_keeps_recover_in_doubt_and_says_what_to_grant() {
    let suffix = format!("{:08x}", rand::random::<u32>());
    let (app, other) = (format!("r25app_{suffix}"), format!("r25other_{suffix}"));
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg");
    p.create_table("a_pg", "1_a", "a");
    p.create_table("b_pg", "1_b", "b");
    let mut admin =
        <diesel::PgConnection as diesel::Connection>::establish(&crate::support::pg_admin_url())
            .unwrap();
    admin
        .batch_execute(&format!(
            "CREATE ROLE {app} LOGIN PASSWORD 'pw'; CREATE ROLE {other} NOLOGIN"
        ))
        .unwrap();
    let mut env = Vec::new();
    for bind in ["a_pg", "b_pg"] {
        let Db::Pg(db) = p.db(bind) else {
            unreachable!()
        };
        let mut c = p.db(bind).pg();
        c.batch_execute(&format!(
            "GRANT ALL ON DATABASE {} TO {app}; GRANT ALL ON SCHEMA public TO {app}",
            db.name
        ))
        .unwrap();
        env.push((
            format!("ORCHESTRATE__BINDS__{}__URL", bind.to_uppercase()),
            db.url.replacen("postgres@", &format!("{app}:pw@"), 1),
        ));
    }
    p.db("b_pg")
        .pg()
        .batch_execute(&format!(
            "CREATE SCHEMA otherproj AUTHORIZATION {other}; \
             CREATE TABLE otherproj.orchestrate_history (batch_id TEXT, direction TEXT); \
             ALTER TABLE otherproj.orchestrate_history OWNER TO {other}; \
             CREATE TABLE otherproj.orchestrate_batches (batch_id TEXT, state TEXT, record TEXT, settled_at TEXT); \
             ALTER TABLE otherproj.orchestrate_batches OWNER TO {other}"
        ))
        .unwrap();
    let env_of = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut all = env.clone();
        all.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        all
    };
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let all = env_of(extra);
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        p.run_with(args, &pairs)
    };
    let crashed = run(
        &["upgrade", "--all-binds"],
        &[("FAILPOINTS", "after-decision=return")],
    );
    assert_ne!(crashed.code, 0, "{crashed:?}");
    let prepared = p.db("b_pg").state().prepared;
    assert_eq!(prepared.len(), 1, "{crashed:?}");
    // Rolled back by hand against the decision: a heuristic outcome, recorded once.
    p.db("b_pg")
        .pg()
        .batch_execute(&format!("ROLLBACK PREPARED '{}'", prepared[0]))
        .unwrap();
    let heuristic_rows = || {
        p.db("b_pg").count(
            "SELECT count(*) AS n FROM public.orchestrate_history WHERE direction = 'heuristic'",
        )
    };
    for _ in 0..2 {
        let blocked = run(&["recover"], &[]);
        blocked.expect(3);
        let text = format!("{}{}", blocked.stdout, blocked.stderr);
        assert!(
            text.contains("nothing is decided on a guess")
                && text.contains("GRANT USAGE ON SCHEMA \"otherproj\" TO <role>"),
            "{blocked:?}"
        );
        assert!(!text.contains("heuristic outcome"), "{blocked:?}");
        assert_eq!(heuristic_rows(), 0);
    }
    p.db("b_pg")
        .pg()
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA otherproj TO {app}; GRANT SELECT ON otherproj.orchestrate_history, otherproj.orchestrate_batches TO {app}"
        ))
        .unwrap();
    let first = run(&["recover"], &[]);
    first.expect(3);
    assert!(first.stdout.contains("heuristic outcome"), "{first:?}");
    assert_eq!(heuristic_rows(), 1);
    run(&["recover"], &[]).expect(0);
    run(&["status"], &[]).expect(0);
    p.assert_states(&[("a_pg", state(&["a"], &["1"])), ("b_pg", state(&[], &[]))]);
    drop(p);
    let _ = admin.batch_execute(&format!(
        "DROP ROLE IF EXISTS {other}; DROP ROLE IF EXISTS {app}"
    ));
}

/// Review 26: an upgrade that found its databases moved because another run *reverted* a
/// migration (an operator's downgrade) is not planned again into re-applying it: the new plan
/// holds a migration the first did not, so the run stops (exit 1), nothing applied.
#[test]
fn an_upgrade_does_not_replan_over_a_concurrent_downgrade() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_pg("b_pg");
    p.migration(
        "a_pg",
        "1_a",
        "CREATE TABLE a (id INT);",
        Some("DROP TABLE a; SELECT pg_sleep(2);"),
    );
    p.create_table("a_pg", "2_a2", "a2");
    p.create_table("b_pg", "1_b", "b");
    p.run(&["upgrade", "--bind", "a_pg", "1"]).expect(0);
    let down = crate::crash::spawn(&p, &["downgrade", "--bind", "a_pg"], "");
    wait_for_migration_lock(&p, "a_pg", "the downgrade holds the lock");
    let up = p.run(&["upgrade", "--all-binds"]);
    let (code, text) = finished(down);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(up.code, 1, "{up:?}");
    assert!(up.stderr.contains("not only forward"), "{up:?}");
    assert!(up.stderr.contains("a_pg: 1"), "{up:?}");
    p.assert_states(&[("a_pg", state(&[], &[])), ("b_pg", state(&[], &[]))]);
}

/// Review 27: another schema's bookkeeping table that is only locked (another project
/// migrating), not forbidden, is a busy database (exit 1, try again), not a missing grant.
#[test]
fn a_locked_table_in_another_schema_is_busy_not_a_missing_grant() {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("c_pg");
    p.create_table("a_pg", "1_a", "a");
    p.create_table("a_pg", "2_b", "b");
    p.create_table("c_pg", "1_c", "c");
    // A batch over both: a_pg, the decider, keeps orchestrate_batches.
    p.run(&["upgrade", "--all-binds", "1"]).expect(0);
    assert_eq!(
        p.db("a_pg")
            .count("SELECT count(*) AS n FROM public.orchestrate_batches"),
        1
    );
    let mut holder = p.db("a_pg").pg();
    holder
        .batch_execute(
            "CREATE SCHEMA other; \
             CREATE TABLE other.orchestrate_batches (batch_id TEXT, state TEXT, record TEXT, settled_at TEXT)",
        )
        .unwrap();
    holder
        .batch_execute("BEGIN; LOCK TABLE other.orchestrate_batches IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let run = p.run_with(
        &["upgrade", "--all-binds"],
        &[("ORCHESTRATE__LOCK_TIMEOUT_MS", "1000")],
    );
    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!run.stderr.contains("GRANT"), "{run:?}");
    assert!(run.stderr.contains("lock"), "{run:?}");
    p.assert_states(&[
        ("a_pg", state(&["a"], &["1"])),
        ("c_pg", state(&["c"], &["1"])),
    ]);
}

/// A run that plans while another run's batch is between its decision and its last commit
/// (its prepared transactions still there) looks again a moment later instead of calling the
/// batch in doubt: the other run finishes, and this one finds nothing to do.
#[test]
fn an_upgrade_during_another_runs_commit_phase_waits_for_it() {
    let mut p = Project::new();
    p.config("decider = \"c_lite\"");
    p.add_pg("a_pg").add_sqlite("c_lite");
    p.create_table("a_pg", "1_t", "t");
    p.create_table("c_lite", "1_u", "u");
    let first = crate::crash::spawn(&p, &["upgrade", "--all-binds"], "after-decision=sleep(700)");
    crate::crash::wait_until("the first run's batch is prepared", || {
        !p.db("a_pg").state().prepared.is_empty()
    });
    let second = p.run(&["upgrade", "--all-binds"]);
    let out = first.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(second.code, 0, "{second:?}");
    assert!(second.stdout.contains("Nothing to do"), "{second:?}");
    p.assert_states(&[
        ("a_pg", state(&["t"], &["1"])),
        ("c_lite", state(&["u"], &["1"])),
    ]);
}

/// Waits until a run holds bind `bind`'s migration lock (a PostgreSQL advisory lock).
fn wait_for_migration_lock(p: &Project, bind: &str, what: &str) {
    crate::crash::wait_until(what, || {
        p.db(bind).count(
            "SELECT count(*) AS n FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND d.datname = current_database() AND l.granted",
        ) > 0
    });
}
