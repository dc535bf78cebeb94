//! The sweep directory (`ausa sweep --out DIR`) and what each run leaves in it.
//!
//! ```text
//! DIR/sweep.json                 the expanded sweep: name, task, DAG, every run's arguments
//! DIR/results.csv                one row per run (rewritten whole, temp file + rename,
//!                                under DIR/locks/results.csv.lock)
//! DIR/runs/<name>/               the trainer's run directory (run_meta.json, metrics.jsonl, ...)
//! DIR/runs/<name>/sweep_run.json the run's arguments, written when a sweep claims it
//! DIR/runs/<name>/sweep_status.json  how the last attempt ended (written last, atomically)
//! DIR/runs/<name>/stdout.log, stderr.log  the trainer's output
//! DIR/locks/<name>.lock          held while a sweep process runs it (any host; see
//!                                ausa_store::try_lock_path)
//! ```
//!
//! A run's state is read from these files alone, so any number of `ausa sweep`
//! processes can share a directory: `sweep_status.json` says it ended (how), a live lock
//! says it is running, a run directory with neither is an attempt whose sweep died
//! (`interrupted`, run again from scratch), no directory is `pending`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::spec::RunSpec;
use crate::SweepError;

/// How a finished attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Exit 0.
    Ok,
    /// Out of memory (the trainer's error output says so, whatever the exit).
    Oom,
    /// A non-zero exit code.
    Failed,
    /// Ended by a signal.
    Killed,
}

impl Status {
    /// The CSV spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Oom => "oom",
            Status::Failed => "failed",
            Status::Killed => "killed",
        }
    }
}

/// `sweep_status.json`: the last attempt of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's name.
    pub name: String,
    /// How it ended.
    pub status: Status,
    /// The exit code (none when killed by a signal or never started).
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// Attempts so far (retries of failed runs count).
    pub attempts: u32,
    /// When the process was started (seconds since the Unix epoch).
    pub started_unix_s: f64,
    /// Wall seconds from spawn to exit.
    pub elapsed_s: f64,
    /// The GPU it was pinned to (`CUDA_VISIBLE_DEVICES`).
    pub gpu: Option<u32>,
    /// That GPU's used memory after the run (MiB), from nvidia-smi.
    pub gpu_used_after_mib: Option<u64>,
    /// The host that ran it.
    pub host: String,
    /// For a run that did not succeed: the last line of its error output.
    pub message: Option<String>,
}

/// `sweep_run.json`: which arguments a run directory belongs to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RunClaim {
    name: String,
    args: Vec<String>,
}

/// A run's state as read from the directory.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Never started here.
    Pending,
    /// A live process holds its lock.
    Running,
    /// Started by a sweep that died before the run ended; it runs again from scratch.
    Interrupted,
    /// Ended (how: the record).
    Ended(RunRecord),
}

impl RunState {
    /// The CSV spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Ended(r) => r.status.as_str(),
        }
    }
}

/// The lock lease: heartbeats every quarter of it; a holder silent that long is dead.
pub const LEASE: Duration = Duration::from_secs(60);

/// A sweep directory.
#[derive(Debug, Clone)]
pub struct SweepDir {
    root: PathBuf,
    lease: Duration,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SweepError + '_ {
    move |source| SweepError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` through a temp file unique to this process and a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SweepError> {
    let tmp = path.with_file_name(format!(
        ".{}.tmp.{}.{:?}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        std::thread::current().id()
    ));
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl SweepDir {
    /// The sweep directory `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> SweepDir {
        SweepDir {
            root: root.into(),
            lease: LEASE,
        }
    }

