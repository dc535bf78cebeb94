//! `ausa sweep` (cargo feature `train`): runs a sweep file's grid of `ausa train lm`
//! runs. This module is the glue: every run's flags are checked by the trainer's own
//! argument parser before anything starts, the artifacts of every run are resolved the
//! way `ausa train lm` resolves them and built once per fingerprint set through
//! `ausa-build`, and `ausa-sweep` runs the trainer processes (this same binary).

use std::path::{Path, PathBuf};

use ausa_build::{Pipeline, Resolved, Target};
use ausa_sweep::dir::SweepDir;
use ausa_sweep::exec::{self, Event, Reporter, Skip};
use ausa_sweep::gpu::GpuGate;
use ausa_sweep::spec::{FlagKind, FlagSchema, RunSpec, Sweep};
use clap::{Args, CommandFactory, Parser};
use serde_json::json;

use crate::args::TargetArgs;
use crate::diagnostics::CliError;
use crate::output::Output;
use crate::train::{stage_overrides, LmArgs, READ_KINDS};

/// `ausa sweep` flags.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// A sweep file, or the name of an embedded sweep (demo-ablation, wt2-ablation).
    #[arg(value_name = "FILE.toml|NAME")]
    pub sweep: String,
    /// The sweep directory: results.csv, sweep.json and runs/<name>/ [default:
    /// sweeps/<sweep name>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Runs at a time. On a machine with GPUs each worker is pinned to one
    /// (CUDA_VISIBLE_DEVICES); on CPU these are N trainer processes.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub parallel: u64,
    /// Run again the runs whose last attempt failed (oom, an exit code, killed).
    #[arg(long)]
    pub retry_failed: bool,
    /// List the runs (and their state) and the artifacts they need; build and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Build the artifacts of every run, then exit.
    #[arg(long)]
    pub cache_only: bool,
    /// GPU idle gate: before a run, wait while its GPU is busier than this (percent).
    #[arg(long, value_name = "PCT", default_value_t = 10)]
    pub gpu_max_util: u32,
    /// GPU memory gate: before a run, wait until its GPU has this much free (MiB).
    #[arg(long, value_name = "MIB", default_value_t = 4096)]
    pub gpu_min_free_mib: u64,
    /// Write the equivalent W&B sweep configuration (method grid) to this file, `-` for
    /// stdout, and exit. A sweep W&B cannot express as one grid (several grids, tables
    /// of flags that vary together, explicit runs) gives several: OUT-1.yaml, OUT-2.yaml,
    /// ... (on stdout, YAML documents separated by `---`).
    #[arg(long, value_name = "OUT.yaml")]
    pub wandb_yaml: Option<PathBuf>,
}

/// The trainer's flags as a parser of their own (`lm ...` without the binary's name).
#[derive(Debug, Parser)]
#[command(name = "ausa train lm", no_binary_name = true)]
struct LmCommand {
    #[command(flatten)]
    args: LmArgs,
}

/// Every long flag of `ausa train lm` and whether it takes a value.
fn schema() -> FlagSchema {
    let mut schema = FlagSchema::default();
    for arg in LmCommand::command().get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" {
            continue;
        }
        let kind = if arg.get_action().takes_values() {
            FlagKind::Value
        } else {
            FlagKind::Switch
        };
        schema.flags.insert(long.to_string(), kind);
    }
    schema
}

fn sweep_error(e: ausa_sweep::SweepError) -> CliError {
    CliError {
        message: e.to_string(),
        hints: e.hint().into_iter().collect(),
        code: e.exit_code(),
    }
}

/// The artifact target `ausa train lm` resolves for `args` (train.rs does the same):
/// the DAG's `minhash` and `routing` stages with the shape flags as `--set`s.
fn trainer_target(pipeline: &Pipeline, args: &LmArgs) -> Result<(TargetArgs, Resolved), CliError> {
    let plain_args = TargetArgs {
        target: args.dag.clone(),
        overrides: args.overrides.clone(),
    };
    let plain = Target::parse(&args.dag, &args.overrides)
        .map_err(|e| CliError::from_build(e, &plain_args))?;
    let first = pipeline
        .resolve(&plain)
        .map_err(|e| CliError::from_build(e, &plain_args))?;
    let overrides = stage_overrides(args, &first)?;
    let mut stages = Vec::new();
    for kind in READ_KINDS {
        let names: Vec<&str> = first
            .dag
            .stages
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.name.as_str())
            .collect();
        let [name] = names.as_slice() else {
            return Err(CliError::usage(
                format!(
                    "DAG `{}` has {} stages of kind `{kind}`; `ausa train lm` needs exactly one",
                    first.dag.name,
                    names.len()
                ),
                None,
            ));
        };
        stages.push(name.to_string());
    }
    let target_args = TargetArgs {
        target: format!("{}:{}", args.dag, stages.join(",")),
        overrides,
    };
    let target = Target::parse(&target_args.target, &target_args.overrides)
        .map_err(|e| CliError::from_build(e, &target_args))?;
    let resolved = pipeline
        .resolve(&target)
        .map_err(|e| CliError::from_build(e, &target_args))?;
    Ok((target_args, resolved))
}

