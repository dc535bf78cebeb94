//! One run directory, read back: what the trainer wrote (`run_meta.json`,
//! `metrics.jsonl`, `summary.json`, a benchmark CSV when there is one) turned into the
//! typed fields tables and plots use.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::ReportError;

/// The knobs of a run: what sets it apart in tables and ablations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Knobs {
    /// `dot-naive`, `sdpa` or `ska`.
    pub attn: String,
    /// The SKA backend (`naive`, `cuda`); for SKA runs only.
    pub ska_backend: Option<String>,
    /// `fp32`, `bf16`, `fp16`.
    pub precision: String,
    /// The seed.
    pub seed: u64,
    /// Tokens per sequence (L).
    pub seq_len: i64,
    /// Sequences per optimizer step (batch x accumulation).
    pub batch: i64,
    /// Heads (H).
    pub heads: i64,
    /// Head width (D = d_model / heads).
    pub head_dim: i64,
    /// Model width.
    pub d_model: i64,
    /// Blocks.
    pub layers: i64,
    /// Set window.
    pub window: i64,
    /// Set stride.
    pub stride: i64,
    /// MinHash values per set.
    pub minhash_k: i64,
    /// Routed candidate sets per token (0 = all).
    pub router_topk: i64,
    /// Learned-gate top-k (0 = all).
    pub gate_topk: i64,
    /// Atom adapter rank (0 = off).
    pub adapter_rank: i64,
    /// SKA content term weight.
    pub beta: f64,
    /// Sets per sequence (the banks' layout).
    pub sets_per_seq: i64,
    /// Positions: `learned` or `rotary`.
    pub pos: String,
    /// SKA set features (`atoms`, `hidden`); for SKA runs only.
    pub set_features: Option<String>,
    /// SKA early-positions remedy (`none`, `leading`); for SKA runs only.
    pub early: Option<String>,
    /// The blocks that use SKA (`all`, or e.g. `1,3`); for SKA runs only.
    pub ska_layers: Option<String>,
}

impl Knobs {
    /// The options beside the table columns that set a run apart (SKA's set features,
    /// early remedy and blocks, rotary positions), `-` when there are none.
    pub fn options(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = &self.set_features {
            parts.push(format!("{f} features"));
        }
        if let Some(e) = self.early.as_deref().filter(|e| *e != "none") {
            parts.push(format!("early {e}"));
        }
        if let Some(l) = self.ska_layers.as_deref().filter(|l| *l != "all") {
            parts.push(format!("SKA blocks {l}"));
        }
        if self.pos != "learned" {
            parts.push(format!("{} positions", self.pos));
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(", ")
        }
    }

    /// The method's name in tables and legends: `dot-naive`, `sdpa`, `ska/naive`.
    pub fn method(&self) -> String {
        match &self.ska_backend {
            Some(b) if self.attn == "ska" => format!("ska/{b}"),
            _ => self.attn.clone(),
        }
    }
}

/// Speed of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Perf {
    /// Optimizer steps per second.
    pub steps_per_s: Option<f64>,
    /// Training tokens per second.
    pub tokens_per_s: Option<f64>,
    /// Peak device memory (MiB); only a benchmark measures it.
    pub max_vram_mb: Option<f64>,
    /// Attention scores per step of one attention layer (dot: B*H*L^2; SKA: B*H*S^2
    /// over the S sets of a sequence), unless a benchmark CSV counted them.
    pub scores_computed: Option<f64>,
    /// Millions of scores per second (`steps_per_s * scores_computed / 1e6`), unless
    /// a benchmark CSV gives `throughput_per_1e6_scores`.
    pub throughput_per_1e6_scores: Option<f64>,
    /// Sets per sequence, from the benchmark CSV (else the banks' layout).
    pub avg_sets_per_seq: Option<f64>,
    /// Atoms per set; only a benchmark CSV has it.
    pub avg_atoms_per_set: Option<f64>,
    /// Where the numbers come from: `benchmark` (the CSV) or `training` (summary.json).
    pub source: &'static str,
}

/// Quality of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Quality {
    /// Final training loss.
    pub last_loss: Option<f64>,
    /// Validation word-level perplexity.
    pub valid_word_ppl: Option<f64>,
    /// Validation token perplexity.
    pub valid_token_ppl: Option<f64>,
    /// Validation bits per byte.
    pub valid_bpb: Option<f64>,
    /// Test word-level perplexity.
    pub test_word_ppl: Option<f64>,
}

