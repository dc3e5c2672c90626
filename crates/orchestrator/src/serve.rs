//! `orchestrate serve`: a small web application over the commands. It shows every
//! environment side by side (each bind's revision, pending migrations, drift, batches in
//! doubt, and the `diff` between neighbouring environments), a bind's history, and runs the
//! actions people press a button for: upgrade an environment, promote one environment to the
//! next, downgrade a bind one step, recover. The same reads and actions are a JSON API.
//!
//! Every read and action is the command itself, run in this process with its `--json` or
//! text output captured (`cli::run`): the page can do nothing the command line would refuse,
//! and says what the command says. Rules:
//! - read-only unless `ORCHESTRATE_SERVE_TOKEN` is set; an action needs that token (a browser
//!   session opened with it, whose forms carry a CSRF token; or `Authorization: Bearer`);
//! - one action at a time per environment (a second is refused, 409, while one runs), with
//!   live progress and the outcome;
//! - a protected environment (`protected = true`) needs its name typed to confirm;
//! - every action is appended to an audit log (who, what, when, from where, outcome);
//! - URLs are shown redacted and every text passes [`redact_text`]: no password reaches a page
//!   or a response;
//! - it listens on 127.0.0.1 unless told otherwise.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{ConnectInfo, Form, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use orchestrate_driver::{redact_text, register_secret};
use serde_json::{json, Value};

use crate::cli::{Cli, ServeArgs};
use crate::commands::{Output, Refusal};
use crate::exit;
use crate::settings::Sources;

/// The variable holding the access token.
pub const TOKEN_VARIABLE: &str = "ORCHESTRATE_SERVE_TOKEN";
const SESSION_COOKIE: &str = "orchestrate_session";

/// What a button does.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Action {
    Upgrade,
    Recover,
    /// One step down on one bind.
    Downgrade {
        bind: String,
    },
    /// Bring this environment to the revisions of `from`.
    Promote {
        from: String,
    },
}

impl Action {
    fn describe(&self, env: &str) -> String {
        match self {
            Action::Upgrade => format!("upgrade every bind of `{env}` to its head"),
            Action::Recover => format!("recover `{env}` (settle batches in doubt)"),
            Action::Downgrade { bind } => format!("downgrade bind `{bind}` of `{env}` one step"),
            Action::Promote { from } => format!(
                "promote `{from}` to `{env}`: bring every bind of `{env}` to the revision it has in `{from}`"
            ),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Action::Upgrade => "upgrade",
            Action::Recover => "recover",
            Action::Downgrade { .. } => "downgrade",
            Action::Promote { .. } => "promote",
        }
    }

    /// The command line this action is.
    fn argv(&self, base: &[String], env: &str) -> Vec<String> {
        let mut argv = vec!["orchestrate".to_string()];
        argv.extend(base.iter().cloned());
        // Confirmed on the page (the environment's name typed where it is protected).
        argv.push("--yes".into());
        match self {
            Action::Upgrade => argv.extend([
                "--env".into(),
                env.into(),
                "upgrade".into(),
                "--all-binds".into(),
            ]),
            Action::Recover => argv.extend(["--env".into(), env.into(), "recover".into()]),
            Action::Downgrade { bind } => argv.extend([
                "--env".into(),
                env.into(),
                "downgrade".into(),
                "--bind".into(),
                bind.clone(),
            ]),
            Action::Promote { from } => argv.extend([
                "promote".into(),
                "--from".into(),
                from.clone(),
                "--to".into(),
                env.into(),
            ]),
        }
        argv
    }
}

/// One action run on an environment: its progress and, once it ended, its outcome.
struct Run {
    what: String,
    who: String,
    started: SystemTime,
    log: Arc<Mutex<String>>,
    /// The exit code, once it ended.
    code: Option<i32>,
}

/// One environment as last read.
#[derive(Clone, Default)]
struct EnvRead {
    /// `status --json` (or its refusal).
    status: Value,
    protected: bool,
}

#[derive(Clone, Default)]
struct Overview {
    envs: BTreeMap<String, EnvRead>,
    /// `diff A B --json` for each pair of neighbours.
    diffs: Vec<Value>,
    read_at: Option<SystemTime>,
    took: Duration,
}

struct Session {
    who: String,
    csrf: String,
    opened: Instant,
}

/// How long a browser session lasts, and how many are kept (the oldest goes first).
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
const MAX_SESSIONS: usize = 256;
/// The longest name accepted for the audit log.
const MAX_WHO: usize = 64;

/// A name for the audit log: 1 to 64 printable characters, or why not.
fn valid_who(who: &str) -> Result<&str, String> {
    let who = who.trim();
    if who.is_empty() || who.chars().count() > MAX_WHO || who.chars().any(char::is_control) {
        return Err(format!(
            "a name for the audit log is 1 to {MAX_WHO} printable characters"
        ));
    }
    Ok(who)
}

