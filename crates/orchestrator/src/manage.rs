//! Commands that write files or bookkeeping but run no migration: `init`, `new`, `stamp`,
//! `resolve`.

use std::fs;
use std::path::Path;
use std::time::SystemTime;

use orchestrate_core::{current, Chain, Direction, MigrationFile, Step, Target, Version};
use orchestrate_driver::{
    Backend, BindConnection, BindState, Bookkeeping, DriverError, Mark, Mysql, Postgres,
};

use crate::coordinator::new_batch_id;
use crate::exit;
use crate::settings::{BindSettings, Settings};

/// A command's failure: its exit code and message.
pub type Failure = (i32, String);

fn invalid(message: impl Into<String>) -> Failure {
    (exit::INVALID, message.into())
}

const STARTER_CONFIG: &str = r#"# orchestrate configuration. Later layers override earlier ones:
#   config/default.toml, config/$ORCHESTRATE_ENV.toml, --config FILE, then environment
#   variables such as ORCHESTRATE__BINDS__MAIN__URL=postgres://user:password@host/db
lock_timeout_ms = 10000

# One table per database ("bind"); names are lowercase letters, digits and `_`.
[binds.main]
url = "sqlite://var/main.sqlite3"
# migrations = "migrations/main"   # the default; relative paths start at the folder holding config/
"#;

/// `orchestrate init`: a starter `config/default.toml` and `migrations/main/`.
pub fn init(config_dir: &Path) -> Result<String, Failure> {
    let config = config_dir.join("default.toml");
    if config.exists() {
        return Err(invalid(format!(
            "{} already exists; `init` only starts new projects and changes nothing here",
            config.display()
        )));
    }
    // Next to the config folder, where the configuration's relative paths resolve.
    let root = crate::settings::Sources {
        config_dir: config_dir.to_path_buf(),
        ..Default::default()
    }
    .project_root();
    let migrations = root.join("migrations").join("main");
    let io =
        |what: &Path, e: std::io::Error| invalid(format!("cannot create {}: {e}", what.display()));
    fs::create_dir_all(config_dir).map_err(|e| io(config_dir, e))?;
    fs::write(&config, STARTER_CONFIG).map_err(|e| io(&config, e))?;
    fs::create_dir_all(&migrations).map_err(|e| io(&migrations, e))?;
    Ok(format!(
        "created {} (one SQLite bind, `main`) and {}/\nnext: orchestrate new --bind main \"create users\", write its up.sql and down.sql, then orchestrate upgrade --all-binds",
        config.display(),
        migrations.display()
    ))
}

/// The description of a migration as a folder-name slug: `Create users!` -> `create_users`.
fn slug(description: &str) -> String {
    let mut out = String::new();
    for c in description.trim().chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_string()
}

/// Adds one to a string of digits.
fn increment(digits: &str) -> String {
    let mut bytes: Vec<u8> = digits.bytes().collect();
    for b in bytes.iter_mut().rev() {
        if *b == b'9' {
            *b = b'0';
        } else {
            *b += 1;
            return String::from_utf8(bytes).expect("digits");
        }
    }
    format!("1{}", String::from_utf8(bytes).expect("digits"))
}

