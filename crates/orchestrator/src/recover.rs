//! `orchestrate recover`: finish every batch a crash or a lost connection left behind.
//!
//! - Every prepared transaction of this tool (`orchestrate:<batch>:<decider>:<bind>`) on every
//!   configured PostgreSQL bind (and XA transaction on every MySQL bind) is committed when the decider bind holds the batch's decision,
//!   and rolled back when it does not (presumed abort) — but only once the decider can no longer
//!   commit: its tagged session is gone (PostgreSQL) or its write lock is free (SQLite). A batch
//!   whose decider is alive belongs to a running coordinator and is left alone.
//! - Every SQLite participant of a decided batch whose history lacks the batch (its open
//!   transaction was lost after the decision) is brought forward from the decision record, in
//!   one transaction, after checking that its state is still the one the batch started from.
//! - On MySQL binds, marks left by non-atomic batches (and by XA batches whose transaction is
//!   gone), once no coordinator holds the bind's lock: a migration whose
//!   every statement committed is recorded; one interrupted part-way is reported for
//!   `orchestrate resolve`; then a batch mark is settled by its decision: kept when the batch
//!   was decided, otherwise (presumed abort) the batch's migrations there are undone with
//!   their undo SQL, newest first.
//! - A batch still `begun` on its decider that no coordinator holds (its coordinator died
//!   before preparing anything, or everything it prepared was rolled back above) is recorded
//!   as aborted, so that no batch stays undecided.

use std::collections::BTreeMap;
use std::time::Duration;

use orchestrate_core::{Direction, Step, Version};
use orchestrate_driver::{
    Atomic, Backend, BatchTransaction, BindConnection, Bookkeeping, DecisionRecord, DecisionState,
    DriverError, MarkDirection, Mysql, Resolve, Sqlite, TransactionId, XactStatus,
};

use crate::settings::Settings;
use crate::work::{run_steps, BindWork};

/// What recover did, or would do, for one batch on one bind.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Action {
    /// The bind acted on.
    pub bind: String,
    /// The batch (empty for a prepared transaction that is not this tool's).
    pub batch_id: String,
    /// What was done.
    pub action: ActionKind,
    /// Why, and what it touched, in words.
    pub detail: String,
}

/// What recover did to a batch on a bind; a dry run's `would ...`; or why it did nothing.
/// Shown (and serialised) as the words in quotes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ActionKind {
    /// A prepared transaction committed.
    #[serde(rename = "committed")]
    Committed,
    /// A prepared transaction rolled back.
    #[serde(rename = "rolled back")]
    RolledBack,
    /// A SQLite bind brought forward from the decision record.
    #[serde(rename = "redone")]
    Redone,
    /// A MySQL migration whose every statement committed, recorded.
    #[serde(rename = "recorded")]
    Recorded,
    /// A MySQL batch mark settled by its decision.
    #[serde(rename = "settled")]
    Settled,
    /// A MySQL bind's migrations of an undecided batch, reverted.
    #[serde(rename = "undone")]
    Undone,
    /// A `begun` batch no coordinator holds, recorded as aborted.
    #[serde(rename = "aborted")]
    Aborted,
    /// `--dry-run`: would be committed.
    #[serde(rename = "would commit")]
    WouldCommit,
    /// `--dry-run`: would be rolled back.
    #[serde(rename = "would roll back")]
    WouldRollBack,
    /// `--dry-run`: would be redone.
    #[serde(rename = "would redo")]
    WouldRedo,
    /// `--dry-run`: would be recorded.
    #[serde(rename = "would record")]
    WouldRecord,
    /// `--dry-run`: would be settled.
    #[serde(rename = "would settle")]
    WouldSettle,
    /// `--dry-run`: would be undone.
    #[serde(rename = "would undo")]
    WouldUndo,
    /// `--dry-run`: would be aborted.
    #[serde(rename = "would abort")]
    WouldAbort,
    /// Nothing done: a coordinator still holds the batch, or the evidence is missing.
    #[serde(rename = "left alone")]
    LeftAlone,
    /// Nothing done: a person must look (and say so with `resolve`, or end it by hand).
    #[serde(rename = "attention")]
    Attention,
}

impl ActionKind {
    /// Whether it leaves something for a person or a later run (a dry run's `would ...` too).
    pub fn needs_attention(self) -> bool {
        !matches!(
            self,
            ActionKind::Committed
                | ActionKind::RolledBack
                | ActionKind::Redone
                | ActionKind::Recorded
                | ActionKind::Settled
                | ActionKind::Undone
                | ActionKind::Aborted
        )
    }
}

impl std::fmt::Display for ActionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_value(self).expect("action kinds serialise");
        f.write_str(text.as_str().expect("a string"))
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct RecoverReport {
    /// What recover did, or left alone and why, per batch and bind.
    pub actions: Vec<Action>,
    /// Binds that could not be examined.
    pub errors: Vec<String>,
}

impl RecoverReport {
    /// Whether anything is left for a person or a later run (a dry run's "would ..." too).
    pub fn needs_attention(&self) -> bool {
        !self.errors.is_empty() || self.actions.iter().any(|a| a.action.needs_attention())
    }
}

/// What the decider knows of a batch.
enum Decision {
    Commit,
    Abort,
    /// Not decided, or the evidence cannot be read: nothing is done for the batch.
    Unknown(String),
}

fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// The decision of a batch, read on its decider. A batch still `begun` is decided here:
/// `abort` is recorded on the decider first (in a durable transaction of its own, waiting up
/// to `wait` for a coordinator that still holds the batch), and only then may anything be
/// rolled back; the coordinator's own `commit` and this `abort` contend for the same row, so
/// exactly one of them wins. With `dry_run` nothing is written. Missing evidence (no decider,
/// no file, no table, no row) is never an abort. A MySQL decider's batch is running while its
/// migration lock is held, unless `holds_decider_lock` (this recover holds it).
fn decision_of(
    settings: &Settings,
    decider: &str,
    batch_id: &str,
    dry_run: bool,
    wait: Duration,
    holds_decider_lock: bool,
    decider_xid: Option<u64>,
) -> Decision {
    let Some(bind) = settings.bind(decider) else {
        return Decision::Unknown(format!(
            "its decider `{decider}` is not a configured bind, so whether the batch was decided cannot be read; configure it and run recover again"
        ));
    };
    let place = decisions_place(bind);
    let running = format!(
        "its coordinator still holds batch {batch_id} on the decider `{decider}` (it is running, or its session is still ending); left alone. Run recover again once it has finished, or with a longer --wait"
    );
    let look = || -> Result<Decision, DriverError> {
        let mut conn = BindConnection::connect(&bind.endpoint, false, settings.lock_timeout)?;
        let missing = || {
            Decision::Unknown(format!(
                "there is no row for batch {batch_id} in {place}, so whether it was decided cannot be known; nothing was changed for it. If the decider's database was restored or replaced, find out by hand whether the batch committed there"
            ))
        };
        let Some(mut state) = conn.decision_state(batch_id)? else {
            return Ok(missing());
        };
        // Where a test holds recover between reading the row and reading the transaction's
        // status, while a coordinator commits.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("recover-between-row-and-status");
        if let Some(xid) = decider_xid {
            if disagreement(&mut conn, &state, xid, batch_id, &place)?.is_some() {
                // Its coordinator may have committed between the two reads: read the row
                // again, after the transaction's status; a row that still disagrees decides
                // nothing.
                let Some(again) = conn.decision_state(batch_id)? else {
                    return Ok(missing());
                };
                state = again;
                if let Some(why) = disagreement(&mut conn, &state, xid, batch_id, &place)? {
                    return Ok(Decision::Unknown(why));
                }
            }
        }
        Ok(match state {
            DecisionState::Commit(_) => Decision::Commit,
            DecisionState::Abort => Decision::Abort,
            DecisionState::Begun if dry_run => {
                if !holds_decider_lock && held_by_coordinator(&mut conn, batch_id)? {
                    Decision::Unknown(running.clone())
                } else {
                    Decision::Abort
                }
            }
            // A MySQL-only coordinator holds its decider's migration lock, not the row.
            DecisionState::Begun
                if matches!(conn, BindConnection::Mysql(_))
                    && !holds_decider_lock
                    && held_by_coordinator(&mut conn, batch_id)? =>
            {
                Decision::Unknown(format!(
                    "the migration lock of the decider `{decider}` is held, by batch {batch_id}'s coordinator or by another session there (another recover, a stamp, a batch); left alone. Run recover again once that session has ended"
                ))
            }
            DecisionState::Begun => match conn.decide_abort(batch_id, &now(), wait) {
                Ok(true) => Decision::Abort,
                Ok(false) => match conn.decision_state(batch_id)? {
                    Some(DecisionState::Commit(_)) => Decision::Commit,
                    Some(DecisionState::Abort) => Decision::Abort,
                    _ => Decision::Unknown(format!(
                        "batch {batch_id} changed in {place} while recover was deciding it; run recover again"
                    )),
                },
                Err(e) if e.is_lock_wait() => Decision::Unknown(running.clone()),
                Err(e) => return Err(e),
            },
        })
    };
    match look() {
        Ok(d) => d,
        Err(DriverError::NoSuchFile { path, .. }) => Decision::Unknown(format!(
            "the decider `{decider}`'s SQLite file {path} does not exist, so whether batch {batch_id} was decided cannot be read; nothing was changed for it. Run recover from the project with the right configuration, or restore the file"
        )),
        Err(e) => Decision::Unknown(format!(
            "its decider `{decider}` cannot be read ({e}); nothing was changed for it"
        )),
    }
}

/// The decider's COMMIT is the decision: where the participants name the decider's batch
/// transaction (PostgreSQL deciders), its server is asked whether it committed, and a row that
/// says otherwise decides nothing. A migration on the decider that rewrote its own decision
/// row as it committed (something only a superuser's migration can do, see README), or a
/// decider restored from a dump into another server, would otherwise have `recover` roll
/// back the participants of a batch whose decider committed. `None`: they agree (or the
/// server cannot tell: the status of a transaction that old is gone).
pub(crate) fn disagreement(
    conn: &mut BindConnection,
    state: &DecisionState,
    xid: u64,
    batch_id: &str,
    place: &str,
) -> Result<Option<String>, DriverError> {
    let Some(status) = conn.transaction_status(xid)? else {
        return Ok(None);
    };
    let Some(row) = disagrees(state, status) else {
        return Ok(None);
    };
    Ok(Some(if status == XactStatus::Committed {
        format!(
            "the decider's batch transaction (txid {xid}) committed, so its migrations are committed, but batch {batch_id}'s row in {place} says `{row}`: something rewrote the decision (a migration run as a superuser can), or the decider's database is not the one the batch ran on. Nothing was changed for it. If the decider's migrations of this batch are applied there, the batch committed: put its row back to `commit` by hand (with orchestrate's guard on the table disabled for that transaction, as the README says) and run recover again"
        )
    } else {
        format!(
            "batch {batch_id}'s row in {place} says `commit`, but the decider's batch transaction (txid {xid}) is {status} there: the decider's database is not the one the batch ran on (restored from a dump?), or the row was written by something else. Nothing was changed for it; find out by hand whether the batch committed on the decider"
        )
    }))
}

/// The row's state when it disagrees with the decider's transaction: `commit` only with a
/// committed transaction; `abort` and `begun` only with one that did not commit (aborted, or
/// still in progress: its coordinator holds the row, and [`decision_of`] waits for it).
fn disagrees(state: &DecisionState, status: XactStatus) -> Option<&'static str> {
    match (state, status) {
        (DecisionState::Commit(_), XactStatus::Committed) => None,
        (DecisionState::Commit(_), _) => Some("commit"),
        (DecisionState::Abort, XactStatus::Committed) => Some("abort"),
        (DecisionState::Begun, XactStatus::Committed) => Some("begun"),
        (DecisionState::Abort | DecisionState::Begun, _) => None,
    }
}

