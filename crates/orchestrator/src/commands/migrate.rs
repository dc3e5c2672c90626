//! `upgrade` and `downgrade`: validate everything (targets, chains, every bind's state, the
//! plans and their statements, consent for non-atomic binds, server capacity), then run one
//! batch and report each bind's outcome. Nothing is touched until validation has passed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

use orchestrate_core::{
    plan_downgrade, plan_upgrade, Allow, Chain, Direction, DownSqlSource, Plan, PlanError, Target,
};
use orchestrate_driver::{
    gid_for, nonatomic_script, script, session_script, xa_script, Backend, BindConnection,
    BindState, DecisionRecord, DriverError, Ending, ServerIdentity,
};
use serde_json::json;

use super::output::{Output, Reason, Refusal};
use super::progress::{Bars, Lines, Quiet, WithoutBindLines};
use super::status::in_doubt_message;
use super::{error_chain, read_state, select};
use crate::cli::MigrateArgs;
use crate::coordinator::{
    choose_decider, guarantee, is_atomic, run_batch, BatchReport, BindOutcome, BindWork, Progress,
    RunOptions, Verdict,
};
use crate::exit;
use crate::settings::{BindSettings, Settings};

/// `orchestrate upgrade` / `downgrade`: validates, then runs one batch (or prints its SQL).
/// An upgrade to `head` that finds its databases changed since it was planned (another run
/// applied the same migrations first: deploys started at once) applied nothing, and is
/// planned again, a few times at most; the other runs then find nothing to do. Not a
/// downgrade or a relative target (`+N`): planned again, they would revert or apply other
/// migrations than the ones the command was given for; nor a revision another run may have
/// gone past.
pub fn migrate(
    settings: &Settings,
    direction: Direction,
    args: &MigrateArgs,
    allow: Allow,
    o: &mut Output,
) -> i32 {
    let mut attempts = 0;
    let mut first_plan = None;
    loop {
        attempts += 1;
        let replan = attempts < REPLANS && may_replan(direction, args);
        match migrate_once(settings, direction, args, allow, o, replan, &mut first_plan) {
            Ok(code) => return code,
            Err(why) if crate::signals::interrupted() => {
                o.note(format!("{why}; the run was interrupted: not planned again"));
                return exit::FAILED;
            }
            Err(why) => o.note(format!("note: {why}")),
        }
    }
}

/// How many times a batch is planned at most when other runs keep moving its databases.
pub(crate) const REPLANS: usize = 4;

/// Every migration a batch runs, as (bind, version).
pub(crate) type PlannedSteps = std::collections::BTreeSet<(String, String)>;

/// The migrations of `works`, and, when a first plan is known (this is a batch planned again
/// after another run moved its databases), why they may not run: one the first plan did not
/// hold (another run reverted it meanwhile, a downgrade say, and the command was not given to
/// undo that).
pub(crate) fn beyond_first_plan(
    works: &[BindWork],
    first: &mut Option<PlannedSteps>,
) -> Option<String> {
    let steps: PlannedSteps = works
        .iter()
        .flat_map(|w| {
            w.plan
                .steps
                .iter()
                .map(|s| (w.endpoint.bind.clone(), s.version.to_string()))
        })
        .collect();
    let Some(first) = first else {
        *first = Some(steps);
        return None;
    };
    let extra: Vec<String> = steps
        .difference(first)
        .map(|(bind, version)| format!("{bind}: {version}"))
        .collect();
    (!extra.is_empty()).then(|| format!(
        "another run changed these databases while this batch was planned, and not only forward: planned again, the batch would apply migrations its first plan did not hold ({}), which another run had reverted meanwhile. Nothing was applied; look at what the other run did (`orchestrate history`), then give the command again",
        extra.join(", ")
    ))
}

/// Whether a batch that found its databases moved may be planned again: an upgrade to
/// `head`, which another run's work only brings closer. A downgrade or a relative target
/// would mean other migrations than those planned, and a revision another run may have gone
/// past (planned again, that is a refusal: "use downgrade").
pub(crate) fn may_replan(direction: Direction, args: &MigrateArgs) -> bool {
    direction == Direction::Up
        && args
            .target
            .iter()
            .map(String::as_str)
            .chain(
                args.targets
                    .iter()
                    .map(|t| t.split_once('=').map_or(t.as_str(), |(_, t)| t)),
            )
            .all(|t| matches!(t.parse::<Target>(), Ok(Target::Head)))
}

/// Whether a batch failed only because another run changed a bind between its plan and its
/// batch (`DriverError::Moved`) and every bind is as it was: nothing was applied, and planning
/// again is right. Not when a non-atomic bind committed its part and had it undone (its
/// migrations ran, and their down.sql; a person should hear of it). (Other binds' errors may
/// be the same; if not, the next plan meets them again.)
pub(crate) fn moved_elsewhere(report: &BatchReport) -> bool {
    matches!(
        &report.verdict,
        Verdict::RolledBack {
            error: crate::coordinator::BatchError::Bind(DriverError::Moved { .. })
        }
    ) && report
        .binds
        .iter()
        .all(|(_, outcome)| matches!(outcome, BindOutcome::RolledBack))
        && report.other_errors.iter().all(|e| e.contains(MOVED_MARK))
}

/// What [`DriverError::Moved`] says, to tell it among the other binds' errors (kept as text).
const MOVED_MARK: &str = "the database changed while the batch was being planned";

