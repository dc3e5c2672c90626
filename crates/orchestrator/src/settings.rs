//! Layered configuration: `config/default.toml`, then `config/$ORCHESTRATE_ENV.toml`, then
//! `--config FILE`, then environment variables `ORCHESTRATE__...`.
//!
//! Relative paths (SQLite files, migrations folders) resolve against the project root, never
//! the working directory: see [`Sources::project_root`]. What cannot work is refused here,
//! before anything connects: a zero lock timeout, in-memory SQLite, two binds naming one
//! database. Every message is redacted (`orchestrate_driver::redact_text`): the configuration
//! parser quotes the lines it cannot read, URLs and passwords included.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use orchestrate_core::validate_bind_name;
use orchestrate_driver::{redact_text, register_secrets_in, Endpoint};
use serde::Deserialize;

/// Why the configuration cannot be used. Always exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration file {} does not exist", .0.display())]
    MissingFile(PathBuf),
    #[error("--config {} is a folder, not a TOML file; give the file, or use --config-dir for the folder holding default.toml", .0.display())]
    FolderNotFile(PathBuf),
    #[error("the configuration folder {} does not exist; give the folder holding default.toml with --config-dir", .0.display())]
    MissingFolder(PathBuf),
    #[error("no configuration found: {} does not exist. Run `orchestrate init` to start a project here, or run from the project's folder, or point at it with --config-dir DIR", .0.display())]
    NoProject(PathBuf),
    #[error("invalid configuration: {}", redact_text(.0))]
    Invalid(String),
    #[error("no binds are configured; add a [binds.NAME] table with a `url` to config/default.toml (or the file given with --config)")]
    NoBinds,
    #[error("invalid configuration: {0}")]
    Bind(#[from] orchestrate_driver::DriverError),
}

// No `Debug` on the raw forms: they hold URLs with passwords.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    #[serde(default)]
    binds: BTreeMap<String, RawBind>,
    #[serde(default)]
    templates: BTreeMap<String, RawTemplate>,
    decider: Option<String>,
    lock_timeout_ms: Option<u64>,
    parallelism: Option<usize>,
    keep_connections: Option<usize>,
    rollout: Option<RawRollout>,
    /// This environment is protected: downgrades, stamps, resolves and `--allow-*` need
    /// `--yes` (or a confirmation typed on a terminal).
    protected: Option<bool>,
}

/// `[rollout]`: run a large selection as a sequence of atomic batches (waves).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRollout {
    wave_size: Option<usize>,
    #[serde(default)]
    canary: Vec<String>,
    #[serde(default)]
    together: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBind {
    url: String,
    migrations: Option<PathBuf>,
}

/// Many binds sharing one chain: one per database name, listed or discovered.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTemplate {
    /// A URL with `{name}` where each database's name goes.
    url: String,
    /// Default `migrations/<template>`.
    migrations: Option<PathBuf>,
    /// The database names, listed.
    names: Option<Vec<String>>,
    /// Or: every database on the server whose name matches this SQL `LIKE` pattern.
    discover: Option<String>,
    /// The database to connect to for discovery (default `postgres`).
    discover_database: Option<String>,
    /// Each bind's name, with `{name}` for the database's name and `{template}` for the
    /// template's. Default: `{template}_{name}`, or the database's name alone when it already
    /// starts with `<template>_` (so `discover = "tenant\\_%"` gives `tenant_acme`, not
    /// `tenant_tenant_acme`).
    bind_name: Option<String>,
}

/// One configured template: its name, the folder of its shared chain and the binds it
/// expanded to.
#[derive(Clone, Debug)]
pub struct TemplateSettings {
    pub name: String,
    pub migrations: PathBuf,
    pub members: Vec<String>,
}

/// One configured bind.
#[derive(Clone, Debug)]
pub struct BindSettings {
    pub name: String,
    pub endpoint: Endpoint,
    /// The migrations folder; for embedded migrations, a name for them in messages.
    pub migrations: PathBuf,
    /// Migrations compiled into the application (the library's
    /// [`crate::Migrations::embedded`]), read instead of the folder.
    pub embedded: Option<orchestrate_driver::Embedded>,
}

