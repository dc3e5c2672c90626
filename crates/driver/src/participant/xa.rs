//! MySQL data-only migrations as true two-phase participants, through XA: `XA START` (on
//! servers that keep prepared XA transactions after their session ends), the batch's
//! migrations inside it, `XA END` + `XA PREPARE` checked with `XA RECOVER`, and `XA COMMIT` /
//! `XA ROLLBACK` of a prepared transaction (then its batch mark is cleared), from the session
//! that prepared it or any other.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Binary, Text};
use diesel::MysqlConnection;
use orchestrate_core::{Direction, Step};

use super::{Atomic, HasSession, Mark, Mysql, PreparedXact, Resolve, Session, TwoPhase};
use crate::error::DriverError;
use crate::record::{gid_for, TransactionId, XaId};

/// Whether a server keeps prepared XA transactions after their session ends: MariaDB from
/// 10.5.2, MySQL from 5.7.7.
fn xa_survives_disconnect(version: &str) -> bool {
    let numbers: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let v = (
        numbers.first().copied().unwrap_or(0),
        numbers.get(1).copied().unwrap_or(0),
        numbers.get(2).copied().unwrap_or(0),
    );
    if version.to_ascii_lowercase().contains("mariadb") {
        v >= (10, 5, 2)
    } else {
        v >= (5, 7, 7)
    }
}

#[derive(QueryableByName)]
struct XaRow {
    #[diesel(sql_type = BigInt)]
    gtrid_length: i64,
    #[diesel(sql_type = Binary)]
    data: Vec<u8>,
}

/// A MySQL bind's part of a batch, open as an XA transaction on its session (between
/// `XA START` and `XA PREPARE` or rollback). DDL inside it is refused by the server
/// (`XAER_RMFAIL`), which fails the batch like any failed migration.
pub struct Xa<'a> {
    mysql: &'a mut Mysql,
    xid: XaId,
    /// Whether the XA transaction is still open (not yet prepared or rolled back).
    open: bool,
}

impl Mysql {
    /// `XA START` for this bind's part of `batch_id`. Servers whose prepared XA transactions
    /// do not survive a disconnect are refused.
    pub fn start_xa(&mut self, batch_id: &str) -> Result<Xa<'_>, DriverError> {
        #[derive(QueryableByName)]
        struct V {
            #[diesel(sql_type = Text)]
            v: String,
        }
        let s = self.session();
        let found: Result<V, _> =
            diesel::sql_query("SELECT VERSION() AS v").get_result(&mut *s.conn);
        let version = found
            .map_err(|e| s.query_err("cannot read the server version", e))?
            .v;
        if !xa_survives_disconnect(&version) {
            return Err(s.other(format!("this server ({version}) loses prepared XA transactions when the session ends, so data_only migrations cannot be atomic on it; it needs MariaDB 10.5.2 or MySQL 5.7.7 or newer. Remove `data_only = true` to migrate it non-atomically")));
        }
        let xid = XaId::new(batch_id, &s.bind());
        s.execute_plain("XA START failed", &format!("XA START {xid}"))?;
        Ok(Xa {
            mysql: self,
            xid,
            open: true,
        })
    }

    /// This tool's prepared XA transactions on this server (all binds').
    fn xa_recover(&mut self) -> Result<Vec<XaId>, DriverError> {
        let s = self.session();
        let rows: Result<Vec<XaRow>, _> = diesel::sql_query("XA RECOVER").load(&mut *s.conn);
        let rows = rows.map_err(|e| {
            s.query_err(
                "cannot list prepared XA transactions (XA RECOVER; MySQL 8 needs the XA_RECOVER_ADMIN privilege)",
                e,
            )
        })?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let split = usize::try_from(r.gtrid_length).ok()?.min(r.data.len());
                XaId::recovered(&r.data[..split], &r.data[split..])
            })
            .collect())
    }

    /// `XA COMMIT` or `XA ROLLBACK` of a prepared transaction, then its batch mark is cleared.
    fn xa_finish(&mut self, gid: &str, verb: &str) -> Result<(), DriverError> {
        let id: TransactionId = gid
            .parse()
            .map_err(|e| self.session_ref().other(format!("{e}")))?;
        let xid = XaId::from(&id);
        self.session().execute_plain(
            &format!("XA {verb} of {gid} failed"),
            &format!("XA {verb} {xid}"),
        )?;
        // The mark is removed next, and must commit whatever a migration did to autocommit.
        self.autocommit()?;
        // The transaction is ended either way; a mark left behind is settled by recover by the
        // batch's decision, and blocks new batches on this bind until then.
        if let Err(e) = self.clear_batch_marks(&id.batch_id) {
            tracing::warn!(bind = %self.session().bind(), error = %e, "XA {verb} done, but the batch mark could not be cleared; `orchestrate recover` clears it");
        }
        Ok(())
    }
}

