//! `status` and `check`: what every bind holds, read without changing anything.

use orchestrate_driver::BindState;
use serde_json::json;

use super::output::{Output, Refusal};
use super::select;
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

fn print_reports(reports: &[BindReport], json: bool, o: &mut Output) {
    if json {
        o.json(&json!({ "binds": reports }));
        return;
    }
    let out = &mut *o.out;
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

/// `orchestrate status`: every selected bind's state; exit 3 when a batch is in doubt.
pub fn status(settings: &Settings, names: &[String], json: bool, o: &mut Output) -> i32 {
    let binds = match select(settings, names, false) {
        Ok(b) => b,
        Err(e) => return o.refuse(Refusal::argument(e)),
    };
    let reports = inspect(settings, &binds);
    print_reports(&reports, json, o);
    verdict(&reports, false, false)
}

/// `orchestrate check`: `status` for CI, which also fails on drift (and on pending migrations
/// with `--no-pending`).
pub fn check(settings: &Settings, json: bool, no_pending: bool, o: &mut Output) -> i32 {
    let binds: Vec<&BindSettings> = settings.binds.iter().collect();
    let reports = inspect(settings, &binds);
    print_reports(&reports, json, o);
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
        o.line(summary);
    }
    code
}
