use std::collections::BTreeSet;
use std::fmt;

use crate::chain::{Chain, MigrationFile};
use crate::escapes::Refusal;
use crate::target::Target;
use crate::version::Version;

/// A migration a database says it has applied, with what this tool recorded about it (nothing,
/// when another tool such as diesel_cli applied it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The version as the database stores it, kept verbatim (see [`Version::from_stored`]).
    pub version: Version,
    /// The folder name recorded at apply time.
    pub name: Option<String>,
    /// The checksum of `up.sql` recorded at apply time.
    pub checksum: Option<String>,
    /// The `down.sql` recorded at apply time.
    pub down_sql: Option<String>,
}

impl Applied {
    /// A bare record, as diesel's own table holds it.
    pub fn bare(version: &str) -> Applied {
        Applied {
            version: Version::from_stored(version),
            name: None,
            checksum: None,
            down_sql: None,
        }
    }
}

/// Which way a plan moves a bind; shown as `up` or `down`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// An upgrade: pending migrations' `up.sql`, oldest first.
    Up,
    /// A downgrade: applied migrations' down SQL, newest first.
    Down,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Up => "up",
            Direction::Down => "down",
        })
    }
}

/// Where a downgrade step's SQL comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownSqlSource {
    /// The migration folder's `down.sql`, identical to the copy stored at apply time (or none
    /// was stored).
    File,
    /// The folder's `down.sql`, which differs from the copy stored at apply time.
    FileDiffersFromStored,
    /// The copy stored at apply time; the folder or its `down.sql` is gone.
    Stored,
}

/// One migration to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The migration's version.
    pub version: Version,
    /// The migration's full folder name; for a downgrade of a migration whose folder is gone,
    /// the name recorded at apply time, or the version when none was recorded.
    pub name: String,
    /// The SQL to run: `up.sql` for an upgrade, the down SQL for a downgrade.
    pub sql: String,
    /// For an upgrade: the checksum of `up.sql`, recorded with the migration.
    pub checksum: Option<String>,
    /// For an upgrade: the `down.sql` to record with the migration.
    pub down_sql: Option<String>,
    /// For a downgrade: where `sql` came from.
    pub down_source: Option<DownSqlSource>,
    /// What undoes this step once it has committed, for backends that cannot roll back DDL
    /// (MySQL): the down SQL of an upgrade step, the `up.sql` of a downgrade step (when its
    /// folder is still there).
    pub undo_sql: Option<String>,
    /// The migration says it changes only data (`data_only = true` in metadata.toml): on
    /// MySQL it can run inside an XA transaction.
    pub data_only: bool,
    /// False for a migration with `run_in_transaction = false` (PostgreSQL, planned with
    /// [`Allow::non_transactional`]): it runs outside any transaction, as a segment of its own.
    pub in_transaction: bool,
}

impl Step {
    /// A step that is only recorded, never run (stamp, resolve, recover): no SQL, nothing to
    /// undo it with.
    pub fn record_only(
        version: Version,
        name: String,
        checksum: Option<String>,
        down_sql: Option<String>,
    ) -> Step {
        Step {
            version,
            name,
            sql: String::new(),
            checksum,
            down_sql,
            down_source: None,
            undo_sql: None,
            data_only: false,
            in_transaction: true,
        }
    }
}

/// What must run on one bind to reach its target. An empty plan means the bind is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The bind the plan is for.
    pub bind: String,
    /// Whether the plan upgrades or downgrades the bind.
    pub direction: Direction,
    /// The migrations to run, in the order they run: oldest first for an upgrade, newest
    /// first for a downgrade.
    pub steps: Vec<Step>,
    /// The versions applied when the plan was made, in version order (`None`: a plan not
    /// made from a database's state, such as `recover`'s redo of a batch's recorded steps). A
    /// plan is for that state only: a relative target (`-1`, `+2`) or `head` read from
    /// another state means other steps.
    pub from: Option<Vec<Version>>,
}

/// Drift the user accepts for one upgrade.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allow {
    /// Apply pending migrations older than the newest applied one (in version order).
    pub out_of_order: bool,
    /// Go on although an applied migration's `up.sql` changed since it ran.
    pub edited: bool,
    /// Go on although an applied migration's folder is gone.
    pub missing: bool,
    /// Plan a migration with `run_in_transaction = false` as a step outside any transaction
    /// instead of refusing it (`--allow-non-atomic` on a PostgreSQL bind).
    pub non_transactional: bool,
}

