//! The `orchestrate` command line: the arguments (clap), loading the settings, and dispatch
//! to [`crate::commands`]. Output goes to the writers given, so tests can capture it.

use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use orchestrate_core::{Allow, Direction};

use crate::commands::{self, select, Output, Refusal};
use crate::exit;
use crate::settings::{Settings, Sources};

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
    after_help = "Exit codes: 0 done; 1 failed and every bind is as it was (or another run is \
in the middle of a batch there); 2 invalid input, configuration or migration files, or an \
unreachable database, nothing touched; 3 needs attention (a batch in doubt: run `orchestrate \
recover`; an interrupted MySQL migration, or PostgreSQL migration run outside a transaction: `orchestrate resolve` first)."
)]
pub struct Cli {
    /// A TOML file read after config/default.toml and config/$ORCHESTRATE_ENV.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The folder holding `default.toml` and `<env>.toml`.
    #[arg(long, global = true, value_name = "DIR", default_value = "config")]
    pub config_dir: PathBuf,
    /// The environment whose `config/<ENV>.toml` is layered over `config/default.toml`.
    #[arg(long, global = true, env = "ORCHESTRATE_ENV", value_name = "ENV")]
    pub env: Option<String>,
    /// In a protected environment (`protected = true` in its `config/<ENV>.toml`): go on with a
    /// downgrade, stamp, resolve or `--allow-*` flag without asking.
    #[arg(long, global = true)]
    pub yes: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// `orchestrate serve`'s options.
#[cfg(feature = "serve")]
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The environments shown, in order: neighbours are compared, and each can be promoted
    /// to the next. Default: every `config/<ENV>.toml` but `default.toml`, in name order.
    #[arg(value_name = "ENV")]
    pub environments: Vec<String>,
    /// The address and port to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:8470", value_name = "ADDRESS:PORT")]
    pub listen: String,
    /// The file every action is appended to as a JSON line (who, what, when, from where,
    /// outcome); relative to the project root.
    #[arg(long, default_value = ".orchestrate/audit.log", value_name = "FILE")]
    pub audit_log: PathBuf,
    /// Seconds between two reads of every bind of every environment.
    #[arg(long, default_value_t = 15, value_name = "SECONDS")]
    pub refresh: u64,
    /// Reads keep one connection per PostgreSQL or MySQL bind between refreshes, for at most
    /// this many binds per server (and never more than a quarter of any connection limit they
    /// count against: the server's, the role's, the database's); the binds past it are read
    /// with a new connection each time. 0: keep none. Actions always use connections of
    /// their own.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub pool_per_server: usize,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show each bind: backend, current revision, head, pending migrations, problems, batches
    /// in doubt. Exits 3 while a batch is in doubt, 2 when a bind cannot be read.
    Status {
        /// Only this bind (repeatable). Default: every bind.
        #[arg(long = "bind", value_name = "NAME")]
        binds: Vec<String>,
        /// Print JSON: {"binds":[{"bind","backend","url","current","head","pending",
        /// "current_name","head_name","pending_names","problems","errors","in_doubt",
        /// "guarantee","unsettled","elapsed_ms","chain_error"}]} (schemas/status.schema.json).
        #[arg(long)]
        json: bool,
        /// Every bind in full; by default more than 20 binds are grouped by where they are,
        /// and only those with drift, errors or a batch in doubt are shown in full.
        #[arg(long, short)]
        verbose: bool,
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
    /// Validate configuration, chains, drift and in-doubt batches on every bind, and the batch
    /// `upgrade --all-binds` would run: a CI gate.
    ///
    /// Exits 0 when all is well; 2 on migration history problems (an applied migration
    /// edited or deleted, a pending one out of order), when a bind cannot be read (invalid
    /// migrations, unreachable, locked) or when `upgrade --all-binds` would refuse its batch,
    /// with the same error lines; 1 with --no-pending while migrations are pending, or while
    /// another run is in the middle of a batch; 3 while a batch is in doubt (recover, and
    /// `resolve` first for an interrupted MySQL migration, or PostgreSQL migration run outside a transaction).
    Check {
        /// Print JSON, as `status --json`.
        #[arg(long)]
        json: bool,
        /// Count pending migrations as a problem (for a gate after a deploy).
        #[arg(long)]
        no_pending: bool,
        /// Check the batch `upgrade --all-binds --allow-non-atomic` would run, for deploys
        /// that pass it (without it, pending migrations on MySQL binds that cannot join
        /// atomically fail the check, as they fail such an upgrade).
        #[arg(long)]
        allow_non_atomic: bool,
        /// Every bind in full (as `status --verbose`).
        #[arg(long, short)]
        verbose: bool,
    },
    /// Record a bind as being at REV without running anything (`base`: nothing applied), for
    /// adopting a database that was migrated by other means.
    Stamp {
        /// The bind to record (one configured bind).
        #[arg(long = "bind", value_name = "NAME", required = true)]
        bind: String,
        /// A version, a full folder name, a unique prefix of either, or `base`.
        #[arg(value_name = "REV", allow_hyphen_values = true)]
        revision: String,
    },
    /// Create the next migration folder of a bind, with empty up.sql and down.sql.
    New {
        /// The bind whose migrations folder gets the new migration, or a template (its binds'
        /// shared folder).
        #[arg(long = "bind", value_name = "NAME", required = true)]
        bind: String,
        /// What the migration does, such as "create users"; becomes the folder's name.
        #[arg(value_name = "DESCRIPTION", num_args = 1.., required = true)]
        description: Vec<String>,
    },
    /// Start a project: config/default.toml with one SQLite bind, and migrations/main/.
    Init,
    /// Serve a web page, and the same as a JSON API, that shows every environment side by
    /// side (each bind's revision, pending migrations, drift, batches in doubt, and the diff
    /// between neighbouring environments) and a bind's history, and runs actions: upgrade an
    /// environment, promote one environment to the next, downgrade a bind one step, recover.
    ///
    /// Read-only unless ORCHESTRATE_SERVE_TOKEN holds an access token (16 characters or
    /// more): then signing in with it (browser) or `Authorization: Bearer <token>` (API)
    /// allows actions, one at a time per environment. A protected environment needs its name
    /// typed to confirm. Every action is appended to the audit log. Runs until Ctrl-C (which,
    /// as on the command line, stops a running batch at its next safe point).
    ///
    /// API: GET /api/overview, /api/env/ENV/status, /api/env/ENV/bind/BIND/history,
    /// /api/env/ENV/action; POST /api/env/ENV/upgrade | recover | downgrade {"bind"} |
    /// promote {"from"} (a protected environment also needs {"confirm": "ENV"}).
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
    /// Compare two environments (`config/<FROM>.toml`, `config/<TO>.toml`), or an environment
    /// and `folders` (the migration folders, every migration applied): per bind, what one has
    /// applied that the other has not, migrations applied in both with a different up.sql,
    /// binds configured in one only, batches in doubt and drift on either side.
    ///
    /// Exits 0 when they agree, 1 when they differ, 2 when a bind cannot be read.
    Diff {
        /// An environment name, or `folders`.
        from: String,
        /// An environment name, or `folders`.
        to: String,
        /// Print JSON: {"from","to","agree","binds":[{"bind","only_in","applied_only_in_from",
        /// "applied_only_in_to","checksum_differs","in_doubt_from","in_doubt_to","drift_from",
        /// "drift_to","errors"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Bring every bind of environment TO to exactly the revision its counterpart has in
    /// environment FROM, as one atomic batch: production receives what staging ran, never
    /// more.
    ///
    /// Refused, with nothing touched (exit 2), when FROM has drift, a batch in doubt or a bind
    /// that cannot be read, when a bind is configured on one side only, when a migration
    /// applied on both sides has a different up.sql, or when TO has applied something FROM has
    /// not (a promotion never downgrades). Then as `upgrade` (exit codes, --sql, --json).
    Promote {
        /// The environment that was tested (staging).
        #[arg(long, value_name = "ENV")]
        from: String,
        /// The environment to bring to it (production).
        #[arg(long, value_name = "ENV")]
        to: String,
        /// Print what would run, as `upgrade --sql`, and touch nothing.
        #[arg(long)]
        sql: bool,
        /// Print the result as JSON, as `upgrade --json`.
        #[arg(long)]
        json: bool,
        /// A line per bind in a large batch.
        #[arg(long, short)]
        verbose: bool,
        /// As `upgrade --allow-non-atomic`.
        #[arg(long)]
        allow_non_atomic: bool,
    },
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
        /// Print JSON: {"actions":[{"bind","batch_id","action","detail"}],"errors":[..]}
        /// (schemas/recover.schema.json).
        #[arg(long)]
        json: bool,
    },
    /// Settle a MySQL migration, or a PostgreSQL migration run outside a transaction
    /// (`run_in_transaction = false`), that was interrupted part-way (a crash, or a failure
    /// after some of its statements committed), after looking at the database yourself.
    ///
    /// The flag says where the migration itself stands now, whatever was running when it was
    /// interrupted (applying it, reverting it, or undoing it): `--applied` if it is fully in
    /// the database (finish it by hand first if needed), `--reverted` if none of it is (undo
    /// what committed by hand first). `status` prints the exact command. Then run
    /// `orchestrate recover`: a batch that was not decided is reverted on this bind, newest
    /// first, including this migration if it is recorded as applied. (PostgreSQL: run the same
    /// `upgrade --allow-non-atomic` again instead; it goes on from there.)
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
    /// Print the effective configuration, and where each value came from.
    ///
    /// The configuration after every layer (config/default.toml,
    /// config/<ORCHESTRATE_ENV>.toml, --config FILE, ORCHESTRATE__* variables) and, for each
    /// value, the layer it came from. Passwords are redacted. Connects to nothing, except a
    /// template with `discover`, which asks its server for the database names.
    Config {
        /// Print JSON (schemas/config.schema.json): every value as {"value","from"}.
        #[arg(long)]
        json: bool,
    },
    /// List a bind's migrations in order: applied, pending, or applied with no folder.
    History {
        /// The bind to list.
        #[arg(long = "bind", value_name = "NAME", required = true)]
        bind: String,
        /// Print JSON: {"bind","migrations":[{"version","name","state","batch_id","applied_at"}],
        /// "steps":[{"batch_id","version","name","direction","at"}]} (schemas/history.schema.json).
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

#[derive(Clone, Debug, Args)]
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
    /// "error","other_errors","binds":[{"bind","outcome","detail","migrations","elapsed_ms"}]},
    /// or {"error":{"kind","exit","message","errors","changed"}} when refused; see
    /// schemas/migrate.schema.json (`detail`: what an undone, prepared or attention outcome
    /// means; `other_errors`: further failures beyond `error`).
    #[arg(long)]
    pub json: bool,
    /// A line per bind in a batch of more than 20 binds (by default such a batch prints how
    /// many binds ended each way, the slowest, and a line for each bind that did not commit
    /// or roll back cleanly).
    #[arg(long, short)]
    pub verbose: bool,
    /// Accept MySQL/MariaDB binds in the batch although they cannot be atomic: their DDL
    /// commits statement by statement. (Not needed for a MySQL bind whose migrations are all
    /// `data_only = true` when a PostgreSQL or SQLite bind decides: it joins through XA.) They run after every atomic bind has prepared; if
    /// anything fails before the decision, their migrations of this batch are reverted with
    /// their down SQL, newest first. A crash in the middle of one of their migrations leaves
    /// it marked for `orchestrate resolve`.
    #[arg(long)]
    pub allow_non_atomic: bool,
    /// Run the selected binds as a rollout: a sequence of atomic batches ("waves") of at most
    /// N binds each, in name order, each started only once the previous one committed. The
    /// first wave that fails is rolled back everywhere and stops the rollout (exit 1); earlier
    /// waves stay committed, later ones untouched; running the same command again resumes.
    /// Overrides `[rollout] wave_size`; 0 runs every selected bind in one batch.
    #[arg(long, value_name = "N")]
    pub wave_size: Option<usize>,
    /// A bind that goes first, in a wave of its own with the other canaries (repeatable;
    /// overrides `[rollout] canary`). Makes the command a rollout.
    #[arg(long = "canary", value_name = "NAME")]
    pub canary: Vec<String>,
}

/// Runs one command and returns its exit code ([`exit`]).
pub fn run(cli: Cli, out: &mut (dyn Write + Send), err: &mut dyn Write) -> i32 {
    let json = match &cli.command {
        Command::Status { json, .. }
        | Command::History { json, .. }
        | Command::Check { json, .. }
        | Command::Config { json }
        | Command::Recover { json, .. } => *json,
        Command::Upgrade(args) => args.common.json,
        Command::Downgrade(args) => args.json,
        Command::Diff { json, .. } | Command::Promote { json, .. } => *json,
        _ => false,
    };
    let mut o = Output { out, err, json };
    // Commands that only read end at once on a signal; upgrade and downgrade only once their
    // batch starts writing (the coordinator says so), the others from the start.
    if !matches!(
        cli.command,
        Command::Status { .. }
            | Command::History { .. }
            | Command::Check { .. }
            | Command::Config { .. }
            | Command::Upgrade(_)
            | Command::Downgrade(_)
            | Command::Diff { .. }
            | Command::Promote { .. }
    ) {
        crate::signals::writing();
    }
    if let Command::Init = cli.command {
        return o.result(crate::manage::init(&cli.config_dir));
    }
    let sources = Sources {
        config_dir: cli.config_dir.clone(),
        env_name: cli.env.clone(),
        extra_file: cli.config.clone(),
        environment: None,
    };
    #[cfg(feature = "serve")]
    if let Command::Serve(args) = &cli.command {
        let mut base = vec![
            "--config-dir".to_string(),
            cli.config_dir.display().to_string(),
        ];
        if let Some(file) = &cli.config {
            base.extend(["--config".to_string(), file.display().to_string()]);
        }
        return crate::serve::serve(&sources, base, args, &mut o);
    }
    match cli.command {
        // Each side loads its own environment.
        Command::Diff { from, to, json } => {
            return commands::environments::diff(&sources, &from, &to, json, &mut o)
        }
        Command::Promote {
            from,
            to,
            sql,
            json,
            verbose,
            allow_non_atomic,
        } => {
            let args = MigrateArgs {
                all_binds: false,
                binds: Vec::new(),
                target: None,
                targets: Vec::new(),
                sql,
                json,
                verbose,
                allow_non_atomic,
                wave_size: None,
                canary: Vec::new(),
            };
            return commands::environments::promote(&sources, &from, &to, &args, cli.yes, &mut o);
        }
        _ => {}
    }
    let settings = match Settings::load(&sources) {
        Ok(s) => s,
        Err(e) => return o.refuse(Refusal::argument(e.to_string())),
    };
    // Sticky: a configuration file that says `protected = true` cannot be overridden by a
    // later layer (`--config`, ORCHESTRATE__PROTECTED).
    if (settings.protected || files_protect(&sources)) && !cli.yes {
        if let Some(what) = protected_action(&cli.command) {
            let env = cli.env.as_deref().unwrap_or("default");
            if !confirmed(env, &what, &mut o) {
                return o.refuse(Refusal::of(
                    commands::Reason::Protected,
                    vec![format!(
                        "environment `{env}` is protected (`protected = true`): {what} needs --yes (or, on a terminal, typing the environment's name); nothing was changed"
                    )],
                    None,
                ));
            }
        }
    }
    dispatch(cli.command, &settings, &mut o)
}

/// Whether `config/default.toml` or `config/<env>.toml` says `protected = true`.
pub(crate) fn files_protect(sources: &Sources) -> bool {
    let mut files = vec![sources.config_dir.join("default.toml")];
    if let Some(env) = &sources.env_name {
        files.push(sources.config_dir.join(format!("{env}.toml")));
    }
    files.iter().filter(|f| f.is_file()).any(|f| {
        config::Config::builder()
            .add_source(config::File::from(f.as_path()).format(config::FileFormat::Toml))
            .build()
            .and_then(|c| c.get_bool("protected"))
            .unwrap_or(false)
    })
}

/// What a command would do in a protected environment that needs consent, if anything:
/// reverting migrations, rewriting the record of what is applied, or going past a safety
/// check. `--sql` only prints.
fn protected_action(command: &Command) -> Option<String> {
    match command {
        Command::Downgrade(args) if !args.sql => Some(match args.target.as_deref() {
            Some("base") => "`downgrade` to base (reverting every migration)".to_string(),
            Some(t) => format!("`downgrade` to {t}"),
            None => "`downgrade` (one step)".to_string(),
        }),
        Command::Stamp { .. } => Some("`stamp` (recording a revision without running it)".into()),
        Command::Resolve { .. } => {
            Some("`resolve` (recording what an interrupted migration did)".into())
        }
        Command::Upgrade(args) if !args.common.sql => {
            let flags: Vec<&str> = [
                (args.allow_out_of_order, "--allow-out-of-order"),
                (args.allow_edited, "--allow-edited"),
                (args.allow_missing, "--allow-missing"),
                (args.common.allow_non_atomic, "--allow-non-atomic"),
            ]
            .into_iter()
            .filter_map(|(on, flag)| on.then_some(flag))
            .collect();
            (!flags.is_empty()).then(|| format!("`upgrade {}`", flags.join(" ")))
        }
        _ => None,
    }
}

/// On a terminal (and not for JSON): asks for the environment's name to be typed. Anywhere
/// else: not confirmed.
fn confirmed(env: &str, what: &str, o: &mut Output) -> bool {
    use std::io::IsTerminal;
    if o.json || !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return false;
    }
    o.note(format!(
        "environment `{env}` is protected: {what}. Type `{env}` to go on, anything else to stop:"
    ));
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).is_ok() && line.trim() == env
}

