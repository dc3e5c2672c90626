//! Test support: a fresh PostgreSQL database per bind (dropped afterwards), SQLite files in a
//! temporary project, the real `orchestrate` binary, and a look at every database afterwards.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel::{MysqlConnection, PgConnection, SqliteConnection};

/// The PostgreSQL server the tests use. Never skipped: without one, the tests fail and say how
/// to get one.
pub fn pg_admin_url() -> String {
    std::env::var("ORCHESTRATE_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "ORCHESTRATE_TEST_PG_URL is not set. Run the tests with scripts/test.sh, which starts \
             a throwaway PostgreSQL cluster, or point the variable at a server with \
             max_prepared_transactions > 0"
        )
    })
}

/// The MariaDB (or MySQL) server the tests use, as an admin URL. Never skipped.
pub fn mysql_admin_url() -> String {
    std::env::var("ORCHESTRATE_TEST_MYSQL_URL").unwrap_or_else(|_| {
        panic!(
            "ORCHESTRATE_TEST_MYSQL_URL is not set. Run the tests with scripts/test.sh, which \
             starts a throwaway MariaDB server, or point the variable at a server where this \
             user may create databases (mysql://root@127.0.0.1:3306/mysql)"
        )
    })
}

/// A fresh database on the test MariaDB server, dropped when the value is dropped.
pub struct MyDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl MyDb {
    pub fn new() -> MyDb {
        let admin = mysql_admin_url();
        let name = format!("orch_test_{:016x}", rand::random::<u64>());
        let mut conn = MysqlConnection::establish(&admin).expect("connect to the test MariaDB");
        conn.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        MyDb {
            url: with_database(&admin, &name),
            name,
            admin,
        }
    }

    pub fn conn(&self) -> MysqlConnection {
        MysqlConnection::establish(&self.url).expect("connect to the test database")
    }
}

impl Drop for MyDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = MysqlConnection::establish(&self.admin) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {}", self.name));
        }
    }
}

/// Every prepared XA transaction on the server, as `gtrid,bqual` text.
pub fn xa_transactions(admin: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct XaRow {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        gtrid_length: i64,
        #[diesel(sql_type = diesel::sql_types::Binary)]
        data: Vec<u8>,
    }
    let mut c = MysqlConnection::establish(admin).expect("connect to the test MariaDB");
    diesel::sql_query("XA RECOVER")
        .load::<XaRow>(&mut c)
        .expect("XA RECOVER")
        .into_iter()
        .map(|r| {
            let split = (r.gtrid_length as usize).min(r.data.len());
            format!(
                "{},{}",
                String::from_utf8_lossy(&r.data[..split]),
                String::from_utf8_lossy(&r.data[split..])
            )
        })
        .collect()
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let (server, _) = base.rsplit_once('/').expect("a database URL has a path");
    format!("{server}/{db}{query}")
}

/// A fresh database on the test server, dropped (with any prepared transaction left in it)
/// when the value is dropped.
pub struct PgDb {
    pub name: String,
    pub url: String,
    admin: String,
}

impl PgDb {
    pub fn new() -> PgDb {
        PgDb::on(&pg_admin_url())
    }

    /// A fresh database on the server `admin` points at.
    pub fn on(admin: &str) -> PgDb {
        PgDb::named(admin, &format!("orch_test_{:016x}", rand::random::<u64>()))
    }

    /// A fresh database of this name.
    pub fn named(admin: &str, name: &str) -> PgDb {
        let admin = admin.to_string();
        let name = name.to_string();
        let mut conn = PgConnection::establish(&admin).expect("connect to the test server");
        conn.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create a test database");
        PgDb {
            url: with_database(&admin, &name),
            name,
            admin,
        }
    }

