//! Use as a library: an application migrates all its databases, atomically, when it starts,
//! from migrations compiled into its binary.
//!
//! An [`Orchestrator`] is built from binds given in code ([`Builder::bind`]) or from a
//! configuration folder as the command line reads it ([`Builder::config_dir`]), and runs
//! [`status`](Orchestrator::status), [`upgrade`](Orchestrator::upgrade) (to head or to
//! targets), [`downgrade`](Orchestrator::downgrade) and [`recover`](Orchestrator::recover),
//! with the same checks and the same protocol as the `orchestrate` command. It returns typed
//! reports and typed [`Error`]s; it never prints and never exits. Progress goes to a callback
//! ([`Builder::on_progress`]) and to `tracing`.
//!
//! A bind's migrations come from a folder in diesel's layout or from diesel's
//! `embed_migrations!` ([`Migrations::embedded`]): the same checksums, drift checks and stored
//! down SQL either way.
//!
//! Everything here blocks, like diesel. From an async runtime, call it inside
//! `tokio::task::spawn_blocking` (or your runtime's equivalent) before serving requests.
//!
//! ```
//! use diesel_migrations::{embed_migrations, EmbeddedMigrations};
//! use orchestrate::{Migrations, Orchestrator};
//!
//! const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
//! const BILLING: EmbeddedMigrations = embed_migrations!("../../migrations/billing");
//!
//! # fn main() -> Result<(), orchestrate::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let orchestrator = Orchestrator::builder()
//!     .root(dir.path())
//!     .bind("users", "sqlite://var/users.sqlite3", Migrations::embedded(&USERS))
//!     .bind("billing", "sqlite://var/billing.sqlite3", Migrations::embedded(&BILLING))
//!     .build()?;
//! // Both binds reach their head in one atomic batch, or neither changes.
//! let report = orchestrator.upgrade()?.expect("there was something to do");
//! assert_eq!(report.binds.len(), 2);
//! // Nothing left to do the second time.
//! assert!(orchestrator.upgrade()?.is_none());
//! let status = orchestrator.status()?;
//! assert!(status.iter().all(|b| b.pending.is_empty() && b.current == b.head));
//! # Ok(())
//! # }
//! ```
//!
//! Connections: the library opens its own connections from each bind's URL (at most
//! `parallelism` binds at once, each with one connection, and one more for the decider; a
//! batch of at most `keep_connections`, default 32, PostgreSQL binds that also fits in half
//! of a server's connections keeps its participants' sessions until COMMIT PREPARED), so a
//! server's `max_connections` must leave room for `parallelism + 1` of them besides the
//! application's own pool. PostgreSQL binds need `max_prepared_transactions` of at least the
//! number of PostgreSQL binds of a batch on that server (checked before anything runs). A
//! PostgreSQL bind can borrow the application's own pool instead ([`Builder::pool`]); MySQL
//! pools are not taken yet.

#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use orchestrate_core::{Allow, Direction};
use orchestrate_driver::{Embedded, Endpoint, PgPool};

use crate::cli::MigrateArgs;
use crate::commands::migrate::check_batch;
use crate::commands::Refusal;
use crate::coordinator::{run_batch, BatchReport, Progress, RunOptions, Verdict};
use crate::inspect::BindReport;
use crate::recover::RecoverReport;
use crate::settings::{BindSettings, RolloutSettings, Settings, Sources};

/// Where a bind's migrations come from.
#[derive(Clone, Debug)]
pub enum Migrations {
    /// A folder in diesel's layout (`<version>_<name>/up.sql`, `down.sql`, `metadata.toml`);
    /// a relative path is read against the builder's [`root`](Builder::root).
    Folder(PathBuf),
    /// Migrations compiled into the binary by diesel's `embed_migrations!`, read once.
    Embedded(Embedded),
}

impl Migrations {
    /// A migrations folder.
    ///
    /// ```
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let folder = dir.path().join("migrations/users/2024-01-01-000000_create_users");
    /// std::fs::create_dir_all(&folder).unwrap();
    /// std::fs::write(folder.join("up.sql"), "CREATE TABLE users (id INTEGER PRIMARY KEY);").unwrap();
    /// std::fs::write(folder.join("down.sql"), "DROP TABLE users;").unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::folder("migrations/users"))
    ///     .build()
    ///     .unwrap();
    /// // Versions are the folder name's digits.
    /// assert_eq!(o.status().unwrap()[0].pending, ["20240101000000"]);
    /// ```
    pub fn folder(path: impl Into<PathBuf>) -> Migrations {
        Migrations::Folder(path.into())
    }

    /// Migrations from `embed_migrations!("migrations/users")`. Their text is read now; the
    /// chain is checked (versions, empty `up.sql`) when the orchestrator is built.
    ///
    /// Two differences from the same folder, both from what diesel keeps: `metadata.toml`'s
    /// `data_only` key does not survive `embed_migrations!` (an embedded migration is never
    /// `data_only`), and a `metadata.toml` that does not set `run_in_transaction` reads as
    /// `run_in_transaction = false` (diesel's reading; a folder reads it as `true`), so such a
    /// migration is refused where the folder's would run: write the key out.
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// // The path is read at compile time, relative to the crate's Cargo.toml.
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(o.status().unwrap()[0].pending.len(), 2);
    /// ```
    pub fn embedded(migrations: &diesel_migrations::EmbeddedMigrations) -> Migrations {
        Migrations::Embedded(Embedded::new("embedded", migrations))
    }
}

