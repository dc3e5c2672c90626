//! PostgreSQL participants that keep the session which prepared their transaction until
//! COMMIT PREPARED (`keep_connections`), and what happens when that session dies before the
//! commit. Each test ends by looking at every database of the batch.

use crate::arbitration::committed;
use crate::crash::{spawn, wait_until};
use crate::support::{state, Project};

/// The sessions on `bind`'s database whose last statement was the check that follows
/// PREPARE TRANSACTION: participants' sessions kept for COMMIT PREPARED.
fn kept_sessions(p: &Project, bind: &str) -> i64 {
    let name = p.db(bind).pg_name();
    p.db(bind).count(&format!(
        "SELECT count(*) AS n FROM pg_catalog.pg_stat_activity WHERE datname = '{name}' \
         AND pid <> pg_catalog.pg_backend_pid() AND query LIKE '%pg_prepared_xacts WHERE gid = %'"
    ))
}

#[test]
fn prepared_participants_keep_their_sessions_up_to_keep_connections() {
    // (keep_connections, sessions kept by the two participants). Sessions are kept only when
    // the batch's three PostgreSQL binds fit in keep_connections (and in half the server's
    // connections, 200 here): a batch wider than the budget keeps none.
    for (keep, expected) in [(None, 2), (Some(3), 2), (Some(2), 0), (Some(0), 0)] {
        let mut p = Project::new();
        p.add_pg("a_pg").add_pg("b_pg").add_pg("c_pg");
        p.config("decider = \"a_pg\"");
        if let Some(k) = keep {
            p.config(&format!("keep_connections = {k}"));
        }
        for bind in ["a_pg", "b_pg", "c_pg"] {
            p.create_table(bind, "1_t", &format!("t_{bind}"));
        }
        let child = spawn(
            &p,
            &["upgrade", "--all-binds"],
            "before-decision=sleep(2500)",
        );
        wait_until("both participants are prepared", || {
            p.db("b_pg").state().prepared.len() == 1 && p.db("c_pg").state().prepared.len() == 1
        });
        let kept = kept_sessions(&p, "b_pg") + kept_sessions(&p, "c_pg");
        assert_eq!(kept, expected, "keep_connections = {keep:?}");
        committed(child);
        for bind in ["a_pg", "b_pg", "c_pg"] {
            assert_eq!(
                p.db(bind).state(),
                state(&[&format!("t_{bind}")], &["1"]),
                "{bind}, keep_connections = {keep:?}"
            );
        }
        p.run(&["status"]).expect(0);
    }
}

/// A participant's migration sets `idle_session_timeout`: a session-level setting survives
/// PREPARE TRANSACTION, so the server ends the kept session while the batch waits for its
/// decision. COMMIT PREPARED then fails on it, and a fresh session must commit in its place.
#[test]
fn a_participant_whose_kept_session_dies_is_committed_over_a_fresh_one() {
    let mut p = Project::new();
    p.add_pg("a_pg").add_pg("b_pg");
    p.config("decider = \"a_pg\"");
    p.create_table("a_pg", "1_d", "d");
    p.migration(
        "b_pg",
        "1_p",
        "CREATE TABLE p (id INT); SET idle_session_timeout = 1500;",
        Some("DROP TABLE p;"),
    );
    let child = spawn(
        &p,
        &["upgrade", "--all-binds"],
        "before-decision=sleep(5000)",
    );
    wait_until("the participant is prepared", || {
        p.db("b_pg").state().prepared.len() == 1
    });
    // The kept session is there, then the server ends it before the decision.
    assert_eq!(kept_sessions(&p, "b_pg"), 1);
    wait_until("the server ends the kept session", || {
        kept_sessions(&p, "b_pg") == 0
    });
    assert_eq!(p.db("b_pg").state().prepared.len(), 1);
    committed(child);
    assert_eq!(p.db("a_pg").state(), state(&["d"], &["1"]));
    assert_eq!(p.db("b_pg").state(), state(&["p"], &["1"]));
    p.run(&["status"]).expect(0);
    p.run(&["recover"]).expect(0);
}