/// A run directory read back.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// The directory.
    pub dir: PathBuf,
    /// Its name in tables (the directory's name; its parent's too where names repeat).
    pub label: String,
    /// The task (`lm`).
    pub task: String,
    /// Whether it finished: `summary.json` exists and every planned step ran.
    pub complete: bool,
    /// Why it is not complete, or what is odd about it.
    pub problems: Vec<String>,
    /// Its knobs.
    pub knobs: Knobs,
    /// Its speed.
    pub perf: Perf,
    /// Its quality.
    pub quality: Quality,
    /// `(step, loss)` of every training step logged.
    #[serde(skip)]
    pub losses: Vec<(f64, f64)>,
    /// Hardware, versions, seeds, flags and artifact fingerprints from run_meta.json.
    pub meta: serde_json::Value,
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>, ReportError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ReportError::Io {
                path: path.into(),
                source: e,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ReportError::BadFile {
            path: path.into(),
            message: e.to_string(),
        })
}

/// Whether `dir` is a run directory (has `run_meta.json`).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join("run_meta.json").is_file()
}

impl Run {
    /// Reads the run directory `dir`.
    pub fn load(dir: &Path) -> Result<Run, ReportError> {
        let meta_path = dir.join("run_meta.json");
        let meta = read_json(&meta_path)?.ok_or_else(|| ReportError::NotARun(dir.into()))?;
        let bad = |what: &str| ReportError::BadFile {
            path: meta_path.clone(),
            message: format!("no {what} (not a run_meta.json of `ausa train`?)"),
        };
        let config = &meta["config"];
        let model = &config["model"];
        let train = &meta["data"]["train"];
        let int = |v: &serde_json::Value, what: &str| v.as_i64().ok_or_else(|| bad(what));
        let attn = model["attn"]
            .as_str()
            .ok_or_else(|| bad("config.model.attn"))?
            .to_string();
        let heads = int(&model["heads"], "config.model.heads")?.max(1);
        let d_model = int(&model["d_model"], "config.model.d_model")?;
        let accum = config["accum"].as_i64().unwrap_or(1).max(1);
        let ska = attn == "ska";
        let layers = int(&model["layers"], "config.model.layers")?;
        // Fields added to run_meta.json later default to what older runs did.
        let ska_text = |v: &serde_json::Value, default: &str| {
            ska.then(|| v.as_str().unwrap_or(default).to_string())
        };
        let ska_layers = ska.then(|| {
            let listed: Vec<i64> = model["ska_layers"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
                .unwrap_or_default();
            if listed.is_empty() || listed == (0..layers).collect::<Vec<_>>() {
                "all".to_string()
            } else {
                listed
                    .iter()
                    .map(|l| l.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            }
        });
        let knobs = Knobs {
            ska_backend: ska_text(&meta["ska_backend"], "naive"),
            set_features: ska_text(&meta["set_features"], "atoms"),
            early: ska_text(&meta["early_position_remedy"], "none"),
            ska_layers,
            pos: meta["pos"].as_str().unwrap_or("learned").to_string(),
            attn,
            precision: config["precision"]
                .as_str()
                .ok_or_else(|| bad("config.precision"))?
                .to_string(),
            seed: config["seed"].as_u64().ok_or_else(|| bad("config.seed"))?,
            seq_len: int(&model["seq_len"], "config.model.seq_len")?,
            batch: int(&config["batch"], "config.batch")? * accum,
            heads,
            head_dim: d_model / heads,
            d_model,
            layers,
            window: int(&train["window"], "data.train.window")?,
            stride: int(&train["stride"], "data.train.stride")?,
            minhash_k: int(&train["minhash_k"], "data.train.minhash_k")?,
            router_topk: int(&train["router_topk"], "data.train.router_topk")?,
            gate_topk: model["router_topk"].as_i64().unwrap_or(0),
            adapter_rank: model["adapter_rank"].as_i64().unwrap_or(0),
            beta: model["beta"].as_f64().unwrap_or(0.0),
            sets_per_seq: int(&train["sets_per_seq"], "data.train.sets_per_seq")?,
        };
        // The trainer's command line names the task: `ausa ... train lm ...`.
        let task = meta["run"]["command"]
            .as_array()
            .and_then(|args| {
                let i = args.iter().position(|a| a == "train")?;
                args.get(i + 1)?.as_str().map(String::from)
            })
            .unwrap_or_else(|| "lm".to_string());
        let mut problems = Vec::new();
        let (losses, truncated) = read_losses(&dir.join("metrics.jsonl"))?;
        if truncated {
            problems.push("metrics.jsonl ends in a partial line (a killed run)".to_string());
        }
        let summary = read_json(&dir.join("summary.json"))?;
        let planned = meta["steps"].as_u64();
        let complete = match &summary {
            None => {
                problems.push("no summary.json: the run did not finish".to_string());
                false
            }
            Some(s) => {
                let steps = s["steps"].as_u64();
                if steps.is_some() && planned.is_some() && steps < planned {
                    problems.push(format!(
                        "stopped at step {} of {}",
                        steps.unwrap_or(0),
                        planned.unwrap_or(0)
                    ));
                    false
                } else {
                    true
                }
            }
        };
        let summary = summary.unwrap_or(serde_json::Value::Null);
        let quality = Quality {
            last_loss: summary["last_loss"]
                .as_f64()
                .or_else(|| losses.last().map(|l| l.1)),
            valid_word_ppl: summary["valid"]["word_ppl"].as_f64(),
            valid_token_ppl: summary["valid"]["token_ppl"].as_f64(),
            valid_bpb: summary["valid"]["bits_per_byte"].as_f64(),
            test_word_ppl: summary["test"]["word_ppl"].as_f64(),
        };
        let perf = perf(dir, &knobs, &summary)?;
        Ok(Run {
            dir: dir.to_path_buf(),
            label: dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            task,
            complete,
            problems,
            knobs,
            perf,
            quality,
            losses,
            meta,
        })
    }
}

/// The training losses of `metrics.jsonl` and whether its last line is cut short.
fn read_losses(path: &Path) -> Result<(Vec<(f64, f64)>, bool), ReportError> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => {
            return Err(ReportError::Io {
                path: path.into(),
                source: e,
            })
        }
    };
    let mut losses = Vec::new();
    let mut truncated = false;
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                if v["kind"] == "train" {
                    if let (Some(step), Some(loss)) = (v["step"].as_f64(), v["loss"].as_f64()) {
                        losses.push((step, loss));
                    }
                }
            }
            // A killed writer leaves at most its last line unfinished.
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => truncated = true,
            Err(e) => {
                return Err(ReportError::BadFile {
                    path: path.into(),
                    message: format!("line {}: {e}", i + 1),
                })
            }
        }
    }
    Ok((losses, truncated))
}