/// Something wrong between a chain and what its database has applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// An applied migration's `up.sql` changed since it ran.
    ChecksumMismatch {
        /// The applied migration's version.
        version: Version,
        /// The migration's folder name.
        name: String,
    },
    /// An applied migration has no folder any more.
    MissingFolder {
        /// The applied migration's version, as the database stores it.
        version: Version,
    },
    /// A pending migration is older than the newest applied one.
    OutOfOrder {
        /// The pending migration's version.
        version: Version,
        /// The pending migration's folder name.
        name: String,
        /// The version of the newest applied migration.
        newest_applied: Version,
    },
}

impl Problem {
    /// Whether `allow` accepts this problem.
    pub fn allowed_by(&self, allow: Allow) -> bool {
        match self {
            Problem::ChecksumMismatch { .. } => allow.edited,
            Problem::MissingFolder { .. } => allow.missing,
            Problem::OutOfOrder { .. } => allow.out_of_order,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ChecksumMismatch { name, .. } => write!(
                f,
                "applied migration {name} was edited after it ran (its up.sql checksum changed); \
                 restore the original file and put the change in a new migration \
                 (`upgrade --allow-edited` goes on regardless)"
            ),
            Problem::MissingFolder { version } => write!(
                f,
                "applied migration {version} has no folder any more; restore the folder, or \
                 downgrade it (its stored down SQL is used) \
                 (`upgrade --allow-missing` goes on regardless)"
            ),
            Problem::OutOfOrder {
                name,
                newest_applied,
                ..
            } => write!(
                f,
                "pending migration {name} is older than the newest applied migration \
                 {newest_applied} (another branch's work?); give it a newer version, or apply \
                 it anyway with `upgrade --allow-out-of-order`"
            ),
        }
    }
}

/// Why no plan can be made for a bind. Each names the bind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A revision target names no migration: none of the chain's (upgrade), or none of the
    /// applied ones nor any of the chain's (downgrade).
    #[error("bind `{bind}`: target `{target}` matches no {what} migration")]
    TargetNotFound {
        /// The bind being planned.
        bind: String,
        /// The revision as the user wrote it.
        target: String,
        /// Which migrations were searched, for the message: `of its` or `applied`.
        what: &'static str,
    },
    /// A revision target is a prefix of more than one migration's version or name.
    #[error("bind `{bind}`: target `{target}` is ambiguous; it matches {}", candidates.join(", "))]
    AmbiguousTarget {
        /// The bind being planned.
        bind: String,
        /// The revision as the user wrote it.
        target: String,
        /// The folder names of the migrations it matches.
        candidates: Vec<String>,
    },
    /// The target only makes sense the other way: `base` or `-N` for an upgrade, `head` or
    /// `+N` for a downgrade.
    #[error("bind `{bind}`: `{target}` is not a target for {direction}; {hint}")]
    WrongDirection {
        /// The bind being planned.
        bind: String,
        /// The target as shown on the command line.
        target: String,
        /// The command that was asked for: `upgrade` or `downgrade`.
        direction: &'static str,
        /// Which command to use instead.
        hint: &'static str,
    },
    /// `+N` asks for more migrations than are pending.
    #[error("bind `{bind}`: `+{requested}` asks for more migrations than are pending ({pending})")]
    BeyondHead {
        /// The bind being planned.
        bind: String,
        /// The N of `+N`.
        requested: usize,
        /// How many migrations are pending.
        pending: usize,
    },
    /// `-N` asks to revert more migrations than are applied.
    #[error(
        "bind `{bind}`: `-{requested}` goes below base; only {applied} migration(s) are applied"
    )]
    BelowBase {
        /// The bind being planned.
        bind: String,
        /// The N of `-N`.
        requested: usize,
        /// How many migrations are applied.
        applied: usize,
    },
    /// An upgrade's revision target is older than the newest applied migration and nothing
    /// pending is at or below it.
    #[error("bind `{bind}`: target {target} is already applied and the bind is further on, at {current}; use `orchestrate downgrade` to go back")]
    TargetBehind {
        /// The bind being planned.
        bind: String,
        /// The version the target resolved to.
        target: String,
        /// The version of the newest applied migration.
        current: String,
    },
    /// A downgrade's revision target names a migration of the chain that is not applied.
    #[error("bind `{bind}`: target {target} is not applied, so a downgrade cannot keep it; see `orchestrate history --bind {bind}`")]
    NotApplied {
        /// The bind being planned.
        bind: String,
        /// The revision as the user wrote it.
        target: String,
    },
    /// A migration to revert has no `down.sql` in its folder and none stored at apply time.
    #[error("bind `{bind}`: migration {name} cannot be reverted: it has no down.sql and none was stored when it was applied")]
    NoDownSql {
        /// The bind being planned.
        bind: String,
        /// The migration's folder name (or recorded name, or version).
        name: String,
    },
    /// A migration cannot run inside the batch's transaction, and the user did not allow it
    /// to run outside one.
    #[error("bind `{bind}`: migration {name} {reason}, so it cannot be part of an atomic batch; nothing was run. On a PostgreSQL bind, `upgrade --allow-non-atomic` runs it outside any transaction, as a segment of its own between atomic batches; otherwise run it by other means (and `orchestrate stamp` the bind), or change the migration")]
    NonTransactional {
        /// The bind being planned.
        bind: String,
        /// The migration's folder name.
        name: String,
        /// Why, worded to follow the migration's name, such as ``sets `run_in_transaction =
        /// false` in metadata.toml``.
        reason: String,
    },
    /// The statement check refused SQL the plan would run (the driver's `check_plan`): it
    /// would end or escape the batch's transaction.
    #[error("bind `{bind}`: migration {name}, {refusal}")]
    Refused {
        /// The bind being planned.
        bind: String,
        /// The migration's folder name.
        name: String,
        /// Which file, which statement, and why.
        refusal: Refusal,
    },
    /// The chain and the database disagree in ways the user did not allow (see [`Allow`]).
    #[error("bind `{bind}`: {}", problems.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Drift {
        /// The bind being planned.
        bind: String,
        /// Every problem not allowed, each reported.
        problems: Vec<Problem>,
    },
}

