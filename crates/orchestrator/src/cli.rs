//! The `orchestrate` commands: parse, load settings, call the driver and the coordinator,
//! print, return an exit code. Output goes to the writers given, so tests can capture it.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use orchestrate_core::{
    plan_downgrade, plan_upgrade, Allow, Chain, Direction, DownSqlSource, Plan, Target,
};
use orchestrate_driver::{
    gid_for, nonatomic_script, read_chain, script, xa_script, Backend, BindConnection, BindState,
    DriverError, Ending,
};
use serde_json::json;

use crate::coordinator::{
    choose_decider, guarantee, is_atomic, run_batch, BindOutcome, BindWork, Progress, RunOptions,
    Verdict,
};
use crate::exit;
use crate::inspect::{inspect, BindReport};
use crate::settings::{BindSettings, Settings, Sources};

#[derive(Debug, Parser)]
#[command(
    name = "orchestrate",
    version,
    about = "Migrate several databases as one atomic step.",
    long_about = "Migrate several databases (\"binds\") as one atomic step: every bind reaches its \
target, or every bind stays exactly where it was.\n\n\
Each bind has its own chain of migrations in diesel's folder layout \
(migrations/<bind>/<version>_<name>/up.sql, down.sql). PostgreSQL binds end their batch with \
PREPARE TRANSACTION; one bind, the decider, records the decision and commits; then every \
other bind commits. MySQL/MariaDB binds are atomic only for data-only migrations (XA); \
others run only with --allow-non-atomic, and are undone with down.sql if the batch fails.\n\n\
Configuration: config/default.toml, then config/$ORCHESTRATE_ENV.toml, then --config FILE, \
then environment variables such as ORCHESTRATE__BINDS__USERS__URL.",
    after_help = "Exit codes: 0 done; 1 failed and every bind is as it was; 2 invalid input, \
configuration or migration files, nothing touched; 3 needs attention (run `orchestrate recover`)."
)]
pub struct Cli {
    /// A TOML file read after config/default.toml and config/$ORCHESTRATE_ENV.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The folder holding default.toml and <env>.toml.
    #[arg(long, global = true, value_name = "DIR", default_value = "config")]
    pub config_dir: PathBuf,
    /// The environment whose config/<ENV>.toml is layered over config/default.toml.
    #[arg(long, global = true, env = "ORCHESTRATE_ENV", value_name = "ENV")]
    pub env: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show each bind: backend, current revision, head, pending migrations, problems, batches
    /// in doubt. Exits 3 while a batch is in doubt, 2 when a bind cannot be read.
    Status {
        /// Only this bind (repeatable). Default: every bind.
        #[arg(long = "bind", value_name = "NAME")]
        binds: Vec<String>,
        /// Print JSON: {"binds":[{"bind","backend","url","current","head","pending","problems",
        /// "errors","in_doubt","guarantee","unsettled","elapsed_ms"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Apply pending migrations on the selected binds as one atomic batch.
    ///
    /// TARGET is `head` (the default), `+N` (N more), or a revision: a version, a full folder
    /// name, or a unique prefix of either; it is applied up to and including that revision.
    Upgrade(UpgradeArgs),
    /// Revert migrations on the selected binds as one atomic batch.
    ///
    /// TARGET is `-1` (the default), `-N`, `base` (revert everything), or a revision: it is
    /// kept and everything applied after it is reverted.
    Downgrade(MigrateArgs),
    /// Validate configuration, chains, drift and in-doubt batches on every bind: a CI gate.
    ///
    /// Exits 0 when all is well; 1 on migration history problems (an applied migration
    /// edited or deleted, a pending one out of order) or, with --no-pending, pending
    /// migrations; 2 when a bind cannot be read (invalid migrations, unreachable, locked); 3
    /// while a batch is in doubt.
    Check {
        /// Print JSON, as `status --json`.
        #[arg(long)]
        json: bool,
        /// Count pending migrations as a problem (for a gate after a deploy).
        #[arg(long)]
        no_pending: bool,
    },
    /// Record a bind as being at REV without running anything (`base`: nothing applied), for
    /// adopting a database that was migrated by other means.
    Stamp {
        #[arg(long = "bind", value_name = "NAME", required = true)]
        bind: String,
        /// A version, a full folder name, a unique prefix of either, or `base`.
        #[arg(value_name = "REV", allow_hyphen_values = true)]
        revision: String,
    },
    /// Create the next migration folder of a bind, with empty up.sql and down.sql.
    New {
        #[arg(long = "bind", value_name = "NAME", required = true)]
        bind: String,
        /// What the migration does, such as "create users"; becomes the folder's name.
        #[arg(value_name = "DESCRIPTION", num_args = 1.., required = true)]
        description: Vec<String>,
    },
    /// Start a project: config/default.toml with one SQLite bind, and migrations/main/.
    Init,
    /// Finish batches a crash or a lost connection left behind.
    ///
    /// Commits every prepared transaction of this tool whose batch was decided to commit.
    /// For a batch not yet decided, it first records `abort` on the batch's decider, which it
    /// can only do once the batch's coordinator no longer holds the batch (it waits up to
    /// --wait seconds for a coordinator that is still finishing), and then rolls the batch
    /// back everywhere. It re-applies a decided batch to any SQLite bind that lost it. Where
    /// the evidence is missing (the decider's database, file or table cannot be read, or has
    /// no row for the batch), it changes nothing for that batch and exits 3 saying what is
    /// missing: missing evidence is never read as "abort". Safe to run at any time, any number
    /// of times, even while batches run.
    Recover {
        /// Report what would be done and change nothing (not even a SQLite file is created);
        /// exits 3 when there is something to do.
        #[arg(long)]
        dry_run: bool,
        /// How long to wait for a batch's coordinator that still holds its batch (a killed
        /// coordinator's server session can take a moment to end) before leaving the batch
        /// alone (exit 3). Default: lock_timeout_ms.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// Print JSON: {"actions":[{"bind","batch_id","action","detail"}],"errors":[..]}.
        #[arg(long)]
        json: bool,
    },
    /// Settle a MySQL migration that was interrupted part-way (a crash, or a failure after
    /// some of its statements committed), after looking at the database yourself.
    ///
    /// The flag says where the migration itself stands now, whatever was running when it was
    /// interrupted (applying it, reverting it, or undoing it): `--applied` if it is fully in
    /// the database (finish it by hand first if needed), `--reverted` if none of it is (undo
    /// what committed by hand first). `status` prints the exact command. Then run
    /// `orchestrate recover`: a batch that was not decided is reverted on this bind, newest
    /// first, including this migration if it is recorded as applied.
    #[command(group(clap::ArgGroup::new("where").required(true).args(["applied", "reverted"])))]
    Resolve {
        /// The MySQL bind.
        #[arg(long = "bind", value_name = "NAME", required = true)]
        bind: String,
        /// The interrupted migration's version or folder name (as `status` shows it).
        #[arg(value_name = "VERSION")]
        version: String,
        /// The migration is now fully in the database: record it as applied.
        #[arg(long)]
        applied: bool,
        /// None of the migration is in the database: record it as not applied.
        #[arg(long)]
        reverted: bool,
    },
    /// List a bind's migrations in order: applied, pending, or applied with no folder.
    History {
        #[arg(long = "bind", value_name = "NAME", required = true)]
        bind: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub common: MigrateArgs,
    /// Apply pending migrations older than the newest applied one (another branch's work),
    /// in version order, instead of refusing.
    #[arg(long)]
    pub allow_out_of_order: bool,
    /// Go on although an applied migration's up.sql changed since it ran (the stored
    /// checksum is kept).
    #[arg(long)]
    pub allow_edited: bool,
    /// Go on although an applied migration's folder is gone.
    #[arg(long)]
    pub allow_missing: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).args(["all_binds", "binds"])))]
