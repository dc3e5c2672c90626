use crate::endpoint::redact_text;

/// What a database error means to this tool. Each backend decides it in one function (its
/// `classify`), once, where the error is wrapped into a [`DriverError`]: nothing else reads
/// error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection is gone: the outcome of the statement that was running is unknown.
    ConnectionLost,
    /// A lock could not be had in time (PostgreSQL `lock_not_available`, SQLite
    /// `SQLITE_BUSY` / `SQLITE_LOCKED`, MySQL 1205 / 3572).
    LockWait,
    /// The statement names a table or savepoint that does not exist.
    Missing,
    /// PostgreSQL refused `PREPARE TRANSACTION` for a reason a person can fix.
    CannotPrepare(PrepareRefusal),
    /// Anything else: the statement failed and the connection is usable.
    Other,
}

/// Why PostgreSQL refused to prepare a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrepareRefusal {
    /// `0A000`: the transaction used a temporary object.
    TemporaryObjects,
    /// `0A000`: the transaction ran LISTEN, UNLISTEN or NOTIFY.
    ListenNotify,
    /// `55000`: `max_prepared_transactions = 0`.
    Disabled,
    /// `53200`: every slot of `max_prepared_transactions` is taken.
    Full,
}

impl PrepareRefusal {
    /// What to do about it.
    pub fn hint(self) -> &'static str {
        match self {
            PrepareRefusal::TemporaryObjects => "a migration of this bind used a temporary table or other temporary object, which a prepared transaction cannot hold; use a regular table and drop it in the same migration",
            PrepareRefusal::ListenNotify => "a migration of this bind ran LISTEN, UNLISTEN or NOTIFY, which a prepared transaction cannot carry; send notifications after the deploy",
            PrepareRefusal::Disabled => "this server has max_prepared_transactions = 0; set it above the number of binds it serves and restart it",
            PrepareRefusal::Full => "this server's max_prepared_transactions is too small for the batch, or old prepared transactions fill it; run `orchestrate recover`, or raise the setting and restart the server",
        }
    }
}

impl ErrorClass {
    fn hint(self) -> Option<&'static str> {
        match self {
            ErrorClass::CannotPrepare(refusal) => Some(refusal.hint()),
            _ => None,
        }
    }

    /// What every backend's classifier reads first: diesel's own kinds. `None`: the backend
    /// must look closer.
    pub(crate) fn from_diesel(error: &diesel::result::Error) -> Option<ErrorClass> {
        use diesel::result::{DatabaseErrorKind, Error};
        match error {
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _)
            | Error::BrokenTransactionManager => Some(ErrorClass::ConnectionLost),
            Error::DatabaseError(..) | Error::RollbackErrorOnCommit { .. } => None,
            _ => Some(ErrorClass::Other),
        }
    }
}

/// The message of a database error, lowercased, for the classifiers' last resort (diesel 2.3
/// exposes no SQLSTATE, SQLite result code or MySQL error number). A COMMIT that failed and
/// whose rollback failed too is read by the COMMIT's error.
pub(crate) fn message_of(error: &diesel::result::Error) -> Option<String> {
    use diesel::result::Error;
    match error {
        Error::DatabaseError(_, info) => Some(info.message().to_lowercase()),
        Error::RollbackErrorOnCommit { commit_error, .. } => message_of(commit_error),
        _ => None,
    }
}