impl BindSettings {
    /// The bind's chain: its embedded migrations, or its folder.
    pub fn chain(&self) -> Result<orchestrate_core::Chain, orchestrate_driver::SourceError> {
        match &self.embedded {
            Some(embedded) => embedded.chain(&self.name),
            None => orchestrate_driver::read_chain(&self.name, &self.migrations),
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Binds in name order.
    pub binds: Vec<BindSettings>,
    /// Templates in name order (their binds are in `binds` too).
    pub templates: Vec<TemplateSettings>,
    /// The folder relative paths resolve against (absolute): see [`Sources::project_root`].
    pub root: PathBuf,
    /// The bind that decides batches it takes part in, if the user chose one.
    pub decider: Option<String>,
    /// How long to wait for another run's lock, and for locks when reading.
    pub lock_timeout: Duration,
    /// How many binds are read or worked on at once.
    pub parallelism: usize,
    /// The widest batch (PostgreSQL binds per server) whose participants keep their session
    /// from PREPARE to COMMIT PREPARED (see `work::keep_connections_for`).
    pub keep_connections: usize,
    /// How a selection is cut into waves (`[rollout]`); by default one batch.
    pub rollout: RolloutSettings,
    /// `protected = true`: what can lose or rewrite history here needs `--yes`.
    pub protected: bool,
    /// Where each value set by a layer came from (`binds.users.url` -> `config/default.toml`,
    /// or `environment variable ORCHESTRATE__BINDS__USERS__URL`); a key not here took its
    /// default. Keys are lowercase and dotted.
    pub origins: BTreeMap<String, String>,
    /// The layers read, in order (later ones win).
    pub layers: Vec<String>,
}

/// `[rollout]`: an `upgrade`/`downgrade` of more binds than `wave_size` runs as a sequence of
/// atomic batches, each started only once the previous one committed (see `crate::rollout`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutSettings {
    /// The most binds in one wave (canary and `together` binds aside); `None`: one batch.
    pub wave_size: Option<usize>,
    /// Binds that run first, as a wave of their own.
    pub canary: Vec<String>,
    /// Binds that always run in the same wave (the first after the canaries).
    pub together: Vec<String>,
}

/// Where the configuration comes from. Its `Debug` leaves out the environment's values, which
/// may hold passwords.
#[derive(Clone, Default)]
pub struct Sources {
    /// The folder holding `default.toml` and `<env>.toml`.
    pub config_dir: PathBuf,
    /// `ORCHESTRATE_ENV`: staging, production, ...
    pub env_name: Option<String>,
    /// `--config FILE`.
    pub extra_file: Option<PathBuf>,
    /// The environment variables to read; `None` reads the process environment.
    pub environment: Option<HashMap<String, String>>,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("config_dir", &self.config_dir)
            .field("env_name", &self.env_name)
            .field("extra_file", &self.extra_file)
            .field(
                "environment",
                &self
                    .environment
                    .as_ref()
                    .map(|vars| vars.keys().collect::<Vec<_>>()),
            )
            .finish()
    }
}

impl Sources {
    /// The project root, which relative SQLite paths and migrations folders resolve against
    /// (made absolute against the working directory): the folder holding the config folder
    /// when that folder exists (`config/` by default, so the folder `orchestrate` runs in);
    /// else, with `--config FILE`, the folder holding FILE; else the config folder's parent.
    pub fn project_root(&self) -> PathBuf {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let holder = |p: &Path| {
            let p = absolute(p);
            p.parent().map(Path::to_path_buf).unwrap_or(p)
        };
        match &self.extra_file {
            Some(file) if !self.config_dir.is_dir() => holder(file),
            _ => holder(&self.config_dir),
        }
    }
}

/// A template's binds, named by its `bind_name` pattern (see [`RawTemplate::bind_name`]), each
/// with the template's chain.
fn expand_template(
    template: &str,
    t: &RawTemplate,
    lock_timeout_ms: Option<u64>,
    root: &Path,
) -> Result<Vec<BindSettings>, SettingsError> {
    let invalid = |m: String| SettingsError::Invalid(format!("template `{template}`: {m}"));
    validate_bind_name(template).map_err(invalid)?;
    if !t.url.contains("{name}") {
        return Err(invalid(
            "its url needs `{name}` where each database's name goes".into(),
        ));
    }
    let names: Vec<String> = match (&t.names, &t.discover) {
        (Some(names), None) if names.is_empty() => {
            return Err(invalid(
                "`names = []` lists no database; list at least one, or remove the template".into(),
            ))
        }
        (Some(names), None) => names.clone(),
        (None, Some(pattern)) => {
            let database = t.discover_database.as_deref().unwrap_or("postgres");
            let endpoint = Endpoint::parse_in(template, &t.url.replace("{name}", database), root)?;
            if endpoint.backend != orchestrate_driver::Backend::Postgres {
                return Err(invalid(format!(
                    "`discover` asks a PostgreSQL server for its databases, and this template is {}; list its databases with `names = [...]`",
                    endpoint.backend
                )));
            }
            let timeout = Duration::from_millis(lock_timeout_ms.unwrap_or(10_000));
            let found = orchestrate_driver::Postgres::connect(&endpoint, timeout)
                .and_then(|mut c| c.databases_like(pattern))
                .map_err(|e| invalid(format!("cannot discover its databases: {e}")))?;
            if found.is_empty() {
                return Err(invalid(format!(
                    "no database on {} matches `{pattern}`",
                    endpoint.redacted()
                )));
            }
            found
        }
        _ => {
            return Err(invalid(
                "give exactly one of `names = [...]` or `discover = \"PATTERN\"`".into(),
            ))
        }
    };
    if let Some(pattern) = &t.bind_name {
        if !pattern.contains("{name}") {
            return Err(invalid(format!(
                "`bind_name = \"{pattern}\"` needs `{{name}}` where each database's name goes, or every bind would have the same name"
            )));
        }
    }
    let migrations = root.join(
        t.migrations
            .clone()
            .unwrap_or_else(|| Path::new("migrations").join(template)),
    );
    if names.iter().any(|db| db.trim().is_empty()) {
        return Err(invalid(
            "an empty database name in `names`; give each database's name".into(),
        ));
    }
    let mut given: HashMap<String, &str> = HashMap::new();
    names
        .iter()
        .map(|db| {
            let name = match &t.bind_name {
                Some(pattern) => pattern
                    .replace("{template}", template)
                    .replace("{name}", db),
                None if db.starts_with(&format!("{template}_")) => db.clone(),
                None => format!("{template}_{db}"),
            };
            validate_bind_name(&name).map_err(|e| invalid(format!("database `{db}` gives {e}")))?;
            if let Some(other) = given.insert(name.clone(), db) {
                if other == db {
                    return Err(invalid(format!(
                        "database `{db}` is listed twice in `names`"
                    )));
                }
                return Err(invalid(format!(
                    "databases `{other}` and `{db}` both give bind `{name}`; set `bind_name` (such as \"{{template}}_{{name}}\") so that each database has its own bind"
                )));
            }
            Ok(BindSettings {
                endpoint: Endpoint::parse_in(&name, &t.url.replace("{name}", db), root)?,
                name,
                migrations: migrations.clone(),
                embedded: None,
            })
        })
        .collect()
}

