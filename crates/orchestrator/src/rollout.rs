//! Rollouts: a selection cut into waves, each an atomic batch of its own, run one after the
//! other. A wave starts only once the previous one committed; the first wave that does not
//! commit stops the rollout, leaving earlier waves committed and later ones untouched. Which
//! binds are in which wave is decided here ([`plan_waves`], pure); the rollout's record (its
//! id, its waves and how each ended) is kept in the project folder
//! (`.orchestrate/rollout.json`) for `status` and for a resumed run to carry on under the same
//! id. Resuming never depends on that file: each run plans its waves from what is pending now,
//! so binds an earlier wave committed have nothing left to do.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The waves of a selection of `names` (in the order given, which is name order): first the
/// canaries that are selected, as a wave of their own; then the `together` binds, all in the
/// next wave, filled up to `size` with the rest; then the rest, `size` at a time. `size`
/// `None` puts everything but the canaries in one wave. Each wave is a list of indices into
/// `names`; no wave is empty.
pub fn plan_waves(
    names: &[&str],
    size: Option<usize>,
    canary: &[String],
    together: &[String],
) -> Vec<Vec<usize>> {
    let mut waves = Vec::new();
    let canaries: Vec<usize> = (0..names.len())
        .filter(|&i| canary.iter().any(|c| c == names[i]))
        .collect();
    if !canaries.is_empty() {
        waves.push(canaries.clone());
    }
    let group: Vec<usize> = (0..names.len())
        .filter(|&i| !canaries.contains(&i) && together.iter().any(|t| t == names[i]))
        .collect();
    let rest: Vec<usize> = (0..names.len())
        .filter(|i| !canaries.contains(i) && !group.contains(i))
        .collect();
    let size = size.unwrap_or(usize::MAX).max(1);
    let mut rest = rest.into_iter();
    let mut first = group;
    while first.len() < size {
        match rest.next() {
            Some(i) => first.push(i),
            None => break,
        }
    }
    if !first.is_empty() {
        waves.push(first);
    }
    let rest: Vec<usize> = rest.collect();
    for chunk in rest.chunks(size) {
        waves.push(chunk.to_vec());
    }
    waves
}

/// Where a project's rollout record is kept.
pub fn record_path(root: &Path) -> PathBuf {
    root.join(".orchestrate").join("rollout.json")
}

/// How a wave ended, or that it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaveState {
    /// Not started.
    Pending,
    /// Started and not finished: under way, or the run stopped (a crash) inside it.
    Running,
    Committed,
    RolledBack,
    /// The wave's batch is in doubt or a bind could not be finished.
    NeedsAttention,
}

impl WaveState {
    pub fn label(self) -> &'static str {
        match self {
            WaveState::Pending => "not started",
            WaveState::Running => "running",
            WaveState::Committed => "committed",
            WaveState::RolledBack => "rolled back",
            WaveState::NeedsAttention => "needs attention",
        }
    }
}

/// One wave of a rollout.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaveRecord {
    /// 1-based, across every run of the rollout.
    pub number: usize,
    pub binds: Vec<String>,
    pub state: WaveState,
    pub batch_id: Option<String>,
    /// Why the wave did not commit.
    pub error: Option<String>,
    /// The longest any bind of the wave held its locks (first lock to its commit).
    pub max_lock_hold_ms: Option<u64>,
    pub elapsed_ms: Option<u64>,
}

/// How the rollout as a whole stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// A run is under way, or stopped inside a wave without saying so (a crash).
    Running,
    /// A wave did not commit, or the run was interrupted between waves.
    Stopped,
    Committed,
}

/// A rollout: its id, what command it is (so that only the same command resumes it), and
/// its waves.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RolloutRecord {
    pub id: String,
    /// The direction, selection, targets and wave settings: a run with the same key resumes
    /// this rollout, any other starts a new one.
    pub key: String,
    pub command: String,
    pub started_at: String,
    pub updated_at: String,
    pub state: RolloutState,
    pub waves: Vec<WaveRecord>,
}