pub struct MigrateArgs {
    /// Every configured bind.
    #[arg(long)]
    pub all_binds: bool,
    /// This bind (repeatable).
    #[arg(long = "bind", value_name = "NAME")]
    pub binds: Vec<String>,
    /// The target of every selected bind (see above).
    #[arg(value_name = "TARGET", allow_hyphen_values = true)]
    pub target: Option<String>,
    /// One bind's own target, overriding TARGET for it (repeatable).
    #[arg(long = "target", value_name = "NAME=TARGET")]
    pub targets: Vec<String>,
    /// Print, per bind, exactly what would run (transaction statements and version-table
    /// writes included) and touch nothing.
    #[arg(long)]
    pub sql: bool,
    /// Print the result as JSON (no progress): {"batch_id","decider","direction","result",
    /// "error","binds":[{"bind","outcome","migrations","elapsed_ms"}]}.
    #[arg(long)]
    pub json: bool,
    /// Accept MySQL/MariaDB binds in the batch although they cannot be atomic: their DDL
    /// commits statement by statement. (Not needed for a MySQL bind whose migrations are all
    /// `data_only = true` when a PostgreSQL or SQLite bind decides: it joins through XA.) They run after every atomic bind has prepared; if
    /// anything fails before the decision, their migrations of this batch are reverted with
    /// their down SQL, newest first. A crash in the middle of one of their migrations leaves
    /// it marked for `orchestrate resolve`.
    #[arg(long)]
    pub allow_non_atomic: bool,
}

