//! Running a sweep's runs: `parallel` worker threads, each claiming the next run by its
//! lock, gating on its GPU, running the trainer process and recording how it ended.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use crate::dir::{RunRecord, RunState, Status, SweepDir};
use crate::gpu::{self, GpuGate, GpuState};
use crate::spec::RunSpec;
use crate::SweepError;

/// How to run a sweep.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runs at a time (at least 1). With GPUs, worker `w` uses GPU `w % gpus`.
    pub parallel: usize,
    /// Run again the runs whose last attempt failed (oom, exit code, killed).
    pub retry_failed: bool,
    /// The GPU gate (skipped where nvidia-smi is not installed).
    pub gpu: GpuGate,
}

/// Where a run stands in the sweep, for progress lines.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// The run's position (1-based).
    pub index: usize,
    /// Runs in the sweep.
    pub total: usize,
    /// Runs not settled yet (this one included until it is).
    pub left: usize,
    /// Seconds until every run is settled, from the mean of the runs this process
    /// finished (none before the first).
    pub eta_s: Option<f64>,
}

/// Why a run was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// It ended with `ok` earlier.
    Done,
    /// It failed earlier and `retry_failed` is off.
    FailedEarlier(Status),
    /// Another process holds its lock.
    RunningElsewhere,
}