/// Says what is wrong with the paths a command was given before anything reads them: a
/// configuration folder that does not exist, a `--config` that is a folder, or no project at
/// all (no default.toml and no `--config`).
fn check_config_paths(sources: &Sources, default: &Path) -> Result<(), SettingsError> {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    if let Some(file) = &sources.extra_file {
        if file.is_dir() {
            return Err(SettingsError::FolderNotFile(file.clone()));
        }
    }
    let default_folder = sources.config_dir == Path::new("config");
    if !sources.config_dir.is_dir() && !default_folder && sources.extra_file.is_none() {
        return Err(SettingsError::MissingFolder(absolute(&sources.config_dir)));
    }
    if !default.is_file() && sources.extra_file.is_none() {
        return Err(SettingsError::NoProject(absolute(default)));
    }
    Ok(())
}

/// An environment variable can override a bind or template that a configuration file
/// defines, never create one: `ORCHESTRATE__BINDS__USER__URL` when the files define `users`
/// is a typo that would otherwise migrate the file's URL and add a bind nobody meant.
fn check_env_overrides(
    files: &config::ConfigBuilder<config::builder::DefaultState>,
    sources: &Sources,
) -> Result<(), SettingsError> {
    let vars: Vec<String> = match &sources.environment {
        Some(vars) => vars.keys().cloned().collect(),
        None => std::env::vars().map(|(k, _)| k).collect(),
    };
    let mut defined: Option<config::Config> = None;
    for var in vars {
        // The config crate reads `.` in a variable's name as a separator too.
        let upper = var.to_ascii_uppercase().replace('.', "__");
        let Some(rest) = upper.strip_prefix("ORCHESTRATE__") else {
            continue;
        };
        let mut parts = rest.split("__");
        let (Some(section @ ("BINDS" | "TEMPLATES")), Some(name)) = (parts.next(), parts.next())
        else {
            continue;
        };
        let section = section.to_ascii_lowercase();
        let config = match &defined {
            Some(c) => c,
            None => defined.insert(
                files
                    .clone()
                    .build()
                    .map_err(|e| SettingsError::Invalid(e.to_string()))?,
            ),
        };
        let known: Vec<String> = config
            .get_table(&section)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default();
        if !known.iter().any(|k| k.eq_ignore_ascii_case(name)) {
            return Err(SettingsError::Invalid(format!(
                "the environment variable {var} overrides {} `{}`, which no configuration file defines (configured {section}: {}); fix the variable's name, or define it in config/default.toml",
                if section == "binds" { "bind" } else { "template" },
                name.to_ascii_lowercase(),
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )));
        }
    }
    Ok(())
}

/// Records where every leaf value of `table` came from, under dotted lowercase keys: the file
/// it was read from, or the environment variable that set it (named in its canonical form).
fn collect_origins(
    prefix: &str,
    table: &config::Map<String, config::Value>,
    out: &mut BTreeMap<String, String>,
) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.to_ascii_lowercase()
        } else {
            format!("{prefix}.{}", key.to_ascii_lowercase())
        };
        match &value.kind {
            config::ValueKind::Table(inner) => collect_origins(&path, inner, out),
            _ => {
                let origin = match value.origin() {
                    Some("the environment") => format!(
                        "environment variable ORCHESTRATE__{}",
                        path.to_ascii_uppercase().replace('.', "__")
                    ),
                    Some(file) => file.to_string(),
                    None => "unknown".to_string(),
                };
                out.insert(path, origin);
            }
        }
    }
}

/// PostgreSQL's largest `lock_timeout`, in milliseconds (`INT_MAX`).
const MAX_LOCK_TIMEOUT_MS: u64 = 2_147_483_647;

/// The most binds worked on at once: each is a thread and a database connection.
const MAX_PARALLELISM: usize = 256;
/// The largest `keep_connections`: more than any server's connection budget.
const MAX_KEEP_CONNECTIONS: usize = 10_000;
/// `keep_connections` by default: with `parallelism` 8 and the decider, 41 connections at
/// most, under PostgreSQL's default `max_connections = 100`.
pub const DEFAULT_KEEP_CONNECTIONS: usize = 32;

