//! `upgrade --allow-non-atomic` over PostgreSQL migrations with `run_in_transaction = false`
//! (`CREATE INDEX CONCURRENTLY` and the like): the batch becomes a sequence of segments.
//! Every bind's migrations before its next such migration run as one atomic batch; then that
//! migration runs on each bind that has it, outside any transaction, one bind after the
//! other, covered by a mark in `orchestrate_in_progress` and recorded (with the mark cleared)
//! in one transaction once it succeeded; then the next atomic segment. The first segment that
//! fails stops: an atomic one is rolled back everywhere; a non-transactional one is undone
//! (its `down.sql`, outside a transaction too) on the binds where it had succeeded, so that it
//! is applied on no bind. Earlier segments stay committed; the same command resumes.

use std::time::Duration;

use orchestrate_core::{split_statements, Direction, Step};
use orchestrate_driver::{Bookkeeping, DriverError, Mark, MarkDirection, Postgres};
use serde_json::json;

use super::migrate::{
    batch_json, migration_counts, print_guarantees, print_outcome, run_one, summarise, verdict,
};
use super::output::Output;
use crate::cli::MigrateArgs;
use crate::coordinator::{new_batch_id, BindWork};
use crate::exit;
use crate::nonatomic::migration_mark;
use crate::settings::Settings;
use crate::signals;

/// Whether any bind's plan holds a step that runs outside a transaction.
pub(crate) fn has_segments(works: &[BindWork]) -> bool {
    works
        .iter()
        .any(|w| w.plan.steps.iter().any(|s| !s.in_transaction))
}

/// The segments of `works`, for plans and `--sql`: each an atomic batch (the works it holds)
/// or one migration outside a transaction on some binds.
pub(crate) enum Segment {
    Atomic(Vec<BindWork>),
    Outside(Vec<BindWork>),
}

/// Cuts `works` into segments: each bind's steps up to its next step outside a transaction
/// form, with the other binds', an atomic batch; then each bind whose next step runs outside
/// a transaction runs that one step; and so on.
pub(crate) fn segments(works: &[BindWork]) -> Vec<Segment> {
    let mut remaining: Vec<BindWork> = works.to_vec();
    let mut out = Vec::new();
    loop {
        let atomic: Vec<BindWork> = remaining
            .iter_mut()
            .filter_map(|w| {
                let k = w
                    .plan
                    .steps
                    .iter()
                    .position(|s| !s.in_transaction)
                    .unwrap_or(w.plan.steps.len());
                (k > 0).then(|| {
                    let mut part = w.clone();
                    part.plan.steps = w.plan.steps.drain(..k).collect();
                    advance(w, &part);
                    part
                })
            })
            .collect();
        if !atomic.is_empty() {
            out.push(Segment::Atomic(atomic));
        }
        let outside: Vec<BindWork> = remaining
            .iter_mut()
            .filter(|w| w.plan.steps.first().is_some_and(|s| !s.in_transaction))
            .map(|w| {
                let mut part = w.clone();
                part.plan.steps = vec![w.plan.steps.remove(0)];
                advance(w, &part);
                part
            })
            .collect();
        if outside.is_empty() {
            break;
        }
        out.push(Segment::Outside(outside));
    }
    out
}

/// What the rest of `w`'s plan starts from once `part` has run: its versions applied (or,
/// going down, reverted). Each segment is checked, under the bind's lock, against this.
fn advance(w: &mut BindWork, part: &BindWork) {
    if let Some(from) = w.plan.from.as_mut() {
        let versions = part.plan.steps.iter().map(|s| s.version.clone());
        match part.plan.direction {
            Direction::Up => from.extend(versions),
            Direction::Down => {
                let gone: Vec<_> = versions.collect();
                from.retain(|v| !gone.contains(v));
            }
        }
    }
}