/// One plan and its batch, to its exit code; `Err(what to note)` when `replan` is set and
/// the batch found its databases moved (nothing applied, nothing printed but the progress
/// lines), or the plan met only prepared transactions (another run's commit phase, perhaps:
/// after a pause, planned again).
fn migrate_once(
    settings: &Settings,
    direction: Direction,
    args: &MigrateArgs,
    allow: Allow,
    o: &mut Output,
    replan: bool,
    first_plan: &mut Option<PlannedSteps>,
) -> Result<i32, String> {
    let checked = match check_batch(settings, direction, args, allow) {
        Ok(checked) => checked,
        // Only prepared transactions stand in the way: perhaps another run's batch, decided and
        // committing them now (deploys started at once). Looked at again in a moment; a batch
        // that stays in doubt is said to be, as before.
        Err(refusal)
            if replan
                && !refusal.reasons.is_empty()
                && refusal.reasons.iter().all(|r| *r == Reason::InDoubt) =>
        {
            std::thread::sleep(std::time::Duration::from_millis(500));
            return Err(
                "a batch of another run is in doubt or finishing its commits on these databases; looking again"
                    .into(),
            );
        }
        Err(refusal) => return Ok(o.refuse(refusal)),
    };
    if let Some(why) = beyond_first_plan(&checked.works, first_plan) {
        return Ok(o.refuse(Refusal::of(
            Reason::Busy,
            vec![why],
            Some("nothing was changed"),
        )));
    }
    print_down_sql_notes(&checked.plans, o);
    let Checked {
        works,
        waves,
        rollout,
        ..
    } = checked;
    if works.is_empty() {
        if let Some(wave_settings) = &rollout {
            let rollout = super::rollout::Rollout {
                settings,
                direction,
                args,
                waves: wave_settings,
            };
            rollout.close_if_done(o);
        }
        if args.json {
            o.json(&json!({"result": "nothing to do", "binds": []}));
        } else {
            o.line("Nothing to do: every selected bind is at its target.");
        }
        return Ok(exit::OK);
    }
    if super::segments::has_segments(&works) {
        if args.sql {
            print_segments_sql(settings, &works, &mut *o.out);
            return Ok(exit::OK);
        }
        return Ok(super::segments::run(settings, direction, args, &works, o));
    }
    if args.sql {
        for (k, wave) in waves.iter().enumerate() {
            if rollout.is_some() {
                let _ = writeln!(
                    o.out,
                    "-- wave {} of {}: {} bind(s), a batch of its own, run once wave {} committed",
                    k + 1,
                    waves.len(),
                    wave.len(),
                    k.max(1)
                );
            }
            print_sql(settings, &wave_works(&works, wave), &mut *o.out);
        }
        return Ok(exit::OK);
    }
    if let Some(wave_settings) = rollout {
        let rollout = super::rollout::Rollout {
            settings,
            direction,
            args,
            waves: &wave_settings,
        };
        return Ok(rollout.run(&works, &waves, o));
    }
    if !args.json {
        print_guarantees(settings, &works, o);
    }
    let migrations = migration_counts(&works);
    let report = run_one(settings, direction, args, works, o);
    if replan && moved_elsewhere(&report) {
        return Err(format!(
            "batch {} applied nothing: another run changed these databases after it was planned (deploys started at once?); planning again",
            report.batch_id
        ));
    }
    Ok(if args.json {
        print_json_outcome(&report, &migrations, o)
    } else {
        let summary = summarise(&report, args);
        print_outcome(report, summary, o)
    })
}

/// How many migrations each bind runs.
pub(crate) fn migration_counts(works: &[BindWork]) -> BTreeMap<String, usize> {
    works
        .iter()
        .map(|w| (w.endpoint.bind.clone(), w.plan.steps.len()))
        .collect()
}

/// Whether a batch's text output is a summary rather than a line per bind.
pub(crate) fn summarise(report: &BatchReport, args: &MigrateArgs) -> bool {
    report.binds.len() > SUMMARY_ABOVE && !args.verbose
}

/// Runs one batch with the progress the output wants (bars on a terminal, lines otherwise,
/// none for JSON).
pub(crate) fn run_one(
    settings: &Settings,
    direction: Direction,
    args: &MigrateArgs,
    works: Vec<BindWork>,
    o: &mut Output,
) -> BatchReport {
    let options = RunOptions {
        preferred_decider: settings.decider.clone(),
        lock_timeout: settings.lock_timeout,
        parallelism: settings.parallelism,
        keep_connections: crate::work::keep_connections_for(
            &works,
            settings.keep_connections,
            settings.parallelism,
        ),
    };
    // A large batch prints a summary instead of a line per bind, unless --verbose.
    let summarise = works.len() > SUMMARY_ABOVE && !args.verbose;
    let run = |progress: &dyn Progress| {
        if summarise {
            run_batch(works, direction, &options, &WithoutBindLines(progress))
        } else {
            run_batch(works, direction, &options, progress)
        }
    };
    if args.json {
        run(&Quiet)
    } else if std::io::stderr().is_terminal() {
        run(&Bars::default())
    } else {
        let lines = Lines(std::sync::Mutex::new(&mut *o.out));
        run(&lines)
    }
}

/// Above this many binds, a batch's text output is a summary: how many binds ended each way,
/// the slowest, and a line for every bind that did not commit (`--verbose`: a line per bind).
const SUMMARY_ABOVE: usize = 20;