    pub fn admin_url_with(&self, db: &str) -> String {
        with_database(&self.admin, db)
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connect to the test database")
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        // Cleanup must not erase evidence: a prepared transaction left behind fails the test
        // (unless it is failing already), after it is rolled back so the database can go.
        let mut leftover = Vec::new();
        if let Ok(mut conn) = PgConnection::establish(&self.url) {
            for gid in prepared_in(&mut conn) {
                let _ = conn.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"));
                leftover.push(gid);
            }
        }
        if let Ok(mut admin) = PgConnection::establish(&self.admin) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
        if !leftover.is_empty() && !std::thread::panicking() {
            panic!(
                "test database {} was left with prepared transactions: {leftover:?}",
                self.name
            );
        }
    }
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    name: String,
}

fn prepared_in(conn: &mut PgConnection) -> Vec<String> {
    diesel::sql_query(
        "SELECT gid AS name FROM pg_prepared_xacts WHERE database = current_database()",
    )
    .load::<Name>(conn)
    .expect("read pg_prepared_xacts")
    .into_iter()
    .map(|n| n.name)
    .collect()
}

/// One bind of a test project.
pub enum Db {
    Pg(PgDb),
    Sqlite(PathBuf),
    My(MyDb),
}

/// What a database holds, as the tests compare it.
#[derive(Debug, PartialEq, Eq)]
pub struct DbState {
    /// User tables, without the tool's own bookkeeping tables.
    pub tables: BTreeSet<String>,
    /// Rows of `__diesel_schema_migrations`, sorted.
    pub versions: Vec<String>,
    /// Prepared transactions in this database (always empty on SQLite).
    pub prepared: Vec<String>,
}

const BOOKKEEPING: [&str; 5] = [
    "orchestrate_batches",
    "__diesel_schema_migrations",
    "orchestrate_history",
    "orchestrate_decisions",
    "orchestrate_in_progress",
];

impl Db {
    pub fn url(&self) -> String {
        match self {
            Db::Pg(db) => db.url.clone(),
            Db::Sqlite(path) => format!("sqlite://{}", path.display()),
            Db::My(db) => db.url.clone(),
        }
    }

    pub fn state(&self) -> DbState {
        match self {
            Db::Pg(db) => {
                let mut c = db.conn();
                c.batch_execute("SET lock_timeout = '5s'").unwrap();
                let prepared = prepared_in(&mut c);
                read_state(
                    &mut c,
                    "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'",
                    prepared,
                )
            }
            Db::My(db) => read_state(
                &mut db.conn(),
                "SELECT CAST(table_name AS CHAR) AS name FROM information_schema.tables WHERE table_schema = DATABASE()",
                Vec::new(),
            ),
            Db::Sqlite(path) if !path.exists() => state(&[], &[]),
            Db::Sqlite(path) => read_state(
                &mut sqlite(path),
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                Vec::new(),
            ),
        }
    }
}

/// The `name` column of every row of `sql`.
fn names<C>(c: &mut C, sql: &str) -> Vec<String>
where
    for<'a> diesel::query_builder::SqlQuery: diesel::query_dsl::LoadQuery<'a, C, Name>,
{
    diesel::sql_query(sql)
        .load::<Name>(c)
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect()
}

/// User tables (listed by `tables_sql`) and version rows of a database.
fn read_state<C>(c: &mut C, tables_sql: &str, prepared: Vec<String>) -> DbState
where
    for<'a> diesel::query_builder::SqlQuery: diesel::query_dsl::LoadQuery<'a, C, Name>,
{
    let tables: BTreeSet<String> = names(c, tables_sql).into_iter().collect();
    let versions = if tables.contains("__diesel_schema_migrations") {
        names(
            c,
            "SELECT version AS name FROM __diesel_schema_migrations ORDER BY version",
        )
    } else {
        Vec::new()
    };
    DbState {
        tables: tables
            .into_iter()
            .filter(|t| !BOOKKEEPING.contains(&t.as_str()))
            .collect(),
        versions,
        prepared,
    }
}

impl Db {
    /// Runs SQL directly against the database (set-up that imitates another tool).
    pub fn execute(&self, sql: &str) {
        match self {
            Db::Pg(db) => db.conn().batch_execute(sql).unwrap(),
            Db::Sqlite(path) => sqlite(path).batch_execute(sql).unwrap(),
            Db::My(db) => db.conn().batch_execute(sql).unwrap(),
        }
    }

