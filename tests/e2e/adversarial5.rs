//! Fifth adversarial review: races between a live coordinator and `recover`.

use diesel::connection::SimpleConnection;
use diesel::{Connection, RunQueryDsl};

use crate::crash::{spawn, wait_until};
use crate::support::{state, Db, Project};

#[derive(diesel::QueryableByName)]
struct S {
    #[diesel(sql_type = diesel::sql_types::Text)]
    s: String,
}

/// The states of the `orchestrate_batches` rows on a PostgreSQL bind ("" if none or no table).
fn pg_batch_states(db: &Db) -> String {
    let mut c = db.pg();
    let exists = diesel::sql_query(
        "SELECT coalesce(to_regclass('public.orchestrate_batches')::text, '') AS s",
    )
    .get_result::<S>(&mut c)
    .unwrap()
    .s;
    if exists.is_empty() {
        return String::new();
    }
    diesel::sql_query(
        "SELECT coalesce(string_agg(state, ',' ORDER BY batch_id), '') AS s FROM public.orchestrate_batches",
    )
    .get_result::<S>(&mut c)
    .unwrap()
    .s
}

/// A PostgreSQL decider commits its `begun` row, then waits for the migration (advisory)
/// lock -- up to lock_timeout -- before its batch transaction locks that row FOR UPDATE.
/// Another session holding the lock (any other batch on that database, or here the test)
/// stretches that window to seconds. A `recover` run then (a cron job, a second operator)
/// finds the row `begun` and unheld, and step 4 (`abort_abandoned`) records `abort` for a
/// batch whose coordinator is alive and about to go on: recover aborts a running batch.
#[test]
fn recover_aborts_a_live_batch_whose_postgres_decider_waits_for_its_lock() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_pg("b_pg");
    p.config("decider = \"a_pg\"");
    p.create_table("a_pg", "1_d", "d");
    p.create_table("b_pg", "1_p", "p");
    // Someone else holds a_pg's migration lock for a moment (as another batch would).
    let mut holder = p.db("a_pg").pg();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({});",
            orchestrate_driver::LOCK_KEY
        ))
        .unwrap();
    let child = spawn(&p, &["upgrade", "--all-binds"], "");
    wait_until("the batch's row is begun", || {
        pg_batch_states(p.db("a_pg")) == "begun"
    });
    let run = p.run(&["recover"]);
    // Release the lock: the coordinator goes on well within its lock timeout.
    holder.batch_execute("ROLLBACK").unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !run.stdout.contains("aborted"),
        "recover aborted a batch whose coordinator was alive (waiting for its lock):\nrecover: {}\nupgrade exit {:?}:\n{stdout}\n{stderr}",
        run.stdout,
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(p.db("a_pg").state(), state(&["d"], &["1"]));
    assert_eq!(p.db("b_pg").state(), state(&["p"], &["1"]));
}

/// A MySQL-only batch (`a_shop` (first) decides, `b_crm` takes part), paused before its decision with
/// every migration run. `b_crm`'s session is lost (a network cut, `wait_timeout`, a DBA's KILL):
/// its migration lock goes with it, while the coordinator is alive and still holds `a_shop`'s
/// lock -- it can still decide, and would (the decision is written on `a_shop`; a mark it cannot
/// clear on `b_crm` is left to recover). A `recover` run now takes `b_crm`'s free lock, reads the
/// decider's row `begun`, and records `abort` on it without asking whether a coordinator
/// holds the decider's lock (`decision_of` has no MySQL check), then undoes `b_crm`: recover
/// aborts a running batch, against "Recover undoes a MySQL batch only when ... the decider
/// has no decision and can no longer make one".
#[test]
fn recover_aborts_a_live_mysql_only_batch_when_a_participant_session_is_lost() {
    let mut p = Project::new();
    p.add_mysql("a_shop").add_mysql("b_crm");
    p.create_table("a_shop", "1_a", "a");
    p.create_table("b_crm", "1_b", "b");
    let child = spawn(
        &p,
        &["upgrade", "--all-binds", "--allow-non-atomic"],
        "before-decision=sleep(6000)",
    );
    wait_until("b_crm ran its migration", || {
        p.db("b_crm").marks() == vec!["batch:-:up:0/0".to_string()]
            && p.db("b_crm").state().versions == vec!["1".to_string()]
            && p.db("a_shop").state().versions == vec!["1".to_string()]
    });
    let Db::My(crm) = p.db("b_crm") else { panic!() };
    let mut admin = diesel::MysqlConnection::establish(&crate::support::mysql_admin_url()).unwrap();
    #[derive(diesel::QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let ids: Vec<Id> = diesel::sql_query(format!(
        "SELECT CAST(id AS SIGNED) AS id FROM information_schema.processlist WHERE db = '{}' AND id <> CONNECTION_ID()",
        crm.name
    ))
    .load(&mut admin)
    .unwrap();
    assert!(!ids.is_empty(), "the coordinator's crm session");
    for id in &ids {
        admin.batch_execute(&format!("KILL {}", id.id)).unwrap();
    }
    let run = p.run(&["recover"]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    // Let recover finish whatever is left, then look.
    let after = p.run(&["recover"]);
    assert!(
        !run.stdout.contains("undone") && !run.stdout.contains("aborted"),
        "recover aborted a MySQL-only batch whose coordinator still held its decider's lock:\nrecover: {}\n{}\nupgrade exit {:?}:\n{stdout}\n{stderr}\nrecover again: {}",
        run.stdout,
        run.stderr,
        out.status.code(),
        after.stdout
    );
}