/// A batch that passed every check, ready to run: every selected bind's plan, and the work
/// of those with something to do.
pub(crate) struct Checked<'s> {
    pub plans: Vec<(&'s BindSettings, Plan)>,
    pub works: Vec<BindWork>,
    /// The batches to run, in order, as indices into `works`: one, or a rollout's waves.
    pub waves: Vec<Vec<usize>>,
    /// The command's wave settings when it is a rollout (waves or canaries asked for).
    pub rollout: Option<WaveSettings>,
}

/// The wave settings of a command: `--wave-size` and `--canary` over `[rollout]`.
#[derive(Clone, Debug)]
pub(crate) struct WaveSettings {
    pub size: Option<usize>,
    pub canary: Vec<String>,
    pub together: Vec<String>,
}

impl WaveSettings {
    fn of(settings: &Settings, args: &MigrateArgs) -> Result<Option<WaveSettings>, Refusal> {
        if let Some(name) = args.canary.iter().find(|n| settings.bind(n).is_none()) {
            return Err(Refusal::argument(format!(
                "--canary {name}: no bind is named `{name}`"
            )));
        }
        if let Some(name) = args
            .canary
            .iter()
            .find(|n| !args.all_binds && !args.binds.contains(n))
        {
            return Err(Refusal::argument(format!(
                "--canary {name}: `{name}` is not among the selected binds (--bind ...); a canary goes first among them"
            )));
        }
        let size = match args.wave_size {
            Some(0) => None,
            Some(n) => Some(n),
            None => settings.rollout.wave_size,
        };
        let canary = if args.canary.is_empty() {
            settings.rollout.canary.clone()
        } else {
            args.canary.clone()
        };
        let explicit_single = args.wave_size == Some(0) && args.canary.is_empty();
        if explicit_single || (size.is_none() && canary.is_empty()) {
            return Ok(None);
        }
        Ok(Some(WaveSettings {
            size,
            canary,
            together: settings.rollout.together.clone(),
        }))
    }
}

/// The one validation of a batch, shared by `upgrade`, `downgrade`, their `--sql`, and
/// `check`: the plans ([`validate`]), then consent for non-atomic binds, then the servers'
/// capacity for prepared transactions. A refusal here is exactly what the command would say.
pub(crate) fn check_batch<'s>(
    settings: &'s Settings,
    direction: Direction,
    args: &MigrateArgs,
    allow: Allow,
) -> Result<Checked<'s>, Refusal> {
    let wave_settings = WaveSettings::of(settings, args)?;
    let (plans, servers) = validate(settings, direction, args, allow)?;
    let works: Vec<BindWork> = plans
        .iter()
        .filter(|(_, p)| !p.steps.is_empty())
        .map(|(b, p)| BindWork {
            endpoint: b.endpoint.clone(),
            plan: p.clone(),
            server: servers
                .get(&b.name)
                .map(|id| (id.server.clone(), id.max_connections)),
        })
        .collect();
    if wave_settings.is_some() && super::segments::has_segments(&works) {
        return Err(Refusal::invalid(vec![(
            Reason::Rollout,
            "a rollout (--wave-size, --canary, [rollout]) cannot yet hold a migration that runs outside a transaction (`run_in_transaction = false`); run the segments first without waves (`upgrade --allow-non-atomic` on the binds concerned), then the rollout".into(),
        )]));
    }
    let waves = match &wave_settings {
        _ if works.is_empty() => Vec::new(),
        None => vec![(0..works.len()).collect()],
        Some(w) => {
            let names: Vec<&str> = works.iter().map(|w| w.endpoint.bind.as_str()).collect();
            crate::rollout::plan_waves(&names, w.size, &w.canary, &w.together)
        }
    };
    // Each wave is a batch of its own: what a batch needs (consent for binds that are not
    // atomic in it, prepared transactions, a durable decider) is checked wave by wave, all
    // before anything runs.
    let mut refusals: Vec<(Reason, String)> = Vec::new();
    let add = |refusals: &mut Vec<(Reason, String)>, found: Vec<(Reason, String)>| {
        for r in found {
            if !refusals.contains(&r) {
                refusals.push(r);
            }
        }
    };
    for wave in &waves {
        let found = consent_refusals(&wave_works(&works, wave), direction, args);
        add(&mut refusals, found);
    }
    add(
        &mut refusals,
        tagged(Reason::SqlitePath, sqlite_paths_refused(&works)),
    );
    if refusals.is_empty() {
        for wave in &waves {
            let ws = wave_works(&works, wave);
            if let Err(found) = check_prepared_capacity(settings, &ws, &servers) {
                add(&mut refusals, found);
            }
            if let Err(e) = check_durable_decider(settings, &ws) {
                add(&mut refusals, vec![(Reason::Decider, e)]);
            }
        }
    }
    if !refusals.is_empty() {
        return Err(Refusal::invalid(refusals));
    }
    Ok(Checked {
        plans,
        works,
        waves,
        rollout: wave_settings,
    })
}

