//! `upgrade` / `downgrade` as a rollout: the waves [`super::migrate::check_batch`] planned and
//! checked, run one after the other, each an atomic batch; the first that does not commit
//! stops the rollout. The rollout's record ([`crate::rollout::RolloutRecord`]) says which
//! waves committed, for `status` and for the run that resumes it.

use std::time::Instant;

use orchestrate_core::Direction;
use serde_json::json;

use super::migrate::{
    batch_json, migration_counts, print_guarantees, print_outcome, run_one, summarise, verdict,
    wave_works, WaveSettings,
};
use super::output::{Output, Refusal};
use crate::cli::MigrateArgs;
use crate::coordinator::{new_batch_id, BindWork};
use crate::exit;
use crate::rollout::{shown, RolloutRecord, RolloutState, WaveRecord, WaveState};
use crate::settings::Settings;
use crate::signals;

/// One rollout command.
pub(crate) struct Rollout<'a> {
    pub settings: &'a Settings,
    pub direction: Direction,
    pub args: &'a MigrateArgs,
    pub waves: &'a WaveSettings,
}

impl Rollout<'_> {
    /// What makes two runs the same rollout: direction, selection, targets, wave settings,
    /// and the databases the configuration names (another environment is another rollout);
    /// those only as a hash, so that the record names no server.
    pub fn key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let a = self.args;
        let mut binds = a.binds.clone();
        binds.sort();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for b in &self.settings.binds {
            (&b.name, b.endpoint.database_identity()).hash(&mut hasher);
        }
        format!(
            "{} all={} binds={:?} target={:?} targets={:?} size={:?} canary={:?} together={:?} databases={:016x}",
            self.direction,
            a.all_binds,
            binds,
            a.target,
            a.targets,
            self.waves.size,
            self.waves.canary,
            self.waves.together,
            hasher.finish()
        )
    }

    /// With nothing left to do: the same rollout's unfinished record is closed (every bind
    /// of it is at its target, whoever brought it there).
    pub fn close_if_done(&self, o: &mut Output) {
        let Ok(Some(mut record)) = RolloutRecord::load(&self.settings.root) else {
            return;
        };
        if record.key != self.key() || record.state == RolloutState::Committed {
            return;
        }
        for w in &mut record.waves {
            w.state = WaveState::Committed;
            w.error = None;
        }
        record.state = RolloutState::Committed;
        self.save(&mut record, o);
        if !self.args.json {
            o.line(format!(
                "rollout {}: every bind of it is at its target; its record is closed",
                record.id
            ));
        }
    }

    /// The command as the user typed it, to be typed again to resume.
    fn command(&self) -> String {
        let words: Vec<String> = std::env::args()
            .skip(1)
            .map(|w| {
                if w.is_empty() || w.contains(|c: char| c.is_whitespace() || c == '\'') {
                    format!("'{}'", w.replace('\'', "'\\''"))
                } else {
                    w
                }
            })
            .collect();
        format!("orchestrate {}", words.join(" "))
    }

    /// The record this run continues: the last one, when it is the same command and did not
    /// finish (its committed waves are kept), else a new one.
    fn start(
        &self,
        works: &[BindWork],
        waves: &[Vec<usize>],
        o: &mut Output,
    ) -> Result<(RolloutRecord, usize), String> {
        let root = &self.settings.root;
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let key = self.key();
        let mut record = match RolloutRecord::load(root)? {
            Some(r) if r.key != key && r.state != RolloutState::Committed => {
                // One record per project: another command's (or environment's) unfinished
                // rollout is replaced, and said so. Its databases keep what it did.
                o.note(format!(
                    "note: the record of rollout {} (`{}`, {} of {} wave(s) committed, not finished) is replaced by this one; the binds keep what it committed",
                    r.id,
                    r.command,
                    r.committed().count(),
                    r.waves.len()
                ));
                self.new_record(now)
            }
            Some(mut r) if r.key == key && r.state != RolloutState::Committed => {
                // A wave the last run left running or in doubt was settled since (by
                // `recover`): committed when none of its binds has anything left to do, else
                // rolled back, and planned again below with what is pending.
                let pending: Vec<&str> = works.iter().map(|w| w.endpoint.bind.as_str()).collect();
                for w in &mut r.waves {
                    if matches!(w.state, WaveState::Running | WaveState::NeedsAttention)
                        && !w.binds.iter().any(|b| pending.contains(&b.as_str()))
                    {
                        w.state = WaveState::Committed;
                        w.error = None;
                    }
                }
                r.waves.retain(|w| w.state == WaveState::Committed);
                r.state = RolloutState::Running;
                r
            }
            _ => self.new_record(now),
        };
        let resumed = record.waves.len();
        for wave in waves {
            record.waves.push(WaveRecord {
                number: record.waves.len() + 1,
                binds: wave
                    .iter()
                    .map(|&i| works[i].endpoint.bind.clone())
                    .collect(),
                state: WaveState::Pending,
                batch_id: None,
                error: None,
                max_lock_hold_ms: None,
                elapsed_ms: None,
            });
        }
        record.save(root)?;
        Ok((record, resumed))
    }

    fn new_record(&self, now: String) -> RolloutRecord {
        RolloutRecord {
            id: format!("rollout-{}", new_batch_id()),
            key: self.key(),
            command: self.command(),
            started_at: now.clone(),
            updated_at: now,
            state: RolloutState::Running,
            waves: Vec::new(),
        }
    }

    /// Runs every wave in turn; stops at the first that does not commit.
    pub fn run(&self, works: &[BindWork], waves: &[Vec<usize>], o: &mut Output) -> i32 {
        let (mut record, resumed) = match self.start(works, waves, o) {
            Ok(started) => started,
            Err(e) => return o.refuse(Refusal::invalid(vec![(super::Reason::Rollout, e)])),
        };
        let total = record.waves.len();
        if !self.args.json {
            if resumed > 0 {
                let binds: usize = record.committed().map(|w| w.binds.len()).sum();
                o.line(format!(
                    "resuming rollout {}: {resumed} wave(s) committed before ({binds} bind(s)); {} to go",
                    record.id,
                    waves.len()
                ));
            } else {
                o.line(format!(
                    "rollout {}: {} bind(s) in {} wave(s){}{}",
                    record.id,
                    works.len(),
                    waves.len(),
                    self.waves
                        .size
                        .map(|n| format!(" of at most {n}"))
                        .unwrap_or_default(),
                    {
                        let canaries: Vec<String> = works
                            .iter()
                            .map(|w| w.endpoint.bind.clone())
                            .filter(|b| self.waves.canary.contains(b))
                            .collect();
                        if canaries.is_empty() {
                            String::new()
                        } else {
                            format!(", canaries first ({})", shown(&canaries))
                        }
                    }
                ));
            }
        }
        let mut waves_json = Vec::new();
        let mut code = exit::OK;
        let mut stop_error: Option<String> = None;
        for (k, wave) in waves.iter().enumerate() {
            let at = resumed + k;
            if signals::interrupted() {
                stop_error = Some("interrupted between waves".into());
                code = exit::FAILED;
                break;
            }
            record.waves[at].state = WaveState::Running;
            self.save(&mut record, o);
            let wave_works = wave_works(works, wave);
            if !self.args.json {
                o.line(format!(
                    "wave {} of {total}: {} bind(s) ({})",
                    at + 1,
                    wave.len(),
                    shown(&record.waves[at].binds)
                ));
                print_guarantees(self.settings, &wave_works, o);
            }
            let migrations = migration_counts(&wave_works);
            let started = Instant::now();
            let report = run_one(self.settings, self.direction, self.args, wave_works, o);
            let (wave_code, _, error) = verdict(&report);
            let w = &mut record.waves[at];
            w.batch_id = Some(report.batch_id.clone());
            w.state = match wave_code {
                exit::OK => WaveState::Committed,
                exit::FAILED => WaveState::RolledBack,
                _ => WaveState::NeedsAttention,
            };
            w.error = error.clone();
            w.max_lock_hold_ms = report.lock_holds.values().max().copied();
            w.elapsed_ms = Some(started.elapsed().as_millis() as u64);
            if wave_code != exit::OK {
                record.state = RolloutState::Stopped;
            }
            self.save(&mut record, o);
            if self.args.json {
                let mut batch = batch_json(&report, &migrations);
                batch["wave"] = json!(at + 1);
                waves_json.push(batch);
            } else {
                let summary = summarise(&report, self.args);
                print_outcome(report, summary, o);
            }
            if wave_code != exit::OK {
                code = wave_code;
                stop_error = error;
                break;
            }
        }
        if code == exit::OK {
            record.state = RolloutState::Committed;
        } else {
            record.state = RolloutState::Stopped;
        }
        self.save(&mut record, o);
        self.finish(&record, code, stop_error, waves_json, o)
    }

    /// Saves the record; a failure to save is said, never fatal (the databases hold the
    /// truth, the record only tells it).
    fn save(&self, record: &mut RolloutRecord, o: &mut Output) {
        if let Err(e) = record.save(&self.settings.root) {
            o.note(format!(
                "{e}; `status` will not show this rollout's progress"
            ));
        }
    }

    fn finish(
        &self,
        record: &RolloutRecord,
        code: i32,
        error: Option<String>,
        waves_json: Vec<serde_json::Value>,
        o: &mut Output,
    ) -> i32 {
        let committed: Vec<&WaveRecord> = record.committed().collect();
        let committed_binds: usize = committed.iter().map(|w| w.binds.len()).sum();
        let not_started: Vec<&WaveRecord> = record
            .waves
            .iter()
            .filter(|w| w.state == WaveState::Pending)
            .collect();
        let longest = record
            .waves
            .iter()
            .filter_map(|w| w.max_lock_hold_ms.map(|ms| (ms, w.number)))
            .max();
        if self.args.json {
            o.json(&json!({
                "rollout_id": record.id,
                "direction": self.direction.to_string(),
                "result": if code == exit::OK { "committed" } else { "stopped" },
                "error": error,
                "waves_committed": committed.len(),
                "waves_total": record.waves.len(),
                "max_lock_hold_ms": longest.map(|(ms, _)| ms),
                "waves": waves_json,
                "not_started": not_started.iter().map(|w| json!({"wave": w.number, "binds": w.binds})).collect::<Vec<_>>(),
            }));
            return code;
        }
        let hold = longest
            .map(|(ms, wave)| format!("; longest lock hold {ms} ms (wave {wave})"))
            .unwrap_or_default();
        if code == exit::OK {
            o.line(format!(
                "rollout {} committed: {} wave(s), {committed_binds} bind(s){hold}",
                record.id,
                record.waves.len()
            ));
            return code;
        }
        let stopped_at = record
            .waves
            .iter()
            .find(|w| !matches!(w.state, WaveState::Committed | WaveState::Pending))
            .map(|w| format!("wave {} {}", w.number, w.state.label()))
            .unwrap_or_else(|| "interrupted between waves".into());
        let left: usize = not_started.iter().map(|w| w.binds.len()).sum();
        o.note(format!(
            "rollout {} stopped ({stopped_at}): {} wave(s) committed ({committed_binds} bind(s)) stay committed; {} wave(s) ({left} bind(s)) not started. {}",
            record.id,
            committed.len(),
            not_started.len(),
            if code == exit::ATTENTION {
                "Run `orchestrate recover` first, then the same command to resume"
            } else {
                "Fix the cause, then run the same command to resume from the first wave not committed"
            }
        ));
        code
    }
}
