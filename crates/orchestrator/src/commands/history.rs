//! `history`: one bind's migrations, applied (as recorded) and pending (on disk).

use std::collections::BTreeMap;

use orchestrate_driver::read_chain;
use serde_json::json;

use super::output::{Output, Refusal};
use super::{read_state, select};
use crate::exit;
use crate::settings::Settings;

/// `orchestrate history BIND`: every migration of the bind, applied or pending.
pub fn history(settings: &Settings, name: &str, json: bool, o: &mut Output) -> i32 {
    let bind = match select(settings, &[name.to_string()], false) {
        Ok(b) => b[0],
        Err(e) => return o.refuse(Refusal::argument(e)),
    };
    let chain = match read_chain(&bind.name, &bind.migrations) {
        Ok(c) => c,
        Err(e) => return o.refuse(Refusal::argument(e.to_string())),
    };
    let state = match read_state(bind, settings) {
        Ok(s) => s,
        Err(e) => return o.refuse(Refusal::argument(e.to_string())),
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
        o.json(&json!({"bind": bind.name, "migrations": list}));
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
        for (n, s) in entries.values() {
            let _ = writeln!(out, "  {s:<8} {n}");
        }
    }
    exit::OK
}