/// Runs a parsed command line and returns the exit code.
pub fn run(cli: Cli, out: &mut (dyn Write + Send), err: &mut dyn Write) -> i32 {
    // Commands that only read end at once on a signal; upgrade and downgrade only once their
    // batch starts writing (the coordinator says so), the others from the start.
    if !matches!(
        cli.command,
        Command::Status { .. }
            | Command::History { .. }
            | Command::Check { .. }
            | Command::Upgrade(_)
            | Command::Downgrade(_)
    ) {
        crate::signals::writing();
    }
    if let Command::Init = cli.command {
        return report(crate::manage::init(&cli.config_dir), out, err);
    }
    let sources = Sources {
        config_dir: cli.config_dir.clone(),
        env_name: cli.env.clone(),
        extra_file: cli.config.clone(),
        environment: None,
    };
    let settings = match Settings::load(&sources) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::INVALID;
        }
    };
    match cli.command {
        Command::Status { binds, json } => status(&settings, &binds, json, out, err),
        Command::Upgrade(args) => {
            let allow = Allow {
                out_of_order: args.allow_out_of_order,
                edited: args.allow_edited,
                missing: args.allow_missing,
            };
            migrate(&settings, Direction::Up, &args.common, allow, out, err)
        }
        Command::Downgrade(args) => migrate(
            &settings,
            Direction::Down,
            &args,
            Allow::default(),
            out,
            err,
        ),
        Command::History { bind, json } => history(&settings, &bind, json, out, err),
        Command::Check { json, no_pending } => check(&settings, json, no_pending, out),
        Command::Init => unreachable!("handled before the settings are loaded"),
        Command::New { bind, description } => match select(&settings, &[bind], false) {
            Ok(b) => report(
                crate::manage::new_migration(b[0], &description.join(" ")),
                out,
                err,
            ),
            Err(e) => report(Err((exit::INVALID, e)), out, err),
        },
        Command::Resolve {
            bind,
            version,
            applied,
            reverted: _,
        } => match select(&settings, &[bind], false) {
            Ok(b) => report(
                crate::manage::resolve(&settings, b[0], &version, applied),
                out,
                err,
            ),
            Err(e) => report(Err((exit::INVALID, e)), out, err),
        },
        Command::Stamp { bind, revision } => match select(&settings, &[bind], false) {
            Ok(b) => report(crate::manage::stamp(&settings, b[0], &revision), out, err),
            Err(e) => report(Err((exit::INVALID, e)), out, err),
        },
        Command::Recover {
            dry_run,
            wait,
            json,
        } => {
            let wait = wait.map_or(settings.lock_timeout, std::time::Duration::from_secs);
            let report = crate::recover::recover(&settings, dry_run, wait);
            if json {
                let _ = writeln!(out, "{}", serde_json::to_string_pretty(&report).unwrap());
            } else {
                if report.actions.is_empty() && report.errors.is_empty() {
                    let _ = writeln!(
                        out,
                        "Nothing to recover: no prepared or unfinished batch was found."
                    );
                }
                for a in &report.actions {
                    let _ = writeln!(
                        out,
                        "{}: batch {}: {}: {}",
                        a.bind, a.batch_id, a.action, a.detail
                    );
                }
                for e in &report.errors {
                    let _ = writeln!(err, "error: {e}");
                }
            }
            if report.needs_attention() {
                exit::ATTENTION
            } else {
                exit::OK
            }
        }
    }
}

/// Prints a command's result and returns its exit code.
fn report(
    result: Result<String, crate::manage::Failure>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    match result {
        Ok(text) => {
            let _ = writeln!(out, "{text}");
            exit::OK
        }
        Err((code, text)) => {
            let _ = writeln!(err, "error: {text}");
            code
        }
    }
}

/// The configured binds a command names, in configuration order.
fn select<'s>(
    settings: &'s Settings,
    names: &[String],
    all: bool,
) -> Result<Vec<&'s BindSettings>, String> {
    if all || names.is_empty() {
        return Ok(settings.binds.iter().collect());
    }
    for name in names {
        if settings.bind(name).is_none() {
            let known: Vec<_> = settings.binds.iter().map(|b| b.name.as_str()).collect();
            return Err(format!(
                "no bind is named `{name}`; configured binds: {}",
                known.join(", ")
            ));
        }
    }
    Ok(settings
        .binds
        .iter()
        .filter(|b| names.contains(&b.name))
        .collect())
}

/// Reads a bind's state without creating anything: a SQLite file that does not exist yet has
/// applied nothing.
fn read_state(bind: &BindSettings, settings: &Settings) -> Result<BindState, DriverError> {
    match BindConnection::connect(&bind.endpoint, false, settings.lock_timeout) {
        Ok(mut conn) => conn.read_state(),
        Err(DriverError::NoSuchFile { .. }) => Ok(BindState::default()),
        Err(e) => Err(e),
    }
}

