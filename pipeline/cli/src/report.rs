//! `ausa report`: tables, figures and report.json from run directories
//! (the work is `ausa-report`'s).

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

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
    let loaded = ausa_report::load(&args.inputs).map_err(report_error)?;
    let written = ausa_report::write(&loaded, &args.out).map_err(report_error)?;
    out.json(&json!({"ok": true, "written": written}));
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
