//! `history`: one bind's migrations, applied (as recorded, with when and by which batch) and
//! pending (on disk), then every step recorded in `orchestrate_history`.

use std::collections::BTreeMap;

use orchestrate_driver::{BindConnection, BindState, DriverError, HistoryEvent};
use serde_json::json;

use super::output::{Output, Refusal};
use super::select;
use crate::exit;
use crate::settings::Settings;

/// `orchestrate history BIND`: every migration of the bind, applied or pending.
pub fn history(settings: &Settings, name: &str, json: bool, o: &mut Output) -> i32 {
    let bind = match select(settings, &[name.to_string()], false) {
        Ok(b) => b[0],
        Err(e) => return o.refuse(Refusal::argument(e)),
    };
    let chain = match bind.chain() {
        Ok(c) => c,
        Err(e) => return o.refuse(Refusal::argument(e.to_string())),
    };
    // One connection reads the state and the steps; a SQLite file not created yet has
    // neither.
    let read = match BindConnection::connect(&bind.endpoint, false, settings.lock_timeout) {
        Ok(mut conn) => conn
            .read_state()
            .and_then(|state| Ok((state, conn.history_events()?))),
        Err(DriverError::NoSuchFile { .. }) => Ok((BindState::default(), Vec::new())),
        Err(e) => Err(e),
    };
    let (state, events) = match read {
        Ok(read) => read,
        Err(e) => return o.refuse(Refusal::argument(e.to_string())),
    };
    // The step that applied each version, replaying the steps in order: `up` and `stamp`
    // apply, `down` and `unstamp` revert, and `undo` (a MySQL step taken back) does the
    // opposite of what the version's last step did.
    let mut applied_by: BTreeMap<String, &HistoryEvent> = BTreeMap::new();
    for e in &events {
        match e.direction.as_str() {
            "up" | "stamp" => {
                applied_by.insert(e.version.clone(), e);
            }
            "down" | "unstamp" => {
                applied_by.remove(&e.version);
            }
            "undo" => match applied_by.entry(e.version.clone()) {
                std::collections::btree_map::Entry::Occupied(applied) => {
                    applied.remove();
                }
                std::collections::btree_map::Entry::Vacant(reverted) => {
                    reverted.insert(e);
                }
            },
            _ => {}
        }
    }
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
    let by = |v: &orchestrate_core::Version| applied_by.get(&v.to_string()).copied();
    if json {
        let list: Vec<_> = entries
            .iter()
            .map(|(v, (n, s))| {
                let step = by(v).filter(|_| *s != "pending");
                json!({
                    "version": v.to_string(),
                    "name": n,
                    "state": s,
                    "batch_id": step.map(|e| e.batch_id.clone()),
                    "applied_at": step.map(|e| e.at.clone()),
                })
            })
            .collect();
        o.json(&json!({"bind": bind.name, "migrations": list, "steps": events}));
    } else {
        let out = &mut *o.out;
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
        for (v, (n, s)) in &entries {
            match by(v).filter(|_| *s != "pending") {
                Some(e) => {
                    let _ = writeln!(out, "  {s:<23} {n}  ({} by batch {})", e.at, e.batch_id);
                }
                None => {
                    let _ = writeln!(out, "  {s:<23} {n}");
                }
            }
        }
        if !events.is_empty() {
            let _ = writeln!(out, "steps, oldest first:");
            for e in &events {
                let _ = writeln!(
                    out,
                    "  {}  {:<9} {}  batch {}",
                    e.at, e.direction, e.name, e.batch_id
                );
            }
        }
    }
    exit::OK
}