fn in_doubt_message(bind: &str, state: &BindState) -> Vec<String> {
    state
        .in_doubt
        .iter()
        .map(|p| {
            format!(
                "in-doubt batch: prepared transaction {} (since {}) holds this database's locks; run `orchestrate recover`",
                p.gid, p.prepared_at
            )
        })
        .map(|m| format!("bind `{bind}`: {m}"))
        .collect()
}

/// The exit code of `status` (`strict` false) or `check` (`strict` true) for these reports.
fn verdict(reports: &[BindReport], strict: bool, no_pending: bool) -> i32 {
    if reports
        .iter()
        .any(|r| !r.in_doubt.is_empty() || !r.unsettled.is_empty())
    {
        exit::ATTENTION
    } else if reports.iter().any(|r| !r.errors.is_empty()) {
        exit::INVALID
    } else if strict
        && reports
            .iter()
            .any(|r| !r.problems.is_empty() || (no_pending && !r.pending.is_empty()))
    {
        exit::FAILED
    } else {
        exit::OK
    }
}

fn print_reports(reports: &[BindReport], json: bool, out: &mut dyn Write) {
    if json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({ "binds": reports })).unwrap()
        );
        return;
    }
    for r in reports {
        let none = || "none".to_string();
        let _ = writeln!(
            out,
            "{} ({}, {})\n  batches: {}\n  current: {}\n  head:    {}\n  pending: {}",
            r.bind,
            r.backend,
            r.url,
            r.guarantee,
            r.current.clone().unwrap_or_else(none),
            r.head.clone().unwrap_or_else(none),
            if r.pending.is_empty() {
                none()
            } else {
                format!("{} ({})", r.pending.len(), r.pending.join(", "))
            },
        );
        for d in &r.in_doubt {
            let known = match d.decision.as_str() {
                "commit" => "decided to commit; `orchestrate recover` commits it".to_string(),
                "none" => "no decision recorded; `orchestrate recover` rolls it back once its coordinator is gone".to_string(),
                other => other.to_string(),
            };
            let _ = writeln!(
                out,
                "  in doubt: batch {} (prepared transaction {}, for {}, decider `{}`): {known}",
                d.batch_id, d.gid, d.age, d.decider
            );
        }
        for u in &r.unsettled {
            let _ = writeln!(out, "  unsettled: {u}");
        }
        for p in &r.problems {
            let _ = writeln!(out, "  problem: {p}");
        }
        for e in &r.errors {
            let _ = writeln!(out, "  error:   {e}");
        }
    }
}

fn status(
    settings: &Settings,
    names: &[String],
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let binds = match select(settings, names, false) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::INVALID;
        }
    };
    let reports = inspect(settings, &binds);
    print_reports(&reports, json, out);
    verdict(&reports, false, false)
}

fn check(settings: &Settings, json: bool, no_pending: bool, out: &mut dyn Write) -> i32 {
    let binds: Vec<&BindSettings> = settings.binds.iter().collect();
    let reports = inspect(settings, &binds);
    print_reports(&reports, json, out);
    let code = verdict(&reports, true, no_pending);
    if !json {
        let summary = match code {
            exit::OK => "check passed".to_string(),
            exit::ATTENTION => {
                "check failed: a batch is in doubt or unsettled; run `orchestrate recover` (and `orchestrate resolve` for an interrupted MySQL migration)".to_string()
            }
            exit::INVALID => {
                "check failed: a bind could not be read (see the errors above)".to_string()
            }
            _ => format!(
                "check failed: {}",
                if reports.iter().any(|r| !r.problems.is_empty()) {
                    "migration history problems (see above)"
                } else {
                    "pending migrations (--no-pending)"
                }
            ),
        };
        let _ = writeln!(out, "{summary}");
    }
    code
}

fn history(
    settings: &Settings,
    name: &str,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> i32 {
    let bind = match select(settings, &[name.to_string()], false) {
        Ok(b) => b[0],
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::INVALID;
        }
    };
    let chain = match read_chain(&bind.name, &bind.migrations) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::INVALID;
        }
    };
    let state = match read_state(bind, settings) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::INVALID;
        }
    };
    let mut entries: BTreeMap<orchestrate_core::Version, (String, &'static str)> = BTreeMap::new();
    for m in &chain.migrations {
        entries.insert(m.version.clone(), (m.name.clone(), "pending"));
    }
    for a in &state.applied {
        let name = chain
            .find(&a.version)
            .map(|m| m.name.clone())
            .or_else(|| a.name.clone())
            .unwrap_or_else(|| a.version.to_string());
        let st = match chain.find(&a.version) {
            None => "applied, folder missing",
            Some(m) if a.checksum.as_ref().is_some_and(|c| c != &m.checksum) => {
                "applied, edited since"
            }
            Some(_) => "applied",
        };
        entries.insert(a.version.clone(), (name, st));
    }
    if json {
        let list: Vec<_> = entries
            .iter()
            .map(|(v, (n, s))| json!({"version": v.to_string(), "name": n, "state": s}))
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({"bind": bind.name, "migrations": list})).unwrap()
        );
    } else {
        let _ = writeln!(
            out,
            "{} ({}, {})",
            bind.name,
            bind.endpoint.backend,
            bind.endpoint.redacted()
        );
        if entries.is_empty() {
            let _ = writeln!(out, "  no migrations");
        }
        for (n, s) in entries.values() {
            let _ = writeln!(out, "  {s:<8} {n}");
        }
    }
    exit::OK
}

