use std::fmt;
use std::path::PathBuf;

use crate::error::DriverError;

/// The kinds of database a bind can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
    Mysql,
}

/// What a backend can do, read by the coordinator rather than assumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// DDL runs inside a transaction and rolls back with it.
    pub transactional_ddl: bool,
    /// The backend can `PREPARE TRANSACTION` (two-phase commit).
    pub two_phase: bool,
}

impl Backend {
    pub fn capabilities(self) -> Capabilities {
        match self {
            Backend::Postgres => Capabilities {
                transactional_ddl: true,
                two_phase: true,
            },
            Backend::Sqlite => Capabilities {
                transactional_ddl: true,
                two_phase: false,
            },
            // MySQL and MariaDB commit every DDL statement on the spot, and refuse DDL inside
            // XA transactions.
            Backend::Mysql => Capabilities {
                transactional_ddl: false,
                two_phase: false,
            },
        }
    }

    /// Whether this backend's batches can be rolled back as a whole before the decision.
    pub fn is_atomic(self) -> bool {
        self.capabilities().transactional_ddl
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
            Backend::Mysql => "mysql",
        })
    }
}

/// A bind's database: its backend, the URL to connect with (which may hold a password and is
/// never printed) and a redacted form for messages.
#[derive(Clone)]
pub struct Endpoint {
    pub bind: String,
    pub backend: Backend,
    url: String,
    redacted: String,
    sqlite_path: Option<PathBuf>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("bind", &self.bind)
            .field("backend", &self.backend)
            .field("url", &self.redacted)
            .finish()
    }
}

