//! `status` and `check`: what every bind holds, read without changing anything.

use orchestrate_driver::BindState;
use serde_json::json;

use orchestrate_core::{Allow, Direction};

use super::migrate::check_batch;
use super::output::{Output, Refusal};
use super::select;
use crate::cli::MigrateArgs;
use crate::exit;
use crate::inspect::{inspect, BindReport};
use crate::settings::{BindSettings, Settings};

pub(crate) fn in_doubt_message(bind: &str, state: &BindState) -> Vec<String> {
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
    // A batch its coordinator still runs is busy, not in doubt (upgrade says the same).
    let in_doubt = |r: &BindReport| r.in_doubt.iter().any(|d| d.decision != "running");
    if reports
        .iter()
        .any(|r| in_doubt(r) || !r.unsettled.is_empty())
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

/// Above this many binds, `status` groups the binds that need nothing but (maybe) their
/// pending migrations by where they are; `--verbose` prints every bind in full.
const GROUP_ABOVE: usize = 20;

/// Whether a bind needs more than its pending migrations: drift, an error, a batch in doubt.
fn needs_a_look(r: &BindReport) -> bool {
    !r.problems.is_empty()
        || !r.errors.is_empty()
        || !r.in_doubt.is_empty()
        || !r.unsettled.is_empty()
        || r.chain_error.is_some()
}

fn print_reports(reports: &[BindReport], json: bool, verbose: bool, o: &mut Output) {
    if json {
        o.json(&json!({ "binds": reports }));
        return;
    }
    let group = reports.len() > GROUP_ABOVE && !verbose;
    let out = &mut *o.out;
    if group {
        // (current, pending) -> binds.
        let mut groups: std::collections::BTreeMap<(String, Vec<String>), Vec<&str>> =
            Default::default();
        for r in reports.iter().filter(|r| !needs_a_look(r)) {
            let at = r
                .current_name
                .clone()
                .or_else(|| r.current.clone())
                .map_or_else(
                    || "with nothing applied".to_string(),
                    |at| format!("at {at}"),
                );
            groups
                .entry((at, r.pending_names.clone()))
                .or_default()
                .push(&r.bind);
        }
        for ((at, pending), binds) in &groups {
            let shown: Vec<&str> = binds.iter().take(10).copied().collect();
            let more = if binds.len() > 10 {
                format!(" and {} more", binds.len() - 10)
            } else {
                String::new()
            };
            let state = match pending.len() {
                0 => "up to date".to_string(),
                n if n <= 5 => format!("{n} pending ({})", pending.join(", ")),
                n => format!(
                    "{n} pending ({} ... {})",
                    pending[..2].join(", "),
                    pending[n - 1]
                ),
            };
            let _ = writeln!(
                out,
                "{} bind(s) {at}, {state}: {}{more}",
                binds.len(),
                shown.join(", ")
            );
        }
        let look = reports.iter().filter(|r| needs_a_look(r)).count();
        let _ = writeln!(
            out,
            "({} binds; {}; --verbose shows every bind in full)",
            reports.len(),
            match look {
                0 => "none needs a look".to_string(),
                1 => "1 needs a look, shown in full below".to_string(),
                n => format!("{n} need a look, shown in full below"),
            }
        );
    }
    for r in reports.iter().filter(|r| !group || needs_a_look(r)) {
        let none = || "none".to_string();
        let _ = writeln!(
            out,
            "{} ({}, {})\n  batches: {}\n  current: {}\n  head:    {}\n  pending: {}",
            r.bind,
            r.backend,
            r.url,
            r.guarantee,
            r.current_name
                .clone()
                .or_else(|| r.current.clone())
                .unwrap_or_else(none),
            match (&r.chain_error, &r.head_name) {
                (Some(_), _) =>
                    "unknown: the migration folders are invalid (see the error below)".to_string(),
                (None, head) => head.clone().unwrap_or_else(none),
            },
            if r.chain_error.is_some() {
                "unknown".to_string()
            } else if r.pending.is_empty() {
                none()
            } else {
                format!("{} ({})", r.pending.len(), r.pending_names.join(", "))
            },
        );
        for d in &r.in_doubt {
            let known = match d.decision.as_str() {
                "commit" => "decided to commit; `orchestrate recover` commits it".to_string(),
                "none" => "no decision recorded; `orchestrate recover` rolls it back once its coordinator is gone".to_string(),
                "running" => "its coordinator is running it (not in doubt); wait for it to end".to_string(),
                other => other.to_string(),
            };
            let label = if d.decision == "running" {
                "running"
            } else {
                "in doubt"
            };
            let _ = writeln!(
                out,
                "  {label}: batch {} (prepared transaction {}, for {}, decider `{}`): {known}",
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

/// `orchestrate status`: every selected bind's state; exit 3 when a batch is in doubt.
pub fn status(
    settings: &Settings,
    names: &[String],
    json: bool,
    verbose: bool,
    o: &mut Output,
) -> i32 {
    let binds = match select(settings, names, false) {
        Ok(b) => b,
        Err(e) => return o.refuse(Refusal::argument(e)),
    };
    let reports = inspect(settings, &binds);
    // The project's last rollout, when it has not committed: where it stopped.
    let rollout = match crate::rollout::RolloutRecord::load(&settings.root) {
        Ok(r) => r.filter(|r| r.state != crate::rollout::RolloutState::Committed),
        Err(e) => {
            o.note(e);
            None
        }
    };
    if json {
        match &rollout {
            Some(r) => o.json(&json!({ "binds": reports, "rollout": r })),
            None => print_reports(&reports, json, verbose, o),
        }
    } else {
        print_reports(&reports, json, verbose, o);
        if let Some(r) = &rollout {
            for line in r.describe() {
                let _ = writeln!(o.out, "{line}");
            }
        }
    }
    verdict(&reports, false, false)
}

/// What `upgrade --all-binds` would refuse now, if anything.
fn upgrade_refusal(settings: &Settings, allow_non_atomic: bool) -> Option<Refusal> {
    let upgrade = MigrateArgs {
        all_binds: true,
        binds: Vec::new(),
        target: None,
        targets: Vec::new(),
        sql: false,
        json: false,
        verbose: false,
        allow_non_atomic,
        wave_size: None,
        canary: Vec::new(),
    };
    check_batch(settings, Direction::Up, &upgrade, Allow::default()).err()
}

/// `orchestrate check`: `status` for CI, which also fails on drift (and on pending migrations
/// with `--no-pending`), and on any batch `upgrade --all-binds` would refuse, with the same
/// messages and exit code.
pub fn check(
    settings: &Settings,
    json: bool,
    no_pending: bool,
    allow_non_atomic: bool,
    verbose: bool,
    o: &mut Output,
) -> i32 {
    let binds: Vec<&BindSettings> = settings.binds.iter().collect();
    let reports = inspect(settings, &binds);
    let mut code = verdict(&reports, true, no_pending);
    // A batch in doubt is reported as such; otherwise what upgrade would refuse, with its
    // words (a bind that cannot be read, or a migration no batch can run, included).
    let refusal = (code != exit::ATTENTION)
        .then(|| upgrade_refusal(settings, allow_non_atomic))
        .flatten();
    if json {
        let error = refusal.as_ref().map(Refusal::to_json);
        o.json(&json!({ "binds": reports, "error": error }));
    } else {
        print_reports(&reports, false, verbose, o);
    }
    let refused = refusal.is_some();
    if let Some(refusal) = refusal {
        // The same lines `upgrade` prints; the JSON form is in the object above.
        o.json = false;
        code = o.refuse(refusal);
    }
    if !json {
        let summary = match code {
            exit::OK => "check passed".to_string(),
            exit::ATTENTION => {
                "check failed: a batch is in doubt or unsettled; run `orchestrate recover` (and `orchestrate resolve` for an interrupted MySQL migration or PostgreSQL migration outside a transaction)".to_string()
            }
            _ if refused => {
                "check failed: `orchestrate upgrade --all-binds` would refuse this batch, for the reasons on stderr".to_string()
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
        o.line(summary);
    }
    code
}
