//! # orchestrate-core
//!
//! The pure heart of `orchestrate`: what a migration is, how one bind's migrations form a
//! chain, what a user's target means, and what must run to reach it.
//!
//! It owns:
//! - [`Version`]: a migration version (digits only), ordered numerically (`10` after `9`);
//! - [`MigrationFile`] and [`Chain`]: one bind's migrations as read from disk, validated
//!   (no duplicate versions, no empty `up.sql`, versions of at most 50 digits);
//! - [`checksum`]: the pinned checksum of a migration's `up.sql`;
//! - [`Applied`]: what a database says it has applied;
//! - [`Target`] and [`plan_upgrade`] / [`plan_downgrade`]: pure functions from a chain, the
//!   applied records and a target to a [`Plan`] or a [`PlanError`];
//! - [`problems`]: drift between a chain and a database (edited, missing, out-of-order);
//! - [`escaping_statement`] and [`Hazard`]: statements a migration must not contain because
//!   they would end or escape the batch's transaction, found by a hand lexer per [`Dialect`]
//!   (the driver checks PostgreSQL migrations with PostgreSQL's own parser first).
//!
//! It deliberately does no I/O: no files, no databases, no clocks, no diesel, no serde. Reading
//! folders is the driver's job; running plans is the driver's and the orchestrator's.

#![deny(missing_docs)]

mod chain;
mod escapes;
mod plan;
mod statements;
mod target;
mod version;

pub use chain::{checksum, Chain, ChainError, MigrationFile, MigrationSource};
pub use escapes::{
    blank_comments, calls_function, code_at, escaping_statement, foreign_savepoint,
    names_bookkeeping, string_literals, touches_bookkeeping, Dialect, Found, Hazard, Refusal,
    BOOKKEEPING_TABLES,
};
pub use plan::{
    current, pending, plan_downgrade, plan_upgrade, problems, Allow, Applied, Direction,
    DownSqlSource, Plan, PlanError, Problem, Step,
};
pub use statements::{has_compound_body, split_statements};
pub use target::{Target, TargetError};
pub use version::{Version, VersionError};

/// Bind names are `[a-z0-9_]+` (at most 63 characters), so that environment variables can
/// override them and transaction ids built from them stay short and unambiguous.
pub fn validate_bind_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a bind name cannot be empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "bind name `{name}` is {} characters long; at most 63 are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "bind name `{name}` contains {c:?}; bind names may only use lowercase letters, digits and `_`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_names() {
        assert!(validate_bind_name("users").is_ok());
        assert!(validate_bind_name("tenant_01").is_ok());
        assert!(validate_bind_name("Users").is_err());
        assert!(validate_bind_name("my bind").is_err());
        assert!(validate_bind_name("a-b").is_err());
        assert!(validate_bind_name("").is_err());
        assert!(validate_bind_name(&"a".repeat(64)).is_err());
    }
}