/// The newest applied version, if any.
pub fn current(applied: &[Applied]) -> Option<&Applied> {
    applied.iter().max_by(|a, b| a.version.cmp(&b.version))
}

/// The migrations of a chain that are not applied, in order.
pub fn pending<'c>(chain: &'c Chain, applied: &[Applied]) -> Vec<&'c MigrationFile> {
    let done: BTreeSet<&str> = applied.iter().map(|a| a.version.as_str()).collect();
    chain
        .migrations
        .iter()
        .filter(|m| !done.contains(m.version.as_str()))
        .collect()
}

/// Drift between a chain and what its database has applied.
pub fn problems(chain: &Chain, applied: &[Applied]) -> Vec<Problem> {
    let mut found = Vec::new();
    let mut sorted: Vec<&Applied> = applied.iter().collect();
    sorted.sort_by(|a, b| a.version.cmp(&b.version));
    for record in &sorted {
        match chain.find(&record.version) {
            None => found.push(Problem::MissingFolder {
                version: record.version.clone(),
            }),
            Some(file) => {
                if let Some(sum) = &record.checksum {
                    if sum != &file.checksum {
                        found.push(Problem::ChecksumMismatch {
                            version: record.version.clone(),
                            name: file.name.clone(),
                        });
                    }
                }
            }
        }
    }
    if let Some(newest) = current(applied) {
        for file in pending(chain, applied) {
            if file.version < newest.version {
                found.push(Problem::OutOfOrder {
                    version: file.version.clone(),
                    name: file.name.clone(),
                    newest_applied: newest.version.clone(),
                });
            }
        }
    }
    found
}

/// Finds the one candidate a revision spec names: an exact version or name first, then a
/// unique prefix of either.
fn resolve<'a>(
    spec: &str,
    candidates: impl Iterator<Item = (&'a Version, &'a str)> + Clone,
) -> Result<&'a Version, Vec<String>> {
    let exact: Vec<_> = candidates
        .clone()
        .filter(|(v, n)| v.as_str() == spec || *n == spec)
        .collect();
    if exact.len() == 1 {
        return Ok(exact[0].0);
    }
    let digits: String = spec.chars().filter(|c| *c != '-').collect();
    let by_prefix: Vec<_> = candidates
        .filter(|(v, n)| {
            n.starts_with(spec) || (!digits.is_empty() && v.as_str().starts_with(&digits))
        })
        .collect();
    match by_prefix.len() {
        1 => Ok(by_prefix[0].0),
        _ => Err(by_prefix.iter().map(|(_, n)| n.to_string()).collect()),
    }
}