/// `--sql` of a batch cut into segments: each atomic segment's script, and each migration
/// outside a transaction as it runs.
fn print_segments_sql(settings: &Settings, works: &[BindWork], out: &mut dyn Write) {
    use super::segments::Segment;
    let all = super::segments::segments(works);
    let total = all.len();
    for (k, segment) in all.iter().enumerate() {
        match segment {
            Segment::Atomic(part) => {
                let _ = writeln!(
                    out,
                    "-- segment {} of {total}: an atomic batch over {} bind(s)",
                    k + 1,
                    part.len()
                );
                print_sql(settings, part, out);
            }
            Segment::Outside(part) => {
                let _ = writeln!(
                    out,
                    "-- segment {} of {total}: outside any transaction, one bind at a time, each statement alone, under a mark in orchestrate_in_progress and the bind's session advisory lock (pg_advisory_lock); recorded with the mark cleared in one transaction",
                    k + 1
                );
                for w in part {
                    let step = &w.plan.steps[0];
                    let _ = writeln!(out, "-- bind {}: {}", w.endpoint.bind, step.name);
                    for statement in orchestrate_core::split_statements(&step.sql) {
                        let _ = writeln!(out, "{};", statement.trim().trim_end_matches(';'));
                    }
                }
            }
        }
    }
}

/// Every message with one reason.
fn tagged(reason: Reason, messages: Vec<String>) -> Vec<(Reason, String)> {
    messages.into_iter().map(|m| (reason, m)).collect()
}

/// Why a bind's plan was refused.
fn plan_reason(e: &PlanError) -> Reason {
    match e {
        PlanError::Drift { .. } => Reason::Drift,
        PlanError::NoDownSql { .. } => Reason::NoDownSql,
        PlanError::NonTransactional { .. } => Reason::NonTransactional,
        PlanError::Refused { .. } => Reason::Escapes,
        PlanError::TargetNotFound { .. }
        | PlanError::AmbiguousTarget { .. }
        | PlanError::WrongDirection { .. }
        | PlanError::BeyondHead { .. }
        | PlanError::BelowBase { .. }
        | PlanError::TargetBehind { .. }
        | PlanError::NotApplied { .. } => Reason::Target,
    }
}

/// The works of one wave.
pub(crate) fn wave_works(works: &[BindWork], wave: &[usize]) -> Vec<BindWork> {
    wave.iter().map(|&i| works[i].clone()).collect()
}

/// A SQLite bind whose file does not exist yet is created by its batch, with its folders: the
/// nearest folder that exists must be a folder this process can write in, or the bind could
/// not be opened (exit 2 before anything runs, like any bind that cannot be opened, rather
/// than a failure in the middle of the batch).
fn sqlite_paths_refused(works: &[BindWork]) -> Vec<String> {
    let mut refused = Vec::new();
    for w in works {
        let Some(path) = w.endpoint.sqlite_path() else {
            continue;
        };
        if path.exists() {
            continue;
        }
        // The nearest ancestor there is, a dangling symbolic link included.
        let Some(existing) = path
            .ancestors()
            .skip(1)
            .find(|a| a.symlink_metadata().is_ok())
        else {
            continue;
        };
        let problem = if !existing.exists() {
            Some(format!(
                "{} is a symbolic link to {}, which does not exist; fix the path in its url, or create that folder",
                existing.display(),
                std::fs::read_link(existing)
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|_| "a missing target".into())
            ))
        } else if !existing.is_dir() {
            Some(format!(
                "{} is a file, not a folder; fix the path in its url",
                existing.display()
            ))
        } else if !writable(existing) {
            Some(format!(
                "the folder {} is not writable by this user; fix the path in its url, or create the file with a user who may",
                existing.display()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            refused.push(format!(
                "bind `{}`: cannot create its SQLite database {}: {problem}",
                w.endpoint.bind,
                path.display()
            ));
        }
    }
    refused
}

/// Whether this process may create entries in `dir` (`access(2)` with write and search).
fn writable(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) == 0 }
}

/// Everything checked before a batch touches anything: the selected binds, their targets,
/// chains and states, each plan and its statements, and batches an earlier run left. Returns
/// every selected bind's plan (possibly empty).
fn validate<'s>(
    settings: &'s Settings,
    direction: Direction,
    args: &MigrateArgs,
    allow: Allow,
) -> Result<Validated<'s>, Refusal> {
    let binds = select(settings, &args.binds, args.all_binds).map_err(Refusal::argument)?;
    let (targets, errors) = parse_targets(settings, &binds, args, direction);
    let mut errors = tagged(Reason::Target, errors);
    let mut chains: Vec<(&BindSettings, Chain)> = Vec::new();
    for b in &binds {
        match b.chain() {
            Ok(c) => chains.push((b, c)),
            Err(e) => errors.push((Reason::Chain, e.to_string())),
        }
    }
    if !errors.is_empty() {
        return Err(Refusal::invalid(errors));
    }
    let planned = plan_binds(
        settings,
        &chains,
        &targets,
        direction,
        allow,
        args.allow_non_atomic,
    );
    if !planned.errors.is_empty() {
        return Err(Refusal::invalid(planned.errors));
    }
    let twice = same_database(&planned.servers);
    if !twice.is_empty() {
        return Err(Refusal::invalid(tagged(Reason::SameDatabase, twice)));
    }
    let selected: Vec<&BindSettings> = chains.iter().map(|(b, _)| *b).collect();
    let mut in_doubt = planned.in_doubt;
    in_doubt.extend(tagged(
        Reason::InDoubt,
        lost_batches(settings, planned.decisions, &selected),
    ));
    if !planned.busy.is_empty() && in_doubt.is_empty() {
        return Err(Refusal::of(Reason::Busy, planned.busy, None));
    }
    if !in_doubt.is_empty() {
        let (reasons, errors) = in_doubt.into_iter().unzip();
        return Err(Refusal {
            code: exit::ATTENTION,
            errors,
            reasons,
            closing: Some("nothing was changed; an earlier batch must be resolved first"),
        });
    }
    Ok((planned.plans, planned.servers))
}