impl Resolve for Mysql {
    fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
        Mysql::marks(self)
    }

    /// This bind's prepared XA transactions, as transaction ids with the decider from the
    /// bind's batch marks. XA RECOVER lists the whole server: only this bind's are kept.
    fn prepared(&mut self) -> Result<Vec<PreparedXact>, DriverError> {
        let marks: Vec<Mark> = self
            .marks()?
            .into_iter()
            .filter(|m| m.kind() == super::MarkKind::XaBatch)
            .collect();
        if marks.is_empty() {
            // Every XA participant writes its `xa-batch` mark before XA START and it stays
            // until the transaction is resolved: without one there is nothing to look for,
            // and XA RECOVER (which MySQL 8 reserves to XA_RECOVER_ADMIN) is not run.
            return Ok(Vec::new());
        }
        let bind = self.session().bind();
        Ok(self
            .xa_recover()?
            .into_iter()
            // XA RECOVER lists the whole server: keep this bind's, of batches marked here.
            .filter_map(|xid| {
                let mark = marks.iter().find(|m| m.batch_id == xid.batch_id)?;
                (xid.bind == bind).then(|| PreparedXact {
                    gid: gid_for(&xid.batch_id, &mark.decider, &bind),
                    prepared_at: mark.started_at.clone(),
                    age: "unknown".into(),
                })
            })
            .collect())
    }

    fn commit_prepared(&mut self, gid: &str) -> Result<(), DriverError> {
        self.xa_finish(gid, "COMMIT")
    }

    fn rollback_prepared(&mut self, gid: &str) -> Result<(), DriverError> {
        self.xa_finish(gid, "ROLLBACK")
    }
}

impl HasSession for Xa<'_> {
    type Conn = MysqlConnection;

    fn session(&mut self) -> &mut Session<MysqlConnection> {
        self.mysql.session()
    }

    fn session_ref(&self) -> &Session<MysqlConnection> {
        self.mysql.session_ref()
    }
}

impl Atomic for Xa<'_> {
    /// The server keeps the XA transaction whatever a migration says: it refuses COMMIT and
    /// the like inside it.
    fn run_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        step: &Step,
        at: &str,
    ) -> Result<(), DriverError> {
        self.session()
            .run_step(batch_id, direction, step, at, |_, _| Ok(false), None)
    }

    /// An XA transaction must be ended before it can be rolled back; either may fail when the
    /// other already happened. Closing the session rolls back too.
    fn rollback(&mut self) {
        if !std::mem::replace(&mut self.open, false) {
            return;
        }
        let (end, rollback) = (
            format!("XA END {}", self.xid),
            format!("XA ROLLBACK {}", self.xid),
        );
        let conn = &mut self.session().conn;
        let _ = conn.batch_execute(&end);
        let _ = conn.batch_execute(&rollback);
    }
}

impl TwoPhase for Xa<'_> {
    /// `XA END` and `XA PREPARE`, then checked with `XA RECOVER`; a transaction prepared but
    /// not listed is rolled back. The prepared transaction stays attached to this session:
    /// end it here ([`Resolve`] of [`Mysql`]) while the session lives (another session cannot
    /// end it while this one is attached: MariaDB answers XAER_NOTA).
    fn prepare(&mut self, gid: &str) -> Result<(), DriverError> {
        let sql = format!("XA END {0}; XA PREPARE {0}", self.xid);
        let s = self.session();
        let done = s.conn.batch_execute(&sql);
        done.map_err(|source| DriverError::Prepare {
            bind: s.bind(),
            class: <MysqlConnection as super::Db>::classify(&source),
            source,
        })?;
        self.open = false;
        let wanted = gid.parse::<TransactionId>().ok().map(|id| XaId::from(&id));
        if !self
            .mysql
            .xa_recover()?
            .iter()
            .any(|x| Some(x) == wanted.as_ref())
        {
            // Not listed: end whatever there is on this session.
            let rollback = format!("XA ROLLBACK {}", self.xid);
            let _ = self.session().conn.batch_execute(&rollback);
            return Err(DriverError::PrepareNotRecorded {
                bind: self.session().bind(),
                gid: gid.into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xa_needs_servers_that_keep_prepared_transactions() {
        assert!(xa_survives_disconnect("10.11.19-MariaDB-0+deb12u1"));
        assert!(xa_survives_disconnect("10.5.2-MariaDB"));
        assert!(!xa_survives_disconnect("10.5.1-MariaDB"));
        assert!(!xa_survives_disconnect("10.4.30-MariaDB-log"));
        assert!(xa_survives_disconnect("8.0.36"));
        assert!(xa_survives_disconnect("5.7.7-log"));
        assert!(!xa_survives_disconnect("5.6.51"));
    }

    #[test]
    fn xa_ids_come_from_transaction_ids_and_xa_recover() {
        let gid = gid_for("20261125T000000Z-0a1b2c3d", "users", "shop");
        let xid = XaId::from(&gid.parse::<TransactionId>().unwrap());
        assert_eq!(xid, XaId::new("20261125T000000Z-0a1b2c3d", "shop"));
        assert_eq!(
            xid.to_string(),
            "'orchestrate:20261125T000000Z-0a1b2c3d','shop'"
        );
        assert_eq!(
            XaId::recovered(b"orchestrate:20261125T000000Z-0a1b2c3d", b"shop"),
            Some(xid)
        );
        assert_eq!(XaId::recovered(b"someone_else:1", b"shop"), None);
    }
}
