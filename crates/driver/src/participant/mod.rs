//! One participant per backend.

pub(crate) mod mysql;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use crate::endpoint::Backend;
use crate::error::ErrorClass;

/// The classifier of `backend`'s errors.
pub(crate) fn classify(backend: Backend, error: &diesel::result::Error) -> ErrorClass {
    match backend {
        Backend::Postgres => postgres::classify(error),
        Backend::Sqlite => sqlite::classify(error),
        Backend::Mysql => mysql::classify(error),
    }
}