impl Settings {
    pub fn load(sources: &Sources) -> Result<Settings, SettingsError> {
        // Secrets in the files and variables are known before the parser can quote them.
        match &sources.environment {
            Some(vars) => vars.values().for_each(|v| register_secrets_in(v)),
            None => std::env::vars()
                .filter(|(k, _)| k.to_ascii_uppercase().starts_with("ORCHESTRATE"))
                .for_each(|(_, v)| register_secrets_in(&v)),
        }
        let mut builder = Config::builder();
        let default = sources.config_dir.join("default.toml");
        check_config_paths(sources, &default)?;
        let env_file = sources
            .env_name
            .as_deref()
            .filter(|e| !e.is_empty())
            .map(|e| sources.config_dir.join(format!("{e}.toml")));
        for file in [
            Some(&default),
            env_file.as_ref(),
            sources.extra_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if let Ok(text) = std::fs::read_to_string(file) {
                // Comment lines are not configuration: an example URL in a comment
                // (`postgres://user:password@host/db`) must not make "password" a secret
                // that every later message hides.
                let values: String = text
                    .lines()
                    .filter(|l| !l.trim_start().starts_with('#'))
                    .collect::<Vec<_>>()
                    .join("\n");
                register_secrets_in(&values);
            }
        }
        builder = builder.add_source(
            File::from(default.as_path())
                .format(FileFormat::Toml)
                .required(false),
        );
        if let Some(env_name) = sources.env_name.as_deref().filter(|e| !e.is_empty()) {
            let path = sources.config_dir.join(format!("{env_name}.toml"));
            if !path.is_file() {
                return Err(SettingsError::Invalid(format!(
                    "ORCHESTRATE_ENV is `{env_name}` but {} does not exist",
                    path.display()
                )));
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        if let Some(path) = &sources.extra_file {
            if !path.is_file() {
                return Err(SettingsError::MissingFile(path.clone()));
            }
            builder = builder.add_source(File::from(path.as_path()).format(FileFormat::Toml));
        }
        check_env_overrides(&builder, sources)?;
        let environment = Environment::with_prefix("ORCHESTRATE")
            .separator("__")
            .ignore_empty(true)
            .source(sources.environment.clone().map(|m| m.into_iter().collect()));
        builder = builder.add_source(environment);
        let config = builder
            .build()
            .map_err(|e| SettingsError::Invalid(without_source_lines(&e.to_string())))?;
        let mut origins = BTreeMap::new();
        if let Ok(table) = config::Source::collect(&config) {
            collect_origins("", &table, &mut origins);
        }
        let raw: RawSettings = config
            .try_deserialize()
            .map_err(|e| SettingsError::Invalid(e.to_string()))?;
        let mut settings = Self::validate(raw, &sources.project_root())?;
        // Files by their absolute paths, the same in `layers` and in each value's origin
        // (the config crate names a file relative to the working folder).
        let absolute = |p: &Path| {
            std::path::absolute(p)
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string()
        };
        let files: Vec<String> = [
            Some(&default),
            env_file.as_ref(),
            sources.extra_file.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter(|f| f.is_file())
        .map(|f| absolute(f))
        .collect();
        let variables: Vec<String> = match &sources.environment {
            Some(vars) => vars.keys().cloned().collect::<Vec<String>>(),
            None => std::env::vars().map(|(k, _)| k).collect::<Vec<String>>(),
        }
        .into_iter()
        .filter(|k| k.to_ascii_uppercase().starts_with("ORCHESTRATE__"))
        .collect();
        for origin in origins.values_mut() {
            match origin.strip_prefix("environment variable ") {
                // The variable as it is spelled in the environment.
                Some(canonical) => {
                    if let Some(k) = variables
                        .iter()
                        .find(|k| k.to_ascii_uppercase().replace('.', "__") == canonical)
                    {
                        *origin = format!("environment variable {k}");
                    }
                }
                None => *origin = absolute(Path::new(origin.as_str())),
            }
        }
        settings.origins = origins;
        settings.layers = files;
        settings.layers.push(if variables.is_empty() {
            "environment variables ORCHESTRATE__* (none set)".to_string()
        } else {
            format!(
                "environment variables ORCHESTRATE__* ({} set)",
                variables.len()
            )
        });
        Ok(settings)
    }

    fn validate(raw: RawSettings, root: &Path) -> Result<Settings, SettingsError> {
        if raw.lock_timeout_ms == Some(0) {
            return Err(SettingsError::Invalid(
                "`lock_timeout_ms = 0` would let PostgreSQL wait forever on a lock held by a prepared transaction (0 means no timeout there); give the longest wait you accept, such as 10000 (the default)".into(),
            ));
        }
        if let Some(ms) = raw.lock_timeout_ms.filter(|ms| *ms > MAX_LOCK_TIMEOUT_MS) {
            return Err(SettingsError::Invalid(format!(
                "`lock_timeout_ms = {ms}` is out of range: give 1 to {MAX_LOCK_TIMEOUT_MS} (PostgreSQL's largest lock_timeout, about 24 days); 10000 is the default"
            )));
        }
        if let Some(n) = raw.parallelism.filter(|n| *n > MAX_PARALLELISM) {
            return Err(SettingsError::Invalid(format!(
                "`parallelism = {n}` is out of range: give 1 to {MAX_PARALLELISM} (each unit is a thread and a database connection); 8 is the default"
            )));
        }
        if let Some(n) = raw.keep_connections.filter(|n| *n > MAX_KEEP_CONNECTIONS) {
            return Err(SettingsError::Invalid(format!(
                "`keep_connections = {n}` is out of range: give 0 to {MAX_KEEP_CONNECTIONS} (the widest batch, in PostgreSQL binds per server, whose participants keep their session for COMMIT PREPARED; 0 keeps none); {DEFAULT_KEEP_CONNECTIONS} is the default"
            )));
        }
        let mut binds = Vec::with_capacity(raw.binds.len());
        let mut templates = Vec::with_capacity(raw.templates.len());
        for (template, t) in &raw.templates {
            let expanded = expand_template(template, t, raw.lock_timeout_ms, root)?;
            templates.push(TemplateSettings {
                name: template.clone(),
                migrations: root.join(
                    t.migrations
                        .clone()
                        .unwrap_or_else(|| Path::new("migrations").join(template)),
                ),
                members: expanded.iter().map(|b| b.name.clone()).collect(),
            });
            binds.extend(expanded);
        }
        for (name, bind) in raw.binds {
            validate_bind_name(&name).map_err(SettingsError::Invalid)?;
            let endpoint = Endpoint::parse_in(&name, &bind.url, root)?;
            let migrations = root.join(
                bind.migrations
                    .unwrap_or_else(|| Path::new("migrations").join(&name)),
            );
            binds.push(BindSettings {
                name,
                endpoint,
                migrations,
                embedded: None,
            });
        }
        if binds.is_empty() {
            return Err(SettingsError::NoBinds);
        }
        binds.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = binds.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(SettingsError::Invalid(format!(
                "bind `{}` is configured twice (a template expands to the same name as another bind or template)",
                w[0].name
            )));
        }
        // `new --bind NAME` and the messages take NAME as a bind first: a bind must not carry
        // another template's name.
        if let Some(b) = binds.iter().find(|b| {
            templates
                .iter()
                .any(|t: &TemplateSettings| t.name == b.name)
        }) {
            return Err(SettingsError::Invalid(format!(
                "bind `{}` has the name of template `{}`; rename one of them (a template's binds are named by its `bind_name`)",
                b.name, b.name
            )));
        }
        let mut seen: HashMap<String, &BindSettings> = HashMap::new();
        for b in &binds {
            if let Some(first) = seen.insert(b.endpoint.database_identity(), b) {
                return Err(SettingsError::Invalid(format!(
                    "binds `{}` and `{}` name the same database ({} and {}); a batch would wait on its own lock. Give each bind its own database, or remove one of them",
                    first.name,
                    b.name,
                    first.endpoint.redacted(),
                    b.endpoint.redacted()
                )));
            }
        }
        if let Some(decider) = &raw.decider {
            if !binds.iter().any(|b| &b.name == decider) {
                return Err(SettingsError::Invalid(format!(
                    "`decider = \"{decider}\"` names no configured bind"
                )));
            }
        }
        let parallelism = raw.parallelism.unwrap_or(8);
        if parallelism == 0 {
            return Err(SettingsError::Invalid(
                "`parallelism` must be at least 1".into(),
            ));
        }
        let rollout = raw.rollout.unwrap_or_default();
        if rollout.wave_size == Some(0) {
            return Err(SettingsError::Invalid(
                "`[rollout] wave_size = 0`: give the most binds one wave may hold (at least 1), or leave it out to run every selected bind in one batch".into(),
            ));
        }
        for (key, names) in [("canary", &rollout.canary), ("together", &rollout.together)] {
            if let Some(name) = names.iter().find(|n| !binds.iter().any(|b| &b.name == *n)) {
                return Err(SettingsError::Invalid(format!(
                    "`[rollout] {key}` names `{name}`, which is no configured bind"
                )));
            }
        }
        if let Some(name) = rollout.canary.iter().find(|n| rollout.together.contains(n)) {
            return Err(SettingsError::Invalid(format!(
                "`[rollout]`: `{name}` is both a canary and in `together`; a bind runs in one wave"
            )));
        }
        Ok(Settings {
            root: root.to_path_buf(),
            parallelism,
            keep_connections: raw.keep_connections.unwrap_or(DEFAULT_KEEP_CONNECTIONS),
            protected: raw.protected.unwrap_or(false),
            rollout: RolloutSettings {
                wave_size: rollout.wave_size,
                canary: rollout.canary,
                together: rollout.together,
            },
            binds,
            templates,
            origins: BTreeMap::new(),
            layers: Vec::new(),
            decider: raw.decider,
            lock_timeout: Duration::from_millis(raw.lock_timeout_ms.unwrap_or(10_000)),
        })
    }

    pub fn bind(&self, name: &str) -> Option<&BindSettings> {
        self.binds.iter().find(|b| b.name == name)
    }

    pub fn template(&self, name: &str) -> Option<&TemplateSettings> {
        self.templates.iter().find(|t| t.name == name)
    }

    /// Where the value at `key` (dotted, lowercase) came from: a file, an environment
    /// variable, or `default`.
    pub fn origin(&self, key: &str) -> &str {
        self.origins.get(key).map_or("default", String::as_str)
    }
}

/// A TOML parse error without the lines of the file it quotes (`2 | url = "..."`): a line
/// that does not parse cannot be searched for its password, so it is not shown; the error
/// keeps the file, line and column, and what was expected there.
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            let quoted = t.starts_with('|')
                || t.split_once(" |")
                    .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()));
            !quoted && !t.is_empty()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sources(dir: &Path, env: &[(&str, &str)]) -> Sources {
        Sources {
            config_dir: dir.to_path_buf(),
            env_name: None,
            extra_file: None,
            environment: Some(
                env.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
        }
    }

    /// A project folder with an empty `config/`; returns (project, config dir).
    fn project() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("config");
        fs::create_dir_all(&config).unwrap();
        (tmp, config)
    }

    /// Review 18: a URL line that does not parse, with a space in its password, was quoted
    /// whole in the error (on `orchestrate serve`'s public page too).
    #[test]
    fn a_line_that_does_not_parse_is_not_quoted() {
        let (_tmp, d) = project();
        fs::write(
            d.join("default.toml"),
            "[binds.a]\nurl = \"postgres://u:se cret5SECRET@h/db\n",
        )
        .unwrap();
        let e = Settings::load(&sources(&d, &[])).unwrap_err().to_string();
        assert!(!e.contains("cret5SECRET"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn layers_files_and_environment() {
        let (tmp, d) = project();
        let root = tmp.path().canonicalize().unwrap();
        let d = root.join(d.file_name().unwrap());
        fs::write(
            d.join("default.toml"),
            "[binds.users]\nurl = \"sqlite://var/users.sqlite3\"\n[binds.billing]\nurl = \"sqlite://var/billing.sqlite3\"\n",
        )
        .unwrap();
        fs::write(
            d.join("staging.toml"),
            "[binds.users]\nurl = \"postgres://app:pw@staging/users\"\n",
        )
        .unwrap();
        let mut s = sources(&d, &[]);
        let settings = Settings::load(&s).unwrap();
        assert_eq!(settings.binds.len(), 2);
        assert_eq!(settings.root, root);
        assert_eq!(
            settings.bind("users").unwrap().migrations,
            root.join("migrations/users")
        );
        s.env_name = Some("staging".into());
        let settings = Settings::load(&s).unwrap();
        assert_eq!(
            settings.bind("users").unwrap().endpoint.redacted(),
            "postgres://app:***@staging/users"
        );
        let s = Sources {
            environment: Some(
                [
                    (
                        "ORCHESTRATE__BINDS__BILLING__URL".to_string(),
                        "postgres://h/billing".to_string(),
                    ),
                    (
                        "ORCHESTRATE__LOCK_TIMEOUT_MS".to_string(),
                        "250".to_string(),
                    ),
                    ("ORCHESTRATE_ENV".to_string(), "ignored-here".to_string()),
                ]
                .into_iter()
                .collect(),
            ),
            ..s
        };
        let settings = Settings::load(&s).unwrap();
        assert_eq!(
            settings.bind("billing").unwrap().endpoint.redacted(),
            "postgres://h/billing"
        );
        assert_eq!(settings.lock_timeout, Duration::from_millis(250));
    }

    #[test]
    fn templates_expand_over_names() {
        let (tmp, d) = project();
        fs::write(
            d.join("default.toml"),
            "[templates.tenant]\nurl = \"sqlite://var/{name}.sqlite3\"\nnames = [\"acme\", \"globex\"]\n[binds.main]\nurl = \"sqlite://var/main.sqlite3\"\n",
        )
        .unwrap();
        let settings = Settings::load(&sources(&d, &[])).unwrap();
        let names: Vec<_> = settings.binds.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["main", "tenant_acme", "tenant_globex"]);
        let acme = settings.bind("tenant_acme").unwrap();
        assert_eq!(acme.migrations, tmp.path().join("migrations/tenant"));
        assert_eq!(
            acme.endpoint.redacted(),
            format!("sqlite://{}", tmp.path().join("var/acme.sqlite3").display())
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_project_root() {
        let (tmp, d) = project();
        let root = tmp.path();
        fs::write(
            d.join("default.toml"),
            "[binds.a]\nurl = \"sqlite://var/a.sqlite3\"\n\
             [binds.b]\nurl = \"sqlite:///abs/b.sqlite3\"\nmigrations = \"db/b\"\n\
             [binds.c]\nurl = \"sqlite://c.sqlite3\"\nmigrations = \"/abs/migrations/c\"\n\
             [templates.t]\nurl = \"sqlite://var/t_{name}.sqlite3\"\nnames = [\"x\"]\n\
             [templates.u]\nurl = \"sqlite://var/u_{name}.sqlite3\"\nnames = [\"y\"]\nmigrations = \"shared\"\n",
        )
        .unwrap();
        // The working directory plays no part: the root is the config folder's parent.
        let settings = Settings::load(&sources(&d, &[])).unwrap();
        let path = |b: &str| {
            settings
                .bind(b)
                .unwrap()
                .endpoint
                .sqlite_path()
                .unwrap()
                .clone()
        };
        let migrations = |b: &str| settings.bind(b).unwrap().migrations.clone();
        assert_eq!(path("a"), root.join("var/a.sqlite3"));
        assert_eq!(path("b"), PathBuf::from("/abs/b.sqlite3"));
        assert_eq!(path("c"), root.join("c.sqlite3"));
        assert_eq!(path("t_x"), root.join("var/t_x.sqlite3"));
        assert_eq!(migrations("a"), root.join("migrations/a"));
        assert_eq!(migrations("b"), root.join("db/b"));
        assert_eq!(migrations("c"), PathBuf::from("/abs/migrations/c"));
        assert_eq!(migrations("t_x"), root.join("migrations/t"));
        assert_eq!(migrations("u_y"), root.join("shared"));
        assert_eq!(
            settings.bind("a").unwrap().endpoint.redacted(),
            format!("sqlite://{}", root.join("var/a.sqlite3").display())
        );

        // `--config FILE` without a config folder: the folder holding FILE.
        let elsewhere = root.join("deploy");
        fs::create_dir_all(&elsewhere).unwrap();
        let file = elsewhere.join("prod.toml");
        fs::write(&file, "[binds.a]\nurl = \"sqlite://var/a.sqlite3\"\n").unwrap();
        let s = Sources {
            extra_file: Some(file.clone()),
            ..sources(&root.join("no-such-config"), &[])
        };
        assert_eq!(s.project_root(), elsewhere);
        let settings = Settings::load(&s).unwrap();
        assert_eq!(
            settings.bind("a").unwrap().endpoint.sqlite_path().unwrap(),
            &elsewhere.join("var/a.sqlite3")
        );
        // With the config folder present, FILE's own folder does not matter.
        let s = Sources {
            extra_file: Some(file),
            ..sources(&d, &[])
        };
        assert_eq!(s.project_root(), root);

        // A relative config folder is made absolute against the working directory.
        let s = sources(Path::new("config"), &[]);
        assert_eq!(s.project_root(), std::env::current_dir().unwrap());
        let s = sources(Path::new("proj/config"), &[]);
        assert_eq!(
            s.project_root(),
            std::env::current_dir().unwrap().join("proj")
        );
    }

    #[test]
    fn refuses_what_cannot_work() {
        let (tmp, d) = project();
        fs::create_dir_all(tmp.path().join("var")).unwrap();
        let cases = [
            ("lock_timeout_ms = 0\n[binds.a]\nurl = \"sqlite://a\"\n", "lock_timeout_ms = 0"),
            ("keep_connections = 10001\n[binds.a]\nurl = \"sqlite://a\"\n", "give 0 to 10000"),
            ("keep_connections = -1\n[binds.a]\nurl = \"sqlite://a\"\n", "keep_connections"),
            (
                "lock_timeout_ms = 2147483648\n[binds.a]\nurl = \"sqlite://a\"\n",
                "give 1 to 2147483647",
            ),
            ("parallelism = 20000\n[binds.a]\nurl = \"sqlite://a\"\n", "give 1 to 256"),
            ("parallelism = 4294967296\n[binds.a]\nurl = \"sqlite://a\"\n", "give 1 to 256"),
            ("[binds.a]\nurl = \"sqlite://:memory:\"\n", "in-memory"),
            ("[binds.a]\nurl = \"sqlite::memory:\"\n", "in-memory"),
            ("[binds.a]\nurl = \"sqlite://file::memory:\"\n", "in-memory"),
            ("[binds.a]\nurl = \"sqlite://file:a?mode=memory&cache=shared\"\n", "in-memory"),
            ("[binds.a]\nurl = \"sqlite://var/a.db?mode=memory\"\n", "in-memory"),
            ("[binds.a]\nurl = \"file::memory:\"\n", "in-memory"),
            ("[binds.a]\nurl = \":memory:\"\n", "in-memory"),
            ("[binds.a]\nurl = \"sqlite://file:var/a.db\"\n", "URI filenames"),
            // Two binds, one database.
            (
                "[binds.a]\nurl = \"postgres://u@DB.example/app\"\n[binds.b]\nurl = \"postgres://v:pw@db.example:5432/app\"\n",
                "binds `a` and `b` name the same database",
            ),
            (
                "[binds.a]\nurl = \"postgresql://localhost/app\"\n[binds.b]\nurl = \"postgres://127.0.0.1:5432/app?sslmode=disable\"\n",
                "the same database",
            ),
            (
                "[binds.a]\nurl = \"postgres://h/x?dbname=app\"\n[binds.b]\nurl = \"postgres://h/app\"\n",
                "the same database",
            ),
            (
                "[binds.a]\nurl = \"mysql://u@h/shop\"\n[binds.b]\nurl = \"mysql://u@H:3306/shop\"\n",
                "the same database",
            ),
            (
                "[binds.a]\nurl = \"sqlite://var/a.sqlite3\"\n[binds.b]\nurl = \"sqlite://var/../var/./a.sqlite3\"\n",
                "the same database",
            ),
            (
                &format!(
                    "[binds.a]\nurl = \"sqlite://var/a.sqlite3\"\n[binds.b]\nurl = \"sqlite://{}\"\n",
                    tmp.path().join("var/a.sqlite3").display()
                ),
                "the same database",
            ),
            (
                "[binds.a]\nurl = \"sqlite://nofolder/../x/a.sqlite3\"\n[binds.b]\nurl = \"sqlite://x/a.sqlite3\"\n",
                "the same database",
            ),
            // Templates count: against a bind, and against each other.
            (
                "[binds.main]\nurl = \"postgres://h/acme\"\n[templates.t]\nurl = \"postgres://h/{name}\"\nnames = [\"acme\"]\n",
                "binds `main` and `t_acme` name the same database",
            ),
            (
                "[templates.t]\nurl = \"sqlite://var/{name}.db\"\nnames = [\"a\"]\n[templates.u]\nurl = \"sqlite://var/{name}.db\"\nnames = [\"a\"]\n",
                "the same database",
            ),
            (
                "[templates.t]\nurl = \"sqlite://var/{name}.db\"\nnames = [\"a\", \"a\"]\n",
                "twice",
            ),
            (
                "[templates.t]\nurl = \"sqlite://var/1{name}.db\"\nnames = [\"a_b\"]\n[templates.t_a]\nurl = \"sqlite://var/2{name}.db\"\nnames = [\"b\"]\n",
                "`t_a_b` is configured twice",
            ),
        ];
        for (text, needle) in cases {
            fs::write(d.join("default.toml"), text).unwrap();
            let err = Settings::load(&sources(&d, &[])).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
            assert!(!err.contains(":pw@"), "{err}");
        }
        // Distinct databases are fine: another port, host, database or file.
        for text in [
            "[binds.a]\nurl = \"postgres://h/app\"\n[binds.b]\nurl = \"postgres://h:5433/app\"\n",
            "[binds.a]\nurl = \"postgres://h/app\"\n[binds.b]\nurl = \"postgres://h2/app\"\n",
            "[binds.a]\nurl = \"postgres://h/app\"\n[binds.b]\nurl = \"postgres://h/app2\"\n",
            "[binds.a]\nurl = \"postgres://h/app\"\n[binds.b]\nurl = \"mysql://h/app\"\n",
            "[binds.a]\nurl = \"sqlite://var/a.sqlite3\"\n[binds.b]\nurl = \"sqlite://var/b.sqlite3\"\n",
            "lock_timeout_ms = 1\n[binds.a]\nurl = \"sqlite://var/a.sqlite3\"\n",
        ] {
            fs::write(d.join("default.toml"), text).unwrap();
            Settings::load(&sources(&d, &[])).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        }
    }

    #[test]
    fn parser_errors_show_no_password() {
        let (_tmp, d) = project();
        let secret = "Hunter2-xyz";
        let cases = [
            // A TOML syntax error quotes the line.
            format!("[binds.a]\nurl = \"postgres://u:{secret}@h/db\" x\n"),
            format!("[binds.a]\nurl = \"postgres://u:{secret}@h/db\nmigrations = 1\n"),
            format!("[binds.a]\nurl = \"postgres://h/db?sslmode=x&PassWord={secret}\" ,\n"),
            format!("[binds.a]\nurl = \"mysql://u:p/{secret}@h/db\" x\n"),
            // A wrong type quotes the value.
            format!("[binds]\na = \"postgres://u:{secret}@h/db\"\n"),
        ];
        for text in &cases {
            fs::write(d.join("default.toml"), text).unwrap();
            let err = Settings::load(&sources(&d, &[])).unwrap_err().to_string();
            assert!(!err.contains(secret), "{text:?}: {err}");
            assert!(!err.contains("Hunter2"), "{text:?}: {err}");
        }
        // An environment variable without its `__URL` suffix.
        fs::write(d.join("default.toml"), "").unwrap();
        for value in [
            format!("postgres://u:{secret}@h/db"),
            format!("postgres://u:p%zz{secret}@h/db"),
            format!("mysql://h/db?password={secret}"),
        ] {
            let err = Settings::load(&sources(&d, &[("ORCHESTRATE__BINDS__X", &value)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("binds"), "{err}");
            assert!(!err.contains(secret), "{value}: {err}");
        }
    }

    #[test]
    fn rejects_bad_configuration() {
        let (_tmp, d) = project();
        let cases = [
            ("[binds.users]\nurl = \"sqlite://a\"\ntypo = 1\n", "typo"),
            ("[binds.Users]\nurl = \"sqlite://a\"\n", "Users"),
            ("[binds.users]\nurl = \"mysql2://x\"\n", "mysql2"),
            ("[binds.users\nurl = 1\n", "default.toml"),
            (
                "colour = \"blue\"\n[binds.users]\nurl = \"sqlite://a\"\n",
                "colour",
            ),
            (
                "decider = \"nope\"\n[binds.users]\nurl = \"sqlite://a\"\n",
                "nope",
            ),
            ("", "no binds"),
            ("[templates.t]\nurl = \"sqlite://{name}.db\"\n", "exactly one of"),
            ("[templates.t]\nurl = \"sqlite://x.db\"\nnames = [\"a\"]\n", "{name}"),
            ("[templates.t]\nurl = \"sqlite://{name}.db\"\nnames = [\"A-1\"]\n", "A-1"),
            ("[binds.t_a]\nurl = \"sqlite://a\"\n[templates.t]\nurl = \"sqlite://{name}.db\"\nnames = [\"a\"]\n", "twice"),
        ];
        for (text, needle) in cases {
            fs::write(d.join("default.toml"), text).unwrap();
            let err = Settings::load(&sources(&d, &[])).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
