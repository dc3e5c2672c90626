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

#[allow(clippy::missing_errors_doc)]
impl Mysql {
    /// Refuses: this build has no MySQL client.
    pub fn connect(endpoint: &Endpoint, _lock_timeout: Duration) -> Result<Mysql, DriverError> {
        Err(DriverError::Other {
            bind: endpoint.bind.clone(),
            detail: not_built(),
        })
    }

    /// With MySQL: takes the bind's session lock and creates the version tables and
    /// `orchestrate_in_progress`. Unreachable in this build: no `Mysql` exists.
    pub fn begin_nonatomic(&mut self) -> Result<(), DriverError> {
        match self.never {}
    }

    /// With MySQL: [`Mysql::begin_nonatomic`], then opens a bookkeeping transaction. Unreachable in
    /// this build: no `Mysql` exists.
    pub fn begin_batch(&mut self) -> Result<(), DriverError> {
        match self.never {}
    }

    /// With MySQL: commits the open bookkeeping transaction. Unreachable in this build: no `Mysql`
    /// exists.
    pub fn commit(&mut self) -> Result<(), DriverError> {
        match self.never {}
    }

    /// With MySQL: rolls back the open bookkeeping transaction, if any. Unreachable in this build:
    /// no `Mysql` exists.
    pub fn rollback(&mut self) {
        match self.never {}
    }

    /// With MySQL: whether no session holds the bind's migration lock. Unreachable in this build:
    /// no `Mysql` exists.
    pub fn session_lock_free(&mut self) -> Result<bool, DriverError> {
        match self.never {}
    }

    /// With MySQL: refuses a server whose InnoDB does not flush its log at every commit.
    /// Unreachable in this build: no `Mysql` exists.
    pub fn check_durable_commits(&mut self) -> Result<(), DriverError> {
        match self.never {}
    }

    /// With MySQL: the marks of work under way and not settled on the bind. Unreachable in this
    /// build: no `Mysql` exists.
    pub fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        match self.never {}
    }

    /// With MySQL: writes a mark, committed at once. Unreachable in this build: no `Mysql` exists.
    pub fn put_mark(&mut self, _mark: &Mark) -> Result<(), DriverError> {
        match self.never {}
    }

    /// With MySQL: records how many statements of a marked migration have committed. Unreachable in
    /// this build: no `Mysql` exists.
    pub fn set_mark_progress(&mut self, _mark: &Mark, _done: i64) -> Result<(), DriverError> {
        match self.never {}
    }

    /// With MySQL: removes a mark. Unreachable in this build: no `Mysql` exists.
    pub fn clear_mark(&mut self, _mark: &Mark) -> Result<(), DriverError> {
        match self.never {}
    }

    /// With MySQL: runs one statement of a migration outside any transaction. Unreachable in this
    /// build: no `Mysql` exists.
    pub fn run_statement(&mut self, _name: &str, _sql: &str) -> Result<(), DriverError> {
        match self.never {}
    }

    /// With MySQL: records a finished step and clears its mark in one transaction. Unreachable in
    /// this build: no `Mysql` exists.
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

    /// With MySQL: the steps a batch took on the bind that no undo has reverted, newest first.
    /// Unreachable in this build: no `Mysql` exists.
    pub fn batch_steps(&mut self, _batch_id: &str) -> Result<Vec<BatchStep>, DriverError> {
        match self.never {}
    }

    /// With MySQL: `XA START` for the bind's part of a batch. Unreachable in this build: no `Mysql`
    /// exists.
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