    /// The rows of `orchestrate_in_progress` as `kind:version:direction:done/total`
    /// (MySQL; empty when the table does not exist).
    pub fn marks(&self) -> Vec<String> {
        let Db::My(db) = self else {
            return Vec::new();
        };
        let mut c = db.conn();
        if !names(
            &mut c,
            "SELECT CAST(table_name AS CHAR) AS name FROM information_schema.tables WHERE table_schema = DATABASE()",
        )
        .iter()
        .any(|t| t == "orchestrate_in_progress")
        {
            return Vec::new();
        }
        names(
            &mut c,
            "SELECT CONCAT(kind, ':', version, ':', direction, ':', statements_done, '/', statements_total) AS name FROM orchestrate_in_progress ORDER BY kind, version",
        )
    }

    /// One text value from a query, such as `SELECT CAST(count(*) AS CHAR) AS name ...`.
    pub fn query_text(&self, sql: &str) -> String {
        let found = match self {
            Db::Pg(db) => diesel::sql_query(sql).get_result::<Name>(&mut db.conn()),
            Db::Sqlite(path) => diesel::sql_query(sql).get_result::<Name>(&mut sqlite(path)),
            Db::My(db) => diesel::sql_query(sql).get_result::<Name>(&mut db.conn()),
        };
        found
            .unwrap_or_else(|e| panic!("cannot run {sql}: {e}"))
            .name
    }

    /// Every row of these tables as text (PostgreSQL; tables that do not exist are skipped).
    pub fn all_text(&self, tables: &[&str]) -> String {
        let Db::Pg(db) = self else {
            panic!("PostgreSQL only")
        };
        let mut c = db.conn();
        let mut text = String::new();
        for t in tables {
            let rows = diesel::sql_query(format!(
                "SELECT coalesce(string_agg(r::text, ' '), '') AS name FROM {t} r"
            ))
            .load::<Name>(&mut c);
            match rows {
                Ok(rows) => {
                    for r in rows {
                        text.push_str(&r.name);
                        text.push(' ');
                    }
                }
                Err(e) if e.to_string().contains("does not exist") => {}
                Err(e) => panic!("cannot read {t}: {e}"),
            }
        }
        text
    }

    /// How many `up` rows `orchestrate_history` holds (0 when it does not exist).
    pub fn history_ups(&self) -> i64 {
        self.count("SELECT count(*) AS n FROM orchestrate_history WHERE direction = 'up'")
    }

    /// The one `n` of a `SELECT count(*) AS n ...`: 0 when the table it reads does not exist;
    /// any other error fails the test.
    pub fn count(&self, sql: &str) -> i64 {
        #[derive(QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let found = match self {
            Db::Pg(db) => diesel::sql_query(sql).get_result::<N>(&mut db.conn()),
            Db::Sqlite(path) => diesel::sql_query(sql).get_result::<N>(&mut sqlite(path)),
            Db::My(db) => diesel::sql_query(sql).get_result::<N>(&mut db.conn()),
        };
        match found {
            Ok(n) => n.n,
            Err(e)
                if e.to_string().contains("does not exist")
                    || e.to_string().contains("no such table")
                    || e.to_string().contains("doesn't exist") =>
            {
                0
            }
            Err(e) => panic!("cannot run {sql}: {e}"),
        }
    }

    /// This PostgreSQL database's name (panics on another backend).
    pub fn pg_name(&self) -> String {
        match self {
            Db::Pg(db) => db.name.clone(),
            _ => panic!("{} is not PostgreSQL", self.url()),
        }
    }

    /// A new connection to this PostgreSQL database (panics on another backend).
    pub fn pg(&self) -> PgConnection {
        match self {
            Db::Pg(db) => db.conn(),
            _ => panic!("{} is not PostgreSQL", self.url()),
        }
    }

    /// A new connection to this MariaDB database (panics on another backend).
    pub fn my(&self) -> MysqlConnection {
        match self {
            Db::My(db) => db.conn(),
            _ => panic!("{} is not MariaDB", self.url()),
        }
    }
}

