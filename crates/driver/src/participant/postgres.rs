//! PostgreSQL binds.

use crate::error::{message_of, ErrorClass, PrepareRefusal};

/// What a PostgreSQL error means. diesel keeps the SQLSTATE to itself (it only maps class
/// `08`, connection exceptions, and a broken connection to `ClosedConnection`), so the fixed
/// primary messages of the codes this tool acts on are read, here only:
///
/// - lost: libpq's own messages when the server went away ("server closed the connection
///   unexpectedly", "no connection to the server", "connection to server ... lost"), and
///   `57P01`-`57P03` ("terminating connection due to ...");
/// - `55P03` `lock_not_available`: "canceling statement due to lock timeout", "could not
///   obtain lock on ...";
/// - `42P01` `undefined_table`: "relation ... does not exist";
/// - `PREPARE TRANSACTION` refused: `0A000` (temporary objects; LISTEN/NOTIFY), `55000`
///   ("prepared transactions are disabled"), `53200` ("maximum number of prepared
///   transactions reached").
pub(crate) fn classify(error: &diesel::result::Error) -> ErrorClass {
    if let Some(class) = ErrorClass::from_diesel(error) {
        return class;
    }
    let Some(m) = message_of(error) else {
        return ErrorClass::Other;
    };
    let has = |text: &str| m.contains(text);
    if has("server closed the connection")
        || has("terminating connection")
        || has("no connection to the server")
        || has("connection to server")
    {
        ErrorClass::ConnectionLost
    } else if has("lock timeout") || has("could not obtain lock") {
        ErrorClass::LockWait
    } else if has("relation") && has("does not exist") {
        ErrorClass::Missing
    } else if has("cannot prepare") && has("temporary objects") {
        ErrorClass::CannotPrepare(PrepareRefusal::TemporaryObjects)
    } else if has("cannot prepare") && (has("listen") || has("notify")) {
        ErrorClass::CannotPrepare(PrepareRefusal::ListenNotify)
    } else if has("prepared transactions are disabled") {
        ErrorClass::CannotPrepare(PrepareRefusal::Disabled)
    } else if has("maximum number of prepared transactions") {
        ErrorClass::CannotPrepare(PrepareRefusal::Full)
    } else {
        ErrorClass::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    fn db(kind: DatabaseErrorKind, message: &str) -> Error {
        Error::DatabaseError(kind, Box::new(message.to_string()))
    }

    #[test]
    fn postgres_errors_are_classified() {
        let unknown = |m: &str| classify(&db(DatabaseErrorKind::Unknown, m));
        assert_eq!(
            classify(&db(DatabaseErrorKind::ClosedConnection, "anything")),
            ErrorClass::ConnectionLost
        );
        assert_eq!(
            classify(&Error::BrokenTransactionManager),
            ErrorClass::ConnectionLost
        );
        for lost in [
            "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally",
            "terminating connection due to administrator command",
            "no connection to the server",
            "Connection to server was lost",
        ] {
            assert_eq!(unknown(lost), ErrorClass::ConnectionLost, "{lost}");
        }
        assert_eq!(
            unknown("canceling statement due to lock timeout"),
            ErrorClass::LockWait
        );
        assert_eq!(
            unknown("could not obtain lock on row in relation \"orchestrate_batches\""),
            ErrorClass::LockWait
        );
        assert_eq!(
            unknown("relation \"public.__diesel_schema_migrations\" does not exist"),
            ErrorClass::Missing
        );
        assert_eq!(
            unknown("cannot PREPARE a transaction that has operated on temporary objects"),
            ErrorClass::CannotPrepare(PrepareRefusal::TemporaryObjects)
        );
        assert_eq!(
            unknown("cannot PREPARE a transaction that has executed LISTEN, UNLISTEN, or NOTIFY"),
            ErrorClass::CannotPrepare(PrepareRefusal::ListenNotify)
        );
        assert_eq!(
            unknown("prepared transactions are disabled"),
            ErrorClass::CannotPrepare(PrepareRefusal::Disabled)
        );
        assert_eq!(
            unknown("maximum number of prepared transactions reached"),
            ErrorClass::CannotPrepare(PrepareRefusal::Full)
        );
        assert_eq!(
            unknown("relation \"listeners\" does not exist"),
            ErrorClass::Missing
        );
        assert_eq!(unknown("division by zero"), ErrorClass::Other);
        assert_eq!(
            classify(&db(
                DatabaseErrorKind::UniqueViolation,
                "duplicate key value"
            )),
            ErrorClass::Other
        );
        assert_eq!(classify(&Error::NotFound), ErrorClass::Other);
        let lost_commit = Error::RollbackErrorOnCommit {
            rollback_error: Box::new(db(
                DatabaseErrorKind::Unknown,
                "no connection to the server",
            )),
            commit_error: Box::new(db(
                DatabaseErrorKind::Unknown,
                "server closed the connection unexpectedly",
            )),
        };
        assert_eq!(classify(&lost_commit), ErrorClass::ConnectionLost);
    }
}
