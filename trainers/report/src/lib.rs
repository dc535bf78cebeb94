//! Paper tables, figures and `report.json` from ausa run directories alone
//! (`ausa report RUNS...|SWEEP_DIR --out DIR`).
//!
//! - [`run`]: a run directory read back (`run_meta.json`, `metrics.jsonl`,
//!   `summary.json`, a benchmark CSV when present); a killed run is kept, marked
//!   incomplete with the reason.
//! - [`tables`]: Table A (fp32: dot-naive vs SKA naive), Table B (bf16: SDPA vs SKA),
//!   seeds averaged, and the ablations (one knob varied around the base configuration).
//! - [`plots`]: PNG and SVG figures (plotters, embedded font).
//!
//! [`write`](fn@write) puts everything in the output directory:
//!
//! | file | what |
//! |---|---|
//! | `report.md` | the tables, the ablations, the figures, incomplete runs |
//! | `table_a.csv`, `table_b.csv`, `ablations.csv` | the same numbers for scripts |
//! | `report.json` | every run with its hardware, versions, seeds, flags and artifact fingerprints, and every row with the runs it averages |
//! | `loss.{png,svg}`, `throughput_vs_len.{png,svg}`, `vram_vs_len.{png,svg}`, `ablation_<knob>.{png,svg}`, `bank_histograms.{png,svg}` | the figures |
//! | `minhash_error.{png,svg}` | the MinHash error histograms, when a `minhash_error.csv` is given or found ([`hist`]) |
//!
//! ```no_run
//! let loaded = ausa_report::load(&["sweeps/demo".into()])?;
//! let written = ausa_report::write(&loaded, std::path::Path::new("reports/demo"))?;
//! println!("{}", written.markdown.display());
//! # Ok::<(), ausa_report::ReportError>(())
//! ```

pub mod hist;
pub mod plots;
pub mod run;
pub mod tables;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use run::Run;
use tables::{Ablation, Row, Stat, Which};

/// Errors of a report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// An input is neither a run directory nor holds any.
    #[error("{} is not a run directory (no run_meta.json) and holds none", .0.display())]
    NotARun(PathBuf),
    /// An input does not exist.
    #[error("{}: no such file or directory", .0.display())]
    Missing(PathBuf),
    /// The runs are of several tasks.
    #[error("the runs are of several tasks ({0}): a report covers one task")]
    MixedTasks(String),
    /// A file of a run that cannot be read as what it should be.
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// I/O.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Drawing a figure failed.
    #[error("{}: {message}", path.display())]
    Plot {
        /// The figure.
        path: PathBuf,
        /// The plotting error.
        message: String,
    },
}

impl ReportError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ReportError::NotARun(_) | ReportError::Missing(_) => Some(
                "give run directories of `ausa train` (--out) or a sweep directory of `ausa sweep`"
                    .into(),
            ),
            ReportError::MixedTasks(_) => Some("report each task's runs separately".into()),
            _ => None,
        }
    }

    /// 2 for bad inputs, 1 for failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            ReportError::NotARun(_) | ReportError::Missing(_) | ReportError::MixedTasks(_) => 2,
            _ => 1,
        }
    }
}

/// A run a sweep started that wrote no run directory (it failed before training:
/// a bad flag, missing artifacts); only its `sweep_status.json` tells what happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unstarted {
    /// The directory.
    pub dir: PathBuf,
    /// Its name in the report.
    pub label: String,
    /// `failed`, `oom`, `killed`, with the exit code or signal.
    pub status: String,
    /// The last line of its error output.
    pub message: Option<String>,
}

/// What [`load`] found.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The run directories.
    pub runs: Vec<Run>,
    /// Sweep runs that ended before writing a run directory.
    pub unstarted: Vec<Unstarted>,
    /// The exact-Delta data (`tests/bench/minhash_error.sh`'s `minhash_error.csv`) to
    /// draw: a `minhash_error.csv` directly in an input directory, or set by the caller
    /// (`ausa report --minhash-error`).
    pub minhash_error: Option<PathBuf>,
}