/// `orchestrate new --bind NAME DESCRIPTION`: the next migration folder, versioned by the UTC
/// time in diesel's style (`2026-11-24-223000`), always after the chain's head.
pub fn new_migration(dir: &Path, description: &str) -> Result<String, Failure> {
    let name = slug(description);
    if name.is_empty() {
        return Err(invalid(
            "the description needs at least one letter or digit, such as \"create users\"",
        ));
    }
    // The newest version among the folder names; folders still being written (an empty
    // up.sql) do not stop the next one from being created.
    let head = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (version, _) = name.split_once('_')?;
            Version::parse(version).ok()
        })
        .max();
    let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    // 2026-11-24T22:30:00Z -> 2026-11-24-223000
    let (date, time) = now.trim_end_matches('Z').split_once('T').expect("rfc3339");
    let mut version_text = format!("{date}-{}", time.replace(':', ""));
    if let Some(head) = head {
        let now_version = Version::parse(&version_text).expect("digits and dashes");
        if now_version <= head {
            let next = increment(head.as_str());
            // Keep diesel's dashed style for 14-digit timestamps.
            version_text = if next.len() == 14 {
                format!(
                    "{}-{}-{}-{}",
                    &next[..4],
                    &next[4..6],
                    &next[6..8],
                    &next[8..]
                )
            } else {
                next
            };
        }
    }
    let folder = dir.join(format!("{version_text}_{name}"));
    if folder.exists() {
        return Err(invalid(format!("{} already exists", folder.display())));
    }
    let io = |e: std::io::Error| invalid(format!("cannot create {}: {e}", folder.display()));
    fs::create_dir_all(&folder).map_err(io)?;
    fs::write(folder.join("up.sql"), "").map_err(io)?;
    fs::write(folder.join("down.sql"), "").map_err(io)?;
    Ok(format!(
        "created {}/up.sql and down.sql; write the migration's SQL in up.sql (an empty up.sql is refused) and how to undo it in down.sql",
        folder.display()
    ))
}

/// `orchestrate stamp --bind NAME REV`: records the bind as being at REV (`base`: nothing
/// applied) without running any migration, in one transaction under the migration lock.
pub fn stamp(settings: &Settings, bind: &BindSettings, revision: &str) -> Result<String, Failure> {
    let chain = bind.chain().map_err(|e| invalid(e.to_string()))?;
    let keep_up_to = stamp_target(&chain, revision)?;
    let want: Vec<&MigrationFile> = chain
        .migrations
        .iter()
        .filter(|m| keep_up_to.as_ref().is_some_and(|k| &m.version <= k))
        .collect();
    let unreachable = |e: DriverError| invalid(e.to_string());
    let mut conn = BindConnection::connect(&bind.endpoint, true, settings.lock_timeout)
        .map_err(unreachable)?;
    refuse_unsettled(bind, &conn.read_state().map_err(unreachable)?)?;
    let batch = format!("stamp-{}", new_batch_id());
    let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    match record_stamp(&mut conn, &want, &batch, &at) {
        Ok((added, removed)) => {
            let now_at = current(&conn.read_state().map_err(unreachable)?.applied)
                .map(|a| a.version.to_string())
                .unwrap_or_else(|| "base".into());
            Ok(format!(
                "bind `{}` is now recorded at {now_at}: {added} migration(s) marked applied, {removed} marked not applied; no migration was run",
                bind.name
            ))
        }
        Err(e) => {
            conn.rollback();
            Err(invalid(format!("{e}; nothing was changed")))
        }
    }
}

/// The newest version `stamp` keeps recorded (`None`: base), resolved exactly as upgrade
/// resolves a revision, against the whole chain.
fn stamp_target(chain: &Chain, revision: &str) -> Result<Option<Version>, Failure> {
    let target: Target = revision
        .parse()
        .map_err(|e| invalid(format!("revision `{revision}`: {e}")))?;
    match &target {
        Target::Base => Ok(None),
        Target::Revision(_) => {
            let plan = orchestrate_core::plan_upgrade(
                chain,
                &[],
                &target,
                orchestrate_core::Allow::default(),
            );
            match plan {
                Ok(p) => Ok(p.steps.last().map(|s| s.version.clone())),
                Err(orchestrate_core::PlanError::NonTransactional { .. }) => {
                    // Stamping runs nothing, so a migration that cannot run in a
                    // transaction is no obstacle: find the revision by name.
                    Ok(chain
                        .migrations
                        .iter()
                        .find(|m| m.version.as_str() == revision || m.name == revision)
                        .map(|m| m.version.clone()))
                }
                Err(e) => Err(invalid(e.to_string())),
            }
        }
        other => Err(invalid(format!(
            "`{other}` is not a revision to stamp; give a version, a folder name, a unique prefix, or `base`"
        ))),
    }
}

