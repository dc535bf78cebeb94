//! `ausa train lm --benchmark`: the training step (forward, backward, AdamW) at fixed
//! shapes, timed with the device synchronized, as one row of the SPEC's benchmark CSV.
//!
//! Three timed passes of `iters` steps follow `warmup` untimed ones:
//! 1. **step time**: the device is synchronized before and after each step and nothing in
//!    between, so the step runs as in training; `elapsed_ms` is the median.
//! 2. **loop**: the steps back to back with one synchronization at the end, as training
//!    runs them and as the PyTorch peer (`tests/bench/lm_peer.py`) times itself;
//!    `loop_ms` is the mean.
//! 3. **phases**: the same steps with a synchronization after each phase (batch input,
//!    forward, backward, optimizer; `Phase`); the medians say where the time goes, and
//!    `input_fraction` is the median share of the input path (gathering the batch and
//!    copying it to the device) in a step.
//!
//! Batches are real training sequences in the sampler's epoch-0 order, `B` each (wrapping
//! around a small split, so every step has the same shape). `max_vram_mb` is the CUDA
//! caching allocator's peak over the whole benchmark (warm-up included), from
//! [`ausa_kernels::shim::cuda_memory`]; empty on the CPU.
//!
//! CSV columns ([`BenchResult::fields`]): the SPEC's `backend, dtype, B, L, H, D, window,
//! stride, minhash_k, router_topk, avg_sets_per_seq, avg_atoms_per_set, elapsed_ms,
//! steps_per_s, max_vram_mb, scores_computed, throughput_per_1e6_scores`, then
//! `tokens_per_s` and the extras below. Definitions:
//! - `D` is the head width (`d_model / H`); `d_model` and `layers` follow as extras.
//! - `scores_computed` is per attention layer and forward pass, the SPEC's formula:
//!   `B * H * L * L` for `dot-naive` and `sdpa`, `H * sum over sequences |J_q| * |J_k|`
//!   (`B * H * M * M` with `M` sets per sequence) for `ska`.
//! - `throughput_per_1e6_scores` is millions of scores per second,
//!   `scores_computed * steps_per_s / 1e6`.
//! - The set columns (`window` .. `avg_atoms_per_set`) are empty for `dot-naive` and
//!   `sdpa`, which read no sets.
//! - `model_tflops` is the achieved model FLOP rate, `tokens_per_s * (6 N + 12 layers d L)`
//!   (the PaLM count: `N` the parameters a token multiplies by, the output projection
//!   included, the position table not; the attention term only for dot attention).
//!
//! Rows are appended to the CSV (one header; a file with other columns is an error, never
//! mixed), and the run's metadata is appended beside it as one JSON line per row
//! (`NAME.meta.jsonl` for `NAME.csv`), both through a temp file and a rename.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use tch::{Device, Tensor};

use crate::data::SplitData;
use crate::model::Attn;
use crate::train::{build_model, train_step, AdamW, Phase, Sampler, TrainConfig};
use crate::Error;

/// `--bench-warmup`, `--bench-iters`, `--benchmark-csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchSettings {
    /// Untimed steps first (compilation of kernels, allocator warm-up).
    pub warmup: usize,
    /// Timed steps (per pass).
    pub iters: usize,
    /// The CSV the row is appended to.
    pub csv: PathBuf,
}

/// One benchmark: what to run, on what.
#[derive(Debug)]
pub struct Bench<'a> {
    /// Model and optimizer settings (`batch` is `B`; `accum` must be 1).
    pub config: TrainConfig,
    /// The training split (sequences and sets).
    pub data: &'a SplitData,
    /// The device.
    pub device: Device,
    /// Iterations and output.
    pub settings: BenchSettings,
    /// Extra fields for the metadata line (command line, DAG, artifact fingerprints).
    pub meta: serde_json::Value,
}

/// Median milliseconds of each phase of a step (the phase pass).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct PhaseTimes {
    /// Gathering the batch and copying it to the device.
    pub input_ms: f64,
    /// Forward and loss.
    pub forward_ms: f64,
    /// Backward.
    pub backward_ms: f64,
    /// Clipping and AdamW.
    pub optimizer_ms: f64,
    /// Median share of the input path in a step.
    pub input_fraction: f64,
}

