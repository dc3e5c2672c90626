//! Environments side by side: `diff` (what one environment has applied that another has
//! not, checksums that differ, binds in one only, batches in doubt on either side) and
//! `promote` (bring every bind of one environment to exactly the revision its counterpart has
//! in another, as one atomic batch, never beyond and never down). An environment is a layer
//! of the configuration (`config/<env>.toml`); `folders` stands for the migration folders
//! themselves (every migration applied).

use std::collections::{BTreeMap, BTreeSet};

use orchestrate_core::{problems, Allow, Direction, Version};
use serde_json::json;

use super::output::{Output, Reason, Refusal};
use crate::cli::MigrateArgs;
use crate::exit;
use crate::settings::{Settings, Sources};

/// The name that stands for the migration folders.
pub const FOLDERS: &str = "folders";

/// One bind as one side of a comparison sees it.
#[derive(Clone, Debug, Default)]
struct Side {
    /// Applied versions, with the checksum of `up.sql` when it was recorded.
    applied: BTreeMap<String, Option<String>>,
    /// Batches in doubt (prepared transactions) and unsettled marks.
    in_doubt: Vec<String>,
    /// Drift between the folders and what is applied (edited, missing, out of order).
    drift: Vec<String>,
    /// Why it could not be read.
    error: Option<String>,
    /// Versions recorded by `stamp` (never run here): their newest record is a stamp.
    stamped: Vec<String>,
    /// Which database this is (to refuse comparing a database with itself).
    identity: String,
    /// The checksum of each migration's up.sql in this side's folder.
    folder: BTreeMap<String, String>,
}

/// Every bind of an environment (or of the folders), read; `kept`: through the connections
/// `serve` keeps between reads, when it keeps them (for `diff`, which only shows).
fn read_side(
    sources: &Sources,
    name: &str,
    kept: bool,
) -> Result<(Option<Settings>, BTreeMap<String, Side>), String> {
    let settings = Settings::load(&Sources {
        env_name: if name == FOLDERS {
            sources.env_name.clone()
        } else {
            Some(name.to_string())
        },
        ..sources.clone()
    })
    .map_err(|e| format!("environment `{name}`: {e}"))?;
    let mut sides = BTreeMap::new();
    let pool = crate::workers(settings.parallelism);
    let read: Vec<(String, Side)> = pool.install(|| {
        use rayon::prelude::*;
        settings
            .binds
            .par_iter()
            .map(|b| {
                let mut side = Side {
                    identity: b.endpoint.database_identity(),
                    ..Side::default()
                };
                let chain = b.chain();
                match &chain {
                    Ok(c) => {
                        for m in &c.migrations {
                            side.folder
                                .insert(m.version.to_string(), m.checksum.clone());
                        }
                    }
                    Err(e) if name != FOLDERS => {
                        side.error = Some(format!("its migrations folder: {e}"));
                    }
                    Err(_) => {}
                }
                if name == FOLDERS {
                    match chain {
                        Ok(c) => {
                            for m in &c.migrations {
                                side.applied
                                    .insert(m.version.to_string(), Some(m.checksum.clone()));
                            }
                        }
                        Err(e) => side.error = Some(e.to_string()),
                    }
                    return (b.name.clone(), side);
                }
                // One connection (kept between reads by `serve`) reads the state and the
                // history; a SQLite file not created yet has neither.
                let timeout = crate::inspect::read_timeout(&settings);
                let connected = if kept {
                    crate::inspect::reader(&b.endpoint, timeout)
                } else {
                    orchestrate_driver::BindConnection::connect(&b.endpoint, false, timeout)
                        .map(orchestrate_driver::Reader::Fresh)
                };
                let mut conn = match connected {
                    Ok(c) => Some(c),
                    Err(orchestrate_driver::DriverError::NoSuchFile { .. }) => None,
                    Err(e) => {
                        side.error = Some(e.to_string());
                        return (b.name.clone(), side);
                    }
                };
                let state = match &mut conn {
                    Some(c) => c.read_state(),
                    None => Ok(orchestrate_driver::BindState::default()),
                };
                match state {
                    Ok(state) => {
                        for a in &state.applied {
                            side.applied
                                .insert(a.version.to_string(), a.checksum.clone());
                        }
                        side.in_doubt
                            .extend(state.in_doubt.iter().map(|x| x.gid.clone()));
                        side.in_doubt.extend(
                            state
                                .marks
                                .iter()
                                .map(|m| m.describe().replace("<bind>", &b.name)),
                        );
                        if let Ok(c) = &chain {
                            side.drift = problems(c, &state.applied)
                                .iter()
                                .map(|p| p.to_string())
                                .collect();
                        }
                        // The newest history record of each version: a stamp means it was
                        // recorded, not run, here.
                        let history = match &mut conn {
                            Some(c) => c.history_events(),
                            None => Ok(Vec::new()),
                        };
                        match history {
                            Ok(events) => {
                                let mut newest: BTreeMap<String, String> = BTreeMap::new();
                                for e in events {
                                    if matches!(e.direction.as_str(), "up" | "stamp") {
                                        newest.insert(e.version, e.direction);
                                    }
                                }
                                side.stamped = newest
                                    .into_iter()
                                    .filter(|(v, d)| d == "stamp" && side.applied.contains_key(v))
                                    .map(|(v, _)| v)
                                    .collect();
                            }
                            Err(orchestrate_driver::DriverError::NoSuchFile { .. }) => {}
                            Err(e) => side.error = Some(e.to_string()),
                        }
                    }
                    Err(e) => side.error = Some(e.to_string()),
                }
                (b.name.clone(), side)
            })
            .collect()
    });
    sides.extend(read);
    Ok(((name != FOLDERS).then_some(settings), sides))
}