/// One artifact configuration of the sweep and the runs that read it.
struct ArtifactSet {
    target: TargetArgs,
    resolved: Resolved,
    runs: Vec<String>,
}

/// The runs' artifact configurations, one per distinct set of fingerprints.
fn artifact_sets(
    pipeline: &Pipeline,
    sweep: &Sweep,
    runs: &[RunSpec],
) -> Result<Vec<ArtifactSet>, CliError> {
    let mut sets: Vec<(Vec<String>, ArtifactSet)> = Vec::new();
    for run in runs {
        let argv = run.args(&sweep.dag);
        let parsed = LmCommand::try_parse_from(&argv).map_err(|e| {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            CliError::usage(
                format!("{}: run `{}`: {first}", sweep.origin, run.name),
                Some("see `ausa train lm --help` for the flags and their values".into()),
            )
        })?;
        let (target, resolved) = trainer_target(pipeline, &parsed.args).map_err(|mut e| {
            e.message = format!("{}: run `{}`: {}", sweep.origin, run.name, e.message);
            e
        })?;
        let fingerprints: Vec<String> = resolved
            .plan
            .stages
            .iter()
            .map(|s| s.fingerprint.clone())
            .collect();
        match sets.iter_mut().find(|(f, _)| *f == fingerprints) {
            Some((_, set)) => set.runs.push(run.name.clone()),
            None => sets.push((
                fingerprints,
                ArtifactSet {
                    target,
                    resolved,
                    runs: vec![run.name.clone()],
                },
            )),
        }
    }
    Ok(sets.into_iter().map(|(_, s)| s).collect())
}

fn describe(target: &TargetArgs) -> String {
    let sets: String = target
        .overrides
        .iter()
        .map(|o| format!(" --set {o}"))
        .collect();
    format!("{}{sets}", target.target)
}

