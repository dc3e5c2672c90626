//! Configuration as the binary sees it: relative paths resolve against the project root
//! whatever the working directory, what cannot work is refused before anything connects, no
//! password reaches stdout or stderr (every command, `RUST_LOG=trace`), a panic exits 3 and
//! SIGHUP is SIGTERM.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel::PgConnection;

use crate::crash::all_or_nothing;
use crate::support::{state, Db, DbState, OwnCluster, Project, Run};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Two migrations per bind, `CREATE TABLE <bind>_<v>`, as `crash::all_or_nothing` expects.
fn two_migrations_each(p: &mut Project) {
    let binds: Vec<String> = p.binds.iter().map(|(b, _)| b.clone()).collect();
    for bind in binds {
        for v in 1..=2 {
            p.migration(
                &bind,
                &format!("{v}_step"),
                &format!("CREATE TABLE {bind}_{v} (id INT);"),
                Some(&format!("DROP TABLE {bind}_{v};")),
            );
        }
    }
}

fn full(bind: &str) -> DbState {
    state(&[&format!("{bind}_1"), &format!("{bind}_2")], &["1", "2"])
}

/// A PostgreSQL bind `a_pg` and two SQLite binds whose URLs are relative
/// (`sqlite://var/<bind>.sqlite3`) and whose migrations are in the default folders: the first
/// SQLite bind, `b_lite`, decides.
fn relative_project() -> Project {
    let mut p = Project::new();
    p.add_pg("a_pg");
    let root = p.path().to_path_buf();
    for b in ["b_lite", "c_lite"] {
        p.binds
            .push((b.into(), Db::Sqlite(root.join(format!("var/{b}.sqlite3")))));
    }
    two_migrations_each(&mut p);
    let text = format!(
        "lock_timeout_ms = 5000\n[binds.a_pg]\nurl = \"{}\"\n[binds.b_lite]\nurl = \"sqlite://var/b_lite.sqlite3\"\n[binds.c_lite]\nurl = \"sqlite://var/c_lite.sqlite3\"\n",
        p.db("a_pg").url()
    );
    fs::write(root.join("config/default.toml"), text).unwrap();
    p
}

/// Runs the binary in `cwd` with `--config-dir DIR` appended (and `env`).
fn run_in(p: &Project, cwd: &Path, config_dir: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = p.command(args);
    cmd.current_dir(cwd)
        .args(["--config-dir", config_dir])
        .envs(env.iter().copied());
    output(cmd)
}

