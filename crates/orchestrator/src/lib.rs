//! # orchestrate
//!
//! Atomic migrations across several databases ("binds"): every batch commits on every bind or
//! on none, whatever happens. This crate is the `orchestrate` command and the library behind
//! it. An application uses it through [`Orchestrator`] (see [`library`] for an example):
//! binds built in code or read from a configuration folder, migrations from folders or
//! compiled in with diesel's `embed_migrations!` ([`Migrations::embedded`]), typed reports
//! ([`BatchReport`], [`BindReport`], [`RecoverReport`]) and typed errors ([`Error`]).
//!
//! For maintainers, the modules behind it (public for the binary and the tests, hidden from
//! these docs; `cargo doc --document-private-items` shows them):
//!
//! - [`settings`]: the layered configuration (TOML files, then environment variables);
//! - [`coordinator`]: one batch across binds, committed everywhere or nowhere, with the
//!   decision recorded durably before any bind commits;
//! - [`inspect`]: what `status` and `check` read of each bind, concurrently;
//! - [`manage`]: `init`, `new` and `stamp`, which run no migration;
//! - [`recover`]: finishing batches a crash left behind (presumed abort, SQLite redo);
//! - [`rollout`]: a selection cut into waves, each an atomic batch, and the rollout's record;
//! - [`signals`]: Ctrl-C and SIGTERM, honoured between steps;
//! - [`cli`]: the command line (arguments, dispatch); [`commands`]: each command's logic and
//!   output, through one [`commands::Output`]; exit codes in [`exit`];
//! - [`library`]: the library API, over the same checks and protocol.
//!
//! What a single database does (version tables, locks, prepare, commit) is
//! `orchestrate-driver`'s; what a chain and a plan are is `orchestrate-core`'s.

// The coordinator's and commands' module docs walk through the protocol for maintainers,
// linking to private items: `cargo doc --document-private-items` renders those links.
#![allow(rustdoc::private_intra_doc_links)]
// The library's surface: [`Orchestrator`] and what it returns. The modules are public for the
// `orchestrate` binary and the tests, and hidden from the documentation.
#![deny(missing_docs)]

#[doc(hidden)]
pub mod cli;
#[doc(hidden)]
pub mod commands;
#[doc(hidden)]
pub mod coordinator;
#[doc(hidden)]
pub mod exit;
#[doc(hidden)]
pub mod inspect;
pub mod library;
#[doc(hidden)]
pub mod manage;
#[doc(hidden)]
pub mod nonatomic;
#[cfg(test)]
mod public_api;
#[doc(hidden)]
pub mod recover;
#[doc(hidden)]
pub mod rollout;
#[cfg(feature = "serve")]
#[doc(hidden)]
pub mod serve;
#[doc(hidden)]
pub mod settings;
#[doc(hidden)]
pub mod signals;
#[doc(hidden)]
pub mod work;

pub use coordinator::{BatchError, BatchReport, BindOutcome, Verdict};
pub use inspect::{BindReport, InDoubt};
pub use library::{Builder, Error, Event, Migrations, Orchestrator, Reason, RefusalKind};
pub use recover::{Action, ActionKind, RecoverReport};

/// The worker threads of this process, `n` of them, made once and never ended.
///
/// Threads that used a MySQL connection must not exit while the process runs: at thread exit,
/// OpenSSL's thread-state cleanup (loaded by both libmariadb and libpq) was seen to double-free
/// or crash in about 1 run in 100 when a per-batch pool was dropped. Threads that live until
/// the process ends never run that cleanup.
pub fn workers(n: usize) -> &'static rayon::ThreadPool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static POOLS: OnceLock<Mutex<HashMap<usize, &'static rayon::ThreadPool>>> = OnceLock::new();
    let n = n.max(1);
    let mut pools = POOLS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    pools.entry(n).or_insert_with(|| {
        Box::leak(Box::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .expect("a thread pool"),
        ))
    })
}
