use std::fmt;

/// How long connecting to a server may take before it is given up (PostgreSQL's
/// `connect_timeout`, and the wait for a MySQL server's greeting).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::DriverError;

/// The kinds of database a bind can be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// PostgreSQL, from a `postgres://` or `postgresql://` URL.
    Postgres,
    /// SQLite, from a `sqlite://PATH` URL.
    Sqlite,
    /// MySQL or MariaDB, from a `mysql://` URL.
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
    /// What this backend can do: PostgreSQL has transactional DDL and two-phase commit,
    /// SQLite only transactional DDL, MySQL and MariaDB neither.
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
    /// The name of the bind this database belongs to.
    pub bind: String,
    /// Which kind of database the URL names.
    pub backend: Backend,
    url: String,
    redacted: String,
    sqlite_path: Option<PathBuf>,
    /// The application's pool to borrow connections from instead of opening them from `url`
    /// (PostgreSQL; see [`Endpoint::with_pool`]).
    pool: Option<Lending>,
}

/// An application's pool of PostgreSQL connections, as diesel's r2d2 integration builds it.
pub type PgPool = diesel::r2d2::Pool<diesel::r2d2::ConnectionManager<diesel::PgConnection>>;

/// A pool to borrow from, and what a session opened from the endpoint's URL is (server,
/// database, role and the settings it starts with), and when that was read: every lent
/// session must be the same, or the command line (which connects with the URL) would not see
/// what a batch through the pool did. Read again when older than [`Lending::REFERENCE_FOR`]
/// (the URL's host may have failed over to another server since) or when a lent session
/// differs.
#[derive(Clone)]
pub(crate) struct Lending {
    pub(crate) pool: PgPool,
    pub(crate) reference: std::sync::Arc<std::sync::Mutex<Option<(String, std::time::Instant)>>>,
}

impl Lending {
    /// How long what the URL gives is taken as known: about one batch.
    pub(crate) const REFERENCE_FOR: std::time::Duration = std::time::Duration::from_secs(5);
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("bind", &self.bind)
            .field("backend", &self.backend)
            .field("url", &self.redacted)
            .field("pool", &self.pool.is_some())
            .finish()
    }
}

impl Endpoint {
    /// [`Endpoint::parse_in`] with relative SQLite paths left relative (to the working
    /// directory). Configuration goes through `parse_in` with the project root.
    pub fn parse(bind: &str, url: &str) -> Result<Endpoint, DriverError> {
        Endpoint::parse_in(bind, url, Path::new(""))
    }