/// PostgreSQL binds that are one database reached through different URLs (a host name and an
/// address, a socket and TCP), which the configuration could not tell: their batches would
/// wait on each other's lock, and one database would take part twice.
fn same_database(servers: &BTreeMap<String, ServerIdentity>) -> Vec<String> {
    let mut by_database: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for (bind, id) in servers {
        by_database
            .entry((id.server.as_str(), id.database.as_str()))
            .or_default()
            .push(bind.as_str());
    }
    by_database
        .into_iter()
        .filter(|(_, binds)| binds.len() > 1)
        .map(|((server, database), binds)| {
            format!(
                "binds `{}` are one database, `{database}` on the server started {server}, reached through different URLs; give each database one bind",
                binds.join("`, `")
            )
        })
        .collect()
}

/// The target of every selected bind: `--target` for all (default `head` up, `-1` down),
/// then `--target NAME=TARGET` per bind. Returns the targets and the errors found.
fn parse_targets(
    settings: &Settings,
    binds: &[&BindSettings],
    args: &MigrateArgs,
    direction: Direction,
) -> (BTreeMap<String, Target>, Vec<String>) {
    let mut errors = Vec::new();
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
            for b in binds {
                targets.insert(b.name.clone(), t.clone());
            }
        }
        Err(e) => errors.push(e),
    }
    let mut seen = std::collections::BTreeSet::new();
    for spec in &args.targets {
        let Some((name, text)) = spec.split_once('=') else {
            errors.push(format!(
                "--target `{spec}`: write it as NAME=TARGET, such as users=+1"
            ));
            continue;
        };
        if settings.bind(name).is_none() {
            let known: Vec<&str> = settings.binds.iter().map(|b| b.name.as_str()).collect();
            errors.push(format!(
                "--target `{spec}`: no bind is named `{name}`; configured binds: {}",
                known.join(", ")
            ));
            continue;
        }
        if !binds.iter().any(|b| b.name == name) {
            errors.push(format!(
                "--target `{spec}`: bind `{name}` is not selected; add --bind {name} or use --all-binds"
            ));
            continue;
        }
        if !seen.insert(name) {
            errors.push(format!(
                "--target `{spec}`: bind `{name}` is given a target twice; give each bind one"
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
    (targets, errors)
}

/// What reading every selected bind's state and planning it found.
/// Every selected bind's plan, and the server and database each PostgreSQL bind reached.
type Validated<'s> = (
    Vec<(&'s BindSettings, Plan)>,
    BTreeMap<String, ServerIdentity>,
);

struct Planned<'s> {
    plans: Vec<(&'s BindSettings, Plan)>,
    /// Which server and database each PostgreSQL bind is, as its server said.
    servers: BTreeMap<String, ServerIdentity>,
    errors: Vec<(Reason, String)>,
    /// Batches an earlier run left in doubt, and migrations interrupted, on these binds
    /// (exit 3).
    in_doubt: Vec<(Reason, String)>,
    /// Binds a running batch holds (exit 1).
    busy: Vec<String>,
    /// Unsettled decisions the selected binds hold.
    decisions: Vec<DecisionRecord>,
}

/// Reads every bind's state (in parallel, before touching any) and plans it.
fn plan_binds<'s>(
    settings: &Settings,
    chains: &[(&'s BindSettings, Chain)],
    targets: &BTreeMap<String, Target>,
    direction: Direction,
    allow: Allow,
    non_atomic: bool,
) -> Planned<'s> {
    let mut planned = Planned {
        plans: Vec::new(),
        servers: BTreeMap::new(),
        errors: Vec::new(),
        in_doubt: Vec::new(),
        busy: Vec::new(),
        decisions: Vec::new(),
    };
    let pool = crate::workers(settings.parallelism);
    let states: Vec<Result<BindState, DriverError>> = pool.install(|| {
        use rayon::prelude::*;
        chains
            .par_iter()
            .map(|(b, _)| read_state(b, settings))
            .collect()
    });
    for ((b, chain), state) in chains.iter().zip(states) {
        let state = match state {
            Ok(s) => s,
            // A lock another run holds, or a table another session locks (another project
            // migrating in the same database): busy (exit 1), as a running batch is.
            Err(e) if matches!(e, DriverError::Busy { .. }) || e.is_lock_wait() => {
                planned.busy.push(e.to_string());
                continue;
            }
            Err(e) => {
                planned.errors.push((Reason::Unreachable, e.to_string()));
                continue;
            }
        };
        planned.decisions.extend(state.unsettled.iter().cloned());
        if let Some(id) = &state.server {
            planned.servers.insert(b.name.clone(), id.clone());
        }
        let state = set_aside_running(settings, b, state, &mut planned.busy);
        planned
            .in_doubt
            .extend(tagged(Reason::InDoubt, in_doubt_message(&b.name, &state)));
        for m in &state.marks {
            // A mark of a batch whose coordinator is still working on it: busy, not in doubt.
            if !m.decider.is_empty()
                && crate::inspect::batch_running(settings, &m.decider, &m.batch_id)
            {
                let busy = format!(
                    "bind `{}`: another orchestrate run is in the middle of batch {} here (decider `{}`); nothing was changed. Run again once it has finished",
                    b.name, m.batch_id, m.decider
                );
                if !planned.busy.contains(&busy) {
                    planned.busy.push(busy);
                }
            } else if m.decider.is_empty() && crate::inspect::outside_running(settings, b) {
                let busy = format!(
                    "bind `{}`: migration {} is running outside a transaction now (another run, or a statement a dead run left, holds this bind's migration lock); nothing was changed. Run again once it has finished",
                    b.name, m.name
                );
                if !planned.busy.contains(&busy) {
                    planned.busy.push(busy);
                }
            } else {
                // A mark of a batch (it names its decider) is that batch's; one without, a
                // migration run outside a transaction that stopped part-way.
                let reason = if m.decider.is_empty() {
                    Reason::Interrupted
                } else {
                    Reason::InDoubt
                };
                planned.in_doubt.push((
                    reason,
                    format!(
                        "bind `{}`: {}",
                        b.name,
                        m.describe().replace("<bind>", &b.name)
                    ),
                ));
            }
        }
        let target = &targets[&b.name];
        // A PostgreSQL migration with `run_in_transaction = false` runs as a segment of its
        // own with --allow-non-atomic (see `segments`); elsewhere it is refused.
        let allow = Allow {
            non_transactional: non_atomic && b.endpoint.backend == Backend::Postgres,
            ..allow
        };
        let plan = match direction {
            Direction::Up => plan_upgrade(chain, &state.applied, target, allow),
            Direction::Down => plan_downgrade(chain, &state.applied, target),
        }
        .and_then(|p| orchestrate_driver::check_plan(b.endpoint.backend, chain, &p).map(|()| p));
        match plan {
            Ok(p) => planned.plans.push((b, p)),
            Err(e) => planned.errors.push((plan_reason(&e), e.to_string())),
        }
    }
    planned
}

/// A prepared transaction of a batch whose coordinator is still running is not in doubt:
/// that bind is busy (exit 1), as when its lock is held. Returns the state without them.
fn set_aside_running(
    settings: &Settings,
    bind: &BindSettings,
    state: BindState,
    busy: &mut Vec<String>,
) -> BindState {
    let (running, doubtful): (Vec<_>, Vec<_>) = state
        .in_doubt
        .iter()
        .cloned()
        .partition(|p| crate::inspect::batch_is_running(settings, &p.gid));
    busy.extend(running.iter().map(|p| format!(
        "bind `{}`: another orchestrate run is in the middle of a batch here (prepared transaction {}); nothing was changed. Run again once it has finished",
        bind.name, p.gid
    )));
    BindState {
        in_doubt: doubtful,
        ..state
    }
}

/// A SQLite bind that lost its part of a decided batch must be brought forward first: the
/// messages for such binds among `selected`, and for those whose possible deciders cannot be
/// read (in doubt, never passed over).
fn lost_batches(
    settings: &Settings,
    mut decisions: Vec<DecisionRecord>,
    selected: &[&BindSettings],
) -> Vec<String> {
    // Their deciders may not be among the selected binds.
    let (elsewhere, unreadable) = crate::inspect::decisions_elsewhere(settings, selected);
    decisions.extend(elsewhere);
    crate::inspect::lost_decided_batches(settings, &decisions, selected)
        .into_iter()
        .chain(unreadable)
        .map(|(_, m)| m)
        .collect()
}

/// Where a step's down SQL comes from, when it is not the folder's down.sql as applied.
fn print_down_sql_notes(plans: &[(&BindSettings, Plan)], o: &mut Output) {
    for note in down_sql_notes(plans) {
        match note {
            Note::Aside(text) => o.note(text),
            Note::Result(text) => o.line(text),
        }
    }
}

/// A note about a batch's down SQL: said beside the result (stderr), or as part of it.
pub(crate) enum Note {
    Aside(String),
    Result(String),
}

/// What a batch says of its down SQL before it runs: an upgrade whose migrations' down.sql a
/// downgrade would refuse (once per migration folder: a template's binds share theirs), and a
/// downgrade that uses the stored copy or a file that differs from it.
pub(crate) fn down_sql_notes(plans: &[(&BindSettings, Plan)]) -> Vec<Note> {
    let mut notes = Vec::new();
    let mut said: std::collections::BTreeSet<(std::path::PathBuf, String)> = Default::default();
    let mut chains: BTreeMap<std::path::PathBuf, Option<Chain>> = BTreeMap::new();
    for (b, p) in plans {
        if p.direction == Direction::Up {
            let chain = chains
                .entry(b.migrations.clone())
                .or_insert_with(|| b.chain().ok());
            for step in &p.steps {
                if !said.insert((b.migrations.clone(), step.name.clone())) {
                    continue;
                }
                let refusal = chain
                    .as_ref()
                    .and_then(|c| c.find(&step.version))
                    .and_then(|f| orchestrate_driver::down_sql_refusal(b.endpoint.backend, f));
                if let Some(r) = refusal {
                    notes.push(Note::Aside(format!(
                        "note: {}: {}: a downgrade of it would be refused ({r}); the upgrade goes on",
                        b.migrations.display(),
                        step.name
                    )));
                }
            }
        }
        for step in &p.steps {
            match step.down_source {
                Some(DownSqlSource::Stored) => notes.push(Note::Result(format!("note: {}: {} has no down.sql on disk; using the copy stored when it was applied", b.name, step.name))),
                Some(DownSqlSource::FileDiffersFromStored) => notes.push(Note::Result(format!("note: {}: {}/down.sql differs from the copy stored when it was applied; using the file", b.name, step.name))),
                _ => {}
            }
        }
    }
    notes
}

/// Non-atomic (MySQL) binds: each migration needs undo SQL and no compound body, and the
/// user must consent with `--allow-non-atomic` (not needed for `--sql`).
fn consent_refusals(
    works: &[BindWork],
    direction: Direction,
    args: &MigrateArgs,
) -> Vec<(Reason, String)> {
    let nonatomic: Vec<&BindWork> = (0..works.len())
        .filter(|i| !is_atomic(works, *i))
        .map(|i| &works[i])
        .collect();
    let mut refusals = Vec::new();
    for w in &nonatomic {
        for step in &w.plan.steps {
            if step.undo_sql.is_none() {
                refusals.push((Reason::NoDownSql, format!(
                    "bind `{}` ({}) is not atomic, so each of its migrations needs SQL to undo it if the batch fails, and {} has none ({}); add it, or migrate this bind on its own",
                    w.endpoint.bind,
                    w.endpoint.backend,
                    step.name,
                    if direction == Direction::Up { "no down.sql" } else { "its folder, with up.sql, is gone" }
                )));
            } else if orchestrate_core::has_compound_body(&step.sql)
                || step
                    .undo_sql
                    .as_deref()
                    .is_some_and(orchestrate_core::has_compound_body)
            {
                refusals.push((Reason::NotAtomic, format!(
                    "bind `{}`: {} defines a routine, trigger or event with a BEGIN ... END body; MySQL migrations run statement by statement, and such bodies cannot be split safely. Move it to its own migration tool step",
                    w.endpoint.bind, step.name
                )));
            }
        }
    }
    if !nonatomic.is_empty() && !args.allow_non_atomic && !args.sql {
        let names: Vec<String> = nonatomic
            .iter()
            .map(|w| format!("`{}` ({})", w.endpoint.bind, w.endpoint.backend))
            .collect();
        refusals.push((Reason::NotAtomic, format!(
            "bind(s) {} cannot be part of an atomic batch: MySQL and MariaDB commit DDL statement by statement. Pass --allow-non-atomic to run them after every atomic bind has prepared, with their migrations reverted by down SQL if anything fails before the decision (see `--sql` for the exact order); or migrate them separately",
            names.join(", ")
        )));
    }
    refusals
}

/// What each bind promises, when the batch mixes guarantees, and a warning per non-atomic bind.
pub(crate) fn print_guarantees(settings: &Settings, works: &[BindWork], o: &mut Output) {
    if works.iter().any(|w| w.endpoint.backend == Backend::Mysql) {
        let decider = choose_decider(works, settings.decider.as_deref());
        for (i, w) in works.iter().enumerate() {
            o.line(format!(
                "plan: {} ({}): {} migration(s) {}; {}",
                w.endpoint.bind,
                w.endpoint.backend,
                w.plan.steps.len(),
                w.plan.direction,
                guarantee(works, i, decider)
            ));
        }
    }
    for (i, w) in works.iter().enumerate() {
        if is_atomic(works, i) {
            continue;
        }
        o.line(format!(
            "note: bind `{}` ({}) is NOT atomic: its {} migration(s) commit statement by statement after every atomic bind has prepared; if anything fails before the decision they are reverted with their undo SQL, newest first",
            w.endpoint.bind,
            w.endpoint.backend,
            w.plan.steps.len()
        ));
    }
}

/// The exit code, the result word and the error text of a batch's verdict.
pub(crate) fn verdict(report: &BatchReport) -> (i32, &'static str, Option<String>) {
    match &report.verdict {
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
    }
}

/// `--json`: the batch and every bind's outcome as one JSON object.
fn print_json_outcome(
    report: &BatchReport,
    migrations: &BTreeMap<String, usize>,
    o: &mut Output,
) -> i32 {
    let (code, _, _) = verdict(report);
    o.json(&batch_json(report, migrations));
    code
}

/// A batch and every bind's outcome as one JSON object.
pub(crate) fn batch_json(
    report: &BatchReport,
    migrations: &BTreeMap<String, usize>,
) -> serde_json::Value {
    let (_, result, error_text) = verdict(report);
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
                "lock_hold_ms": report.lock_holds.get(bind),
            })
        })
        .collect();
    json!({
        "batch_id": report.batch_id,
        "decider": report.decider,
        "direction": report.direction.to_string(),
        "result": result,
        "error": error_text,
        "other_errors": report.other_errors,
        "max_lock_hold_ms": report.lock_holds.values().max(),
        "binds": binds,
    })
}

