//! `ausa bench ska`: kernel benchmarks of one SKA layer (`ausa_train::ska_bench`) over a
//! grid of sequence lengths, precisions and backends, as CSV rows.

use std::path::PathBuf;

use ausa_train::device::{self, DeviceChoice};
use ausa_train::model::SkaBackend;
use ausa_train::ska_bench::{self, SkaBenchSettings, SkaBenchShape};
use ausa_train::train::Precision;
use clap::{Args, Subcommand, ValueEnum};

use crate::diagnostics::CliError;
use crate::output::Output;
use crate::train::{DeviceArg, PrecisionArg};

/// `ausa bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to benchmark.
    #[command(subcommand)]
    pub what: BenchWhat,
}

/// The benchmarks.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchWhat {
    /// One SKA layer (set attention + router + atom pooling), forward and forward +
    /// backward, on synthetic sets: one CSV row per length x precision x backend.
    ///
    /// B = --tokens / L sequences per step. The backward starts from a fixed random
    /// gradient of the output's kind, as the PyTorch attention peers do
    /// (`out.backward(grad)`). Columns: the SPEC's benchmark fields, then
    /// fwd_ms, bwd_ms, layout_ms (the per-batch Delta and masks), model_tflops and
    /// model_gbps (FLOP and byte counts of the math over the measured time).
    Ska(SkaArgs),
}

/// `--ska-backend` values of `ausa bench ska`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The tensor-op reference.
    Naive,
    /// The fused CUDA router (GPU only).
    Cuda,
}

/// `ausa bench ska` flags.
#[derive(Debug, Clone, Args)]
pub struct SkaArgs {
    /// Sequence lengths L, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "512,1024,2048,4096,8192,16384"
    )]
    pub lens: Vec<i64>,
    /// Tokens per step (B * L).
    #[arg(long, default_value_t = 16384)]
    pub tokens: i64,
    /// Heads.
    #[arg(long, default_value_t = 16)]
    pub heads: i64,
    /// Head width D.
    #[arg(long, default_value_t = 64)]
    pub head_dim: i64,
    /// Set window.
    #[arg(long, default_value_t = 64)]
    pub window: i64,
    /// Set stride.
    #[arg(long, default_value_t = 32)]
    pub stride: i64,
    /// MinHash values per set.
    #[arg(long, default_value_t = 128)]
    pub minhash_k: i64,
    /// Router top-k over the gates (0: every visible set).
    #[arg(long, default_value_t = 0)]
    pub gate_topk: i64,
    /// Candidate sets per token: the most recent N visible ones (`ausa train lm
    /// --router-topk`, the routing table's limit; 0: every visible set).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub router_topk: i64,
    /// Precisions, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fp32,bf16")]
    pub precision: Vec<PrecisionArg>,
    /// SKA backends, comma-separated (`cuda` needs a GPU), as `ausa train lm --ska-backend`.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "naive")]
    pub ska_backend: Vec<BackendArg>,
    /// Device.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// Untimed steps before each timed pass.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Timed steps per pass (the median is reported).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Time CUDA graph replays of each pass (captured once after the warm-up) instead of
    /// eager steps: the GPU's time without the host's launches (CSV column `cuda_graph`).
    #[arg(long)]
    pub cuda_graph: bool,
    /// Time the layer's core only: the router queries in, the heads' outputs out, without
    /// the gate and output projections, as the attention peers are timed (q, k, v in, the
    /// heads' outputs out). CSV column `scope` (`core`; `layer` without this flag).
    #[arg(long)]
    pub core: bool,
    /// Append the rows to this CSV (created with a header; another header is an error).
    #[arg(long, value_name = "PATH")]
    pub csv: Option<PathBuf>,
    /// CPU threads (libtorch's intra-op pool).
    #[arg(long)]
    pub threads: Option<i32>,
}

/// Runs `ausa bench`.
pub fn run(args: &BenchArgs, out: &Output) -> Result<i32, CliError> {
    match &args.what {
        BenchWhat::Ska(ska) => run_ska(ska, out),
    }
}

fn bench_error(e: ausa_train::Error) -> CliError {
    CliError {
        message: e.to_string(),
        hints: vec![],
        code: e.exit_code(),
    }
}

fn run_ska(args: &SkaArgs, out: &Output) -> Result<i32, CliError> {
    // Before the first tch call: CUDA must be loaded first (see ausa_train::device).
    let choice = match args.device {
        DeviceArg::Auto => DeviceChoice::Auto,
        DeviceArg::Cpu => DeviceChoice::Cpu,
        DeviceArg::Cuda => DeviceChoice::Cuda,
    };
    let device = device::select(choice).map_err(bench_error)?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n.max(1));
    }
    let settings = SkaBenchSettings {
        warmup: args.warmup,
        iters: args.iters,
        cuda_graph: args.cuda_graph,
    };
    // One side stream for every graph-timed row (see ska_bench::side_stream).
    let _side = match device {
        tch::Device::Cuda(ordinal) if args.cuda_graph => {
            ska_bench::side_stream(ordinal).map_err(bench_error)?
        }
        _ => None,
    };
    let mut rows = Vec::new();
    for &seq_len in &args.lens {
        for &precision in &args.precision {
            for &backend in &args.ska_backend {
                let shape = SkaBenchShape {
                    tokens: args.tokens,
                    seq_len,
                    heads: args.heads,
                    head_dim: args.head_dim,
                    window: args.window,
                    stride: args.stride,
                    minhash_k: args.minhash_k,
                    gate_topk: args.gate_topk,
                    candidates: args.router_topk,
                    precision: match precision {
                        PrecisionArg::Fp32 => Precision::Fp32,
                        PrecisionArg::Bf16 => Precision::Bf16,
                        PrecisionArg::Fp16 => Precision::Fp16,
                    },
                    backend: match backend {
                        BackendArg::Naive => SkaBackend::Naive,
                        BackendArg::Cuda => SkaBackend::Cuda,
                    },
                    core: args.core,
                };
                let row = ska_bench::run(&shape, settings, device).map_err(bench_error)?;
                out.log(&format!(
                    "ska-{} {} L {:>5} B {:>3} M {:>4}{}{}: fwd {:.3} ms, fwd+bwd {:.3} ms, layout {:.3} ms{}",
                    shape.backend.as_str(),
                    shape.precision.as_str(),
                    seq_len,
                    row.batch,
                    row.sets_per_seq,
                    match shape.candidates {
                        0 => String::new(),
                        c => format!(" (last {c} sets)"),
                    },
                    match (row.cuda_graph, shape.core) {
                        (true, true) => ", CUDA graph, core",
                        (true, false) => ", CUDA graph",
                        (false, true) => ", core",
                        (false, false) => "",
                    },
                    row.fwd_ms,
                    row.fwd_bwd_ms,
                    row.layout_ms,
                    row.max_vram_mb
                        .map(|v| format!(", peak {v:.0} MiB"))
                        .unwrap_or_default()
                ));
                rows.push(row);
            }
        }
    }
    if let Some(csv) = &args.csv {
        ska_bench::append_csv(csv, &rows).map_err(bench_error)?;
        out.log(&format!("{} rows -> {}", rows.len(), csv.display()));
    }
    let json: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            r.fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        })
        .collect();
    out.json(&serde_json::json!({ "rows": json }));
    Ok(0)
}