    /// Parses `postgres://...` / `postgresql://...`, `mysql://...` or `sqlite://PATH`. A
    /// relative PATH is taken relative to `root` (the project root); `sqlite:///abs/path.db`
    /// is absolute. Any other scheme is an error: a URL is never guessed to be some default
    /// backend. In-memory SQLite databases are refused: a batch there keeps nothing.
    ///
    /// Every secret in `url` (its password, secret query parameters) is registered for
    /// [`redact_text`] before anything can fail, so no later message can show it.
    pub fn parse_in(bind: &str, url: &str, root: &Path) -> Result<Endpoint, DriverError> {
        let url = url.trim();
        register_secrets_in(url);
        let bad = |reason: String| DriverError::BadUrl {
            bind: bind.into(),
            reason,
        };
        let lower = url.to_ascii_lowercase();
        let memory = lower.contains(":memory:") || lower.contains("mode=memory");
        if memory
            && (lower.starts_with("sqlite:")
                || lower.starts_with("file:")
                || lower.starts_with(":memory:"))
        {
            return Err(bad(
                "an in-memory SQLite database keeps nothing once the command ends, so a migrated batch would vanish; give a file: sqlite://var/NAME.sqlite3".into(),
            ));
        }
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("mysql") => Self::mysql(bind, url).map_err(bad),
            Some("postgres") | Some("postgresql") => Self::postgres(bind, url).map_err(bad),
            Some("sqlite") => Self::sqlite(bind, &url["sqlite://".len()..], root).map_err(bad),
            Some(other) => Err(bad(format!(
                "the scheme `{other}://` is not supported; use postgres://USER@HOST/DB, mysql://USER@HOST/DB or sqlite://PATH"
            ))),
            None if lower.starts_with("sqlite:") => Err(bad(
                "write SQLite URLs as sqlite://PATH, such as sqlite://var/app.sqlite3".into(),
            )),
            None => Err(bad(
                "the URL has no scheme; use postgres://USER@HOST/DB, mysql://USER@HOST/DB or sqlite://PATH"
                    .into(),
            )),
        }
    }

    fn mysql(bind: &str, url: &str) -> Result<Endpoint, String> {
        #[cfg(not(feature = "mysql"))]
        {
            let _ = (bind, url);
            Err(crate::participant::mysql_not_built())
        }
        #[cfg(feature = "mysql")]
        Self::mysql_url(bind, url)
    }

    #[cfg(feature = "mysql")]
    fn mysql_url(bind: &str, url: &str) -> Result<Endpoint, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a valid MySQL URL: {e}"))?;
        register_url_secrets(&parsed);
        refuse_fragment(&parsed)?;
        if parsed.path().trim_matches('/').is_empty() {
            return Err(
                "a MySQL URL must name its database: mysql://USER:PASSWORD@HOST:3306/DB".into(),
            );
        }
        Ok(Endpoint {
            bind: bind.into(),
            backend: Backend::Mysql,
            url: parsed.into(),
            redacted: redact_url(url),
            sqlite_path: None,
            pool: None,
        })
    }

    fn postgres(bind: &str, url: &str) -> Result<Endpoint, String> {
        let parsed =
            url::Url::parse(url).map_err(|e| format!("not a valid PostgreSQL URL: {e}"))?;
        register_url_secrets(&parsed);
        refuse_fragment(&parsed)?;
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
            redacted: redact_url(url),
            sqlite_path: None,
            pool: None,
        })
    }

    /// `path` is what follows `sqlite://`, relative to `root` unless absolute.
    fn sqlite(bind: &str, path: &str, root: &Path) -> Result<Endpoint, String> {
        if path.is_empty() {
            return Err("`sqlite://` needs a file path, such as sqlite://var/app.sqlite3".into());
        }
        if path.to_ascii_lowercase().starts_with("file:") {
            return Err(
                "SQLite URI filenames (file:...) are not supported; give a path: sqlite://var/NAME.sqlite3 (relative to the project root) or sqlite:///absolute/path".into(),
            );
        }
        // `sqlite://PATH` is a path and nothing else: what a server URL carries besides
        // (user and password, a query string, a fragment) would become part of a folder or
        // file name here, so it is refused rather than taken literally.
        // `user@` or `user:password@` before the path; a password may hold `/`, so a `:` in
        // the first segment followed by an `@` anywhere is taken as userinfo too.
        let first = path.split('/').next().unwrap_or_default();
        let userinfo = match (first.split_once('@'), first.contains(':')) {
            (Some((userinfo, _)), _) => Some(userinfo),
            (None, true) => path.rsplit_once('@').map(|(userinfo, _)| userinfo),
            (None, false) => None,
        };
        if let Some(userinfo) = userinfo {
            if let Some((_, password)) = userinfo.split_once(':') {
                register_secret(password);
            }
            return Err(
                "a SQLite URL takes no user or password (SQLite has no logins): write sqlite://PATH, such as sqlite://var/app.sqlite3".into(),
            );
        }
        if path.contains('?') {
            if let Some((_, query)) = path.split_once('?') {
                for pair in query.split('&') {
                    if let Some((_, value)) = pair.split_once('=') {
                        register_secret(value);
                    }
                }
            }
            return Err(
                "a SQLite URL takes no query string (`?...`): write sqlite://PATH, such as sqlite://var/app.sqlite3; a file name with `?` in it is not supported".into(),
            );
        }
        if path.contains('#') {
            return Err(
                "a SQLite URL takes no fragment (`#...`): write sqlite://PATH, such as sqlite://var/app.sqlite3; a file name with `#` in it is not supported".into(),
            );
        }
        let path = root.join(path);
        let shown = path.display().to_string();
        Ok(Endpoint {
            bind: bind.into(),
            backend: Backend::Sqlite,
            url: shown.clone(),
            redacted: format!("sqlite://{shown}"),
            sqlite_path: Some(path),
            pool: None,
        })
    }

    /// What names this bind's database, for finding two binds that name one: the backend,
    /// host (lowercase; `localhost`, `127.0.0.1`, `::1` and no host are one), port (defaults
    /// applied) and database name; for SQLite the file's path with its folder canonicalised
    /// (so `var/../var/a.sqlite3` is `var/a.sqlite3`, and symbolic links are followed).
    pub fn database_identity(&self) -> String {
        match self.backend {
            Backend::Sqlite => {
                let path = self.sqlite_path.clone().unwrap_or_default();
                format!("sqlite:{}", canonical_file(&path).display())
            }
            Backend::Postgres | Backend::Mysql => {
                let Ok(url) = url::Url::parse(&self.url) else {
                    return format!("{}:{}", self.backend, self.url);
                };
                let query: Vec<(String, String)> = url
                    .query_pairs()
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let param = |name: &str| {
                    query
                        .iter()
                        .rev()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                };
                let host = param("host")
                    .unwrap_or_else(|| url.host_str().unwrap_or_default().to_string())
                    .to_ascii_lowercase();
                let host = match host.as_str() {
                    "" | "localhost" | "127.0.0.1" | "::1" | "[::1]" => "localhost".to_string(),
                    _ => host,
                };
                let default_port = if self.backend == Backend::Postgres {
                    5432
                } else {
                    3306
                };
                let port = param("port")
                    .and_then(|p| p.parse::<u16>().ok())
                    .or(url.port())
                    .unwrap_or(default_port);
                let path = percent_decode(url.path().trim_start_matches('/'));
                let database = match self.backend {
                    // libpq's default database is the user's name.
                    Backend::Postgres => param("dbname")
                        .or_else(|| Some(path).filter(|p| !p.is_empty()))
                        .or_else(|| param("user"))
                        .unwrap_or_else(|| percent_decode(url.username())),
                    _ => path,
                };
                format!("{}://{host}:{port}/{database}", self.backend)
            }
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

    /// A MySQL bind reached over TCP: its host and port (3306 by default). `None` for other
    /// backends and for a Unix socket (`localhost` or `?unix_socket=`, as the client library
    /// reads them).
    #[cfg(feature = "mysql")]
    pub(crate) fn mysql_tcp_address(&self) -> Option<(String, u16)> {
        if self.backend != Backend::Mysql {
            return None;
        }
        let url = url::Url::parse(&self.url).ok()?;
        let host = url
            .host_str()?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        if host == "localhost" || url.query_pairs().any(|(k, _)| k == "unix_socket") {
            return None;
        }
        Some((host, url.port().unwrap_or(3306)))
    }

    /// The URL with any password replaced by `***`: the only form that may be shown.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    pub(crate) fn connect_url(&self) -> &str {
        &self.url
    }

    pub(crate) fn lending(&self) -> Option<&Lending> {
        self.pool.as_ref()
    }

    /// This PostgreSQL endpoint with its connections borrowed from `pool` (the application's)
    /// instead of opened from its URL, which still names the database in messages and records and
    /// is what the command line connects with. Each borrowed connection is reset as it is lent,
    /// checked to be the session the URL gives (the same server, database and role, starting with
    /// the same settings: otherwise the batch would keep its bookkeeping where the command line
    /// does not look; the URL is connected to, at most every 5 s, for that), and closed, not given
    /// back, when its session ends: the pool opens a new one. `Err` for another backend.
    pub fn with_pool(mut self, pool: PgPool) -> Result<Endpoint, DriverError> {
        if self.backend != Backend::Postgres {
            return Err(DriverError::Other {
                bind: self.bind.clone(),
                detail: format!(
                    "a pool of PostgreSQL connections was given for a {} bind",
                    self.backend
                ),
            });
        }
        self.pool = Some(Lending {
            pool,
            reference: Default::default(),
        });
        Ok(self)
    }

    /// The application's pool this endpoint borrows its connections from, if any.
    pub fn pool(&self) -> Option<&PgPool> {
        self.pool.as_ref().map(|l| &l.pool)
    }

    /// This endpoint with libpq connection parameters added to its URL where the URL does not
    /// set them (PostgreSQL only; other backends are returned as they are).
    pub(crate) fn with_params(&self, params: &[(&str, &str)]) -> Endpoint {
        let mut e = self.clone();
        if self.backend != Backend::Postgres {
            return e;
        }
        let Ok(mut url) = url::Url::parse(&self.url) else {
            return e;
        };
        let mut pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for (k, v) in params {
            if !pairs.iter().any(|(key, _)| key == k) {
                pairs.push((k.to_string(), v.to_string()));
            }
        }
        url.query_pairs_mut().clear().extend_pairs(pairs);
        // As in `connect_url_with_options`: form encoding's `+` is a space libpq would not decode.
        let query = url.query().unwrap_or_default().replace('+', "%20");
        url.set_query(Some(&query));
        e.url = url.into();
        e
    }

    /// The PostgreSQL URL to connect with: `extra` added to libpq's `options` (server
    /// settings sent in the startup packet) after any the user gave, and a `connect_timeout`
    /// unless it has one.
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
        // A server that accepts and never answers must not hang a command: libpq's own
        // connect timeout, unless the URL sets one.
        if !pairs.iter().any(|(k, _)| k == "connect_timeout") {
            pairs.push((
                "connect_timeout".into(),
                CONNECT_TIMEOUT.as_secs().to_string(),
            ));
        }
        url.query_pairs_mut().clear().extend_pairs(pairs);
        // Form encoding writes a space as `+`, which libpq does not decode; a literal `+` is
        // already `%2B`, so every `+` here is a space.
        let query = url.query().unwrap_or_default().replace('+', "%20");
        url.set_query(Some(&query));
        url.into()
    }

    /// For a SQLite bind, the database file's path (joined to the project root when the URL
    /// gave a relative one); `None` for the other backends.
    pub fn sqlite_path(&self) -> Option<&PathBuf> {
        self.sqlite_path.as_ref()
    }
}