/// Finds and finishes what earlier batches left behind. With `dry_run` it only reports.
pub fn recover(settings: &Settings, dry_run: bool, wait: Duration) -> RecoverReport {
    let mut report = RecoverReport::default();
    // 1. Prepared transactions on PostgreSQL binds (and MySQL ones: data-only migrations
    // prepare through XA), each ended by its batch's decision, read once per batch.
    let mut decisions: BTreeMap<(String, String), Decision> = BTreeMap::new();
    // Read first on every bind: a batch's decider transaction, named in its PostgreSQL
    // participants' ids, is checked for every participant of the batch, whichever bind (an
    // XA participant, a MySQL bind's marks) is settled first.
    let found: Vec<(&crate::settings::BindSettings, Result<Found, DriverError>)> = settings
        .binds
        .iter()
        .filter(|b| b.endpoint.backend != Backend::Sqlite)
        .map(|b| (b, read_found(settings, b)))
        .collect();
    let xids = decider_transactions(
        found
            .iter()
            .filter_map(|(_, f)| f.as_ref().ok())
            .flat_map(|f| f.prepared.iter())
            .map(|x| x.gid.as_str()),
    );
    for (bind, found) in found {
        let found = match found {
            Ok(found) => found,
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        };
        let mut step = PreparedStep {
            settings,
            bind,
            dry_run,
            wait,
            xids: &xids,
            decisions: &mut decisions,
            report: &mut report,
        };
        step.run(found);
    }
    // 3 (run first: it needs the same decisions before step 2 changes nothing of theirs).
    for bind in settings
        .binds
        .iter()
        .filter(|b| !b.endpoint.backend.is_atomic())
    {
        recover_nonatomic(settings, bind, dry_run, wait, &xids, &mut report);
    }
    // 2. Decided batches not yet settled: every participant must have it. SQLite
    // participants that lost their transaction are brought forward; then the decision is
    // marked settled, so that later runs do not read it again.
    for decider in &settings.binds {
        settle_decided(settings, decider, dry_run, &mut report);
    }
    // 4. Batches still `begun` that no coordinator holds: whatever they prepared or marked
    // was settled above by the same decision, so `abort` is recorded for them and no batch
    // stays undecided. A batch whose coordinator still holds its row is running: not ours.
    // Not those whose decision step 1 could not read: their participants are still prepared.
    for bind in &settings.binds {
        abort_abandoned(
            bind,
            dry_run,
            settings.lock_timeout,
            &decisions,
            &mut report,
        );
    }
    // A bind that cannot be reached is met by several steps: say it once.
    let mut seen = std::collections::BTreeSet::new();
    report.errors.retain(|e| seen.insert(e.clone()));
    report
}

/// Step 1 of [`recover`] on one bind: its prepared transactions.
struct PreparedStep<'a> {
    settings: &'a Settings,
    bind: &'a crate::settings::BindSettings,
    dry_run: bool,
    wait: Duration,
    xids: &'a Xids,
    decisions: &'a mut BTreeMap<(String, String), Decision>,
    report: &'a mut RecoverReport,
}

/// The decider transactions (by batch and decider) that PostgreSQL participants' prepared
/// transactions name: one per batch, unless an id was forged or is another tool's.
pub(crate) type Xids = BTreeMap<(String, String), std::collections::BTreeSet<u64>>;

/// The decider transactions the prepared transactions `gids` name, by batch and decider: what
/// every participant of a batch is checked against, whichever names it.
pub(crate) fn decider_transactions<'a>(gids: impl Iterator<Item = &'a str>) -> Xids {
    let mut xids = Xids::new();
    for id in gids.filter_map(TransactionId::parse) {
        if let Some(xid) = id.decider_xid {
            xids.entry((id.batch_id, id.decider))
                .or_default()
                .insert(xid);
        }
    }
    xids
}

/// The one decider transaction a participant of `batch_id` is checked against: the one its
/// own id (`own`) and every other participant's name. Ids that name different transactions
/// decide nothing (one of them was forged, or is another tool's).
pub(crate) fn batch_xid(
    xids: &Xids,
    batch_id: &str,
    decider: &str,
    own: Option<u64>,
) -> Result<Option<u64>, String> {
    let mut named = xids
        .get(&(batch_id.to_string(), decider.to_string()))
        .cloned()
        .unwrap_or_default();
    named.extend(own);
    if named.len() > 1 {
        let list: Vec<String> = named.iter().map(u64::to_string).collect();
        return Err(format!(
            "the prepared transactions of batch {batch_id} name different transactions of its decider `{decider}` (txids {}): one of them is not this batch's (forged, or another tool's), so nothing was decided for it; find which and end it by hand",
            list.join(", ")
        ));
    }
    Ok(named.into_iter().next())
}

/// Where a decider keeps its decisions, as messages name it.
fn decisions_place(decider: &crate::settings::BindSettings) -> String {
    format!(
        "orchestrate_batches of the decider `{}` ({})",
        decider.name,
        decider.endpoint.redacted()
    )
}

/// What step 1 reads on a PostgreSQL or MySQL bind before acting on any: its prepared
/// transactions, and (PostgreSQL) the marks of migrations run outside a transaction.
struct Found {
    prepared: Vec<orchestrate_driver::PreparedXact>,
    marks: Result<Vec<orchestrate_driver::Mark>, DriverError>,
}

fn read_found(
    settings: &Settings,
    bind: &crate::settings::BindSettings,
) -> Result<Found, DriverError> {
    let mut conn = BindConnection::connect(&bind.endpoint, false, settings.lock_timeout)?;
    let prepared = conn.prepared()?;
    let marks = if bind.endpoint.backend == Backend::Postgres {
        conn.marks()
    } else {
        Ok(Vec::new())
    };
    Ok(Found { prepared, marks })
}