/// Runs `ausa sweep`.
pub fn run(store: Option<&Path>, args: &SweepArgs, out: &Output) -> Result<i32, CliError> {
    let source = ausa_sweep::spec::locate(&args.sweep).map_err(sweep_error)?;
    let sweep = Sweep::parse(&source, &schema()).map_err(sweep_error)?;
    if let Some(path) = &args.wandb_yaml {
        return wandb_yaml(&sweep, path, out);
    }
    let runs = sweep.runs();
    let out_dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("sweeps").join(&sweep.name));
    let out_dir = std::path::absolute(&out_dir).unwrap_or(out_dir);
    let root = ausa_store::Store::default_root(store);
    let root = std::path::absolute(&root).unwrap_or(root);
    let dir = SweepDir::new(&out_dir);
    // A dry run writes nothing: a missing store reads as an empty one.
    let pipeline = if args.dry_run {
        match ausa_store::Store::open(&root) {
            Ok(s) => Pipeline::new(s),
            Err(ausa_store::StoreError::NoStore { .. }) => {
                Pipeline::new(ausa_store::Store::at(&root))
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        Pipeline::new(ausa_store::Store::create(&root)?)
    };
    let sets = artifact_sets(&pipeline, &sweep, &runs)?;
    if args.dry_run {
        return dry_run(&pipeline, &sweep, &runs, &sets, &dir, out);
    }
    dir.check_claims(&runs, &sweep.dag).map_err(sweep_error)?;
    out.log(&format!(
        "sweep {} ({}): {} runs, {} artifact configuration(s) -> {}",
        sweep.name,
        sweep.origin,
        runs.len(),
        sets.len(),
        out_dir.display()
    ));
    for set in &sets {
        let reporter = out.reporter(&set.resolved.plan.dag);
        let opts = ausa_engine::BuildOptions {
            config: Some(set.resolved.config.clone()),
            ..Default::default()
        };
        let report = pipeline.build(&set.resolved, &opts, &reporter, None);
        drop(reporter);
        if !report.ok() {
            return Err(CliError::build_failed(&report, &set.target, out));
        }
    }
    if args.cache_only {
        out.log(&format!("{}: artifacts of every run ready", sweep.name));
        out.json(&json!({"ok": true, "cache_only": true, "artifact_sets": sets.len()}));
        return Ok(0);
    }
    dir.create().map_err(sweep_error)?;
    dir.write_manifest(&json!({
        "name": sweep.name,
        "origin": sweep.origin,
        "description": sweep.description,
        "task": sweep.task,
        "dag": sweep.dag,
        "runs": runs.iter().map(|r| json!({"name": r.name, "params": r.params, "args": r.args(&sweep.dag)})).collect::<Vec<_>>(),
    }))
    .map_err(sweep_error)?;
    let program = std::env::current_exe()
        .map_err(|e| CliError::failure(format!("cannot find the ausa binary: {e}"), None))?;
    let dag = sweep.dag.clone();
    let command = |run: &RunSpec, run_dir: &Path| {
        let mut cmd = std::process::Command::new(&program);
        cmd.arg("--store")
            .arg(&root)
            .args(["train", sweep.task.as_str()])
            .args(run.args(&dag))
            .arg("--out")
            .arg(run_dir)
            // A no-op when the sweep built everything; rebuilds what a gc removed since.
            .arg("--precache");
        cmd
    };
    let poll_ms = std::env::var("AUSA_GPU_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let opts = exec::Options {
        parallel: args.parallel as usize,
        retry_failed: args.retry_failed,
        gpu: GpuGate {
            max_util_pct: args.gpu_max_util,
            min_free_mib: args.gpu_min_free_mib,
            poll: std::time::Duration::from_millis(poll_ms),
            nvidia_smi: std::env::var_os("AUSA_NVIDIA_SMI")
                .map_or_else(|| PathBuf::from("nvidia-smi"), PathBuf::from),
        },
    };
    let outcomes = exec::execute(&dir, &runs, &sweep.dag, &opts, &command, &Log { out })
        .map_err(sweep_error)?;
    let count = |s: &str| outcomes.iter().filter(|o| o.state.as_str() == s).count();
    let (ok, running) = (count("ok"), count("running"));
    let not_ok = outcomes.len() - ok - running;
    out.json(&json!({
        "ok": not_ok == 0,
        "out": out_dir,
        "csv": dir.csv_path(),
        "runs": outcomes.iter().map(|o| json!({
            "name": o.name,
            "state": o.state.as_str(),
            "ran": o.ran,
            "run_dir": dir.run_dir(&o.name),
        })).collect::<Vec<_>>(),
    }));
    let mut line = format!("sweep {}: {ok} ok", sweep.name);
    for state in ["oom", "failed", "killed", "interrupted", "pending"] {
        let n = count(state);
        if n > 0 {
            line.push_str(&format!(", {n} {state}"));
        }
    }
    if running > 0 {
        line.push_str(&format!(", {running} running in another process"));
    }
    out.log(&format!("{line} -> {}", dir.csv_path().display()));
    Ok(if not_ok == 0 { 0 } else { 1 })
}

/// `--wandb-yaml`: the W&B sweep configurations of the sweep file.
fn wandb_yaml(sweep: &Sweep, path: &Path, out: &Output) -> Result<i32, CliError> {
    let docs = ausa_sweep::wandb::sweeps(sweep);
    if path == Path::new("-") {
        let text: Vec<&str> = docs.iter().map(|d| d.yaml.as_str()).collect();
        out.data(text.join("---\n").trim_end());
        out.json(&json!({"ok": true, "wandb_yaml": docs.iter().map(|d| json!({"origin": d.origin, "yaml": d.yaml})).collect::<Vec<_>>()}));
        return Ok(0);
    }
    let paths: Vec<PathBuf> = if docs.len() == 1 {
        vec![path.to_path_buf()]
    } else {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let ext = path
            .extension()
            .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
        (1..=docs.len())
            .map(|i| path.with_file_name(format!("{stem}-{i}{ext}")))
            .collect()
    };
    let mut written = Vec::new();
    for (doc, path) in docs.iter().zip(&paths) {
        std::fs::write(path, &doc.yaml).map_err(|e| {
            CliError::failure(format!("cannot write {}: {e}", path.display()), None)
        })?;
        out.log(&format!("{}: {}", path.display(), doc.origin));
        written.push(json!({"path": path, "origin": doc.origin}));
    }
    out.log(&format!(
        "{} W&B sweep configuration(s) for {}; create each with `wandb sweep FILE`, run it with `wandb agent ID`",
        docs.len(),
        sweep.name
    ));
    out.json(&json!({"ok": true, "wandb_yaml": written}));
    Ok(0)
}

fn dry_run(
    pipeline: &Pipeline,
    sweep: &Sweep,
    runs: &[RunSpec],
    sets: &[ArtifactSet],
    dir: &SweepDir,
    out: &Output,
) -> Result<i32, CliError> {
    out.line(&format!(
        "sweep {} ({}): {} runs -> {}",
        sweep.name,
        sweep.origin,
        runs.len(),
        dir.root().display()
    ));
    let width = runs.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let mut run_json = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let state = dir.state(&run.name);
        let args = run.args(&sweep.dag);
        out.line(&format!(
            "  [{}/{}] {:<width$}  {:<11}  ausa train {} {}",
            i + 1,
            runs.len(),
            run.name,
            state.as_str(),
            sweep.task.as_str(),
            args.join(" ")
        ));
        run_json.push(
            json!({"name": run.name, "state": state.as_str(), "args": args, "params": run.params}),
        );
    }
    out.line(&format!("artifacts: {} configuration(s)", sets.len()));
    let mut set_json = Vec::new();
    for set in sets {
        let states = pipeline.states(&set.resolved);
        let missing: Vec<&str> = states
            .iter()
            .filter(|s| s.state != ausa_build::StateKind::UpToDate)
            .map(|s| s.stage.as_str())
            .collect();
        let what = if missing.is_empty() {
            "built".to_string()
        } else {
            format!("would build {}", missing.join(", "))
        };
        out.line(&format!(
            "  {} ({} run(s)): {what}",
            describe(&set.target),
            set.runs.len()
        ));
        set_json.push(json!({
            "target": set.target.target,
            "overrides": set.target.overrides,
            "runs": set.runs,
            "stages": states,
        }));
    }
    out.json(&json!({"sweep": sweep.name, "dry_run": true, "out": dir.root(), "runs": run_json, "artifacts": set_json}));
    Ok(0)
}