struct App {
    /// The global options every command gets (`--config-dir`, `--config`).
    base: Vec<String>,
    sources: Sources,
    environments: Vec<String>,
    token: Option<String>,
    sessions: Mutex<HashMap<String, Session>>,
    runs: Mutex<HashMap<String, Run>>,
    overview: RwLock<Overview>,
    /// When the read under way began (`None` between reads).
    reading_since: Mutex<Option<SystemTime>>,
    audit_log: PathBuf,
    /// Seconds between reads (the overview reloads itself as often).
    refresh_seconds: u64,
    /// The `Host` headers answered, when listening on a loopback address (a page of another
    /// site that resolves its name to 127.0.0.1 sends its own name: DNS rebinding); `None`
    /// when listening elsewhere, behind a proxy that sets its own.
    hosts: Option<Vec<String>>,
}

/// A writer that appends to an action's log.
struct LogWriter(Arc<Mutex<String>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn random_hex() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_text(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

impl App {
    /// Runs a command of this tool in this process; its exit code and what it printed
    /// (standard output, then standard error), redacted.
    fn command(&self, args: &[&str]) -> (i32, String, String) {
        let mut argv = vec!["orchestrate".to_string()];
        argv.extend(self.base.iter().cloned());
        argv.extend(args.iter().map(|a| a.to_string()));
        let cli = match Cli::try_parse_from(&argv) {
            Ok(cli) => cli,
            Err(e) => return (exit::INVALID, String::new(), e.to_string()),
        };
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            crate::cli::run(cli, &mut out, &mut err)
        }))
        .unwrap_or(exit::ATTENTION);
        (
            code,
            redact_text(&String::from_utf8_lossy(&out)),
            redact_text(&String::from_utf8_lossy(&err)),
        )
    }

    /// A command's `--json` output, or an `error` object when it printed none.
    fn command_json(&self, args: &[&str]) -> Value {
        let (code, out, err) = self.command(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|_| json!({ "error": { "code": code, "message": err.trim() } }))
    }

    /// Reads every environment and compares neighbours.
    fn refresh(&self) {
        let started = Instant::now();
        *self.reading_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
        let mut overview = Overview::default();
        for env in &self.environments {
            let status = self.command_json(&["--env", env, "status", "--json"]);
            let protected = self.protected(env);
            overview
                .envs
                .insert(env.clone(), EnvRead { status, protected });
        }
        for pair in self.environments.windows(2) {
            overview
                .diffs
                .push(self.command_json(&["diff", &pair[0], &pair[1], "--json"]));
        }
        overview.read_at = Some(SystemTime::now());
        overview.took = started.elapsed();
        *self.overview.write().unwrap_or_else(|e| e.into_inner()) = overview;
        *self.reading_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// When the read under way began, once it has taken longer than two refreshes (and 20 s):
    /// then what is shown is older than it looks, and a database may not be answering.
    fn overdue(&self) -> Option<(SystemTime, u64)> {
        let since = (*self.reading_since.lock().unwrap_or_else(|e| e.into_inner()))?;
        let waited = since.elapsed().unwrap_or_default().as_secs();
        (waited > (2 * self.refresh_seconds).max(20)).then_some((since, waited))
    }

    /// Whether `env` is protected, as the command line decides it (a file that says so
    /// cannot be undone by a later layer). A configuration that cannot be read counts as
    /// protected: the command will refuse it anyway, and nothing is lost by asking.
    fn protected(&self, env: &str) -> bool {
        let sources = Sources {
            env_name: Some(env.to_string()),
            ..self.sources.clone()
        };
        crate::cli::files_protect(&sources)
            || crate::settings::Settings::load(&sources).map_or(true, |s| s.protected)
    }

    fn audit(&self, entry: Value) {
        // Each value is redacted before it is written as JSON: redacting the line would let
        // a value's quotes be taken for a secret's end and break the JSON.
        let redacted: serde_json::Map<String, Value> = entry
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => Value::String(redact_text(s)),
                    other => other.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        let line = Value::Object(redacted).to_string();
        if let Some(dir) = self.audit_log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.audit_log)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            tracing::error!(file = %self.audit_log.display(), error = %e, "cannot write the audit log");
        }
    }

    fn check_token(&self, given: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|t| constant_time_eq::constant_time_eq(t.as_bytes(), given.as_bytes()))
    }

    /// Starts `action` on `env` in the background, unless one runs there already.
    fn start(
        self: &Arc<Self>,
        env: &str,
        action: Action,
        who: &str,
        peer: &str,
    ) -> Result<(), (StatusCode, String)> {
        let Some(at) = self.environments.iter().position(|e| e == env) else {
            return Err((
                StatusCode::NOT_FOUND,
                format!("no environment `{env}` is served"),
            ));
        };
        // The environments an action needs to itself: a promotion reads its source while it
        // writes its target, so neither may change meanwhile.
        let mut envs = vec![env.to_string()];
        if let Action::Promote { from } = &action {
            let previous = at.checked_sub(1).map(|i| self.environments[i].as_str());
            if previous != Some(from.as_str()) {
                return Err((
                    StatusCode::BAD_REQUEST,
                    match previous {
                        Some(p) => format!("`{env}` is promoted from the environment before it, `{p}`, not from `{from}`"),
                        None => format!("`{env}` is the first environment served: nothing comes before it to promote"),
                    },
                ));
            }
            envs.push(from.clone());
        }
        if crate::signals::interrupted() {
            return Err((
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is stopping: no new action starts".into(),
            ));
        }
        let what = action.describe(env);
        let log = Arc::new(Mutex::new(String::new()));
        {
            let mut runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
            for e in &envs {
                if let Some(run) = runs.get(e).filter(|r| r.code.is_none()) {
                    return Err((
                        StatusCode::CONFLICT,
                        format!(
                            "refused: {} is running on `{e}` (started by {} at {}); one action at a time per environment",
                            run.what,
                            run.who,
                            now_text(run.started)
                        ),
                    ));
                }
            }
            for e in &envs {
                runs.insert(
                    e.clone(),
                    Run {
                        what: what.clone(),
                        who: who.to_string(),
                        started: SystemTime::now(),
                        log: log.clone(),
                        code: None,
                    },
                );
            }
        }
        self.audit(json!({
            "at": now_text(SystemTime::now()), "who": who, "from": peer,
            "environment": env, "action": action.name(), "what": what, "outcome": "started",
        }));
        let argv = action.argv(&self.base, env);
        let app = self.clone();
        let env = env.to_string();
        let who = who.to_string();
        let peer = peer.to_string();
        std::thread::spawn(move || {
            let code = match Cli::try_parse_from(&argv) {
                Ok(cli) => {
                    let mut out = LogWriter(log.clone());
                    let mut err = LogWriter(log.clone());
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        crate::cli::run(cli, &mut out, &mut err)
                    }))
                    .unwrap_or(exit::ATTENTION)
                }
                Err(e) => {
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&e.to_string());
                    exit::INVALID
                }
            };
            app.audit(json!({
                "at": now_text(SystemTime::now()), "who": who, "from": peer,
                "environment": env, "action": action.name(), "what": action.describe(&env),
                "outcome": outcome_word(code), "exit_code": code,
            }));
            // Read again before the action counts as ended: whoever waits for the end then
            // reads the overview as the action left it.
            app.refresh();
            let mut runs = app.runs.lock().unwrap_or_else(|e| e.into_inner());
            for e in &envs {
                if let Some(run) = runs.get_mut(e) {
                    run.code = Some(code);
                }
            }
        });
        Ok(())
    }

    fn run_json(&self, env: &str) -> Value {
        let runs = self.runs.lock().unwrap_or_else(|e| e.into_inner());
        match runs.get(env) {
            None => json!({ "environment": env, "running": false, "action": null }),
            Some(run) => json!({
                "environment": env,
                "running": run.code.is_none(),
                "action": run.what,
                "who": run.who,
                "started_at": now_text(run.started),
                "exit_code": run.code,
                "outcome": run.code.map(outcome_word),
                "log": redact_text(&run.log.lock().unwrap_or_else(|e| e.into_inner())),
            }),
        }
    }

    fn session(&self, headers: &HeaderMap) -> Option<(String, String, String)> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.opened.elapsed() < SESSION_LIFETIME);
        sessions
            .get(&id)
            .map(|s| (id.clone(), s.who.clone(), s.csrf.clone()))
    }
}

