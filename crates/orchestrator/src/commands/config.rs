//! `config`: the effective configuration after every layer, and for each value the layer it
//! came from. URLs are printed redacted: no password reaches the output.

use serde_json::{json, Value};

use super::output::Output;
use crate::exit;
use crate::settings::Settings;

/// What the decider is when `decider` is not set, as `--help` and the README say it.
const DEFAULT_DECIDER: &str =
    "chosen per batch: its first SQLite bind, else its first PostgreSQL bind by name";

/// One value and where it came from.
fn entry(value: Value, from: &str) -> Value {
    json!({"value": value, "from": from})
}

/// `orchestrate config [--json]`.
pub fn config(settings: &Settings, json: bool, o: &mut Output) -> i32 {
    let template_of = |bind: &str| {
        settings
            .templates
            .iter()
            .find(|t| t.members.iter().any(|m| m == bind))
    };
    // A template's binds take their url and folder from the template's keys.
    let bind_key = |bind: &str, field: &str| match template_of(bind) {
        Some(t) => format!("templates.{}.{field}", t.name),
        None => format!("binds.{bind}.{field}"),
    };
    let binds: Vec<Value> = settings
        .binds
        .iter()
        .map(|b| {
            json!({
                "name": b.name,
                "backend": b.endpoint.backend.to_string(),
                "template": template_of(&b.name).map(|t| t.name.clone()),
                "url": entry(json!(b.endpoint.redacted()), settings.origin(&bind_key(&b.name, "url"))),
                "migrations": entry(
                    json!(b.migrations.display().to_string()),
                    settings.origin(&bind_key(&b.name, "migrations")),
                ),
            })
        })
        .collect();
    let templates: Vec<Value> = settings
        .templates
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "migrations": entry(
                    json!(t.migrations.display().to_string()),
                    settings.origin(&format!("templates.{}.migrations", t.name)),
                ),
                "binds": t.members,
            })
        })
        .collect();
    let report = json!({
        "root": settings.root.display().to_string(),
        "layers": settings.layers,
        "decider": entry(json!(settings.decider), settings.origin("decider")),
        "lock_timeout_ms": entry(json!(settings.lock_timeout.as_millis() as u64), settings.origin("lock_timeout_ms")),
        "parallelism": entry(json!(settings.parallelism), settings.origin("parallelism")),
        "keep_connections": entry(json!(settings.keep_connections), settings.origin("keep_connections")),
        "protected": entry(json!(settings.protected), settings.origin("protected")),
        "rollout": {
            "wave_size": entry(json!(settings.rollout.wave_size), settings.origin("rollout.wave_size")),
            "canary": entry(json!(settings.rollout.canary), settings.origin("rollout.canary")),
            "together": entry(json!(settings.rollout.together), settings.origin("rollout.together")),
        },
        "binds": binds,
        "templates": templates,
    });
    if json {
        o.json(&report);
        return exit::OK;
    }
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        // Only the decider can be unset.
        Value::Null => DEFAULT_DECIDER.to_string(),
        other => other.to_string(),
    };
    o.line(format_args!("project root: {}", settings.root.display()));
    o.line(format_args!(
        "layers, later ones win: {}",
        settings.layers.join(", ")
    ));
    for key in [
        "decider",
        "lock_timeout_ms",
        "parallelism",
        "keep_connections",
        "protected",
    ] {
        let e = &report[key];
        o.line(format_args!(
            "{key:<16} {:<40} from {}",
            text(&e["value"]),
            text(&e["from"])
        ));
    }
    if settings.rollout != Default::default() {
        o.line(format_args!(
            "rollout          wave_size {}, canary [{}], together [{}]",
            settings
                .rollout
                .wave_size
                .map_or("none (one batch)".to_string(), |n| n.to_string()),
            settings.rollout.canary.join(", "),
            settings.rollout.together.join(", ")
        ));
    }
    for t in &templates {
        let names: Vec<String> = t["binds"]
            .as_array()
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        o.line(format_args!(
            "template {}: {} bind(s): {}",
            text(&t["name"]),
            names.len(),
            names.join(", ")
        ));
        o.line(format_args!(
            "  {:<14} {:<40} from {}",
            "migrations",
            text(&t["migrations"]["value"]),
            text(&t["migrations"]["from"])
        ));
    }
    for b in &binds {
        let of = match b["template"].as_str() {
            Some(t) => format!(", of template {t}"),
            None => String::new(),
        };
        o.line(format_args!(
            "bind {} ({}{of})",
            text(&b["name"]),
            text(&b["backend"])
        ));
        for field in ["url", "migrations"] {
            o.line(format_args!(
                "  {field:<14} {:<40} from {}",
                text(&b[field]["value"]),
                text(&b[field]["from"])
            ));
        }
    }
    exit::OK
}