/// Why a migration outside a transaction did not finish on one bind.
struct OutsideFailure {
    error: String,
    /// Its mark is left: part of it may have committed, a person must look (`resolve`).
    left_marked: bool,
}

/// Runs the segments in turn; stops at the first that does not finish.
pub(crate) fn run(
    settings: &Settings,
    direction: Direction,
    args: &MigrateArgs,
    works: &[BindWork],
    o: &mut Output,
) -> i32 {
    let all = segments(works);
    let total = all.len();
    let mut segments_json = Vec::new();
    let mut code = exit::OK;
    let mut error: Option<String> = None;
    let mut stopped_at = 0;
    for (k, segment) in all.into_iter().enumerate() {
        let n = k + 1;
        stopped_at = n;
        if signals::interrupted() {
            code = exit::FAILED;
            error = Some("interrupted between segments".into());
            break;
        }
        match segment {
            Segment::Atomic(part) => {
                if !args.json {
                    o.line(format!(
                        "segment {n} of {total}: an atomic batch over {} bind(s)",
                        part.len()
                    ));
                    print_guarantees(settings, &part, o);
                }
                let migrations = migration_counts(&part);
                let report = run_one(settings, direction, args, part, o);
                let (c, _, e) = verdict(&report);
                if args.json {
                    let mut batch = batch_json(&report, &migrations);
                    batch["segment"] = json!(n);
                    segments_json.push(json!({"segment": n, "kind": "atomic", "batch": batch}));
                } else {
                    let summary = summarise(&report, args);
                    print_outcome(report, summary, o);
                }
                if c != exit::OK {
                    code = c;
                    error = e;
                    break;
                }
            }
            Segment::Outside(part) => {
                let (c, binds, e) = run_outside_segment(settings, &part, n, total, args.json, o);
                if args.json {
                    segments_json.push(json!({"segment": n, "kind": "outside", "binds": binds}));
                }
                if c != exit::OK {
                    code = c;
                    error = e;
                    break;
                }
            }
        }
    }
    if args.json {
        o.json(&json!({
            "result": if code == exit::OK { "committed" } else { "stopped" },
            "error": error,
            "segments_total": total,
            "segments": segments_json,
        }));
    } else if code == exit::OK {
        o.line(format!("every segment ({total}) finished on every bind"));
    } else {
        o.note(format!(
            "stopped at segment {stopped_at} of {total}: the segments before it stay applied on every bind; it and the {} after it are applied on none{}. Fix the cause, then run the same command to resume",
            total - stopped_at,
            if code == exit::ATTENTION {
                " except where a migration is left marked above (settle it with `orchestrate resolve` first)"
            } else {
                ""
            }
        ));
    }
    code
}