/// One benchmark row.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct BenchResult {
    /// `dot-naive`, `sdpa`, `ska-naive` or `ska-cuda`.
    pub backend: String,
    /// `fp32`, `bf16` or `fp16`.
    pub dtype: String,
    /// Sequences per step.
    pub batch: i64,
    /// Tokens per sequence.
    pub seq_len: i64,
    /// Heads.
    pub heads: i64,
    /// Head width.
    pub head_dim: i64,
    /// Bank window (SKA only).
    pub window: Option<u32>,
    /// Bank stride (SKA only).
    pub stride: Option<u32>,
    /// MinHash values per set (SKA only).
    pub minhash_k: Option<u32>,
    /// Routing table top-k (SKA only).
    pub router_topk: Option<u32>,
    /// Sets per sequence (SKA only).
    pub avg_sets_per_seq: Option<f64>,
    /// Atoms per set over the split (SKA only).
    pub avg_atoms_per_set: Option<f64>,
    /// Median milliseconds per step.
    pub elapsed_ms: f64,
    /// Mean milliseconds per step of the loop pass.
    pub loop_ms: f64,
    /// `1000 / elapsed_ms`.
    pub steps_per_s: f64,
    /// Peak CUDA memory allocated, MiB (None on the CPU).
    pub max_vram_mb: Option<f64>,
    /// Attention scores per layer and forward pass (see the module docs).
    pub scores_computed: i64,
    /// Millions of scores per second.
    pub throughput_per_1e6_scores: f64,
    /// `B * L * steps_per_s`.
    pub tokens_per_s: f64,
    /// Model width.
    pub d_model: i64,
    /// Blocks.
    pub layers: i64,
    /// Achieved model TFLOP/s (see the module docs).
    pub model_tflops: f64,
    /// Where a step's time goes.
    pub phases: PhaseTimes,
    /// Training loss after the last timed step (finite when training works).
    pub loss: f64,
    /// Timed steps per pass.
    pub iters: usize,
    /// Untimed steps.
    pub warmup: usize,
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

impl BenchResult {
    /// The CSV columns and this row's values, in order (one list, so the header and the
    /// row cannot disagree).
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let p = &self.phases;
        vec![
            ("backend", self.backend.clone()),
            ("dtype", self.dtype.clone()),
            ("B", self.batch.to_string()),
            ("L", self.seq_len.to_string()),
            ("H", self.heads.to_string()),
            ("D", self.head_dim.to_string()),
            ("window", opt(self.window)),
            ("stride", opt(self.stride)),
            ("minhash_k", opt(self.minhash_k)),
            ("router_topk", opt(self.router_topk)),
            ("avg_sets_per_seq", opt(self.avg_sets_per_seq)),
            (
                "avg_atoms_per_set",
                opt(self.avg_atoms_per_set.map(|v| format!("{v:.3}"))),
            ),
            ("elapsed_ms", format!("{:.4}", self.elapsed_ms)),
            ("steps_per_s", format!("{:.4}", self.steps_per_s)),
            (
                "max_vram_mb",
                opt(self.max_vram_mb.map(|v| format!("{v:.1}"))),
            ),
            ("scores_computed", self.scores_computed.to_string()),
            (
                "throughput_per_1e6_scores",
                format!("{:.3}", self.throughput_per_1e6_scores),
            ),
            ("tokens_per_s", format!("{:.1}", self.tokens_per_s)),
            ("d_model", self.d_model.to_string()),
            ("layers", self.layers.to_string()),
            ("model_tflops", format!("{:.3}", self.model_tflops)),
            ("loop_ms", format!("{:.4}", self.loop_ms)),
            ("input_ms", format!("{:.4}", p.input_ms)),
            ("input_fraction", format!("{:.5}", p.input_fraction)),
            ("forward_ms", format!("{:.4}", p.forward_ms)),
            ("backward_ms", format!("{:.4}", p.backward_ms)),
            ("optimizer_ms", format!("{:.4}", p.optimizer_ms)),
            ("loss", format!("{:.5}", self.loss)),
            ("iters", self.iters.to_string()),
            ("warmup", self.warmup.to_string()),
        ]
    }
}

/// The CSV header line.
pub fn csv_header() -> String {
    let fields = BenchResult::default().fields();
    fields.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(",")
}

/// Fails (before anything runs) when `csv` exists with another header.
fn check_header(csv: &Path) -> Result<(), Error> {
    let Ok(text) = std::fs::read_to_string(csv) else {
        return Ok(());
    };
    let header = csv_header();
    match text.lines().next() {
        Some(first) if first != header => Err(mismatch(csv, &header)),
        _ => Ok(()),
    }
}