/// An event of a running batch, for [`Builder::on_progress`].
#[derive(Clone, Copy, Debug)]
pub enum Event<'a> {
    /// A line the command line would print (a bind prepared, committed, a failure).
    Line(&'a str),
    /// A phase over `total` binds begins (`prepare`, `commit`).
    Phase {
        /// The phase's name.
        name: &'a str,
        /// How many binds it covers.
        total: usize,
    },
    /// One bind of the current phase is done.
    Tick,
}

/// What the caller does with a progress event.
type Callback = Arc<dyn Fn(Event<'_>) + Send + Sync>;

/// Why a batch was refused, as the command line's exit code says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalKind {
    /// The configuration, the migrations or the databases do not allow the batch (the command
    /// line's exit 2): an invalid chain, drift, an unreachable database, too few prepared
    /// transactions, a statement that would escape the batch. Nothing was changed.
    Invalid,
    /// Another run holds a bind (exit 1). Nothing was changed; try again later.
    Busy,
    /// A batch is in doubt or a migration was interrupted (exit 3): run
    /// [`Orchestrator::recover`] (or `orchestrate resolve` for an interrupted migration run
    /// outside a transaction) first. Nothing was changed.
    Attention,
}

/// What kind of refusal an error is: every reason a batch is refused before anything runs.
/// [`Error::Refused`] gives one per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// A bind name or an argument that the configuration does not have.
    Argument,
    /// A target that does not parse, names no migration of the chain, or lies on the wrong
    /// side of the bind's current revision (or a downgrade of a migration not applied).
    Target,
    /// A bind's migrations are not a valid chain (a folder without up.sql, two folders of one
    /// version, unreadable files).
    Chain,
    /// A bind's database could not be reached or read.
    Unreachable,
    /// A migration applied with another up.sql than its folder's now, or applied and no
    /// longer in the folders.
    Drift,
    /// A downgrade step has no down SQL (no down.sql, none stored).
    NoDownSql,
    /// A statement that would escape the batch (a `COMMIT`, `PREPARE TRANSACTION`, a change
    /// to the session the bookkeeping depends on, a write to this tool's own tables).
    Escapes,
    /// A migration that must run outside a transaction (`run_in_transaction = false`),
    /// without consent or where that is not possible.
    NonTransactional,
    /// Binds that cannot be atomic in this batch (MySQL DDL), without consent.
    NotAtomic,
    /// Two binds are one database.
    SameDatabase,
    /// A SQLite database this process cannot write beside (its folder, its journal).
    SqlitePath,
    /// A PostgreSQL server without room for the batch's prepared transactions
    /// (`max_prepared_transactions`).
    PreparedTransactions,
    /// No bind can record the decision durably.
    Decider,
    /// A protected environment, without consent.
    Protected,
    /// Another run holds a bind (exit 1): try again later.
    Busy,
    /// A batch an earlier run left in doubt, or a decided batch a bind has not finished
    /// (exit 3): recover first.
    InDoubt,
    /// A migration run outside a transaction was interrupted part-way (exit 3): settle it
    /// with `orchestrate resolve`.
    Interrupted,
    /// What the environments do not allow to promote (see the message).
    Promote,
    /// A rollout's record or its waves do not allow the batch (see the message).
    Rollout,
    /// A refusal of a command the library does not run (`stamp`, `resolve`, `new`, `serve`);
    /// the message says why.
    Other,
}

impl Reason {
    /// The exit code a refusal for this reason has on the command line.
    pub fn code(self) -> i32 {
        match self {
            Reason::Busy => crate::exit::FAILED,
            Reason::InDoubt | Reason::Interrupted => crate::exit::ATTENTION,
            _ => crate::exit::INVALID,
        }
    }
}

/// What went wrong. Every variant says whether anything changed.
///
/// ```
/// use orchestrate::{Error, Reason, RefusalKind};
///
/// // What an application starting up does with each.
/// fn advice(e: &Error) -> &'static str {
///     match e {
///         Error::Config(_) => "fix the binds or the configuration; nothing ran",
///         Error::Refused { kind: RefusalKind::Busy, .. } => "another instance migrates: retry",
///         Error::Refused { kind: RefusalKind::Attention, .. } => "call recover() first",
///         Error::Refused { reasons, .. } if reasons.contains(&Reason::Drift) => {
///             "an applied migration was edited: ship the original, add a new one"
///         }
///         Error::Refused { .. } => "fix what `errors` says; nothing changed",
///         Error::RolledBack { .. } => "nothing changed: fix the failing migration",
///         Error::NeedsAttention { .. } | Error::RecoverIncomplete { .. } => "page a person",
///         Error::Unsupported(_) => "use the orchestrate command",
///     }
/// }
/// assert_eq!(advice(&Error::Unsupported("waves".into())), "use the orchestrate command");
/// let drift = Error::Refused {
///     kind: RefusalKind::Invalid,
///     errors: vec!["bind `users`: applied migration 1_a was edited after it ran".into()],
///     reasons: vec![Reason::Drift],
/// };
/// assert!(advice(&drift).starts_with("an applied migration was edited"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The builder's binds or the configuration folder are not valid (nothing ran).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The batch was refused before anything ran; `errors` are the command line's messages,
    /// and `reasons` says what each one is.
    #[error("refused ({kind:?}), nothing was changed: {}", errors.join("; "))]
    Refused {
        /// Why, as an exit code would say.
        kind: RefusalKind,
        /// Every reason, as the command line prints them.
        errors: Vec<String>,
        /// What each of `errors` is, in the same order.
        reasons: Vec<Reason>,
    },
    /// The batch ran and failed before its decision: every bind was rolled back (or its
    /// non-atomic migrations undone), as the report says.
    #[error("the batch failed and was rolled back: {message}")]
    RolledBack {
        /// The first failure.
        message: String,
        /// Every bind's outcome.
        report: Box<BatchReport>,
    },
    /// The batch needs a person or [`Orchestrator::recover`]: whether it committed is not
    /// known everywhere, or a bind could not finish. Nothing more is done until then.
    #[error("the batch needs attention: {message}")]
    NeedsAttention {
        /// What happened.
        message: String,
        /// Every bind's outcome.
        report: Box<BatchReport>,
    },
    /// `recover` left something it could not settle (a batch in doubt without evidence, a
    /// bind it could not reach, an interrupted migration for `orchestrate resolve`).
    #[error("recover left something for a person: {}", describe_recover(report))]
    RecoverIncomplete {
        /// What recover did and found.
        report: Box<RecoverReport>,
    },
    /// What the command line can do and the library cannot yet (rollouts in waves, batches
    /// with migrations outside a transaction).
    #[error("not supported by the library yet: {0}")]
    Unsupported(String),
}