/// One migration outside a transaction on each bind of `part`, one bind after the other. On
/// a failure, the binds where it had succeeded are undone with its `down.sql`.
fn run_outside_segment(
    settings: &Settings,
    part: &[BindWork],
    n: usize,
    total: usize,
    json: bool,
    o: &mut Output,
) -> (i32, Vec<serde_json::Value>, Option<String>) {
    let batch_id = new_batch_id();
    let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    if !json {
        let names: Vec<String> = part
            .iter()
            .map(|w| format!("{}: {}", w.endpoint.bind, w.plan.steps[0].name))
            .collect();
        o.line(format!(
            "segment {n} of {total}: outside any transaction, one bind at a time (batch {batch_id}): {}",
            names.join(", ")
        ));
    }
    let timeout = settings.lock_timeout;
    let mut binds = Vec::new();
    let mut done: Vec<&BindWork> = Vec::new();
    for w in part {
        let step = &w.plan.steps[0];
        match run_outside(w, step, &batch_id, &at, timeout) {
            Ok(()) => {
                if !json {
                    o.line(format!("  {}: {} applied", w.endpoint.bind, step.name));
                }
                binds.push(json!({"bind": w.endpoint.bind, "migration": step.name, "outcome": "applied", "detail": null}));
                done.push(w);
            }
            Err(failure) => {
                let outcome = if failure.left_marked {
                    "attention"
                } else {
                    "failed"
                };
                if !json {
                    o.line(format!("  {}: {} failed", w.endpoint.bind, step.name));
                }
                binds.push(json!({"bind": w.endpoint.bind, "migration": step.name, "outcome": outcome, "detail": failure.error}));
                let mut code = if failure.left_marked {
                    exit::ATTENTION
                } else {
                    exit::FAILED
                };
                // Undo it where it succeeded, newest first, so that it is applied nowhere.
                for d in done.iter().rev() {
                    let step = &d.plan.steps[0];
                    match undo_outside(d, step, &batch_id, &at, timeout) {
                        Ok(()) => {
                            if !json {
                                o.line(format!(
                                    "  {}: {} undone with its down.sql",
                                    d.endpoint.bind, step.name
                                ));
                            }
                            set_outcome(&mut binds, &d.endpoint.bind, "undone", None);
                        }
                        Err(f) => {
                            code = exit::ATTENTION;
                            if !json {
                                o.line(format!(
                                    "  {}: {} could not be undone: {}",
                                    d.endpoint.bind, step.name, f.error
                                ));
                            }
                            set_outcome(&mut binds, &d.endpoint.bind, "attention", Some(f.error));
                        }
                    }
                }
                let error = if failure.error.starts_with("bind `") {
                    failure.error.clone()
                } else {
                    format!("bind `{}`: {}", w.endpoint.bind, failure.error)
                };
                if !json {
                    o.error(error.clone());
                }
                return (code, binds, Some(error));
            }
        }
    }
    (exit::OK, binds, None)
}

fn set_outcome(binds: &mut [serde_json::Value], bind: &str, outcome: &str, detail: Option<String>) {
    if let Some(b) = binds.iter_mut().find(|b| b["bind"] == bind) {
        b["outcome"] = json!(outcome);
        b["detail"] = json!(detail);
    }
}

/// What a failed `CREATE INDEX CONCURRENTLY` leaves, said with how to clean it.
fn invalid_index_hint(book: &mut Postgres) -> String {
    match book.invalid_indexes() {
        Ok(found) if !found.is_empty() => format!(
            ". It left invalid index(es) {}: drop them with `DROP INDEX CONCURRENTLY IF EXISTS <name>;` before running again",
            found.join(", ")
        ),
        _ => String::new(),
    }
}

/// One migration outside a transaction on one bind: the bookkeeping session takes the bind's
/// migration lock and writes the mark; the migration's statements run one by one on a session
/// of their own (nothing they do to their session reaches the bookkeeping); the step is then
/// recorded and its mark cleared in one transaction.
fn run_outside(
    w: &BindWork,
    step: &Step,
    batch_id: &str,
    at: &str,
    timeout: Duration,
) -> Result<(), OutsideFailure> {
    let mut book = Postgres::connect(&w.endpoint, timeout).map_err(plain)?;
    book.begin_outside().map_err(plain)?;
    if let Some(m) = book.marks().map_err(plain)?.first() {
        return Err(OutsideFailure {
            error: format!(
                "an earlier step is not settled here: {}",
                m.describe().replace("<bind>", &w.endpoint.bind)
            ),
            left_marked: false,
        });
    }
    book.check_plan_still_valid(Direction::Up, std::slice::from_ref(step))
        .map_err(plain)?;
    let mark = migration_mark(batch_id, "", MarkDirection::Up, step, &step.sql, at);
    run_and_record(&mut book, w, step, mark, &step.sql, true, at, timeout)
}

/// A driver error before anything of the step ran.
fn plain(e: DriverError) -> OutsideFailure {
    OutsideFailure {
        error: e.to_string(),
        left_marked: false,
    }
}

