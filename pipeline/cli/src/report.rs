//! `ausa report`: tables, figures and report.json from run directories
//! (the work is `ausa-report`'s), and with `--wandb` each run logged to Weights & Biases
//! through `ausa-track`'s sidecar.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use ausa_track::wandb::{Logged, Options, RunToLog};

use crate::diagnostics::CliError;
use crate::output::Output;

/// `ausa report` flags.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories (`ausa train lm --out`) or directories holding them (a sweep's
    /// --out).
    #[arg(value_name = "RUNS|SWEEP_DIR", required = true)]
    pub inputs: Vec<PathBuf>,
    /// Where report.md, the CSV tables, report.json and the figures go.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The exact-Delta data to draw as MinHash error histograms (minhash_error.png):
    /// the CSV `tests/bench/minhash_error.sh WORKDIR` writes (WORKDIR/minhash_error.csv)
    /// [default: a minhash_error.csv directly in an input directory, if any].
    #[arg(long, value_name = "CSV")]
    pub minhash_error: Option<PathBuf>,
    /// Also log every run's metrics (metrics.jsonl, as the TensorBoard tags) and
    /// configuration (run_meta.json) to Weights & Biases, through the official `wandb`
    /// Python package (`pip install wandb`; log in with `wandb login`). Metrics only:
    /// no models or checkpoints. Each call logs new W&B runs.
    #[arg(long, help_heading = "Weights & Biases")]
    pub wandb: bool,
    /// With --wandb: the W&B project [default: $WANDB_PROJECT, else wandb's own].
    #[arg(
        long,
        value_name = "NAME",
        requires = "wandb",
        help_heading = "Weights & Biases"
    )]
    pub wandb_project: Option<String>,
    /// With --wandb: the W&B group of the runs (e.g. the sweep's name).
    #[arg(
        long,
        value_name = "NAME",
        requires = "wandb",
        help_heading = "Weights & Biases"
    )]
    pub wandb_group: Option<String>,
    /// With --wandb: log offline, as WANDB_MODE=offline does: wandb writes
    /// wandb/offline-run-*/ under --out (or $WANDB_DIR), and `wandb sync` uploads it later.
    #[arg(long, requires = "wandb", help_heading = "Weights & Biases")]
    pub wandb_offline: bool,
    /// With --wandb: the Python that has the `wandb` package.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "python3",
        requires = "wandb",
        help_heading = "Weights & Biases"
    )]
    pub python: PathBuf,
}

fn report_error(e: ausa_report::ReportError) -> CliError {
    CliError {
        message: e.to_string(),
        hints: e.hint().into_iter().collect(),
        code: e.exit_code(),
    }
}

/// Runs `ausa report`.
pub fn run(args: &ReportArgs, out: &Output) -> Result<i32, CliError> {
    let mut loaded = ausa_report::load(&args.inputs).map_err(report_error)?;
    if let Some(csv) = &args.minhash_error {
        loaded.minhash_error = Some(csv.clone());
    }
    let written = ausa_report::write(&loaded, &args.out).map_err(report_error)?;
    let logged = if args.wandb {
        Some(wandb(args, &loaded, out)?)
    } else {
        None
    };
    out.json(&json!({"ok": true, "written": written, "wandb": logged}));
    let (total, incomplete) = written.runs;
    out.line(&format!(
        "report of {total} runs ({incomplete} incomplete, {} ended before training): Table A {} rows, Table B {} rows, {} figures -> {}",
        written.unstarted,
        written.rows.0,
        written.rows.1,
        written.figures.len(),
        written.markdown.display()
    ));
    Ok(0)
}

/// `--wandb`: every run directory through the `wandb` sidecar (`ausa-track`).
fn wandb(
    args: &ReportArgs,
    loaded: &ausa_report::Loaded,
    out: &Output,
) -> Result<Vec<Logged>, CliError> {
    let runs: Vec<RunToLog> = loaded
        .runs
        .iter()
        .map(|r| RunToLog {
            dir: r.dir.clone(),
            name: r.label.clone(),
        })
        .collect();
    let opts = Options {
        python: args.python.clone(),
        project: args.wandb_project.clone(),
        group: args.wandb_group.clone(),
        offline: args.wandb_offline,
        // wandb's run directories go beside the report unless WANDB_DIR says otherwise.
        dir: std::env::var_os("WANDB_DIR")
            .is_none()
            .then(|| std::path::absolute(&args.out).unwrap_or(args.out.clone())),
    };
    out.log(&format!(
        "wandb: logging {} runs with {}",
        runs.len(),
        opts.python.display()
    ));
    let logged = ausa_track::wandb::log_runs(&runs, &opts).map_err(|e| CliError {
        message: e.to_string(),
        hints: e.hint().into_iter().collect(),
        code: 1,
    })?;
    for l in &logged {
        let cut = if l.truncated {
            ", its cut-off last metrics line left out"
        } else {
            ""
        };
        let at = match (&l.url, &l.dir) {
            (Some(url), _) => url.clone(),
            (None, Some(dir)) => format!("offline: {}", dir.display()),
            (None, None) => String::new(),
        };
        out.log(&format!(
            "wandb: {} -> run {} ({} steps{cut}) {at}",
            l.run_dir.display(),
            l.id,
            l.steps
        ));
    }
    Ok(logged)
}