/// A bind with a batch in doubt or a MySQL mark is not stamped: exit 3.
fn refuse_unsettled(bind: &BindSettings, state: &BindState) -> Result<(), Failure> {
    if let Some(p) = state.in_doubt.first() {
        return Err((
            exit::ATTENTION,
            format!(
                "bind `{}` has a batch in doubt ({}); run `orchestrate recover` first",
                bind.name, p.gid
            ),
        ));
    }
    if let Some(m) = state.marks.first() {
        return Err((
            exit::ATTENTION,
            format!(
                "bind `{}`: {}",
                bind.name,
                m.describe().replace("<bind>", &bind.name)
            ),
        ));
    }
    Ok(())
}

/// Records, in one transaction under the bind's lock, every wanted migration as applied and
/// every other as not applied, running nothing. Returns how many were added and removed.
fn record_stamp(
    conn: &mut BindConnection,
    want: &[&MigrationFile],
    batch: &str,
    at: &str,
) -> Result<(usize, usize), DriverError> {
    conn.begin_batch()?;
    let applied = conn.read_state()?.applied;
    let is_applied = |v: &Version| applied.iter().any(|a| &a.version == v);
    let mut added = 0;
    for m in want.iter().filter(|m| !is_applied(&m.version)) {
        let step = Step::record_only(
            m.version.clone(),
            m.name.clone(),
            Some(m.checksum.clone()),
            m.down_sql.clone(),
        );
        conn.record_step(batch, Direction::Up, "stamp", &step, at)?;
        added += 1;
    }
    let mut removed = 0;
    for a in applied
        .iter()
        .filter(|a| !want.iter().any(|m| m.version == a.version))
    {
        let step = Step::record_only(
            a.version.clone(),
            a.name.clone().unwrap_or_else(|| a.version.to_string()),
            a.checksum.clone(),
            None,
        );
        conn.record_step(batch, Direction::Down, "unstamp", &step, at)?;
        removed += 1;
    }
    conn.commit()?;
    Ok((added, removed))
}

/// `orchestrate resolve`: settles a MySQL migration that was interrupted part-way, as the
/// person who looked at the database says: `applied` (all its changes are there) or not (none
/// are). Records that, clears the mark, and leaves the rest of its batch to `recover`.
pub fn resolve(
    settings: &Settings,
    bind: &BindSettings,
    version: &str,
    applied: bool,
) -> Result<String, Failure> {
    let unreachable = |e: DriverError| invalid(e.to_string());
    match bind.endpoint.backend {
        Backend::Mysql => {
            let mut conn =
                Mysql::connect(&bind.endpoint, settings.lock_timeout).map_err(unreachable)?;
            conn.begin_nonatomic().map_err(unreachable)?;
            resolve_marked(&mut conn, bind, version, applied, false)
        }
        Backend::Postgres => {
            let mut conn =
                Postgres::connect(&bind.endpoint, settings.lock_timeout).map_err(unreachable)?;
            conn.begin_outside().map_err(unreachable)?;
            let done = resolve_marked(&mut conn, bind, version, applied, true);
            conn.end_outside();
            done
        }
        Backend::Sqlite => Err(invalid(format!(
            "bind `{}` is sqlite: its batches are atomic and never leave a migration half done; `resolve` is for MySQL binds and for PostgreSQL migrations run outside a transaction. Run `orchestrate recover` for batches in doubt",
            bind.name
        ))),
    }
}

/// A bind whose interrupted migrations are marked in `orchestrate_in_progress`: MySQL, and
/// PostgreSQL migrations run outside a transaction. Its migration lock is held.
trait Marked: Bookkeeping {
    fn marks(&mut self) -> Result<Vec<Mark>, DriverError>;
    fn clear_mark(&mut self, mark: &Mark) -> Result<(), DriverError>;
    fn finish_marked_step(
        &mut self,
        batch_id: &str,
        direction: Direction,
        label: &str,
        step: &Step,
        mark: &Mark,
        at: &str,
    ) -> Result<(), DriverError>;
}

