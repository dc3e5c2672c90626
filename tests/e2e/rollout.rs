//! Rollouts (`upgrade --wave-size N`, `--canary`): waves run one after the other, each an
//! atomic batch; the first that fails stops the rollout; the same command resumes it.

use crate::cli::assert_matches_schema;
use crate::support::{state, Project};

/// Six PostgreSQL binds with one migration each, `p3`'s failing.
fn six_with_p3_failing() -> Project {
    let mut p = Project::new();
    for i in 1..=6 {
        let bind = format!("p{i}");
        p.add_pg(&bind);
        if i == 3 {
            p.migration(
                &bind,
                "1_a",
                "CREATE TABLE t3 (x int);\nSELECT * FROM nope;",
                Some("DROP TABLE t3;"),
            );
        } else {
            p.create_table(&bind, "1_a", &format!("t{i}"));
        }
    }
    p
}

fn record(p: &Project) -> serde_json::Value {
    let text = std::fs::read_to_string(p.path().join(".orchestrate/rollout.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Waves of two: the first commits, the second fails on p3 and rolls back on p3 and p4, the
/// third never starts; exit 1. `status` says where it stopped; the same command, once the
/// migration is fixed, resumes under the same rollout id and finishes.
#[test]
fn a_failing_middle_wave_stops_the_rollout_and_the_same_command_resumes_it() {
    let mut p = six_with_p3_failing();
    let args = ["upgrade", "--all-binds", "--wave-size", "2"];
    let run = p.run(&args);
    run.expect(1);
    assert!(
        run.stdout.contains("wave 2 of 3: 2 bind(s) (p3, p4)"),
        "{run:?}"
    );
    assert!(!run.stdout.contains("wave 3 of 3"), "{run:?}");
    assert!(
        run.stderr.contains("stopped (wave 2 rolled back)")
            && run
                .stderr
                .contains("1 wave(s) committed (2 bind(s)) stay committed")
            && run.stderr.contains("1 wave(s) (2 bind(s)) not started"),
        "{run:?}"
    );
    p.assert_states(&[
        ("p1", state(&["t1"], &["1"])),
        ("p2", state(&["t2"], &["1"])),
        ("p3", state(&[], &[])),
        ("p4", state(&[], &[])),
        ("p5", state(&[], &[])),
        ("p6", state(&[], &[])),
    ]);
    for bind in ["p3", "p4"] {
        assert!(p.db(bind).state().prepared.is_empty());
    }
    // The third wave never touched its databases: not even orchestrate's tables are there.
    for bind in ["p5", "p6"] {
        assert_eq!(
            p.db(bind)
                .count("SELECT count(*) AS n FROM pg_tables WHERE tablename LIKE 'orchestrate%'"),
            0
        );
    }
    let id = record(&p)["id"].as_str().unwrap().to_string();
    assert_eq!(record(&p)["state"], "stopped");

    let status = p.run(&["status"]);
    status.expect(0);
    assert!(
        status.stdout.contains(&format!("rollout {id}"))
            && status
                .stdout
                .contains("stopped; 1 of 3 wave(s) committed (2 bind(s))")
            && status
                .stdout
                .contains("wave 2: rolled back, 2 bind(s) (p3, p4)")
            && status.stdout.contains("nope")
            && status
                .stdout
                .contains("wave 3: not started, 2 bind(s) (p5, p6)")
            && status
                .stdout
                .contains("run `orchestrate upgrade --all-binds --wave-size 2` again to resume"),
        "{status:?}"
    );
    let json = p.run(&["status", "--json"]);
    assert_matches_schema("status.schema.json", &json);
    let value: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(value["rollout"]["state"], "stopped");
    assert_eq!(value["rollout"]["waves"][1]["state"], "rolled_back");

    p.migration(
        "p3",
        "1_a",
        "CREATE TABLE t3 (x int);",
        Some("DROP TABLE t3;"),
    );
    let run = p.run(&args);
    run.expect(0);
    assert!(
        run.stdout.contains(&format!(
            "resuming rollout {id}: 1 wave(s) committed before (2 bind(s)); 2 to go"
        )) && run.stdout.contains("wave 2 of 3: 2 bind(s) (p3, p4)")
            && run.stdout.contains("wave 3 of 3: 2 bind(s) (p5, p6)")
            && run
                .stdout
                .contains(&format!("rollout {id} committed: 3 wave(s), 6 bind(s)")),
        "{run:?}"
    );
    for i in 1..=6 {
        let bind = format!("p{i}");
        assert_eq!(
            p.db(&bind).state(),
            state(&[&format!("t{i}")], &["1"]),
            "{bind}"
        );
    }
    assert_eq!(record(&p)["state"], "committed");
    let status = p.run(&["status"]);
    assert!(!status.stdout.contains("rollout"), "{status:?}");
    p.assert_consistent();
}

/// A crash right after a wave's decision leaves that wave to `recover`; `status` says the
/// rollout stopped inside it; after `recover` the same command resumes with the next wave and
/// counts the recovered one as committed.
#[test]
fn a_crash_inside_a_wave_is_recovered_then_the_rollout_resumes() {
    let mut p = Project::new();
    for i in 1..=4 {
        let bind = format!("p{i}");
        p.add_pg(&bind).create_table(&bind, "1_a", &format!("t{i}"));
    }
    let args = ["upgrade", "--all-binds", "--wave-size", "2"];
    p.run_stopped_at(&args, "after-decision");
    let status = p.run(&["status"]);
    assert!(
        status
            .stdout
            .contains("in progress, or stopped inside a wave; 0 of 2 wave(s) committed")
            && status
                .stdout
                .contains("wave 1: running, 2 bind(s) (p1, p2)")
            && status.stdout.contains("`orchestrate recover` settles"),
        "{status:?}"
    );
    // The interrupted wave is in doubt until recovered: a new run refuses to start.
    p.run(&args).expect(3);
    p.run(&["recover"]).expect(0);
    p.assert_states(&[
        ("p1", state(&["t1"], &["1"])),
        ("p2", state(&["t2"], &["1"])),
        ("p3", state(&[], &[])),
        ("p4", state(&[], &[])),
    ]);
    let run = p.run(&args);
    run.expect(0);
    assert!(
        run.stdout
            .contains("1 wave(s) committed before (2 bind(s)); 1 to go")
            && run.stdout.contains("wave 2 of 2: 2 bind(s) (p3, p4)")
            && run.stdout.contains("committed: 2 wave(s), 4 bind(s)"),
        "{run:?}"
    );
    for i in 1..=4 {
        let bind = format!("p{i}");
        assert_eq!(
            p.db(&bind).state(),
            state(&[&format!("t{i}")], &["1"]),
            "{bind}"
        );
    }
    p.assert_consistent();
}

/// Canaries go first, alone; `[rollout] together` binds share a wave; `--json` reports every
/// wave as a batch with each bind's lock-hold time, and matches its schema.
#[test]
fn canaries_go_first_and_together_binds_share_a_wave() {
    let mut p = Project::new();
    p.config("[rollout]\nwave_size = 2\ntogether = [\"users\", \"billing\", \"audit\"]");
    for bind in ["audit", "billing", "users"] {
        p.add_sqlite(bind)
            .create_table(bind, "1_a", &format!("{bind}_t"));
    }
    for i in 1..=3 {
        let bind = format!("t{i}");
        p.add_pg(&bind).create_table(&bind, "1_a", &format!("t{i}"));
    }
    let run = p.run(&["upgrade", "--all-binds", "--canary", "t2", "--json"]);
    run.expect(0);
    assert_matches_schema("migrate.schema.json", &run);
    let value: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let waves: Vec<Vec<String>> = value["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            w["binds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b["bind"].as_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(
        waves,
        vec![
            vec!["t2".to_string()],
            vec!["audit".into(), "billing".into(), "users".into()],
            vec!["t1".into(), "t3".into()],
        ]
    );
    for wave in value["waves"].as_array().unwrap() {
        assert_eq!(wave["result"], "committed");
        let max = wave["max_lock_hold_ms"].as_u64().unwrap();
        for bind in wave["binds"].as_array().unwrap() {
            assert!(bind["lock_hold_ms"].as_u64().unwrap() <= max, "{wave}");
        }
    }
    assert_eq!(value["waves_committed"], 3);
    p.assert_consistent();
}

/// What a rollout cannot run is refused before its first wave: a canary that is no bind, a
/// wave size of 0 in the configuration.
#[test]
fn a_rollout_is_checked_before_its_first_wave() {
    let mut p = Project::new();
    p.add_sqlite("a").create_table("a", "1_a", "ta");
    let run = p.run(&[
        "upgrade",
        "--all-binds",
        "--wave-size",
        "1",
        "--canary",
        "nope",
    ]);
    run.expect(2);
    assert!(
        run.stderr
            .contains("--canary nope: no bind is named `nope`"),
        "{run:?}"
    );
    p.add_sqlite("b").create_table("b", "1_b", "tb");
    let run = p.run(&[
        "upgrade",
        "--bind",
        "a",
        "--wave-size",
        "1",
        "--canary",
        "b",
    ]);
    run.expect(2);
    assert!(
        run.stderr.contains("`b` is not among the selected binds"),
        "{run:?}"
    );
    p.config("[rollout]\nwave_size = 0");
    let run = p.run(&["upgrade", "--all-binds"]);
    run.expect(2);
    assert!(run.stderr.contains("wave_size = 0"), "{run:?}");
    p.assert_states(&[("a", state(&[], &[])), ("b", state(&[], &[]))]);
}

/// Found by a twelfth adversarial review: a rollout whose last wave committed before its run
/// died stayed "in progress" for ever. The same command, with nothing left to do, closes it.
#[test]
fn a_rollout_finished_by_recover_is_closed_by_the_same_command() {
    let mut p = Project::new();
    for i in 1..=2 {
        let bind = format!("p{i}");
        p.add_pg(&bind).create_table(&bind, "1_a", &format!("t{i}"));
    }
    let args = ["upgrade", "--all-binds", "--wave-size", "2"];
    p.run_stopped_at(&args, "after-decision");
    p.run(&["recover"]).expect(0);
    assert_eq!(record(&p)["state"], "running");
    let run = p.run(&args);
    run.expect(0);
    assert!(
        run.stdout
            .contains("every bind of it is at its target; its record is closed"),
        "{run:?}"
    );
    assert_eq!(record(&p)["state"], "committed");
    assert!(!p.run(&["status"]).stdout.contains("rollout"));
}