fn describe_recover(report: &RecoverReport) -> String {
    report
        .errors
        .iter()
        .cloned()
        .chain(
            report
                .actions
                .iter()
                .filter(|a| a.action.needs_attention())
                .map(|a| format!("{} (batch {}): {}", a.bind, a.batch_id, a.detail)),
        )
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    fn from_refusal(refusal: Refusal) -> Error {
        let kind = match refusal.code {
            crate::exit::FAILED => RefusalKind::Busy,
            crate::exit::ATTENTION => RefusalKind::Attention,
            _ => RefusalKind::Invalid,
        };
        Error::Refused {
            kind,
            errors: refusal.errors,
            reasons: refusal.reasons,
        }
    }
}

struct Bind {
    name: String,
    url: String,
    migrations: Migrations,
}

/// Builds an [`Orchestrator`]; see the [module](self) documentation for an example.
#[derive(Default)]
pub struct Builder {
    binds: Vec<Bind>,
    config_dir: Option<PathBuf>,
    environment: Option<String>,
    overrides: Vec<(String, Migrations)>,
    pools: Vec<(String, PgPool)>,
    root: Option<PathBuf>,
    decider: Option<String>,
    lock_timeout: Option<Duration>,
    parallelism: Option<usize>,
    keep_connections: Option<usize>,
    allow_non_atomic: bool,
    allow_protected: bool,
    progress: Option<Callback>,
}

impl Builder {
    /// A bind: its name (`[a-z0-9_]+`), its URL (`postgres://`, `sqlite://PATH`, or
    /// `mysql://` in builds with MySQL) and where its migrations come from.
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Error, Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(o.binds(), ["users"]);
    /// // A URL of no known backend is refused when building, before anything connects.
    /// let bad = Orchestrator::builder()
    ///     .bind("users", "oracle://db/users", Migrations::embedded(&USERS))
    ///     .build();
    /// assert!(matches!(bad, Err(Error::Config(_))));
    /// ```
    pub fn bind(mut self, name: &str, url: &str, migrations: Migrations) -> Builder {
        self.binds.push(Bind {
            name: name.into(),
            url: url.into(),
            migrations,
        });
        self
    }

