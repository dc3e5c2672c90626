use orchestrate_core::Direction;

use crate::endpoint::Backend;

/// Every transaction id this tool prepares starts with this, so that `recover` and `status`
/// can find them in `pg_prepared_xacts` and never touch anyone else's.
pub const GID_PREFIX: &str = "orchestrate:";

/// The id of a bind's prepared transaction: `orchestrate:<batch>:<decider>:<bind>`. It carries
/// the batch, the bind whose `orchestrate_batches` table holds the decision, and the bind
/// itself, so it is unique per server even when several binds share one. Bind names are
/// `[a-z0-9_]{1,63}` and batch ids are `[0-9A-Za-z-]`, so it stays under PostgreSQL's 200 bytes
/// and needs no escaping. See [`TransactionId`] for the form that also names the decider's
/// transaction.
pub fn gid_for(batch_id: &str, decider: &str, bind: &str) -> String {
    TransactionId::new(batch_id, decider, bind).to_string()
}

/// A transaction id of this tool: the batch, the bind that decides it, the bind it belongs
/// to, and (PostgreSQL deciders) the decider's batch transaction, whose COMMIT is the
/// decision. Written by its `Display` (`orchestrate:<batch>:<decider>:<bind>`, then
/// `:<xid>` when the decider's transaction is known; see [`gid_for`]) and read back by
/// [`TransactionId::parse`] (or `str::parse`): the one format and the one parser of these ids.
///
/// The decider's transaction id is kept on the participants, where no migration of the decider
/// can reach it: `recover` asks the decider's server whether that transaction committed, which
/// no row the decider's own migrations could rewrite can contradict.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId {
    /// The batch the transaction belongs to.
    pub batch_id: String,
    /// The bind whose `orchestrate_batches` decides the batch.
    pub decider: String,
    /// The bind whose transaction this is.
    pub bind: String,
    /// The decider's batch transaction (PostgreSQL's `txid_current()`, with its epoch), when
    /// the decider is a PostgreSQL bind; ids written before this existed have none.
    pub decider_xid: Option<u64>,
}

impl TransactionId {
    /// The id of `bind`'s transaction in batch `batch_id` decided by `decider`, naming no
    /// decider's transaction (see [`TransactionId::with_decider_xid`]).
    pub fn new(batch_id: &str, decider: &str, bind: &str) -> TransactionId {
        TransactionId {
            batch_id: batch_id.into(),
            decider: decider.into(),
            bind: bind.into(),
            decider_xid: None,
        }
    }

    /// The same id, naming the decider's transaction.
    pub fn with_decider_xid(mut self, xid: Option<u64>) -> TransactionId {
        self.decider_xid = xid;
        self
    }

    /// `None` for ids that are not this tool's (`orchestrate:<batch>:<decider>:<bind>`,
    /// optionally `:<xid>`).
    pub fn parse(gid: &str) -> Option<TransactionId> {
        let rest = gid.strip_prefix(GID_PREFIX)?;
        let mut parts = rest.splitn(4, ':');
        let (batch_id, decider, bind) = (parts.next()?, parts.next()?, parts.next()?);
        if batch_id.is_empty() || decider.is_empty() || bind.is_empty() {
            return None;
        }
        let decider_xid = match parts.next() {
            None => None,
            Some(x) if !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()) => {
                Some(x.parse().ok()?)
            }
            Some(_) => return None,
        };
        Some(TransactionId::new(batch_id, decider, bind).with_decider_xid(decider_xid))
    }
}

/// A text that is not a transaction id of this tool.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a transaction id of this tool (orchestrate:<batch>:<decider>:<bind>)")]
pub struct NotATransactionId(pub String);

impl std::str::FromStr for TransactionId {
    type Err = NotATransactionId;

    fn from_str(gid: &str) -> Result<TransactionId, NotATransactionId> {
        TransactionId::parse(gid).ok_or_else(|| NotATransactionId(gid.into()))
    }
}

impl std::fmt::Display for TransactionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{GID_PREFIX}{}:{}:{}",
            self.batch_id, self.decider, self.bind
        )?;
        match self.decider_xid {
            Some(xid) => write!(f, ":{xid}"),
            None => Ok(()),
        }
    }
}

/// The XA id of a bind's part of a batch on MySQL: `'orchestrate:<batch>','<bind>'` (XA allows
/// 64 bytes for each part, too few for the transaction id's four parts). The decider is found
/// in the bind's batch mark, written before `XA START`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct XaId {
    pub(crate) batch_id: String,
    pub(crate) bind: String,
}

impl XaId {
    pub(crate) fn new(batch_id: &str, bind: &str) -> XaId {
        XaId {
            batch_id: batch_id.into(),
            bind: bind.into(),
        }
    }

    /// This tool's XA id in a row of `XA RECOVER`: the global id (`orchestrate:<batch>`) and
    /// the branch qualifier (the bind); `None` for anyone else's.
    #[cfg_attr(not(feature = "mysql"), allow(dead_code))]
    pub(crate) fn recovered(gtrid: &[u8], bqual: &[u8]) -> Option<XaId> {
        let gtrid = std::str::from_utf8(gtrid).ok()?;
        let bqual = std::str::from_utf8(bqual).ok()?;
        Some(XaId::new(gtrid.strip_prefix(GID_PREFIX)?, bqual))
    }
}