fn mismatch(csv: &Path, header: &str) -> Error {
    Error::Usage(format!(
        "{}: its header has other columns than this benchmark's ({header}); pass another --benchmark-csv",
        csv.display()
    ))
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// Runs the benchmark, appends its row to the CSV (and the metadata beside it) and returns
/// it. An out-of-memory failure is an [`Error::OutOfMemory`] naming the flags to lower,
/// and writes nothing.
pub fn run(bench: &Bench) -> Result<BenchResult, Error> {
    let config = &bench.config;
    crate::train::check_shapes(config, bench.data)?;
    if config.accum != 1 {
        return Err(Error::Usage(
            "--benchmark times single micro-batch steps: leave --accum at 1".into(),
        ));
    }
    if bench.settings.iters == 0 {
        return Err(Error::Usage("--bench-iters must be at least 1".into()));
    }
    check_header(&bench.settings.csv)?;
    let result = crate::memory::guard(&crate::train::oom_hint(config), || measure(bench))?;
    append_row(&bench.settings.csv, &result, bench)?;
    Ok(result)
}

/// The timed passes (see the module docs).
fn measure(bench: &Bench) -> Result<BenchResult, Error> {
    let config = &bench.config;
    let settings = &bench.settings;
    let data = bench.data;
    let device = bench.device;
    let b = config.batch as i64;
    let n = data.num_sequences();
    tch::manual_seed(config.seed as i64);
    let vs = tch::nn::VarStore::new(device);
    let (model, _) = build_model(&vs, config, device)?;
    let mut opt = AdamW::new(&vs);
    let order = Sampler::new(n as usize, config.batch, config.seed).permutation(0);
    let ids_of = |i: usize| -> Vec<i64> {
        (0..b)
            .map(|j| order[((i as i64 * b + j) % n) as usize])
            .collect()
    };
    let cuda = match device {
        Device::Cuda(i) => Some(i),
        _ => None,
    };
    if let Some(i) = cuda {
        sync(device);
        ausa_kernels::shim::cuda_reset_peak(i).map_err(|e| Error::Torch(e.0))?;
    }
    let mut step = 0usize;
    let mut one = |mark: &mut dyn FnMut(Phase)| -> Result<Tensor, Error> {
        let out = train_step(
            &model,
            &mut opt,
            data,
            &[ids_of(step)],
            config,
            step,
            config.lr,
            mark,
        )?;
        step += 1;
        Ok(out.loss)
    };
    for _ in 0..settings.warmup {
        let _ = one(&mut |_| {})?;
    }
    sync(device);
    let mut steps_ms = Vec::with_capacity(settings.iters);
    for _ in 0..settings.iters {
        let t0 = Instant::now();
        let _ = one(&mut |_| {})?;
        sync(device);
        steps_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let t0 = Instant::now();
    for _ in 0..settings.iters {
        let _ = one(&mut |_| {})?;
    }
    sync(device);
    let loop_ms = t0.elapsed().as_secs_f64() * 1e3 / settings.iters as f64;
    // Phase pass: [input, forward, backward, optimizer] milliseconds per step.
    let mut phases: Vec<[f64; 4]> = Vec::with_capacity(settings.iters);
    let mut last = Tensor::zeros([], (tch::Kind::Float, device));
    for _ in 0..settings.iters {
        let mut times = [0.0f64; 4];
        let mut t = Instant::now();
        last = one(&mut |phase| {
            sync(device);
            let slot = match phase {
                Phase::Input => 0,
                Phase::Forward => 1,
                Phase::Backward => 2,
                Phase::Optimizer => 3,
            };
            times[slot] += t.elapsed().as_secs_f64() * 1e3;
            t = Instant::now();
        })?;
        phases.push(times);
    }
    let loss = last.double_value(&[]);
    let max_vram_mb = match cuda {
        Some(i) => Some(
            ausa_kernels::shim::cuda_memory(i)
                .map_err(|e| Error::Torch(e.0))?
                .peak_allocated as f64
                / (1u64 << 20) as f64,
        ),
        None => None,
    };
    let column = |k: usize| median(&mut phases.iter().map(|p| p[k]).collect::<Vec<_>>());
    let phase_times = PhaseTimes {
        input_ms: column(0),
        forward_ms: column(1),
        backward_ms: column(2),
        optimizer_ms: column(3),
        input_fraction: median(
            &mut phases
                .iter()
                .map(|p| p[0] / p.iter().sum::<f64>().max(1e-12))
                .collect::<Vec<_>>(),
        ),
    };
    let elapsed_ms = median(&mut steps_ms);
    let mut row = result_row(bench, &vs, elapsed_ms, max_vram_mb, phase_times, loss);
    row.loop_ms = loop_ms;
    Ok(row)
}

/// The row's derived fields from the measurements.
fn result_row(
    bench: &Bench,
    vs: &tch::nn::VarStore,
    elapsed_ms: f64,
    max_vram_mb: Option<f64>,
    phases: PhaseTimes,
    loss: f64,
) -> BenchResult {
    let config = &bench.config;
    let m = &config.model;
    let data = bench.data;
    let (b, l, h) = (config.batch as i64, m.seq_len, m.heads);
    let ska = m.attn == Attn::Ska;
    let sets = data.sets_per_seq();
    let scores = if ska {
        h * b * sets * sets
    } else {
        b * h * l * l
    };
    let steps_per_s = 1e3 / elapsed_ms;
    let tokens_per_s = (b * l) as f64 * steps_per_s;
    // Parameters a token multiplies by: all but the position table (a lookup).
    let multiplied: i64 = vs
        .variables()
        .iter()
        .filter(|(name, _)| name.as_str() != "pos_emb")
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let attention = if ska {
        0
    } else {
        12 * m.layers * m.d_model * l
    };
    let flops_per_token = (6 * multiplied + attention) as f64;
    let (window, stride) = data.window_stride();
    let set = |v: u32| ska.then_some(v);
    BenchResult {
        backend: match m.attn {
            Attn::Ska => format!("ska-{}", config.ska_backend.as_str()),
            other => other.as_str().to_string(),
        },
        dtype: config.precision.as_str().to_string(),
        batch: b,
        seq_len: l,
        heads: h,
        head_dim: m.d_model / h,
        window: set(window),
        stride: set(stride),
        minhash_k: set(data.minhash_k()),
        router_topk: set(data.router_topk()),
        avg_sets_per_seq: ska.then_some(sets as f64),
        avg_atoms_per_set: ska.then(|| data.avg_atoms_per_set()),
        elapsed_ms,
        loop_ms: f64::NAN,
        steps_per_s,
        max_vram_mb,
        scores_computed: scores,
        throughput_per_1e6_scores: scores as f64 * steps_per_s / 1e6,
        tokens_per_s,
        d_model: m.d_model,
        layers: m.layers,
        model_tflops: tokens_per_s * flops_per_token / 1e12,
        phases,
        loss,
        iters: bench.settings.iters,
        warmup: bench.settings.warmup,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `path` with `line` appended, written through a temp file and a rename (a reader sees
/// the old or the new file, never half a line).
fn append_line(path: &Path, header: Option<&str>, line: &str) -> Result<(), Error> {
    let mut text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(path)(e)),
    };
    if let Some(header) = header {
        match text.lines().next() {
            None => text = format!("{header}\n"),
            Some(first) if first == header => {}
            Some(_) => return Err(mismatch(path, header)),
        }
    }
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The metadata file beside a benchmark CSV: `NAME.meta.jsonl` for `NAME.csv`.
pub fn meta_path(csv: &Path) -> PathBuf {
    csv.with_extension("meta.jsonl")
}

fn append_row(csv: &Path, result: &BenchResult, bench: &Bench) -> Result<(), Error> {
    let fields = result.fields();
    let header: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    let row: Vec<&str> = fields.iter().map(|(_, v)| v.as_str()).collect();
    // The CSV first: a header mismatch fails before the metadata is touched.
    let rows_before = std::fs::read_to_string(csv)
        .map(|t| t.lines().count().saturating_sub(1))
        .unwrap_or(0);
    append_line(csv, Some(&header.join(",")), &row.join(","))?;
    let device = match bench.device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    };
    let meta = serde_json::json!({
        "row": rows_before + 1,
        "result": result,
        "ausa_version": env!("CARGO_PKG_VERSION"),
        "git_revision": crate::train::git_revision(),
        "libtorch": {
            "version_expected": "2.11.0",
            "dir": crate::device::libtorch_dir(),
        },
        "device": device,
        "gpu_name": crate::device::gpu_name(),
        "config": bench.config,
        "seeds": { "seed": bench.config.seed },
        "data": { "train": crate::train::data_meta(bench.data, None) },
        "run": bench.meta,
    });
    let line = serde_json::to_string(&meta).map_err(|e| Error::Torch(e.to_string()))?;
    append_line(&meta_path(csv), None, &line)
}