    /// Reads the binds and settings from a configuration folder as the command line does
    /// (`default.toml`, then `<environment>.toml`, then `ORCHESTRATE__...` variables); binds
    /// given with [`bind`](Builder::bind) are added to them. The project root is the folder's
    /// parent.
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let project = tempfile::tempdir().unwrap();
    /// std::fs::create_dir(project.path().join("config")).unwrap();
    /// std::fs::write(
    ///     project.path().join("config/default.toml"),
    ///     "[binds.users]\nurl = \"sqlite://var/users.sqlite3\"\n",
    /// )
    /// .unwrap();
    /// let orchestrator = Orchestrator::builder()
    ///     .config_dir(project.path().join("config"))
    ///     // The configured folder (migrations/users) is not shipped: use the embedded copy.
    ///     .migrations("users", Migrations::embedded(&USERS))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(orchestrator.binds(), ["users"]);
    /// assert!(orchestrator.upgrade().unwrap().is_some());
    /// ```
    pub fn config_dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.config_dir = Some(dir.into());
        self
    }

    /// With [`config_dir`](Builder::config_dir): the environment whose file is layered over
    /// `default.toml` (otherwise `ORCHESTRATE_ENV`, if set).
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let project = tempfile::tempdir().unwrap();
    /// let config = project.path().join("config");
    /// std::fs::create_dir(&config).unwrap();
    /// std::fs::write(config.join("default.toml"), "[binds.users]\nurl = \"sqlite://var/dev.sqlite3\"\n").unwrap();
    /// std::fs::write(config.join("staging.toml"), "[binds.users]\nurl = \"sqlite://var/staging.sqlite3\"\n").unwrap();
    /// let o = Orchestrator::builder()
    ///     .config_dir(&config)
    ///     .environment("staging")
    ///     .migrations("users", Migrations::embedded(&USERS))
    ///     .build()
    ///     .unwrap();
    /// o.upgrade().unwrap();
    /// assert!(project.path().join("var/staging.sqlite3").exists());
    /// assert!(!project.path().join("var/dev.sqlite3").exists());
    /// ```
    pub fn environment(mut self, name: &str) -> Builder {
        self.environment = Some(name.into());
        self
    }

    /// With [`config_dir`](Builder::config_dir): `bind`'s migrations come from `migrations`
    /// instead of its configured folder (such as its embedded copy).
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let project = tempfile::tempdir().unwrap();
    /// let config = project.path().join("config");
    /// std::fs::create_dir(&config).unwrap();
    /// // The configured folder is not shipped with the binary...
    /// std::fs::write(
    ///     config.join("default.toml"),
    ///     "[binds.users]\nurl = \"sqlite://var/users.sqlite3\"\nmigrations = \"migrations/users\"\n",
    /// )
    /// .unwrap();
    /// // ...so the compiled-in copy stands in for it.
    /// let o = Orchestrator::builder()
    ///     .config_dir(&config)
    ///     .migrations("users", Migrations::embedded(&USERS))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(o.status().unwrap()[0].pending.len(), 2);
    /// ```
    pub fn migrations(mut self, bind: &str, migrations: Migrations) -> Builder {
        self.overrides.push((bind.into(), migrations));
        self
    }

    /// Connections for PostgreSQL bind `bind` come from the application's own pool (its TLS
    /// and connection settings) instead of being opened from the bind's URL, which still
    /// names the database in messages and in what a batch records (and is what the command
    /// line would connect with).
    ///
    /// What the pool must allow: up to 2 of its connections at once per bind it serves, within its
    /// `connection_timeout` (a batch's session, and a second one to read or to finish the batch); a
    /// pool whose connections the application holds while it migrates makes the batch fail with
    /// nothing changed, or, if the decision was already taken, leaves it for
    /// [`Orchestrator::recover`]. Each borrowed connection starts as a new session would (what the
    /// pool's customizer or an earlier user left on it, settings, role, temporary tables, locks, is
    /// undone) and is closed when the library is done with it, never given back: a migration may
    /// have changed its session, and the pool opens a fresh one in its place. A borrowed session
    /// must be the one the bind's URL gives (the same server, database and role, and the same
    /// startup options, such as a `search_path`; the URL is connected to, at most every 5 s, to
    /// read that), or the batch is refused: otherwise its bookkeeping would be where the command
    /// line does not look. `build` refuses a pool for a bind that is not PostgreSQL or not
    /// configured.
    ///
    /// What is not seen: a custom setting (a name with a dot, such as `app.tenant`) given in the
    /// pool URL's `options` is not listed by PostgreSQL anywhere a session can read, and `RESET
    /// ALL` keeps it; a migration (a column default, a trigger, a policy) reading it with
    /// `current_setting` sees the pool's value where the command line sees none. Give such settings
    /// with `SET` in the pool's customizer instead (that is undone), or not at all.
    ///
    /// Not a pool through a pooler in transaction mode (pgbouncer's `pool_mode = transaction`):
    /// what it lends is not one server session, so the check above cannot vouch for the session
    /// a batch's later statements reach. Give such a bind its URL (straight to the server).
    ///
    /// Why only PostgreSQL: a MySQL or MariaDB session cannot be made new again from SQL (no
    /// `RESET ALL`; a temporary table the pool's customizer created cannot be listed before
    /// MariaDB 11.2, and would take a migration's writes; the client library's
    /// `mysql_reset_connection` is not reachable through diesel), and a SQLite connection is
    /// a file the library opens itself at no cost. Those binds connect with their URL.
    ///
    /// ```
    /// use diesel::r2d2::{ConnectionManager, Pool};
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Error, Migrations, Orchestrator};
    ///
    /// const EVENTS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// // The application's pool (built lazily here: no server is needed to run this).
    /// let pool = Pool::builder()
    ///     .max_size(4)
    ///     .build_unchecked(ConnectionManager::new("postgres://app@db.internal/events"));
    /// let dir = tempfile::tempdir().unwrap();
    /// let builder = |url: &str| {
    ///     Orchestrator::builder()
    ///         .root(dir.path())
    ///         .bind("events", url, Migrations::embedded(&EVENTS))
    ///         .pool("events", pool.clone())
    /// };
    /// // Only a PostgreSQL bind takes a pool.
    /// let refused = builder("sqlite://events.sqlite3").build();
    /// assert!(matches!(refused, Err(Error::Config(m)) if m.contains("pool")));
    /// // A PostgreSQL bind borrows from it for status, upgrade, downgrade and recover.
    /// assert!(builder("postgres://app@db.internal/events").build().is_ok());
    /// ```
    pub fn pool(mut self, bind: &str, pool: PgPool) -> Builder {
        self.pools.push((bind.into(), pool));
        self
    }

    /// The folder relative SQLite paths and migration folders are read against (default:
    /// the working directory, or the configuration folder's parent).
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://data/users.sqlite3", Migrations::embedded(&USERS))
    ///     .build()
    ///     .unwrap();
    /// o.upgrade().unwrap();
    /// // The relative SQLite path was read against the root.
    /// assert!(dir.path().join("data/users.sqlite3").exists());
    /// ```
    pub fn root(mut self, root: impl Into<PathBuf>) -> Builder {
        self.root = Some(root.into());
        self
    }

    /// The bind whose own transaction decides every batch it takes part in (default: as the
    /// command line chooses, see the README).
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    /// const BILLING: EmbeddedMigrations = embed_migrations!("../../migrations/billing");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .bind("billing", "sqlite://billing.sqlite3", Migrations::embedded(&BILLING))
    ///     .decider("billing")
    ///     .build()
    ///     .unwrap();
    /// let report = o.upgrade().unwrap().unwrap();
    /// assert_eq!(report.decider, "billing");
    /// ```
    pub fn decider(mut self, bind: &str) -> Builder {
        self.decider = Some(bind.into());
        self
    }

    /// How long to wait for a lock another run holds (default 10 s).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     // Give up quickly when another instance holds the database.
    ///     .lock_timeout(Duration::from_secs(2))
    ///     .build()
    ///     .unwrap();
    /// assert!(o.upgrade().unwrap().is_some());
    /// ```
    pub fn lock_timeout(mut self, timeout: Duration) -> Builder {
        self.lock_timeout = Some(timeout);
        self
    }

    /// How many binds are worked on at once (default 8; each is a connection).
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let mut builder = Orchestrator::builder().root(dir.path()).parallelism(2);
    /// for tenant in ["a", "b", "c"] {
    ///     let url = format!("sqlite://tenant_{tenant}.sqlite3");
    ///     builder = builder.bind(&format!("tenant_{tenant}"), &url, Migrations::embedded(&USERS));
    /// }
    /// let o = builder.build().unwrap();
    /// // Three binds, at most two worked on at once, still one atomic batch.
    /// assert_eq!(o.upgrade().unwrap().unwrap().binds.len(), 3);
    /// ```
    pub fn parallelism(mut self, n: usize) -> Builder {
        self.parallelism = Some(n);
        self
    }

    /// The widest batch (in PostgreSQL binds per server) whose prepared participants keep
    /// their session until COMMIT PREPARED (default 32; each saves a connection at commit,
    /// and holds one meanwhile; kept only within half the server's connections). 0 closes
    /// each session once its transaction is prepared.
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     // Close every PostgreSQL participant's session once it is prepared (none here).
    ///     .keep_connections(0)
    ///     .build()
    ///     .unwrap();
    /// assert!(o.upgrade().unwrap().is_some());
    /// ```
    pub fn keep_connections(mut self, n: usize) -> Builder {
        self.keep_connections = Some(n);
        self
    }

    /// Accept MySQL binds although their DDL cannot be atomic (the command line's
    /// `--allow-non-atomic`; see the README).
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// // Only MySQL binds need it; SQLite and PostgreSQL batches are atomic either way.
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .allow_non_atomic(false)
    ///     .build()
    ///     .unwrap();
    /// assert!(o.upgrade().unwrap().is_some());
    /// ```
    pub fn allow_non_atomic(mut self, allow: bool) -> Builder {
        self.allow_non_atomic = allow;
        self
    }

    /// In an environment whose configuration says `protected = true`, allow
    /// [`downgrade`](Orchestrator::downgrade) (the command line's `--yes`). Without it a
    /// downgrade there is refused.
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Error, Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let project = tempfile::tempdir().unwrap();
    /// let config = project.path().join("config");
    /// std::fs::create_dir(&config).unwrap();
    /// std::fs::write(
    ///     config.join("default.toml"),
    ///     "protected = true\n[binds.users]\nurl = \"sqlite://var/users.sqlite3\"\n",
    /// )
    /// .unwrap();
    /// let build = |allow| {
    ///     Orchestrator::builder()
    ///         .config_dir(&config)
    ///         .migrations("users", Migrations::embedded(&USERS))
    ///         .allow_protected(allow)
    ///         .build()
    ///         .unwrap()
    /// };
    /// build(false).upgrade().unwrap();
    /// assert!(matches!(build(false).downgrade(&["users"], "-1"), Err(Error::Refused { .. })));
    /// assert!(build(true).downgrade(&["users"], "-1").unwrap().is_some());
    /// ```
    pub fn allow_protected(mut self, allow: bool) -> Builder {
        self.allow_protected = allow;
        self
    }

    /// Calls `callback` with each progress event of a batch (from several threads), and with
    /// the notes the command line prints before a batch (a down.sql that differs from the
    /// copy stored when the migration was applied, and which one is used).
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    ///
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Event, Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let phases = Arc::new(Mutex::new(Vec::new()));
    /// let seen = phases.clone();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .on_progress(move |event| {
    ///         if let Event::Phase { name, .. } = event {
    ///             seen.lock().unwrap().push(name.to_string());
    ///         }
    ///     })
    ///     .build()
    ///     .unwrap();
    /// o.upgrade().unwrap();
    /// assert!(!phases.lock().unwrap().is_empty());
    /// ```
    pub fn on_progress(mut self, callback: impl Fn(Event<'_>) + Send + Sync + 'static) -> Builder {
        self.progress = Some(Arc::new(callback));
        self
    }

    /// Checks the binds (names, URLs, migration chains) and builds the orchestrator. Connects
    /// to nothing.
    ///
    /// ```
    /// use orchestrate::{Error, Migrations, Orchestrator};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// // An empty chain folder, or none at all, is refused before anything connects.
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::folder("no/such/folder"))
    ///     .build();
    /// let Err(Error::Config(why)) = o else { panic!("built") };
    /// assert!(why.contains("no/such/folder"), "{why}");
    /// ```
    pub fn build(self) -> Result<Orchestrator, Error> {
        let config = |e: &dyn std::fmt::Display| Error::Config(e.to_string());
        let absolute = |p: &Path| std::path::absolute(p).map_err(|e| config(&e));
        let mut settings = match &self.config_dir {
            Some(dir) => {
                let sources = Sources {
                    config_dir: dir.clone(),
                    env_name: self
                        .environment
                        .clone()
                        .or_else(|| std::env::var("ORCHESTRATE_ENV").ok()),
                    extra_file: None,
                    environment: None,
                };
                let mut settings = Settings::load(&sources).map_err(|e| config(&e))?;
                // As on the command line: a file that says `protected = true` wins over a
                // later layer (an environment variable) that says otherwise.
                settings.protected |= crate::cli::files_protect(&sources);
                settings
            }
            None => Settings {
                binds: Vec::new(),
                templates: Vec::new(),
                root: match &self.root {
                    Some(root) => absolute(root)?,
                    None => std::env::current_dir().map_err(|e| config(&e))?,
                },
                decider: None,
                lock_timeout: Duration::from_secs(10),
                parallelism: 8,
                keep_connections: crate::settings::DEFAULT_KEEP_CONNECTIONS,
                rollout: RolloutSettings::default(),
                protected: false,
                origins: Default::default(),
                layers: vec!["the library's builder".into()],
            },
        };
        if let (Some(root), Some(_)) = (&self.root, &self.config_dir) {
            settings.root = absolute(root)?;
        }
        let root = settings.root.clone();
        for bind in self.binds {
            orchestrate_core::validate_bind_name(&bind.name).map_err(Error::Config)?;
            if settings.bind(&bind.name).is_some() {
                return Err(Error::Config(format!(
                    "bind `{}` is given twice",
                    bind.name
                )));
            }
            let endpoint =
                Endpoint::parse_in(&bind.name, &bind.url, &root).map_err(|e| config(&e))?;
            let mut b = BindSettings {
                name: bind.name,
                endpoint,
                migrations: PathBuf::new(),
                embedded: None,
            };
            set_migrations(&mut b, bind.migrations, &root);
            settings.binds.push(b);
        }
        for (name, migrations) in self.overrides {
            let Some(b) = settings.binds.iter_mut().find(|b| b.name == name) else {
                return Err(Error::Config(format!(
                    "migrations given for bind `{name}`, which is not configured"
                )));
            };
            set_migrations(b, migrations, &root);
        }
        for (name, pool) in self.pools {
            let Some(b) = settings.binds.iter_mut().find(|b| b.name == name) else {
                return Err(Error::Config(format!(
                    "a pool given for bind `{name}`, which is not configured"
                )));
            };
            b.endpoint = b.endpoint.clone().with_pool(pool).map_err(|e| config(&e))?;
        }
        if settings.binds.is_empty() {
            return Err(Error::Config("no binds: add one with `bind`".into()));
        }
        settings.binds.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(decider) = self.decider {
            if settings.bind(&decider).is_none() {
                return Err(Error::Config(format!(
                    "the decider `{decider}` is not a bind"
                )));
            }
            settings.decider = Some(decider);
        }
        if let Some(timeout) = self.lock_timeout {
            if timeout.is_zero() {
                return Err(Error::Config(
                    "a lock timeout of 0 would let PostgreSQL wait forever on a prepared transaction's lock".into(),
                ));
            }
            settings.lock_timeout = timeout;
        }
        if let Some(n) = self.parallelism {
            if !(1..=256).contains(&n) {
                return Err(Error::Config(format!(
                    "parallelism {n} is out of range: give 1 to 256"
                )));
            }
            settings.parallelism = n;
        }
        if let Some(n) = self.keep_connections {
            settings.keep_connections = n;
        }
        let problems: Vec<String> = settings
            .binds
            .iter()
            .filter_map(|b| b.chain().err().map(|e| e.to_string()))
            .collect();
        if !problems.is_empty() {
            return Err(Error::Config(problems.join("; ")));
        }
        Ok(Orchestrator {
            settings,
            allow_non_atomic: self.allow_non_atomic,
            allow_protected: self.allow_protected,
            progress: self.progress,
        })
    }
}