/// What can go wrong on one bind. Every variant names the bind; none shows a password: the
/// variants that can carry connection text (a library's connect error quotes the URL, or a
/// password alone) are shown through [`redact_text`], and `Debug` is the redacted `Display`.
#[derive(thiserror::Error)]
pub enum DriverError {
    /// The bind's URL cannot be used: unknown scheme, an in-memory SQLite database, a SQLite
    /// URL with a user, query or fragment, a `mysql://` URL in a build without MySQL, ...
    #[error("bind `{bind}`: invalid url: {}", redact_text(.reason))]
    BadUrl {
        /// The bind the error happened on.
        bind: String,
        /// What is wrong with the URL and how to write it instead; may quote the URL, so it
        /// is shown redacted.
        reason: String,
    },
    /// The database library could not open a connection to the bind's database.
    #[error("bind `{bind}`: cannot connect to {}: {}", redact_text(.url), redact_text(&.source.to_string()))]
    Connect {
        /// The bind the error happened on.
        bind: String,
        /// The endpoint's redacted URL.
        url: String,
        /// diesel's connection error, which may quote the URL or a password.
        #[source]
        source: diesel::ConnectionError,
    },
    /// A SQLite bind's database file does not exist, and the connection was opened without
    /// `create`.
    #[error("bind `{bind}`: the SQLite database {path} does not exist yet")]
    NoSuchFile {
        /// The bind the error happened on.
        bind: String,
        /// The database file's path.
        path: String,
    },
    /// A statement of this tool's own (bookkeeping, locks, transaction control) failed.
    #[error("bind `{bind}`: {what}: {source}")]
    Query {
        /// The bind the error happened on.
        bind: String,
        /// What the statement was for, such as `cannot set up the session`.
        what: String,
        /// What the database's error means, as the backend classified it.
        class: ErrorClass,
        /// The database's error.
        #[source]
        source: diesel::result::Error,
    },
    /// A migration's own SQL failed.
    #[error("bind `{bind}`: migration {name} failed{}: {source}", .at.as_deref().map(|at| format!(" at {at}")).unwrap_or_default())]
    Migration {
        /// The bind the error happened on.
        bind: String,
        /// The migration's folder name.
        name: String,
        /// Where in the migration's SQL, when the server said (PostgreSQL's error position):
        /// `line 3, column 15 of up.sql: SELECT * FROM nope`.
        at: Option<String>,
        /// What the database's error means, as the backend classified it.
        class: ErrorClass,
        /// The database's error.
        #[source]
        source: diesel::result::Error,
    },
    /// A migration's SQL ended the batch's transaction (a `COMMIT`, `ROLLBACK` or `END` that
    /// the statement check did not catch): what it ran before may be committed on this bind.
    #[error("bind `{bind}`: migration {name} ended the batch's transaction itself (a COMMIT, ROLLBACK or END in its SQL?), so what ran before that statement on this bind may be committed and cannot be rolled back; check this bind by hand. Migrations must not control transactions")]
    LeftTransaction {
        /// The bind the error happened on.
        bind: String,
        /// The folder name of the migration that ended the transaction.
        name: String,
    },
    /// The bind's migration lock (or, for a SQLite decider, its write lock) stayed held by
    /// another run for longer than the lock timeout.
    #[error("bind `{bind}`: another orchestrate run holds this database's migration lock; waited {waited_ms} ms. Try again when it has finished (raise `lock_timeout_ms` to wait longer)")]
    Busy {
        /// The bind the error happened on.
        bind: String,
        /// How long this run waited, in milliseconds.
        waited_ms: u64,
    },
    /// `PREPARE TRANSACTION` (or MySQL's `XA PREPARE`) failed.
    #[error("bind `{bind}`: PREPARE TRANSACTION failed: {source}{}", class.hint().map(|h| format!(" ({h})")).unwrap_or_default())]
    Prepare {
        /// The bind the error happened on.
        bind: String,
        /// What the database's error means; [`ErrorClass::CannotPrepare`] adds a hint to the
        /// message.
        class: ErrorClass,
        /// The database's error.
        #[source]
        source: diesel::result::Error,
    },
    /// The prepare statement reported success, but the server lists no prepared transaction
    /// with that id, so the batch is not prepared on this bind.
    #[error("bind `{bind}`: PREPARE TRANSACTION reported success but no prepared transaction `{gid}` exists; the batch was not prepared")]
    PrepareNotRecorded {
        /// The bind the error happened on.
        bind: String,
        /// The id the transaction was to be prepared under.
        gid: String,
    },
    /// The batch's row in the decider's `orchestrate_batches` is no longer `begun` (or is
    /// gone) when this run comes to decide: someone else decided, or changed it.
    #[error("bind `{bind}`: batch {batch_id}'s row in orchestrate_batches reads `{state}`, not what this run expected or wrote: a concurrent `orchestrate recover` decided it first, or a trigger or rule on that table changed it; this run rolls every bind back")]
    DecisionLost {
        /// The decider's bind.
        bind: String,
        /// The batch whose decision was lost.
        batch_id: String,
        /// What the row's state reads, or `missing` when there is no row.
        state: String,
    },
    /// What the database has applied changed between planning and running the batch.
    #[error("bind `{bind}`: the database changed while the batch was being planned ({detail}); nothing was applied, run the command again")]
    Moved {
        /// The bind the error happened on.
        bind: String,
        /// What changed, such as `2024-01-01-000000_x is applied now`.
        detail: String,
    },
    /// Anything else, described in words: a refused operation, a file system error, a
    /// server that does not answer, ...
    #[error("bind `{bind}`: {}", redact_text(.detail))]
    Other {
        /// The bind the error happened on.
        bind: String,
        /// What went wrong and, where there is one, what to do; shown redacted.
        detail: String,
    },
}

/// The redacted `Display`: a derived `Debug` would print a connect error's source as the
/// library wrote it, password included.
impl std::fmt::Debug for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DriverError({self})")
    }
}

impl DriverError {
    /// The database's own error, when there is one.
    pub fn database_error(&self) -> Option<&diesel::result::Error> {
        match self {
            DriverError::Query { source, .. }
            | DriverError::Migration { source, .. }
            | DriverError::Prepare { source, .. } => Some(source),
            _ => None,
        }
    }

    /// What the database's error means, as its backend classified it (`None`: the error is
    /// not the database's).
    pub fn class(&self) -> Option<ErrorClass> {
        match self {
            DriverError::Query { class, .. }
            | DriverError::Migration { class, .. }
            | DriverError::Prepare { class, .. } => Some(*class),
            _ => None,
        }
    }

    /// Whether the error means the connection was lost, so the outcome of the statement that
    /// was running is unknown.
    pub fn is_connection_lost(&self) -> bool {
        self.class() == Some(ErrorClass::ConnectionLost)
    }

    /// Whether a statement gave up waiting for a lock held by another session (PostgreSQL
    /// `lock_timeout`, SQLite busy, InnoDB lock wait timeout), or the migration lock itself.
    pub fn is_lock_wait(&self) -> bool {
        matches!(self, DriverError::Busy { .. }) || self.class() == Some(ErrorClass::LockWait)
    }

    /// Whether the statement named a table (or savepoint) that does not exist.
    pub fn is_missing(&self) -> bool {
        self.class() == Some(ErrorClass::Missing)
    }
}
