use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use orchestrate_core::{Chain, ChainError, MigrationSource};

/// Why a bind's migrations folder cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The bind's migrations folder does not exist (or is not a folder).
    #[error("bind `{bind}`: the migrations folder {} does not exist; create it or set `migrations` for this bind in the config", path.display())]
    DirMissing {
        /// The bind whose migrations were being read.
        bind: String,
        /// The migrations folder.
        path: PathBuf,
    },
    /// A folder or file could not be read.
    #[error("bind `{bind}`: cannot read {}: {source}", path.display())]
    Io {
        /// The bind whose migrations were being read.
        bind: String,
        /// The folder or file that could not be read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A migration's `metadata.toml` is not valid TOML or has a key this tool does not know.
    #[error("bind `{bind}`: {}: {message}", path.display())]
    BadMetadata {
        /// The bind whose migrations were being read.
        bind: String,
        /// The `metadata.toml` file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// The migrations were read but do not form a valid chain.
    #[error("bind `{bind}`: {source}")]
    Chain {
        /// The bind whose migrations were being read.
        bind: String,
        /// Why the migrations are not a valid chain.
        #[source]
        source: ChainError,
    },
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    run_in_transaction: Option<bool>,
    /// This tool's own key: the migration changes data only (MySQL: may run inside XA).
    data_only: Option<bool>,
}

/// Reads `dir/<version>_<name>/{up.sql,down.sql,metadata.toml}` into a validated chain.
/// Plain files and hidden entries in `dir` are ignored, as diesel does; every folder is a
/// migration and must be a valid one.
pub fn read_chain(bind: &str, dir: &Path) -> Result<Chain, SourceError> {
    let io_err = |path: &Path| {
        let bind = bind.to_string();
        let path = path.to_path_buf();
        move |source| SourceError::Io { bind, path, source }
    };
    if !dir.is_dir() {
        return Err(SourceError::DirMissing {
            bind: bind.into(),
            path: dir.to_path_buf(),
        });
    }
    let mut sources = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        let folder = entry.file_name().to_string_lossy().into_owned();
        if folder.starts_with('.') || !path.is_dir() {
            continue;
        }
        let read_optional = |name: &str| -> Result<Option<String>, SourceError> {
            let file = path.join(name);
            match fs::read_to_string(&file) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(&file)(e)),
            }
        };
        let up_sql = read_optional("up.sql")?;
        let down_sql = read_optional("down.sql")?;
        // diesel reads a metadata.toml without the key as `run_in_transaction = false`; here
        // an absent key means the default, true, and unknown keys are errors.
        let (run_in_transaction, data_only) = match read_optional("metadata.toml")? {
            None => (true, false),
            Some(text) => {
                let meta: Metadata =
                    toml::from_str(&text).map_err(|e| SourceError::BadMetadata {
                        bind: bind.into(),
                        path: path.join("metadata.toml"),
                        message: e.message().to_string(),
                    })?;
                (
                    meta.run_in_transaction.unwrap_or(true),
                    meta.data_only.unwrap_or(false),
                )
            }
        };
        sources.push(MigrationSource {
            folder,
            location: path.display().to_string(),
            up_sql,
            down_sql,
            run_in_transaction,
            data_only,
        });
    }
    Chain::new(bind, sources).map_err(|source| SourceError::Chain {
        bind: bind.into(),
        source,
    })
}

/// A bind's migrations compiled into the application with diesel's `embed_migrations!`: the
/// same folders, read at build time, as text. Read once into what [`read_chain`] reads from a
/// folder, so a chain from either gives the same plan, checksums and stored down SQL.
///
/// diesel keeps an embedded migration's SQL to itself and runs it on a connection; it is read
/// here by running each migration (`up`, then `down`) on a connection that only records the
/// SQL it is given. `metadata.toml`'s `run_in_transaction` comes through diesel; this tool's own
/// key `data_only` does not survive `embed_migrations!`, so embedded migrations are never
/// `data_only`.
#[derive(Clone, Debug)]
pub struct Embedded {
    label: String,
    sources: std::sync::Arc<Vec<MigrationSource>>,
}

impl Embedded {
    /// Reads `migrations` (from `embed_migrations!`); `label` names them in messages (such as
    /// the folder they were embedded from).
    pub fn new(label: &str, migrations: &diesel_migrations::EmbeddedMigrations) -> Embedded {
        use diesel::sqlite::Sqlite;
        let list = diesel::migration::MigrationSource::<Sqlite>::migrations(migrations)
            .expect("embedded migrations are in memory");
        let mut sources = Vec::new();
        for m in list {
            let folder = m.name().to_string();
            let mut up = Recorder::default();
            let up_sql = m.run(&mut up).ok().map(|()| up.sql);
            let mut down = Recorder::default();
            let down_sql = m.revert(&mut down).ok().map(|()| down.sql);
            let run_in_transaction =
                diesel::migration::MigrationMetadata::run_in_transaction(m.metadata());
            sources.push(MigrationSource {
                location: format!("{label} (embedded)/{folder}"),
                folder,
                up_sql,
                down_sql,
                run_in_transaction,
                data_only: false,
            });
        }
        Embedded {
            label: label.into(),
            sources: std::sync::Arc::new(sources),
        }
    }

