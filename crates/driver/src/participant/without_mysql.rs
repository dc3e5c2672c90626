//! MySQL and MariaDB when this build leaves them out (the `mysql` cargo feature is off): the
//! same [`Mysql`] and [`Xa`] types, with no value. [`Mysql::connect`] refuses, and so does
//! parsing a `mysql://` URL (see [`crate::Endpoint::parse`]), so nothing else is ever reached;
//! the rest of the tool compiles unchanged, and a PostgreSQL and SQLite user builds no MySQL
//! client library.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::time::Duration;

use diesel::SqliteConnection;
use orchestrate_core::{Direction, Step};

use super::{
    Atomic, BatchStep, CanDecide, HasSession, Mark, PreparedXact, Resolve, Session, TwoPhase,
};
use crate::endpoint::Endpoint;
use crate::error::DriverError;

/// What a `mysql://` bind gets from a build without MySQL support.
pub(crate) fn not_built() -> String {
    "this orchestrate was built without MySQL and MariaDB support (the `mysql` cargo feature, on by default); rebuild it with `--features mysql`, or use a release that has it".into()
}

/// A connection to a MySQL or MariaDB bind: none exists in this build.
pub struct Mysql {
    never: Infallible,
}

/// A MySQL bind's XA transaction: none exists in this build.
pub struct Xa<'a> {
    never: Infallible,
    _borrow: PhantomData<&'a mut ()>,
}

impl HasSession for Mysql {
    type Conn = SqliteConnection;

    fn session(&mut self) -> &mut Session<SqliteConnection> {
        match self.never {}
    }

    fn session_ref(&self) -> &Session<SqliteConnection> {
        match self.never {}
    }
}

impl CanDecide for Mysql {}

#[allow(missing_docs, clippy::missing_errors_doc)]
impl Mysql {
    /// Refuses: this build has no MySQL client.
    pub fn connect(endpoint: &Endpoint, _lock_timeout: Duration) -> Result<Mysql, DriverError> {
        Err(DriverError::Other {
            bind: endpoint.bind.clone(),
            detail: not_built(),
        })
    }

    pub fn begin_nonatomic(&mut self) -> Result<(), DriverError> {
        match self.never {}
    }

    pub fn begin_batch(&mut self) -> Result<(), DriverError> {
        match self.never {}
    }

    pub fn commit(&mut self) -> Result<(), DriverError> {
        match self.never {}
    }

    pub fn rollback(&mut self) {
        match self.never {}
    }

    pub fn session_lock_free(&mut self) -> Result<bool, DriverError> {
        match self.never {}
    }

    pub fn check_durable_commits(&mut self) -> Result<(), DriverError> {
        match self.never {}
    }

    pub fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        match self.never {}
    }

    pub fn put_mark(&mut self, _mark: &Mark) -> Result<(), DriverError> {
        match self.never {}
    }

    pub fn set_mark_progress(&mut self, _mark: &Mark, _done: i64) -> Result<(), DriverError> {
        match self.never {}
    }

    pub fn clear_mark(&mut self, _mark: &Mark) -> Result<(), DriverError> {
        match self.never {}
    }

    pub fn run_statement(&mut self, _name: &str, _sql: &str) -> Result<(), DriverError> {
        match self.never {}
    }

    pub fn finish_marked_step(
        &mut self,
        _batch_id: &str,
        _direction: Direction,
        _label: &str,
        _step: &Step,
        _mark: &Mark,
        _at: &str,
    ) -> Result<(), DriverError> {
        match self.never {}
    }

    pub fn batch_steps(&mut self, _batch_id: &str) -> Result<Vec<BatchStep>, DriverError> {
        match self.never {}
    }

    pub fn start_xa(&mut self, _batch_id: &str) -> Result<Xa<'_>, DriverError> {
        match self.never {}
    }
}

impl Resolve for Mysql {
    fn prepared(&mut self) -> Result<Vec<PreparedXact>, DriverError> {
        match self.never {}
    }

    fn commit_prepared(&mut self, _gid: &str) -> Result<(), DriverError> {
        match self.never {}
    }

    fn rollback_prepared(&mut self, _gid: &str) -> Result<(), DriverError> {
        match self.never {}
    }

    fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        match self.never {}
    }
}

impl HasSession for Xa<'_> {
    type Conn = SqliteConnection;

    fn session(&mut self) -> &mut Session<SqliteConnection> {
        match self.never {}
    }

    fn session_ref(&self) -> &Session<SqliteConnection> {
        match self.never {}
    }
}

impl Atomic for Xa<'_> {
    fn run_step(
        &mut self,
        _batch_id: &str,
        _direction: Direction,
        _step: &Step,
        _at: &str,
    ) -> Result<(), DriverError> {
        match self.never {}
    }

    fn rollback(&mut self) {
        match self.never {}
    }
}

impl TwoPhase for Xa<'_> {
    fn prepare(&mut self, _gid: &str) -> Result<(), DriverError> {
        match self.never {}
    }
}
