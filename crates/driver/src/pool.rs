//! [`ReadPools`]: connections kept between reads of binds, for a long-running process
//! (`orchestrate serve` reads every bind every few seconds). One r2d2 pool of one connection
//! per PostgreSQL or MySQL bind, and at most a budget of them per server, so that hundreds of
//! tenant databases on one server do not take its connections: the binds past the budget are
//! read with a new connection each time, as a command does. The budget is a quarter of every
//! connection limit a bind's connections count against: the server's, and where one is set,
//! its role's and its database's `CONNECTION LIMIT` (MySQL: the account's
//! `max_user_connections`), so that the sessions kept for reading never take the connections
//! the application or a migration command needs. A kept connection is checked against the
//! limits its place was given for when it opens and every few seconds as it is lent (see
//! `LIMITS_EVERY`): a limit set or lowered since, a restart with fewer connections, or a name
//! that now reaches another server gives the place up, and the bind's next read asks again.
//! A server that cannot be identified across restarts (its system identifier hidden from the
//! role) keeps no session. SQLite files are opened per read (no server, nothing to save).
//!
//! A read never waits on a pool: a kept connection that is idle and still answers is lent;
//! otherwise (the first read of a bind, its connection busy with another read, lost, or still
//! being opened in the background) the read opens its own connection, so its errors are the
//! driver's own and never a pool timeout. Kept connections are only ever used for reads, never
//! for a batch, and one left in a transaction is dropped, not kept.
//!
//! A kept session must read as a new one would: before each read it looks for this tool's
//! tables again (a schema created since may come first in its search path) and checks that
//! the database's and role's settings (`ALTER DATABASE/ROLE ... SET`) are those it opened with;
//! otherwise it is dropped and the read opens a new session. Kept PostgreSQL sessions fail
//! within seconds when the network stops answering (`tcp_user_timeout`, keepalives). The
//! budget counts servers as they identify themselves (PostgreSQL: system identifier and port;
//! MySQL: host name and port), whatever URLs reach them and across restarts; a bind not read
//! for a while (removed from the configuration, a tenant gone) gives its connection and its
//! place in the budget back, whether or not anything is read any more.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use r2d2::{HandleError, ManageConnection, Pool, PooledConnection};
use scheduled_thread_pool::{JobHandle, ScheduledThreadPool};
use serde::Serialize;

use crate::endpoint::{Backend, Endpoint};
use crate::error::DriverError;
use crate::participant::BindConnection;

/// A kept connection, what its database's and role's settings were when it opened, and when
/// its connection limits were last read.
pub struct Kept {
    conn: BindConnection,
    defaults: String,
    limits_read: Instant,
}

/// How often a kept connection's limits are read again (see [`ReadManager`]): a limit set or
/// lowered is seen within this and one refresh, without reading the limits before every read.
const LIMITS_EVERY: Duration = Duration::from_secs(5);

/// Opens and checks the one kept connection of a bind for [`ReadPools`].
#[derive(Debug)]
pub struct ReadManager {
    endpoint: Endpoint,
    lock_timeout: Duration,
    /// The connection limits (names and values) the bind's place in the budgets was given
    /// for. A connection that counts against other ones, or under other values (a limit set
    /// or lowered, a restart with fewer connections, a name that now reaches another server),
    /// is not kept, and the place is given up.
    limits: Vec<(String, i64)>,
    /// Set when that happened: the next read gives the place up and asks again.
    stale: Arc<AtomicBool>,
}

impl ReadManager {
    /// Whether `conn` still counts against the limits this place was given for.
    fn check_limits(&self, conn: &mut BindConnection) -> Result<(), DriverError> {
        let now = conn.connection_limits()?;
        if now == self.limits {
            return Ok(());
        }
        self.stale.store(true, Ordering::Relaxed);
        Err(DriverError::Other {
            bind: self.endpoint.bind.clone(),
            detail: format!(
                "the connection limits changed since this bind's place among the kept sessions was given (then {:?}, now {now:?}); it is given up and asked for again",
                self.limits
            ),
        })
    }
}

/// libpq parameters of a kept PostgreSQL session: a network that stops answering fails its
/// next read within seconds (as a new connection's `connect_timeout` would), instead of
/// leaving the read waiting.
const KEPT_PARAMS: &[(&str, &str)] = &[
    ("tcp_user_timeout", "10000"),
    ("keepalives", "1"),
    ("keepalives_idle", "30"),
    ("keepalives_interval", "5"),
    ("keepalives_count", "2"),
];

impl ManageConnection for ReadManager {
    type Connection = Kept;
    type Error = DriverError;

    fn connect(&self) -> Result<Kept, DriverError> {
        let mut conn = BindConnection::connect(&self.endpoint, false, self.lock_timeout)?;
        self.check_limits(&mut conn)?;
        let defaults = conn.session_defaults()?;
        Ok(Kept {
            conn,
            defaults,
            limits_read: Instant::now(),
        })
    }