/// What must run on `chain`'s bind to bring it from `applied` up to `target`.
pub fn plan_upgrade(
    chain: &Chain,
    applied: &[Applied],
    target: &Target,
    allow: Allow,
) -> Result<Plan, PlanError> {
    let bind = chain.bind.clone();
    let drift: Vec<Problem> = problems(chain, applied)
        .into_iter()
        .filter(|p| !p.allowed_by(allow))
        .collect();
    if !drift.is_empty() {
        return Err(PlanError::Drift {
            bind,
            problems: drift,
        });
    }
    let chosen = upgrade_chosen(chain, applied, target)?;
    let mut steps = Vec::with_capacity(chosen.len());
    for file in chosen {
        if let Some(reason) = file
            .transaction_blocker()
            .filter(|_| !allow.non_transactional)
        {
            return Err(PlanError::NonTransactional {
                bind,
                name: file.name.clone(),
                reason,
            });
        }
        steps.push(Step {
            version: file.version.clone(),
            name: file.name.clone(),
            sql: file.up_sql.clone(),
            checksum: Some(file.checksum.clone()),
            down_sql: file.down_sql.clone(),
            down_source: None,
            undo_sql: file.down_sql.clone(),
            data_only: file.data_only,
            in_transaction: file.run_in_transaction,
        });
    }
    Ok(Plan {
        bind,
        direction: Direction::Up,
        steps,
        from: Some(applied.iter().map(|a| a.version.clone()).collect()),
    })
}

/// The pending migrations an upgrade to `target` runs, oldest first.
fn upgrade_chosen<'c>(
    chain: &'c Chain,
    applied: &[Applied],
    target: &Target,
) -> Result<Vec<&'c MigrationFile>, PlanError> {
    let bind = chain.bind.clone();
    let pending = pending(chain, applied);
    let chosen = match target {
        Target::Head => pending,
        Target::Forward(n) => {
            if *n > pending.len() {
                return Err(PlanError::BeyondHead {
                    bind,
                    requested: *n,
                    pending: pending.len(),
                });
            }
            pending.into_iter().take(*n).collect()
        }
        Target::Revision(spec) => {
            let candidates = chain
                .migrations
                .iter()
                .map(|m| (&m.version, m.name.as_str()));
            let version = resolve(spec, candidates).map_err(|candidates| {
                if candidates.is_empty() {
                    PlanError::TargetNotFound {
                        bind: bind.clone(),
                        target: spec.clone(),
                        what: "of its",
                    }
                } else {
                    PlanError::AmbiguousTarget {
                        bind: bind.clone(),
                        target: spec.clone(),
                        candidates,
                    }
                }
            })?;
            let chosen: Vec<&MigrationFile> = pending
                .into_iter()
                .filter(|m| &m.version <= version)
                .collect();
            if let Some(newest) = current(applied) {
                if chosen.is_empty() && version < &newest.version {
                    return Err(PlanError::TargetBehind {
                        bind,
                        target: version.to_string(),
                        current: newest.version.to_string(),
                    });
                }
            }
            chosen
        }
        Target::Base | Target::Back(_) => {
            return Err(PlanError::WrongDirection {
                bind,
                target: target.to_string(),
                direction: "upgrade",
                hint: "use `orchestrate downgrade` to go back",
            })
        }
    };
    Ok(chosen)
}