impl PreparedStep<'_> {
    fn run(&mut self, found: Found) {
        if !found.prepared.is_empty() {
            let timeout = self.settings.lock_timeout;
            let connected = BindConnection::connect(&self.bind.endpoint, false, timeout)
                .and_then(BindConnection::into_resolver);
            match connected {
                Ok(mut conn) => {
                    for xact in &found.prepared {
                        let action = self.end(&mut *conn, xact);
                        self.report.actions.push(action);
                    }
                }
                Err(e) => self.report.errors.push(e.to_string()),
            }
        }
        // PostgreSQL migrations that ran outside a transaction and did not finish: only a
        // person can tell how far they got.
        match found.marks {
            Ok(marks) if marks.is_empty() => {}
            Ok(marks) => report_outside_marks(self.settings, self.bind, marks, self.report),
            Err(e) => self.report.errors.push(e.to_string()),
        }
    }

    /// Ends one prepared transaction by its batch's decision (or leaves it, saying why).
    fn end(&mut self, conn: &mut dyn Resolve, xact: &orchestrate_driver::PreparedXact) -> Action {
        let action = |batch_id: &str, action: ActionKind, detail: String| Action {
            bind: self.bind.name.clone(),
            batch_id: batch_id.into(),
            action,
            detail,
        };
        let Some(gid) = TransactionId::parse(&xact.gid) else {
            return action("", ActionKind::Attention, format!("prepared transaction {} has an id this version does not understand; end it by hand", xact.gid));
        };
        let (settings, dry_run, wait) = (self.settings, self.dry_run, self.wait);
        let xid = match batch_xid(self.xids, &gid.batch_id, &gid.decider, gid.decider_xid) {
            Ok(xid) => xid,
            Err(why) => {
                let detail = format!("prepared transaction {}: {why}", xact.gid);
                return action(&gid.batch_id, ActionKind::LeftAlone, detail);
            }
        };
        let decision = self
            .decisions
            .entry((gid.batch_id.clone(), gid.decider.clone()))
            .or_insert_with(|| {
                decision_of(
                    settings,
                    &gid.decider,
                    &gid.batch_id,
                    dry_run,
                    wait,
                    false,
                    xid,
                )
            });
        let (verb, result) = match decision {
            Decision::Unknown(why) => {
                let detail = format!("prepared transaction {}: {why}", xact.gid);
                return action(&gid.batch_id, ActionKind::LeftAlone, detail);
            }
            Decision::Commit if dry_run => (ActionKind::WouldCommit, Ok(())),
            Decision::Abort if dry_run => (ActionKind::WouldRollBack, Ok(())),
            Decision::Commit => (
                ActionKind::Committed,
                conn.commit_prepared(&xact.gid)
                    .or_else(|e| ended_meanwhile(conn, &xact.gid, &gid.batch_id, true, e)),
            ),
            Decision::Abort => (
                ActionKind::RolledBack,
                conn.rollback_prepared(&xact.gid)
                    .or_else(|e| ended_meanwhile(conn, &xact.gid, &gid.batch_id, false, e)),
            ),
        };
        match result {
            Ok(()) => action(
                &gid.batch_id,
                verb,
                format!(
                    "prepared transaction {} (bind `{}` of the batch, since {})",
                    xact.gid, gid.bind, xact.prepared_at
                ),
            ),
            Err(why) => action(
                &gid.batch_id,
                ActionKind::Attention,
                format!("could not end {}: {why}", xact.gid),
            ),
        }
    }
}

/// Step 2 of [`recover`] on one bind: the decided batches it holds that are not settled.
fn settle_decided(
    settings: &Settings,
    decider: &crate::settings::BindSettings,
    dry_run: bool,
    report: &mut RecoverReport,
) {
    let timeout = settings.lock_timeout;
    let records = match BindConnection::connect(&decider.endpoint, false, timeout)
        .and_then(|mut c| c.unsettled_decisions())
    {
        Ok(found) => found,
        Err(DriverError::NoSuchFile { .. }) => return,
        Err(e) => return report.errors.push(e.to_string()),
    };
    for record in records {
        // The record was read from any schema's orchestrate_batches: act on it only when the
        // decider's decision, read with every check (rows of the batch in other schemas that
        // disagree decide nothing), is this very commit.
        let confirmed = BindConnection::connect(&decider.endpoint, false, timeout)
            .and_then(|mut c| c.decision_state(&record.batch_id));
        // The participants' ids name the decider's transaction (PostgreSQL deciders): a
        // `commit` row whose transaction did not commit there decides nothing.
        let decider_xid = record
            .participants
            .iter()
            .filter_map(|p| p.gid.as_deref().and_then(TransactionId::parse))
            .find_map(|id| id.decider_xid);
        if let (Ok(Some(state)), Some(xid)) = (&confirmed, decider_xid) {
            let place = decisions_place(decider);
            let checked = BindConnection::connect(&decider.endpoint, false, timeout)
                .and_then(|mut c| disagreement(&mut c, state, xid, &record.batch_id, &place));
            match checked {
                Ok(None) => {}
                Ok(Some(why)) => {
                    report.actions.push(Action {
                        bind: decider.name.clone(),
                        batch_id: record.batch_id.clone(),
                        action: ActionKind::Attention,
                        detail: why,
                    });
                    continue;
                }
                Err(e) => {
                    report.errors.push(e.to_string());
                    continue;
                }
            }
        }
        match confirmed {
            Ok(Some(DecisionState::Commit(r))) if *r == record => {}
            Ok(other) => {
                report.actions.push(Action {
                    bind: decider.name.clone(),
                    batch_id: record.batch_id.clone(),
                    action: ActionKind::Attention,
                    detail: format!(
                        "a `commit` row of this batch was found, but its decision reads {}; nothing was changed for it",
                        match other {
                            Some(DecisionState::Commit(_)) => "`commit` with another record",
                            Some(DecisionState::Abort) => "`abort`",
                            Some(DecisionState::Begun) => "`begun`",
                            None => "nothing",
                        }
                    ),
                });
                continue;
            }
            Err(e) => {
                report.errors.push(e.to_string());
                continue;
            }
        }
        let mut finished = true;
        for participant in &record.participants {
            let (action, done) =
                check_participant(settings, &record, participant, timeout, dry_run);
            report.actions.extend(action);
            finished &= done;
        }
        if finished && !dry_run {
            let settled = BindConnection::connect(&decider.endpoint, false, timeout)
                .and_then(|mut c| c.settle_decision(&record, &now()));
            if let Err(e) = settled {
                report.errors.push(e.to_string());
            }
        }
    }
}