fn migrate(
    settings: &Settings,
    direction: Direction,
    args: &MigrateArgs,
    allow: Allow,
    out: &mut (dyn Write + Send),
    err: &mut dyn Write,
) -> i32 {
    let mut errors: Vec<String> = Vec::new();
    let binds = match select(settings, &args.binds, args.all_binds) {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return exit::INVALID;
        }
    };
    let default_target = args.target.clone().unwrap_or_else(|| {
        if direction == Direction::Up {
            "head"
        } else {
            "-1"
        }
        .to_string()
    });
    let parse_target = |text: &str| {
        text.parse::<Target>()
            .map_err(|e| format!("target `{text}`: {e}"))
    };
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    match parse_target(&default_target) {
        Ok(t) => {
            for b in &binds {
                targets.insert(b.name.clone(), t.clone());
            }
        }
        Err(e) => errors.push(e),
    }
    for spec in &args.targets {
        let Some((name, text)) = spec.split_once('=') else {
            errors.push(format!(
                "--target `{spec}`: write it as NAME=TARGET, such as users=+1"
            ));
            continue;
        };
        if !binds.iter().any(|b| b.name == name) {
            errors.push(format!(
                "--target `{spec}`: bind `{name}` is not selected; add --bind {name} or use --all-binds"
            ));
            continue;
        }
        match parse_target(text) {
            Ok(t) => {
                targets.insert(name.to_string(), t);
            }
            Err(e) => errors.push(e),
        }
    }
    let mut chains: Vec<(&BindSettings, Chain)> = Vec::new();
    for b in &binds {
        match read_chain(&b.name, &b.migrations) {
            Ok(c) => chains.push((b, c)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        for e in errors {
            let _ = writeln!(err, "error: {e}");
        }
        let _ = writeln!(err, "nothing was changed");
        return exit::INVALID;
    }
    // Read every bind's state before touching any.
    let mut plans: Vec<(&BindSettings, Plan)> = Vec::new();
    let mut in_doubt = Vec::new();
    let mut busy: Vec<String> = Vec::new();
    let pool = crate::workers(settings.parallelism);
    let states: Vec<Result<BindState, DriverError>> = pool.install(|| {
        use rayon::prelude::*;
        chains
            .par_iter()
            .map(|(b, _)| read_state(b, settings))
            .collect()
    });
    let mut read_states: Vec<BindState> = Vec::new();
    for ((b, chain), state) in chains.iter().zip(states) {
        let state = match state {
            Ok(s) => {
                read_states.push(BindState {
                    unsettled: s.unsettled.clone(),
                    ..BindState::default()
                });
                s
            }
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        // A prepared transaction of a batch whose coordinator is still running is not in
        // doubt: that bind is busy (exit 1), as when its lock is held.
        let (running, doubtful): (Vec<_>, Vec<_>) = state
            .in_doubt
            .iter()
            .cloned()
            .partition(|p| crate::inspect::batch_is_running(settings, &p.gid));
        busy.extend(running.iter().map(|p| format!(
            "bind `{}`: another orchestrate run is in the middle of a batch here (prepared transaction {}); nothing was changed. Run again once it has finished",
            b.name, p.gid
        )));
        let state = BindState {
            in_doubt: doubtful,
            ..state
        };
        in_doubt.extend(in_doubt_message(&b.name, &state));
        in_doubt.extend(state.marks.iter().map(|m| {
            format!(
                "bind `{}`: {}",
                b.name,
                m.describe().replace("<bind>", &b.name)
            )
        }));
        let target = &targets[&b.name];
        let planned = match direction {
            Direction::Up => plan_upgrade(chain, &state.applied, target, allow),
            Direction::Down => plan_downgrade(chain, &state.applied, target),
        }
        .and_then(|p| orchestrate_driver::check_plan(b.endpoint.backend, chain, &p).map(|()| p));
        match planned {
            Ok(p) => plans.push((b, p)),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if !errors.is_empty() {
        for e in errors {
            let _ = writeln!(err, "error: {e}");
        }
        let _ = writeln!(err, "nothing was changed");
        return exit::INVALID;
    }
    // A SQLite bind that lost its part of a decided batch must be brought forward first.
    let selected: Vec<&BindSettings> = chains.iter().map(|(b, _)| *b).collect();
    let mut decisions: Vec<orchestrate_driver::DecisionRecord> = read_states
        .iter()
        .flat_map(|s| s.unsettled.iter().cloned())
        .collect();
    if selected
        .iter()
        .any(|b| b.endpoint.backend == Backend::Sqlite)
    {
        // Their deciders may not be among the selected binds.
        for other in settings
            .binds
            .iter()
            .filter(|o| !selected.iter().any(|b| b.name == o.name))
        {
            if let Ok(found) =
                BindConnection::connect(&other.endpoint, false, settings.lock_timeout)
                    .and_then(|mut c| c.unsettled_decisions())
            {
                decisions.extend(found);
            }
        }
    }
    in_doubt.extend(
        crate::inspect::lost_decided_batches(settings, &decisions, &selected)
            .into_iter()
            .map(|(_, m)| m),
    );
    if !busy.is_empty() && in_doubt.is_empty() {
        for e in busy {
            let _ = writeln!(err, "error: {e}");
        }
        return exit::FAILED;
    }
    if !in_doubt.is_empty() {
        for e in in_doubt {
            let _ = writeln!(err, "error: {e}");
        }
        let _ = writeln!(
            err,
            "nothing was changed; an earlier batch must be resolved first"
        );
        return exit::ATTENTION;
    }
    for (b, p) in &plans {
        for step in &p.steps {
            match step.down_source {
                Some(DownSqlSource::Stored) => {
                    let _ = writeln!(out, "note: {}: {} has no down.sql on disk; using the copy stored when it was applied", b.name, step.name);
                }
                Some(DownSqlSource::FileDiffersFromStored) => {
                    let _ = writeln!(out, "note: {}: {}/down.sql differs from the copy stored when it was applied; using the file", b.name, step.name);
                }
                _ => {}
            }
        }
    }
    let works: Vec<BindWork> = plans
        .iter()
        .filter(|(_, p)| !p.steps.is_empty())
        .map(|(b, p)| BindWork {
            endpoint: b.endpoint.clone(),
            plan: p.clone(),
        })
        .collect();
    if works.is_empty() {
        if args.json {
            let _ = writeln!(out, "{}", json!({"result": "nothing to do", "binds": []}));
        } else {
            let _ = writeln!(out, "Nothing to do: every selected bind is at its target.");
        }
        return exit::OK;
    }
    let nonatomic: Vec<&BindWork> = (0..works.len())
        .filter(|i| !is_atomic(&works, *i))
        .map(|i| &works[i])
        .collect();
    let mut refusals = Vec::new();
    for w in &nonatomic {
        for step in &w.plan.steps {
            if step.undo_sql.is_none() {
                refusals.push(format!(
                    "bind `{}` ({}) is not atomic, so each of its migrations needs SQL to undo it if the batch fails, and {} has none ({}); add it, or migrate this bind on its own",
                    w.endpoint.bind,
                    w.endpoint.backend,
                    step.name,
                    if direction == Direction::Up { "no down.sql" } else { "its folder, with up.sql, is gone" }
                ));
            } else if orchestrate_core::has_compound_body(&step.sql)
                || step
                    .undo_sql
                    .as_deref()
                    .is_some_and(orchestrate_core::has_compound_body)
            {
                refusals.push(format!(
                    "bind `{}`: {} defines a routine, trigger or event with a BEGIN ... END body; MySQL migrations run statement by statement, and such bodies cannot be split safely. Move it to its own migration tool step",
                    w.endpoint.bind, step.name
                ));
            }
        }
    }
    if !nonatomic.is_empty() && !args.allow_non_atomic && !args.sql {
        let names: Vec<String> = nonatomic
            .iter()
            .map(|w| format!("`{}` ({})", w.endpoint.bind, w.endpoint.backend))
            .collect();
        refusals.push(format!(
            "bind(s) {} cannot be part of an atomic batch: MySQL and MariaDB commit DDL statement by statement. Pass --allow-non-atomic to run them after every atomic bind has prepared, with their migrations reverted by down SQL if anything fails before the decision (see `--sql` for the exact order); or migrate them separately",
            names.join(", ")
        ));
    }
    if !refusals.is_empty() {
        for e in refusals {
            let _ = writeln!(err, "error: {e}");
        }
        let _ = writeln!(err, "nothing was changed");
        return exit::INVALID;
    }
    if args.sql {
        print_sql(settings, &works, out);
        return exit::OK;
    }
    if !args.json && works.iter().any(|w| w.endpoint.backend == Backend::Mysql) {
        // What each bind promises, when the batch mixes guarantees.
        let decider = choose_decider(&works, settings.decider.as_deref());
        for (i, w) in works.iter().enumerate() {
            let _ = writeln!(
                out,
                "plan: {} ({}): {} migration(s) {}; {}",
                w.endpoint.bind,
                w.endpoint.backend,
                w.plan.steps.len(),
                w.plan.direction,
                guarantee(&works, i, decider)
            );
        }
    }
    if !args.json {
        for w in &nonatomic {
            let _ = writeln!(
                out,
                "note: bind `{}` ({}) is NOT atomic: its {} migration(s) commit statement by statement after every atomic bind has prepared; if anything fails before the decision they are reverted with their undo SQL, newest first",
                w.endpoint.bind,
                w.endpoint.backend,
                w.plan.steps.len()
            );
        }
    }
    if let Err(problems) = check_prepared_capacity(settings, &works) {
        for p in problems {
            let _ = writeln!(err, "error: {p}");
        }
        let _ = writeln!(err, "nothing was changed");
        return exit::INVALID;
    }
    let migrations: BTreeMap<String, usize> = works
        .iter()
        .map(|w| (w.endpoint.bind.clone(), w.plan.steps.len()))
        .collect();
    let options = RunOptions {
        preferred_decider: settings.decider.clone(),
        lock_timeout: settings.lock_timeout,
        parallelism: settings.parallelism,
    };
    let report = if args.json {
        run_batch(works, direction, &options, &Quiet)
    } else if std::io::stderr().is_terminal() {
        run_batch(works, direction, &options, &Bars::default())
    } else {
        let lines = Lines(std::sync::Mutex::new(&mut *out));
        run_batch(works, direction, &options, &lines)
    };
    let (code, result, error_text) = match &report.verdict {
        Verdict::Committed => (exit::OK, "committed", None),
        Verdict::RolledBack { error } => (exit::FAILED, "rolled back", Some(error_chain(error))),
        Verdict::NeedsAttention { error, detail } => (
            exit::ATTENTION,
            "needs attention",
            Some(match error {
                Some(e) => format!("{}; {detail}", error_chain(e)),
                None => detail.clone(),
            }),
        ),
    };
    if args.json {
        let binds: Vec<_> = report
            .binds
            .iter()
            .map(|(bind, outcome)| {
                let (state, detail) = match outcome {
                    BindOutcome::Committed => ("committed", None),
                    BindOutcome::RolledBack => ("rolled back", None),
                    BindOutcome::Undone { count } => (
                        "undone",
                        Some(format!(
                            "{count} migration(s) committed and then reverted with their undo SQL"
                        )),
                    ),
                    BindOutcome::LeftPrepared { gid } => ("prepared", Some(gid.clone())),
                    BindOutcome::Attention { detail } => ("attention", Some(detail.clone())),
                };
                json!({
                    "bind": bind,
                    "outcome": state,
                    "detail": detail,
                    "migrations": migrations.get(bind),
                    "elapsed_ms": report.timings.get(bind),
                })
            })
            .collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({
                "batch_id": report.batch_id,
                "decider": report.decider,
                "direction": report.direction.to_string(),
                "result": result,
                "error": error_text,
                "other_errors": report.other_errors,
                "binds": binds,
            }))
            .unwrap()
        );
        return code;
    }
    for (bind, outcome) in &report.binds {
        let text = match outcome {
            BindOutcome::Committed => "committed".to_string(),
            BindOutcome::RolledBack | BindOutcome::Undone { count: 0 } => {
                "rolled back, unchanged".to_string()
            }
            BindOutcome::Undone { count } => format!(
                "not atomic: {count} migration(s) of this batch had committed and were reverted with their undo SQL, newest first"
            ),
            BindOutcome::LeftPrepared { gid } => {
                format!("left prepared as {gid}; run `orchestrate recover`")
            }
            BindOutcome::Attention { detail } => detail.clone(),
        };
        let _ = writeln!(out, "  {bind}: {text}");
    }
    match report.verdict {
        Verdict::Committed => {
            let _ = writeln!(out, "batch {} committed on every bind", report.batch_id);
        }
        Verdict::RolledBack { .. } => {
            let _ = writeln!(err, "error: {}", error_text.unwrap_or_default());
            let _ = writeln!(
                err,
                "batch {} rolled back: every bind is as it was before",
                report.batch_id
            );
        }
        Verdict::NeedsAttention { error, detail } => {
            if let Some(e) = error {
                let _ = writeln!(err, "error: {}", error_chain(&e));
            }
            let _ = writeln!(err, "attention: {detail}");
        }
    }
    code
}

/// Progress as plain lines (not a terminal).
struct Lines<'a>(std::sync::Mutex<&'a mut (dyn Write + Send)>);

impl Progress for Lines<'_> {
    fn line(&self, text: &str) {
        let mut out = self.0.lock().unwrap();
        let _ = writeln!(out, "{text}");
    }
    fn phase(&self, _name: &str, _total: usize) {}
    fn tick(&self) {}
}