/// Text: a line per bind (or, for a large batch, a count of the binds that committed, the
/// slowest, and a line per bind that did not), then the batch's verdict (errors on the error
/// stream).
pub(crate) fn print_outcome(report: BatchReport, summarise: bool, o: &mut Output) -> i32 {
    let (code, _, error_text) = verdict(&report);
    if summarise {
        let committed = report
            .binds
            .iter()
            .filter(|(_, outcome)| matches!(outcome, BindOutcome::Committed))
            .count();
        let rolled_back = report
            .binds
            .iter()
            .filter(|(_, outcome)| {
                matches!(
                    outcome,
                    BindOutcome::RolledBack | BindOutcome::Undone { count: 0 }
                )
            })
            .count();
        let mut slowest: Vec<(&String, &u64)> = report.timings.iter().collect();
        slowest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let slowest: Vec<String> = slowest
            .iter()
            .take(3)
            .map(|(bind, ms)| format!("{bind} {ms} ms"))
            .collect();
        let otherwise = report.binds.len() - committed - rolled_back;
        let mut counts = vec![format!("{committed} committed")];
        if rolled_back > 0 {
            counts.push(format!("{rolled_back} rolled back, unchanged"));
        }
        if otherwise > 0 {
            counts.push(format!("{otherwise} otherwise, each below"));
        }
        if !slowest.is_empty() {
            counts.push(format!("slowest: {}", slowest.join(", ")));
        }
        o.line(format!(
            "  {} binds: {} (--verbose: a line per bind)",
            report.binds.len(),
            counts.join("; ")
        ));
    }
    for (bind, outcome) in &report.binds {
        if summarise
            && matches!(
                outcome,
                BindOutcome::Committed | BindOutcome::RolledBack | BindOutcome::Undone { count: 0 }
            )
        {
            continue;
        }
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
        o.line(format!("  {bind}: {text}"));
    }
    match report.verdict {
        Verdict::Committed => {
            o.line(format!("batch {} committed on every bind", report.batch_id));
        }
        Verdict::RolledBack { .. } => {
            o.error(error_text.unwrap_or_default());
            o.note(format!(
                "batch {} rolled back: every bind is as it was before",
                report.batch_id
            ));
        }
        Verdict::NeedsAttention { error, detail } => {
            if let Some(e) = error {
                o.error(error_chain(&e));
            }
            o.note(format!("attention: {detail}"));
        }
    }
    code
}

