use sha2::{Digest, Sha256};

use crate::version::{Version, VersionError};

/// One migration folder as found on disk, before validation. The driver fills it in; the
/// chain decides whether it is acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationSource {
    /// The folder's name, such as `2024-01-01-000000_create_users`.
    pub folder: String,
    /// Where the folder is, for messages only.
    pub location: String,
    /// The contents of `up.sql`, or `None` when there is no such file.
    pub up_sql: Option<String>,
    /// The contents of `down.sql`, or `None` when there is no such file.
    pub down_sql: Option<String>,
    /// From `metadata.toml`; `true` when the file or the key is absent.
    pub run_in_transaction: bool,
    /// From `metadata.toml` (`data_only = true`): the migration changes data, not schema, so
    /// on MySQL it may run inside an XA transaction and be atomic. `false` when absent.
    pub data_only: bool,
}

/// A validated migration of a chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationFile {
    /// The version parsed from the folder name, the part before the first `_`.
    pub version: Version,
    /// The full folder name, such as `2024-01-01-000000_create_users`.
    pub name: String,
    /// The contents of `up.sql`, which contains some SQL besides whitespace and comments.
    pub up_sql: String,
    /// The contents of `down.sql`; `None` when the file is absent or has only whitespace and
    /// comments, so the migration cannot be reverted.
    pub down_sql: Option<String>,
    /// See [`MigrationSource::run_in_transaction`]: `false` when `metadata.toml` says
    /// `run_in_transaction = false`.
    pub run_in_transaction: bool,
    /// See [`MigrationSource::data_only`].
    pub data_only: bool,
    /// [`checksum`] of `up_sql`.
    pub checksum: String,
}

/// One bind's migrations, ordered by version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// The name of the bind these migrations belong to.
    pub bind: String,
    /// The migrations, in ascending version order, no two with numerically equal versions.
    pub migrations: Vec<MigrationFile>,
}

/// Why a set of migration folders is not a valid chain.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A folder's name has no `_` between the version and the description.
    #[error("migration folder `{location}`: the name must be `<version>_<description>`, such as `2024-01-01-000000_create_users`")]
    NoSeparator {
        /// Where the folder is.
        location: String,
    },
    /// The part of a folder's name before the first `_` is not a valid [`Version`].
    #[error("migration folder `{location}`: {source}")]
    BadVersion {
        /// Where the folder is.
        location: String,
        /// Why the text is not a version.
        #[source]
        source: VersionError,
    },
    /// A folder has no `up.sql` file.
    #[error("migration folder `{location}` has no up.sql; every migration needs one (down.sql is optional)")]
    MissingUp {
        /// Where the folder is.
        location: String,
    },
    /// A folder's `up.sql` has nothing but whitespace and comments.
    #[error(
        "migration `{location}/up.sql` is empty; write the migration's SQL or remove the folder"
    )]
    EmptyUp {
        /// Where the folder is.
        location: String,
    },
    /// Two folders have numerically equal versions (such as `01` and `1`).
    #[error("migration folders `{first}` and `{second}` have the same version {version}; give one of them a new version (diesel would silently ignore one of them)")]
    DuplicateVersion {
        /// The second folder's version, dashes removed.
        version: String,
        /// The name of the folder that sorts first.
        first: String,
        /// The name of the folder that sorts second.
        second: String,
    },
    /// More than one folder is wrong: every one is reported, not only the first.
    #[error("{} migration folders are invalid: {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Several(Vec<ChainError>),
}

/// The checksum of a migration's SQL, pinned: SHA-256, lowercase hex, of the text after
/// removing a leading byte-order mark and turning every CRLF into LF. Stored with each applied
/// migration; changing this function would make every applied migration look edited.
pub fn checksum(sql: &str) -> String {
    let text = sql.strip_prefix('\u{feff}').unwrap_or(sql);
    let normalised = text.replace("\r\n", "\n");
    let digest = Sha256::digest(normalised.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl MigrationFile {
    /// One folder, checked: its name, its version, a non-empty up.sql.
    fn from_source(source: MigrationSource) -> Result<MigrationFile, ChainError> {
        let Some((version_text, _description)) = source.folder.split_once('_') else {
            return Err(ChainError::NoSeparator {
                location: source.location,
            });
        };
        let version =
            Version::parse(version_text).map_err(|source_err| ChainError::BadVersion {
                location: source.location.clone(),
                source: source_err,
            })?;
        let Some(up_sql) = source.up_sql else {
            return Err(ChainError::MissingUp {
                location: source.location,
            });
        };
        if is_blank_sql(&up_sql) {
            return Err(ChainError::EmptyUp {
                location: source.location,
            });
        }
        Ok(MigrationFile {
            checksum: checksum(&up_sql),
            version,
            name: source.folder,
            up_sql,
            down_sql: source.down_sql.filter(|sql| !is_blank_sql(sql)),
            run_in_transaction: source.run_in_transaction,
            data_only: source.data_only,
        })
    }
}

impl Chain {
    /// Validates the folders of one bind and orders them by version.
    pub fn new(bind: &str, sources: Vec<MigrationSource>) -> Result<Chain, ChainError> {
        let mut migrations = Vec::with_capacity(sources.len());
        let mut errors = Vec::new();
        for source in sources {
            match MigrationFile::from_source(source) {
                Ok(m) => migrations.push(m),
                Err(e) => errors.push(e),
            }
        }
        match errors.len() {
            0 => {}
            1 => return Err(errors.remove(0)),
            _ => return Err(ChainError::Several(errors)),
        }
        migrations.sort_by(|a, b| a.version.cmp(&b.version).then(a.name.cmp(&b.name)));
        for pair in migrations.windows(2) {
            if pair[0].version.numerically_equal(&pair[1].version) {
                return Err(ChainError::DuplicateVersion {
                    version: pair[1].version.to_string(),
                    first: pair[0].name.clone(),
                    second: pair[1].name.clone(),
                });
            }
        }
        Ok(Chain {
            bind: bind.to_string(),
            migrations,
        })
    }

    /// The migration with the highest version, or `None` when the chain is empty.
    pub fn head(&self) -> Option<&MigrationFile> {
        self.migrations.last()
    }

    /// The migration whose version is exactly `version` (same text, so `01` does not find
    /// `1`), if any.
    pub fn find(&self, version: &Version) -> Option<&MigrationFile> {
        self.migrations.iter().find(|m| &m.version == version)
    }
}

/// Whether SQL has nothing in it but whitespace and comments.
fn is_blank_sql(sql: &str) -> bool {
    let mut rest = sql.trim_start_matches('\u{feff}');
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            return true;
        }
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map(|(_, r)| r).unwrap_or("");
        } else if let Some(after) = rest.strip_prefix("/*") {
            match after.split_once("*/") {
                Some((_, r)) => rest = r,
                None => return false,
            }
        } else {
            return false;
        }
    }
}