/// On `book`, which holds the bind's migration lock: `sql` on a session of its own that holds
/// [`Postgres::hold_outside`] while it runs, under `mark`; then the step recorded (applied, or
/// undone when not `applying`) with the mark cleared, and the lock given back.
#[allow(clippy::too_many_arguments)]
fn run_and_record(
    book: &mut Postgres,
    w: &BindWork,
    step: &Step,
    mut mark: Mark,
    sql: &str,
    applying: bool,
    at: &str,
    timeout: Duration,
) -> Result<(), OutsideFailure> {
    let mut migration = Postgres::connect(&w.endpoint, timeout).map_err(plain)?;
    migration.hold_outside().map_err(plain)?;
    run_marked(book, &mut migration, &mut mark, &step.name, sql, applying)?;
    let (direction, label, done) = if applying {
        (Direction::Up, "up", "ran")
    } else {
        (Direction::Down, "undo", "was undone")
    };
    book.finish_marked_step(&mark.batch_id, direction, label, step, &mark, at)
        .map_err(|e| OutsideFailure {
            error: format!("{} {done}, but could not be recorded: {e}", step.name),
            left_marked: true,
        })?;
    book.end_outside();
    Ok(())
}

/// `sql` statement by statement on `migration`, under `mark` on `book`. With
/// `clear_on_first_failure` (applying), a failure of the first statement clears the mark
/// (nothing committed, but for what a failed `CREATE INDEX CONCURRENTLY` leaves, which is
/// said); otherwise (undoing: the migration stays applied) and for a later statement the mark
/// stays, for `resolve`.
fn run_marked(
    book: &mut Postgres,
    migration: &mut Postgres,
    mark: &mut Mark,
    name: &str,
    sql: &str,
    clear_on_first_failure: bool,
) -> Result<(), OutsideFailure> {
    book.put_mark(mark).map_err(|e| OutsideFailure {
        error: e.to_string(),
        left_marked: false,
    })?;
    let statements = split_statements(sql);
    for (i, statement) in statements.iter().enumerate() {
        if let Err(e) = migration.run_statement(name, statement) {
            let hint = invalid_index_hint(book);
            if i == 0 && clear_on_first_failure && book.clear_mark(mark).is_ok() {
                return Err(OutsideFailure {
                    error: format!("{e}; nothing of it was applied{hint}"),
                    left_marked: false,
                });
            }
            return Err(OutsideFailure {
                error: format!(
                    "{e}{hint}. {}",
                    mark.describe()
                        .replace("<bind>", &migration.endpoint().bind)
                ),
                left_marked: true,
            });
        }
        let done = i as i64 + 1;
        book.set_mark_progress(mark, done)
            .map_err(|e| OutsideFailure {
                error: e.to_string(),
                left_marked: true,
            })?;
        mark.statements_done = done;
        if i == 0 && statements.len() > 1 {
            crate::work::crash_point_outside();
        }
    }
    Ok(())
}

/// Undoes one migration that ran outside a transaction in this segment, with its `down.sql`,
/// the same way (marked, statement by statement, recorded as an undo).
fn undo_outside(
    w: &BindWork,
    step: &Step,
    batch_id: &str,
    at: &str,
    timeout: Duration,
) -> Result<(), OutsideFailure> {
    let mut book = Postgres::connect(&w.endpoint, timeout).map_err(plain)?;
    book.begin_outside().map_err(plain)?;
    let mark = migration_mark(
        batch_id,
        "",
        MarkDirection::UndoUp,
        step,
        step.down_sql.as_deref().unwrap_or(""),
        at,
    );
    let Some(down) = step.down_sql.as_deref().filter(|d| !d.trim().is_empty()) else {
        let _ = book.put_mark(&mark);
        return Err(OutsideFailure {
            error: format!(
                "it has no down.sql: {}",
                mark.describe().replace("<bind>", &w.endpoint.bind)
            ),
            left_marked: true,
        });
    };
    run_and_record(&mut book, w, step, mark, down, false, at, timeout)
}
