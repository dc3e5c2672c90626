//! `recover`: runs [`crate::recover::recover`] and prints what it did, or would do.

use std::time::Duration;

use super::output::Output;
use crate::exit;
use crate::settings::Settings;

/// `orchestrate recover [--dry-run] [--wait SECONDS]`: exit 3 while anything needs attention.
pub fn recover(
    settings: &Settings,
    dry_run: bool,
    wait: Option<u64>,
    json: bool,
    o: &mut Output,
) -> i32 {
    let wait = wait.map_or(settings.lock_timeout, Duration::from_secs);
    let report = crate::recover::recover(settings, dry_run, wait);
    if json {
        o.json(&serde_json::to_value(&report).expect("reports serialise"));
    } else {
        if report.actions.is_empty() && report.errors.is_empty() {
            o.line("Nothing to recover: no prepared or unfinished batch was found.");
        }
        for a in &report.actions {
            o.line(format!(
                "{}: batch {}: {}: {}",
                a.bind, a.batch_id, a.action, a.detail
            ));
        }
        for e in &report.errors {
            o.error(e);
        }
    }
    if report.needs_attention() {
        exit::ATTENTION
    } else {
        exit::OK
    }
}