/// What the executor reports as it goes.
#[derive(Debug)]
pub enum Event<'a> {
    /// Said once at the start (e.g. GPU checks skipped).
    Note(String),
    /// A run was not started.
    Skipped(&'a RunSpec, Skip, Progress),
    /// Waiting for a GPU to be idle.
    WaitingForGpu(&'a RunSpec, u32, String),
    /// A run's process started.
    Started(&'a RunSpec, Option<u32>, Progress),
    /// A run's process ended.
    Finished(&'a RunSpec, &'a RunRecord, Progress),
    /// A GPU still holds memory after a run.
    GpuNotReleased(&'a RunSpec, GpuState),
}

/// Receives [`Event`]s (from several worker threads).
pub trait Reporter: Sync {
    /// One event.
    fn event(&self, event: &Event);
}

/// What happened to each run in this invocation.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The run's name.
    pub name: String,
    /// Its state at the end.
    pub state: RunState,
    /// Whether this process ran it now.
    pub ran: bool,
}

/// Builds the command of one run: the trainer's program and arguments, given the run
/// and its directory. Stdio, `CUDA_VISIBLE_DEVICES` and the tie to the sweep's life
/// are set by the executor.
pub type CommandFor<'a> = dyn Fn(&RunSpec, &Path) -> Command + Sync + 'a;

/// More GPU memory in use after a run than before it (MiB) is worth a warning.
const GPU_LEAK_MIB: u64 = 512;

/// Runs every run of `runs` that is not settled, `opts.parallel` at a time; rewrites
/// `results.csv` after each. Returns each run's outcome in order. An I/O error on the
/// sweep directory stops taking new runs and is returned after the running ones end.
pub fn execute(
    dir: &SweepDir,
    runs: &[RunSpec],
    dag: &str,
    opts: &Options,
    command: &CommandFor,
    reporter: &dyn Reporter,
) -> Result<Vec<Outcome>, SweepError> {
    dir.create()?;
    dir.check_claims(runs, dag)?;
    let gpus = match gpu::query(&opts.gpu.nvidia_smi) {
        None => {
            reporter.event(&Event::Note(format!(
                "no {} on this machine: GPU idle gate and memory checks skipped",
                opts.gpu.nvidia_smi.display()
            )));
            Vec::new()
        }
        Some(Ok(gpus)) => gpus.iter().map(|g| g.index).collect(),
        Some(Err(e)) => {
            reporter.event(&Event::Note(format!(
                "{e}: GPU idle gate and memory checks skipped"
            )));
            Vec::new()
        }
    };
    let workers = opts.parallel.max(1);
    if !gpus.is_empty() && workers > gpus.len() {
        reporter.event(&Event::Note(format!(
            "--parallel {workers} on {} GPU(s): some GPUs run several runs at once",
            gpus.len()
        )));
    }
    dir.write_csv(runs)?;
    let shared = Shared {
        dir,
        runs,
        dag,
        opts,
        command,
        reporter,
        next: AtomicUsize::new(0),
        tally: Mutex::new(Tally {
            settled: 0,
            ran_s: Vec::new(),
        }),
        ran: Mutex::new(vec![false; runs.len()]),
        error: Mutex::new(None),
        workers,
    };
    std::thread::scope(|scope| {
        for w in 0..workers {
            let gpu = (!gpus.is_empty()).then(|| gpus[w % gpus.len()]);
            let shared = &shared;
            scope.spawn(move || shared.work(gpu));
        }
    });
    dir.write_csv(runs)?;
    if let Some(e) = shared.error.into_inner().expect("no worker panicked") {
        return Err(e);
    }
    let ran = shared.ran.into_inner().expect("no worker panicked");
    Ok(runs
        .iter()
        .zip(ran)
        .map(|(r, ran)| Outcome {
            name: r.name.clone(),
            state: dir.state(&r.name),
            ran,
        })
        .collect())
}

struct Tally {
    settled: usize,
    ran_s: Vec<f64>,
}

struct Shared<'a> {
    dir: &'a SweepDir,
    runs: &'a [RunSpec],
    dag: &'a str,
    opts: &'a Options,
    command: &'a CommandFor<'a>,
    reporter: &'a dyn Reporter,
    next: AtomicUsize,
    tally: Mutex<Tally>,
    ran: Mutex<Vec<bool>>,
    error: Mutex<Option<SweepError>>,
    workers: usize,
}

impl Shared<'_> {
    fn work(&self, gpu: Option<u32>) {
        loop {
            if self.error.lock().expect("lock").is_some() {
                return;
            }
            let i = self.next.fetch_add(1, Ordering::SeqCst);
            let Some(run) = self.runs.get(i) else {
                return;
            };
            if let Err(e) = self.one(i, run, gpu) {
                self.error.lock().expect("lock").get_or_insert(e);
                return;
            }
        }
    }

    /// Settles run `i` (one more done) and returns its progress.
    fn settle(&self, i: usize, elapsed: Option<f64>) -> Progress {
        let mut t = self.tally.lock().expect("lock");
        t.settled += 1;
        t.ran_s.extend(elapsed);
        self.progress(i, &t)
    }

    fn progress(&self, i: usize, t: &Tally) -> Progress {
        let left = self.runs.len() - t.settled;
        let eta_s = (!t.ran_s.is_empty()).then(|| {
            let mean = t.ran_s.iter().sum::<f64>() / t.ran_s.len() as f64;
            mean * left as f64 / self.workers as f64
        });
        Progress {
            index: i + 1,
            total: self.runs.len(),
            left,
            eta_s,
        }
    }

    fn skip(&self, i: usize, run: &RunSpec, why: Skip) {
        let progress = self.settle(i, None);
        self.reporter.event(&Event::Skipped(run, why, progress));
    }

    fn one(&self, i: usize, run: &RunSpec, gpu: Option<u32>) -> Result<(), SweepError> {
        let dir = self.dir;
        // A cheap look first; the decision is taken again under the lock.
        if let RunState::Ended(r) = dir.state(&run.name) {
            if r.status == Status::Ok {
                self.skip(i, run, Skip::Done);
                return Ok(());
            }
        }
        let Some(_lock) = ausa_store::try_lock_path(&dir.lock_path(&run.name), dir.lease())? else {
            self.skip(i, run, Skip::RunningElsewhere);
            return Ok(());
        };
        let previous = dir.record(&run.name);
        match &previous {
            Some(r) if r.status == Status::Ok => {
                self.skip(i, run, Skip::Done);
                return Ok(());
            }
            Some(r) if !self.opts.retry_failed => {
                self.skip(i, run, Skip::FailedEarlier(r.status));
                return Ok(());
            }
            _ => {}
        }
        let run_dir = dir.run_dir(&run.name);
        // A failed or interrupted attempt starts again from an empty directory (the
        // trainer refuses a directory that holds a run). No process of it is left: a
        // run's process dies with its sweep (child.rs).
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir).map_err(|source| SweepError::Io {
                path: run_dir.clone(),
                source,
            })?;
        }
        dir.write_claim(run, self.dag)?;
        let before = gpu.and_then(|g| self.wait_for_gpu(run, g));
        {
            let t = self.tally.lock().expect("lock");
            let progress = self.progress(i, &t);
            drop(t);
            self.reporter.event(&Event::Started(run, gpu, progress));
        }
        let mut record = self.spawn_and_wait(run, &run_dir, gpu)?;
        record.attempts = previous.map_or(0, |r| r.attempts) + 1;
        if let Some(g) = gpu {
            if let Some(Ok(states)) = gpu::query(&self.opts.gpu.nvidia_smi) {
                if let Some(after) = states.into_iter().find(|s| s.index == g) {
                    record.gpu_used_after_mib = Some(after.used_mib);
                    let base = before.map_or(0, |b| b.used_mib);
                    if after.used_mib > base + GPU_LEAK_MIB {
                        self.reporter.event(&Event::GpuNotReleased(run, after));
                    }
                }
            }
        }
        dir.write_record(&record)?;
        self.ran.lock().expect("lock")[i] = true;
        let progress = self.settle(i, Some(record.elapsed_s));
        self.reporter
            .event(&Event::Finished(run, &record, progress));
        dir.write_csv(self.runs)?;
        Ok(())
    }

    /// Waits until GPU `g` passes the gate; returns its state then (none when
    /// nvidia-smi stopped answering: the run goes ahead).
    fn wait_for_gpu(&self, run: &RunSpec, g: u32) -> Option<GpuState> {
        let mut said: Option<String> = None;
        loop {
            let state = match gpu::query(&self.opts.gpu.nvidia_smi) {
                Some(Ok(states)) => states.into_iter().find(|s| s.index == g)?,
                _ => return None,
            };
            match self.opts.gpu.blocks(&state) {
                None => return Some(state),
                Some(why) => {
                    if said.as_deref() != Some(why.as_str()) {
                        self.reporter
                            .event(&Event::WaitingForGpu(run, g, why.clone()));
                        said = Some(why);
                    }
                    std::thread::sleep(self.opts.gpu.poll);
                }
            }
        }
    }

    fn spawn_and_wait(
        &self,
        run: &RunSpec,
        run_dir: &Path,
        gpu: Option<u32>,
    ) -> Result<RunRecord, SweepError> {
        let log = |name: &str| -> Result<(PathBuf, std::fs::File), SweepError> {
            let path = run_dir.join(name);
            let file = std::fs::File::create(&path).map_err(|source| SweepError::Io {
                path: path.clone(),
                source,
            })?;
            Ok((path, file))
        };
        let (_, stdout) = log("stdout.log")?;
        let (stderr_path, stderr) = log("stderr.log")?;
        let mut cmd = (self.command)(run, run_dir);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        if let Some(g) = gpu {
            cmd.env("CUDA_VISIBLE_DEVICES", g.to_string());
        }
        let started_unix_s = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let started = Instant::now();
        let mut record = RunRecord {
            name: run.name.clone(),
            status: Status::Failed,
            exit_code: None,
            signal: None,
            attempts: 1,
            started_unix_s,
            elapsed_s: 0.0,
            gpu,
            gpu_used_after_mib: None,
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            message: None,
        };
        let status = crate::child::spawn_tied(&mut cmd).and_then(|mut child| child.wait());
        record.elapsed_s = started.elapsed().as_secs_f64();
        match status {
            Ok(status) => {
                let tail = tail(&stderr_path);
                let (s, code, signal) = classify(status, &tail);
                record.status = s;
                record.exit_code = code;
                record.signal = signal;
                if s != Status::Ok {
                    record.message = last_line(&tail);
                }
            }
            // The program could not be started: a row all the same.
            Err(e) => record.message = Some(format!("could not start the run: {e}")),
        }
        Ok(record)
    }
}

