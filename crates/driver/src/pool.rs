//! [`ReadPools`]: connections kept between reads of binds, for a long-running process
//! (`orchestrate serve` reads every bind every few seconds). One r2d2 pool of one connection
//! per PostgreSQL or MySQL bind, and at most a budget of them per server, so that hundreds of
//! tenant databases on one server do not take its connections: the binds past the budget are
//! read with a new connection each time, as a command does. SQLite files are opened per read
//! (no server, nothing to save).
//!
//! A read never waits on a pool: a kept connection that is idle and still answers is lent;
//! otherwise (the first read of a bind, its connection busy with another read, lost, or still
//! being opened in the background) the read opens its own connection, so its errors are the
//! driver's own and never a pool timeout. Kept connections are only ever used for reads, never
//! for a batch, and one left in a transaction is dropped, not kept.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use r2d2::{HandleError, ManageConnection, Pool, PooledConnection};
use scheduled_thread_pool::ScheduledThreadPool;
use serde::Serialize;

use crate::endpoint::{Backend, Endpoint};
use crate::error::DriverError;
use crate::participant::BindConnection;

/// Opens and checks the one kept connection of a bind for [`ReadPools`].
#[derive(Debug)]
pub struct ReadManager {
    endpoint: Endpoint,
    lock_timeout: Duration,
}

impl ManageConnection for ReadManager {
    type Connection = BindConnection;
    type Error = DriverError;

    fn connect(&self) -> Result<BindConnection, DriverError> {
        BindConnection::connect(&self.endpoint, false, self.lock_timeout)
    }

    fn is_valid(&self, conn: &mut BindConnection) -> Result<(), DriverError> {
        conn.ping()
    }

    fn has_broken(&self, conn: &mut BindConnection) -> bool {
        !conn.is_idle()
    }
}

/// The pool's own errors (a kept connection that could not be opened or no longer answers)
/// go to `tracing`: the next read opens its own connection and reports what it meets.
#[derive(Debug)]
struct ToTracing;

impl HandleError<DriverError> for ToTracing {
    fn handle_error(&self, error: DriverError) {
        tracing::debug!(%error, "a kept read connection failed");
    }
}

/// A connection to read a bind with: kept (lent by its pool, back to it when dropped) or
/// opened for this read.
pub enum Reader {
    /// A kept connection, returned to its pool when dropped.
    Kept(PooledConnection<ReadManager>),
    /// A connection opened for this read, closed when dropped.
    Fresh(BindConnection),
}

impl Deref for Reader {
    type Target = BindConnection;

    fn deref(&self) -> &BindConnection {
        match self {
            Reader::Kept(c) => c,
            Reader::Fresh(c) => c,
        }
    }
}

impl DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut BindConnection {
        match self {
            Reader::Kept(c) => c,
            Reader::Fresh(c) => c,
        }
    }
}

/// What the pools have done so far, for a page to show and tests to check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    /// Binds with a pool (at most the budget per server).
    pub pooled_binds: usize,
    /// Connections open in the pools now.
    pub open: u32,
    /// Reads served by a kept connection.
    pub reused: u64,
    /// Reads that opened their own connection.
    pub opened: u64,
}

#[derive(Default)]
struct Inner {
    /// Per database URL and lock timeout: its pool, or `None` when its server's budget was
    /// spent.
    pools: HashMap<(String, Duration), Option<Pool<ReadManager>>>,
    /// Per server: how many of its binds may keep a connection, and how many do.
    servers: HashMap<String, (usize, usize)>,
}

/// Connections kept between reads, per bind, within a budget per server (see the module
/// docs).
pub struct ReadPools {
    per_server: usize,
    threads: Arc<ScheduledThreadPool>,
    inner: Mutex<Inner>,
    reused: AtomicU64,
    opened: AtomicU64,
}

impl std::fmt::Debug for ReadPools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadPools")
            .field("per_server", &self.per_server)
            .field("stats", &self.stats())
            .finish()
    }
}

/// How long a kept connection lives before it is replaced: a session fixes where this tool's
/// tables are when it opens (the search path then), so a kept one follows a change of the
/// database's or role's settings within this time.
const MAX_LIFETIME: Duration = Duration::from_secs(10 * 60);