fn set_migrations(bind: &mut BindSettings, migrations: Migrations, root: &Path) {
    match migrations {
        Migrations::Folder(path) => {
            bind.migrations = root.join(path);
            bind.embedded = None;
        }
        Migrations::Embedded(embedded) => {
            bind.migrations = PathBuf::from(format!("<embedded migrations of {}>", bind.name));
            bind.embedded = Some(embedded);
        }
    }
}

/// Several databases, migrated together: every batch commits on every bind or on none.
pub struct Orchestrator {
    settings: Settings,
    allow_non_atomic: bool,
    allow_protected: bool,
    progress: Option<Callback>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field(
                "binds",
                &self
                    .settings
                    .binds
                    .iter()
                    .map(|b| (&b.name, b.endpoint.redacted()))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Orchestrator {
    /// A builder.
    ///
    /// ```
    /// use orchestrate::Orchestrator;
    ///
    /// // An orchestrator of no bind is refused: there would be nothing to migrate.
    /// assert!(Orchestrator::builder().build().is_err());
    /// ```
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The binds' names, in name order.
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    /// const AUDIT: EmbeddedMigrations = embed_migrations!("../../migrations/audit");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .bind("audit", "sqlite://audit.sqlite3", Migrations::embedded(&AUDIT))
    ///     .build()
    ///     .unwrap();
    /// // In name order, as the command line reads them.
    /// assert_eq!(o.binds(), ["audit", "users"]);
    /// ```
    pub fn binds(&self) -> Vec<&str> {
        self.settings
            .binds
            .iter()
            .map(|b| b.name.as_str())
            .collect()
    }

    /// Every bind as `orchestrate status` reads it: current and head revisions, pending
    /// migrations, drift, batches in doubt. Reads only; a bind that cannot be read says why in
    /// its report's `errors`.
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .build()
    ///     .unwrap();
    /// let before = o.status().unwrap().remove(0);
    /// assert_eq!(before.current, None);
    /// assert_eq!(before.pending.len(), 2);
    /// // Reading created nothing.
    /// assert!(!dir.path().join("users.sqlite3").exists());
    /// o.upgrade().unwrap();
    /// let after = o.status().unwrap().remove(0);
    /// assert_eq!(after.current, after.head);
    /// assert!(after.errors.is_empty() && after.in_doubt.is_empty());
    /// ```
    pub fn status(&self) -> Result<Vec<BindReport>, Error> {
        let binds: Vec<&BindSettings> = self.settings.binds.iter().collect();
        Ok(crate::inspect::inspect(&self.settings, &binds))
    }

    /// Every bind to its head, in one atomic batch. `Ok(None)`: nothing to do.
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator, Verdict};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    /// const AUDIT: EmbeddedMigrations = embed_migrations!("../../migrations/audit");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .bind("audit", "sqlite://audit.sqlite3", Migrations::embedded(&AUDIT))
    ///     .build()
    ///     .unwrap();
    /// let report = o.upgrade().unwrap().expect("two binds to migrate");
    /// assert!(matches!(report.verdict, Verdict::Committed));
    /// assert!(o.upgrade().unwrap().is_none());
    /// ```
    pub fn upgrade(&self) -> Result<Option<BatchReport>, Error> {
        self.migrate(Direction::Up, Some("head".into()), Vec::new(), Vec::new())
    }

    /// Each named bind to its target (`head`, a version, `+N`), in one atomic batch; the
    /// other binds are left alone. An empty list is an error, not "every bind".
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    /// const AUDIT: EmbeddedMigrations = embed_migrations!("../../migrations/audit");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .bind("audit", "sqlite://audit.sqlite3", Migrations::embedded(&AUDIT))
    ///     .build()
    ///     .unwrap();
    /// // One step on users; audit is left alone.
    /// o.upgrade_to(&[("users", "+1")]).unwrap();
    /// let status = o.status().unwrap();
    /// let bind = |name: &str| status.iter().find(|b| b.bind == name).unwrap();
    /// assert_eq!(bind("users").pending.len(), 1);
    /// assert_eq!(bind("audit").current, None);
    /// assert!(o.upgrade_to(&[]).is_err());
    /// ```
    pub fn upgrade_to(&self, targets: &[(&str, &str)]) -> Result<Option<BatchReport>, Error> {
        if targets.is_empty() {
            return Err(Error::Config(
                "upgrade_to was given no bind; use upgrade() for every bind".into(),
            ));
        }
        let (binds, targets) = bind_targets(targets);
        self.migrate(Direction::Up, None, binds, targets)
    }

    /// Reverts `binds` to `target` (`-1` is one step, `-N`, a version, or `base`), in one
    /// atomic batch. As on the command line, a migration whose down.sql is gone is reverted
    /// with the copy stored when it was applied, and a down.sql that differs from that copy is
    /// used with a note (to [`Builder::on_progress`] and `tracing`). An empty `binds` is an
    /// error; in a `protected` environment it needs [`Builder::allow_protected`].
    ///
    /// ```
    /// use diesel_migrations::{embed_migrations, EmbeddedMigrations};
    /// use orchestrate::{Migrations, Orchestrator};
    ///
    /// const USERS: EmbeddedMigrations = embed_migrations!("../../migrations/users");
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::embedded(&USERS))
    ///     .build()
    ///     .unwrap();
    /// o.upgrade().unwrap();
    /// let head = o.status().unwrap()[0].current.clone();
    /// o.downgrade(&["users"], "-1").unwrap().expect("one migration reverted");
    /// let now = o.status().unwrap().remove(0);
    /// assert_ne!(now.current, head);
    /// assert_eq!(now.pending.len(), 1);
    /// // A person or the next start brings it back.
    /// o.upgrade_to(&[("users", "head")]).unwrap();
    /// assert_eq!(o.status().unwrap()[0].current, head);
    /// ```
    pub fn downgrade(&self, binds: &[&str], target: &str) -> Result<Option<BatchReport>, Error> {
        if binds.is_empty() {
            return Err(Error::Config(
                "downgrade was given no bind: name every bind to revert".into(),
            ));
        }
        if self.settings.protected && !self.allow_protected {
            return Err(Error::Refused {
                kind: RefusalKind::Invalid,
                errors: vec!["this environment is protected (`protected = true`): a downgrade here needs Builder::allow_protected(true), as the command line needs --yes".into()],
                reasons: vec![Reason::Protected],
            });
        }
        let binds = binds.iter().map(|b| b.to_string()).collect();
        self.migrate(Direction::Down, Some(target.into()), binds, Vec::new())
    }