/// What must run on `chain`'s bind to bring it from `applied` down to `target`, newest first.
/// Applied migrations whose folder is gone are reverted with the down SQL stored when they
/// were applied.
pub fn plan_downgrade(
    chain: &Chain,
    applied: &[Applied],
    target: &Target,
) -> Result<Plan, PlanError> {
    let bind = chain.bind.clone();
    let mut newest_first: Vec<&Applied> = applied.iter().collect();
    newest_first.sort_by(|a, b| b.version.cmp(&a.version));
    let name_of = |a: &Applied| -> String {
        chain
            .find(&a.version)
            .map(|f| f.name.clone())
            .or_else(|| a.name.clone())
            .unwrap_or_else(|| a.version.to_string())
    };
    let count = match target {
        Target::Base => newest_first.len(),
        Target::Back(n) => {
            if *n > newest_first.len() {
                return Err(PlanError::BelowBase {
                    bind,
                    requested: *n,
                    applied: newest_first.len(),
                });
            }
            *n
        }
        Target::Revision(spec) => {
            let names: Vec<(Version, String)> = newest_first
                .iter()
                .map(|a| (a.version.clone(), name_of(a)))
                .collect();
            let keep = resolve(spec, names.iter().map(|(v, n)| (v, n.as_str()))).map_err(
                |candidates| {
                    if candidates.is_empty() {
                        let in_chain = chain.migrations.iter().any(|m| {
                            m.version.as_str() == spec
                                || m.name == *spec
                                || m.name.starts_with(spec)
                        });
                        if in_chain {
                            PlanError::NotApplied {
                                bind: bind.clone(),
                                target: spec.clone(),
                            }
                        } else {
                            PlanError::TargetNotFound {
                                bind: bind.clone(),
                                target: spec.clone(),
                                what: "applied",
                            }
                        }
                    } else {
                        PlanError::AmbiguousTarget {
                            bind: bind.clone(),
                            target: spec.clone(),
                            candidates,
                        }
                    }
                },
            )?;
            newest_first.iter().filter(|a| &a.version > keep).count()
        }
        Target::Head | Target::Forward(_) => {
            return Err(PlanError::WrongDirection {
                bind,
                target: target.to_string(),
                direction: "downgrade",
                hint: "use `orchestrate upgrade` to go forward",
            })
        }
    };
    let steps = newest_first
        .into_iter()
        .take(count)
        .map(|record| downgrade_step(chain, record, name_of(record)))
        .collect::<Result<Vec<Step>, PlanError>>()?;
    Ok(Plan {
        bind,
        direction: Direction::Down,
        steps,
        from: Some(applied.iter().map(|a| a.version.clone()).collect()),
    })
}