impl MigrationFile {
    /// Why this migration cannot be part of an atomic batch as its metadata says, if it
    /// cannot. Its statements are checked by the driver (see [`crate::escaping_statement`]).
    pub fn transaction_blocker(&self) -> Option<String> {
        if !self.run_in_transaction {
            return Some("sets `run_in_transaction = false` in metadata.toml".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn src(folder: &str, up: Option<&str>) -> MigrationSource {
        MigrationSource {
            folder: folder.into(),
            location: format!("migrations/app/{folder}"),
            up_sql: up.map(String::from),
            down_sql: Some("DROP TABLE t;".into()),
            run_in_transaction: true,
            data_only: false,
        }
    }

    #[test]
    fn orders_numerically() {
        let chain = Chain::new(
            "app",
            vec![
                src("10_ten", Some("select 10;")),
                src("9_nine", Some("select 9;")),
                src("100_hundred", Some("select 100;")),
            ],
        )
        .unwrap();
        let names: Vec<_> = chain.migrations.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["9_nine", "10_ten", "100_hundred"]);
        assert_eq!(chain.head().unwrap().name, "100_hundred");
    }

    #[test]
    fn every_invalid_folder_is_reported() {
        let err = Chain::new(
            "app",
            vec![
                src("1_a", Some("-- later")),
                src("2_b", Some("select 1;")),
                src("3_c", Some("")),
                src("4_d", None),
            ],
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, ChainError::Several(e) if e.len() == 3),
            "{err:?}"
        );
        for folder in ["1_a", "3_c", "4_d"] {
            assert!(text.contains(folder), "{folder}: {text}");
        }
    }

    #[test]
    fn rejects_duplicates_missing_and_empty() {
        let dup = Chain::new(
            "app",
            vec![
                src("1_a", Some("select 1;")),
                src("01_b", Some("select 1;")),
            ],
        );
        assert!(
            matches!(dup, Err(ChainError::DuplicateVersion { .. })),
            "{dup:?}"
        );
        let same = Chain::new(
            "app",
            vec![
                src("2024-01-01_a", Some("select 1;")),
                src("20240101_b", Some("select 1;")),
            ],
        );
        assert!(matches!(same, Err(ChainError::DuplicateVersion { .. })));
        assert!(matches!(
            Chain::new("app", vec![src("1_a", None)]),
            Err(ChainError::MissingUp { .. })
        ));
        assert!(matches!(
            Chain::new(
                "app",
                vec![src("1_a", Some("  \n-- nothing yet\n/* no */\n"))]
            ),
            Err(ChainError::EmptyUp { .. })
        ));
        assert!(matches!(
            Chain::new("app", vec![src("first", Some("select 1;"))]),
            Err(ChainError::NoSeparator { .. })
        ));
        assert!(matches!(
            Chain::new("app", vec![src("v1_first", Some("select 1;"))]),
            Err(ChainError::BadVersion { .. })
        ));
    }

    #[test]
    fn blank_down_sql_counts_as_absent() {
        let mut s = src("1_a", Some("select 1;"));
        s.down_sql = Some("-- irreversible\n".into());
        let chain = Chain::new("app", vec![s]).unwrap();
        assert_eq!(chain.migrations[0].down_sql, None);
    }

    #[test]
    fn checksum_is_pinned_and_normalised() {
        // Pinned values (sha256sum of the same bytes): changing them breaks every database
        // that recorded checksums.
        assert_eq!(
            checksum("CREATE TABLE t (id int);\n"),
            "12c83f983b0c94b9c7010dcc92149589d5fb01a3d32af8f6d699545d95db9040"
        );
        assert_eq!(
            checksum("select 1;\n"),
            "4a45092ccf992ea92250053a80b931b787924ba61648f420555511b84f10ab6c"
        );
        assert_eq!(checksum("select 1;\r\n"), checksum("select 1;\n"));
        assert_eq!(checksum("\u{feff}select 1;\n"), checksum("select 1;\n"));
        assert_ne!(checksum("select 1;\n"), checksum("select 2;\n"));
    }
}