/// Whether a live coordinator holds a `begun` batch on this decider: the row (PostgreSQL,
/// SQLite: the write lock), or the bind's migration lock (a MySQL-only batch's coordinator
/// holds that, not the row). Found without waiting and without writing anything.
fn held_by_coordinator(conn: &mut BindConnection, batch_id: &str) -> Result<bool, DriverError> {
    match conn {
        BindConnection::Mysql(m) => m.session_lock_free().map(|free| !free),
        _ => conn.decision_held(batch_id),
    }
}

/// Step 4 of [`recover`] on one bind. A bind that cannot be reached was reported by step 2.
fn abort_abandoned(
    bind: &crate::settings::BindSettings,
    dry_run: bool,
    timeout: Duration,
    decisions: &BTreeMap<(String, String), Decision>,
    report: &mut RecoverReport,
) {
    let Ok(mut conn) = BindConnection::connect(&bind.endpoint, false, timeout) else {
        return;
    };
    let begun = match conn.begun_batches() {
        Ok(begun) => begun,
        Err(e) => return report.errors.push(e.to_string()),
    };
    for batch_id in begun {
        if matches!(
            decisions.get(&(batch_id.clone(), bind.name.clone())),
            Some(Decision::Unknown(_))
        ) {
            continue;
        }
        let action = |action: ActionKind, detail: &str| Action {
            bind: bind.endpoint.bind.clone(),
            batch_id: batch_id.clone(),
            action,
            detail: detail.into(),
        };
        let gone = "begun by a coordinator that is gone, and nothing of it is prepared or committed on any bind recover could read";
        match held_by_coordinator(&mut conn, &batch_id) {
            Ok(true) => continue,
            Ok(false) if dry_run => report.actions.push(action(
                ActionKind::WouldAbort,
                &format!("{gone}: would record abort"),
            )),
            Ok(false) => match conn.decide_abort(&batch_id, &now(), Duration::ZERO) {
                Ok(true) => report.actions.push(action(
                    ActionKind::Aborted,
                    &format!("{gone}: recorded abort"),
                )),
                Ok(false) => {}
                Err(e) if e.is_lock_wait() => {}
                Err(e) => report.errors.push(e.to_string()),
            },
            Err(e) => report.errors.push(e.to_string()),
        }
    }
}

/// One participant of a decided, unsettled batch: brought forward or checked. Returns what
/// was done and whether the participant has finished the batch for good.
fn check_participant(
    settings: &Settings,
    record: &DecisionRecord,
    participant: &orchestrate_driver::Participant,
    timeout: Duration,
    dry_run: bool,
) -> (Option<Action>, bool) {
    if participant.bind == record.decider {
        return (None, true);
    }
    let Some(bind) = settings.bind(&participant.bind) else {
        let action = Action {
            bind: participant.bind.clone(),
            batch_id: record.batch_id.clone(),
            action: ActionKind::Attention,
            detail: format!("the decided batch includes bind `{}`, which is not configured; it cannot be checked", participant.bind),
        };
        return (Some(action), false);
    };
    if let Some(gid) = &participant.gid {
        return check_committed(settings, record, &participant.bind, gid, dry_run);
    }
    if let Some(steps) = &participant.redo {
        let action = redo(bind, record, participant, steps, timeout, dry_run);
        let done = action
            .as_ref()
            .is_none_or(|a| a.action == ActionKind::Redone);
        return (action, done);
    }
    // A non-atomic MySQL participant: finished once its batch mark is gone (step 3 above).
    let marked = BindConnection::connect(&bind.endpoint, false, timeout)
        .and_then(|mut c| c.marks())
        .map(|marks| {
            marks
                .iter()
                .any(|m| m.is_batch() && m.batch_id == record.batch_id)
        });
    (None, matches!(marked, Ok(false)))
}

/// A prepared transaction that could not be ended may have been ended meanwhile by someone
/// else (another `recover`, or its coordinator finishing its commit phase): if it is gone and
/// the bind shows the expected outcome (the batch's history there when committing, none when
/// rolling back), that is success; otherwise the error stands.
fn ended_meanwhile(
    conn: &mut dyn Resolve,
    gid: &str,
    batch_id: &str,
    commit: bool,
    error: DriverError,
) -> Result<(), String> {
    let gone = conn
        .prepared()
        .map(|list| !list.iter().any(|p| p.gid == gid))
        .unwrap_or(false);
    if gone && conn.has_batch(batch_id).ok() == Some(commit) {
        return Ok(());
    }
    Err(error.to_string())
}

/// For a PostgreSQL participant of a decided batch: its prepared transaction is gone (step 1
/// committed what it found), so its history must carry the batch. If it does not, someone
/// rolled the transaction back by hand against the decision: a heuristic outcome, reported once
/// and recorded on the bind so that it is not reported or retried again.
fn check_committed(
    settings: &Settings,
    record: &DecisionRecord,
    bind_name: &str,
    gid: &str,
    dry_run: bool,
) -> (Option<Action>, bool) {
    let Some(bind) = settings.bind(bind_name) else {
        return (None, false);
    };
    let action = |action: ActionKind, detail: String| Action {
        bind: bind_name.into(),
        batch_id: record.batch_id.clone(),
        action,
        detail,
    };
    let look = || -> Result<(Option<Action>, bool), DriverError> {
        let mut conn = BindConnection::connect(&bind.endpoint, false, settings.lock_timeout)?;
        if conn.prepared()?.iter().any(|p| p.gid == gid) {
            return Ok((None, false));
        }
        if conn.has_batch(&record.batch_id)? || conn.has_heuristic(&record.batch_id)? {
            return Ok((None, true));
        }
        let detail = format!(
            "heuristic outcome: prepared transaction {gid} was rolled back by someone else although batch {} was decided to commit; this bind does not have the batch's migrations (see `orchestrate status`). {}",
            record.batch_id,
            if dry_run {
                "Would be recorded, and not reported again"
            } else {
                "Recorded; it will not be reported again"
            }
        );
        if !dry_run {
            conn.record_heuristic(
                &record.batch_id,
                "rolled back by hand against the commit decision",
                &now(),
            )?;
        }
        Ok((Some(action(ActionKind::Attention, detail)), !dry_run))
    };
    match look() {
        Ok(a) => a,
        Err(e) => (
            Some(action(
                ActionKind::Attention,
                format!("cannot check prepared transaction {gid}: {e}"),
            )),
            false,
        ),
    }
}

