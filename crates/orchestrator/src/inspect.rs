//! What `status` and `check` know of each bind: its chain, what it has applied, drift, and
//! batches in doubt with what is known of their decision. Binds are read concurrently (at most
//! `parallelism` at once) and never with a long wait on locks: a bind whose version tables are
//! locked is reported as such.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use orchestrate_core::{current, pending, problems};
use orchestrate_driver::{
    Backend, BindConnection, DecisionRecord, DecisionState, DriverError, PoolStats, ReadPools,
    Reader, TransactionId,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::settings::{BindSettings, Settings};

/// A prepared transaction of this tool, and what is known of its batch.
#[derive(Clone, Debug, Serialize)]
pub struct InDoubt {
    /// The prepared transaction's id (`orchestrate:<batch>:<decider>:<bind>[:<txid>]`).
    pub gid: String,
    /// Its batch.
    pub batch_id: String,
    /// The bind whose decision ends it.
    pub decider: String,
    /// When it was prepared, as the server says.
    pub prepared_at: String,
    /// How long it has been prepared, as PostgreSQL counts it (`HH:MM:SS`).
    pub age: String,
    /// `commit` (the decider holds the decision; recover commits it), `abort` (recover rolls
    /// it back), `running` (its coordinator holds the batch: not in doubt, busy), `none` (not
    /// decided yet: recover decides abort once its coordinator no longer holds the batch), or
    /// `unknown: why` (no evidence: recover changes nothing).
    pub decision: String,
}

/// One bind as `status` and `check` show it.
#[derive(Clone, Debug, Serialize)]
pub struct BindReport {
    /// The bind's name.
    pub bind: String,
    /// `postgres`, `sqlite` or `mysql`.
    pub backend: String,
    /// Its URL, password redacted.
    pub url: String,
    /// The newest version applied (`None`: nothing, or unreadable: see `errors`).
    pub current: Option<String>,
    /// The newest version of its chain (`None`: an empty or invalid chain).
    pub head: Option<String>,
    /// The versions an upgrade to head would apply, in order.
    pub pending: Vec<String>,
    /// The folder names of `current`, `head` and `pending` (`2026-11-24-223000_create_users`):
    /// the version with what the migration does. `current_name` comes from the folder, or
    /// from what the history recorded when the folder is gone.
    pub current_name: Option<String>,
    pub head_name: Option<String>,
    pub pending_names: Vec<String>,
    /// Drift between the chain and the database (edited, missing, out of order).
    pub problems: Vec<String>,
    /// Why the bind could not be read fully: invalid migrations, unreachable, locked.
    pub errors: Vec<String>,
    pub in_doubt: Vec<InDoubt>,
    /// What a batch can promise on this bind: `atomic` or `not atomic`, and how.
    pub guarantee: String,
    /// MySQL: batches and migrations under way and not settled (a crash or a failure left
    /// them); `recover` and `resolve` settle them.
    pub unsettled: Vec<String>,
    /// How long reading this bind took.
    pub elapsed_ms: u64,
    /// Why the bind's migration folders are not a valid chain (then `head` and `pending` are
    /// unknown, not empty); also in `errors`.
    pub chain_error: Option<String>,
}

/// Reads locks for at most this long, so `status` never hangs behind an in-doubt batch.
const READ_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

/// The lock timeout of a read of a bind's state (`status`, `diff`).
pub(crate) fn read_timeout(settings: &Settings) -> Duration {
    settings.lock_timeout.min(READ_LOCK_TIMEOUT)
}

/// Connections kept between reads, once a long-running process asked for them.
static READ_POOLS: OnceLock<ReadPools> = OnceLock::new();

/// From now on, in this process, the reads of `status` and `diff` keep a connection per
/// PostgreSQL or MySQL bind between runs, at most `per_server` per server (see
/// [`ReadPools`]); a bind not read for `forget_after` gives its connection back. For a
/// long-running process (`orchestrate serve`); a command reads with new connections. The
/// first call sets the budget.
pub fn keep_read_connections(per_server: usize, forget_after: Duration) {
    READ_POOLS.get_or_init(|| ReadPools::new(per_server, forget_after));
}

/// What the kept read connections have done, when they are on.
pub fn read_pool_stats() -> Option<PoolStats> {
    READ_POOLS.get().map(ReadPools::stats)
}

/// A connection to read a bind with: kept between reads when [`keep_read_connections`] was
/// called, otherwise a new one. Never creates a SQLite file.
pub(crate) fn reader(
    endpoint: &orchestrate_driver::Endpoint,
    lock_timeout: Duration,
) -> Result<Reader, DriverError> {
    match READ_POOLS.get() {
        Some(pools) => pools.connect(endpoint, lock_timeout),
        None => BindConnection::connect(endpoint, false, lock_timeout).map(Reader::Fresh),
    }
}

/// Reads every bind, concurrently.
pub fn inspect(settings: &Settings, binds: &[&BindSettings]) -> Vec<BindReport> {
    let decisions: Mutex<HashMap<DecisionKey, String>> = Mutex::new(HashMap::new());
    let found: Mutex<Vec<DecisionRecord>> = Mutex::new(Vec::new());
    let pool = crate::workers(settings.parallelism);
    let mut reports: Vec<BindReport> = pool.install(|| {
        binds
            .par_iter()
            .map(|b| inspect_one(settings, b, &decisions, &found))
            .collect()
    });
    with_batch_transactions(settings, &mut reports, &decisions);
    let mut found = found.into_inner().unwrap();
    let (elsewhere, unreadable) = decisions_elsewhere(settings, binds);
    found.extend(elsewhere);
    for (bind, message) in lost_decided_batches(settings, &found, binds)
        .into_iter()
        .chain(unreadable)
    {
        if let Some(r) = reports.iter_mut().find(|r| r.bind == bind) {
            r.unsettled.push(message);
        }
    }
    reports
}

/// When `selected` holds a SQLite bind: the unsettled commit decisions on the binds not
/// selected that could have decided a batch it took part in (PostgreSQL and SQLite binds;
/// a MySQL bind never decides a batch with an atomic bind in it), and, for each selected
/// SQLite bind, a message per such bind that cannot be read. An unreadable bind is missing
/// evidence: it may hold the decision of a batch whose part the SQLite bind lost, so that
/// bind is in doubt until it can be read. A SQLite file that does not exist holds no decision.
pub fn decisions_elsewhere(
    settings: &Settings,
    selected: &[&BindSettings],
) -> (Vec<DecisionRecord>, Vec<(String, String)>) {
    let sqlite: Vec<&str> = selected
        .iter()
        .filter(|b| b.endpoint.backend == Backend::Sqlite)
        .map(|b| b.name.as_str())
        .collect();
    let mut decisions = Vec::new();
    let mut unreadable = Vec::new();
    if sqlite.is_empty() {
        return (decisions, unreadable);
    }
    for other in settings.binds.iter().filter(|o| {
        o.endpoint.backend != Backend::Mysql && !selected.iter().any(|b| b.name == o.name)
    }) {
        let read = BindConnection::connect(&other.endpoint, false, READ_LOCK_TIMEOUT)
            .and_then(|mut c| c.unsettled_decisions());
        match read {
            Ok(found) => decisions.extend(found),
            Err(DriverError::NoSuchFile { .. }) => {}
            Err(e) => unreadable.extend(sqlite.iter().map(|s| {
                (
                    s.to_string(),
                    format!(
                        "bind `{s}` may have lost its part of a batch decided on bind `{}`, which cannot be read ({e}): run again when `{}` can be reached, then `orchestrate recover` if it reports a lost part",
                        other.name, other.name
                    ),
                )
            })),
        }
    }
    (decisions, unreadable)
}

fn inspect_one(
    settings: &Settings,
    bind: &BindSettings,
    decisions: &Mutex<HashMap<DecisionKey, String>>,
    found: &Mutex<Vec<DecisionRecord>>,
) -> BindReport {
    let started = Instant::now();
    let mut report = empty_report(bind);
    let timeout = read_timeout(settings);
    let state = match reader(&bind.endpoint, timeout) {
        Ok(mut conn) => {
            read_prepared(settings, &mut conn, decisions, &mut report);
            conn.read_applied().map(Some)
        }
        Err(DriverError::NoSuchFile { .. }) => Ok(None),
        Err(e) => Err(e),
    };
    let applied = match state {
        Ok(Some(s)) => {
            found.lock().unwrap().extend(s.unsettled.iter().cloned());
            // A PostgreSQL migration outside a transaction whose run is alive is not
            // interrupted: say it runs.
            let running =
                s.marks.iter().any(|m| m.decider.is_empty()) && outside_running(settings, bind);
            report.unsettled.extend(s.marks.iter().map(|m| {
                let text = m.describe().replace("<bind>", &bind.name);
                if running && m.decider.is_empty() {
                    format!("running now, outside a transaction (a run holds this bind's migration lock); if it stays, it was: {text}")
                } else {
                    text
                }
            }));
            Some(s.applied)
        }
        Ok(None) => Some(Vec::new()),
        Err(e) if e.is_lock_wait() => {
            report.errors.push(format!(
                "bind `{}`: its version tables are locked (by an in-doubt batch or another run); waited {} ms. Run `orchestrate recover` if a batch is in doubt",
                bind.name,
                timeout.as_millis()
            ));
            None
        }
        Err(e) => {
            report.errors.push(e.to_string());
            None
        }
    };
    if let Some(applied) = applied {
        compare_with_chain(bind, &applied, &mut report);
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// A bind's report before anything is read.
fn empty_report(bind: &BindSettings) -> BindReport {
    BindReport {
        bind: bind.name.clone(),
        backend: bind.endpoint.backend.to_string(),
        url: bind.endpoint.redacted().to_string(),
        current: None,
        head: None,
        current_name: None,
        head_name: None,
        pending_names: Vec::new(),
        pending: Vec::new(),
        problems: Vec::new(),
        errors: Vec::new(),
        in_doubt: Vec::new(),
        guarantee: match bind.endpoint.backend {
            Backend::Postgres => "atomic (two-phase commit)",
            Backend::Sqlite => "atomic (decider, or held open until the decision)",
            Backend::Mysql => {
                "NOT atomic for schema changes (DDL commits per statement; undone with down SQL on failure); atomic through XA when every migration of a batch is data_only"
            }
        }
        .to_string(),
        unsettled: Vec::new(),
        elapsed_ms: 0,
        chain_error: None,
    }
}

/// Prepared transactions first: `pg_prepared_xacts` takes no lock, so they are known even
/// when they lock the version tables. Then foreign ones that hold the migration lock.
fn read_prepared(
    settings: &Settings,
    conn: &mut BindConnection,
    decisions: &Mutex<HashMap<DecisionKey, String>>,
    report: &mut BindReport,
) {
    match conn.prepared_and_foreign() {
        Ok((ours, foreign)) => {
            for p in ours {
                report.in_doubt.push(describe(settings, p, decisions));
            }
            report.unsettled.extend(foreign.into_iter().map(|gid| format!(
                "prepared transaction `{gid}` is not this tool's but holds this database's migration lock (a migration ran PREPARE TRANSACTION itself?), so every batch here waits on it; look at it and end it by hand (COMMIT PREPARED or ROLLBACK PREPARED '{gid}')"
            )));
        }
        Err(e) => {
            report.chain_error = Some(e.to_string());
            report.errors.push(e.to_string());
        }
    }
}

/// The bind's chain on disk against what it has applied: current, head, pending (and any a
/// batch would refuse), drift.
fn compare_with_chain(
    bind: &BindSettings,
    applied: &[orchestrate_core::Applied],
    report: &mut BindReport,
) {
    let now = current(applied);
    report.current = now.map(|a| a.version.to_string());
    report.current_name = now.and_then(|a| a.name.clone());
    match bind.chain() {
        Ok(chain) => {
            report.head = chain.head().map(|m| m.version.to_string());
            report.head_name = chain.head().map(|m| m.name.clone());
            if let Some(m) = now.and_then(|a| chain.find(&a.version)) {
                report.current_name = Some(m.name.clone());
            }
            let waiting = pending(&chain, applied);
            report.pending = waiting.iter().map(|m| m.version.to_string()).collect();
            report.pending_names = waiting.iter().map(|m| m.name.clone()).collect();
            // A pending migration a batch would refuse (see orchestrate_driver::check_plan).
            report.errors.extend(
                orchestrate_driver::check_migrations(bind.endpoint.backend, &bind.name, waiting)
                    .iter()
                    .map(|e| e.to_string()),
            );
            report
                .problems
                .extend(problems(&chain, applied).iter().map(|p| p.to_string()));
        }
        Err(e) => {
            report.chain_error = Some(e.to_string());
            report.errors.push(e.to_string());
        }
    }
}

/// A batch's decision as `status` tells it, by batch, decider and the decider transaction
/// the participant names (XA participants name none).
type DecisionKey = (String, String, Option<u64>);

fn describe(
    settings: &Settings,
    p: orchestrate_driver::PreparedXact,
    decisions: &Mutex<HashMap<DecisionKey, String>>,
) -> InDoubt {
    let parsed = TransactionId::parse(&p.gid);
    let (batch_id, decider, xid) = parsed
        .clone()
        .map(|t| (t.batch_id, t.decider, t.decider_xid))
        .unwrap_or_default();
    let decision = match parsed {
        Some(_) => decision_text(settings, &p.gid, &batch_id, &decider, xid, decisions),
        None => "unknown: an id this version does not understand; end it by hand".into(),
    };
    InDoubt {
        gid: p.gid,
        batch_id,
        decider,
        prepared_at: p.prepared_at,
        age: p.age,
        decision,
    }
}

/// What is known of a batch's decision (see [`InDoubt::decision`]), read once per key.
fn decision_text(
    settings: &Settings,
    gid: &str,
    batch_id: &str,
    decider: &str,
    xid: Option<u64>,
    decisions: &Mutex<HashMap<DecisionKey, String>>,
) -> String {
    let key = (batch_id.to_string(), decider.to_string(), xid);
    if let Some(known) = decisions.lock().unwrap().get(&key) {
        return known.clone();
    }
    let found = match settings.bind(decider) {
        None => format!("unknown: the decider `{decider}` is not configured"),
        Some(d) => match BindConnection::connect(&d.endpoint, false, READ_LOCK_TIMEOUT).and_then(
            |mut c| {
                let state = c.decision_state(batch_id)?;
                // What recover will say of a row that disagrees with the decider's
                // transaction (see recover::disagreement): nothing is decided from it.
                if let (Some(s), Some(xid)) = (&state, xid) {
                    let place = format!("the decider `{decider}`'s orchestrate_batches");
                    if let Some(why) =
                        crate::recover::disagreement(&mut c, s, xid, batch_id, &place)?
                    {
                        return Ok(Err(why));
                    }
                }
                Ok(Ok(state))
            },
        ) {
            Ok(Err(why)) => format!("unknown: {why}"),
            Ok(Ok(state)) => match state {
                Some(DecisionState::Commit(_)) => "commit".into(),
                Some(DecisionState::Abort) => "abort".into(),
                Some(DecisionState::Begun) if batch_is_running(settings, gid) => "running".into(),
                Some(DecisionState::Begun) => "none".into(),
                None => format!(
                    "unknown: no row for the batch in the decider `{decider}`'s orchestrate_batches"
                ),
            },
            Err(e) => format!("unknown: {e}"),
        },
    };
    decisions.lock().unwrap().insert(key, found.clone());
    found
}

/// Every participant is told its batch's decision with the decider transaction the batch's
/// participants name, as `recover` acts on it: an XA participant (whose id names none) gets
/// the one another participant names, read on the binds not selected too when needed; ids
/// that name different transactions decide nothing.
fn with_batch_transactions(
    settings: &Settings,
    reports: &mut [BindReport],
    decisions: &Mutex<HashMap<DecisionKey, String>>,
) {
    let mut gids: Vec<String> = reports
        .iter()
        .flat_map(|r| r.in_doubt.iter())
        .map(|d| d.gid.clone())
        .collect();
    // Only a PostgreSQL decider's transaction is named in its participants' ids.
    let pg_decider = |decider: &str| {
        settings
            .bind(decider)
            .is_some_and(|b| b.endpoint.backend == Backend::Postgres)
    };
    let unnamed = reports.iter().flat_map(|r| r.in_doubt.iter()).any(|d| {
        TransactionId::parse(&d.gid)
            .is_some_and(|id| id.decider_xid.is_none() && pg_decider(&id.decider))
    });
    let mut unread: Vec<String> = Vec::new();
    if unnamed {
        for other in settings.binds.iter().filter(|b| {
            b.endpoint.backend != Backend::Sqlite && !reports.iter().any(|r| r.bind == b.name)
        }) {
            match BindConnection::connect(&other.endpoint, false, READ_LOCK_TIMEOUT)
                .and_then(|mut c| c.prepared())
            {
                Ok(list) => gids.extend(list.into_iter().map(|p| p.gid)),
                Err(e) => unread.push(format!("{}: {e}", other.name)),
            }
        }
    }
    let xids = crate::recover::decider_transactions(gids.iter().map(String::as_str));
    for d in reports.iter_mut().flat_map(|r| r.in_doubt.iter_mut()) {
        let Some(id) = TransactionId::parse(&d.gid) else {
            continue;
        };
        match crate::recover::batch_xid(&xids, &d.batch_id, &d.decider, id.decider_xid) {
            Err(why) => d.decision = format!("unknown: {why}"),
            Ok(None) if !unread.is_empty() && pg_decider(&d.decider) => {
                d.decision = format!(
                    "unknown: binds that may name its decider's transaction could not be read ({})",
                    unread.join("; ")
                )
            }
            Ok(Some(xid)) if id.decider_xid.is_none() => {
                d.decision = decision_text(
                    settings,
                    &d.gid,
                    &d.batch_id,
                    &d.decider,
                    Some(xid),
                    decisions,
                )
            }
            Ok(_) => {}
        }
    }
}

/// Whether the batch of a prepared transaction is still being run by its coordinator (which
/// holds the batch's row on its decider until it decides): then it is not in doubt, only busy.
pub fn batch_is_running(settings: &Settings, gid: &str) -> bool {
    TransactionId::parse(gid).is_some_and(|id| batch_running(settings, &id.decider, &id.batch_id))
}

/// Whether batch `batch_id`, decided on bind `decider`, is `begun` there and its row is held
/// by its coordinator (alive, still working). Anything unknown reads as not running.
pub fn batch_running(settings: &Settings, decider: &str, batch_id: &str) -> bool {
    let Some(decider) = settings.bind(decider) else {
        return false;
    };
    BindConnection::connect(&decider.endpoint, false, READ_LOCK_TIMEOUT)
        .and_then(|mut c| {
            Ok(
                matches!(c.decision_state(batch_id)?, Some(DecisionState::Begun))
                    && c.decision_held(batch_id)?,
            )
        })
        .unwrap_or(false)
}

/// Whether a PostgreSQL bind's migration outside a transaction is running now: a run holds
/// the bind's migration lock, or a session of a dead run still runs its statement. Anything
/// unknown reads as not running (then the mark is reported as interrupted).
pub fn outside_running(settings: &Settings, bind: &crate::settings::BindSettings) -> bool {
    bind.endpoint.backend == Backend::Postgres
        && orchestrate_driver::Postgres::connect(&bind.endpoint, settings.lock_timeout)
            .and_then(|mut c| c.lock_free())
            .is_ok_and(|free| !free)
}

/// The SQLite binds among `binds` that lost their part of a decided batch (their open
/// transaction was lost after the decision, so `recover` must bring them forward before
/// anything else runs there), each with what to say. `decisions` are the unsettled commit
/// decisions read from the deciders.
pub fn lost_decided_batches(
    settings: &Settings,
    decisions: &[DecisionRecord],
    binds: &[&BindSettings],
) -> Vec<(String, String)> {
    let mut lost = Vec::new();
    for record in decisions {
        for participant in record.participants.iter().filter(|p| p.redo.is_some()) {
            if participant.bind == record.decider
                || !binds.iter().any(|b| b.name == participant.bind)
            {
                continue;
            }
            let Some(bind) = settings.bind(&participant.bind) else {
                continue;
            };
            let has = BindConnection::connect(&bind.endpoint, false, READ_LOCK_TIMEOUT)
                .and_then(|mut c| c.has_batch(&record.batch_id));
            if !matches!(has, Ok(true)) {
                lost.push((
                    participant.bind.clone(),
                    format!(
                        "bind `{}` lost its part of batch {}, which was decided to commit (decider `{}`); run `orchestrate recover` to bring it forward before anything else runs here",
                        participant.bind, record.batch_id, record.decider
                    ),
                ));
            }
        }
    }
    lost
}
