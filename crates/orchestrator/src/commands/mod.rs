//! The commands' logic, one module per command family, each printing through [`Output`];
//! `cli` only parses the arguments and dispatches here.

pub mod config;
pub mod environments;
pub mod history;
pub mod migrate;
pub mod output;
mod progress;
pub mod recover;
pub mod rollout;
pub mod segments;
pub mod status;

use orchestrate_driver::{BindConnection, BindState, DriverError};

pub use output::{Output, Reason, Refusal};

use crate::settings::{BindSettings, Settings};

/// The configured binds a command names, in configuration order (every bind when `all` or
/// when none is named).
pub(crate) fn select<'s>(
    settings: &'s Settings,
    names: &[String],
    all: bool,
) -> Result<Vec<&'s BindSettings>, String> {
    if all || names.is_empty() {
        return Ok(settings.binds.iter().collect());
    }
    for name in names {
        if settings.bind(name).is_none() {
            let known: Vec<_> = settings.binds.iter().map(|b| b.name.as_str()).collect();
            return Err(format!(
                "no bind is named `{name}`; configured binds: {}",
                known.join(", ")
            ));
        }
    }
    Ok(settings
        .binds
        .iter()
        .filter(|b| names.contains(&b.name))
        .collect())
}

/// Reads a bind's state without creating anything: a SQLite file that does not exist yet has
/// applied nothing.
pub(crate) fn read_state(
    bind: &BindSettings,
    settings: &Settings,
) -> Result<BindState, DriverError> {
    match BindConnection::connect(&bind.endpoint, false, settings.lock_timeout) {
        Ok(mut conn) => conn.read_state(),
        Err(DriverError::NoSuchFile { .. }) => Ok(BindState::default()),
        Err(e) => Err(e),
    }
}

/// An error and its sources, once each.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