/// The step that reverts one applied migration: the folder's down.sql, else the copy stored
/// when it was applied.
fn downgrade_step(chain: &Chain, record: &Applied, name: String) -> Result<Step, PlanError> {
    let bind = chain.bind.clone();
    let file = chain.find(&record.version);
    if let Some(file) = file {
        if !file.run_in_transaction {
            return Err(PlanError::NonTransactional {
                bind,
                name,
                reason: "sets `run_in_transaction = false` in metadata.toml".into(),
            });
        }
    }
    let file_down = file.and_then(|f| f.down_sql.clone());
    let (sql, source) = match (file_down, &record.down_sql) {
        (Some(f), Some(stored)) if &f != stored => (f, DownSqlSource::FileDiffersFromStored),
        (Some(f), _) => (f, DownSqlSource::File),
        (None, Some(stored)) => (stored.clone(), DownSqlSource::Stored),
        (None, None) => return Err(PlanError::NoDownSql { bind, name }),
    };
    Ok(Step {
        version: record.version.clone(),
        name,
        sql,
        checksum: record.checksum.clone(),
        down_sql: None,
        down_source: Some(source),
        undo_sql: file.map(|f| f.up_sql.clone()),
        data_only: file.is_some_and(|f| f.data_only),
        in_transaction: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::{checksum, MigrationSource};

    fn up(chain: &Chain, applied: &[Applied], target: &Target) -> Result<Plan, PlanError> {
        plan_upgrade(chain, applied, target, Allow::default())
    }

    fn chain(folders: &[&str]) -> Chain {
        Chain::new(
            "app",
            folders
                .iter()
                .map(|f| MigrationSource {
                    folder: f.to_string(),
                    location: format!("migrations/app/{f}"),
                    up_sql: Some(format!("-- {f}\nselect 1;")),
                    down_sql: Some(format!("-- undo {f}\nselect 0;")),
                    run_in_transaction: true,
                    data_only: false,
                })
                .collect(),
        )
        .unwrap()
    }

    fn applied_from(chain: &Chain, n: usize) -> Vec<Applied> {
        chain.migrations[..n]
            .iter()
            .map(|m| Applied {
                version: m.version.clone(),
                name: Some(m.name.clone()),
                checksum: Some(m.checksum.clone()),
                down_sql: m.down_sql.clone(),
            })
            .collect()
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.steps.iter().map(|s| s.name.as_str()).collect()
    }

    fn four() -> Chain {
        chain(&["1_one", "2_two", "3_three", "10_ten"])
    }

    #[test]
    fn upgrade_to_head_plus_n_and_revision() {
        let c = four();
        let p = up(&c, &[], &Target::Head).unwrap();
        assert_eq!(names(&p), ["1_one", "2_two", "3_three", "10_ten"]);
        let p = up(&c, &applied_from(&c, 1), &Target::Forward(2)).unwrap();
        assert_eq!(names(&p), ["2_two", "3_three"]);
        let p = up(&c, &applied_from(&c, 1), &"3".parse().unwrap()).unwrap();
        assert_eq!(names(&p), ["2_two", "3_three"]);
        let p = up(&c, &[], &"2_two".parse().unwrap()).unwrap();
        assert_eq!(names(&p), ["1_one", "2_two"]);
        let p = up(&c, &[], &"3_th".parse().unwrap()).unwrap();
        assert_eq!(names(&p), ["1_one", "2_two", "3_three"]);
        let p = up(&c, &applied_from(&c, 4), &Target::Head).unwrap();
        assert!(p.steps.is_empty());
        let p = up(&c, &applied_from(&c, 2), &"2".parse().unwrap()).unwrap();
        assert!(p.steps.is_empty());
    }

    #[test]
    fn upgrade_errors() {
        let c = four();
        assert!(matches!(
            up(&c, &applied_from(&c, 3), &Target::Forward(2)),
            Err(PlanError::BeyondHead {
                requested: 2,
                pending: 1,
                ..
            })
        ));
        assert!(matches!(
            up(&c, &[], &"77".parse().unwrap()),
            Err(PlanError::TargetNotFound { .. })
        ));
        // `1` is the version of 1_one exactly, so it is not ambiguous with 10_ten.
        assert_eq!(
            names(&up(&c, &[], &"1".parse().unwrap()).unwrap()),
            ["1_one"]
        );
        let c2 = chain(&["11_a", "12_b"]);
        assert!(matches!(
            up(&c2, &[], &"1".parse().unwrap()),
            Err(PlanError::AmbiguousTarget { .. })
        ));
        assert!(matches!(
            up(&c, &applied_from(&c, 3), &"1".parse().unwrap()),
            Err(PlanError::TargetBehind { .. })
        ));
        assert!(matches!(
            up(&c, &[], &Target::Base),
            Err(PlanError::WrongDirection { .. })
        ));
        assert!(matches!(
            up(&c, &[], &Target::Back(1)),
            Err(PlanError::WrongDirection { .. })
        ));
    }

    #[test]
    fn upgrade_refuses_drift() {
        let c = four();
        // Edited after it ran.
        let mut applied = applied_from(&c, 2);
        applied[0].checksum = Some(checksum("something else"));
        let err = up(&c, &applied, &Target::Head).unwrap_err();
        assert!(matches!(&err, PlanError::Drift { problems, .. }
            if matches!(problems[..], [Problem::ChecksumMismatch { .. }])));
        // Folder deleted.
        let mut applied = applied_from(&c, 2);
        applied.push(Applied::bare("5"));
        let err = up(&c, &applied, &Target::Head).unwrap_err();
        assert!(matches!(&err, PlanError::Drift { problems, .. }
            if problems.iter().any(|p| matches!(p, Problem::MissingFolder { .. }))));
        // Out of order: 10 applied, 2 and 3 pending.
        let mut applied = applied_from(&c, 1);
        applied.push(Applied::bare("10"));
        let found = problems(&c, &applied);
        assert_eq!(
            found
                .iter()
                .filter(|p| matches!(p, Problem::OutOfOrder { .. }))
                .count(),
            2
        );
        // Allowed drift: the out-of-order migrations are applied, in version order.
        let mut applied = applied_from(&c, 1);
        applied.push(Applied::bare("10"));
        assert!(up(&c, &applied, &Target::Head).is_err());
        let allow = Allow {
            out_of_order: true,
            ..Allow::default()
        };
        let p = plan_upgrade(&c, &applied, &Target::Head, allow).unwrap();
        assert_eq!(names(&p), ["2_two", "3_three"]);
        let p = plan_upgrade(&c, &applied, &"2".parse().unwrap(), allow).unwrap();
        assert_eq!(names(&p), ["2_two"]);
        let mut applied = applied_from(&c, 2);
        applied[0].checksum = Some(checksum("edited"));
        let allow = Allow {
            edited: true,
            ..Allow::default()
        };
        assert_eq!(
            names(&plan_upgrade(&c, &applied, &Target::Head, allow).unwrap()),
            ["3_three", "10_ten"]
        );
        // Records without checksums (applied by diesel_cli) are not drift.
        let applied = vec![Applied::bare("1")];
        assert_eq!(
            names(&up(&c, &applied, &Target::Forward(1)).unwrap()),
            ["2_two"]
        );
    }

    #[test]
    fn upgrade_refuses_non_transactional() {
        let mut c = four();
        c.migrations[1].run_in_transaction = false;
        assert!(matches!(
            up(&c, &[], &Target::Head),
            Err(PlanError::NonTransactional { .. })
        ));
        assert_eq!(names(&up(&c, &[], &Target::Forward(1)).unwrap()), ["1_one"]);
    }

    #[test]
    fn downgrade_keeps_the_named_revision() {
        let c = four();
        let applied = applied_from(&c, 4);
        let p = plan_downgrade(&c, &applied, &"2".parse().unwrap()).unwrap();
        assert_eq!(names(&p), ["10_ten", "3_three"]);
        assert_eq!(p.direction, Direction::Down);
        assert_eq!(p.steps[0].sql, "-- undo 10_ten\nselect 0;");
        let p = plan_downgrade(&c, &applied, &Target::Back(1)).unwrap();
        assert_eq!(names(&p), ["10_ten"]);
        let p = plan_downgrade(&c, &applied, &Target::Base).unwrap();
        assert_eq!(names(&p), ["10_ten", "3_three", "2_two", "1_one"]);
        let p = plan_downgrade(&c, &applied, &"10".parse().unwrap()).unwrap();
        assert!(p.steps.is_empty());
    }

    #[test]
    fn downgrade_errors() {
        let c = four();
        let applied = applied_from(&c, 2);
        assert!(matches!(
            plan_downgrade(&c, &applied, &Target::Back(3)),
            Err(PlanError::BelowBase {
                requested: 3,
                applied: 2,
                ..
            })
        ));
        assert!(matches!(
            plan_downgrade(&c, &applied, &"3".parse().unwrap()),
            Err(PlanError::NotApplied { .. })
        ));
        assert!(matches!(
            plan_downgrade(&c, &applied, &"99".parse().unwrap()),
            Err(PlanError::TargetNotFound { .. })
        ));
        assert!(matches!(
            plan_downgrade(&c, &applied, &Target::Head),
            Err(PlanError::WrongDirection { .. })
        ));
        let mut c2 = four();
        c2.migrations[1].down_sql = None;
        let mut applied = applied_from(&c2, 2);
        applied[1].down_sql = None;
        assert!(matches!(
            plan_downgrade(&c2, &applied, &Target::Back(1)),
            Err(PlanError::NoDownSql { .. })
        ));
    }

    #[test]
    fn downgrade_uses_stored_sql_when_the_folder_is_gone() {
        let c = four();
        let mut applied = applied_from(&c, 2);
        applied.push(Applied {
            version: Version::from_stored("7"),
            name: Some("7_gone".into()),
            checksum: Some(checksum("create table gone();")),
            down_sql: Some("drop table gone;".into()),
        });
        let p = plan_downgrade(&c, &applied, &Target::Back(1)).unwrap();
        assert_eq!(names(&p), ["7_gone"]);
        assert_eq!(p.steps[0].sql, "drop table gone;");
        assert_eq!(p.steps[0].down_source, Some(DownSqlSource::Stored));
        // And the file wins, visibly, when it differs from the stored copy.
        let mut applied = applied_from(&c, 2);
        applied[1].down_sql = Some("select 'old';".into());
        let p = plan_downgrade(&c, &applied, &Target::Back(1)).unwrap();
        assert_eq!(
            p.steps[0].down_source,
            Some(DownSqlSource::FileDiffersFromStored)
        );
    }
}