/// A batch of MySQL binds alone is decided on its first bind: a server that does not flush
/// InnoDB's log at every commit could lose that decision, so the batch is refused before
/// anything is touched (the coordinator checks again when it starts).
fn check_durable_decider(settings: &Settings, works: &[BindWork]) -> Result<(), String> {
    if choose_decider(works, settings.decider.as_deref()).is_some() {
        return Ok(());
    }
    orchestrate_driver::Mysql::connect(&works[0].endpoint, settings.lock_timeout)
        .and_then(|mut c| c.check_durable_commits())
        .map_err(|e| e.to_string())
}

/// Fails early, before anything is touched, when a server cannot hold the prepared
/// transactions the batch needs there (PostgreSQL's default max_prepared_transactions is 0).
fn check_prepared_capacity(
    settings: &Settings,
    works: &[BindWork],
    servers: &BTreeMap<String, ServerIdentity>,
) -> Result<(), Vec<(Reason, String)>> {
    let decider = choose_decider(works, settings.decider.as_deref());
    // Grouped by the server as it identified itself when its binds were read (a host name
    // and an address for one server are one server), else by the URL's host and port.
    let mut by_server: BTreeMap<String, (Option<i64>, Vec<&BindWork>)> = BTreeMap::new();
    for (i, w) in works.iter().enumerate() {
        if Some(i) == decider {
            continue;
        }
        let (key, max) = match servers.get(&w.endpoint.bind) {
            Some(id) => (id.server.clone(), Some(id.max_prepared)),
            None => match w.endpoint.server() {
                Some(server) => (server, None),
                None => continue,
            },
        };
        let entry = by_server.entry(key).or_default();
        entry.0 = entry.0.or(max);
        entry.1.push(w);
    }
    let mut problems = Vec::new();
    for (server, (known, binds)) in by_server {
        let names: Vec<&str> = binds.iter().map(|w| w.endpoint.bind.as_str()).collect();
        let max = match known {
            Some(max) => Ok(Some(max)),
            None => BindConnection::connect(&binds[0].endpoint, false, settings.lock_timeout)
                .and_then(|mut c| c.max_prepared_transactions()),
        };
        let shown = binds[0].endpoint.server().unwrap_or_else(|| server.clone());
        match max {
            Ok(Some(max)) if (names.len() as i64) > max => problems.push((Reason::PreparedTransactions, format!(
                "the batch prepares {} transaction(s) on server {shown} (bind(s) {}), but its max_prepared_transactions is {max}; set it to at least {} and restart that server",
                names.len(),
                names.join(", "),
                names.len()
            ))),
            Ok(_) => {}
            Err(e) => problems.push((Reason::Unreachable, e.to_string())),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
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
        let mut gid = gid_for(batch_id, &decider, &w.endpoint.bind);
        // A PostgreSQL participant's id also names the decider's transaction, known only
        // once the batch runs (see coordinator::participant_gid).
        if w.endpoint.backend == Backend::Postgres
            && decider_index.is_some_and(|d| works[d].endpoint.backend == Backend::Postgres)
        {
            gid.push_str(":<decider-txid>");
        }
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
        let decider_tag = (Some(i) == decider_index).then_some(batch_id);
        let session = session_script(
            w.endpoint.backend,
            settings.lock_timeout.as_millis(),
            decider_tag,
        );
        let _ = write!(out, "{session}");
        let _ = write!(out, "{body}");
    }
}