// ---------------------------------------------------------------------------------------------
// Redaction: the one place that decides what of a connection string may be shown.
//
// Secrets are (1) the password of a URL's user information (`scheme://user:PASSWORD@host`),
// (2) the value of a secret-bearing parameter, in a URL query or in libpq's `key=value` form,
// and (3) any of those values met before, by value: every URL that `Endpoint::parse_in` sees
// (and the configuration's files and environment variables) registers its secrets, so a
// library message that quotes a password alone (libpq's "invalid percent-encoded token") is
// redacted too. Each is replaced by `***`. Paths (`passfile`, `sslkey`, `sslcert`,
// `sslrootcert`) are not secrets and are shown.
// ---------------------------------------------------------------------------------------------

/// The replacement for every secret.
const MASK: &str = "***";

/// Secrets shorter than this are not redacted by value (they are still redacted where they
/// stand in a URL or a `password=` parameter): replacing every `a` or `pw` of a message
/// would make it unreadable.
const MIN_SECRET_BY_VALUE: usize = 3;

/// Whether a URL query or conninfo parameter holds a secret, compared case-insensitively: any
/// name ending in `password` (`password`, `sslpassword`, ...) or `passwd`, and `pwd`.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.ends_with("password") || key.ends_with("passwd") || key == "pwd"
}