macro_rules! marked {
    ($t:ty) => {
        impl Marked for $t {
            fn marks(&mut self) -> Result<Vec<Mark>, DriverError> {
                <$t>::marks(self)
            }
            fn clear_mark(&mut self, mark: &Mark) -> Result<(), DriverError> {
                <$t>::clear_mark(self, mark)
            }
            fn finish_marked_step(
                &mut self,
                batch_id: &str,
                direction: Direction,
                label: &str,
                step: &Step,
                mark: &Mark,
                at: &str,
            ) -> Result<(), DriverError> {
                <$t>::finish_marked_step(self, batch_id, direction, label, step, mark, at)
            }
        }
    };
}
marked!(Mysql);
marked!(Postgres);

fn resolve_marked(
    conn: &mut dyn Marked,
    bind: &BindSettings,
    version: &str,
    applied: bool,
    outside: bool,
) -> Result<String, Failure> {
    let unreachable = |e: DriverError| invalid(e.to_string());
    let marks = conn.marks().map_err(unreachable)?;
    let interrupted: Vec<_> = marks.iter().filter(|m| !m.is_batch()).collect();
    let Some(mark) = interrupted
        .iter()
        .find(|m| m.version == version || m.name == version)
    else {
        let known: Vec<String> = interrupted
            .iter()
            .map(|m| format!("{} ({})", m.version, m.name))
            .collect();
        return Err(invalid(format!(
            "bind `{}` has no interrupted migration `{version}`; {}",
            bind.name,
            if known.is_empty() {
                "it has none at all (see `orchestrate status`)".to_string()
            } else {
                format!("interrupted here: {}", known.join(", "))
            }
        )));
    };
    let file = bind
        .chain()
        .ok()
        .and_then(|c| c.find(&Version::from_stored(&mark.version)).cloned());
    let step = Step::record_only(
        Version::from_stored(&mark.version),
        mark.name.clone(),
        file.as_ref().map(|f| f.checksum.clone()),
        file.as_ref().and_then(|f| f.down_sql.clone()),
    );
    // What the person's answer means for the version tables.
    let record = mark
        .direction()
        .filter(|d| d.leaves_it_applied() == applied)
        .map(|d| d.recorded_as());
    let is_applied = conn
        .read_applied()
        .map_err(unreachable)?
        .applied
        .iter()
        .any(|a| a.version.as_str() == mark.version);
    let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let done = match record {
        Some((Direction::Up, _)) if is_applied => conn.clear_mark(mark),
        Some((Direction::Down, _)) if !is_applied => conn.clear_mark(mark),
        Some((direction, label)) => {
            conn.finish_marked_step(&mark.batch_id, direction, label, &step, mark, &at)
        }
        None => conn.clear_mark(mark),
    };
    done.map_err(unreachable)?;
    if outside {
        return Ok(format!(
            "bind `{}`: {} is recorded as {}. Run the same `orchestrate upgrade --allow-non-atomic` again to go on from there, then `orchestrate status`",
            bind.name,
            mark.name,
            if applied { "applied" } else { "not applied" },
        ));
    }
    Ok(format!(
        "bind `{}`: {} is recorded as {}. Now run `orchestrate recover` to settle the rest of batch {} (kept if it was decided; otherwise its migrations on this bind recorded as applied are reverted, newest first), then `orchestrate status`",
        bind.name,
        mark.name,
        if applied { "applied" } else { "not applied" },
        mark.batch_id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_increments() {
        assert_eq!(slug("Create users!"), "create_users");
        assert_eq!(slug("  add  e-mail index "), "add_e_mail_index");
        assert_eq!(slug("!!"), "");
        assert_eq!(slug("ünïcode Tåble"), "ünïcode_tåble");
        assert_eq!(slug("名前"), "名前");
        assert_eq!(increment("19"), "20");
        assert_eq!(increment("99"), "100");
        assert_eq!(increment("20261124223000"), "20261124223001");
    }
}
