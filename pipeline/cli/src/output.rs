//! All terminal output goes through here: human text on a TTY, plain log lines when
//! piped, JSON on stdout with `--json`, nothing but errors with `--quiet`. Progress
//! bars go to stderr and only appear on a terminal.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::IsTerminal;
use std::time::Duration;

use ausa_dag::{PlannedStage, Progress, ProgressUnit};
use ausa_engine::{Outcome, Reporter};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::diagnostics::CliError;

/// The output mode of this invocation.
pub struct Output {
    json: bool,
    quiet: bool,
    tty: bool,
}

impl Output {
    /// Chooses the mode from the global flags and whether stderr is a terminal.
    pub fn new(json: bool, quiet: bool) -> Output {
        Output {
            json,
            quiet,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Whether `--json` was given.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// A result line for humans on stdout (suppressed by `--json` and `--quiet`).
    pub fn line(&self, text: &str) {
        if !self.json && !self.quiet {
            println!("{text}");
        }
    }

    /// The answer of a read command (`status`, `show`, `ls`, `path`): printed even
    /// with `--quiet`, which silences only progress and chatter.
    pub fn data(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    /// A log line on stderr (suppressed by `--quiet`).
    pub fn log(&self, text: &str) {
        if !self.quiet {
            eprintln!("{text}");
        }
    }

    /// Prints `value` as pretty JSON on stdout when `--json` was given.
    pub fn json<T: serde::Serialize>(&self, value: &T) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("output serializes")
            );
        }
    }

    /// Prints an error and its hints on stderr (also as JSON with `--json`).
    pub fn error(&self, e: &CliError) {
        if self.json {
            let doc =
                serde_json::json!({"error": e.message, "hints": e.hints, "exit_code": e.code});
            println!(
                "{}",
                serde_json::to_string_pretty(&doc).expect("error serializes")
            );
        }
        eprintln!("error: {}", e.message);
        for hint in &e.hints {
            eprintln!("  hint: {hint}");
        }
    }

    /// A byte progress bar with bytes/s for a push or pull (stderr, TTY only).
    pub fn transfer_bar(&self, label: &str) -> TransferBar {
        let bar = (self.tty && !self.quiet && !self.json).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let template =
                "{prefix} [{bar:30}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, eta {eta})";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_prefix(label.to_string());
            bar
        });
        TransferBar { bar }
    }

    /// The progress of a training run (see [`StepBar`]).
    #[cfg(feature = "train")]
    pub fn step_bar(&self) -> StepBar<'_> {
        let bar = (self.tty && !self.quiet && !self.json).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            let template = "step {pos}/{len} [{bar:30}] {msg} eta {eta}";
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        StepBar { out: self, bar }
    }

    /// The reporter for a build.
    pub fn reporter(&self, dag: &str) -> BuildReporter<'_> {
        let bars = (self.tty && !self.quiet && !self.json)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        BuildReporter {
            out: self,
            dag: dag.to_string(),
            bars,
        }
    }
}

/// Reports build events: progress bars on a terminal, log lines otherwise.
pub struct BuildReporter<'a> {
    out: &'a Output,
    dag: String,
    bars: Option<MultiProgress>,
}

impl BuildReporter<'_> {
    fn say(&self, text: String) {
        if self.out.quiet || self.out.json {
            return;
        }
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    fn label(&self, stage: &PlannedStage) -> String {
        format!(
            "{}:{} [{} {}]",
            self.dag,
            stage.name,
            stage.kind,
            &stage.fingerprint[..12]
        )
    }
}

impl Reporter for BuildReporter<'_> {
    fn started(&self, stage: &PlannedStage) {
        self.say(format!("{:>9} {}", "building", self.label(stage)));
    }

    fn waiting(&self, stage: &PlannedStage, holder: &str) {
        self.say(format!(
            "{:>9} {} (another build holds its lock: {holder})",
            "waiting",
            self.label(stage)
        ));
    }

    fn finished(&self, stage: &PlannedStage, outcome: &Outcome) {
        let label = self.label(stage);
        let line = match outcome {
            Outcome::UpToDate => return,
            Outcome::Built { seconds, bytes: n } => {
                format!("{:>9} {label} in {seconds:.2}s, {}", "built", bytes(*n))
            }
            Outcome::Fetched { seconds, bytes: n } => format!(
                "{:>9} {label} from the remote in {seconds:.2}s, {}",
                "fetched",
                bytes(*n)
            ),
            Outcome::BuiltElsewhere => {
                format!("{:>9} {label} (built by another process)", "reused")
            }
            // The error itself is printed once, in the final message.
            Outcome::Failed { .. } => format!("{:>9} {label}", "FAILED"),
            Outcome::Skipped { upstream } => {
                format!("{:>9} {label} (upstream `{upstream}` failed)", "skipped")
            }
        };
        self.say(line);
    }

    fn fetch_failed(&self, stage: &PlannedStage, error: &str) {
        self.say(format!(
            "{:>9} {}: fetching from the remote failed, building it here: {error}",
            "warning",
            self.label(stage)
        ));
    }

    fn progress<'a>(&'a self, stage: &PlannedStage) -> Box<dyn Progress + 'a> {
        match &self.bars {
            Some(bars) => {
                let bar = bars.add(ProgressBar::new_spinner());
                // `tokens tokens` says nothing twice: the kind only when it differs.
                let prefix = if stage.kind == stage.name {
                    format!("{:>9}", stage.name)
                } else {
                    format!("{:>9} {}", stage.kind, stage.name)
                };
                bar.set_prefix(prefix);
                bar.enable_steady_tick(Duration::from_millis(120));
                Box::new(BarProgress { bar })
            }
            None => Box::new(ausa_dag::NoProgress),
        }
    }
}