/// How one bind differs between two sides.
#[derive(Debug, Default, serde::Serialize)]
struct BindDiff {
    bind: String,
    /// The side the bind is configured in, when only one has it.
    only_in: Option<String>,
    applied_only_in_from: Vec<String>,
    applied_only_in_to: Vec<String>,
    /// Versions applied on both sides with different recorded checksums.
    checksum_differs: Vec<String>,
    in_doubt_from: Vec<String>,
    in_doubt_to: Vec<String>,
    drift_from: Vec<String>,
    drift_to: Vec<String>,
    errors: Vec<String>,
}

impl BindDiff {
    fn agrees(&self) -> bool {
        self.only_in.is_none()
            && self.applied_only_in_from.is_empty()
            && self.applied_only_in_to.is_empty()
            && self.checksum_differs.is_empty()
            && self.in_doubt_from.is_empty()
            && self.in_doubt_to.is_empty()
            && self.drift_from.is_empty()
            && self.drift_to.is_empty()
            && self.errors.is_empty()
    }
}

fn compare(
    from: &str,
    to: &str,
    a: &BTreeMap<String, Side>,
    b: &BTreeMap<String, Side>,
) -> Vec<BindDiff> {
    let names: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let mut d = BindDiff {
                bind: name.clone(),
                ..BindDiff::default()
            };
            let (sa, sb) = match (a.get(name), b.get(name)) {
                (Some(sa), Some(sb)) => (sa, sb),
                (Some(_), None) => {
                    d.only_in = Some(from.to_string());
                    return d;
                }
                (None, _) => {
                    d.only_in = Some(to.to_string());
                    return d;
                }
            };
            for (side, s) in [(from, sa), (to, sb)] {
                if let Some(e) = &s.error {
                    d.errors.push(format!("cannot be read in {side}: {e}"));
                }
            }
            for (v, sum) in &sa.applied {
                match sb.applied.get(v) {
                    None => d.applied_only_in_from.push(v.clone()),
                    Some(other) => {
                        if let (Some(x), Some(y)) = (sum, other) {
                            if x != y {
                                d.checksum_differs.push(v.clone());
                            }
                        }
                    }
                }
            }
            d.applied_only_in_to = sb
                .applied
                .keys()
                .filter(|v| !sa.applied.contains_key(*v))
                .cloned()
                .collect();
            d.in_doubt_from = sa.in_doubt.clone();
            d.in_doubt_to = sb.in_doubt.clone();
            d.drift_from = sa.drift.clone();
            d.drift_to = sb.drift.clone();
            d
        })
        .collect()
}