/// Brings one SQLite participant forward, unless its history already carries the batch.
fn redo(
    bind: &crate::settings::BindSettings,
    record: &DecisionRecord,
    participant: &orchestrate_driver::Participant,
    steps: &[orchestrate_driver::RedoStep],
    timeout: Duration,
    dry_run: bool,
) -> Option<Action> {
    let action = |action: ActionKind, detail: String| Action {
        bind: bind.name.clone(),
        batch_id: record.batch_id.clone(),
        action,
        detail,
    };
    // Never created: a missing file is a database that was removed or moved, not one to
    // replay a batch onto.
    let mut conn = match Sqlite::connect(&bind.endpoint, false, timeout) {
        Ok(c) => c,
        Err(e) => {
            return Some(action(
                ActionKind::Attention,
                format!("the decided batch is not known to be here and cannot be checked: {e}"),
            ))
        }
    };
    match conn.has_batch(&record.batch_id) {
        Ok(true) => return None,
        Ok(false) => {}
        Err(e) => return Some(action(ActionKind::Attention, e.to_string())),
    }
    let now = match conn.applied_versions() {
        Ok(now) => now,
        Err(e) if !e.is_missing() => return Some(action(ActionKind::Attention, e.to_string())),
        Err(_) => Vec::new(),
    };
    if let Some(why) = not_the_same(participant, &now) {
        return Some(action(ActionKind::Attention, why));
    }
    if dry_run {
        let detail = format!(
            "{} step(s) of the decided batch are missing here",
            steps.len()
        );
        return Some(action(ActionKind::WouldRedo, detail));
    }
    let work = redo_work(bind, record, steps);
    let done = replay(&mut conn, bind, record, participant, &work);
    match done {
        Ok(true) => Some(action(
            ActionKind::Redone,
            format!(
                "{} step(s) re-applied from the decision record",
                steps.len()
            ),
        )),
        Ok(false) => {
            conn.rollback();
            None
        }
        Err(e) => {
            conn.rollback();
            Some(action(
                ActionKind::Attention,
                format!("could not re-apply the decided batch: {e}"),
            ))
        }
    }
}

/// Only the database the batch was decided for, in the state the batch began from, gets a
/// batch replayed: why not, when `now` (the versions applied now) says it is another.
fn not_the_same(participant: &orchestrate_driver::Participant, now: &[String]) -> Option<String> {
    let before = participant.before.as_ref()?;
    let mut now = now.to_vec();
    let mut then = before.clone();
    now.sort();
    then.sort();
    (now != then).then(|| format!(
        "the decided batch is missing here, but this database is not in the state the batch began from (applied then: [{}]; now: [{}]): it was replaced, reset or migrated since, so the batch is not replayed onto it. Bring it where it should be by hand (`orchestrate stamp`, or restore it)",
        then.join(", "),
        now.join(", ")
    ))
}

/// The steps of a decision record as a bind's work.
fn redo_work(
    bind: &crate::settings::BindSettings,
    record: &DecisionRecord,
    steps: &[orchestrate_driver::RedoStep],
) -> BindWork {
    let direction = record.direction();
    let steps = steps
        .iter()
        .map(|s| Step {
            version: Version::from_stored(&s.version),
            name: s.name.clone(),
            sql: s.sql.clone(),
            checksum: s.checksum.clone(),
            down_sql: s.down_sql.clone(),
            down_source: (direction == Direction::Down)
                .then_some(orchestrate_core::DownSqlSource::Stored),
            undo_sql: None,
            data_only: false,
            in_transaction: true,
        })
        .collect();
    BindWork {
        endpoint: bind.endpoint.clone(),
        server: None,
        plan: orchestrate_core::Plan {
            bind: bind.name.clone(),
            direction,
            steps,
            from: None,
        },
    }
}

/// Runs a decided batch's steps on a bind that lost them, in one transaction under the bind's
/// lock, re-checking there that nobody finished it meanwhile. `Ok(false)`: somebody did.
fn replay(
    conn: &mut Sqlite,
    bind: &crate::settings::BindSettings,
    record: &DecisionRecord,
    participant: &orchestrate_driver::Participant,
    work: &BindWork,
) -> Result<bool, DriverError> {
    let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    conn.begin_batch()?;
    if conn.has_batch(&record.batch_id)? {
        return Ok(false);
    }
    if let Some(why) = not_the_same(participant, &conn.applied_versions()?) {
        return Err(DriverError::Other {
            bind: bind.name.clone(),
            detail: why,
        });
    }
    let direction = record.direction();
    run_steps(conn, work, &record.batch_id, direction, &at).map_err(|e| match e {
        crate::work::BatchError::Bind(e) => e,
        other => DriverError::Other {
            bind: bind.name.clone(),
            detail: other.to_string(),
        },
    })?;
    conn.commit()?;
    Ok(true)
}

/// Settles what batches left on one MySQL bind.
fn recover_nonatomic(
    settings: &Settings,
    bind: &crate::settings::BindSettings,
    dry_run: bool,
    wait: Duration,
    xids: &Xids,
    report: &mut RecoverReport,
) {
    let Some(mut r) = MarksRecovery::open(settings, bind, dry_run, wait, xids, report) else {
        return;
    };
    let marks = match r.conn.marks() {
        Ok(m) => m,
        Err(e) => return r.report.errors.push(e.to_string()),
    };
    let open_migrations = marks
        .iter()
        .filter(|m| !m.is_batch())
        .filter(|m| !r.finish_migration_mark(m))
        .count();
    // Batches whose XA transaction is still prepared here were handled (or left alone, and
    // reported) by the prepared-transaction step.
    let xa_prepared: Vec<String> = match r.conn.prepared() {
        Ok(p) => p.into_iter().map(|x| x.gid).collect(),
        Err(e) => return r.report.errors.push(e.to_string()),
    };
    for m in marks.iter().filter(|m| m.is_batch()) {
        if xa_prepared
            .iter()
            .any(|gid| TransactionId::parse(gid).is_some_and(|g| g.batch_id == m.batch_id))
        {
            continue;
        }
        if open_migrations > 0 {
            r.push(m, ActionKind::Attention, "this batch is settled here once the interrupted migration above is resolved with `orchestrate resolve`; then run recover again".into());
            continue;
        }
        r.settle_batch_mark(m);
    }
}