fn output(mut cmd: Command) -> Run {
    let out = cmd.output().expect("run orchestrate");
    use std::os::unix::process::ExitStatusExt;
    let mut stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(signal) = out.status.signal() {
        stderr.push_str(&format!("\n[ended by signal {signal}]"));
    }
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

/// Runs `recover` (in `cwd`, with `--config-dir`) until nothing is left in doubt.
fn recover_until_clean(p: &Project, cwd: &Path, config_dir: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    loop {
        let run = run_in(p, cwd, config_dir, &["recover"], &[]);
        seen.push_str(&run.stdout);
        seen.push_str(&run.stderr);
        if run.code == 0 {
            return seen;
        }
        assert!(Instant::now() < deadline, "recover never finished:\n{seen}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---------------------------------------------------------------------------------------------
// Paths resolve against the project root
// ---------------------------------------------------------------------------------------------

#[test]
fn a_project_works_the_same_from_any_working_directory() {
    let p = relative_project();
    let root = p.path().to_path_buf();
    let config_dir = root.join("config").display().to_string();
    let elsewhere = tempfile::tempdir().unwrap();

    let run = run_in(
        &p,
        elsewhere.path(),
        &config_dir,
        &["status", "--json"],
        &[],
    );
    run.expect(0);
    let b_lite = format!("sqlite://{}", root.join("var/b_lite.sqlite3").display());
    assert!(
        run.stdout.contains(&b_lite),
        "the resolved path is shown: {}",
        run.stdout
    );
    assert_eq!(
        run.stdout.matches("\"head\": \"2\"").count(),
        3,
        "every bind's migrations were found: {}",
        run.stdout
    );

    let run = run_in(
        &p,
        elsewhere.path(),
        &config_dir,
        &["upgrade", "--all-binds", "--sql"],
        &[],
    );
    run.expect(0);
    assert!(
        run.stdout.contains("CREATE TABLE b_lite_2"),
        "{}",
        run.stdout
    );

    run_in(
        &p,
        elsewhere.path(),
        &config_dir,
        &["upgrade", "--all-binds"],
        &[],
    )
    .expect(0);
    assert_eq!(all_or_nothing(&p), Some(true), "{:#?}", p.states());
    assert!(
        !elsewhere.path().join("var").exists(),
        "nothing is created in the working directory"
    );

    // From the project itself (default `config`), and through a relative --config-dir from
    // the project's parent: the same files, so nothing is left to do.
    let run = p.run(&["check", "--no-pending"]);
    run.expect(0);
    let parent = root.parent().unwrap();
    let relative = format!("{}/config", root.file_name().unwrap().to_string_lossy());
    run_in(&p, parent, &relative, &["check", "--no-pending"], &[]).expect(0);
    run_in(
        &p,
        elsewhere.path(),
        &config_dir,
        &["downgrade", "--all-binds", "base"],
        &[],
    )
    .expect(0);
    assert_eq!(all_or_nothing(&p), Some(false), "{:#?}", p.states());
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn recover_from_another_directory_reads_a_relative_sqlite_decider() {
    // The batch is decided on b_lite (SQLite, relative path) and the process dies: a_pg is
    // left prepared, c_lite loses its open transaction. `recover` run elsewhere must find the
    // decision in b_lite and commit, not read "no such file" as "no decision".
    let p = relative_project();
    let root = p.path().to_path_buf();
    let config_dir = root.join("config").display().to_string();
    let run = p.run_with(
        &["upgrade", "--all-binds"],
        &[("FAILPOINTS", "after-decision=return")],
    );
    assert_ne!(run.code, 0, "the crash point fired: {run:?}");
    assert_eq!(
        p.db("b_lite").state(),
        full("b_lite"),
        "the decider committed"
    );
    assert_eq!(
        all_or_nothing(&p),
        None,
        "a mix before recover: {:#?}",
        p.states()
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let seen = recover_until_clean(&p, elsewhere.path(), &config_dir);
    assert_eq!(all_or_nothing(&p), Some(true), "{seen}\n{:#?}", p.states());
    assert!(!elsewhere.path().join("var").exists());
}

// ---------------------------------------------------------------------------------------------
// Refused at configuration time
// ---------------------------------------------------------------------------------------------

#[test]
fn what_cannot_work_is_refused_before_anything_runs() {
    let mut p = Project::new();
    p.add_pg("a_pg");
    two_migrations_each(&mut p);
    let pg = p.db("a_pg").url();
    let config = p.path().join("config/default.toml");
    let cases = [
        (
            format!("lock_timeout_ms = 0\n[binds.a_pg]\nurl = \"{pg}\"\n"),
            "lock_timeout_ms = 0",
        ),
        (
            format!("[binds.a_pg]\nurl = \"{pg}\"\n[binds.mem]\nurl = \"sqlite://:memory:\"\n"),
            "in-memory",
        ),
        (
            format!("[binds.a_pg]\nurl = \"{pg}\"\n[binds.mem]\nurl = \"sqlite::memory:\"\n"),
            "in-memory",
        ),
        (
            format!(
                "[binds.a_pg]\nurl = \"{pg}\"\n[binds.again]\nurl = \"{}\"\n",
                pg.replace("127.0.0.1", "LOCALHOST")
            ),
            "binds `a_pg` and `again` name the same database",
        ),
        (
            format!(
                "[binds.a_pg]\nurl = \"{pg}\"\n[binds.l1]\nurl = \"sqlite://var/x.sqlite3\"\n[templates.t]\nurl = \"sqlite://var/../var/{{name}}.sqlite3\"\nnames = [\"x\"]\n"
            ),
            "binds `l1` and `t_x` name the same database",
        ),
    ];
    for (text, needle) in cases {
        fs::write(&config, &text).unwrap();
        for args in [vec!["upgrade", "--all-binds"], vec!["status"]] {
            let run = p.run(&args);
            run.expect(2);
            assert!(run.stderr.contains(needle), "{text}\n{}", run.stderr);
            assert!(run.stderr.contains("error: "), "{}", run.stderr);
        }
        assert_eq!(p.db("a_pg").state(), state(&[], &[]), "{text}");
    }
    assert!(!p.path().join("var").exists(), "no SQLite file was created");
}

// ---------------------------------------------------------------------------------------------
// Passwords never appear
// ---------------------------------------------------------------------------------------------

const HOSTILE: [&str; 8] = [
    "p%zz",
    "p@ss",
    "p:w",
    "p/w",
    "p?w=1",
    "%41",
    "\u{e9}t\u{e9}-\u{1f511}",
    "Plain-Secret-9",
];

const FORMS: [&str; 7] = [
    "postgres://u:{pw}@127.0.0.1:1/db",
    "postgresql://u:{pw}@127.0.0.1:1/db",
    "postgres://u@127.0.0.1:1/db?password={pw}",
    "postgres://u@127.0.0.1:1/db?PASSWORD={pw}",
    "postgres://u@127.0.0.1:1/db?sslmode=disable&sslpassword={pw}",
    "mysql://u:{pw}@127.0.0.1:1/db",
    "mysql://127.0.0.1:1/db?password={pw}",
];

const COMMANDS: [&[&str]; 11] = [
    &["status"],
    &["status", "--json"],
    &["check"],
    &["check", "--json"],
    &["upgrade", "--all-binds"],
    &["upgrade", "--all-binds", "--sql"],
    &["downgrade", "--all-binds"],
    &["history", "--bind", "x"],
    &["recover"],
    &["recover", "--json"],
    &["stamp", "--bind", "x", "base"],
];

/// Every way `password` could be written out: as typed, percent-decoded and percent-encoded.
fn forms_of(password: &str) -> Vec<String> {
    let mut decoded = Vec::new();
    let bytes = password.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                decoded.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    let encoded: String = password
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut forms = vec![password.to_string()];
    for f in [decoded, encoded] {
        // One or two characters ("A" for %41) are everywhere in any text.
        if f.chars().count() >= 3 && !forms.contains(&f) {
            forms.push(f);
        }
    }
    forms
}

fn assert_no_password(password: &str, what: &str, run: &Run) {
    for form in forms_of(password) {
        assert!(
            !run.stdout.contains(&form) && !run.stderr.contains(&form),
            "{what}: `{form}` appears\n--- stdout\n{}\n--- stderr\n{}",
            run.stdout,
            run.stderr
        );
    }
    assert!(
        !run.stderr.contains("panicked") && run.code != 101,
        "{what}: {run:?}"
    );
}

/// A project with a SQLite bind `main` and a bind `x` at `url` (unreachable: a closed port).
fn project_with(url_line: &str) -> Project {
    let p = Project::new();
    fs::create_dir_all(p.path().join("config")).unwrap();
    fs::create_dir_all(p.path().join("migrations/main/1_a")).unwrap();
    fs::write(
        p.path().join("migrations/main/1_a/up.sql"),
        "CREATE TABLE t (id INT);",
    )
    .unwrap();
    fs::write(
        p.path().join("migrations/main/1_a/down.sql"),
        "DROP TABLE t;",
    )
    .unwrap();
    fs::create_dir_all(p.path().join("migrations/x")).unwrap();
    fs::write(
        p.path().join("config/default.toml"),
        format!("lock_timeout_ms = 2000\n[binds.main]\nurl = \"sqlite://var/main.sqlite3\"\n[binds.x]\n{url_line}\n"),
    )
    .unwrap();
    p
}

#[test]
fn no_password_is_shown_by_any_command_for_any_url_form() {
    let trace = [("RUST_LOG", "trace")];
    for password in HOSTILE {
        for form in FORMS {
            let url = form.replace("{pw}", password);
            let p = project_with(&format!("url = \"{url}\""));
            for args in COMMANDS {
                let run = p.run_with(args, &trace);
                assert_no_password(password, &format!("{url} {args:?}"), &run);
                assert_ne!(
                    run.code, 0,
                    "{url} {args:?}: the bind is unreachable: {run:?}"
                );
            }
            // The same URL from the environment, and with its `__URL` suffix forgotten.
            let run = p.run_with(
                &["status"],
                &[("ORCHESTRATE__BINDS__X__URL", &url), trace[0]],
            );
            assert_no_password(
                password,
                &format!("{url} in ORCHESTRATE__BINDS__X__URL"),
                &run,
            );
            let run = p.run_with(&["status"], &[("ORCHESTRATE__BINDS__Y", &url), trace[0]]);
            run.expect(2);
            assert_no_password(password, &format!("{url} in ORCHESTRATE__BINDS__Y"), &run);
        }
        // A TOML syntax error quotes the line that holds the URL.
        for line in [
            format!("url = \"postgres://u:{password}@127.0.0.1:1/db\" junk"),
            format!("url = \"mysql://127.0.0.1:1/db?password={password}"),
        ] {
            let p = project_with(&line);
            let run = p.run_with(&["status"], &trace);
            run.expect(2);
            assert_no_password(password, &line, &run);
        }
    }
}

#[derive(QueryableByName)]
struct HbaFile {
    #[diesel(sql_type = Text)]
    hba_file: String,
}

#[test]
fn a_wrong_password_on_a_real_server_is_not_shown() {
    // A server of the test's own, where one role must give its password.
    let cluster = OwnCluster::start();
    let mut admin = PgConnection::establish(&cluster.url).unwrap();
    let hba =
        diesel::sql_query("SELECT setting AS hba_file FROM pg_settings WHERE name = 'hba_file'")
            .get_result::<HbaFile>(&mut admin)
            .unwrap()
            .hba_file;
    admin
        .batch_execute(&format!(
            "CREATE ROLE orchestrate_pw LOGIN PASSWORD 'Right-Secret-1';
             COPY (SELECT * FROM (VALUES
               ('host all orchestrate_pw 127.0.0.1/32 scram-sha-256'),
               ('local all all trust'),
               ('host all all 127.0.0.1/32 trust')) AS v(line)) TO '{hba}';
             SELECT pg_reload_conf();"
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let hostport = cluster
        .url
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let right = format!("postgres://orchestrate_pw:Right-Secret-1@{hostport}/postgres");
    for password in ["Wrong-Secret-2", "p%zz-Wrong", "Right-Secret-1"] {
        for url in [
            format!("postgres://orchestrate_pw:{password}@{hostport}/postgres"),
            format!("postgres://orchestrate_pw@{hostport}/postgres?password={password}"),
        ] {
            let p = project_with(&format!("url = \"{url}\""));
            for args in COMMANDS {
                let run = p.run_with(args, &[("RUST_LOG", "trace")]);
                assert_no_password(password, &format!("{url} {args:?}"), &run);
                if password.starts_with("Wrong") && args == ["status"] {
                    run.expect(2);
                    assert!(
                        run.stdout.contains("password authentication failed")
                            || run.stderr.contains("password authentication failed"),
                        "{run:?}"
                    );
                }
            }
        }
    }
    // The right password works, and is not shown either.
    let p = project_with(&format!("url = \"{right}\""));
    let run = p.run(&["status", "--json"]);
    run.expect(0);
    assert_no_password("Right-Secret-1", "status", &run);
    assert!(run.stdout.contains("orchestrate_pw:***@"), "{}", run.stdout);
}

// ---------------------------------------------------------------------------------------------
// Panics exit 3; SIGHUP is SIGTERM
// ---------------------------------------------------------------------------------------------

fn pg_and_sqlite() -> Project {
    let mut p = Project::new();
    p.config("decider = \"a_pg\"");
    p.add_pg("a_pg").add_pg("b_pg").add_sqlite("c_lite");
    two_migrations_each(&mut p);
    p
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn a_panic_exits_3_and_recover_settles_the_batch() {
    for (point, committed) in [("before-decision", false), ("after-decision", true)] {
        let p = pg_and_sqlite();
        let run = p.run_with(
            &["upgrade", "--all-binds"],
            &[("FAILPOINTS", &format!("{point}=panic(boom at {point})"))],
        );
        run.expect(3);
        assert!(
            run.stderr.contains(&format!(
                "orchestrate panicked (boom at {point}); if a batch was running, run `orchestrate recover`"
            )),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("RUST_BACKTRACE"), "{}", run.stderr);
        let cwd = p.path().to_path_buf();
        let seen = recover_until_clean(&p, &cwd, "config");
        assert_eq!(
            all_or_nothing(&p),
            Some(committed),
            "{point}: {seen}\n{:#?}",
            p.states()
        );
        p.run(&["upgrade", "--all-binds"]).expect(0);
        assert_eq!(all_or_nothing(&p), Some(true));
    }
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn sighup_before_the_decision_rolls_back_everything() {
    crate::crash::signal_before_the_decision(pg_and_sqlite(), "HUP");
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features orchestrate/failpoints (scripts/test.sh sets it)"
)]
fn sighup_after_the_decision_finishes_committing() {
    crate::crash::signal_after_the_decision(pg_and_sqlite(), "HUP");
}

/// Outside a project, or with paths that are wrong, the message says what was looked for and
/// what to do: no default.toml where it looked, a configuration folder that does not exist,
/// a `--config` that names a folder.
#[test]
fn wrong_configuration_paths_say_what_to_do() {
    let empty = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrate"))
            .args(args)
            .current_dir(empty.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (code, err) = run(&["status"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("config/default.toml does not exist") && err.contains("orchestrate init"),
        "{err}"
    );
    let (code, err) = run(&["status", "--config-dir", "/nonexistent/config"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("the configuration folder /nonexistent/config does not exist"),
        "{err}"
    );
    let folder = empty.path().display().to_string();
    let (code, err) = run(&["status", "--config", &folder]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is a folder, not a TOML file"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// `config`, templates' bind names, URL parts that mean nothing
// ---------------------------------------------------------------------------------------------

/// `config` prints every effective value and the layer it came from (default.toml, the
/// environment's file, a variable, or the default), with the URL's password redacted, as text
/// and as JSON that matches schemas/config.schema.json.
#[test]
fn config_shows_each_value_and_the_layer_it_came_from() {
    let mut p = Project::new();
    p.config("[templates.tenant]\nurl = \"sqlite://var/{name}.sqlite3\"\nnames = [\"tenant_acme\", \"globex\"]");
    p.add_sqlite("a_lite");
    fs::write(p.path().join("config/staging.toml"), "parallelism = 3\n").unwrap();
    let password = "Secr3t-7781";
    let env = [
        ("ORCHESTRATE_ENV", "staging"),
        (
            "ORCHESTRATE__BINDS__A_LITE__URL",
            "postgres://app:Secr3t-7781@127.0.0.1:1/x",
        ),
    ];
    let run = p.run_with(&["config", "--json"], &env);
    run.expect(0);
    assert!(!run.stdout.contains(password) && !run.stderr.contains(password));
    crate::cli::assert_matches_schema("config.schema.json", &run);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["lock_timeout_ms"]["value"], 5000);
    assert!(
        v["lock_timeout_ms"]["from"]
            .as_str()
            .unwrap()
            .ends_with("config/default.toml"),
        "{v}"
    );
    assert_eq!(v["parallelism"]["value"], 3);
    assert!(
        v["parallelism"]["from"]
            .as_str()
            .unwrap()
            .ends_with("config/staging.toml"),
        "{v}"
    );
    assert_eq!(
        v["decider"],
        serde_json::json!({"value": null, "from": "default"})
    );
    let binds: Vec<&str> = v["binds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    // A database whose name already starts with `tenant_` is not named `tenant_tenant_acme`.
    assert_eq!(binds, ["a_lite", "tenant_acme", "tenant_globex"], "{v}");
    let a = &v["binds"][0];
    assert_eq!(a["backend"], "postgres");
    assert_eq!(
        a["url"]["from"],
        "environment variable ORCHESTRATE__BINDS__A_LITE__URL"
    );
    assert!(a["url"]["value"].as_str().unwrap().contains("***"), "{a}");
    assert_eq!(a["migrations"]["from"], "default");
    assert_eq!(v["binds"][1]["template"], "tenant");
    assert!(v["binds"][1]["url"]["from"]
        .as_str()
        .unwrap()
        .ends_with("config/default.toml"));
    assert_eq!(
        v["templates"][0]["binds"],
        serde_json::json!(["tenant_acme", "tenant_globex"])
    );
    let text = p.run_with(&["config"], &env);
    text.expect(0);
    assert!(!text.stdout.contains(password) && !text.stderr.contains(password));
    for needle in [
        "from environment variable ORCHESTRATE__BINDS__A_LITE__URL",
        "config/staging.toml",
        "template tenant: 2 bind(s): tenant_acme, tenant_globex",
        "bind tenant_globex (sqlite, of template tenant)",
    ] {
        assert!(text.stdout.contains(needle), "{needle}\n{}", text.stdout);
    }
    // Each value's origin is spelled as in `layers` (absolute paths), whatever the folder.
    let layers: Vec<String> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(
        layers.contains(&v["parallelism"]["from"].as_str().unwrap().to_string()),
        "{v}"
    );
    assert_eq!(
        layers.last().unwrap(),
        "environment variables ORCHESTRATE__* (1 set)",
        "{v}"
    );
    // A configuration that cannot load is the same JSON refusal as for every command.
    let broken = p.run_with(&["config", "--json"], &[("ORCHESTRATE__PARALLELISM", "0")]);
    broken.expect(2);
    crate::cli::assert_matches_schema("config.schema.json", &broken);
}

/// A template chooses its binds' names (`bind_name`), `new --bind TEMPLATE` adds a migration
/// to the template's shared folder, and what cannot work is said: a pattern without `{name}`,
/// `discover` on SQLite, an unknown name.
#[test]
fn templates_name_their_binds_and_new_adds_to_their_folder() {
    let mut p = Project::new();
    p.config(
        "[templates.shard]\nurl = \"sqlite://var/shard_{name}.sqlite3\"\nnames = [\"eu\", \"us\"]\nbind_name = \"{name}_{template}\"",
    );
    p.add_sqlite("a_lite");
    let run = p.run(&["config", "--json"]);
    run.expect(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let names: Vec<&str> = v["binds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a_lite", "eu_shard", "us_shard"]);
    let new = p.run(&["new", "--bind", "shard", "create orders"]);
    new.expect(0);
    let created: Vec<String> = fs::read_dir(p.path().join("migrations/shard"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        created.len() == 1 && created[0].ends_with("_create_orders"),
        "{created:?}"
    );
    // The new (empty) migration is part of both of the template's chains.
    let status = p.run(&["status", "--bind", "eu_shard"]);
    assert!(
        status.stdout.contains("create_orders") || status.stderr.contains("create_orders"),
        "{}\n{}",
        status.stdout,
        status.stderr
    );
    let unknown = p.run(&["new", "--bind", "nobody", "x"]);
    unknown.expect(2);
    assert!(
        unknown.stderr.contains("no bind is named `nobody`"),
        "{}",
        unknown.stderr
    );
    let config = p.path().join("config/default.toml");
    let good = fs::read_to_string(&config).unwrap();
    for (change, needle) in [
        ("bind_name = \"{name}_{template}\"", "needs `{name}`"),
        ("names = [\"eu\", \"us\"]", "asks a PostgreSQL server"),
    ] {
        let replacement = if needle == "needs `{name}`" {
            "bind_name = \"fixed\"".to_string()
        } else {
            "discover = \"%\"".to_string()
        };
        fs::write(&config, good.replace(change, &replacement)).unwrap();
        let run = p.run(&["status"]);
        run.expect(2);
        assert!(run.stderr.contains(needle), "{}", run.stderr);
    }
    fs::write(&config, good).unwrap();
}

/// What a server URL carries besides a path (a user and password, a query, a fragment) means
/// nothing for `sqlite://`: refused (exit 2, nothing created, no password shown) rather than
/// turned into folder and file names; a `#fragment` on a server URL is refused too, since it
/// would reach the server inside a parameter.
#[test]
fn url_parts_that_mean_nothing_are_refused() {
    let mut p = Project::new();
    p.add_pg("a_pg");
    two_migrations_each(&mut p);
    let pg = p.db("a_pg").url();
    let config = p.path().join("config/default.toml");
    for (url, needle, secret) in [
        (
            "sqlite://app:Pw-44871@var/x.sqlite3".to_string(),
            "no user or password",
            "Pw-44871",
        ),
        (
            "sqlite://var/x.sqlite3?password=Zq-55123".to_string(),
            "no query string",
            "Zq-55123",
        ),
        ("sqlite://var/x.sqlite3#frag".to_string(), "no fragment", ""),
        (format!("{pg}#frag-9931"), "no `#fragment`", "frag-9931"),
    ] {
        // An example URL in a comment (as `orchestrate init` writes) makes no word a secret.
        fs::write(
            &config,
            format!("# url = \"postgres://user:password@host/db\"\n[binds.a_pg]\nurl = \"{pg}\"\n[binds.other]\nurl = \"{url}\"\n"),
        )
        .unwrap();
        for args in [
            &["upgrade", "--all-binds"][..],
            &["status"][..],
            &["config"][..],
        ] {
            let run = p.run(args);
            run.expect(2);
            assert!(run.stderr.contains(needle), "{url}: {}", run.stderr);
            if !secret.is_empty() {
                assert!(
                    !run.stderr.contains(secret) && !run.stdout.contains(secret),
                    "{url}: {}",
                    run.stderr
                );
            }
        }
        assert_eq!(p.db("a_pg").state(), state(&[], &[]), "{url}");
        assert!(!p.path().join("var").exists(), "{url}: nothing was created");
        assert!(!p.path().join("app:Pw-44871@var").exists());
    }
}

/// A SQLite bind whose file cannot be created (a file stands where its folder would be) is
/// refused before anything runs, exit 2, like any bind that cannot be opened; `check` says the
/// same.
#[test]
fn a_sqlite_file_that_cannot_be_created_is_refused_before_anything_runs() {
    let mut p = Project::new();
    p.add_pg("a_pg");
    two_migrations_each(&mut p);
    let pg = p.db("a_pg").url();
    fs::write(p.path().join("blocker"), "not a folder").unwrap();
    fs::write(
        p.path().join("config/default.toml"),
        format!("[binds.a_pg]\nurl = \"{pg}\"\n[binds.lite]\nurl = \"sqlite://blocker/sub/lite.sqlite3\"\n"),
    )
    .unwrap();
    p.migration(
        "lite",
        "1_x",
        "CREATE TABLE x (id INT);",
        Some("DROP TABLE x;"),
    );
    for args in [&["upgrade", "--all-binds"][..], &["check"][..]] {
        let run = p.run(args);
        run.expect(2);
        assert!(
            run.stderr
                .contains("bind `lite`: cannot create its SQLite database")
                && run.stderr.contains("blocker is a file, not a folder"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(p.db("a_pg").state(), state(&[], &[]));
}
