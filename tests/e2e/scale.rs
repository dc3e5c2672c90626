//! More binds than the server accepts connections, in one atomic batch.

use crate::support::{state, OwnCluster, Project};

/// The size CI runs: 40 binds on a server with max_connections = 20. The full size
/// runs on demand: `ORCHESTRATE_SCALE_BINDS=1000 ORCHESTRATE_SCALE_MAX_CONNECTIONS=100
/// scripts/test.sh one_batch_over`.
fn sizes() -> (usize, String) {
    let binds = std::env::var("ORCHESTRATE_SCALE_BINDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let max = std::env::var("ORCHESTRATE_SCALE_MAX_CONNECTIONS").unwrap_or_else(|_| "20".into());
    assert!(
        binds > max.parse::<usize>().expect("a number of connections"),
        "the test needs more binds than connections"
    );
    (binds, max)
}

fn many_binds(cluster: &OwnCluster, n: usize) -> Project {
    let mut p = Project::new();
    p.config("parallelism = 4");
    for i in 0..n {
        let bind = format!("tenant_{i:04}");
        p.add_pg_at(&bind, &cluster.url);
        for v in 1..=2 {
            p.migration(
                &bind,
                &format!("{v}_m{v}"),
                &format!("CREATE TABLE t{v} (id INT);"),
                Some(&format!("DROP TABLE t{v};")),
            );
        }
    }
    p
}

/// More binds than the server's max_connections (40 on 20 in CI): the batch commits
/// everywhere, and a failure on one bind rolls back all of them.
#[test]
fn one_batch_over_more_binds_than_connections() {
    let (n, max_connections) = sizes();
    let cluster = OwnCluster::start_with(&[
        ("PG_MAX_CONNECTIONS", max_connections.as_str()),
        ("PG_MAX_PREPARED", &(n + 10).to_string()),
    ]);
    let mut p = many_binds(&cluster, n);
    // A broken second migration on one bind in the middle.
    p.migration(
        "tenant_0023",
        "2_m2",
        "CREATE TABLE t2 (id INT);\nSELECT * FROM no_such_table;",
        None,
    );
    let run = p.run(&["upgrade", "--all-binds", "--json"]);
    run.expect(1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["result"], "rolled back");
    assert!(v["error"].as_str().unwrap().contains("tenant_0023"), "{v}");
    for (bind, st) in p.states() {
        assert_eq!(st, state(&[], &[]), "{bind}");
    }
    p.migration("tenant_0023", "2_m2", "CREATE TABLE t2 (id INT);", None);
    let run = p.run(&["upgrade", "--all-binds", "--json"]);
    run.expect(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["result"], "committed");
    let binds = v["binds"].as_array().unwrap();
    assert_eq!(binds.len(), n);
    for b in binds {
        assert_eq!(b["outcome"], "committed", "{b}");
        assert_eq!(b["migrations"], 2, "{b}");
        assert!(b["elapsed_ms"].is_u64(), "{b}");
    }
    for (bind, st) in p.states() {
        assert_eq!(st, state(&["t1", "t2"], &["1", "2"]), "{bind}");
    }
    let run = p.run(&["status", "--json"]);
    run.expect(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["binds"].as_array().unwrap().len(), n);
    p.run(&["downgrade", "--all-binds", "base"]).expect(0);
    for (bind, st) in p.states() {
        assert_eq!(st, state(&[], &[]), "{bind}");
    }
    drop(p);
}

/// A template discovers every database matching a pattern; each becomes a bind with its own
/// history, migrated together in one batch. The template is named as the databases' prefix,
/// as with `discover = "tenant\\_%"`: its binds are the databases' names, not
/// `tenant_tenant_acme`.
#[test]
fn a_template_discovers_tenant_databases() {
    use crate::support::{pg_admin_url, Db, PgDb};
    let prefix = format!("orchtpl_{:08x}", rand::random::<u32>());
    let dbs: Vec<PgDb> = ["a", "b", "c"]
        .iter()
        .map(|t| PgDb::named(&pg_admin_url(), &format!("{prefix}_{t}")))
        .collect();
    let p = Project::new();
    let url = dbs[0].admin_url_with("{name}");
    std::fs::create_dir_all(p.path().join("config")).unwrap();
    std::fs::write(
        p.path().join("config/default.toml"),
        format!("[templates.{prefix}]\nurl = \"{url}\"\ndiscover = \"{prefix}\\\\_%\"\n"),
    )
    .unwrap();
    let dir = p.path().join(format!("migrations/{prefix}/1_accounts"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("up.sql"), "CREATE TABLE accounts (id INT);").unwrap();
    std::fs::write(dir.join("down.sql"), "DROP TABLE accounts;").unwrap();
    let run = p.run(&["status", "--json"]);
    run.expect(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let names: Vec<&str> = v["binds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bind"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|t| format!("{prefix}_{t}"))
        .collect();
    assert_eq!(names, expected);
    p.run(&["upgrade", "--all-binds"]).expect(0);
    for db in dbs {
        let db = Db::Pg(db);
        assert_eq!(db.state(), state(&["accounts"], &["1"]));
    }
}