/// The marks a PostgreSQL migration run outside a transaction left (see
/// `commands::segments`): what committed of it is unknown, so each is left to `orchestrate
/// resolve`, or said to be running when a run holds the bind's migration lock.
fn report_outside_marks(
    settings: &Settings,
    bind: &crate::settings::BindSettings,
    marks: Vec<orchestrate_driver::Mark>,
    report: &mut RecoverReport,
) {
    let mut conn =
        match orchestrate_driver::Postgres::connect(&bind.endpoint, settings.lock_timeout) {
            Ok(c) => c,
            Err(e) => return report.errors.push(e.to_string()),
        };
    let running = match conn.lock_free() {
        Ok(free) => !free,
        Err(e) => return report.errors.push(e.to_string()),
    };
    for m in marks {
        report.actions.push(Action {
            bind: bind.name.clone(),
            batch_id: m.batch_id.clone(),
            action: if running {
                ActionKind::LeftAlone
            } else {
                ActionKind::Attention
            },
            detail: if running {
                format!("{} is running outside a transaction now (a run holds this bind's migration lock); run recover again once it has finished or died", m.name)
            } else {
                m.describe().replace("<bind>", &bind.name)
            },
        });
    }
}

/// The marks of one MySQL bind being recovered, under the bind's migration lock.
struct MarksRecovery<'a> {
    settings: &'a Settings,
    bind: &'a crate::settings::BindSettings,
    dry_run: bool,
    wait: Duration,
    xids: &'a Xids,
    conn: Mysql,
    chain: Option<orchestrate_core::Chain>,
    at: String,
    report: &'a mut RecoverReport,
}