    /// Finishes what a crash left behind (see `orchestrate recover`), waiting up to 10 s for a
    /// coordinator that still holds a batch. `Err(RecoverIncomplete)` when something is left
    /// for a person.
    ///
    /// ```
    /// use orchestrate::{Error, Migrations, Orchestrator};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::folder("migrations/users"))
    ///     .build();
    /// // No such folder under the root: nothing is built, nothing runs.
    /// assert!(matches!(o, Err(Error::Config(_))));
    ///
    /// std::fs::create_dir_all(dir.path().join("migrations/users/2024-01-01-000000_a")).unwrap();
    /// std::fs::write(
    ///     dir.path().join("migrations/users/2024-01-01-000000_a/up.sql"),
    ///     "CREATE TABLE a (id INTEGER);",
    /// )
    /// .unwrap();
    /// let o = Orchestrator::builder()
    ///     .root(dir.path())
    ///     .bind("users", "sqlite://users.sqlite3", Migrations::folder("migrations/users"))
    ///     .build()
    ///     .unwrap();
    /// // At start: finish whatever an earlier start left (here nothing), then migrate.
    /// let recovered = o.recover().unwrap();
    /// assert!(recovered.actions.is_empty());
    /// assert!(o.upgrade().unwrap().is_some());
    /// ```
    pub fn recover(&self) -> Result<RecoverReport, Error> {
        let report = crate::recover::recover(&self.settings, false, Duration::from_secs(10));
        if report.needs_attention() {
            return Err(Error::RecoverIncomplete {
                report: Box::new(report),
            });
        }
        Ok(report)
    }