fn outcome_word(code: i32) -> &'static str {
    match code {
        exit::OK => "done",
        exit::FAILED => "failed, nothing changed",
        exit::INVALID => "refused, nothing changed",
        _ => "needs attention",
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// `orchestrate serve`.
pub fn serve(base_sources: &Sources, base: Vec<String>, args: &ServeArgs, o: &mut Output) -> i32 {
    let mut environments = args.environments.clone();
    if environments.is_empty() {
        environments = discover(base_sources);
    }
    if environments.is_empty() {
        return o.refuse(Refusal::argument(format!(
            "no environment to serve: name them (`orchestrate serve staging production`), or add config/<ENV>.toml files to {}",
            base_sources.config_dir.display()
        )));
    }
    let token = std::env::var(TOKEN_VARIABLE).ok().filter(|t| !t.is_empty());
    if let Some(t) = &token {
        if t.len() < 16 {
            return o.refuse(Refusal::argument(format!(
                "{TOKEN_VARIABLE} is shorter than 16 characters; give a long random token (for example `openssl rand -hex 24`)"
            )));
        }
        register_secret(t);
    }
    let listen: SocketAddr = match args.listen.parse() {
        Ok(a) => a,
        Err(e) => {
            return o.refuse(Refusal::argument(format!(
                "--listen {}: {e}; give an address and port such as 127.0.0.1:8470",
                args.listen
            )))
        }
    };
    let audit_log = if args.audit_log.is_absolute() {
        args.audit_log.clone()
    } else {
        base_sources.project_root().join(&args.audit_log)
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            return o.refuse(Refusal::of(
                crate::commands::output::Reason::Other,
                vec![format!("cannot start the server's runtime: {e}")],
                None,
            ))
        }
    };
    let listener = match runtime.block_on(tokio::net::TcpListener::bind(listen)) {
        Ok(l) => l,
        Err(e) => {
            return o.refuse(Refusal::argument(format!(
                "cannot listen on {listen}: {e}; give another address with --listen"
            )))
        }
    };
    let bound = listener.local_addr().map_or(listen, |a| a);
    let hosts = bound.ip().is_loopback().then(|| {
        let port = bound.port();
        vec![
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ]
    });
    let app = Arc::new(App {
        base,
        sources: base_sources.clone(),
        environments,
        token,
        sessions: Mutex::new(HashMap::new()),
        runs: Mutex::new(HashMap::new()),
        overview: RwLock::new(Overview::default()),
        reading_since: Mutex::new(None),
        audit_log,
        refresh_seconds: args.refresh.max(1),
        hosts,
    });
    let _ = writeln!(
        o.out,
        "orchestrate serve: listening on http://{bound}/ ({}), environments: {}",
        if app.token.is_some() {
            "actions need the token"
        } else {
            "read-only: set ORCHESTRATE_SERVE_TOKEN to allow actions"
        },
        app.environments.join(", ")
    );
    let _ = o.out.flush();
    // A bind not read for three refreshes (removed from the configuration, a tenant gone)
    // gives its kept connection back.
    crate::inspect::keep_read_connections(
        args.pool_per_server,
        Duration::from_secs(args.refresh.max(1) * 3).max(Duration::from_secs(60)),
    );
    app.refresh();
    let refresher = app.clone();
    let every = Duration::from_secs(args.refresh.max(1));
    std::thread::spawn(move || loop {
        std::thread::sleep(every);
        refresher.refresh();
    });
    let router = Router::new()
        .route("/", get(overview_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/env/{env}/bind/{bind}", get(history_page))
        .route("/env/{env}/confirm/{action}", get(confirm_page))
        .route("/env/{env}/run/{action}", post(start_from_form))
        .route("/env/{env}/action", get(action_page))
        .route("/api/overview", get(api_overview))
        .route("/api/env/{env}/status", get(api_status))
        .route("/api/env/{env}/bind/{bind}/history", get(api_history))
        .route("/api/env/{env}/action", get(api_action))
        .route("/api/env/{env}/{action}", post(api_start))
        .layer(axum::middleware::from_fn_with_state(app.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(app.clone());
    let stopping = app.clone();
    let served = runtime.block_on(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            // On SIGINT / SIGTERM: stop once no action runs (a running one stops at its
            // next safe point, as on the command line).
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let idle = stopping
                    .runs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .all(|r| r.code.is_some());
                if crate::signals::interrupted() && idle {
                    break;
                }
            }
        })
        .await
    });
    match served {
        Ok(()) => exit::OK,
        Err(e) => {
            let _ = writeln!(o.err, "orchestrate serve: {e}");
            exit::ATTENTION
        }
    }
}