/// No progress (`--json`).
struct Quiet;

impl Progress for Quiet {
    fn line(&self, _text: &str) {}
    fn phase(&self, _name: &str, _total: usize) {}
    fn tick(&self) {}
}

/// A bar per phase on the terminal (stderr); lines print above it.
#[derive(Default)]
struct Bars(std::sync::Mutex<Option<indicatif::ProgressBar>>);

impl Progress for Bars {
    fn line(&self, text: &str) {
        match &*self.0.lock().unwrap() {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
    fn phase(&self, name: &str, total: usize) {
        let bar = indicatif::ProgressBar::new(total as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>8} [{bar:30}] {pos}/{len} binds {elapsed}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(name.to_string());
        if let Some(old) = self.0.lock().unwrap().replace(bar) {
            old.finish();
        }
    }
    fn tick(&self) {
        if let Some(bar) = &*self.0.lock().unwrap() {
            bar.inc(1);
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some(bar) = self.0.lock().unwrap().take() {
            bar.finish();
        }
    }
}

/// Fails early, before anything is touched, when a server cannot hold the prepared
/// transactions the batch needs there (PostgreSQL's default max_prepared_transactions is 0).
fn check_prepared_capacity(settings: &Settings, works: &[BindWork]) -> Result<(), Vec<String>> {
    let decider = choose_decider(works, settings.decider.as_deref());
    let mut servers: BTreeMap<String, Vec<&BindWork>> = BTreeMap::new();
    for (i, w) in works.iter().enumerate() {
        if Some(i) == decider {
            continue;
        }
        if let Some(server) = w.endpoint.server() {
            servers.entry(server).or_default().push(w);
        }
    }
    let mut problems = Vec::new();
    for (server, binds) in servers {
        let names: Vec<&str> = binds.iter().map(|w| w.endpoint.bind.as_str()).collect();
        let max = BindConnection::connect(&binds[0].endpoint, false, settings.lock_timeout)
            .and_then(|mut c| c.max_prepared_transactions());
        match max {
            Ok(Some(max)) if (names.len() as i64) > max => problems.push(format!(
                "the batch prepares {} transaction(s) on server {server} (bind(s) {}), but its max_prepared_transactions is {max}; set it to at least {} and restart that server",
                names.len(),
                names.join(", "),
                names.len()
            )),
            Ok(_) => {}
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// An error and its sources, once each.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn print_sql(settings: &Settings, works: &[BindWork], out: &mut dyn Write) {
    let batch_id = "<batch-id>";
    let decider_index = choose_decider(works, settings.decider.as_deref());
    // MySQL binds alone: the first one records the decision.
    let decider = works[decider_index.unwrap_or(0)].endpoint.bind.clone();
    let atomic = |i: &usize| is_atomic(works, *i);
    let mut order: Vec<usize> = (0..works.len())
        .filter(|i| Some(*i) != decider_index && atomic(i))
        .collect();
    order.extend((0..works.len()).filter(|i| !atomic(i)));
    order.extend(decider_index);
    match decider_index {
        Some(_) => {
            let _ = writeln!(
                out,
                "-- {} bind(s) in one batch; `{decider}` decides. Binds run in this order{}; no atomic bind commits until the decider has.",
                works.len(),
                if order.iter().any(|i| !is_atomic(works, *i)) {
                    " (the decider's transaction opens first, and its migrations run before the non-atomic binds'; its decision is written last)"
                } else {
                    ""
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "-- {} bind(s), none atomic; `{decider}` records the decision once every bind has succeeded; a failure on one undoes the others with their down SQL.",
                works.len()
            );
        }
    }
    for i in order {
        let w = &works[i];
        let gid = gid_for(batch_id, &decider, &w.endpoint.bind);
        let _ = writeln!(
            out,
            "\n-- bind {} ({}, {}): {} migration(s) {}; {}",
            w.endpoint.bind,
            w.endpoint.backend,
            w.endpoint.redacted(),
            w.plan.steps.len(),
            w.plan.direction,
            guarantee(works, i, decider_index)
        );
        let body = if !is_atomic(works, i) {
            nonatomic_script(&w.plan, batch_id, &decider)
        } else if w.endpoint.backend == Backend::Mysql {
            xa_script(&w.plan, batch_id, &decider, &w.endpoint.bind)
        } else {
            let ending = if Some(i) == decider_index {
                Ending::Decide { batch_id }
            } else if w.endpoint.backend == Backend::Postgres {
                Ending::Prepare { gid: &gid }
            } else {
                Ending::HoldOpen
            };
            script(w.endpoint.backend, &w.plan, batch_id, ending)
        };
        let _ = write!(out, "{body}");
    }
}