fn dispatch(command: Command, settings: &Settings, o: &mut Output) -> i32 {
    let one = |name: String| select(settings, &[name], false).map(|b| b[0]);
    match command {
        Command::Status {
            binds,
            json,
            verbose,
        } => commands::status::status(settings, &binds, json, verbose, o),
        Command::Upgrade(args) => {
            let allow = Allow {
                out_of_order: args.allow_out_of_order,
                edited: args.allow_edited,
                missing: args.allow_missing,
                non_transactional: false,
            };
            commands::migrate::migrate(settings, Direction::Up, &args.common, allow, o)
        }
        Command::Downgrade(args) => {
            commands::migrate::migrate(settings, Direction::Down, &args, Allow::default(), o)
        }
        Command::History { bind, json } => commands::history::history(settings, &bind, json, o),
        Command::Config { json } => commands::config::config(settings, json, o),
        Command::Check {
            json,
            no_pending,
            allow_non_atomic,
            verbose,
        } => commands::status::check(settings, json, no_pending, allow_non_atomic, verbose, o),
        Command::Init | Command::Diff { .. } | Command::Promote { .. } => {
            unreachable!("handled before the settings are loaded")
        }
        #[cfg(feature = "serve")]
        Command::Serve(_) => unreachable!("handled before the settings are loaded"),
        Command::New { bind, description } => {
            // A template's binds share one folder: `new --bind TEMPLATE` adds to it.
            let folder = match (settings.bind(&bind), settings.template(&bind)) {
                (Some(b), _) => Ok(b.migrations.as_path()),
                (None, Some(t)) => Ok(t.migrations.as_path()),
                (None, None) => one(bind).map(|b| b.migrations.as_path()),
            };
            match folder {
                Ok(folder) => {
                    o.result(crate::manage::new_migration(folder, &description.join(" ")))
                }
                Err(e) => o.result(Err((exit::INVALID, e))),
            }
        }
        Command::Resolve {
            bind,
            version,
            applied,
            reverted: _,
        } => match one(bind) {
            Ok(b) => o.result(crate::manage::resolve(settings, b, &version, applied)),
            Err(e) => o.result(Err((exit::INVALID, e))),
        },
        Command::Stamp { bind, revision } => match one(bind) {
            Ok(b) => o.result(crate::manage::stamp(settings, b, &revision)),
            Err(e) => o.result(Err((exit::INVALID, e))),
        },
        Command::Recover {
            dry_run,
            wait,
            json,
        } => commands::recover::recover(settings, dry_run, wait, json, o),
    }
}
