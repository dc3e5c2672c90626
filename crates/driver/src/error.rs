use crate::endpoint::redact_text;

/// What can go wrong on one bind. Every variant names the bind; none shows a password: the
/// variants that can carry connection text (a library's connect error quotes the URL, or a
/// password alone) are shown through [`redact_text`], and `Debug` is the redacted `Display`.
#[derive(thiserror::Error)]
pub enum DriverError {
    #[error("bind `{bind}`: invalid url: {}", redact_text(.reason))]
    BadUrl { bind: String, reason: String },
    #[error("bind `{bind}`: cannot connect to {}: {}", redact_text(.url), redact_text(&.source.to_string()))]
    Connect {
        bind: String,
        url: String,
        #[source]
        source: diesel::ConnectionError,
    },
    #[error("bind `{bind}`: the SQLite database {path} does not exist yet")]
    NoSuchFile { bind: String, path: String },
    #[error("bind `{bind}`: {what}: {source}")]
    Query {
        bind: String,
        what: String,
        #[source]
        source: diesel::result::Error,
    },
    #[error("bind `{bind}`: migration {name} failed: {source}")]
    Migration {
        bind: String,
        name: String,
        #[source]
        source: diesel::result::Error,
    },
    #[error("bind `{bind}`: migration {name} ended the batch's transaction itself (a COMMIT, ROLLBACK or END in its SQL?), so what ran before that statement on this bind may be committed and cannot be rolled back; check this bind by hand. Migrations must not control transactions")]
    LeftTransaction { bind: String, name: String },
    #[error("bind `{bind}`: another orchestrate run holds this database's migration lock; waited {waited_ms} ms. Try again when it has finished (raise `lock_timeout_ms` to wait longer)")]
    Busy { bind: String, waited_ms: u64 },
    #[error("bind `{bind}`: PREPARE TRANSACTION failed: {source}{}", hint.map(|h| format!(" ({h})")).unwrap_or_default())]
    Prepare {
        bind: String,
        hint: Option<&'static str>,
        #[source]
        source: diesel::result::Error,
    },
    #[error("bind `{bind}`: PREPARE TRANSACTION reported success but no prepared transaction `{gid}` exists; the batch was not prepared")]
    PrepareNotRecorded { bind: String, gid: String },
    #[error("bind `{bind}`: batch {batch_id} was decided by someone else before this run could decide it (its row in orchestrate_batches is `{state}`, not `begun`): a concurrent `orchestrate recover` aborted it, so this run rolls every bind back")]
    DecisionLost {
        bind: String,
        batch_id: String,
        state: String,
    },
    #[error("bind `{bind}`: the database changed while the batch was being planned ({detail}); nothing was applied, run the command again")]
    Moved { bind: String, detail: String },
    #[error("bind `{bind}`: {}", redact_text(.detail))]
    Other { bind: String, detail: String },
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

    /// Whether the error means the connection was lost, so the outcome of the statement that
    /// was running is unknown.
    pub fn is_connection_lost(&self) -> bool {
        use diesel::result::{DatabaseErrorKind, Error};
        match self.database_error() {
            Some(Error::DatabaseError(DatabaseErrorKind::ClosedConnection, _)) => true,
            Some(Error::DatabaseError(_, info)) => {
                let m = info.message();
                m.contains("server closed the connection")
                    || m.contains("server has gone away")
                    || m.contains("Lost connection to")
                    || m.contains("terminating connection")
                    || m.contains("no connection to the server")
                    || m.contains("connection to server")
            }
            Some(Error::BrokenTransactionManager) => true,
            _ => false,
        }
    }
}

impl DriverError {
    /// Whether a statement gave up waiting for a lock held by another session (PostgreSQL
    /// `lock_timeout`, SQLite busy, InnoDB lock wait timeout).
    pub fn is_lock_wait(&self) -> bool {
        match self {
            DriverError::Busy { .. } => true,
            _ => self.database_error().is_some_and(is_lock_wait),
        }
    }
}

/// Whether a database error says a lock could not be had in time: PostgreSQL's
/// `lock_not_available` ("canceling statement due to lock timeout", "could not obtain lock"),
/// SQLite's SQLITE_BUSY / SQLITE_LOCKED, MySQL's 1205 / 3572. diesel exposes no error codes
/// for these, so their fixed messages are read, here only.
pub fn is_lock_wait(error: &diesel::result::Error) -> bool {
    let diesel::result::Error::DatabaseError(_, info) = error else {
        return false;
    };
    let m = info.message();
    m.contains("lock timeout")
        || m.contains("could not obtain lock")
        || m.contains("Lock wait timeout exceeded")
        || m.contains("NOWAIT is set")
        || is_sqlite_busy(error)
}

/// Whether a SQLite error is SQLITE_BUSY or SQLITE_LOCKED ("database is locked", "database
/// table is locked", "database schema is locked").
pub fn is_sqlite_busy(error: &diesel::result::Error) -> bool {
    let text = error.to_string();
    text.contains("database is locked")
        || text.contains("is locked")
        || text.contains("database is busy")
}

/// What to do about a PREPARE TRANSACTION that PostgreSQL refused, by its message.
pub fn prepare_hint(message: &str) -> Option<&'static str> {
    if message.contains("temporary objects") {
        Some("a migration of this bind used a temporary table or other temporary object, which a prepared transaction cannot hold; use a regular table and drop it in the same migration")
    } else if message.contains("LISTEN") || message.contains("NOTIFY") {
        Some("a migration of this bind ran LISTEN, UNLISTEN or NOTIFY, which a prepared transaction cannot carry; send notifications after the deploy")
    } else if message.contains("prepared transactions are disabled") {
        Some("this server has max_prepared_transactions = 0; set it above the number of binds it serves and restart it")
    } else if message.contains("maximum number of prepared transactions") {
        Some("this server's max_prepared_transactions is too small for the batch, or old prepared transactions fill it; run `orchestrate recover`, or raise the setting and restart the server")
    } else {
        None
    }
}