/// `orchestrate diff FROM TO`: exit 0 when they agree, 1 when they differ, 2 when a side
/// cannot be read.
pub fn diff(sources: &Sources, from: &str, to: &str, json: bool, o: &mut Output) -> i32 {
    let (a, b) = match (read_side(sources, from, true), read_side(sources, to, true)) {
        (Ok(a), Ok(b)) => (a.1, b.1),
        (Err(e), _) | (_, Err(e)) => return o.refuse(Refusal::argument(e)),
    };
    let diffs = compare(from, to, &a, &b);
    let unreadable = diffs.iter().any(|d| !d.errors.is_empty());
    let agree = diffs.iter().all(BindDiff::agrees);
    let code = if unreadable {
        exit::INVALID
    } else if agree {
        exit::OK
    } else {
        exit::FAILED
    };
    if json {
        o.json(&json!({"from": from, "to": to, "agree": agree, "binds": diffs}));
        return code;
    }
    for d in &diffs {
        if d.agrees() {
            continue;
        }
        o.line(format!("{}:", d.bind));
        if let Some(side) = &d.only_in {
            o.line(format!("  configured in {side} only"));
        }
        let list = |v: &[String]| v.join(", ");
        if !d.applied_only_in_from.is_empty() {
            o.line(format!(
                "  applied in {from}, not in {to}: {}",
                list(&d.applied_only_in_from)
            ));
        }
        if !d.applied_only_in_to.is_empty() {
            o.line(format!(
                "  applied in {to}, not in {from}: {}",
                list(&d.applied_only_in_to)
            ));
        }
        if !d.checksum_differs.is_empty() {
            o.line(format!(
                "  applied in both with a different up.sql: {}",
                list(&d.checksum_differs)
            ));
        }
        for (side, v) in [(from, &d.in_doubt_from), (to, &d.in_doubt_to)] {
            for x in v {
                o.line(format!("  in doubt in {side}: {x}"));
            }
        }
        for (side, v) in [(from, &d.drift_from), (to, &d.drift_to)] {
            for x in v {
                o.line(format!("  drift in {side}: {x}"));
            }
        }
        for e in &d.errors {
            o.line(format!("  {e}"));
        }
    }
    let differing = diffs.iter().filter(|d| !d.agrees()).count();
    o.line(match code {
        exit::OK => format!("{from} and {to} agree on every bind ({})", diffs.len()),
        exit::INVALID => format!("{from} and {to} cannot be compared: a bind could not be read"),
        _ => format!(
            "{from} and {to} differ on {differing} of {} bind(s)",
            diffs.len()
        ),
    });
    code
}