fn registry() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Remembers `value` (and its percent-decoded form) as a secret that [`redact_text`] removes
/// wherever it appears, for the rest of the process.
pub fn register_secret(value: &str) {
    let mut secrets = registry().lock().unwrap_or_else(|e| e.into_inner());
    for v in [value.to_string(), percent_decode(value)] {
        if v.chars().count() >= MIN_SECRET_BY_VALUE && !secrets.contains(&v) {
            secrets.push(v);
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Registers every secret [`redact_text`] finds in `text` (URL passwords, secret parameters).
pub fn register_secrets_in(text: &str) {
    for span in secret_spans(text) {
        register_secret(&text[span]);
    }
}

/// A `#fragment` means nothing to a database: libpq and the MySQL client would read it as part
/// of the last parameter (`lock_timeout=2000#x`), so it is refused. The message does not quote
/// the fragment, which may hold the end of a password with an unencoded `#`.
fn refuse_fragment(url: &url::Url) -> Result<(), String> {
    match url.fragment() {
        Some(_) => Err(
            "a database URL takes no `#fragment`; if a password holds `#`, write it as %23".into(),
        ),
        None => Ok(()),
    }
}

fn register_url_secrets(url: &url::Url) {
    if let Some(p) = url.password() {
        register_secret(p);
    }
    for (k, v) in url.query_pairs() {
        if is_secret_key(&k) {
            register_secret(&v);
        }
    }
}

/// A URL as it may be shown: the password of its user information and the values of secret
/// query parameters replaced by `***`, everything else exactly as written.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return redact_text(url);
    };
    let start = scheme_end + 3;
    let rest = &url[start..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = url[..start].to_string();
    let authority = &rest[..auth_end];
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..=colon]);
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let after = &rest[auth_end..];
    match after.find('?') {
        Some(q) => {
            out.push_str(&after[..=q]);
            let (query, fragment) = match after[q + 1..].find('#') {
                Some(h) => (&after[q + 1..q + 1 + h], &after[q + 1 + h..]),
                None => (&after[q + 1..], ""),
            };
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _)) if is_secret_key(&percent_decode(k)) => format!("{k}={MASK}"),
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
            out.push_str(fragment);
        }
        None => out.push_str(after),
    }
    replace_registered(&out)
}