    fn is_valid(&self, kept: &mut Kept) -> Result<(), DriverError> {
        kept.conn.prepare_reuse(&kept.defaults)?;
        if kept.limits_read.elapsed() >= LIMITS_EVERY {
            self.check_limits(&mut kept.conn)?;
            kept.limits_read = Instant::now();
        }
        Ok(())
    }

    fn has_broken(&self, kept: &mut Kept) -> bool {
        !kept.conn.is_idle()
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
            Reader::Kept(c) => &c.conn,
            Reader::Fresh(c) => c,
        }
    }
}

impl DerefMut for Reader {
    fn deref_mut(&mut self) -> &mut BindConnection {
        match self {
            Reader::Kept(c) => &mut c.conn,
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

/// One bind's place: its pool (`None`: a budget was spent), the connection limits it counts
/// against, and when it was last read.
struct Slot {
    pool: Option<Pool<ReadManager>>,
    limits: Vec<String>,
    last_used: Instant,
    /// Its pool's connection met other limits than those it was given (see [`ReadManager`]).
    stale: Arc<AtomicBool>,
    /// When its place was asked for: a bind refused one asks again after `forget_after`
    /// (limits raised, a restart with more connections, other binds gone).
    asked: Instant,
}

/// A bind's name, its database URL and its lock timeout.
type SlotKey = (String, String, Duration);

#[derive(Default)]
struct Inner {
    /// Per bind, database URL and lock timeout (two binds on one database have their own).
    slots: HashMap<SlotKey, Slot>,
    /// Per connection limit (a server, a role or a database there, as the server names them):
    /// how many kept connections it allows, and how many there are.
    limits: HashMap<String, (usize, usize)>,
    last_prune: Option<Instant>,
}

impl Inner {
    /// Gives up a bind's place: its pool closes, and its place in the budgets is free.
    fn forget(&mut self, key: &SlotKey) {
        if let Some(slot) = self.slots.remove(key) {
            if slot.pool.is_some() {
                for name in &slot.limits {
                    if let Some((_, used)) = self.limits.get_mut(name) {
                        *used = used.saturating_sub(1);
                    }
                }
            }
        }
    }

    /// Forgets the binds not read for `forget_after`: their pools close, and their places in
    /// the budgets are free again. At most every `forget_after / 4`.
    fn prune(&mut self, forget_after: Duration) {
        let now = Instant::now();
        if self
            .last_prune
            .is_some_and(|at| now.duration_since(at) < forget_after / 4)
        {
            return;
        }
        self.last_prune = Some(now);
        let unread: Vec<SlotKey> = self
            .slots
            .iter()
            .filter(|(_, slot)| now.duration_since(slot.last_used) >= forget_after)
            .map(|(key, _)| key.clone())
            .collect();
        for key in &unread {
            self.forget(key);
        }
        // A limit nothing counts against is read again when a bind next needs it.
        self.limits.retain(|_, (_, used)| *used > 0);
    }
}

/// Connections kept between reads, per bind, within a budget per server (see the module
/// docs).
pub struct ReadPools {
    per_server: usize,
    forget_after: Duration,
    threads: Arc<ScheduledThreadPool>,
    inner: Arc<Mutex<Inner>>,
    /// Prunes on a timer too, for when nothing is read at all any more.
    pruning: JobHandle,
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

impl Drop for ReadPools {
    fn drop(&mut self) {
        self.pruning.cancel();
    }
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a kept connection lives before it is replaced: what a server checks only when a
/// session starts, and a kept session cannot see from SQL (a new password, a `pg_hba.conf`
/// rule), reaches it only then. A change to its role (renamed, `NOLOGIN`, `VALID UNTIL`) or to
/// the database's `CONNECT` privilege is seen at its next read (see
/// [`BindConnection::prepare_reuse`]).
const MAX_LIFETIME: Duration = Duration::from_secs(5 * 60);

impl ReadPools {
    /// Pools that keep at most `per_server` connections on each server, and never more than a
    /// quarter of any connection limit they count against (the server's, the role's, the
    /// database's; read when a bind is first read). `0` keeps none: every read opens its own connection. A bind not read for
    /// `forget_after` loses its kept connection and its place in the budget.
    pub fn new(per_server: usize, forget_after: Duration) -> ReadPools {
        let threads = Arc::new(
            ScheduledThreadPool::builder()
                .num_threads(1)
                .thread_name_pattern("orchestrate-read-pool-{}")
                .build(),
        );
        let inner = Arc::new(Mutex::new(Inner::default()));
        let weak: Weak<Mutex<Inner>> = Arc::downgrade(&inner);
        let every = (forget_after / 4).max(Duration::from_secs(1));
        let pruning = threads.execute_at_fixed_rate(every, every, move || {
            if let Some(inner) = weak.upgrade() {
                lock(&inner).prune(forget_after);
            }
        });
        ReadPools {
            per_server,
            forget_after,
            threads,
            inner,
            pruning,
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
        // Every read prunes, SQLite ones too: binds no longer read give their sessions back
        // even when the page reads no PostgreSQL or MySQL bind any more.
        self.lock().prune(self.forget_after);
        if endpoint.backend == Backend::Sqlite {
            return self.fresh(endpoint, lock_timeout).map(Reader::Fresh);
        }
        let key = (
            endpoint.bind.clone(),
            endpoint.connect_url().to_string(),
            lock_timeout,
        );
        let known = {
            let mut inner = self.lock();
            inner.slots.get_mut(&key).map(|slot| {
                slot.last_used = Instant::now();
                (slot.pool.clone(), slot.stale.clone(), slot.asked)
            })
        };
        match known {
            Some((Some(pool), stale, _)) => {
                if let Some(kept) = pool.try_get() {
                    self.reused.fetch_add(1, Ordering::Relaxed);
                    return Ok(Reader::Kept(kept));
                }
                if stale.load(Ordering::Relaxed) {
                    // Its connection met other limits than its place was given for: the
                    // place is given up, and this read asks again.
                    self.lock().forget(&key);
                    return self.first_read(endpoint, lock_timeout, key);
                }
                self.fresh(endpoint, lock_timeout).map(Reader::Fresh)
            }
            Some((None, _, asked)) if asked.elapsed() >= self.forget_after => {
                self.lock().forget(&key);
                self.first_read(endpoint, lock_timeout, key)
            }
            Some((None, _, _)) => self.fresh(endpoint, lock_timeout).map(Reader::Fresh),
            None => self.first_read(endpoint, lock_timeout, key),
        }
    }

    /// A bind's first read (or first since its place was given up): a connection of its own,
    /// which reads the limits it counts against, and a place among the kept sessions if every
    /// one of them has room.
    fn first_read(
        &self,
        endpoint: &Endpoint,
        lock_timeout: Duration,
        key: SlotKey,
    ) -> Result<Reader, DriverError> {
        let mut conn = self.fresh(endpoint, lock_timeout)?;
        // Unknown: keep nothing for this bind now, ask again next time.
        let Ok(limits) = conn.connection_limits() else {
            return Ok(Reader::Fresh(conn));
        };
        let mut guard = self.lock();
        let inner = &mut *guard;
        for (i, (name, allows)) in limits.iter().enumerate() {
            let quarter = usize::try_from(allows / 4).unwrap_or(0);
            // The first is the server's, which `per_server` caps too.
            let budget = if i == 0 {
                self.per_server.min(quarter)
            } else {
                quarter
            };
            // The latest reading wins: a lowered limit lowers the budget at once (places
            // beyond it are given up as their connections meet the new value).
            inner.limits.entry(name.clone()).or_insert((budget, 0)).0 = budget;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = inner.slots.entry(key) {
            // A server known only by its start time (where `pg_control_system()` is revoked)
            // cannot be counted as one across restarts and databases: keep nothing there.
            let identified = limits
                .first()
                .is_some_and(|(name, _)| !name.starts_with("PostgreSQL started "));
            let fits = identified
                && limits
                    .iter()
                    .all(|(name, _)| inner.limits.get(name).is_some_and(|(a, u)| u < a));
            let stale = Arc::new(AtomicBool::new(false));
            let pool = fits.then(|| self.pool(endpoint, lock_timeout, &limits, &stale));
            if pool.is_some() {
                for (name, _) in &limits {
                    if let Some((_, used)) = inner.limits.get_mut(name) {
                        *used += 1;
                    }
                }
            }
            slot.insert(Slot {
                pool,
                limits: limits.into_iter().map(|(name, _)| name).collect(),
                last_used: Instant::now(),
                stale,
                asked: Instant::now(),
            });
        }
        Ok(Reader::Fresh(conn))
    }

    /// What the pools have done so far.
    pub fn stats(&self) -> PoolStats {
        let inner = self.lock();
        let pools: Vec<&Pool<ReadManager>> = inner
            .slots
            .values()
            .filter_map(|s| s.pool.as_ref())
            .collect();
        PoolStats {
            pooled_binds: pools.len(),
            open: pools.iter().map(|p| p.state().connections).sum(),
            reused: self.reused.load(Ordering::Relaxed),
            opened: self.opened.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        lock(&self.inner)
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
    fn pool(
        &self,
        endpoint: &Endpoint,
        lock_timeout: Duration,
        limits: &[(String, i64)],
        stale: &Arc<AtomicBool>,
    ) -> Pool<ReadManager> {
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
                endpoint: endpoint.with_params(KEPT_PARAMS),
                lock_timeout,
                limits: limits.to_vec(),
                stale: stale.clone(),
            })
    }
}