/// `orchestrate promote --from SOURCE --to TARGET`: every bind of TARGET brought to exactly
/// the revision its counterpart has in SOURCE, as one batch (the usual validation, `--sql`,
/// `--json`). Refused, with nothing touched (exit 2), when SOURCE has drift, a batch in doubt
/// or cannot be read, when a bind is configured on one side only, or when TARGET has applied
/// something SOURCE has not (a promotion never downgrades).
pub fn promote(
    sources: &Sources,
    from: &str,
    to: &str,
    args: &MigrateArgs,
    yes: bool,
    o: &mut Output,
) -> i32 {
    if from == FOLDERS || to == FOLDERS {
        return o.refuse(Refusal::argument(format!(
            "promote goes from one environment to another; `{FOLDERS}` is not one (to bring an environment to the folders' head, run `orchestrate --env NAME upgrade --all-binds`)"
        )));
    }
    // What promote acts on is read with new sessions only, never kept ones (`serve`).
    let (source, target) = match (
        read_side(sources, from, false),
        read_side(sources, to, false),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return o.refuse(Refusal::argument(e)),
    };
    let (Some(target_settings), source, target) = (target.0, source.1, target.1) else {
        unreachable!("an environment has settings");
    };
    if target_settings.protected && args.allow_non_atomic && !yes && !args.sql {
        return o.refuse(Refusal::argument(format!(
            "environment `{to}` is protected (`protected = true`): `promote --allow-non-atomic` needs --yes; nothing was changed"
        )));
    }
    let mut refusals = Vec::new();
    let mut targets = Vec::new();
    for d in compare(from, to, &source, &target) {
        let name = &d.bind;
        if let Some(side) = &d.only_in {
            refusals.push(format!(
                "bind `{name}` is configured in {side} only: a promotion matches every bind of {to} with its counterpart in {from}"
            ));
            continue;
        }
        refusals.extend(d.errors.iter().map(|e| format!("bind `{name}` {e}")));
        refusals.extend(
            d.in_doubt_from
                .iter()
                .map(|x| format!("bind `{name}` has a batch in doubt in {from}: {x}; run `orchestrate --env {from} recover` first")),
        );
        refusals.extend(
            d.drift_from
                .iter()
                .map(|x| format!("bind `{name}` has drift in {from}: {x}; what {from} tested is not what the folders hold")),
        );
        if !d.checksum_differs.is_empty() {
            refusals.push(format!(
                "bind `{name}`: {} applied in both with a different up.sql",
                d.checksum_differs.join(", ")
            ));
        }
        if !d.applied_only_in_to.is_empty() {
            refusals.push(format!(
                "bind `{name}`: {to} has applied {} which {from} has not; a promotion never downgrades (downgrade {to} explicitly if that is what you mean)",
                d.applied_only_in_to.join(", ")
            ));
        }
        let (s, t) = (&source[name], &target[name]);
        if s.identity == t.identity {
            refusals.push(format!(
                "bind `{name}` is the same database in {from} and {to} (an ORCHESTRATE__BINDS__... variable or --config applies to both environments): a promotion would compare it with itself"
            ));
            continue;
        }
        if !s.stamped.is_empty() {
            refusals.push(format!(
                "bind `{name}`: {} recorded in {from} by `stamp`, never run there: {from} did not test it",
                s.stamped.join(", ")
            ));
        }
        // What the target will run is exactly what the source applied and the target has
        // not, with the same up.sql (the target reads its own folder).
        for v in s.applied.keys().filter(|v| !t.applied.contains_key(*v)) {
            match (&s.applied[v], t.folder.get(v)) {
                (_, None) => refusals.push(format!(
                    "bind `{name}`: {v}, applied in {from}, has no folder in {to}'s migrations"
                )),
                (None, _) => refusals.push(format!(
                    "bind `{name}`: {v} was applied in {from} without a recorded checksum (by another tool?), so what {from} ran cannot be compared; stamp or re-apply it there first"
                )),
                (Some(ran), Some(here)) if ran != here => refusals.push(format!(
                    "bind `{name}`: {v}'s up.sql in {to}'s folder is not the one {from} ran"
                )),
                _ => {}
            }
        }
        let newest_source = s.applied.keys().map(|v| Version::from_stored(v)).max();
        let extra: Vec<&String> = t
            .folder
            .keys()
            .filter(|v| {
                !s.applied.contains_key(*v)
                    && !t.applied.contains_key(*v)
                    && newest_source
                        .as_ref()
                        .is_some_and(|n| Version::from_stored(v) <= *n)
            })
            .collect();
        if !extra.is_empty() {
            refusals.push(format!(
                "bind `{name}`: {to}'s folder has {} before {from}'s newest, which {from} never ran: promoting would run {}",
                extra.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                if extra.len() == 1 { "it" } else { "them" }
            ));
        }
        // The newest applied, in the chain's own order (versions of several shapes).
        let newest = source[name]
            .applied
            .keys()
            .map(|v| Version::from_stored(v))
            .max();
        if let Some(v) = newest {
            targets.push(format!("{name}={v}"));
        }
    }
    if !refusals.is_empty() {
        return o.refuse(Refusal::of(
            Reason::Promote,
            refusals,
            Some("nothing was changed"),
        ));
    }
    // The binds whose source has applied nothing, and the target too: nothing to do there.
    let selected: Vec<String> = targets
        .iter()
        .filter_map(|t| t.split_once('=').map(|(b, _)| b.to_string()))
        .collect();
    if selected.is_empty() {
        if args.json {
            o.json(&json!({"result": "nothing to do", "binds": []}));
        } else {
            o.line(format!("Nothing to do: {from} has applied nothing."));
        }
        return exit::OK;
    }
    let promote_args = MigrateArgs {
        all_binds: false,
        binds: selected,
        target: None,
        targets,
        ..args.clone()
    };
    if !args.json && !args.sql {
        o.line(format!(
            "promoting {from} to {to}: every bind of {to} to the revision it has in {from}"
        ));
    }
    super::migrate::migrate(
        &target_settings,
        Direction::Up,
        &promote_args,
        Allow::default(),
        o,
    )
}