impl ReadPools {
    /// Pools that keep at most `per_server` connections on each server, and never more than a
    /// quarter of the connections the server accepts (read from it when its first bind is
    /// read). `0` keeps none: every read opens its own connection.
    pub fn new(per_server: usize) -> ReadPools {
        ReadPools {
            per_server,
            threads: Arc::new(
                ScheduledThreadPool::builder()
                    .num_threads(1)
                    .thread_name_pattern("orchestrate-read-pool-{}")
                    .build(),
            ),
            inner: Mutex::new(Inner::default()),
            reused: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    /// A connection to read `endpoint` with, whose every lock wait is bounded by
    /// `lock_timeout` (connections with different timeouts are kept apart). Never creates a
    /// SQLite file: a missing one is [`DriverError::NoSuchFile`], as for
    /// [`BindConnection::connect`].
    pub fn connect(
        &self,
        endpoint: &Endpoint,
        lock_timeout: Duration,
    ) -> Result<Reader, DriverError> {
        let Some(server) = server_of(endpoint) else {
            return self.fresh(endpoint, lock_timeout).map(Reader::Fresh);
        };
        let key = (endpoint.connect_url().to_string(), lock_timeout);
        let known = self.lock().pools.get(&key).cloned();
        match known {
            Some(Some(pool)) => {
                if let Some(kept) = pool.try_get() {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(Reader::Kept(kept));
                }
                self.fresh(endpoint, lock_timeout).map(Reader::Fresh)
            }
            Some(None) => self.fresh(endpoint, lock_timeout).map(Reader::Fresh),
            None => {
                let mut conn = self.fresh(endpoint, lock_timeout)?;
                let budget = if self.lock().servers.contains_key(&server) {
                    None
                } else {
                    match conn.server_connections() {
                        Ok(room) => Some(
                            self.per_server
                                .min(usize::try_from(room.unwrap_or(0) / 4).unwrap_or(0)),
                        ),
                        // Not known: keep nothing for this bind now, ask again next time.
                        Err(_) => return Ok(Reader::Fresh(conn)),
                    }
                };
                let mut guard = self.lock();
                let inner = &mut *guard;
                let (allowed, used) = inner
                    .servers
                    .entry(server)
                    .or_insert((budget.unwrap_or(0), 0));
                if let std::collections::hash_map::Entry::Vacant(slot) = inner.pools.entry(key) {
                    let pool = (*used < *allowed).then(|| self.pool(endpoint, lock_timeout));
                    if pool.is_some() {
                        *used += 1;
                    }
                    slot.insert(pool);
                }
                Ok(Reader::Fresh(conn))
            }
        }
    }

    /// What the pools have done so far.
    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        let pools: Vec<&Pool<ReadManager>> = inner.pools.values().flatten().collect();
        PoolStats {
            pooled_binds: pools.len(),
            open: pools.iter().map(|p| p.state().connections).sum(),
            reused: self.reused.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn fresh(
        &self,
        endpoint: &Endpoint,
        lock_timeout: Duration,
    ) -> Result<BindConnection, DriverError> {
        self.opened.fetch_add(1, Ordering::Relaxed);
        BindConnection::connect(endpoint, false, lock_timeout)
    }

    /// A pool of one connection for `endpoint`, opened in the background (the read that asked
    /// has its own): the next read finds it ready.
    fn pool(&self, endpoint: &Endpoint, lock_timeout: Duration) -> Pool<ReadManager> {
        Pool::builder()
            .max_size(1)
            .min_idle(Some(1))
            .max_lifetime(Some(MAX_LIFETIME))
            .idle_timeout(None)
            // Only spaces the background retries after a failure (at most half of it).
            .connection_timeout(Duration::from_secs(60))
            .error_handler(Box::new(ToTracing))
            .thread_pool(self.threads.clone())
            .build_unchecked(ReadManager {
                endpoint: endpoint.clone(),
                lock_timeout,
            })
    }
}

/// The server a bind's database is on, as its URL names it (`None`: SQLite, no server). Two
/// URLs naming one server differently count as two servers: the budget is per name.
fn server_of(endpoint: &Endpoint) -> Option<String> {
    match endpoint.backend {
        Backend::Postgres => endpoint.server().map(|s| format!("postgres {s}")),
        Backend::Mysql => Some(mysql_server(endpoint)),
        Backend::Sqlite => None,
    }
}

#[cfg(feature = "mysql")]
fn mysql_server(endpoint: &Endpoint) -> String {
    match endpoint.mysql_tcp_address() {
        Some((host, port)) => format!("mysql {host}:{port}"),
        None => "mysql (local socket)".into(),
    }
}

#[cfg(not(feature = "mysql"))]
fn mysql_server(_endpoint: &Endpoint) -> String {
    "mysql".into()
}