    /// What the migrations are called in messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The validated chain, as [`read_chain`] gives it for a folder.
    pub fn chain(&self, bind: &str) -> Result<Chain, SourceError> {
        Chain::new(bind, self.sources.as_ref().clone()).map_err(|source| SourceError::Chain {
            bind: bind.into(),
            source,
        })
    }
}

/// A connection that runs nothing and keeps the SQL it is given: how an embedded migration's
/// text is read (see [`Embedded`]).
#[derive(Default)]
struct Recorder {
    sql: String,
}

impl diesel::connection::SimpleConnection for Recorder {
    fn batch_execute(&mut self, query: &str) -> diesel::QueryResult<()> {
        self.sql.push_str(query);
        Ok(())
    }
}

impl diesel::connection::BoxableConnection<diesel::sqlite::Sqlite> for Recorder {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMBEDDED: diesel_migrations::EmbeddedMigrations =
        diesel_migrations::embed_migrations!("tests/fixtures/embedded");

    /// The same folders, read from disk or compiled in, are the same chain: versions, names,
    /// SQL, checksums, stored down SQL (none where there is no down.sql) and
    /// `run_in_transaction`.
    #[test]
    fn embedded_migrations_read_as_the_folder_does() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embedded");
        let from_folder = read_chain("app", &dir).unwrap();
        let embedded = Embedded::new("tests/fixtures/embedded", &EMBEDDED);
        let from_binary = embedded.chain("app").unwrap();
        assert_eq!(from_binary, from_folder);
        assert_eq!(from_binary.migrations.len(), 3);
        assert_eq!(from_binary.migrations[1].down_sql, None);
        assert!(!from_binary.migrations[2].run_in_transaction);
        assert!(from_binary.migrations[0].run_in_transaction);
        assert_eq!(embedded.label(), "tests/fixtures/embedded");
    }

    fn write(dir: &Path, folder: &str, file: &str, text: &str) {
        fs::create_dir_all(dir.join(folder)).unwrap();
        fs::write(dir.join(folder).join(file), text).unwrap();
    }

    #[test]
    fn reads_a_diesel_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        write(
            d,
            "00000000000000_diesel_initial_setup",
            "up.sql",
            "select 1;",
        );
        write(
            d,
            "2024-01-02-000000_b",
            "up.sql",
            "create table b(id int);",
        );
        write(d, "2024-01-02-000000_b", "down.sql", "drop table b;");
        write(
            d,
            "2024-01-01-000000_a",
            "up.sql",
            "create table a(id int);",
        );
        write(
            d,
            "2024-01-01-000000_a",
            "metadata.toml",
            "run_in_transaction = false\n",
        );
        fs::write(d.join("README.md"), "not a migration").unwrap();
        fs::create_dir_all(d.join(".hidden")).unwrap();
        let chain = read_chain("app", d).unwrap();
        let names: Vec<_> = chain.migrations.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "00000000000000_diesel_initial_setup",
                "2024-01-01-000000_a",
                "2024-01-02-000000_b"
            ]
        );
        assert!(!chain.migrations[1].run_in_transaction);
        assert_eq!(
            chain.migrations[2].down_sql.as_deref(),
            Some("drop table b;")
        );
    }

    #[test]
    fn metadata_without_the_key_means_in_transaction() {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "1_a", "up.sql", "select 1;");
        write(tmp.path(), "1_a", "metadata.toml", "# nothing\n");
        assert!(read_chain("app", tmp.path()).unwrap().migrations[0].run_in_transaction);
        write(
            tmp.path(),
            "1_a",
            "metadata.toml",
            "run_in_transaction = 'no'\n",
        );
        assert!(matches!(
            read_chain("app", tmp.path()),
            Err(SourceError::BadMetadata { .. })
        ));
        write(tmp.path(), "1_a", "metadata.toml", "typo = true\n");
        assert!(matches!(
            read_chain("app", tmp.path()),
            Err(SourceError::BadMetadata { .. })
        ));
    }

    #[test]
    fn errors_name_the_folder() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_chain("app", &tmp.path().join("nope")),
            Err(SourceError::DirMissing { .. })
        ));
        fs::create_dir_all(tmp.path().join("1_a")).unwrap();
        let err = read_chain("app", tmp.path()).unwrap_err().to_string();
        assert!(err.contains("1_a") && err.contains("no up.sql"), "{err}");
    }
}