/// A SQLite connection that waits for a writer's lock instead of failing at once.
fn sqlite(path: &Path) -> SqliteConnection {
    let mut c = SqliteConnection::establish(path.to_str().unwrap()).unwrap();
    c.batch_execute("PRAGMA busy_timeout = 10000").unwrap();
    c
}

pub fn state(tables: &[&str], versions: &[&str]) -> DbState {
    DbState {
        tables: tables.iter().map(|t| t.to_string()).collect(),
        versions: versions.iter().map(|v| v.to_string()).collect(),
        prepared: Vec::new(),
    }
}

/// The output of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl Db {
    /// Every batch id this database knows of: the batches it decided (`orchestrate_batches`),
    /// and on MySQL those in its history and marks. Tables that do not exist give none.
    pub fn batch_ids(&self) -> BTreeSet<String> {
        let mut ids = BTreeSet::new();
        let tables: BTreeSet<String> = match self {
            Db::Pg(db) => names(&mut db.conn(), "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'"),
            Db::Sqlite(path) if !path.exists() => Vec::new(),
            Db::Sqlite(path) => names(&mut sqlite(path), "SELECT name FROM sqlite_master WHERE type = 'table'"),
            Db::My(db) => names(&mut db.conn(), "SELECT CAST(table_name AS CHAR) AS name FROM information_schema.tables WHERE table_schema = DATABASE()"),
        }
        .into_iter()
        .collect();
        for (table, column) in [
            ("orchestrate_batches", "batch_id"),
            ("orchestrate_in_progress", "batch_id"),
            ("orchestrate_history", "batch_id"),
        ] {
            if !tables.contains(table) {
                continue;
            }
            let sql = format!("SELECT DISTINCT CAST({column} AS CHAR(64)) AS name FROM {table}");
            let sql = if matches!(self, Db::My(_)) {
                sql
            } else {
                sql.replace("CAST(batch_id AS CHAR(64))", "batch_id")
            };
            ids.extend(match self {
                Db::Pg(db) => names(&mut db.conn(), &sql),
                Db::Sqlite(path) => names(&mut sqlite(path), &sql),
                Db::My(db) => names(&mut db.conn(), &sql),
            });
        }
        ids
    }
}

/// A temporary project: config/default.toml, migrations/<bind>/..., and its databases.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub binds: Vec<(String, Db)>,
    /// Extra top-level lines of config/default.toml, such as `decider = "x"`.
    pub extra_config: String,
    /// Set by [`Project::leaves_batches_in_doubt`]: the test means to end with a batch in
    /// doubt, so the end-of-test check skips "nothing is left in doubt" (never atomicity).
    in_doubt_on_purpose: std::cell::Cell<bool>,
}

impl Drop for Project {
    /// Every test ends with [`Project::assert_consistent`] over all its binds (unless it is
    /// failing already). Cleanup must not erase evidence: a prepared XA transaction of one of
    /// this project's batches left on the MariaDB server fails the test too.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        self.assert_consistent();
        if !self.binds.iter().any(|(_, db)| matches!(db, Db::My(_))) {
            return;
        }
        let batches: BTreeSet<String> = self
            .binds
            .iter()
            .flat_map(|(_, db)| db.batch_ids())
            .collect();
        let leftover: Vec<String> = xa_transactions(&mysql_admin_url())
            .into_iter()
            .filter(|x| {
                x.strip_prefix("orchestrate:")
                    .and_then(|rest| rest.split(',').next())
                    .is_some_and(|batch| batches.contains(batch))
            })
            .collect();
        assert!(
            leftover.is_empty(),
            "the test left prepared XA transactions of its batches: {leftover:?}"
        );
    }
}

