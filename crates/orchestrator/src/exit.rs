//! Exit codes of the `orchestrate` binary, one place for all of them.

/// Done: every selected bind is at its target (or there was nothing to do).
pub const OK: i32 = 0;
/// Failed, and every bind is as it was before the command.
pub const FAILED: i32 = 1;
/// Invalid input, configuration or migration files, or a database that cannot be reached;
/// nothing was touched.
pub const INVALID: i32 = 2;
/// Needs attention: a batch is in doubt, or a bind could not be finished; run
/// `orchestrate recover` or follow the message.
pub const ATTENTION: i32 = 3;
