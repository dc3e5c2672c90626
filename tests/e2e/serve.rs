//! `orchestrate serve`: the page and its JSON API, over real PostgreSQL and SQLite databases
//! in two environments (staging, and a protected production). Every test looks at the
//! databases after what the server did or refused, and at every response for passwords.

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{PgDb, Project};

const TOKEN: &str = "a-test-token-0123456789abcdef";
const PASSWORD: &str = "s3cret-pw-5150";

/// `url` with a password in it (the test cluster trusts local connections, so it is never
/// checked, but it is in every URL the server reads).
fn with_password(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let (user, host) = rest.split_once('@').unwrap();
    format!("{scheme}://{user}:{PASSWORD}@{host}")
}

/// Binds `app` (PostgreSQL, two migrations, the second slow) and `cache` (SQLite, one
/// migration) in staging and in a protected production. Returns the PostgreSQL databases
/// (staging, production), kept alive with the project.
pub(crate) fn environments() -> (Project, Vec<PgDb>) {
    let mut p = Project::new();
    p.add_pg("app").add_sqlite("cache");
    p.create_table("app", "1_a", "app_a");
    p.migration(
        "app",
        "2_b",
        "CREATE TABLE app_b (id INT); SELECT pg_sleep(1.5);",
        Some("DROP TABLE app_b;"),
    );
    p.create_table("cache", "1_c", "cache_c");
    let mut dbs = Vec::new();
    for env in ["staging", "production"] {
        let db = PgDb::new();
        let mut text = if env == "production" {
            "protected = true\n".to_string()
        } else {
            String::new()
        };
        text.push_str(&format!(
            "[binds.app]\nurl = \"{}\"\n[binds.cache]\nurl = \"sqlite://var/{env}_cache.sqlite3\"\n",
            with_password(&db.url)
        ));
        fs::write(p.path().join(format!("config/{env}.toml")), text).unwrap();
        dbs.push(db);
    }
    (p, dbs)
}

/// Versions applied on `db` (0 before its first migration).
fn versions(db: &PgDb) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    diesel::sql_query("SELECT count(*) AS n FROM __diesel_schema_migrations")
        .get_result::<N>(&mut db.conn())
        .map(|r| r.n)
        .unwrap_or(0)
}

/// Versions applied on `env`'s SQLite bind `cache` (0 while its file does not exist).
pub(crate) fn cache_versions(p: &Project, env: &str) -> i64 {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let path = p.path().join(format!("var/{env}_cache.sqlite3"));
    if !path.exists() {
        return 0;
    }
    let mut c = diesel::SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    diesel::sql_query("SELECT count(*) AS n FROM __diesel_schema_migrations")
        .get_result::<N>(&mut c)
        .map(|r| r.n)
        .unwrap_or(0)
}

/// A running `orchestrate serve`, stopped when dropped.
pub(crate) struct Server {
    child: Child,
    pub(crate) base: String,
    agent: ureq::Agent,
    /// Every body received, to look for passwords.
    seen: std::cell::RefCell<Vec<String>>,
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) cookie: Option<String>,
}

impl Server {
    pub(crate) fn start(p: &Project, token: Option<&str>) -> Server {
        Server::start_with(p, token, &["staging", "production"])
    }

    pub(crate) fn start_with(p: &Project, token: Option<&str>, envs: &[&str]) -> Server {
        Server::start_args(p, token, envs)
    }

    /// A server of `args` (environments and options) besides its address and refresh.
    pub(crate) fn start_args(p: &Project, token: Option<&str>, args: &[&str]) -> Server {
        let args = [
            &["serve", "--listen", "127.0.0.1:0", "--refresh", "1"],
            args,
        ]
        .concat();
        let mut cmd = p.command(&args);
        match token {
            Some(t) => cmd.env("ORCHESTRATE_SERVE_TOKEN", t),
            None => cmd.env_remove("ORCHESTRATE_SERVE_TOKEN"),
        };
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let base = first
            .split("listening on ")
            .nth(1)
            .and_then(|r| r.split('/').take(3).collect::<Vec<_>>().join("/").into())
            .unwrap_or_else(|| panic!("no address in {first:?}"));
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Server {
            child,
            base,
            agent,
            seen: Default::default(),
        }
    }