    /// Its path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The run directory of run `name`.
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.root.join("runs").join(name)
    }

    /// `results.csv`.
    pub fn csv_path(&self) -> PathBuf {
        self.root.join("results.csv")
    }

    pub(crate) fn lock_path(&self, name: &str) -> PathBuf {
        self.root.join("locks").join(format!("{name}.lock"))
    }

    pub(crate) fn lease(&self) -> Duration {
        self.lease
    }

    /// Creates `runs/` and `locks/`.
    pub fn create(&self) -> Result<(), SweepError> {
        for sub in ["runs", "locks"] {
            let dir = self.root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(())
    }

    /// The record of the run's last attempt, if it ended.
    pub fn record(&self, name: &str) -> Option<RunRecord> {
        let path = self.run_dir(name).join("sweep_status.json");
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    pub(crate) fn write_record(&self, record: &RunRecord) -> Result<(), SweepError> {
        let path = self.run_dir(&record.name).join("sweep_status.json");
        let bytes = serde_json::to_vec_pretty(record).expect("a record serializes");
        write_atomic(&path, &bytes)
    }

    /// The state of `name`, from its files and lock.
    pub fn state(&self, name: &str) -> RunState {
        if let Some(record) = self.record(name) {
            return RunState::Ended(record);
        }
        if ausa_store::is_locked(&self.lock_path(name), self.lease) {
            return RunState::Running;
        }
        if self.run_dir(name).exists() {
            RunState::Interrupted
        } else {
            RunState::Pending
        }
    }

    /// Fails when a run directory of this sweep was made for other arguments (a
    /// changed sweep file under the same --out): its results would be mixed up.
    pub fn check_claims(&self, runs: &[RunSpec], dag: &str) -> Result<(), SweepError> {
        for run in runs {
            let path = self.run_dir(&run.name).join("sweep_run.json");
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let claim: RunClaim = serde_json::from_slice(&bytes).map_err(|e| SweepError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            })?;
            let now = run.args(dag);
            if claim.args != now {
                return Err(SweepError::Changed {
                    run: run.name.clone(),
                    dir: self.run_dir(&run.name),
                    was: claim.args.join(" "),
                    now: now.join(" "),
                });
            }
        }
        Ok(())
    }

    pub(crate) fn write_claim(&self, run: &RunSpec, dag: &str) -> Result<(), SweepError> {
        let dir = self.run_dir(&run.name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let claim = RunClaim {
            name: run.name.clone(),
            args: run.args(dag),
        };
        let bytes = serde_json::to_vec_pretty(&claim).expect("a claim serializes");
        write_atomic(&dir.join("sweep_run.json"), &bytes)
    }

    /// Writes `sweep.json`: the sweep as expanded (for people and `ausa report`).
    pub fn write_manifest(&self, manifest: &serde_json::Value) -> Result<(), SweepError> {
        let bytes = serde_json::to_vec_pretty(manifest).expect("a manifest serializes");
        write_atomic(&self.root.join("sweep.json"), &bytes)
    }

    /// Rewrites `results.csv` from the run directories: one row per run of `runs`, in
    /// order, whatever state it is in. Serialized between processes by a lock, so a
    /// slower writer never puts back an older table.
    pub fn write_csv(&self, runs: &[RunSpec]) -> Result<PathBuf, SweepError> {
        let lock_path = self.root.join("locks").join("results.csv.lock");
        let _guard = loop {
            if let Some(held) = ausa_store::try_lock_path(&lock_path, self.lease)? {
                break held;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut params: Vec<String> = Vec::new();
        for run in runs {
            for (k, _) in &run.params {
                if !params.contains(k) {
                    params.push(k.clone());
                }
            }
        }
        let mut header: Vec<String> = ["run", "status", "exit", "attempts", "elapsed_s", "gpu"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        header.extend(params.iter().cloned());
        header.extend(
            [
                "steps",
                "last_loss",
                "valid_loss",
                "valid_token_ppl",
                "valid_word_ppl",
                "tokens_per_s",
                "run_dir",
                "message",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let mut text = csv_line(&header);
        for run in runs {
            let state = self.state(&run.name);
            let record = match &state {
                RunState::Ended(r) => Some(r),
                _ => None,
            };
            let mut row = vec![
                run.name.clone(),
                state.as_str().to_string(),
                record.map_or(String::new(), |r| match (r.exit_code, r.signal) {
                    (Some(c), _) => c.to_string(),
                    (None, Some(s)) => format!("signal {s}"),
                    (None, None) => String::new(),
                }),
                record.map_or(String::new(), |r| r.attempts.to_string()),
                record.map_or(String::new(), |r| format!("{:.2}", r.elapsed_s)),
                record
                    .and_then(|r| r.gpu)
                    .map_or(String::new(), |g| g.to_string()),
            ];
            for p in &params {
                row.push(
                    run.params
                        .iter()
                        .find(|(k, _)| k == p)
                        .map_or(String::new(), |(_, v)| v.clone()),
                );
            }
            let summary = (record.map(|r| r.status) == Some(Status::Ok))
                .then(|| std::fs::read(self.run_dir(&run.name).join("summary.json")).ok())
                .flatten()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .unwrap_or(serde_json::Value::Null);
            let num = |v: &serde_json::Value| v.as_f64().map_or(String::new(), |f| format!("{f}"));
            row.push(num(&summary["steps"]));
            row.push(num(&summary["last_loss"]));
            row.push(num(&summary["valid"]["loss"]));
            row.push(num(&summary["valid"]["token_ppl"]));
            row.push(num(&summary["valid"]["word_ppl"]));
            row.push(num(&summary["tokens_per_s"]));
            row.push(format!("runs/{}", run.name));
            row.push(record.and_then(|r| r.message.clone()).unwrap_or_default());
            text.push_str(&csv_line(&row));
        }
        let path = self.csv_path();
        write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }
}

/// One CSV line (RFC 4180 quoting where a field needs it).
fn csv_line(fields: &[String]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|f| {
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f.clone()
            }
        })
        .collect();
    format!("{}\n", quoted.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        let line = csv_line(&["a".into(), "b,c".into(), "say \"hi\"".into(), "".into()]);
        assert_eq!(line, "a,\"b,c\",\"say \"\"hi\"\"\",\n");
    }

    #[test]
    fn states_follow_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SweepDir::new(tmp.path());
        dir.create().unwrap();
        assert_eq!(dir.state("a"), RunState::Pending);
        let held = ausa_store::try_lock_path(&dir.lock_path("a"), LEASE)
            .unwrap()
            .unwrap();
        assert_eq!(dir.state("a"), RunState::Running);
        std::fs::create_dir_all(dir.run_dir("a")).unwrap();
        drop(held);
        assert_eq!(dir.state("a"), RunState::Interrupted);
        let record = RunRecord {
            name: "a".into(),
            status: Status::Oom,
            exit_code: Some(1),
            signal: None,
            attempts: 1,
            started_unix_s: 0.0,
            elapsed_s: 1.5,
            gpu: None,
            gpu_used_after_mib: None,
            host: "h".into(),
            message: Some("CUDA out of memory".into()),
        };
        dir.write_record(&record).unwrap();
        assert_eq!(dir.state("a"), RunState::Ended(record));
    }
}