impl Endpoint {
    /// Parses `postgres://...` / `postgresql://...` or `sqlite://PATH` (a relative PATH is
    /// relative to the working directory; `sqlite:///abs/path.db` is absolute). Any other
    /// scheme is an error: a URL is never guessed to be some default backend.
    pub fn parse(bind: &str, url: &str) -> Result<Endpoint, DriverError> {
        let url = url.trim();
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("mysql") => {
                let parsed = url::Url::parse(url).map_err(|e| DriverError::BadUrl {
                    bind: bind.into(),
                    reason: format!("not a valid MySQL URL: {e}"),
                })?;
                if parsed.path().trim_matches('/').is_empty() {
                    return Err(DriverError::BadUrl {
                        bind: bind.into(),
                        reason: "a MySQL URL must name its database: mysql://USER:PASSWORD@HOST:3306/DB".into(),
                    });
                }
                let mut shown = parsed.clone();
                if shown.password().is_some() {
                    let _ = shown.set_password(Some("***"));
                }
                Ok(Endpoint {
                    bind: bind.into(),
                    backend: Backend::Mysql,
                    url: parsed.into(),
                    redacted: shown.into(),
                    sqlite_path: None,
                })
            }
            Some("postgres") | Some("postgresql") => {
                let parsed = url::Url::parse(url).map_err(|e| DriverError::BadUrl {
                    bind: bind.into(),
                    reason: format!("not a valid PostgreSQL URL: {e}"),
                })?;
                let mut shown = parsed.clone();
                if shown.password().is_some() {
                    let _ = shown.set_password(Some("***"));
                }
                let query: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" { "***".into() } else { v.into_owned() };
                        (k.into_owned(), v)
                    })
                    .collect();
                if !query.is_empty() {
                    shown.query_pairs_mut().clear().extend_pairs(query);
                }
                // A bounded wait for unreachable servers, unless the user chose one.
                let mut connect = parsed.clone();
                if !parsed.query_pairs().any(|(k, _)| k == "connect_timeout") {
                    connect
                        .query_pairs_mut()
                        .append_pair("connect_timeout", "10");
                }
                Ok(Endpoint {
                    bind: bind.into(),
                    backend: Backend::Postgres,
                    url: connect.into(),
                    redacted: shown.into(),
                    sqlite_path: None,
                })
            }
            Some("sqlite") => {
                let path = &url["sqlite://".len()..];
                if path.is_empty() {
                    return Err(DriverError::BadUrl {
                        bind: bind.into(),
                        reason: "`sqlite://` needs a file path, such as sqlite://var/app.sqlite3"
                            .into(),
                    });
                }
                Ok(Endpoint {
                    bind: bind.into(),
                    backend: Backend::Sqlite,
                    url: path.into(),
                    redacted: url.into(),
                    sqlite_path: Some(PathBuf::from(path)),
                })
            }
            Some(other) => Err(DriverError::BadUrl {
                bind: bind.into(),
                reason: format!(
                    "the scheme `{other}://` is not supported; use postgres://USER@HOST/DB, mysql://USER@HOST/DB or sqlite://PATH"
                ),
            }),
            None => Err(DriverError::BadUrl {
                bind: bind.into(),
                reason: "the URL has no scheme; use postgres://USER@HOST/DB, mysql://USER@HOST/DB or sqlite://PATH"
                    .into(),
            }),
        }
    }

    /// The server a PostgreSQL bind lives on (`host:port`), to count the prepared transactions
    /// a batch needs there. `None` for SQLite.
    pub fn server(&self) -> Option<String> {
        if self.backend != Backend::Postgres {
            return None;
        }
        let url = url::Url::parse(&self.url).ok()?;
        Some(format!(
            "{}:{}",
            url.host_str().unwrap_or("localhost"),
            url.port().unwrap_or(5432)
        ))
    }

    /// The URL with any password replaced by `***`: the only form that may be shown.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    pub(crate) fn connect_url(&self) -> &str {
        &self.url
    }

    /// The PostgreSQL URL with `extra` added to libpq's `options` (server settings sent in
    /// the startup packet), after any the user gave.
    pub(crate) fn connect_url_with_options(&self, extra: &str) -> String {
        let Ok(mut url) = url::Url::parse(&self.url) else {
            return self.url.clone();
        };
        let mut pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        match pairs.iter_mut().find(|(k, _)| k == "options") {
            Some((_, v)) => {
                v.push(' ');
                v.push_str(extra);
            }
            None => pairs.push(("options".into(), extra.into())),
        }
        url.query_pairs_mut().clear().extend_pairs(pairs);
        // Form encoding writes a space as `+`, which libpq does not decode; a literal `+` is
        // already `%2B`, so every `+` here is a space.
        let query = url.query().unwrap_or_default().replace('+', "%20");
        url.set_query(Some(&query));
        url.into()
    }

    pub fn sqlite_path(&self) -> Option<&PathBuf> {
        self.sqlite_path.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_redacts() {
        let e = Endpoint::parse("users", "postgres://app:s3cret@db.example:5432/users").unwrap();
        assert_eq!(e.backend, Backend::Postgres);
        assert!(!e.redacted().contains("s3cret"), "{}", e.redacted());
        assert!(!format!("{e:?}").contains("s3cret"));
        assert!(e.connect_url().contains("connect_timeout=10"));
        let e =
            Endpoint::parse("users", "postgresql://h/db?password=s3cret&sslmode=disable").unwrap();
        assert!(!e.redacted().contains("s3cret"), "{}", e.redacted());
        assert!(e.redacted().contains("sslmode=disable"));
        let e = Endpoint::parse("a", "sqlite://var/a.sqlite3").unwrap();
        assert_eq!(e.backend, Backend::Sqlite);
        assert_eq!(e.sqlite_path().unwrap(), &PathBuf::from("var/a.sqlite3"));
        let e = Endpoint::parse("shop", "mysql://app:s3cret@127.0.0.1:3306/shop").unwrap();
        assert_eq!(e.backend, Backend::Mysql);
        assert!(!e.redacted().contains("s3cret"), "{}", e.redacted());
        let e = Endpoint::parse("a", "sqlite:///tmp/a.db").unwrap();
        assert_eq!(e.sqlite_path().unwrap(), &PathBuf::from("/tmp/a.db"));
    }

    #[test]
    fn adds_startup_options() {
        let e = Endpoint::parse("a", "postgres://h/db").unwrap();
        let url = e.connect_url_with_options("-c lock_timeout=5");
        assert!(url.contains("options=-c%20lock_timeout%3D5"), "{url}");
        let e = Endpoint::parse("a", "postgres://h/db?options=-c%20search_path%3Dapp").unwrap();
        let url = e.connect_url_with_options("-c lock_timeout=5");
        assert!(
            url.contains("search_path%3Dapp%20-c%20lock_timeout%3D5"),
            "{url}"
        );
    }

    #[test]
    fn refuses_unknown_schemes() {
        for url in [
            "mysql://root@localhost",
            "mongodb://x",
            "var/a.db",
            "sqlite://",
            "redis://x",
        ] {
            assert!(Endpoint::parse("a", url).is_err(), "{url}");
        }
    }
}
