//! # orchestrate-driver
//!
//! Everything `orchestrate` does to one database, one bind at a time, through diesel:
//!
//! - [`Endpoint`]: a bind's URL parsed into a backend (PostgreSQL, SQLite or MySQL/MariaDB), with a redacted
//!   form that is the only one ever printed;
//! - [`read_chain`]: a bind's migration folders (diesel's layout) read from disk into a
//!   validated [`orchestrate_core::Chain`];
//! - one participant type per backend ([`Postgres`], [`Sqlite`], [`Mysql`], and [`Xa`] for a
//!   MySQL session's XA transaction), each owning its diesel connection: the version tables
//!   (diesel's `__diesel_schema_migrations` plus this project's `orchestrate_history` and
//!   `orchestrate_batches`, all fully qualified), the per-database lock, one transaction per
//!   batch, `PREPARE TRANSACTION` with a check that it really happened, `COMMIT PREPARED` /
//!   `ROLLBACK PREPARED`, MySQL's marks and XA, and the arbitrated decision (`begun`, then
//!   `commit` by the coordinator or `abort` by `recover`, whichever comes first). What each can
//!   do is a trait it implements ([`Bookkeeping`], [`Decider`], [`Atomic`],
//!   [`BatchTransaction`], [`TwoPhase`], [`Resolve`]); [`BindConnection`] is a connection to a
//!   bind of any backend. Each backend classifies its own errors ([`ErrorClass`]).
//! - [`ReadPools`]: connections kept between reads of binds (r2d2, one per bind within a
//!   budget per server), for a long-running process such as `orchestrate serve`.
//! - [`Capabilities`]: what a backend can do, as data the coordinator reads.
//! - [`check_plan`] / [`check_migration`]: the statement check, which refuses at plan time a
//!   migration that would end or escape the batch's transaction (PostgreSQL SQL read by
//!   PostgreSQL's own parser, `pg_query`).
//!
//! It deliberately knows nothing of other binds: deciding, ordering and recovering across
//! binds is the orchestrator's job. No function here prints.

#![deny(missing_docs)]
// Some public items' docs point maintainers at the private helpers they rest on:
// `cargo doc --document-private-items` renders those links.
#![allow(rustdoc::private_intra_doc_links)]

mod endpoint;
mod error;
mod participant;
mod pool;
mod record;
mod schema;
mod script;
mod source;
mod statements;

pub use endpoint::{
    is_secret_key, redact_text, redact_url, register_secret, register_secrets_in, Backend,
    Capabilities, Endpoint, PgPool,
};
pub use error::{DriverError, ErrorClass, PrepareRefusal};
pub use participant::{
    Atomic, BatchStep, BatchTransaction, BindConnection, BindState, Bookkeeping, Decider,
    DecisionState, HistoryEvent, Mark, MarkDirection, MarkKind, Mysql, Postgres, PreparedXact,
    Resolve, ServerIdentity, Sqlite, TwoPhase, Xa, XactStatus, LOCK_KEY,
};
pub use pool::{Kept, PoolStats, ReadManager, ReadPools, Reader};
pub use record::{
    gid_for, quote_literal, DecisionRecord, NotATransactionId, Participant, RedoStep,
    TransactionId, GID_PREFIX,
};
pub use script::{nonatomic_script, script, session_script, xa_script, Ending};
pub use source::{read_chain, Embedded, SourceError};
pub use statements::{
    check_migration, check_migrations, check_plan, check_sql, check_upgrade, down_sql_refusal,
};
