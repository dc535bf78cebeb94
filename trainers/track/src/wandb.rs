//! Weights & Biases through the official `wandb` Python package (a sidecar process).
//!
//! [`log_runs`] starts one Python process running `wandb_log.py` (beside this crate,
//! embedded in the binary) and feeds it, per run, the run's `run_meta.json` as the W&B
//! config and its `metrics.jsonl` as history, merged per step with the same tags as the
//! TensorBoard files ([`crate::scalars`]). Everything W&B-specific (authentication,
//! the network protocol, offline files, `WANDB_*` variables) is the package's own: ausa
//! never speaks to a W&B server itself. Metrics only: no model, checkpoint or code.
//!
//! Offline (`mode: offline`, or `WANDB_MODE=offline` in the environment) the package
//! writes `wandb/offline-run-*/run-*.wandb` under `WANDB_DIR` (else the working
//! directory); `wandb sync DIR` uploads it later.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::json;

use crate::scalars::MetricsFile;
use crate::TrackError;

/// The sidecar script.
pub const SCRIPT: &str = include_str!("../wandb_log.py");

/// Exit status of the script when `import wandb` fails.
const NO_WANDB: i32 = 3;

/// How to reach W&B.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Python that has the `wandb` package.
    pub python: PathBuf,
    /// The W&B project (`None`: `WANDB_PROJECT`, else wandb's default).
    pub project: Option<String>,
    /// The W&B group of the runs (e.g. the sweep's name).
    pub group: Option<String>,
    /// Offline mode (`None`: wandb's own choice, `WANDB_MODE`).
    pub offline: bool,
    /// Where wandb writes its run directories (`None`: `WANDB_DIR`, else the working
    /// directory).
    pub dir: Option<PathBuf>,
}

/// A run as W&B recorded it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Logged {
    /// The ausa run directory.
    #[serde(default)]
    pub run_dir: PathBuf,
    /// The W&B run id.
    pub id: String,
    /// Its display name.
    pub name: Option<String>,
    /// wandb's local directory of the run (the offline files are there).
    pub dir: Option<PathBuf>,
    /// The run's page (online only).
    pub url: Option<String>,
    /// Steps logged.
    #[serde(default)]
    pub steps: usize,
    /// Whether the metrics file ended in a cut-off line (a killed run), left out.
    #[serde(default)]
    pub truncated: bool,
}

/// One run to log: its directory and the name it gets in W&B.
#[derive(Debug, Clone)]
pub struct RunToLog {
    /// The run directory (`run_meta.json`, `metrics.jsonl`).
    pub dir: PathBuf,
    /// The W&B display name.
    pub name: String,
}

/// What each run sends: its header and its steps.
fn messages(run: &RunToLog, opts: &Options) -> Result<(Vec<String>, usize, bool), TrackError> {
    let meta_path = run.dir.join("run_meta.json");
    let meta_text = std::fs::read_to_string(&meta_path).map_err(TrackError::io(&meta_path))?;
    let config: serde_json::Value =
        serde_json::from_str(&meta_text).map_err(|e| TrackError::BadFile {
            path: meta_path.clone(),
            message: e.to_string(),
        })?;
    let metrics = MetricsFile::read(&run.dir.join("metrics.jsonl"))?;
    let mut lines = vec![json!({"run": {
        "project": opts.project,
        "name": run.name,
        "group": opts.group,
        "config": config,
        "mode": opts.offline.then_some("offline"),
        "dir": opts.dir,
    }})
    .to_string()];
    let steps = metrics.by_step();
    for (step, values) in &steps {
        let values: serde_json::Map<String, serde_json::Value> = values
            .iter()
            .map(|(tag, v)| (tag.clone(), json!(v)))
            .collect();
        lines.push(json!({"log": {"step": step, "values": values}}).to_string());
    }
    lines.push(json!({"finish": {}}).to_string());
    Ok((lines, steps.len(), metrics.truncated))
}

/// Logs every run to W&B in one Python process; returns what W&B recorded, in order.
pub fn log_runs(runs: &[RunToLog], opts: &Options) -> Result<Vec<Logged>, TrackError> {
    // Read every run first: a bad run directory fails before anything is logged.
    let mut input = Vec::new();
    let mut counts = Vec::new();
    for run in runs {
        let (lines, steps, truncated) = messages(run, opts)?;
        input.extend(lines);
        counts.push((steps, truncated));
    }
    let mut child = Command::new(&opts.python)
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| TrackError::Python {
            python: opts.python.clone(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        for line in input {
            writeln!(stdin, "{line}")?;
        }
        Ok(())
    });
    let stdout = child.stdout.take().expect("piped stdout");
    let mut logged = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if let Ok(run) = serde_json::from_value::<Logged>(value["ausa_wandb_run"].clone()) {
            logged.push(run);
        }
    }
    let status = child.wait().map_err(|source| TrackError::Python {
        python: opts.python.clone(),
        source,
    })?;
    // A broken pipe means the script stopped reading: its exit status says why.
    let _ = writer.join();
    if status.code() == Some(NO_WANDB) {
        return Err(TrackError::NoWandb {
            python: opts.python.clone(),
        });
    }
    if !status.success() || logged.len() != runs.len() {
        return Err(TrackError::Sidecar(format!(
            "{} -c <wandb_log.py> {status} after logging {} of {} runs (wandb's messages are above)",
            opts.python.display(),
            logged.len(),
            runs.len()
        )));
    }
    for ((l, run), (steps, truncated)) in logged.iter_mut().zip(runs).zip(counts) {
        l.run_dir = run.dir.clone();
        l.steps = steps;
        l.truncated = truncated;
    }
    Ok(logged)
}

/// The `wandb` offline file of a logged run (`run-<id>.wandb` in its directory).
pub fn offline_file(logged: &Logged) -> Option<PathBuf> {
    let dir = logged.dir.as_deref()?;
    let file = dir.join(format!("run-{}.wandb", logged.id));
    file.is_file().then_some(file)
}