impl Project {
    pub fn new() -> Project {
        Project {
            dir: tempfile::tempdir().unwrap(),
            binds: Vec::new(),
            extra_config: String::new(),
            in_doubt_on_purpose: std::cell::Cell::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn add_pg(&mut self, bind: &str) -> &mut Project {
        self.binds.push((bind.into(), Db::Pg(PgDb::new())));
        self.write_config();
        self
    }

    pub fn add_mysql(&mut self, bind: &str) -> &mut Project {
        self.binds.push((bind.into(), Db::My(MyDb::new())));
        self.write_config();
        self
    }

    pub fn add_sqlite(&mut self, bind: &str) -> &mut Project {
        let path = self.path().join("var").join(format!("{bind}.sqlite3"));
        self.binds.push((bind.into(), Db::Sqlite(path)));
        self.write_config();
        self
    }

    /// Adds top-level configuration lines.
    pub fn config(&mut self, lines: &str) -> &mut Project {
        self.extra_config.push_str(lines);
        self.extra_config.push('\n');
        self.write_config();
        self
    }

    /// Adds a PostgreSQL bind on another server.
    pub fn add_pg_at(&mut self, bind: &str, admin_url: &str) -> &mut Project {
        self.binds.push((bind.into(), Db::Pg(PgDb::on(admin_url))));
        self.write_config();
        self
    }

    fn write_config(&self) {
        let mut text = format!("lock_timeout_ms = 5000\n{}\n", self.extra_config);
        for (bind, db) in &self.binds {
            text.push_str(&format!("[binds.{bind}]\nurl = \"{}\"\n", db.url()));
            fs::create_dir_all(self.path().join("migrations").join(bind)).unwrap();
        }
        fs::create_dir_all(self.path().join("config")).unwrap();
        fs::write(self.path().join("config/default.toml"), text).unwrap();
    }

    /// Writes `migrations/<bind>/<folder>/up.sql` (and `down.sql` when given).
    pub fn migration(
        &mut self,
        bind: &str,
        folder: &str,
        up: &str,
        down: Option<&str>,
    ) -> &mut Project {
        let dir = self.path().join("migrations").join(bind).join(folder);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("up.sql"), up).unwrap();
        if let Some(down) = down {
            fs::write(dir.join("down.sql"), down).unwrap();
        }
        self
    }

    /// A migration that creates `table` (`id INT PRIMARY KEY`) and whose down.sql drops it.
    pub fn create_table(&mut self, bind: &str, folder: &str, table: &str) -> &mut Project {
        self.migration(
            bind,
            folder,
            &format!("CREATE TABLE {table} (id INT PRIMARY KEY);"),
            Some(&format!("DROP TABLE {table};")),
        )
    }

    /// Writes `migrations/<bind>/<folder>/metadata.toml`.
    pub fn metadata(&mut self, bind: &str, folder: &str, text: &str) -> &mut Project {
        let dir = self.path().join("migrations").join(bind).join(folder);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("metadata.toml"), text).unwrap();
        self
    }

    pub fn db(&self, bind: &str) -> &Db {
        &self
            .binds
            .iter()
            .find(|(b, _)| b == bind)
            .expect("a bind of this project")
            .1
    }

    /// Every bind's state, in bind order.
    pub fn states(&self) -> Vec<(String, DbState)> {
        self.binds
            .iter()
            .map(|(b, db)| (b.clone(), db.state()))
            .collect()
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    /// The binary, set up to run in this project, without the test's ORCHESTRATE variables.
    /// `ORCHESTRATE_TEST_BIN` runs another build of it (CI runs the seed scenarios against the
    /// binary `cargo install --features bundled` made).
    pub fn command(&self, args: &[&str]) -> Command {
        let bin = std::env::var("ORCHESTRATE_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_orchestrate").to_string());
        let mut cmd = Command::new(bin);
        cmd.current_dir(self.path())
            .args(args)
            .env_remove("FAILPOINTS");
        for (key, _) in std::env::vars() {
            if key.starts_with("ORCHESTRATE") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Runs the binary with the failpoint `failpoint=return`, which stops the run there as a
    /// crash would (nothing after it runs), and checks that the run did not succeed.
    pub fn run_stopped_at(&self, args: &[&str], failpoint: &str) -> Run {
        let run = self.run_with(args, &[("FAILPOINTS", &format!("{failpoint}=return"))]);
        assert!(run.code != 0, "stopped at {failpoint}, yet: {run:?}");
        run
    }

    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        let output = cmd.output().expect("run orchestrate");
        use std::os::unix::process::ExitStatusExt;
        let mut stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if let Some(signal) = output.status.signal() {
            stderr.push_str(&format!("\n[ended by signal {signal}]"));
        }
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr,
        }
    }
}