/// Before every request: the `Host` it names, when listening on a loopback address. After:
/// headers that keep the pages out of other sites' frames and scripts.
async fn guard(
    State(app): State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(hosts) = &app.hosts {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                format!("this server answers for {} only", hosts.join(", ")),
            )
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, axum::http::HeaderValue::from_static(value));
    }
    response
}

/// The environments of `config/*.toml` other than `default.toml`, in name order.
fn discover(sources: &Sources) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(&sources.config_dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().to_string();
                    name.strip_suffix(".toml")
                        .filter(|n| *n != "default")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

// ---- pages ----

const STYLE: &str = "
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d232a; background: #f7f8fa; }
h1 { font-size: 1.4rem; margin: 0 0 .3rem 0; }
.meta { color: #5b6570; font-size: .85rem; margin-bottom: 1rem; }
.envs { display: grid; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); gap: 1rem; }
.env { background: #fff; border: 1px solid #d8dde3; border-radius: 6px; padding: .8rem; }
.env h2 { font-size: 1.1rem; margin: 0 0 .5rem 0; display: flex; gap: .5rem; align-items: center; }
table { border-collapse: collapse; width: 100%; font-size: .85rem; }
td, th { text-align: left; padding: .25rem .35rem; border-bottom: 1px solid #eef0f3; vertical-align: top; }
.badge { display: inline-block; padding: .05rem .4rem; border-radius: 3px; font-size: .75rem; color: #fff; }
.ok { background: #2f8a4c; } .pending { background: #c98a12; } .drift { background: #c0392b; }
.doubt { background: #7b3fa8; } .error { background: #6b7280; } .protected { background: #8a2f2f; }
.grid { display: flex; flex-wrap: wrap; gap: 2px; margin: .4rem 0; }
.cell { width: 12px; height: 12px; border-radius: 2px; display: inline-block; }
.diff { background: #fff; border: 1px solid #d8dde3; border-radius: 6px; padding: .6rem .8rem; margin-top: 1rem; font-size: .85rem; }
.overdue { border-color: #c0392b; color: #8a1f12; }
form.inline { display: inline; }
button { font-size: .8rem; padding: .2rem .6rem; cursor: pointer; }
pre { background: #11161c; color: #e6e6e6; padding: .8rem; border-radius: 6px; overflow-x: auto; font-size: .8rem; white-space: pre-wrap; }
.outcome { font-weight: 600; font-size: 1.05rem; margin: .6rem 0; }
";

fn page(title: &str, who: Option<&str>, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(seconds) = refresh {
                    meta http-equiv="refresh" content=(seconds);
                }
                title { (title) " · orchestrate" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                div.meta {
                    a href="/" { "overview" } " · "
                    @if let Some(who) = who {
                        "signed in as " strong { (who) } " "
                        form.inline method="post" action="/logout" { button type="submit" { "sign out" } }
                    } @else {
                        a href="/login" { "sign in to act" }
                    }
                }
                (body)
            }
        }
    }
}

/// A bind's state word and badge class.
fn bind_state(bind: &Value) -> (&'static str, &'static str) {
    let non_empty = |k: &str| bind[k].as_array().is_some_and(|a| !a.is_empty());
    if non_empty("in_doubt") || non_empty("unsettled") {
        ("in doubt", "doubt")
    } else if non_empty("errors") || !bind["chain_error"].is_null() {
        ("unreadable", "error")
    } else if non_empty("problems") {
        ("drift", "drift")
    } else if non_empty("pending") {
        ("pending", "pending")
    } else {
        ("up to date", "ok")
    }
}

fn text_list(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

async fn overview_page(State(app): State<Arc<App>>, headers: HeaderMap) -> Markup {
    let session = app.session(&headers);
    let overview = app
        .overview
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let can_act = app.token.is_some() && session.is_some();
    let body = html! {
        h1 { "Environments" }
        div.meta {
            @if let Some(at) = overview.read_at {
                "read at " (now_text(at)) " in " (overview.took.as_millis()) " ms; the page reloads every " (app.refresh_seconds) " s"
                @if let Some(p) = crate::inspect::read_pool_stats() {
                    "; " (p.pooled_binds) " binds keep a read connection (" (p.open) " open), " (p.reused) " reads reused one, " (p.opened) " opened their own"
                }
            }
            @if app.token.is_none() { " · read-only (no access token configured)" }
        }
        @if let Some((since, waited)) = app.overdue() {
            div.diff.overdue {
                strong { "Out of date: " }
                "a read of every bind began at " (now_text(since)) " and has not ended after " (waited) " s (a database is slow or does not answer). What is shown below is from the last complete read."
            }
        }
        div.envs {
            @for env in &app.environments {
                @let read = overview.envs.get(env).cloned().unwrap_or_default();
                div.env id=(format!("env-{env}")) {
                    h2 {
                        (env)
                        @if read.protected { span.badge.protected { "protected" } }
                        @if let Some(run) = running_word(&app, env) {
                            a href=(format!("/env/{env}/action")) { span.badge.pending { (run) } }
                        }
                    }
                    @if let Some(error) = read.status.get("error") {
                        p { span.badge.error { "cannot read" } " " (error["message"].as_str().unwrap_or("")) }
                    }
                    @let binds = read.status["binds"].as_array().cloned().unwrap_or_default();
                    @if binds.len() > 24 {
                        (grid(env, &binds))
                    } @else {
                        table {
                            tr { th { "bind" } th { "revision" } th { "state" } @if can_act { th {} } }
                            @for b in &binds {
                                @let (word, class) = bind_state(b);
                                @let name = b["bind"].as_str().unwrap_or("");
                                tr.bind data-bind=(name) {
                                    td { a href=(format!("/env/{env}/bind/{name}")) { (name) } br; small { (b["backend"].as_str().unwrap_or("")) } }
                                    td { (b["current_name"].as_str().unwrap_or("(none)")) }
                                    td {
                                        span class=(format!("badge {class}")) { (word) }
                                        @let pending = text_list(&b["pending"]).len();
                                        @if pending > 0 { " " (pending) " pending" }
                                        @for p in text_list(&b["problems"]) { br; small { (p) } }
                                        @for e in text_list(&b["errors"]) { br; small { (e) } }
                                        @for d in b["in_doubt"].as_array().cloned().unwrap_or_default() {
                                            br; small { "in doubt: batch " (d["batch_id"].as_str().unwrap_or("")) ", decision " (d["decision"].as_str().unwrap_or("")) }
                                        }
                                        @for u in text_list(&b["unsettled"]) { br; small { (u) } }
                                    }
                                    @if can_act {
                                        td {
                                            @if b["current"].is_string() {
                                                a href=(format!("/env/{env}/confirm/downgrade?bind={name}")) { "downgrade one step" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if can_act {
                        p {
                            a href=(format!("/env/{env}/confirm/upgrade")) { button type="button" { "upgrade " (env) } } " "
                            a href=(format!("/env/{env}/confirm/recover")) { button type="button" { "recover " (env) } } " "
                            @if let Some(i) = app.environments.iter().position(|e| e == env).filter(|i| *i > 0) {
                                @let from = &app.environments[i - 1];
                                a href=(format!("/env/{env}/confirm/promote?from={from}")) { button type="button" { "promote " (from) " to " (env) } }
                            }
                        }
                    }
                }
            }
        }
        @for d in &overview.diffs {
            (diff_box(d))
        }
    };
    page(
        "overview",
        session.as_ref().map(|s| s.1.as_str()),
        Some(app.refresh_seconds.min(u32::MAX as u64) as u32),
        body,
    )
}

fn running_word(app: &App, env: &str) -> Option<String> {
    let runs = app.runs.lock().unwrap_or_else(|e| e.into_inner());
    runs.get(env)
        .filter(|r| r.code.is_none())
        .map(|r| format!("running: {}", r.what))
}

/// Hundreds of binds (a template's databases): one coloured cell each.
fn grid(env: &str, binds: &[Value]) -> Markup {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for b in binds {
        *counts.entry(bind_state(b).0).or_default() += 1;
    }
    html! {
        p {
            (binds.len()) " binds: "
            @for (word, n) in &counts { (n) " " (word) "; " }
        }
        div.grid {
            @for b in binds {
                @let (word, class) = bind_state(b);
                @let name = b["bind"].as_str().unwrap_or("");
                a href=(format!("/env/{env}/bind/{name}")) title=(format!("{name}: {word}, at {}", b["current_name"].as_str().unwrap_or("(none)"))) {
                    span class=(format!("cell {class}")) {}
                }
            }
        }
    }
}

fn diff_box(d: &Value) -> Markup {
    let from = d["from"].as_str().unwrap_or("?");
    let to = d["to"].as_str().unwrap_or("?");
    let differing: Vec<&Value> = d["binds"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|b| {
                    [
                        "applied_only_in_from",
                        "applied_only_in_to",
                        "checksum_differs",
                        "in_doubt_from",
                        "in_doubt_to",
                        "drift_from",
                        "drift_to",
                        "errors",
                    ]
                    .iter()
                    .any(|k| b[*k].as_array().is_some_and(|x| !x.is_empty()))
                        || b["only_in"].is_string()
                })
                .collect()
        })
        .unwrap_or_default();
    html! {
        div.diff {
            strong { (from) " → " (to) ": " }
            @if let Some(e) = d.get("error") {
                "cannot compare: " (e["message"].as_str().unwrap_or(""))
            } @else if d["agree"].as_bool() == Some(true) {
                span.badge.ok { "agree" }
            } @else {
                span.badge.pending { (differing.len()) " bind(s) differ" }
                ul {
                    @for b in &differing {
                        li {
                            (b["bind"].as_str().unwrap_or("")) ": "
                            @if let Some(side) = b["only_in"].as_str() { "configured in " (side) " only; " }
                            @let only_from = text_list(&b["applied_only_in_from"]);
                            @if !only_from.is_empty() { "applied in " (from) " only: " (only_from.join(", ")) "; " }
                            @let only_to = text_list(&b["applied_only_in_to"]);
                            @if !only_to.is_empty() { "applied in " (to) " only: " (only_to.join(", ")) "; " }
                            @let sums = text_list(&b["checksum_differs"]);
                            @if !sums.is_empty() { "different up.sql: " (sums.join(", ")) "; " }
                            @for x in text_list(&b["in_doubt_from"]).iter().chain(text_list(&b["in_doubt_to"]).iter()) { "in doubt: " (x) "; " }
                            @for x in text_list(&b["drift_from"]).iter().chain(text_list(&b["drift_to"]).iter()) { "drift: " (x) "; " }
                            @for x in text_list(&b["errors"]) { (x) "; " }
                        }
                    }
                }
            }
        }
    }
}

/// A command's `--json` output, run off the async threads (a read connects to every bind).
async fn read_json(app: &Arc<App>, args: Vec<String>) -> Value {
    let reader = app.clone();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        reader.command_json(&args)
    })
    .await
    .unwrap_or_else(|e| json!({ "error": { "message": e.to_string() } }))
}

/// The API's answer for an environment that is not served.
fn not_served(env: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": format!("no environment `{env}` is served") })),
    )
        .into_response()
}

async fn history_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((env, bind)): Path<(String, String)>,
) -> Response {
    if !app.environments.contains(&env) {
        return (
            StatusCode::NOT_FOUND,
            format!("no environment `{env}` is served"),
        )
            .into_response();
    }
    let history = read_json(
        &app,
        vec![
            "--env".into(),
            env.clone(),
            "history".into(),
            "--bind".into(),
            bind.clone(),
            "--json".into(),
        ],
    )
    .await;
    let session = app.session(&headers);
    let body = html! {
        h1 { "Bind " (bind) " in " (env) }
        @if let Some(e) = history.get("error") {
            p { span.badge.error { "cannot read" } " " (e["message"].as_str().unwrap_or("")) }
        }
        h2 { "Migrations" }
        table {
            tr { th { "version" } th { "name" } th { "state" } th { "batch" } th { "applied at" } }
            @for m in history["migrations"].as_array().cloned().unwrap_or_default() {
                tr {
                    td { (m["version"].as_str().unwrap_or("")) }
                    td { (m["name"].as_str().unwrap_or("")) }
                    td { (m["state"].as_str().map_or_else(|| m["state"].to_string(), str::to_string)) }
                    td { (m["batch_id"].as_str().unwrap_or("")) }
                    td { (m["applied_at"].as_str().unwrap_or("")) }
                }
            }
        }
        h2 { "History (batch, direction, time)" }
        table {
            tr { th { "batch" } th { "direction" } th { "migration" } th { "at" } }
            @for s in history["steps"].as_array().cloned().unwrap_or_default().iter().rev() {
                tr {
                    td { (s["batch_id"].as_str().unwrap_or("")) }
                    td { (s["direction"].as_str().unwrap_or("")) }
                    td { (s["name"].as_str().unwrap_or("")) }
                    td { (s["at"].as_str().unwrap_or("")) }
                }
            }
        }
    };
    page(&bind, session.as_ref().map(|s| s.1.as_str()), None, body).into_response()
}

async fn login_page(State(app): State<Arc<App>>) -> Markup {
    let body = html! {
        h1 { "Sign in" }
        @if app.token.is_none() {
            p { "This server is read-only: no access token is configured (" code { (TOKEN_VARIABLE) } ")." }
        } @else {
            form method="post" action="/login" {
                p { label { "Your name (for the audit log) " input type="text" name="who" required; } }
                p { label { "Access token " input type="password" name="token" required; } }
                button type="submit" { "sign in" }
            }
        }
    };
    page("sign in", None, None, body)
}

async fn login(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let token = form.get("token").map(String::as_str).unwrap_or("");
    let who = match valid_who(form.get("who").map(String::as_str).unwrap_or("")) {
        Ok(w) => w,
        Err(e) => {
            app.audit(json!({
                "at": now_text(SystemTime::now()), "from": peer.to_string(),
                "action": "sign in", "outcome": format!("refused: {e}"),
            }));
            return (StatusCode::BAD_REQUEST, e).into_response();
        }
    };
    if !app.check_token(token) {
        app.audit(json!({
            "at": now_text(SystemTime::now()), "who": who, "from": peer.to_string(),
            "action": "sign in", "outcome": "refused: wrong token",
        }));
        return (
            StatusCode::UNAUTHORIZED,
            page(
                "sign in",
                None,
                None,
                html! { h1 { "Sign in refused" } p { "Wrong token, or no name given. " a href="/login" { "Try again" } } },
            ),
        )
            .into_response();
    }
    let id = random_hex();
    {
        let mut sessions = app.sessions.lock().unwrap_or_else(|e| e.into_inner());
        while sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.opened)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(
            id.clone(),
            Session {
                who: who.to_string(),
                csrf: random_hex(),
                opened: Instant::now(),
            },
        );
    }
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some((id, _, _)) = app.session(&headers) {
        app.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
    (
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

fn action_from(name: &str, params: &HashMap<String, String>) -> Result<Action, String> {
    let param = |k: &str| {
        params
            .get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| format!("`{name}` needs `{k}`"))
    };
    match name {
        "upgrade" => Ok(Action::Upgrade),
        "recover" => Ok(Action::Recover),
        "downgrade" => Ok(Action::Downgrade {
            bind: param("bind")?,
        }),
        "promote" => Ok(Action::Promote {
            from: param("from")?,
        }),
        other => Err(format!(
            "no action `{other}`: upgrade, recover, downgrade (with bind) or promote (with from)"
        )),
    }
}

async fn confirm_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((env, name)): Path<(String, String)>,
    axum::extract::Query(params): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let Some((_, who, csrf)) = app.session(&headers).filter(|_| app.token.is_some()) else {
        return Redirect::to("/login").into_response();
    };
    let action = match action_from(&name, &params) {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    let protected = app
        .overview
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .envs
        .get(&env)
        .is_some_and(|r| r.protected);
    let body = html! {
        h1 { "Confirm" }
        p.outcome { (action.describe(&env)) }
        form method="post" action=(format!("/env/{env}/run/{name}")) {
            input type="hidden" name="csrf" value=(csrf);
            @for (k, v) in &params { input type="hidden" name=(k) value=(v); }
            @if protected {
                p { span.badge.protected { "protected" } " Type the environment's name, " strong { (env) } ", to confirm: "
                    input type="text" name="confirm" autocomplete="off" required; }
            }
            button #confirm type="submit" { "yes, " (action.name()) }
            " " a href="/" { "cancel" }
        }
    };
    page("confirm", Some(&who), None, body).into_response()
}

async fn start_from_form(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((env, name)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if app.token.is_none() {
        return (
            StatusCode::FORBIDDEN,
            "read-only: no access token is configured",
        )
            .into_response();
    }
    let Some((_, who, csrf)) = app.session(&headers) else {
        app.audit(json!({
            "at": now_text(SystemTime::now()), "from": peer.to_string(),
            "environment": env, "action": name, "outcome": "refused: not signed in",
        }));
        return (StatusCode::UNAUTHORIZED, "sign in first").into_response();
    };
    let given = form.get("csrf").map(String::as_str).unwrap_or("");
    if !constant_time_eq::constant_time_eq(given.as_bytes(), csrf.as_bytes()) {
        app.audit(json!({
            "at": now_text(SystemTime::now()), "who": who, "from": peer.to_string(),
            "environment": env, "action": name, "outcome": "refused: bad CSRF token",
        }));
        return (
            StatusCode::FORBIDDEN,
            "refused: the form's CSRF token does not match your session",
        )
            .into_response();
    }
    start_checked(&app, &env, &name, &form, &who, &peer.to_string(), false)
}

/// Starts an action after authentication: checks the confirmation a protected environment
/// needs, then starts it. `api`: answer in JSON.
fn start_checked(
    app: &Arc<App>,
    env: &str,
    name: &str,
    params: &HashMap<String, String>,
    who: &str,
    peer: &str,
    api: bool,
) -> Response {
    let refuse = |status: StatusCode, message: String| -> Response {
        if api {
            (status, Json(json!({ "error": message }))).into_response()
        } else {
            (
                status,
                page(
                    "refused",
                    Some(who),
                    None,
                    html! { h1 { "Refused" } p { (message) } a href="/" { "back" } },
                ),
            )
                .into_response()
        }
    };
    let action = match action_from(name, params) {
        Ok(a) => a,
        Err(e) => {
            app.audit(json!({
                "at": now_text(SystemTime::now()), "who": who, "from": peer,
                "environment": env, "action": name, "outcome": format!("refused: {e}"),
            }));
            return refuse(StatusCode::BAD_REQUEST, e);
        }
    };
    let protected = app.protected(env);
    if protected && params.get("confirm").map(String::as_str) != Some(env) {
        app.audit(json!({
            "at": now_text(SystemTime::now()), "who": who, "from": peer,
            "environment": env, "action": name, "outcome": "refused: protected environment not confirmed",
        }));
        return refuse(
            StatusCode::FORBIDDEN,
            format!("environment `{env}` is protected: confirm by giving its name (`confirm`: \"{env}\"); nothing was started"),
        );
    }
    match app.start(env, action, who, peer) {
        Ok(()) if api => (
            StatusCode::ACCEPTED,
            Json(json!({ "environment": env, "action": name, "started": true, "progress": format!("/api/env/{env}/action") })),
        )
            .into_response(),
        Ok(()) => Redirect::to(&format!("/env/{env}/action")).into_response(),
        Err((status, message)) => {
            app.audit(json!({
                "at": now_text(SystemTime::now()), "who": who, "from": peer,
                "environment": env, "action": name, "outcome": format!("refused: {message}"),
            }));
            refuse(status, message)
        }
    }
}

async fn action_page(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(env): Path<String>,
) -> Markup {
    let run = app.run_json(&env);
    let running = run["running"].as_bool() == Some(true);
    let session = app.session(&headers);
    let body = html! {
        h1 { (env) }
        @if run["action"].is_null() {
            p { "No action has run on " (env) " since the server started." }
        } @else {
            p { (run["action"].as_str().unwrap_or("")) ", started by " (run["who"].as_str().unwrap_or("")) " at " (run["started_at"].as_str().unwrap_or("")) }
            @if running {
                p.outcome #outcome data-state="running" { "running…" }
            } @else {
                p.outcome #outcome data-state=(run["outcome"].as_str().unwrap_or("")) {
                    "outcome: " (run["outcome"].as_str().unwrap_or("")) " (exit " (run["exit_code"]) ")"
                }
            }
            pre #log { (run["log"].as_str().unwrap_or("")) }
        }
    };
    page(
        "action",
        session.as_ref().map(|s| s.1.as_str()),
        running.then_some(1),
        body,
    )
}

// ---- JSON API ----

async fn api_overview(State(app): State<Arc<App>>) -> Json<Value> {
    let overview = app
        .overview
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let envs: Vec<Value> = app
        .environments
        .iter()
        .map(|env| {
            let read = overview.envs.get(env).cloned().unwrap_or_default();
            json!({
                "environment": env,
                "protected": read.protected,
                "status": read.status,
                "action": app.run_json(env),
            })
        })
        .collect();
    Json(json!({
        "read_at": overview.read_at.map(now_text),
        "overdue_since": app.overdue().map(|(since, _)| now_text(since)),
        "took_ms": overview.took.as_millis() as u64,
        "read_connections": crate::inspect::read_pool_stats(),
        "environments": envs,
        "diffs": overview.diffs,
    }))
}

async fn api_status(State(app): State<Arc<App>>, Path(env): Path<String>) -> Response {
    if !app.environments.contains(&env) {
        return not_served(&env);
    }
    let status = read_json(
        &app,
        vec!["--env".into(), env, "status".into(), "--json".into()],
    )
    .await;
    Json(status).into_response()
}

async fn api_history(
    State(app): State<Arc<App>>,
    Path((env, bind)): Path<(String, String)>,
) -> Response {
    if !app.environments.contains(&env) {
        return not_served(&env);
    }
    let args = ["--env", &env, "history", "--bind", &bind, "--json"];
    let history = read_json(&app, args.iter().map(|a| a.to_string()).collect()).await;
    Json(history).into_response()
}

async fn api_action(State(app): State<Arc<App>>, Path(env): Path<String>) -> Json<Value> {
    Json(app.run_json(&env))
}

async fn api_start(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((env, name)): Path<(String, String)>,
    body: Option<Json<HashMap<String, String>>>,
) -> Response {
    if app.token.is_none() {
        return (
            StatusCode::FORBIDDEN,
            Json(json!({ "error": format!("read-only: set {TOKEN_VARIABLE} where the server starts to allow actions") })),
        )
            .into_response();
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let who = match headers.get("x-orchestrate-user").map(|v| {
        v.to_str()
            .map_err(|_| "not text".to_string())
            .and_then(valid_who)
    }) {
        None => "api".to_string(),
        Some(Ok(w)) => w.to_string(),
        Some(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": format!("X-Orchestrate-User: {e}") })),
            )
                .into_response()
        }
    };
    if !app.check_token(bearer) {
        app.audit(json!({
            "at": now_text(SystemTime::now()), "who": who, "from": peer.to_string(),
            "environment": env, "action": name, "outcome": "refused: missing or wrong token",
        }));
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({ "error": "an action needs `Authorization: Bearer <token>`" })),
        )
            .into_response();
    }
    let params = body.map(|Json(b)| b).unwrap_or_default();
    start_checked(&app, &env, &name, &params, &who, &peer.to_string(), true)
}
