//! # orchestrate
//!
//! Atomic migrations across several databases ("binds"). This crate owns:
//!
//! - [`settings`]: the layered configuration (TOML files, then environment variables);
//! - [`coordinator`]: one batch across binds, committed everywhere or nowhere, with the
//!   decision recorded durably before any bind commits;
//! - [`inspect`]: what `status` and `check` read of each bind, concurrently;
//! - [`manage`]: `init`, `new` and `stamp`, which run no migration;
//! - [`recover`]: finishing batches a crash left behind (presumed abort, SQLite redo);
//! - [`signals`]: Ctrl-C and SIGTERM, honoured between steps;
//! - [`cli`]: the `orchestrate` commands, their output and their exit codes ([`exit`]).
//!
//! What a single database does (version tables, locks, prepare, commit) is
//! `orchestrate-driver`'s; what a chain and a plan are is `orchestrate-core`'s.

pub mod cli;
pub mod coordinator;
pub mod exit;
pub mod inspect;
pub mod manage;
pub mod nonatomic;
pub mod recover;
pub mod settings;
pub mod signals;