impl<'a> MarksRecovery<'a> {
    /// Connects, and takes the bind's lock when it has marks: what is read under it cannot
    /// change underneath. A dry run only checks that nobody holds it. `None` when there is
    /// nothing to do or the bind is busy (reported).
    fn open(
        settings: &'a Settings,
        bind: &'a crate::settings::BindSettings,
        dry_run: bool,
        wait: Duration,
        xids: &'a Xids,
        report: &'a mut RecoverReport,
    ) -> Option<MarksRecovery<'a>> {
        let busy = |report: &mut RecoverReport, batch_id: String| {
            report.actions.push(Action {
                bind: bind.name.clone(),
                batch_id,
                action: ActionKind::LeftAlone,
                detail: "a coordinator (or another recover) holds this bind's migration lock, so its batch is still running; run recover again once it has finished or died".into(),
            });
        };
        let fail = |report: &mut RecoverReport, e: DriverError| {
            report.errors.push(e.to_string());
            None
        };
        let mut conn = match Mysql::connect(&bind.endpoint, settings.lock_timeout) {
            Ok(c) => c,
            Err(e) => return fail(report, e),
        };
        let batch_id = match conn.marks() {
            Ok(m) if m.is_empty() => return None,
            Ok(m) => m[0].batch_id.clone(),
            Err(e) => return fail(report, e),
        };
        match conn.session_lock_free() {
            Ok(true) => {}
            Ok(false) => {
                busy(report, batch_id.clone());
                return None;
            }
            Err(e) => return fail(report, e),
        }
        if !dry_run {
            match conn.begin_nonatomic() {
                Ok(()) => {}
                Err(DriverError::Busy { .. }) => {
                    busy(report, batch_id);
                    return None;
                }
                Err(e) => return fail(report, e),
            }
        }
        Some(MarksRecovery {
            settings,
            bind,
            dry_run,
            wait,
            xids,
            conn,
            chain: bind.chain().ok(),
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            report,
        })
    }

    fn push(&mut self, m: &orchestrate_driver::Mark, action: ActionKind, detail: String) {
        self.report.actions.push(Action {
            bind: self.bind.name.clone(),
            batch_id: m.batch_id.clone(),
            action,
            detail,
        });
    }

    fn file(&self, version: &str) -> Option<&orchestrate_core::MigrationFile> {
        self.chain
            .as_ref()
            .and_then(|c| c.find(&Version::from_stored(version)))
    }

    /// A migration mark: recorded when every statement committed. Returns false when the
    /// migration stays open (interrupted part-way, or its record failed).
    fn finish_migration_mark(&mut self, m: &orchestrate_driver::Mark) -> bool {
        if m.statements_done < m.statements_total || m.statements_total == 0 {
            self.push(
                m,
                ActionKind::Attention,
                m.describe().replace("<bind>", &self.bind.name),
            );
            return false;
        }
        // Every statement committed; only the record is missing.
        let (direction, label) = m
            .direction()
            .unwrap_or(MarkDirection::UndoDown)
            .recorded_as();
        if self.dry_run {
            let detail = format!(
                "{}: all {} statement(s) committed before the interruption",
                m.name, m.statements_total
            );
            self.push(m, ActionKind::WouldRecord, detail);
            return true;
        }
        let file = self.file(&m.version);
        let step = Step::record_only(
            Version::from_stored(&m.version),
            m.name.clone(),
            file.map(|f| f.checksum.clone()),
            file.and_then(|f| f.down_sql.clone()),
        );
        let at = self.at.clone();
        match self
            .conn
            .finish_marked_step(&m.batch_id, direction, label, &step, m, &at)
        {
            Ok(()) => {
                let detail = format!(
                    "{} ({}): all {} statement(s) had committed before the interruption; recorded",
                    m.name, m.direction, m.statements_total
                );
                self.push(m, ActionKind::Recorded, detail);
                true
            }
            Err(e) => {
                self.push(
                    m,
                    ActionKind::Attention,
                    format!("cannot record {}: {e}", m.name),
                );
                false
            }
        }
    }

    /// A batch mark, settled by its batch's decision: kept when decided, undone otherwise.
    fn settle_batch_mark(&mut self, m: &orchestrate_driver::Mark) {
        let decision = if m.decider.is_empty() {
            Decision::Unknown(
                "its batch mark names no decider, so whether the batch was decided cannot be read"
                    .into(),
            )
        } else {
            match batch_xid(self.xids, &m.batch_id, &m.decider, None) {
                Err(why) => Decision::Unknown(why),
                // Recovering the decider itself: this recover holds (or found free) its lock,
                // so no coordinator holds it.
                Ok(xid) => decision_of(
                    self.settings,
                    &m.decider,
                    &m.batch_id,
                    self.dry_run,
                    self.wait,
                    m.decider == self.bind.name,
                    xid,
                ),
            }
        };
        let steps = match self.conn.batch_steps(&m.batch_id) {
            Ok(s) => s,
            Err(e) => return self.push(m, ActionKind::Attention, e.to_string()),
        };
        let stay = format!(
            "the batch was decided: its {} migration(s) here stay",
            steps.len()
        );
        match decision {
            Decision::Unknown(why) => self.push(m, ActionKind::LeftAlone, why),
            Decision::Commit if self.dry_run => self.push(m, ActionKind::WouldSettle, stay),
            Decision::Commit => match self.conn.clear_mark(m) {
                Ok(()) => self.push(m, ActionKind::Settled, stay),
                Err(e) => self.push(m, ActionKind::Attention, e.to_string()),
            },
            Decision::Abort => self.undo_batch(m, &steps),
        }
    }

    /// The undo of each of a batch's steps, newest first, up to the first that has no SQL
    /// to undo it (returned too: undo stops there).
    fn undos<'s>(
        &self,
        steps: &'s [orchestrate_driver::BatchStep],
    ) -> (
        Vec<crate::nonatomic::Undo>,
        Option<&'s orchestrate_driver::BatchStep>,
    ) {
        let mut undos = Vec::new();
        for st in steps {
            let file = self.file(&st.version);
            let (ran, sql) = if st.direction == "down" {
                (Direction::Down, file.map(|f| f.up_sql.clone()))
            } else {
                (
                    Direction::Up,
                    st.down_sql
                        .clone()
                        .or_else(|| file.and_then(|f| f.down_sql.clone())),
                )
            };
            let Some(sql) = sql else {
                return (undos, Some(st));
            };
            undos.push(crate::nonatomic::Undo {
                step: Step::record_only(
                    Version::from_stored(&st.version),
                    st.name.clone(),
                    st.checksum.clone(),
                    st.down_sql.clone(),
                ),
                ran,
                sql,
            });
        }
        (undos, None)
    }

    /// A batch that was not decided: its migrations here are reverted, newest first.
    fn undo_batch(
        &mut self,
        m: &orchestrate_driver::Mark,
        steps: &[orchestrate_driver::BatchStep],
    ) {
        let (undos, missing) = self.undos(steps);
        let at = self.at.clone();
        let bind = self.bind.name.clone();
        if let Some(st) = missing {
            return self.undo_until(m, &undos, st);
        }
        if self.dry_run {
            return self.push(m, ActionKind::WouldUndo, format!("the batch was not decided: its {} migration(s) here would be reverted with their undo SQL, newest first", undos.len()));
        }
        match crate::nonatomic::undo(&mut self.conn, &m.batch_id, &m.decider, &undos, &at)
            .and_then(|()| self.conn.clear_mark(m).map_err(|e| e.to_string()))
        {
            Ok(()) => self.push(m, ActionKind::Undone, format!("the batch was not decided: its {} migration(s) here were reverted with their undo SQL, newest first", undos.len())),
            Err(why) => self.push(m, ActionKind::Attention, why.replace("<bind>", &bind)),
        }
    }

    /// Undo stops at the newest migration without SQL: it is marked, so that a person undoes
    /// it by hand and says so with `resolve`.
    fn undo_until(
        &mut self,
        m: &orchestrate_driver::Mark,
        undos: &[crate::nonatomic::Undo],
        st: &orchestrate_driver::BatchStep,
    ) {
        let at = self.at.clone();
        let bind = self.bind.name.clone();
        let step = Step::record_only(
            Version::from_stored(&st.version),
            st.name.clone(),
            None,
            None,
        );
        let mark = crate::nonatomic::migration_mark(
            &m.batch_id,
            &m.decider,
            MarkDirection::undo_of(if st.direction == "down" {
                Direction::Down
            } else {
                Direction::Up
            }),
            &step,
            "",
            &at,
        );
        if self.dry_run {
            return self.push(m, ActionKind::Attention, format!("the batch was not decided, so its migrations here must be undone, but there is no SQL to undo {}", st.name));
        }
        let result = crate::nonatomic::undo(&mut self.conn, &m.batch_id, &m.decider, undos, &at)
            .and_then(|()| self.conn.put_mark(&mark).map_err(|e| e.to_string()));
        let detail = match result {
            Ok(()) => format!("the batch was not decided, so its migrations here must be undone; {} were, newest first, and then: {}", undos.len(), mark.describe().replace("<bind>", &bind)),
            Err(why) => why.replace("<bind>", &bind),
        };
        self.push(m, ActionKind::Attention, detail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrate_driver::DecisionRecord;

    #[test]
    fn a_row_acts_only_when_the_deciders_transaction_agrees() {
        let commit = DecisionState::Commit(Box::new(DecisionRecord {
            batch_id: "b".into(),
            direction: "up".into(),
            decider: "d".into(),
            participants: Vec::new(),
        }));
        use XactStatus::*;
        assert_eq!(disagrees(&commit, Committed), None);
        assert_eq!(disagrees(&commit, Aborted), Some("commit"));
        assert_eq!(disagrees(&commit, InProgress), Some("commit"));
        assert_eq!(disagrees(&DecisionState::Abort, Committed), Some("abort"));
        assert_eq!(disagrees(&DecisionState::Abort, Aborted), None);
        assert_eq!(disagrees(&DecisionState::Abort, InProgress), None);
        assert_eq!(disagrees(&DecisionState::Begun, Committed), Some("begun"));
        assert_eq!(disagrees(&DecisionState::Begun, Aborted), None);
        assert_eq!(disagrees(&DecisionState::Begun, InProgress), None);
    }
}