    fn reply(&self, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
        let mut r = r.expect("the server answers");
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(str::to_string);
        let status = r.status().as_u16();
        let body = r.body_mut().read_to_string().unwrap();
        self.seen.borrow_mut().push(body.clone());
        Reply {
            status,
            body,
            cookie,
        }
    }

    pub(crate) fn get(&self, path: &str, cookie: Option<&str>) -> Reply {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        self.reply(req.call())
    }

    pub(crate) fn get_with_host(&self, path: &str, host: &str) -> Reply {
        self.reply(
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Host", host)
                .call(),
        )
    }

    pub(crate) fn post_json(&self, path: &str, token: Option<&str>, body: &str) -> Reply {
        let mut req = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .header("X-Orchestrate-User", "ci-pipeline");
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        self.reply(req.send(body))
    }

    pub(crate) fn post_form(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: &[(&str, &str)],
    ) -> Reply {
        let mut req = self.agent.post(format!("{}{path}", self.base));
        if let Some(c) = cookie {
            req = req.header("Cookie", c);
        }
        self.reply(req.send_form(form.iter().copied()))
    }

    /// Waits until no action runs on `env`; returns its last state.
    pub(crate) fn wait_idle(&self, env: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.get(&format!("/api/env/{env}/action"), None);
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            if v["running"] == false {
                return v;
            }
            assert!(Instant::now() < deadline, "the action never ended: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// No response so far carried the password of the URLs.
    pub(crate) fn assert_no_password(&self) {
        for body in self.seen.borrow().iter() {
            assert!(
                !body.contains(PASSWORD),
                "a response shows the password:\n{body}"
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn audit_lines(p: &Project) -> Vec<serde_json::Value> {
    fs::read_to_string(p.path().join(".orchestrate/audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_page_shows_every_environment_and_refuses_actions_without_the_token() {
    let (p, dbs) = environments();
    let server = Server::start(&p, Some(TOKEN));
    let page = server.get("/", None);
    assert_eq!(page.status, 200);
    for text in [
        "staging",
        "production",
        "app",
        "cache",
        "protected",
        "2 pending",
    ] {
        assert!(page.body.contains(text), "{text} missing:\n{}", page.body);
    }
    assert!(page.body.contains("staging → production"), "{}", page.body);
    let api: serde_json::Value =
        serde_json::from_str(&server.get("/api/overview", None).body).unwrap();
    assert_eq!(api["environments"].as_array().unwrap().len(), 2);
    for env in api["environments"].as_array().unwrap() {
        let binds = env["status"]["binds"].as_array().unwrap();
        assert_eq!(binds.len(), 2, "{env}");
        assert!(binds
            .iter()
            .all(|b| b["pending"].as_array().unwrap().len() == 2 || b["bind"] == "cache"));
    }
    assert_eq!(api["environments"][1]["protected"], true);

    // The API without the token, or with another: refused, nothing runs.
    assert_eq!(
        server
            .post_json("/api/env/staging/upgrade", None, "{}")
            .status,
        401
    );
    assert_eq!(
        server
            .post_json(
                "/api/env/staging/upgrade",
                Some("not-the-token-at-all"),
                "{}"
            )
            .status,
        401
    );
    // The form without a session, with a wrong token, then signed in but without the
    // session's CSRF token: refused.
    assert_eq!(
        server
            .post_form("/env/staging/run/upgrade", None, &[])
            .status,
        401
    );
    let wrong = server.post_form("/login", None, &[("who", "mallory"), ("token", "wrong")]);
    assert_eq!(wrong.status, 401);
    assert!(wrong.cookie.is_none());
    // A name that would break the audit log's JSON once redacted, and one too long: the log
    // stays one JSON object per line (audit_lines parses each), the long name is refused.
    let quoted = server.post_form(
        "/login",
        None,
        &[("who", "password=\""), ("token", "wrong")],
    );
    assert_eq!(quoted.status, 401);
    let long = "x".repeat(5000);
    let long = server.post_form("/login", None, &[("who", long.as_str()), ("token", TOKEN)]);
    assert_eq!(long.status, 400);
    assert!(long.cookie.is_none());
    // Another site's name for this address (DNS rebinding): not answered.
    let rebound = server.get_with_host("/api/overview", "attacker.example");
    assert_eq!(rebound.status, 421, "{}", rebound.body);
    let signed = server.post_form("/login", None, &[("who", "alice"), ("token", TOKEN)]);
    assert_eq!(signed.status, 303, "{}", signed.body);
    let cookie = signed.cookie.expect("a session cookie");
    let forged = server.post_form(
        "/env/staging/run/upgrade",
        Some(&cookie),
        &[("csrf", "0123456789abcdef0123456789abcdef")],
    );
    assert_eq!(forged.status, 403, "{}", forged.body);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(versions(&dbs[0]), 0);
    assert_eq!(versions(&dbs[1]), 0);
    assert_eq!(
        (
            cache_versions(&p, "staging"),
            cache_versions(&p, "production")
        ),
        (0, 0)
    );
    // Signed in, the page offers the actions.
    let page = server.get("/", Some(&cookie));
    assert!(page.body.contains("upgrade staging"), "{}", page.body);
    assert!(
        page.body.contains("promote staging to production"),
        "{}",
        page.body
    );

    let audit = audit_lines(&p);
    let refusals: Vec<&serde_json::Value> = audit
        .iter()
        .filter(|a| a["outcome"].as_str().unwrap_or("").starts_with("refused"))
        .collect();
    assert!(refusals.len() >= 4, "{audit:?}");
    assert!(audit.iter().all(|a| a["at"].is_string()), "{audit:?}");
    assert!(!fs::read_to_string(p.path().join(".orchestrate/audit.log"))
        .unwrap()
        .contains(TOKEN));
    server.assert_no_password();
}

#[test]
fn a_server_without_a_token_is_read_only() {
    let (p, dbs) = environments();
    let server = Server::start(&p, None);
    assert_eq!(server.get("/", None).status, 200);
    let r = server.post_json("/api/env/staging/upgrade", Some(TOKEN), "{}");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("read-only"), "{}", r.body);
    assert_eq!(
        server
            .post_form("/login", None, &[("who", "a"), ("token", TOKEN)])
            .status,
        401
    );
    assert_eq!(versions(&dbs[0]), 0);
    assert_eq!(cache_versions(&p, "staging"), 0);
    server.assert_no_password();
}

#[test]
fn an_api_upgrade_runs_alone_and_production_is_promoted_with_confirmation() {
    let (p, dbs) = environments();
    let server = Server::start(&p, Some(TOKEN));
    let started = server.post_json("/api/env/staging/upgrade", Some(TOKEN), "{}");
    assert_eq!(started.status, 202, "{}", started.body);
    // Its second migration sleeps: a second action on staging is refused meanwhile.
    let second = server.post_json("/api/env/staging/recover", Some(TOKEN), "{}");
    assert_eq!(second.status, 409, "{}", second.body);
    assert!(
        second.body.contains("one action at a time"),
        "{}",
        second.body
    );
    // Promoting staging to production reads staging: refused while staging is busy.
    let promote = server.post_json(
        "/api/env/production/promote",
        Some(TOKEN),
        r#"{"from":"staging","confirm":"production"}"#,
    );
    assert_eq!(promote.status, 409, "{}", promote.body);
    // Only from the environment before it.
    let backwards = server.post_json(
        "/api/env/staging/promote",
        Some(TOKEN),
        r#"{"from":"production"}"#,
    );
    assert_eq!(backwards.status, 400, "{}", backwards.body);
    let done = server.wait_idle("staging");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(done["outcome"], "done", "{done}");
    assert!(
        done["log"]
            .as_str()
            .unwrap()
            .contains("committed on every bind"),
        "{done}"
    );
    assert_eq!(versions(&dbs[0]), 2);
    assert_eq!(versions(&dbs[1]), 0);
    assert_eq!(
        (
            cache_versions(&p, "staging"),
            cache_versions(&p, "production")
        ),
        (1, 0)
    );

    // Production is protected: promote needs its name.
    let r = server.post_json(
        "/api/env/production/promote",
        Some(TOKEN),
        r#"{"from":"staging"}"#,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(versions(&dbs[1]), 0);
    let r = server.post_json(
        "/api/env/production/promote",
        Some(TOKEN),
        r#"{"from":"staging","confirm":"production"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let done = server.wait_idle("production");
    assert_eq!(done["exit_code"], 0, "{done}");
    assert_eq!(versions(&dbs[1]), 2);
    assert_eq!(cache_versions(&p, "production"), 1);
    // One step down on staging's app.
    let r = server.post_json(
        "/api/env/staging/downgrade",
        Some(TOKEN),
        r#"{"bind":"app"}"#,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(server.wait_idle("staging")["exit_code"], 0);
    assert_eq!(versions(&dbs[0]), 1);
    assert_eq!(cache_versions(&p, "staging"), 1);
    // Once the action has ended, the overview is already read again: the diff says they
    // differ now.
    let api: serde_json::Value =
        serde_json::from_str(&server.get("/api/overview", None).body).unwrap();
    assert_eq!(api["diffs"][0]["agree"], false, "{api}");
    let audit = audit_lines(&p);
    let ended: Vec<&serde_json::Value> = audit.iter().filter(|a| a["outcome"] == "done").collect();
    assert_eq!(ended.len(), 3, "{audit:?}");
    assert!(ended.iter().all(|a| a["who"] == "ci-pipeline"), "{audit:?}");
    assert!(audit.iter().any(|a| a["outcome"]
        .as_str()
        .unwrap_or("")
        .contains("one action at a time")));
    // The history page of the bind shows its batches.
    let history = server.get("/env/staging/bind/app", None);
    assert_eq!(history.status, 200);
    for text in ["1_a", "2_b", ">down<", ">up<"] {
        assert!(history.body.contains(text), "{text}: {}", history.body);
    }
    let api: serde_json::Value =
        serde_json::from_str(&server.get("/api/env/staging/bind/app/history", None).body).unwrap();
    assert_eq!(api["steps"].as_array().unwrap().len(), 3, "{api}");
    server.assert_no_password();
    let _ = p;
}

/// A template of 30 SQLite databases and one more bind: the environment is a grid, one cell
/// per bind, each naming its bind and revision, and the counts by state.
#[test]
fn an_environment_of_many_binds_is_a_grid() {
    let mut p = Project::new();
    p.add_sqlite("main");
    p.create_table("main", "1_m", "m");
    p.create_table("tenant", "1_t", "t");
    let names: Vec<String> = (0..30).map(|i| format!("\"t{i:02}\"")).collect();
    fs::write(
        p.path().join("config/fleet.toml"),
        format!(
            "[templates.tenant]\nurl = \"sqlite://var/tenant_{{name}}.sqlite3\"\nnames = [{}]\n",
            names.join(", ")
        ),
    )
    .unwrap();
    p.run(&["--env", "fleet", "upgrade", "--bind", "tenant_t07"])
        .expect(0);
    let server = Server::start_with(&p, None, &["fleet"]);
    let page = server.get("/", None);
    assert_eq!(page.status, 200);
    assert_eq!(
        page.body.matches("class=\"cell ").count(),
        31,
        "{}",
        page.body
    );
    assert!(
        page.body.contains("31 binds: 30 pending; 1 up to date;"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("tenant_t07: up to date, at 1_t"),
        "{}",
        page.body
    );
    assert!(
        page.body.contains("tenant_t08: pending, at (none)"),
        "{}",
        page.body
    );
}

/// The sessions on the databases named `names`, from the server's side: (database, pid,
/// when the session started).
fn sessions_on(names: &[&str]) -> Vec<(String, i32, String)> {
    use diesel::prelude::*;
    #[derive(QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
        #[diesel(sql_type = diesel::sql_types::Text)]
        started: String,
    }
    let list = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut admin = diesel::PgConnection::establish(&crate::support::pg_admin_url()).unwrap();
    diesel::sql_query(format!(
        "SELECT CAST(datname AS TEXT) AS datname, pid, CAST(backend_start AS TEXT) AS started \
         FROM pg_stat_activity WHERE datname IN ({list}) ORDER BY pid"
    ))
    .load::<S>(&mut admin)
    .unwrap()
    .into_iter()
    .map(|s| (s.datname, s.pid, s.started))
    .collect()
}

/// An environment `dev` of `n` PostgreSQL binds `<prefix>0..`, each with one migration
/// creating `a<i>`; `url` gives bind i's URL from its database's.
fn pg_dev(prefix: &str, n: usize, url: impl Fn(usize, &PgDb) -> String) -> (Project, Vec<PgDb>) {
    let mut p = Project::new();
    let dbs: Vec<PgDb> = (0..n).map(|_| PgDb::new()).collect();
    let mut text = String::new();
    for (i, db) in dbs.iter().enumerate() {
        p.create_table(&format!("{prefix}{i}"), "1_a", &format!("a{i}"));
        text.push_str(&format!(
            "[binds.{prefix}{i}]\nurl = \"{}\"\n",
            with_password(&url(i, db))
        ));
    }
    p.config("");
    fs::write(p.path().join("config/dev.toml"), text).unwrap();
    (p, dbs)
}

/// The server's `/api/overview`.
fn overview(server: &Server) -> serde_json::Value {
    serde_json::from_str(&server.get("/api/overview", None).body).unwrap()
}

/// Reads `/api/overview` until `ok` holds, and returns it; fails with `what` and the last
/// overview after `secs` seconds.
fn wait_for(
    server: &Server,
    what: &str,
    secs: u64,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = overview(server);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The sessions on databases `names` that stay across a few refreshes (3.5 s): the kept
/// ones; a session opened for one read lives milliseconds.
fn kept_sessions(names: &[&str]) -> Vec<(String, i32, String)> {
    let before = sessions_on(names);
    std::thread::sleep(Duration::from_millis(3500));
    let after = sessions_on(names);
    before.into_iter().filter(|s| after.contains(s)).collect()
}

/// How many migrations the overview shows pending for bind `name` of the first environment.
fn bind_pending(v: &serde_json::Value, name: &str) -> Option<usize> {
    v["environments"][0]["status"]["binds"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["bind"] == name))
        .map(|b| b["pending"].as_array().unwrap().len())
}

/// The errors the overview shows for bind `name` of the first environment.
fn bind_errors(v: &serde_json::Value, name: &str) -> Vec<String> {
    v["environments"][0]["status"]["binds"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["bind"] == name).cloned())
        .map(|b| {
            b["errors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn reads_keep_one_connection_per_bind_within_the_budget_per_server() {
    // Four PostgreSQL binds on one server (reached as 127.0.0.1 and as localhost), a budget
    // of three: three binds keep a session between refreshes, the fourth is read with a new
    // one each time.
    // Two names for one server: the budget counts the server, not its names.
    let (p, dbs) = pg_dev("t", 4, |i, db| {
        if i % 2 == 1 {
            db.url.replace("127.0.0.1", "localhost")
        } else {
            db.url.clone()
        }
    });
    let names: Vec<&str> = dbs.iter().map(|d| d.name.as_str()).collect();
    let server = Server::start_args(&p, None, &["dev", "--pool-per-server", "3"]);
    let v = wait_for(&server, "the reads never reused a connection", 60, |v| {
        let r = &v["read_connections"];
        r["open"] == 3 && r["reused"].as_u64().unwrap_or(0) >= 6
    });
    assert_eq!(v["read_connections"]["pooled_binds"], 3, "{v}");
    // Across several refreshes (one a second), the same three sessions stay, one per
    // database; a session opened for one read lives milliseconds, not seconds.
    let kept = kept_sessions(&names);
    assert_eq!(kept.len(), 3, "{kept:?}");
    let mut databases: Vec<&str> = kept.iter().map(|s| s.0.as_str()).collect();
    databases.dedup();
    assert_eq!(databases.len(), 3, "{kept:?}");
    let before_stats = overview(&server)["read_connections"].clone();
    assert!(
        before_stats["opened"].as_u64().unwrap() >= 4,
        "the fourth bind is read with its own connection: {before_stats}"
    );
    // A kept session sees what another process commits: the next refresh shows t0 and t3
    // up to date (one kept, one not), and nothing waited on the kept sessions.
    p.run(&["--env", "dev", "upgrade", "--bind", "t0", "--bind", "t3"])
        .expect(0);
    let v = wait_for(&server, "the upgrade never showed", 30, |v| {
        bind_pending(v, "t0") == Some(0) && bind_pending(v, "t3") == Some(0)
    });
    assert_eq!(bind_pending(&v, "t1"), Some(1), "{v}");
    assert_eq!(bind_pending(&v, "t2"), Some(1), "{v}");
    for (i, db) in dbs.iter().enumerate() {
        assert_eq!(versions(db), i64::from(i == 0 || i == 3), "t{i}");
    }
    let page = server.get("/", None);
    assert!(
        page.body
            .contains("3 binds keep a read connection (3 open)"),
        "{}",
        page.body
    );
    server.assert_no_password();
}

/// Sends `signal` to every session on database `name`.
fn signal_sessions(name: &str, signal: &str) -> Vec<i32> {
    let pids: Vec<i32> = sessions_on(&[name]).into_iter().map(|s| s.1).collect();
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }
    pids
}

/// Resumes stopped sessions even when the test fails.
struct Resume(String);

impl Drop for Resume {
    fn drop(&mut self) {
        signal_sessions(&self.0, "-CONT");
    }
}

#[test]
fn a_kept_session_reads_as_a_new_one_would_and_a_stuck_read_is_shown() {
    let (p, dbs) = pg_dev("s", 2, |_, db| db.url.clone());
    p.run(&["--env", "dev", "upgrade", "--bind", "s0"])
        .expect(0);
    let server = Server::start_args(&p, None, &["dev"]);
    let wait = |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool, secs: u64| {
        wait_for(&server, what, secs, ok)
    };
    wait(
        "both binds keep a session",
        &|v| {
            v["read_connections"]["open"] == 2
                && v["read_connections"]["reused"].as_u64() >= Some(4)
        },
        60,
    );
    // s0's database now gives new sessions another search path (where nothing is applied);
    // s1 gets a schema named after the role, first in the default search path, where the
    // next upgrade puts its tables.
    let admin = |db: &PgDb, sql: &str| {
        use diesel::connection::SimpleConnection;
        db.conn().batch_execute(sql).unwrap();
    };
    admin(
        &dbs[0],
        &format!(
            "CREATE SCHEMA app; ALTER DATABASE {} SET search_path = app",
            dbs[0].name
        ),
    );
    admin(&dbs[1], "CREATE SCHEMA postgres");
    p.run(&["--env", "dev", "upgrade", "--bind", "s1"])
        .expect(0);
    let cli: serde_json::Value =
        serde_json::from_str(&p.run(&["--env", "dev", "status", "--json"]).stdout).unwrap();
    let cli_pending = |name: &str| {
        cli["binds"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["bind"] == name)
            .map(|b| b["pending"].as_array().unwrap().len())
    };
    assert_eq!(cli_pending("s0"), Some(1), "{cli}");
    assert_eq!(cli_pending("s1"), Some(0), "{cli}");
    // The page says what a new session says, within a few refreshes.
    wait(
        "the page agrees with status",
        &|v| bind_pending(v, "s0") == Some(1) && bind_pending(v, "s1") == Some(0),
        20,
    );
    assert!(overview(&server)["overdue_since"].is_null());
    // A database that stops answering (its kept session's backend stopped): the page says
    // its overview is out of date instead of showing old data as current.
    let _resume = Resume(dbs[1].name.clone());
    assert!(!signal_sessions(&dbs[1].name, "-STOP").is_empty());
    wait(
        "the page says it is out of date",
        &|v| v["overdue_since"].is_string(),
        60,
    );
    let page = server.get("/", None);
    assert!(page.body.contains("Out of date: "), "{}", page.body);
    signal_sessions(&dbs[1].name, "-CONT");
    wait(
        "the page is current again",
        &|v| v["overdue_since"].is_null(),
        60,
    );
    server.assert_no_password();
}

#[test]
fn kept_reads_take_a_quarter_of_any_connection_limit_and_lose_a_revoked_right_at_once() {
    // Binds t0..t3 and t5 read as one role, t4 as the test's superuser. t4's database is
    // limited to 3 connections: a quarter is none, so t4 keeps no session. t5's database
    // does not let the role read the server's system identifier, so its server cannot be
    // counted as one: t5 keeps none either. t0..t3 keep one each, until the role is limited
    // to 8 connections while the page runs: then two of them (a quarter of 8).
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let role = format!("orch_lim_{:08x}", rand::random::<u32>());
    let mut admin = diesel::PgConnection::establish(&crate::support::pg_admin_url()).unwrap();
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .unwrap();
    let as_role = |url: &str| url.replacen("://postgres@", &format!("://{role}@"), 1);
    let (p, dbs) = pg_dev("t", 6, |i, db| {
        if i == 4 {
            db.url.clone()
        } else {
            as_role(&db.url)
        }
    });
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {} CONNECTION LIMIT 3",
            dbs[4].name
        ))
        .unwrap();
    dbs[5]
        .conn()
        .batch_execute("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC")
        .unwrap();
    let names: Vec<&str> = dbs.iter().map(|d| d.name.as_str()).collect();
    let server = Server::start_args(&p, None, &["dev"]);
    let wait =
        |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool| wait_for(&server, what, 60, ok);
    let reused = |v: &serde_json::Value| v["read_connections"]["reused"].as_u64().unwrap_or(0);
    let v = wait("t0..t3 keep a session", &|v| {
        v["read_connections"]["open"] == 4 && reused(v) >= 8
    });
    assert_eq!(v["read_connections"]["pooled_binds"], 4, "{v}");
    let kept = kept_sessions(&names);
    assert_eq!(kept.len(), 4, "{kept:?}");
    assert!(
        kept.iter()
            .all(|s| s.0 != dbs[4].name && s.0 != dbs[5].name),
        "no session kept for t4 or t5: {kept:?}"
    );
    admin
        .batch_execute(&format!("ALTER ROLE {role} CONNECTION LIMIT 8"))
        .unwrap();
    let at = reused(&overview(&server));
    let v = wait(
        "the kept sessions come down to a quarter of the role's limit",
        &|v| {
            v["read_connections"]["open"] == 2
                && v["read_connections"]["pooled_binds"] == 2
                && reused(v) >= at + 4
        },
    );
    assert!(
        v["environments"][0]["status"]["binds"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["errors"].as_array().unwrap().is_empty()),
        "{v}"
    );
    let kept = kept_sessions(&names);
    assert_eq!(kept.len(), 2, "{kept:?}");
    // The role loses CONNECT on its databases: a new session is refused, so the page shows
    // every one of its binds unreadable at its next refreshes (a kept session would go on
    // reading for minutes).
    for db in &dbs[..4] {
        admin
            .batch_execute(&format!(
                "REVOKE CONNECT ON DATABASE {} FROM PUBLIC",
                db.name
            ))
            .unwrap();
    }
    let v = wait_for(
        &server,
        "the page still reads binds whose role lost CONNECT",
        30,
        |v| {
            ["t0", "t1", "t2", "t3"].iter().all(|name| {
                bind_errors(v, name).iter().any(|e| {
                    e.contains(&format!("bind `{name}`")) && e.contains("permission denied")
                })
            })
        },
    );
    assert!(bind_errors(&v, "t4").is_empty(), "{v}");
    server.assert_no_password();
    drop(server);
    drop(dbs);
    let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
}

#[test]
fn the_budget_holds_across_a_server_restart_and_binds_no_longer_read_give_their_sessions_back() {
    // A budget of 3 on a cluster of the test's own: r0..r2 keep a session. The server
    // restarts, then r3 and r4 join the configuration: the restarted server is the same
    // server, so they are read with new connections each time and 3 sessions stay kept.
    let cluster = crate::support::OwnCluster::start();
    let mut p = Project::new();
    let dbs: Vec<PgDb> = (0..5).map(|_| PgDb::on(&cluster.url)).collect();
    let config = |n: usize| {
        let mut text = String::new();
        for (i, db) in dbs.iter().enumerate().take(n) {
            text.push_str(&format!(
                "[binds.r{i}]\nurl = \"{}\"\n",
                with_password(&db.url)
            ));
        }
        text
    };
    for i in 0..5 {
        p.create_table(&format!("r{i}"), "1_a", &format!("a{i}"));
    }
    p.config("");
    let dev = p.path().join("config/dev.toml");
    fs::write(&dev, config(3)).unwrap();
    let server = Server::start_args(&p, None, &["dev", "--pool-per-server", "3"]);
    let wait = |what: &str, ok: &dyn Fn(&serde_json::Value) -> bool, secs: u64| {
        wait_for(&server, what, secs, ok)
    };
    wait(
        "three binds keep a session",
        &|v| v["read_connections"]["open"] == 3,
        60,
    );
    cluster.restart();
    fs::write(&dev, config(5)).unwrap();
    let read_cleanly = |v: &serde_json::Value| {
        let binds = v["environments"][0]["status"]["binds"].as_array();
        binds.is_some_and(|b| {
            b.len() == 5
                && b.iter()
                    .all(|b| b["errors"].as_array().is_some_and(|e| e.is_empty()))
        })
    };
    let reused = wait(
        "all five binds are read after the restart",
        &read_cleanly,
        60,
    )["read_connections"]["reused"]
        .as_u64()
        .unwrap();
    let v = wait(
        "kept sessions are reused again after the restart",
        &|v| {
            read_cleanly(v)
                && v["read_connections"]["open"] == 3
                && v["read_connections"]["reused"].as_u64() >= Some(reused + 6)
        },
        60,
    );
    assert_eq!(v["read_connections"]["pooled_binds"], 3, "{v}");
    // The environment's file stops parsing: nothing is read any more, and within the time a
    // bind is remembered (a minute here) and a quarter of it, the kept sessions are closed.
    fs::write(&dev, "this is not [ toml").unwrap();
    wait(
        "the kept sessions are given back",
        &|v| v["read_connections"]["open"] == 0 && v["read_connections"]["pooled_binds"] == 0,
        150,
    );
    server.assert_no_password();
}

#[test]
fn a_mysql_account_limit_bounds_the_kept_sessions_too() {
    // Two MariaDB binds read as an account limited to 4 connections: one keeps a session (a
    // quarter of 4), the other is read with a new connection each time.
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let user = format!("orch_lim_{:08x}", rand::random::<u32>());
    let mut admin = diesel::MysqlConnection::establish(&crate::support::mysql_admin_url()).unwrap();
    let dbs: Vec<crate::support::MyDb> = (0..2).map(|_| crate::support::MyDb::new()).collect();
    admin
        .batch_execute(&format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}' WITH MAX_USER_CONNECTIONS 4"
        ))
        .unwrap();
    let mut p = Project::new();
    let mut text = String::new();
    for (i, db) in dbs.iter().enumerate() {
        admin
            .batch_execute(&format!("GRANT ALL ON {}.* TO '{user}'@'%'", db.name))
            .unwrap();
        p.create_table(&format!("m{i}"), "1_a", &format!("a{i}"));
        let host = db.url.split_once('@').unwrap().1;
        text.push_str(&format!(
            "[binds.m{i}]\nurl = \"mysql://{user}:{PASSWORD}@{host}\"\n"
        ));
    }
    p.config("");
    fs::write(p.path().join("config/dev.toml"), text).unwrap();
    let server = Server::start_args(&p, None, &["dev"]);
    let v = wait_for(&server, "the reads never reused a connection", 60, |v| {
        v["read_connections"]["reused"].as_u64().unwrap_or(0) >= 4
    });
    assert_eq!(v["read_connections"]["open"], 1, "{v}");
    assert_eq!(v["read_connections"]["pooled_binds"], 1, "{v}");
    for name in ["m0", "m1"] {
        assert!(bind_errors(&v, name).is_empty(), "{v}");
    }
    // Two refreshes later, still one.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(overview(&server)["read_connections"]["pooled_binds"], 1);
    // The account loses its privileges on both databases: a session that is not new keeps
    // them until its next USE, but the page shows both binds refused within a few refreshes,
    // as `status` would.
    for db in &dbs {
        admin
            .batch_execute(&format!("REVOKE ALL ON {}.* FROM '{user}'@'%'", db.name))
            .unwrap();
    }
    wait_for(
        &server,
        "the page still reads with the revoked privileges",
        30,
        |v| {
            ["m0", "m1"]
                .iter()
                .all(|name| bind_errors(v, name).iter().any(|e| e.contains("denied")))
        },
    );
    server.assert_no_password();
    drop(server);
    let _ = admin.batch_execute(&format!("DROP USER '{user}'@'%'"));
}
