//! MySQL and MariaDB binds.

use crate::error::{message_of, ErrorClass};

/// What a MySQL or MariaDB error means. diesel keeps the error number to itself, so the fixed
/// messages of the numbers this tool acts on are read, here only, in any case (libmysqlclient
/// says "MySQL server has gone away", libmariadb "Server has gone away"):
///
/// - lost: client errors 2006 `CR_SERVER_GONE_ERROR` ("... server has gone away"), 2013
///   `CR_SERVER_LOST` and 2055 `CR_SERVER_LOST_EXTENDED` ("Lost connection to ...");
/// - lock wait: 1205 `ER_LOCK_WAIT_TIMEOUT` ("Lock wait timeout exceeded"), 3572
///   `ER_LOCK_NOWAIT` ("... NOWAIT is set");
/// - missing: 1146 `ER_NO_SUCH_TABLE` ("Table '...' doesn't exist"), 1305
///   `ER_SP_DOES_NOT_EXIST` ("SAVEPOINT ... does not exist").
pub(crate) fn classify(error: &diesel::result::Error) -> ErrorClass {
    if let Some(class) = ErrorClass::from_diesel(error) {
        return class;
    }
    let Some(m) = message_of(error) else {
        return ErrorClass::Other;
    };
    let has = |text: &str| m.contains(text);
    if has("server has gone away") || has("lost connection to") {
        ErrorClass::ConnectionLost
    } else if has("lock wait timeout exceeded") || has("nowait is set") {
        ErrorClass::LockWait
    } else if (has("table") && has("doesn't exist")) || (has("savepoint") && has("does not exist"))
    {
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
    fn mysql_errors_are_classified() {
        let unknown = |m: &str| {
            classify(&Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new(m.to_string()),
            ))
        };
        for lost in [
            "MySQL server has gone away",
            "Server has gone away",
            "Lost connection to MySQL server during query",
            "Lost connection to server during query",
            "Lost connection to server at 'handshake: reading initial communication packet', system error: 104",
        ] {
            assert_eq!(unknown(lost), ErrorClass::ConnectionLost, "{lost}");
        }
        assert_eq!(
            unknown("Lock wait timeout exceeded; try restarting transaction"),
            ErrorClass::LockWait
        );
        assert_eq!(
            unknown("Statement aborted because lock(s) could not be acquired immediately and NOWAIT is set."),
            ErrorClass::LockWait
        );
        assert_eq!(
            unknown("Table 'app.__diesel_schema_migrations' doesn't exist"),
            ErrorClass::Missing
        );
        assert_eq!(unknown("SAVEPOINT x does not exist"), ErrorClass::Missing);
        assert_eq!(
            unknown("You have an error in your SQL syntax"),
            ErrorClass::Other
        );
        assert_eq!(
            classify(&Error::BrokenTransactionManager),
            ErrorClass::ConnectionLost
        );
    }
}