/// Free text (an error message, a log line, a configuration parser's quote of a line) with
/// every URL password, every secret `key=value` parameter and every registered secret
/// replaced by `***`.
pub fn redact_text(text: &str) -> String {
    let spans = secret_spans(text);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for span in spans {
        if span.start < at {
            continue;
        }
        out.push_str(&text[at..span.start]);
        out.push_str(MASK);
        at = span.end;
    }
    out.push_str(&text[at..]);
    replace_registered(&out)
}

fn replace_registered(text: &str) -> String {
    let secrets = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for secret in secrets.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), MASK);
        }
    }
    out
}

/// Where secrets stand in `text`, sorted by start.
fn secret_spans(text: &str) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let stops = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>');
    let mut spans = Vec::new();
    // URL user information: scheme://user:SECRET@host
    let mut from = 0;
    while let Some(found) = text[from..].find("://") {
        let start = from + found + 3;
        from = start;
        let token_end = text[start..].find(stops).map_or(text.len(), |e| start + e);
        let token = &text[start..token_end];
        let auth_end = token.find(['/', '?', '#']).unwrap_or(token.len());
        let authority = &token[..auth_end];
        let at = match authority.rfind('@') {
            Some(at) => Some(at),
            // A password with a raw `/`, `?` or `#` in it ends the authority early: then the
            // user information runs to the first `@` after it.
            None if authority.contains(':') => token[auth_end..].find('@').map(|a| auth_end + a),
            None => None,
        };
        if let Some(at) = at {
            if let Some(colon) = token[..at].find(':') {
                if colon + 1 < at {
                    spans.push(start + colon + 1..start + at);
                }
            }
        }
    }
    // key=value, key = 'value', key="value" with a secret key.
    let mut i = 0;
    while i < bytes.len() {
        let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        if !is_word(bytes[i]) || (i > 0 && is_word(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let word_start = i;
        while i < bytes.len() && is_word(bytes[i]) {
            i += 1;
        }
        if !is_secret_key(&text[word_start..i]) {
            continue;
        }
        let mut j = i;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j >= bytes.len() || bytes[j] != b'=' {
            continue;
        }
        j += 1;
        while j < bytes.len() && bytes[j] == b' ' {
            j += 1;
        }
        if j < bytes.len() && (bytes[j] == b'\'' || bytes[j] == b'"') {
            let quote = bytes[j];
            let value_start = j + 1;
            let mut k = value_start;
            while k < bytes.len() && bytes[k] != quote {
                k += if bytes[k] == b'\\' { 2 } else { 1 };
            }
            let k = k.min(bytes.len());
            if k > value_start {
                spans.push(value_start..k);
            }
            i = k;
        } else {
            let value_end = text[j..]
                .find(|c: char| stops(c) || c == '&')
                .map_or(text.len(), |e| j + e);
            if value_end > j {
                spans.push(j..value_end);
            }
            i = value_end;
        }
    }
    spans.sort_by_key(|s| (s.start, std::cmp::Reverse(s.end)));
    spans
}

/// Percent-decoding that keeps what is not a valid escape (`%zz`) as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` with its folder canonicalised when it exists (the file itself when it exists),
/// else with `.` and `..` removed lexically.
fn canonical_file(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    if let (Some(parent), Some(name)) = (path.parent(), path.file_name()) {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(p) = parent.canonicalize() {
            return p.join(name);
        }
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build without the `mysql` feature refuses a MySQL bind when its URL is read, before
    /// anything connects, and says how to get one that has it (run by scripts/test.sh with
    /// `--no-default-features`).
    #[cfg(not(feature = "mysql"))]
    #[test]
    fn without_mysql_a_mysql_url_is_refused() {
        let err = Endpoint::parse("shop", "mysql://app:zq9@127.0.0.1:3306/shop").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("built without MySQL"), "{text}");
        assert!(text.contains("--features mysql"), "{text}");
        assert!(!text.contains("zq9"), "{text}");
        assert!(Endpoint::parse("a", "postgres://h/app").is_ok());
        assert!(Endpoint::parse("b", "sqlite://var/b.sqlite3").is_ok());
    }

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
    fn redacts_every_url_form_and_hostile_password() {
        // Pattern-only: none of these is registered, so what is hidden is found by its place.
        let cases = [
            ("postgres://u:zq1@h/db", "postgres://u:***@h/db"),
            (
                "postgresql://u:zq2@h:5432/db?sslmode=disable",
                "postgresql://u:***@h:5432/db?sslmode=disable",
            ),
            (
                "postgres://h/db?password=zq3",
                "postgres://h/db?password=***",
            ),
            (
                "postgres://h/db?PASSWORD=zq4&x=1",
                "postgres://h/db?PASSWORD=***&x=1",
            ),
            (
                "postgres://h/db?sslpassword=zq5&sslkey=/k.pem",
                "postgres://h/db?sslpassword=***&sslkey=/k.pem",
            ),
            ("mysql://u:zq6@h/db", "mysql://u:***@h/db"),
            ("mysql://h/db?password=zq7", "mysql://h/db?password=***"),
            ("postgres://u:p%zz@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u:p:w@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://:zq8@h/db", "postgres://:***@h/db"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
            assert_eq!(redact_text(url), shown, "{url}");
            let text = format!("error: cannot read \"{url}\": bad");
            assert_eq!(
                redact_text(&text),
                format!("error: cannot read \"{shown}\": bad")
            );
        }
        // A raw `/` or `?` in the password ends the authority early; free text still hides it.
        for (text, secret) in [
            ("url = \"postgres://u:p/zq9@h/db\" x", "p/zq9"),
            ("url = \"postgres://u:p?zq10=1@h/db\"", "zq10"),
            ("password=zq11 host=h dbname=x", "zq11"),
            ("password = 'zq 12' host=h", "zq 12"),
            ("Password=\"zq13\"", "zq13"),
            ("invalid URI query parameter: \"pwd=zq14\"", "zq14"),
        ] {
            let shown = redact_text(text);
            assert!(!shown.contains(secret), "{text} -> {shown}");
            assert!(shown.contains("***"), "{text} -> {shown}");
        }
        // Nothing else changes.
        for text in [
            "password authentication failed for user \"app\"",
            "postgres://h:5432/db?sslmode=require&passfile=/p",
            "sqlite:///var/a.sqlite3",
        ] {
            assert_eq!(redact_text(text), text);
        }
    }

    #[test]
    fn parsing_registers_secrets_for_free_text() {
        // libpq's "invalid percent-encoded token" quotes the password alone.
        for (url, secret) in [
            ("postgres://u:p%zzQ1@127.0.0.1:1/db", "p%zzQ1"),
            ("postgres://h/db?password=%41Q2", "%41Q2"),
            ("postgres://h/db?SslPassword=Q3%zz", "Q3%zz"),
            ("mysql://u:p%40Q4@h/db", "p@Q4"),
            ("postgres://u:\u{e9}t\u{e9}Q5@h/db", "\u{e9}t\u{e9}Q5"),
        ] {
            let e = Endpoint::parse("a", url).unwrap();
            assert!(!e.redacted().contains(secret), "{}", e.redacted());
            let message = format!("invalid percent-encoded token: \"{secret}\"");
            assert!(!redact_text(&message).contains(secret), "{message}");
            let err = DriverError::Other {
                bind: "a".into(),
                detail: message,
            };
            assert!(!err.to_string().contains(secret));
            assert!(!format!("{err:?}").contains(secret));
        }
    }

    #[test]
    fn refuses_in_memory_sqlite_and_resolves_paths() {
        for url in [
            "sqlite://:memory:",
            "sqlite::memory:",
            "sqlite://file::memory:?cache=shared",
            "sqlite://file:x?mode=memory",
            "sqlite://x.db?MODE=MEMORY",
            ":memory:",
        ] {
            let err = Endpoint::parse("a", url).unwrap_err().to_string();
            assert!(err.contains("in-memory"), "{url}: {err}");
        }
        let e = Endpoint::parse_in("a", "sqlite://var/a.sqlite3", Path::new("/proj")).unwrap();
        assert_eq!(
            e.sqlite_path().unwrap(),
            &PathBuf::from("/proj/var/a.sqlite3")
        );
        assert_eq!(e.redacted(), "sqlite:///proj/var/a.sqlite3");
        let e = Endpoint::parse_in("a", "sqlite:///abs/a.sqlite3", Path::new("/proj")).unwrap();
        assert_eq!(e.sqlite_path().unwrap(), &PathBuf::from("/abs/a.sqlite3"));
    }

    /// What a server URL carries besides a path (user and password, a query, a fragment)
    /// means nothing for a SQLite URL and is refused, never turned into folder or file names;
    /// a fragment on a server URL would reach the server inside a parameter. No message shows
    /// the secret it refuses.
    #[test]
    fn refuses_url_parts_that_mean_nothing_for_the_database() {
        for (url, says, secret) in [
            (
                "sqlite://app:pw7781@var/x.sqlite3",
                "no user or password",
                "pw7781",
            ),
            ("sqlite://app@var/x.sqlite3", "no user or password", ""),
            (
                "sqlite://admin:hun/ter22@var/x.sqlite3",
                "no user or password",
                "hun/ter22",
            ),
            (
                "postgres://u:pw@h/db#URL",
                "a database URL takes no `#fragment`",
                "",
            ),
            (
                "sqlite://var/x.sqlite3?password=zz9912",
                "no query string",
                "zz9912",
            ),
            ("sqlite://var/x.sqlite3#frag", "no fragment", ""),
            ("sqlite://file:var/x", "URI filenames", ""),
            (
                "postgres://u:p%23ss1@h/db#frag55",
                "no `#fragment`",
                "frag55",
            ),
            ("postgres://u:pass#word44@h/db", "", "word44@h/db"),
            ("mysql://u@h/db#x", "no `#fragment`", ""),
        ] {
            let err = Endpoint::parse("a", url).unwrap_err().to_string();
            assert!(err.contains(says), "{url}: {err}");
            if !secret.is_empty() {
                assert!(!err.contains(secret), "{url}: {err}");
            }
        }
        // A path may hold `@` below its first folder, and a server URL's query stays.
        assert!(Endpoint::parse("a", "sqlite://var/me@home/x.sqlite3").is_ok());
        assert!(Endpoint::parse("a", "postgres://h/db?sslmode=disable").is_ok());
    }

    #[test]
    fn database_identity_applies_defaults() {
        let id = |url: &str| Endpoint::parse("a", url).unwrap().database_identity();
        assert_eq!(
            id("postgres://u:pw@DB.x/app"),
            id("postgresql://v@db.x:5432/app")
        );
        assert_eq!(
            id("postgres://localhost/app"),
            id("postgres://127.0.0.1/app")
        );
        assert_eq!(id("postgres://u@h"), id("postgres://h/u"));
        assert_ne!(id("postgres://h/app"), id("postgres://h:5433/app"));
        assert_eq!(id("mysql://h/app"), id("mysql://u:pw@h:3306/app"));
        assert_ne!(id("mysql://h/app"), id("postgres://h/app"));
        assert!(!id("postgres://u:pw1234@h/app").contains("pw1234"));
        assert_eq!(id("sqlite://x/../y/a.db"), id("sqlite://y/./a.db"));
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