/// Progress lines on stderr.
struct Log<'a> {
    out: &'a Output,
}

fn eta(p: &exec::Progress) -> String {
    match p.eta_s {
        Some(s) if p.left > 0 => format!(
            ", eta {}",
            humantime::format_duration(std::time::Duration::from_secs(s.round() as u64))
        ),
        _ => String::new(),
    }
}

impl Reporter for Log<'_> {
    fn event(&self, event: &Event) {
        let line = match event {
            Event::Note(note) => format!("note: {note}"),
            Event::Skipped(run, why, p) => {
                let why = match why {
                    Skip::Done => "done earlier, skipped".to_string(),
                    Skip::FailedEarlier(s) => format!(
                        "{} earlier, skipped (--retry-failed runs it again)",
                        s.as_str()
                    ),
                    Skip::RunningElsewhere => "running in another process, skipped".to_string(),
                };
                format!(
                    "[{}/{}] {}: {why} ({} left{})",
                    p.index,
                    p.total,
                    run.name,
                    p.left,
                    eta(p)
                )
            }
            Event::WaitingForGpu(run, gpu, why) => {
                format!("{}: waiting for GPU {gpu}: {why}", run.name)
            }
            Event::Started(run, gpu, p) => format!(
                "[{}/{}] {}: started{}",
                p.index,
                p.total,
                run.name,
                gpu.map(|g| format!(" on GPU {g}")).unwrap_or_default()
            ),
            Event::Finished(run, record, p) => {
                let how = match (record.exit_code, record.signal) {
                    (Some(0), _) => String::new(),
                    (Some(c), _) => format!(" (exit {c})"),
                    (None, Some(s)) => format!(" (signal {s})"),
                    (None, None) => String::new(),
                };
                let message = record
                    .message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default();
                format!(
                    "[{}/{}] {}: {}{how} in {:.1}s ({} left{}){message}",
                    p.index,
                    p.total,
                    run.name,
                    record.status.as_str(),
                    record.elapsed_s,
                    p.left,
                    eta(p)
                )
            }
            Event::GpuNotReleased(run, gpu) => format!(
                "warning: GPU {} still uses {} MiB after {}",
                gpu.index, gpu.used_mib, run.name
            ),
        };
        self.out.log(&line);
    }
}
