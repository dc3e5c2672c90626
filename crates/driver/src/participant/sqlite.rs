//! SQLite binds.

use crate::error::{message_of, ErrorClass};

/// What a SQLite error means. diesel keeps the result code to itself (it only maps constraint
/// codes to kinds), so the fixed messages SQLite gives the codes this tool acts on are read,
/// here only:
///
/// - `SQLITE_BUSY` (5, "database is locked") and `SQLITE_LOCKED` (6, "database table is
///   locked", "database schema is locked: ..."), and "database is busy": a lock wait;
/// - `SQLITE_ERROR` with "no such table" or "no such savepoint": missing.
///
/// A SQLite connection is a file handle: it is never lost, except as diesel's broken
/// transaction manager.
pub(crate) fn classify(error: &diesel::result::Error) -> ErrorClass {
    if let Some(class) = ErrorClass::from_diesel(error) {
        return class;
    }
    let Some(m) = message_of(error) else {
        return ErrorClass::Other;
    };
    if m.contains("is locked") || m.contains("database is busy") {
        ErrorClass::LockWait
    } else if m.contains("no such table") || m.contains("no such savepoint") {
        ErrorClass::Missing
    } else {
        ErrorClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    #[test]
    fn sqlite_errors_are_classified() {
        let unknown = |m: &str| {
            classify(&Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(m.to_string()),
            ))
        };
        for locked in [
            "database is locked",
            "database table is locked",
            "database schema is locked: main",
            "Database is busy",
        ] {
            assert_eq!(unknown(locked), ErrorClass::LockWait, "{locked}");
        }
        assert_eq!(
            unknown("no such savepoint: orchestrate_batch_guard"),
            ErrorClass::Missing
        );
        assert_eq!(
            unknown("no such table: main.__diesel_schema_migrations"),
            ErrorClass::Missing
        );
        assert_eq!(unknown("near \"x\": syntax error"), ErrorClass::Other);
        assert_eq!(
            classify(&Error::BrokenTransactionManager),
            ErrorClass::ConnectionLost
        );
        let busy_commit = Error::RollbackErrorOnCommit {
            rollback_error: Box::new(Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new("cannot rollback - no transaction is active".to_string()),
            )),
            commit_error: Box::new(Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new("database is locked".to_string()),
            )),
        };
        assert_eq!(classify(&busy_commit), ErrorClass::LockWait);
    }
}