/// A stage's progress bar; cleared when the stage finishes.
struct BarProgress {
    bar: ProgressBar,
}

impl Progress for BarProgress {
    fn set_total(&self, total: u64, unit: ProgressUnit) {
        let template = match unit {
            ProgressUnit::Bytes => "{prefix} [{bar:30}] {bytes}/{total_bytes} ({binary_bytes_per_sec}, eta {eta})".to_string(),
            ProgressUnit::Items(name) => format!("{{prefix}} [{{bar:30}}] {{human_pos}}/{{human_len}} {name} ({{per_sec}}, eta {{eta}})"),
        };
        if let Ok(style) = ProgressStyle::with_template(&template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
        // A new total starts a new phase (the tokenizer counts docs, then merges): the
        // position and rate restart with it, or the bar shows `1,658/764 merges`.
        self.bar.reset();
        self.bar.set_length(total);
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// Log lines a training run prints per run without a terminal (about; the first and the
/// last step always): `metrics.jsonl` has every step, a piped log needs a pulse.
#[cfg(feature = "train")]
const PLAIN_STEP_LINES: usize = 200;

/// A training run's progress: on a terminal one bar with the step, loss, tokens/s and
/// ETA, evaluations printed above it; otherwise plain log lines (every step of a short
/// run, about [`PLAIN_STEP_LINES`] of a long one). Cleared when dropped. Only the trainer
/// (the `train` feature) has steps.
#[cfg(feature = "train")]
pub struct StepBar<'a> {
    out: &'a Output,
    bar: Option<ProgressBar>,
}

#[cfg(feature = "train")]
impl StepBar<'_> {
    /// Step `step` of `steps` is done; `status` is its loss and rate, `line` the whole
    /// log line for a log without a terminal.
    pub fn step(&self, step: usize, steps: usize, status: &str, line: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_length(steps as u64);
                bar.set_position(step as u64);
                bar.set_message(status.to_string());
            }
            None if plain_line_due(step, steps) => self.out.log(line),
            None => {}
        }
    }

    /// A line that stays (an evaluation): above the bar on a terminal.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) if !self.out.quiet => bar.println(line),
            _ => self.out.log(line),
        }
    }
}

/// Whether step `step` of `steps` gets a log line without a terminal.
#[cfg(feature = "train")]
fn plain_line_due(step: usize, steps: usize) -> bool {
    let every = (steps / PLAIN_STEP_LINES).max(1);
    step == 1 || step == steps || step.is_multiple_of(every)
}

#[cfg(feature = "train")]
impl Drop for StepBar<'_> {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The progress bar of a push or pull; cleared when dropped.
pub struct TransferBar {
    bar: Option<ProgressBar>,
}

impl ausa_remote::TransferProgress for TransferBar {
    fn start(&self, total_bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total_bytes);
            bar.enable_steady_tick(Duration::from_millis(120));
        }
    }

    fn advance(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }
}

impl Drop for TransferBar {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Bytes for humans, at most 8 characters (`1023 KiB`, `22.6 MiB`, `1.05 GiB`) so
/// size columns stay aligned.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    // Rounding may reach 1024 (1023.97 KiB prints as 1024 KiB): still 8 characters.
    let digits = if value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    format!("{value:.digits$} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::{bytes, BarProgress};
    #[cfg(feature = "train")]
    use super::{plain_line_due, PLAIN_STEP_LINES};

    #[cfg(feature = "train")]
    #[test]
    fn a_long_run_logs_about_two_hundred_lines_a_short_one_every_step() {
        let lines = |steps: usize| (1..=steps).filter(|&s| plain_line_due(s, steps)).count();
        assert_eq!(lines(50), 50);
        assert_eq!(lines(PLAIN_STEP_LINES), PLAIN_STEP_LINES);
        let long = lines(100_003);
        assert!(
            (PLAIN_STEP_LINES..=PLAIN_STEP_LINES + 2).contains(&long),
            "{long}"
        );
        assert!(plain_line_due(1, 100_003) && plain_line_due(100_003, 100_003));
    }
    use ausa_dag::{Progress, ProgressUnit};

    /// The tokenizer stage counts documents, then merges: the bar showed `1,658/764
    /// merges` because a new total kept the old position.
    #[test]
    fn a_new_total_restarts_the_bar() {
        let progress = BarProgress {
            bar: indicatif::ProgressBar::hidden(),
        };
        progress.set_total(894, ProgressUnit::Items("docs"));
        progress.advance(894);
        progress.set_total(764, ProgressUnit::Items("merges"));
        progress.advance(10);
        assert_eq!(progress.bar.position(), 10);
        assert_eq!(progress.bar.length(), Some(764));
    }

    #[test]
    fn byte_sizes_fit_eight_columns() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.00 KiB");
        assert_eq!(bytes(1013 * 1024 + 100), "1013 KiB");
        assert_eq!(bytes(22_600_000), "21.6 MiB");
        for n in [1u64, 999, 1 << 20, (1 << 30) - 1, u64::MAX] {
            assert!(bytes(n).len() <= 8, "{} is wider than 8", bytes(n));
        }
    }
}