/// The last 64 KiB of a log.
fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(64 * 1024);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn last_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(300).collect())
}

/// Error output that means the run ran out of memory (libtorch's CUDA allocator,
/// cuBLAS, the C++ allocator, the OS).
const OOM_MARKERS: [&str; 5] = [
    "out of memory",
    "cublas_status_alloc_failed",
    "outofmemoryerror",
    "std::bad_alloc",
    "cannot allocate memory",
];

/// How an exited process ended: `ok` on exit 0; `oom` when its error output says so
/// (whatever the exit); `killed` by a signal; else `failed` with the exit code.
pub fn classify(status: ExitStatus, stderr_tail: &str) -> (Status, Option<i32>, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    if status.success() {
        return (Status::Ok, Some(0), None);
    }
    let lower = stderr_tail.to_lowercase();
    let code = status.code();
    let signal = status.signal();
    if OOM_MARKERS.iter().any(|m| lower.contains(m)) {
        return (Status::Oom, code, signal);
    }
    match signal {
        Some(s) => (Status::Killed, None, Some(s)),
        None => (Status::Failed, code, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_are_classified() {
        let exit = |code: i32| ExitStatus::from_raw(code << 8);
        let signal = |s: i32| ExitStatus::from_raw(s);
        assert_eq!(classify(exit(0), ""), (Status::Ok, Some(0), None));
        assert_eq!(
            classify(exit(2), "error: bad flag"),
            (Status::Failed, Some(2), None)
        );
        assert_eq!(
            classify(
                exit(1),
                "libtorch: CUDA out of memory. Tried to allocate 2.00 GiB"
            ),
            (Status::Oom, Some(1), None)
        );
        assert_eq!(classify(signal(9), ""), (Status::Killed, None, Some(9)));
        assert_eq!(
            classify(
                signal(6),
                "terminate called after throwing an instance of 'std::bad_alloc'"
            ),
            (Status::Oom, None, Some(6))
        );
    }
}
