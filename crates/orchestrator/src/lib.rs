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
//! - [`rollout`]: a selection cut into waves, each an atomic batch, and the rollout's record;
//! - [`signals`]: Ctrl-C and SIGTERM, honoured between steps;
//! - [`cli`]: the command line (arguments, dispatch); [`commands`]: each command's logic and
//!   output, through one [`commands::Output`]; exit codes in [`exit`];
//! - [`library`]: the same, for Rust applications: an [`Orchestrator`] built in code, with
//!   migrations compiled in ([`Migrations::embedded`]), returning typed reports and errors.
//!
//! What a single database does (version tables, locks, prepare, commit) is
//! `orchestrate-driver`'s; what a chain and a plan are is `orchestrate-core`'s.

// The coordinator's and commands' module docs walk through the protocol for maintainers,
// linking to private items: `cargo doc --document-private-items` renders those links.
#![allow(rustdoc::private_intra_doc_links)]

pub mod cli;
pub mod commands;
pub mod coordinator;
pub mod exit;
pub mod inspect;
pub mod library;
pub mod manage;
pub mod nonatomic;
pub mod recover;
pub mod rollout;
pub mod settings;
pub mod signals;
pub mod work;

pub use library::{Builder, Error, Event, Migrations, Orchestrator, RefusalKind};

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