    fn migrate(
        &self,
        direction: Direction,
        target: Option<String>,
        binds: Vec<String>,
        targets: Vec<String>,
    ) -> Result<Option<BatchReport>, Error> {
        let args = MigrateArgs {
            all_binds: binds.is_empty(),
            binds,
            target,
            targets,
            sql: false,
            json: true,
            verbose: false,
            allow_non_atomic: self.allow_non_atomic,
            wave_size: None,
            canary: Vec::new(),
        };
        // Another run (another instance of the application starting at the same time) may
        // apply the same migrations between this plan and the batch: the batch then fails
        // with nothing applied, and an upgrade to head is planned again, a few times at most
        // (not a downgrade or given targets: planned again, they would run other migrations).
        let mut attempts = 0;
        let mut first_plan = None;
        loop {
            attempts += 1;
            match self.migrate_once(direction, &args, &mut first_plan) {
                Err(Error::RolledBack { report, .. })
                    if attempts < crate::commands::migrate::REPLANS
                        && crate::commands::migrate::may_replan(direction, &args)
                        && crate::commands::migrate::moved_elsewhere(&report) =>
                {
                    tracing::info!(batch = %report.batch_id, "the databases changed while the batch was planned; planning again");
                    continue;
                }
                // Only prepared transactions in the way: perhaps another instance's batch,
                // decided and committing them now. Looked at again in a moment.
                Err(Error::Refused { reasons, .. })
                    if attempts < crate::commands::migrate::REPLANS
                        && crate::commands::migrate::may_replan(direction, &args)
                        && !reasons.is_empty()
                        && reasons.iter().all(|r| *r == Reason::InDoubt) =>
                {
                    tracing::info!("a batch of another run is in doubt or finishing its commits; looking again");
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
                other => return other,
            }
        }
    }

    fn migrate_once(
        &self,
        direction: Direction,
        args: &MigrateArgs,
        first_plan: &mut Option<crate::commands::migrate::PlannedSteps>,
    ) -> Result<Option<BatchReport>, Error> {
        let checked = check_batch(&self.settings, direction, args, Allow::default())
            .map_err(Error::from_refusal)?;
        if let Some(why) = crate::commands::migrate::beyond_first_plan(&checked.works, first_plan) {
            return Err(Error::Refused {
                kind: RefusalKind::Busy,
                errors: vec![why],
                reasons: vec![Reason::Busy],
            });
        }
        let progress = Events(self.progress.clone());
        for note in crate::commands::migrate::down_sql_notes(&checked.plans) {
            let (crate::commands::migrate::Note::Aside(text)
            | crate::commands::migrate::Note::Result(text)) = note;
            progress.line(&text);
        }
        if checked.works.is_empty() {
            return Ok(None);
        }
        if crate::commands::segments::has_segments(&checked.works) {
            return Err(Error::Unsupported("a batch with a migration that runs outside a transaction (`run_in_transaction = false`); run it with `orchestrate upgrade --allow-non-atomic`".into()));
        }
        if checked.waves.len() > 1 {
            return Err(Error::Unsupported(
                "a rollout in waves (`[rollout]` in the configuration); run it with `orchestrate upgrade`".into(),
            ));
        }
        let options = RunOptions {
            preferred_decider: self.settings.decider.clone(),
            lock_timeout: self.settings.lock_timeout,
            parallelism: self.settings.parallelism,
            keep_connections: crate::work::keep_connections_for(
                &checked.works,
                self.settings.keep_connections,
                self.settings.parallelism,
            ),
        };
        let report = run_batch(checked.works, direction, &options, &progress);
        match &report.verdict {
            Verdict::Committed => Ok(Some(report)),
            Verdict::RolledBack { error } => Err(Error::RolledBack {
                message: error.to_string(),
                report: Box::new(report),
            }),
            Verdict::NeedsAttention { error, detail } => Err(Error::NeedsAttention {
                message: match error {
                    Some(e) => format!("{e}; {detail}"),
                    None => detail.clone(),
                },
                report: Box::new(report),
            }),
        }
    }
}

fn bind_targets(targets: &[(&str, &str)]) -> (Vec<String>, Vec<String>) {
    (
        targets.iter().map(|(b, _)| b.to_string()).collect(),
        targets.iter().map(|(b, t)| format!("{b}={t}")).collect(),
    )
}

/// Progress to the caller's callback, and to `tracing`.
struct Events(Option<Callback>);

impl Progress for Events {
    fn line(&self, text: &str) {
        tracing::info!("{text}");
        if let Some(f) = &self.0 {
            f(Event::Line(text));
        }
    }

    fn phase(&self, name: &str, total: usize) {
        if let Some(f) = &self.0 {
            f(Event::Phase { name, total });
        }
    }

    fn tick(&self) {
        if let Some(f) = &self.0 {
            f(Event::Tick);
        }
    }
}