/// A second PostgreSQL server of the test's own, stopped when dropped.
pub struct OwnCluster {
    dir: tempfile::TempDir,
    pub url: String,
}

impl OwnCluster {
    fn script() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pg-cluster.sh")
    }

    pub fn start() -> OwnCluster {
        OwnCluster::start_with(&[])
    }

    /// `url` with its database replaced by `database` and its host by the cluster's Unix socket
    /// folder: the same server, reached another way.
    pub fn socket_url(&self, database: &str) -> String {
        let folder = self
            .dir
            .path()
            .join("pg")
            .display()
            .to_string()
            .replace('/', "%2F");
        let port = self
            .url
            .rsplit(':')
            .next()
            .unwrap()
            .split('/')
            .next()
            .unwrap();
        format!("postgres://postgres@{folder}:{port}/{database}")
    }

    /// Starts one with environment for scripts/pg-cluster.sh, such as PG_MAX_PREPARED.
    pub fn start_with(env: &[(&str, &str)]) -> OwnCluster {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(Self::script())
            .arg("start")
            .arg(dir.path().join("pg"))
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot start a cluster: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        OwnCluster {
            url: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            dir,
        }
    }

    pub fn restart(&self) {
        self.ctl("restart");
    }

    /// Stops the server as a crash would (`pg_ctl -m immediate`: WAL not yet written is lost)
    /// and starts it again.
    pub fn crash_restart(&self) {
        self.ctl("crash-restart");
    }

    fn ctl(&self, what: &str) {
        let out = Command::new(Self::script())
            .arg(what)
            .arg(self.dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .output();
    }
}

/// A MariaDB server of the test's own (scripts/mariadb-server.sh), stopped when dropped: for
/// tests that change server-wide settings.
pub struct OwnMariaDb {
    dir: tempfile::TempDir,
    pub url: String,
}