impl RolloutRecord {
    /// The project's last rollout, if it left a record. An unreadable record is an error:
    /// it is never silently replaced.
    pub fn load(root: &Path) -> Result<Option<RolloutRecord>, String> {
        let path = record_path(root);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| {
                format!(
                    "the rollout record {} is unreadable ({e}); move it aside to start over",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// Writes the record (a new file renamed over the old one, so a crash leaves one or the
    /// other).
    pub fn save(&mut self, root: &Path) -> Result<(), String> {
        self.updated_at =
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let path = record_path(root);
        let dir = path.parent().expect("the record has a folder");
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join("rollout.json.tmp");
            let text = serde_json::to_string_pretty(self).expect("rollout records serialise");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| format!("cannot write the rollout record {}: {e}", path.display()))
    }

    /// The waves that committed.
    pub fn committed(&self) -> impl Iterator<Item = &WaveRecord> {
        self.waves
            .iter()
            .filter(|w| w.state == WaveState::Committed)
    }

    /// A few lines for `status`: where the rollout stands and what to do next.
    pub fn describe(&self) -> Vec<String> {
        let committed: Vec<&WaveRecord> = self.committed().collect();
        let binds: usize = committed.iter().map(|w| w.binds.len()).sum();
        let mut lines = vec![format!(
            "rollout {} ({}): {}; {} of {} wave(s) committed ({} bind(s)); last change {}",
            self.id,
            self.command,
            match self.state {
                RolloutState::Running => "in progress, or stopped inside a wave",
                RolloutState::Stopped => "stopped",
                RolloutState::Committed => "committed",
            },
            committed.len(),
            self.waves.len(),
            binds,
            self.updated_at
        )];
        for w in self
            .waves
            .iter()
            .filter(|w| w.state != WaveState::Committed)
        {
            let mut line = format!(
                "  wave {}: {}, {} bind(s) ({})",
                w.number,
                w.state.label(),
                w.binds.len(),
                shown(&w.binds)
            );
            if let Some(batch) = &w.batch_id {
                line.push_str(&format!(", batch {batch}"));
            }
            if let Some(error) = &w.error {
                line.push_str(&format!(": {error}"));
            }
            lines.push(line);
        }
        match self.state {
            RolloutState::Committed => {}
            RolloutState::Stopped => lines.push(format!(
                "  fix the cause, then run `{}` again to resume from the first wave not committed",
                self.command
            )),
            RolloutState::Running => lines.push(format!(
                "  if no run is under way: `orchestrate recover` settles the interrupted wave's batch, then `{}` resumes",
                self.command
            )),
        }
        lines
    }
}

/// Up to five names, then how many more.
pub fn shown(binds: &[String]) -> String {
    let mut text = binds.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if binds.len() > 5 {
        text.push_str(&format!(" and {} more", binds.len() - 5));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("t{i:02}")).collect()
    }

    fn waves(n: usize, size: Option<usize>, canary: &[&str], together: &[&str]) -> Vec<Vec<usize>> {
        let all = names(n);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let c: Vec<String> = canary.iter().map(|s| s.to_string()).collect();
        let t: Vec<String> = together.iter().map(|s| s.to_string()).collect();
        plan_waves(&refs, size, &c, &t)
    }

    #[test]
    fn waves_of_a_size_cover_every_bind_once_in_order() {
        assert_eq!(
            waves(7, Some(3), &[], &[]),
            vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]
        );
        assert_eq!(waves(3, Some(3), &[], &[]), vec![vec![0, 1, 2]]);
        assert_eq!(waves(3, None, &[], &[]), vec![vec![0, 1, 2]]);
        assert_eq!(waves(0, Some(3), &[], &[]), Vec::<Vec<usize>>::new());
        assert_eq!(waves(2, Some(1), &[], &[]), vec![vec![0], vec![1]]);
    }

    #[test]
    fn canaries_go_first_and_together_binds_share_the_next_wave() {
        assert_eq!(
            waves(6, Some(2), &["t04"], &[]),
            vec![vec![4], vec![0, 1], vec![2, 3], vec![5]]
        );
        // The group may be larger than a wave: it stays whole, alone.
        assert_eq!(
            waves(6, Some(2), &["t00"], &["t02", "t03", "t05"]),
            vec![vec![0], vec![2, 3, 5], vec![1, 4]]
        );
        // A smaller group is filled up to the wave size.
        assert_eq!(
            waves(5, Some(3), &[], &["t04"]),
            vec![vec![4, 0, 1], vec![2, 3]]
        );
        // A canary or group member with nothing to do (not among the names) is no wave.
        assert_eq!(waves(2, Some(5), &["zz"], &["yy"]), vec![vec![0, 1]]);
        assert_eq!(waves(3, None, &["t01"], &[]), vec![vec![1], vec![0, 2]]);
    }
}