impl From<&TransactionId> for XaId {
    fn from(id: &TransactionId) -> XaId {
        XaId::new(&id.batch_id, &id.bind)
    }
}

/// As SQL: the two quoted parts, `'orchestrate:<batch>','<bind>'`.
impl std::fmt::Display for XaId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{},{}",
            quote_literal(&format!("{GID_PREFIX}{}", self.batch_id)),
            quote_literal(&self.bind)
        )
    }
}

/// Quotes a text as an SQL string literal. The one place where a value is inlined into SQL:
/// `PREPARE TRANSACTION` and `COMMIT PREPARED` take no bind parameters.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A step to re-run on a SQLite bind that lost its open transaction after the decision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RedoStep {
    /// The migration's version.
    pub version: String,
    /// The migration's folder name.
    pub name: String,
    /// The SQL the step ran: `up.sql` for an upgrade, the down SQL for a downgrade.
    pub sql: String,
    /// For an upgrade: the checksum of `up.sql`, recorded with the migration.
    pub checksum: Option<String>,
    /// For an upgrade: the `down.sql` recorded with the migration.
    pub down_sql: Option<String>,
}

/// One bind of a batch as the decision record knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Participant {
    /// The bind's name.
    pub bind: String,
    /// The bind's backend, which says which of the fields below it has.
    pub backend: Backend,
    /// The prepared transaction's id (PostgreSQL binds other than the decider).
    pub gid: Option<String>,
    /// The exact steps of the bind's batch (SQLite binds other than the decider), so that
    /// a SQLite bind whose open transaction was lost after the decision can be brought
    /// forward.
    pub redo: Option<Vec<RedoStep>>,
    /// SQLite binds other than the decider: the versions applied there when the batch began.
    /// `recover` redoes the batch only on a database still in exactly that state, never on a
    /// file that was replaced or reset since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Vec<String>>,
}

/// The decision to commit a batch, written into the batch's `begun` row of the decider's
/// `orchestrate_batches` inside the decider's own batch transaction: that transaction's COMMIT
/// is the decision.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DecisionRecord {
    /// The batch decided.
    pub batch_id: String,
    /// Which way the batch moves its binds: `up` or `down`.
    pub direction: String,
    /// The bind that holds this record, whose batch transaction's COMMIT is the decision.
    pub decider: String,
    /// The batch's binds, the decider among them, each with what `recover` needs to finish
    /// it there.
    pub participants: Vec<Participant>,
}

impl DecisionRecord {
    /// The batch's [`Direction`]: `down` is a downgrade, anything else an upgrade.
    pub fn direction(&self) -> Direction {
        if self.direction == "down" {
            Direction::Down
        } else {
            Direction::Up
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_and_literals() {
        assert_eq!(
            gid_for("20261124T220000Z-0a1b2c3d", "users", "billing"),
            "orchestrate:20261124T220000Z-0a1b2c3d:users:billing"
        );
        assert!(
            gid_for(
                "20261124T220000Z-0a1b2c3d",
                &"a".repeat(63),
                &"b".repeat(63)
            )
            .len()
                < 200
        );
        let gid = gid_for("20261124T220000Z-0a1b2c3d", "users", "billing");
        let parsed = TransactionId::parse(&gid).unwrap();
        assert_eq!(
            (
                parsed.batch_id.as_str(),
                parsed.decider.as_str(),
                parsed.bind.as_str()
            ),
            ("20261124T220000Z-0a1b2c3d", "users", "billing")
        );
        assert_eq!(parsed.to_string(), gid);
        assert_eq!(TransactionId::parse("_sa_0a1b"), None);
        assert_eq!(TransactionId::parse("orchestrate:b:d"), None);
        assert_eq!(TransactionId::parse("orchestrate:b::x"), None);
        // Round trip, through FromStr too, with and without the decider's transaction; a
        // bind name never holds ':', so a fourth part can only be that transaction's id.
        let id = TransactionId::new("20261124T220000Z-0a1b2c3d", "users", "billing");
        assert_eq!(id.to_string().parse::<TransactionId>(), Ok(id.clone()));
        assert_eq!(id.decider_xid, None);
        let with = id.clone().with_decider_xid(Some(4_294_967_296 + 7));
        assert_eq!(
            with.to_string(),
            "orchestrate:20261124T220000Z-0a1b2c3d:users:billing:4294967303"
        );
        assert_eq!(with.to_string().parse::<TransactionId>(), Ok(with.clone()));
        assert_ne!(with, id);
        assert!(
            TransactionId::new(
                "20261124T220000Z-0a1b2c3d",
                &"a".repeat(63),
                &"b".repeat(63)
            )
            .with_decider_xid(Some(u64::MAX))
            .to_string()
            .len()
                < 200
        );
        for not_ours in [
            "orchestrate:b:d:x:y",
            "orchestrate:b:d:x:",
            "orchestrate:b:d:x:12a",
            "orchestrate:b:d:x:1:2",
            "orchestrate:b:d:x:99999999999999999999999",
        ] {
            assert_eq!(TransactionId::parse(not_ours), None, "{not_ours}");
        }
        assert!("someone_else:1".parse::<TransactionId>().is_err());
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            quote_literal("'; drop table x; --"),
            "'''; drop table x; --'"
        );
    }
}