fn unstarted(dir: &Path) -> Option<Unstarted> {
    let bytes = std::fs::read(dir.join("sweep_status.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let how = match (v["exit_code"].as_i64(), v["signal"].as_i64()) {
        (Some(c), _) => format!(" (exit {c})"),
        (None, Some(s)) => format!(" (signal {s})"),
        _ => String::new(),
    };
    Some(Unstarted {
        dir: dir.to_path_buf(),
        label: dir.file_name()?.to_string_lossy().into_owned(),
        status: format!("{}{how}", v["status"].as_str().unwrap_or("unknown")),
        message: v["message"].as_str().map(String::from),
    })
}

/// Run directories under `dir` (itself, or below it at most 3 levels down), sorted;
/// sweep runs without one go to `others`.
fn find_runs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>, others: &mut Vec<Unstarted>) {
    if run::is_run_dir(dir) {
        out.push(dir.to_path_buf());
        return;
    }
    if let Some(u) = unstarted(dir) {
        others.push(u);
        return;
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut subs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subs.sort();
    for sub in subs {
        find_runs(&sub, depth - 1, out, others);
    }
}

/// Loads the runs named by `inputs`: run directories, or directories holding them (a
/// sweep's `--out`). Labels are the directory names, with the parent's where two
/// repeat. Fails on a non-run input and on runs of several tasks.
pub fn load(inputs: &[PathBuf]) -> Result<Loaded, ReportError> {
    let mut dirs = Vec::new();
    let mut unstarted = Vec::new();
    for input in inputs {
        if !input.exists() {
            return Err(ReportError::Missing(input.clone()));
        }
        let before = (dirs.len(), unstarted.len());
        find_runs(input, 3, &mut dirs, &mut unstarted);
        if (dirs.len(), unstarted.len()) == before {
            return Err(ReportError::NotARun(input.clone()));
        }
    }
    dirs.dedup();
    let mut runs = dirs
        .iter()
        .map(|d| Run::load(d))
        .collect::<Result<Vec<_>, _>>()?;
    let labels: Vec<String> = runs.iter().map(|r| r.label.clone()).collect();
    for run in &mut runs {
        if labels.iter().filter(|l| **l == run.label).count() > 1 {
            if let Some(parent) = run.dir.parent().and_then(|p| p.file_name()) {
                run.label = format!("{}/{}", parent.to_string_lossy(), run.label);
            }
        }
    }
    let mut tasks: Vec<&str> = runs.iter().map(|r| r.task.as_str()).collect();
    tasks.sort();
    tasks.dedup();
    if tasks.len() > 1 {
        let counts: Vec<String> = tasks
            .iter()
            .map(|t| format!("{t}: {}", runs.iter().filter(|r| r.task == *t).count()))
            .collect();
        return Err(ReportError::MixedTasks(counts.join(", ")));
    }
    Ok(Loaded {
        runs,
        unstarted,
        minhash_error: hist::find_minhash_csv(None, inputs),
    })
}

/// The files a report wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Written {
    /// `report.md`.
    pub markdown: PathBuf,
    /// `report.json`.
    pub json: PathBuf,
    /// The CSV tables.
    pub csv: Vec<PathBuf>,
    /// The figures (PNG and SVG).
    pub figures: Vec<PathBuf>,
    /// Rows of Table A and Table B.
    pub rows: (usize, usize),
    /// Runs read, and how many of them are incomplete.
    pub runs: (usize, usize),
    /// Sweep runs that ended before writing a run directory.
    pub unstarted: usize,
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let tmp = path.with_file_name(format!(
        ".tmp.{}.{}",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| ReportError::Io {
            path: path.to_path_buf(),
            source,
        })
}

/// `mean` or `mean ± std` (several seeds that differ) with `digits` decimals; `-` when
/// missing.
fn cell(stat: Option<Stat>, digits: usize) -> String {
    cell_with(stat, &|v| format!("{v:.digits$}"))
}

/// Like [`cell`] with three significant digits (rates that span orders of magnitude).
fn cell_short(stat: Option<Stat>) -> String {
    cell_with(stat, &plots::short)
}

fn cell_with(stat: Option<Stat>, fmt: &dyn Fn(f64) -> String) -> String {
    match stat {
        None => "-".into(),
        Some(s) if s.n > 1 && s.std > 0.0 => format!("{} ± {}", fmt(s.mean), fmt(s.std)),
        Some(s) => fmt(s.mean),
    }
}

/// The column headers and cells of Tables A and B (Markdown and CSV share them).
const COLUMNS: [&str; 19] = [
    "method",
    "L",
    "B",
    "H",
    "D",
    "window/stride",
    "minhash k",
    "router top-k",
    "gate top-k",
    "options",
    "sets/seq",
    "atoms/set",
    "steps/s",
    "tokens/s",
    "peak VRAM (MiB)",
    "M scores/s",
    "valid word ppl",
    "seeds",
    "runs",
];

fn cells(row: &Row) -> Vec<String> {
    let k = &row.knobs;
    vec![
        row.method.clone(),
        k.seq_len.to_string(),
        k.batch.to_string(),
        k.heads.to_string(),
        k.head_dim.to_string(),
        format!("{}/{}", k.window, k.stride),
        k.minhash_k.to_string(),
        k.router_topk.to_string(),
        k.gate_topk.to_string(),
        k.options(),
        cell(row.avg_sets_per_seq, 1),
        cell(row.avg_atoms_per_set, 1),
        cell_short(row.steps_per_s),
        cell(row.tokens_per_s, 0),
        cell(row.max_vram_mb, 0),
        cell_short(row.throughput_per_1e6_scores),
        cell(row.valid_word_ppl, 2),
        row.seeds.len().to_string(),
        row.runs.join(" "),
    ]
}

fn markdown_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", header.join(" | "));
    s.push_str(&format!(
        "|{}\n",
        header.iter().map(|_| "---|").collect::<String>()
    ));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

fn csv_text(header: &[String], rows: &[Vec<String>]) -> String {
    let field = |f: &String| {
        if f.contains([',', '"', '\n']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.clone()
        }
    };
    let line = |r: &[String]| r.iter().map(field).collect::<Vec<_>>().join(",") + "\n";
    let mut s = line(header);
    for r in rows {
        s.push_str(&line(r));
    }
    s
}

/// The sequence lengths of the runs, sorted, as category labels; and each method's
/// mean of `value` per length.
fn by_length(runs: &[Run], value: fn(&Run) -> Option<f64>) -> (Vec<String>, Vec<plots::Series>) {
    let done: Vec<&Run> = runs.iter().filter(|r| r.complete).collect();
    let mut lengths: Vec<i64> = done.iter().map(|r| r.knobs.seq_len).collect();
    lengths.sort();
    lengths.dedup();
    let mut methods: Vec<String> = done
        .iter()
        .map(|r| format!("{} {}", r.knobs.method(), r.knobs.precision))
        .collect();
    methods.sort();
    methods.dedup();
    let series = methods
        .into_iter()
        .filter_map(|m| {
            let points: Vec<(f64, f64)> = lengths
                .iter()
                .enumerate()
                .filter_map(|(i, &l)| {
                    let stat = Stat::of(
                        done.iter()
                            .filter(|r| {
                                r.knobs.seq_len == l
                                    && format!("{} {}", r.knobs.method(), r.knobs.precision) == m
                            })
                            .map(|r| value(r)),
                    )?;
                    Some((i as f64, stat.mean))
                })
                .collect();
            (!points.is_empty()).then_some(plots::Series { label: m, points })
        })
        .collect();
    (lengths.iter().map(|l| l.to_string()).collect(), series)
}

/// Writes the report of `loaded` into `out` (created if needed).
pub fn write(loaded: &Loaded, out: &Path) -> Result<Written, ReportError> {
    let runs = &loaded.runs[..];
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io {
        path: out.to_path_buf(),
        source,
    })?;
    let task = runs.first().map_or("lm", |r| r.task.as_str());
    let incomplete: Vec<&Run> = runs.iter().filter(|r| !r.complete).collect();
    let a = tables::table(runs, Which::A);
    let b = tables::table(runs, Which::B);
    let ablations = tables::ablations(runs);
    let header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    let mut csv = Vec::new();
    let mut md = String::new();
    let _ = writeln!(md, "# Report: task `{task}`\n");
    let _ = writeln!(
        md,
        "{} runs ({} complete, {} incomplete). Numbers are means over seeds (± one standard \
         deviation where a row has several). steps/s and tokens/s come from a benchmark CSV \
         in the run directory when there is one, else from the training run; M scores/s is \
         steps/s times the attention scores of one layer per step (dot: B·H·L², SKA: \
         B·H·S² over S sets per sequence) / 10⁶.\n",
        runs.len(),
        runs.len() - incomplete.len(),
        incomplete.len()
    );
    for (which, rows, name, title) in [
        (
            Which::A,
            &a,
            "table_a",
            "Table A: naive vs naive (fp32: dot-naive vs SKA naive)",
        ),
        (
            Which::B,
            &b,
            "table_b",
            "Table B: optimized vs optimized (bf16: SDPA vs SKA)",
        ),
    ] {
        let _ = writeln!(md, "## {title}\n");
        let cells: Vec<Vec<String>> = rows.iter().map(cells).collect();
        if rows.is_empty() {
            let need = match which {
                Which::A => "fp32 runs of --attn dot-naive or --attn ska --ska-backend naive",
                Which::B => "bf16 runs of --attn sdpa or --attn ska",
            };
            let _ = writeln!(md, "No runs for this table (it needs {need}).\n");
        } else {
            md.push_str(&markdown_table(&header, &cells));
            md.push('\n');
        }
        let path = out.join(format!("{name}.csv"));
        write_file(&path, csv_text(&header, &cells).as_bytes())?;
        csv.push(path);
    }
    let mut figures = Vec::new();
    let _ = writeln!(md, "## Ablations\n");
    if ablations.is_empty() {
        let _ = writeln!(
            md,
            "No knob takes two values among runs that agree in every other knob.\n"
        );
    }
    let ab_header: Vec<String> = [
        "knob", "value", "metric", "mean", "std", "seeds", "tokens/s", "runs",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut ab_rows = Vec::new();
    for ab in &ablations {
        let _ = writeln!(md, "### {}\n", ab.knob);
        let _ = writeln!(md, "Around: {}.\n", ab.around.join(", "));
        let rows: Vec<Vec<String>> = ab
            .bars
            .iter()
            .map(|bar| {
                vec![
                    bar.value.clone(),
                    cell(Some(bar.metric), 2),
                    bar.metric.n.to_string(),
                    cell(bar.tokens_per_s, 0),
                    bar.runs.join(" "),
                ]
            })
            .collect();
        let head: Vec<String> = [
            ab.knob.as_str(),
            ab.metric.as_str(),
            "seeds",
            "tokens/s",
            "runs",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        md.push_str(&markdown_table(&head, &rows));
        let name = format!("ablation_{}", ab.knob);
        figures.extend(plots::save_bars(&bar_plot(ab), out, &name)?);
        let _ = writeln!(md, "\n![{} ablation]({name}.png)\n", ab.knob);
        for bar in &ab.bars {
            ab_rows.push(vec![
                ab.knob.clone(),
                bar.value.clone(),
                ab.metric.clone(),
                format!("{}", bar.metric.mean),
                format!("{}", bar.metric.std),
                bar.metric.n.to_string(),
                bar.tokens_per_s
                    .map_or(String::new(), |s| format!("{}", s.mean)),
                bar.runs.join(" "),
            ]);
        }
    }
    let path = out.join("ablations.csv");
    write_file(&path, csv_text(&ab_header, &ab_rows).as_bytes())?;
    csv.push(path);

    let _ = writeln!(md, "## Figures\n");
    let loss = plots::LinePlot {
        title: "Training loss".into(),
        x_desc: "optimizer step".into(),
        y_desc: "train loss (nats / token)".into(),
        x: plots::XAxis::Linear,
        log_y_over: f64::INFINITY,
        series: runs
            .iter()
            .filter(|r| !r.losses.is_empty())
            .map(|r| plots::Series {
                label: if r.complete {
                    r.label.clone()
                } else {
                    format!("{} (incomplete)", r.label)
                },
                points: r.losses.clone(),
            })
            .collect(),
        empty_note: "no training steps logged".into(),
    };
    figures.extend(plots::save_lines(&loss, out, "loss")?);
    let (lengths, series) = by_length(runs, |r| r.perf.tokens_per_s);
    let throughput = plots::LinePlot {
        title: "Throughput vs sequence length".into(),
        x_desc: "sequence length L (tokens)".into(),
        y_desc: "training throughput (tokens / s)".into(),
        x: plots::XAxis::Categories(lengths),
        log_y_over: 20.0,
        series,
        empty_note: "no complete runs".into(),
    };
    figures.extend(plots::save_lines(&throughput, out, "throughput_vs_len")?);
    let (lengths, series) = by_length(runs, |r| r.perf.max_vram_mb);
    let vram = plots::LinePlot {
        title: "Peak VRAM vs sequence length".into(),
        x_desc: "sequence length L (tokens)".into(),
        y_desc: "peak VRAM (MiB)".into(),
        x: plots::XAxis::Categories(lengths),
        log_y_over: 20.0,
        series,
        empty_note: "no peak VRAM measured (CPU runs, or no --benchmark CSV)".into(),
    };
    figures.extend(plots::save_lines(&vram, out, "vram_vs_len")?);
    for (name, what) in [
        ("loss", "training loss of every run"),
        ("throughput_vs_len", "tokens/s against L, per method"),
        ("vram_vs_len", "peak VRAM against L, per method"),
    ] {
        let _ = writeln!(md, "![{what}]({name}.png)\n");
    }
    let banks = hist::bank_data(runs);
    figures.extend(plots::save_hists(
        &bank_plot(&banks),
        out,
        "bank_histograms",
    )?);
    if banks.is_empty() {
        let _ = writeln!(
            md,
            "![bank statistics](bank_histograms.png)\n\nBank statistics: no run's \
             run_meta.json holds bank histograms (runs of an older `ausa train`).\n"
        );
    } else {
        let _ = writeln!(
            md,
            "![bank statistics: sets per sequence and atoms per set](bank_histograms.png)\n\n\
             Bank statistics of the training split, one series per data configuration (banks \
             artifact fingerprint):\n"
        );
        for d in &banks {
            let _ = writeln!(
                md,
                "- `{}`: {} sequences, {} sets; runs {}",
                d.label,
                d.sets_per_seq.1.iter().map(|b| b.1).sum::<u64>(),
                d.atoms_per_set.1.iter().map(|b| b.1).sum::<u64>(),
                d.runs.join(" ")
            );
        }
        md.push('\n');
    }
    let minhash = match &loaded.minhash_error {
        Some(path) => Some((path.clone(), hist::read_minhash_csv(path)?)),
        None => None,
    };
    match &minhash {
        Some((path, ks)) => {
            figures.extend(plots::save_hists(&minhash_plot(ks), out, "minhash_error")?);
            let _ = writeln!(
                md,
                "![MinHash error of Delta per k](minhash_error.png)\n\nMinHash error of Delta \
                 (estimate - exact, every causal pair of sets) from `{}`:\n",
                path.file_name().unwrap_or_default().to_string_lossy()
            );
            let head: Vec<String> = [
                "k", "pairs", "bias", "mean abs", "RMSE", "p50 abs", "p90 abs", "p99 abs",
                "max abs",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let rows: Vec<Vec<String>> = ks
                .iter()
                .map(|k| {
                    let mut row = vec![k.k.to_string()];
                    for name in [
                        "pairs", "mean", "mean_abs", "rmse", "p50_abs", "p90_abs", "p99_abs",
                        "max_abs",
                    ] {
                        let digits = if name == "pairs" { 0 } else { 2 };
                        row.push(k.stat(name).map_or("-".into(), |v| format!("{v:.digits$}")));
                    }
                    row
                })
                .collect();
            md.push_str(&markdown_table(&head, &rows));
            md.push('\n');
        }
        None => {
            let _ = writeln!(
                md,
                "MinHash error histograms: not drawn: no exact-Delta data (run \
                 `tests/bench/minhash_error.sh WORKDIR`, then `ausa report ... --minhash-error \
                 WORKDIR/minhash_error.csv`, or put `minhash_error.csv` in the report's input \
                 directory).\n"
            );
        }
    }
    if !incomplete.is_empty() || !loaded.unstarted.is_empty() {
        let _ = writeln!(
            md,
            "## Incomplete runs (left out of tables and ablations)\n"
        );
        for r in &incomplete {
            let _ = writeln!(md, "- `{}`: {}", r.label, r.problems.join("; "));
        }
        for u in &loaded.unstarted {
            let _ = writeln!(
                md,
                "- `{}`: {} before training{}",
                u.label,
                u.status,
                u.message
                    .as_ref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
        }
        md.push('\n');
    }
    let markdown = out.join("report.md");
    write_file(&markdown, md.as_bytes())?;

    let json = serde_json::json!({
        "task": task,
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
        "unstarted": loaded.unstarted,
        "table_a": a,
        "table_b": b,
        "ablations": ablations,
        "bank_histograms": banks,
        "minhash_error": minhash.as_ref().map(|(path, ks)| serde_json::json!({"csv": path, "k": ks})),
        "figures": figures.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect::<Vec<_>>(),
    });
    let json_path = out.join("report.json");
    write_file(
        &json_path,
        &serde_json::to_vec_pretty(&json).expect("the report serializes"),
    )?;
    Ok(Written {
        markdown,
        json: json_path,
        csv,
        figures,
        rows: (a.len(), b.len()),
        runs: (runs.len(), incomplete.len()),
        unstarted: loaded.unstarted.len(),
    })
}

/// Sets per sequence and atoms per set, one series per data configuration.
fn bank_plot(banks: &[hist::BankData]) -> plots::HistPlot {
    let panel = |title: &str,
                 x_desc: &str,
                 y_desc: &str,
                 pick: fn(&hist::BankData) -> &hist::Bins| plots::HistPanel {
        title: title.into(),
        x_desc: x_desc.into(),
        y_desc: y_desc.into(),
        log_y_over: 20.0,
        series: banks
            .iter()
            .map(|d| hist::integer_bins(&d.label, pick(d)))
            .collect(),
        empty_note: "no bank histograms in run_meta.json".into(),
        integer_x: true,
    };
    plots::HistPlot {
        panels: vec![
            panel(
                "Sets per sequence (train split)",
                "sets per sequence",
                "sequences",
                |d| &d.sets_per_seq,
            ),
            panel(
                "Atoms per set (train split)",
                "atoms per set (distinct token ids)",
                "sets",
                |d| &d.atoms_per_set,
            ),
        ],
    }
}

/// The MinHash error histogram of each k (the finite bins; the outer ones are counted
/// in the legend).
fn minhash_plot(ks: &[hist::MinhashK]) -> plots::HistPlot {
    let series = ks
        .iter()
        .map(|k| {
            let outside: u64 = k
                .bins
                .iter()
                .filter(|b| !b.0.is_finite() || !b.1.is_finite())
                .map(|b| b.2)
                .sum();
            let total: u64 = k.bins.iter().map(|b| b.2).sum();
            let mut label = format!("k = {} ({} pairs", k.k, total);
            if outside > 0 {
                label.push_str(&format!(", {outside} outside the axis"));
            }
            label.push(')');
            plots::HistSeries {
                label,
                bins: k
                    .bins
                    .iter()
                    .filter(|b| b.0.is_finite() && b.1.is_finite())
                    .map(|&(lo, hi, c)| (lo, hi, c as f64))
                    .collect(),
            }
        })
        .collect();
    plots::HistPlot {
        panels: vec![plots::HistPanel {
            title: "MinHash error of Delta, per k".into(),
            x_desc: "estimate - exact Delta (atoms)".into(),
            y_desc: "pairs of sets".into(),
            log_y_over: 20.0,
            series,
            empty_note: "no pairs".into(),
            integer_x: false,
        }],
    }
}

fn bar_plot(ab: &Ablation) -> plots::BarPlot {
    plots::BarPlot {
        title: format!("Ablation: {}", ab.knob),
        x_desc: ab.knob.clone(),
        y_desc: format!("{} (mean ± std over seeds)", ab.metric),
        bars: ab
            .bars
            .iter()
            .map(|b| plots::Bar {
                label: b.value.clone(),
                mean: b.metric.mean,
                std: b.metric.std,
                n: b.metric.n,
            })
            .collect(),
    }
}

/// A run's entry of `report.json`: its numbers and where they come from.
fn run_json(r: &Run) -> serde_json::Value {
    let m = &r.meta;
    serde_json::json!({
        "dir": r.dir,
        "label": r.label,
        "complete": r.complete,
        "problems": r.problems,
        "knobs": r.knobs,
        "perf": r.perf,
        "quality": r.quality,
        "hardware": {"device": m["device"], "gpu_name": m["gpu_name"]},
        "versions": {"ausa": m["ausa_version"], "git_revision": m["git_revision"], "libtorch": m["libtorch"]},
        "seeds": m["seeds"],
        "command": m["run"]["command"],
        "dag": m["run"]["dag"],
        "overrides": m["run"]["overrides"],
        "artifacts": m["run"]["artifacts"],
        "config": m["config"],
    })
}