/// The last row of a benchmark CSV in the run directory (a `*.csv` other than
/// `summary.csv` whose header has `steps_per_s`), as `(column, value)`.
fn benchmark_row(dir: &Path) -> Result<Option<Vec<(String, String)>>, ReportError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(None);
    };
    let mut csvs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .filter(|p| p.file_name().is_some_and(|n| n != "summary.csv"))
        .collect();
    csvs.sort();
    for path in csvs {
        let text = std::fs::read_to_string(&path).map_err(|e| ReportError::Io {
            path: path.clone(),
            source: e,
        })?;
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else { continue };
        let columns: Vec<String> = header.split(',').map(|c| c.trim().to_string()).collect();
        if !columns.iter().any(|c| c == "steps_per_s") {
            continue;
        }
        let Some(last) = lines.next_back() else {
            continue;
        };
        let values: Vec<&str> = last.split(',').map(str::trim).collect();
        if values.len() != columns.len() {
            return Err(ReportError::BadFile {
                path,
                message: format!(
                    "the last row has {} fields, the header {}",
                    values.len(),
                    columns.len()
                ),
            });
        }
        return Ok(Some(
            columns
                .into_iter()
                .zip(values.into_iter().map(String::from))
                .collect(),
        ));
    }
    Ok(None)
}

fn perf(dir: &Path, knobs: &Knobs, summary: &serde_json::Value) -> Result<Perf, ReportError> {
    let scores = |k: &Knobs| -> f64 {
        let (b, h) = (k.batch as f64, k.heads as f64);
        if k.attn == "ska" {
            let s = k.sets_per_seq as f64;
            b * h * s * s
        } else {
            let l = k.seq_len as f64;
            b * h * l * l
        }
    };
    if let Some(row) = benchmark_row(dir)? {
        let get = |name: &str| {
            row.iter()
                .find(|(c, _)| c == name)
                .and_then(|(_, v)| v.parse::<f64>().ok())
        };
        let steps_per_s = get("steps_per_s");
        let scores_computed = get("scores_computed");
        return Ok(Perf {
            steps_per_s,
            tokens_per_s: get("tokens_per_s")
                .or_else(|| steps_per_s.map(|s| s * (knobs.batch * knobs.seq_len) as f64)),
            max_vram_mb: get("max_vram_mb"),
            throughput_per_1e6_scores: get("throughput_per_1e6_scores")
                .or_else(|| Some(steps_per_s? * scores_computed? / 1e6)),
            scores_computed,
            avg_sets_per_seq: get("avg_sets_per_seq"),
            avg_atoms_per_set: get("avg_atoms_per_set"),
            source: "benchmark",
        });
    }
    let steps = summary["steps"].as_f64();
    let elapsed = summary["elapsed_s"].as_f64().filter(|e| *e > 0.0);
    let steps_per_s = steps.zip(elapsed).map(|(s, e)| s / e);
    let scores_computed = Some(scores(knobs));
    Ok(Perf {
        steps_per_s,
        tokens_per_s: summary["tokens_per_s"].as_f64(),
        // Runs of older binaries have no peak in their summary.
        max_vram_mb: summary["peak_vram_mib"].as_f64(),
        throughput_per_1e6_scores: steps_per_s.zip(scores_computed).map(|(s, c)| s * c / 1e6),
        scores_computed,
        avg_sets_per_seq: Some(knobs.sets_per_seq as f64),
        avg_atoms_per_set: None,
        source: "training",
    })
}