impl OwnMariaDb {
    fn script() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/mariadb-server.sh")
    }

    pub fn start() -> OwnMariaDb {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(Self::script())
            .arg("start")
            .arg(dir.path().join("maria"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cannot start a MariaDB server: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        OwnMariaDb {
            url: String::from_utf8_lossy(&out.stdout).trim().to_string(),
            dir,
        }
    }

    /// A new database on it, as a URL.
    pub fn database(&self, name: &str) -> String {
        let mut c = MysqlConnection::establish(&self.url).unwrap();
        c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
        with_database(&self.url, name)
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .arg("stop")
            .arg(self.dir.path().join("maria"))
            .output();
    }
}

/// One row of a decider's `orchestrate_batches`.
#[derive(Debug)]
struct BatchRow {
    bind: String,
    state: String,
    settled: bool,
    /// The binds the decision record names as participants.
    participants: Vec<String>,
}

/// One row of a bind's `orchestrate_history`: the batch and its direction label.
#[derive(Debug)]
struct HistoryRow {
    bind: String,
    mysql: bool,
    label: String,
}

impl Db {
    /// Every table of the database, bookkeeping included (none for a missing SQLite file).
    fn all_tables(&self) -> BTreeSet<String> {
        match self {
            Db::Pg(db) => names(
                &mut db.conn(),
                "SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'",
            ),
            Db::Sqlite(path) if !path.exists() => Vec::new(),
            Db::Sqlite(path) => names(
                &mut sqlite(path),
                "SELECT name FROM sqlite_master WHERE type = 'table'",
            ),
            Db::My(db) => names(
                &mut db.conn(),
                "SELECT CAST(table_name AS CHAR) AS name FROM information_schema.tables WHERE table_schema = DATABASE()",
            ),
        }
        .into_iter()
        .collect()
    }

    /// Rows of `sql` as one text column. `parts` are the SQL expressions to join with `|`
    /// (with `||` or `CONCAT`, as the backend has it). Fails loudly on any error.
    fn joined(&self, parts: &[&str], from: &str) -> Vec<String> {
        let text = match self {
            Db::My(_) => format!("CAST(CONCAT_WS('|', {}) AS CHAR)", parts.join(", ")),
            _ => parts.join(" || '|' || "),
        };
        let sql = format!("SELECT {text} AS name FROM {from}");
        match self {
            Db::Pg(db) => names(&mut db.conn(), &sql),
            Db::Sqlite(path) => names(&mut sqlite(path), &sql),
            Db::My(db) => names(&mut db.conn(), &sql),
        }
    }

    fn batch_rows(&self, bind: &str, tables: &BTreeSet<String>) -> Vec<(String, BatchRow)> {
        if !tables.contains("orchestrate_batches") {
            return Vec::new();
        }
        self.joined(
            &[
                "batch_id",
                "state",
                "CASE WHEN settled_at IS NULL THEN 'open' ELSE 'settled' END",
                "COALESCE(record, '')",
            ],
            "orchestrate_batches",
        )
        .into_iter()
        .map(|line| {
            let mut f = line.splitn(4, '|');
            let (id, state, settled, record) = (
                f.next().unwrap().to_string(),
                f.next().unwrap().to_string(),
                f.next().unwrap() == "settled",
                f.next().unwrap_or(""),
            );
            let participants = if record.is_empty() {
                Vec::new()
            } else {
                let value: serde_json::Value = serde_json::from_str(record)
                    .unwrap_or_else(|e| panic!("{bind}: unreadable decision record of {id}: {e}"));
                value["participants"]
                    .as_array()
                    .unwrap_or_else(|| {
                        panic!("{bind}: decision record of {id} lists no participants")
                    })
                    .iter()
                    .map(|p| p["bind"].as_str().unwrap().to_string())
                    .collect()
            };
            let row = BatchRow {
                bind: bind.to_string(),
                state,
                settled,
                participants,
            };
            (id, row)
        })
        .collect()
    }

    fn history_rows(&self, bind: &str, tables: &BTreeSet<String>) -> Vec<(String, HistoryRow)> {
        if !tables.contains("orchestrate_history") {
            return Vec::new();
        }
        self.joined(&["batch_id", "direction"], "orchestrate_history")
            .into_iter()
            .map(|line| {
                let (id, label) = line.split_once('|').unwrap();
                let row = HistoryRow {
                    bind: bind.to_string(),
                    mysql: matches!(self, Db::My(_)),
                    label: label.to_string(),
                };
                (id.to_string(), row)
            })
            .collect()
    }
}

impl Project {
    /// The test ends with a batch in doubt on purpose (it checks exit 3 and what `status`
    /// says): the end-of-test check still checks atomicity, but not that nothing is in doubt.
    pub fn leaves_batches_in_doubt(&self) {
        self.in_doubt_on_purpose.set(true);
    }

    /// Compares every bind's tables and versions with `expected`, which must name every bind
    /// of the project, then runs [`Project::assert_consistent`].
    #[track_caller]
    pub fn assert_states(&self, expected: &[(&str, DbState)]) {
        let names: BTreeSet<&str> = self.binds.iter().map(|(b, _)| b.as_str()).collect();
        let listed: BTreeSet<&str> = expected.iter().map(|(b, _)| *b).collect();
        assert_eq!(
            listed, names,
            "assert_states must name every bind of the project"
        );
        for (bind, want) in expected {
            assert_eq!(&self.db(bind).state(), want, "bind {bind}");
        }
        self.assert_consistent();
    }

    /// What every test ends with: reads every bind's bookkeeping and checks the promises.
    /// - All or nothing: a batch decided `abort` left no history on a PostgreSQL or SQLite
    ///   bind, and on a MySQL bind as many undo rows as rows it ran; a batch still `begun` left
    ///   no history on a PostgreSQL or SQLite bind; a batch settled as `commit` left history on
    ///   every participant its record names.
    /// - Nothing left in doubt (unless [`Project::leaves_batches_in_doubt`]): no `begun` row,
    ///   no unsettled `commit`, no prepared transaction, no MySQL mark.
    ///
    /// Batches with a `heuristic` row (an operator's `resolve`) and batches no decider of the
    /// project knows (stamps, MySQL-only batches) are checked for leftovers only.
    #[track_caller]
    pub fn assert_consistent(&self) {
        self.check_promises(!self.in_doubt_on_purpose.get());
    }

    /// The all-or-nothing half of [`Project::assert_consistent`] alone, for the middle of a
    /// test where a batch may still be in doubt.
    #[track_caller]
    pub fn assert_atomic(&self) {
        self.check_promises(false);
    }

    #[track_caller]
    fn check_promises(&self, nothing_in_doubt: bool) {
        let mut decisions: Vec<(String, BatchRow)> = Vec::new();
        let mut history: Vec<(String, HistoryRow)> = Vec::new();
        let mut problems: Vec<String> = Vec::new();
        let in_doubt_ok = !nothing_in_doubt;
        for (bind, db) in &self.binds {
            let tables = db.all_tables();
            decisions.extend(db.batch_rows(bind, &tables));
            history.extend(db.history_rows(bind, &tables));
            if in_doubt_ok {
                continue;
            }
            let prepared = db.state().prepared;
            if !prepared.is_empty() {
                problems.push(format!("{bind}: prepared transactions left: {prepared:?}"));
            }
            let marks = db.marks();
            if !marks.is_empty() {
                problems.push(format!("{bind}: marks left: {marks:?}"));
            }
        }
        for (id, row) in &decisions {
            if in_doubt_ok {
                break;
            }
            if row.state == "begun" || (row.state == "commit" && !row.settled) {
                problems.push(format!(
                    "{}: batch {id} is left `{}`{}",
                    row.bind,
                    row.state,
                    if row.settled { "" } else { " and unsettled" }
                ));
            }
        }
        let heuristic: BTreeSet<&String> = history
            .iter()
            .filter(|(_, r)| r.label == "heuristic")
            .map(|(id, _)| id)
            .collect();
        let batch_ids: BTreeSet<&String> = history.iter().map(|(id, _)| id).collect();
        for id in batch_ids {
            let rows: Vec<&HistoryRow> = history
                .iter()
                .filter(|(b, _)| b == id)
                .map(|(_, r)| r)
                .collect();
            if heuristic.contains(id) {
                continue;
            }
            let Some((_, decision)) = decisions.iter().find(|(b, _)| b == id) else {
                continue;
            };
            let binds: BTreeSet<&String> = rows.iter().map(|r| &r.bind).collect();
            for bind in binds {
                let mine: Vec<&&HistoryRow> = rows.iter().filter(|r| &r.bind == bind).collect();
                let forward = mine
                    .iter()
                    .filter(|r| r.label == "up" || r.label == "down")
                    .count();
                let undo = mine.iter().filter(|r| r.label == "undo").count();
                let mysql = mine[0].mysql;
                let broken = match decision.state.as_str() {
                    "abort" => (!mysql && forward > 0) || (mysql && forward != undo),
                    "begun" => !mysql && forward > 0,
                    _ => false,
                };
                if broken {
                    problems.push(format!(
                        "{bind}: batch {id} is `{}` on its decider {}, yet {bind} holds {forward} history row(s) of it and {undo} undo row(s)",
                        decision.state, decision.bind
                    ));
                }
            }
        }
        for (id, decision) in &decisions {
            if decision.state != "commit" || !decision.settled || heuristic.contains(id) {
                continue;
            }
            for participant in &decision.participants {
                let ran = history.iter().any(|(b, r)| {
                    b == id && &r.bind == participant && (r.label == "up" || r.label == "down")
                });
                let known = self.binds.iter().any(|(b, _)| b == participant);
                if known && !ran {
                    problems.push(format!(
                        "{participant}: batch {id} is settled as `commit` on {}, but {participant} has no history of it",
                        decision.bind
                    ));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "the databases break a promise at the end of the test:\n  {}",
            problems.join("\n  ")
        );
    }
}
