//! What `status` and `check` know of each bind: its chain, what it has applied, drift, and
//! batches in doubt with what is known of their decision. Binds are read concurrently (at most
//! `parallelism` at once) and never with a long wait on locks: a bind whose version tables are
//! locked is reported as such.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orchestrate_core::{current, pending, problems};
use orchestrate_driver::{read_chain, Backend, BindConnection, DriverError, GID_PREFIX};
use rayon::prelude::*;
use serde::Serialize;

use crate::settings::{BindSettings, Settings};

/// A prepared transaction of this tool, and what is known of its batch.
#[derive(Clone, Debug, Serialize)]
pub struct InDoubt {
    pub gid: String,
    pub batch_id: String,
    pub decider: String,
    pub prepared_at: String,
    /// How long it has been prepared, as PostgreSQL counts it (`HH:MM:SS`).
    pub age: String,
    /// `commit` (the decider holds the decision; recover commits it), `none` (no decision on
    /// the decider: recover rolls it back once its coordinator is gone), or `unknown: why`.
    pub decision: String,
}

/// One bind as `status` and `check` show it.
#[derive(Clone, Debug, Serialize)]
pub struct BindReport {
    pub bind: String,
    pub backend: String,
    pub url: String,
    pub current: Option<String>,
    pub head: Option<String>,
    pub pending: Vec<String>,
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
}

/// Reads locks for at most this long, so `status` never hangs behind an in-doubt batch.
const READ_LOCK_TIMEOUT: Duration = Duration::from_secs(2);

fn is_lock_timeout(e: &DriverError) -> bool {
    e.to_string().contains("lock timeout")
}

/// Reads every bind, concurrently.
pub fn inspect(settings: &Settings, binds: &[&BindSettings]) -> Vec<BindReport> {
    let decisions: Mutex<HashMap<(String, String), String>> = Mutex::new(HashMap::new());
    let pool = crate::workers(settings.parallelism);
    pool.install(|| {
        binds
            .par_iter()
            .map(|b| inspect_one(settings, b, &decisions))
            .collect()
    })
}

fn inspect_one(
    settings: &Settings,
    bind: &BindSettings,
    decisions: &Mutex<HashMap<(String, String), String>>,
) -> BindReport {
    let started = Instant::now();
    let mut report = BindReport {
        bind: bind.name.clone(),
        backend: bind.endpoint.backend.to_string(),
        url: bind.endpoint.redacted().to_string(),
        current: None,
        head: None,
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
    };
    let chain = read_chain(&bind.name, &bind.migrations);
    let timeout = settings.lock_timeout.min(READ_LOCK_TIMEOUT);
    let state = match BindConnection::connect(&bind.endpoint, false, timeout) {
        Ok(mut conn) => {
            // Prepared transactions first: pg_prepared_xacts takes no lock, so they are
            // known even when they lock the version tables.
            match conn.prepared() {
                Ok(list) => {
                    for p in list {
                        report.in_doubt.push(describe(settings, p, decisions));
                    }
                }
                Err(e) => report.errors.push(e.to_string()),
            }
            conn.read_applied().map(Some)
        }
        Err(DriverError::NoSuchFile { .. }) => Ok(None),
        Err(e) => Err(e),
    };
    let applied = match state {
        Ok(Some(s)) => {
            report.unsettled = s
                .marks
                .iter()
                .map(|m| m.describe().replace("<bind>", &bind.name))
                .collect();
            s.applied
        }
        Ok(None) => Vec::new(),
        Err(e) if is_lock_timeout(&e) => {
            report.errors.push(format!(
                "bind `{}`: its version tables are locked (by an in-doubt batch or another run); waited {} ms. Run `orchestrate recover` if a batch is in doubt",
                bind.name,
                timeout.as_millis()
            ));
            report.elapsed_ms = started.elapsed().as_millis() as u64;
            return report;
        }
        Err(e) => {
            report.errors.push(e.to_string());
            report.elapsed_ms = started.elapsed().as_millis() as u64;
            return report;
        }
    };
    report.current = current(&applied).map(|a| a.version.to_string());
    match &chain {
        Ok(chain) => {
            report.head = chain.head().map(|m| m.version.to_string());
            let waiting = pending(chain, &applied);
            report.pending = waiting.iter().map(|m| m.version.to_string()).collect();
            // A pending migration a batch would refuse (see orchestrate_driver::check_plan).
            report.errors.extend(
                orchestrate_driver::check_migrations(bind.endpoint.backend, &bind.name, waiting)
                    .iter()
                    .map(|e| e.to_string()),
            );
            report
                .problems
                .extend(problems(chain, &applied).iter().map(|p| p.to_string()));
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

fn describe(
    settings: &Settings,
    p: orchestrate_driver::PreparedXact,
    decisions: &Mutex<HashMap<(String, String), String>>,
) -> InDoubt {
    let mut parts = p.gid.strip_prefix(GID_PREFIX).unwrap_or("").splitn(3, ':');
    let batch_id = parts.next().unwrap_or_default().to_string();
    let decider = parts.next().unwrap_or_default().to_string();
    let key = (batch_id.clone(), decider.clone());
    let known = decisions.lock().unwrap().get(&key).cloned();
    let decision = known.unwrap_or_else(|| {
        let found = match settings.bind(&decider) {
            None => format!("unknown: the decider `{decider}` is not configured"),
            Some(d) => match BindConnection::connect(&d.endpoint, false, READ_LOCK_TIMEOUT)
                .and_then(|mut c| c.read_decision(&batch_id))
            {
                Ok(Some(_)) => "commit".into(),
                Ok(None) | Err(DriverError::NoSuchFile { .. }) => "none".into(),
                Err(e) => format!("unknown: {e}"),
            },
        };
        decisions.lock().unwrap().insert(key, found.clone());
        found
    });
    InDoubt {
        gid: p.gid,
        batch_id,
        decider,
        prepared_at: p.prepared_at,
        age: p.age,
        decision,
    }
}
