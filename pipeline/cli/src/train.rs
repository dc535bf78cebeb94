//! `ausa train lm` (cargo feature `train`): maps the trainer's shape flags onto the
//! DAG's stage parameters, finds (or with `--precache` builds) the set artifacts through
//! `ausa-build`, and runs the `ausa-train` loop on them.
//!
//! The familiar flags (`--seq-len --seq-stride --window --stride --early --minhash-k
//! --router-topk`) become `--set` overrides of the DAG's `sequences`, `banks`, `minhash`
//! and `routing` stages (found by kind), so the model's shapes and the artifacts it
//! reads can never disagree: a changed flag is a different fingerprint.
//!
//! `--cache-mode` picks where the artifacts come from (docs/cache-modes.md): `full`
//! reads every object from the store; `tokens` reads the token artifacts (the chain
//! up to `sequences`) from the store and runs the set stages into a private scratch
//! directory; `none` runs the whole chain there and never opens a store. All three
//! go through `ausa_build` (`object_dirs`, `build_scratch`: the stages' own code) and
//! hand the trainer the same `SetPaths`.

use std::path::PathBuf;

use ausa_artifacts::{read_documents, Split, TokensFile};
use ausa_build::{Pipeline, Resolved, Target};
use ausa_train::bench::{self, Bench, BenchSettings};
use ausa_train::data::SplitData;
use ausa_train::device::{self, DeviceChoice};
use ausa_train::memory;
use ausa_train::model::{Attn, DeltaEstimate, ModelConfig, Pos, SetFeatures};
use ausa_train::train::{self, Event, Precision, Run, SplitInput, TextStats, TrainConfig};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;

use crate::args::TargetArgs;
use crate::diagnostics::CliError;
use crate::output::{Output, StepBar};

/// `ausa train TASK`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The task.
    #[command(subcommand)]
    pub task: TrainTask,
}

/// Training tasks.
#[derive(Debug, Subcommand)]
pub enum TrainTask {
    /// Train a decoder-only transformer language model on a DAG's set artifacts.
    Lm(Box<LmArgs>),
}

/// `--attn`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AttnArg {
    /// Explicit QK^T/sqrt(d), masked softmax, @V (no fused kernel).
    DotNaive,
    /// libtorch's fused scaled_dot_product_attention.
    Sdpa,
    /// Set-kernel attention + router in the --ska-layers blocks (dot-naive elsewhere).
    Ska,
}

/// `--precision`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    /// fp32.
    Fp32,
    /// bf16 matmuls, fp32 master weights.
    Bf16,
    /// fp16 matmuls with a static loss scale.
    Fp16,
}

/// `--device`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    /// CUDA when available, else CPU.
    Auto,
    /// CPU.
    Cpu,
    /// CUDA (an error without a GPU).
    Cuda,
}

/// `--cache-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    /// Tokens, banks, signatures and routing from the store (memory-mapped).
    Full,
    /// Token artifacts from the store; banks, signatures and routing built per run
    /// outside it (a scratch dir deleted at exit).
    Tokens,
    /// Everything built per run from the corpus outside any store (--store unused).
    None,
}

impl CacheMode {
    fn as_str(self) -> &'static str {
        match self {
            CacheMode::Full => "full",
            CacheMode::Tokens => "tokens",
            CacheMode::None => "none",
        }
    }
}

/// `--early`: the early-positions remedy (`banks.leading`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EarlyArg {
    /// Leading partial windows [0, stride), [0, 2*stride), ...: every position from
    /// stride-1 on sees a set.
    Leading,
    /// Full windows only: the first window-1 positions see no set.
    None,
}

/// `--pos`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PosArg {
    /// Learned position embeddings.
    Learned,
    /// Rotary positions on the queries and keys of dot and SDPA blocks.
    Rotary,
}

/// `--set-features`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SetFeaturesArg {
    /// Phi pooled from the (adapted) atom embeddings of each set.
    Atoms,
    /// Phi pooled from each SKA block's input hidden states over the set's span.
    Hidden,
}

/// `--delta`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeltaArg {
    /// Estimated from the cached MinHash signatures.
    Minhash,
    /// The exact symmetric difference of the sets' atoms.
    Exact,
}

/// `--fused-layernorm`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FusedLayerNormArg {
    /// The fused kernel where it applies (CUDA, bf16 / fp16, kernels loadable).
    Auto,
    /// The fused kernel, or a usage error saying why not.
    On,
    /// libtorch's LayerNorm and a cast.
    Off,
}

/// `--ska-backend`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SkaBackend {
    /// Batched tensor ops (CPU and GPU; the reference).
    Naive,
    /// Set attention and router as fused CUDA kernels with their own backward (GPU
    /// only; --precision bf16 or fp32).
    Cuda,
}

/// `ausa train lm` flags.
#[derive(Debug, Clone, Args)]
pub struct LmArgs {
    /// An embedded DAG name or a DAG file.
    #[arg(long, value_name = "NAME|FILE", default_value = "demo")]
    pub dag: String,
    /// Override a stage parameter (repeatable), as for `ausa build`.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub overrides: Vec<String>,
    /// Tokens per sequence (the `sequences` stage's seq_len).
    #[arg(long)]
    pub seq_len: Option<i64>,
    /// Step between sequences (`sequences.seq_stride`, 0 = seq_len).
    #[arg(long)]
    pub seq_stride: Option<i64>,
    /// Set window (`banks.window`).
    #[arg(long)]
    pub window: Option<i64>,
    /// Set stride (`banks.stride`).
    #[arg(long)]
    pub stride: Option<i64>,
    /// Early-positions remedy (`banks.leading`) [default: the DAG's, none].
    #[arg(long, value_enum)]
    pub early: Option<EarlyArg>,
    /// MinHash values per set (`minhash.minhash_k`).
    #[arg(long)]
    pub minhash_k: Option<i64>,
    /// Candidate sets per token, most recent first (`routing.router_topk`, 0 = all).
    #[arg(long)]
    pub router_topk: Option<i64>,
    /// Where the artifacts come from.
    #[arg(long, value_enum, default_value = "full")]
    pub cache_mode: CacheMode,
    /// Build missing artifacts first (through the build API).
    #[arg(long)]
    pub precache: bool,
    /// Build missing artifacts and exit.
    #[arg(long)]
    pub cache_only: bool,
    /// Attention.
    #[arg(long, value_enum, default_value = "sdpa")]
    pub attn: AttnArg,
    /// With --attn ska: blocks using SKA, e.g. `0,2` [default: all].
    #[arg(long, value_delimiter = ',')]
    pub ska_layers: Vec<i64>,
    /// SKA implementation.
    #[arg(long, value_enum, default_value = "naive")]
    pub ska_backend: SkaBackend,
    /// LayerNorms before bf16 / fp16 matmuls as one fused CUDA kernel that writes the
    /// half-precision rows directly (auto: on CUDA in bf16 / fp16 when the kernels load).
    #[arg(long, value_enum, default_value = "auto")]
    pub fused_layernorm: FusedLayerNormArg,
    /// SKA content term weight (0 = kernel only).
    #[arg(long, default_value_t = 0.0)]
    pub beta: f64,
    /// SKA router: keep the top-k gates per token, renormalized (0 = all candidates).
    #[arg(long, default_value_t = 0)]
    pub gate_topk: i64,
    /// Rank of the atom adapter (0 = off).
    #[arg(long, default_value_t = 0)]
    pub adapter_rank: i64,
    /// With --attn ska: where the set features Phi come from.
    #[arg(long, value_enum, default_value = "atoms")]
    pub set_features: SetFeaturesArg,
    /// With --attn ska: the set distance Delta from the MinHash signatures, or exact
    /// (vocabularies of at most 4096 ids; measures what the estimate costs).
    #[arg(long, value_enum, default_value = "minhash")]
    pub delta: DeltaArg,
    /// Positions.
    #[arg(long, value_enum, default_value = "learned")]
    pub pos: PosArg,
    /// Model width.
    #[arg(long, default_value_t = 64)]
    pub d_model: i64,
    /// Blocks.
    #[arg(long, default_value_t = 2)]
    pub layers: i64,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    pub heads: i64,
    /// MLP width over d_model.
    #[arg(long, default_value_t = 4)]
    pub ffn_mult: i64,
    /// Dropout.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Sequences per micro-batch [default: 8].
    #[arg(long)]
    pub batch: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accum: usize,
    /// Epochs (ignored with --steps).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Optimizer steps [default: 100 when neither --steps nor --epochs is given: a
    /// quick run].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 10)]
    pub warmup: usize,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Gradient clipping by global norm (0 = off).
    #[arg(long, default_value_t = 1.0)]
    pub clip: f64,
    /// Compute precision.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: PrecisionArg,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Validate every N steps (0 = only at the end).
    #[arg(long, default_value_t = 0)]
    pub eval_every: usize,
    /// Batches per evaluation (0 = whole split).
    #[arg(long, default_value_t = 0)]
    pub eval_batches: usize,
    /// Checkpoint every N steps (0 = at the end).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Device.
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceArg,
    /// CPU threads for libtorch's intra-op pool [default: libtorch's, one per core].
    /// On a busy machine fewer threads are often much faster (OpenMP spin-waits).
    #[arg(long, value_name = "N")]
    pub threads: Option<i32>,
    /// Run directory [default: runs/<dag>-lm-<attn>-d<d>-l<layers>-s<seed>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Do not write TensorBoard event files. By default a run writes its scalars into
    /// DIR/tb/ as it logs them: `tensorboard --logdir DIR` (or a sweep's --out, for all
    /// its runs).
    #[arg(long)]
    pub no_tensorboard: bool,
    /// Time the training step at fixed shapes instead of training: appends a row to the
    /// benchmark CSV (the run directory is not used).
    #[arg(long)]
    pub benchmark: bool,
    /// With --benchmark: untimed steps first.
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub bench_warmup: usize,
    /// With --benchmark: timed steps.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub bench_iters: usize,
    /// With --benchmark: the CSV to append to (its metadata goes beside it, NAME.meta.jsonl)
    /// [default: runs/benchmark.csv, or benchmark.csv in --out].
    #[arg(long, value_name = "PATH")]
    pub benchmark_csv: Option<PathBuf>,
    /// On CUDA: lower --batch (and for SKA --minhash-k, --stride) where not given until an
    /// estimate of the step fits the free GPU memory; prints what it chose and why.
    #[arg(long)]
    pub memory_safe: bool,
}

/// `--batch`'s default.
const DEFAULT_BATCH: usize = 8;

fn train_error(e: ausa_train::Error) -> CliError {
    CliError {
        message: e.to_string(),
        hints: vec![],
        code: e.exit_code(),
    }
}

/// The flag -> `(stage kind, parameter)` mapping.
pub(crate) fn stage_overrides(args: &LmArgs, resolved: &Resolved) -> Result<Vec<String>, CliError> {
    let int = |v: Option<i64>| v.map(|v| v.to_string());
    let mapped = [
        ("--seq-len", int(args.seq_len), "sequences", "seq_len"),
        (
            "--seq-stride",
            int(args.seq_stride),
            "sequences",
            "seq_stride",
        ),
        ("--window", int(args.window), "banks", "window"),
        ("--stride", int(args.stride), "banks", "stride"),
        (
            "--early",
            args.early.map(|e| (e == EarlyArg::Leading).to_string()),
            "banks",
            "leading",
        ),
        ("--minhash-k", int(args.minhash_k), "minhash", "minhash_k"),
        (
            "--router-topk",
            int(args.router_topk),
            "routing",
            "router_topk",
        ),
    ];
    let mut out = args.overrides.clone();
    for (flag, value, kind, param) in mapped {
        let Some(value) = value else { continue };
        let stages: Vec<&str> = resolved
            .dag
            .stages
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.name.as_str())
            .collect();
        match stages.as_slice() {
            [name] => out.push(format!("{name}.{param}={value}")),
            _ => {
                return Err(CliError::usage(
                    format!(
                        "{flag}: DAG `{}` has {} stages of kind `{kind}`",
                        resolved.dag.name,
                        stages.len()
                    ),
                    Some(format!("use --set STAGE.{param}={value} instead")),
                ))
            }
        }
    }
    Ok(out)
}

/// The one stage of kind `kind` in `resolved`'s DAG (the trainer reads one chain).
fn one_stage_of_kind(resolved: &Resolved, kind: &str) -> Result<String, CliError> {
    let names: Vec<&str> = resolved
        .dag
        .stages
        .iter()
        .filter(|s| s.kind == kind)
        .map(|s| s.name.as_str())
        .collect();
    match names.as_slice() {
        [name] => Ok(name.to_string()),
        _ => Err(CliError::usage(
            format!(
                "DAG `{}` has {} stages of kind `{kind}`; `ausa train lm` needs exactly one",
                resolved.dag.name,
                names.len()
            ),
            Some(
                "use a DAG with one sequences -> banks -> minhash, routing chain (e.g. demo, wt2)"
                    .into(),
            ),
        )),
    }
}

/// Runs `ausa train TASK`.
pub fn run(
    store: Option<&std::path::Path>,
    args: &TrainArgs,
    out: &Output,
) -> Result<i32, CliError> {
    match &args.task {
        TrainTask::Lm(lm_args) => lm(store, lm_args, out),
    }
}

/// Steps of a run given neither `--steps` nor `--epochs`.
const DEFAULT_STEPS: usize = 100;

/// The kinds whose objects the trainer reads (their upstreams come along).
pub(crate) const READ_KINDS: [&str; 2] = ["minhash", "routing"];

/// The artifacts of one run and where they came from (`--cache-mode`).
struct RunArtifacts {
    /// The flags in effect: the user's, or what `--memory-safe` chose from them.
    args: LmArgs,
    /// The target `DAG:minhash,routing` with the trainer's overrides.
    resolved: Resolved,
    /// The `--set`s: the user's and the mapped flags'.
    overrides: Vec<String>,
    /// The target as the user would build it (for hints).
    target_args: TargetArgs,
    /// The objects' directories.
    source: Source,
}

/// Where a run's objects are.
enum Source {
    /// All in the store (`full`).
    Store(ausa_build::ObjectDirs),
    /// Some (`tokens`) or all (`none`) built for this run: the directory is deleted
    /// when this value drops, after the run's tensors over its files.
    Scratch(ausa_build::Scratch),
}

impl RunArtifacts {
    /// Every planned stage's directory.
    fn dirs(&self) -> &ausa_build::ObjectDirs {
        match &self.source {
            Source::Store(dirs) => dirs,
            Source::Scratch(scratch) => scratch.dirs(),
        }
    }

    /// The stages built for this run, in plan order.
    fn built_per_run(&self) -> &[String] {
        match &self.source {
            Source::Store(_) => &[],
            Source::Scratch(scratch) => scratch.built(),
        }
    }
}

/// Finds (`full`), builds per run (`none`) or both (`tokens`) the set artifacts of the
/// trainer's target; `None` after `--cache-only` built them.
fn artifacts(
    store: Option<&std::path::Path>,
    args: &LmArgs,
    device: tch::Device,
    out: &Output,
) -> Result<Option<RunArtifacts>, CliError> {
    let building = args.precache || args.cache_only;
    if args.cache_mode == CacheMode::None && building {
        return Err(CliError::usage(
            "--cache-mode none builds everything per run and never writes a store: --precache and --cache-only do not apply",
            Some("drop them, or use --cache-mode full or tokens to build into the store".into()),
        ));
    }
    // `none` never opens (or creates) a store: resolving hashes external inputs directly.
    let pipeline = match args.cache_mode {
        CacheMode::None => None,
        CacheMode::Full | CacheMode::Tokens => {
            let root = ausa_store::Store::default_root(store);
            // Only a run that may build creates a store; reading needs an existing one.
            Some(Pipeline::new(if building {
                ausa_store::Store::create(&root)?
            } else {
                ausa_store::Store::open(&root).map_err(|e| {
                    let mut err = CliError::from(e);
                    err.hints.push(
                        "or pass --precache to build the artifacts into a new store, or --cache-mode none to use no store"
                            .into(),
                    );
                    err
                })?
            }))
        }
    };
    let detached;
    let registry = match &pipeline {
        Some(p) => p.registry(),
        None => {
            detached = ausa_stages::registry();
            &detached
        }
    };
    let resolve = |target: &Target| match &pipeline {
        Some(p) => p.resolve(target),
        None => ausa_build::resolve_detached(target, registry),
    };
    let plain_args = TargetArgs {
        target: args.dag.clone(),
        overrides: args.overrides.clone(),
    };
    let plain = Target::parse(&args.dag, &args.overrides)
        .map_err(|e| CliError::from_build(e, &plain_args))?;
    let first = resolve(&plain).map_err(|e| CliError::from_build(e, &plain_args))?;
    let adjusted;
    let args = if args.memory_safe {
        adjusted = memory_safe(args, device, pipeline.as_ref(), &first, out)?;
        &adjusted
    } else {
        args
    };
    let overrides = stage_overrides(args, &first)?;
    let stages = READ_KINDS
        .iter()
        .map(|kind| one_stage_of_kind(&first, kind))
        .collect::<Result<Vec<_>, _>>()?;
    // The objects read from the store: all of them (`full`), those up to the
    // `sequences` stage (`tokens`: the set stages run per run), none (`none`).
    let stored_stages = match args.cache_mode {
        CacheMode::Full => stages.clone(),
        CacheMode::Tokens => vec![one_stage_of_kind(&first, "sequences")?],
        CacheMode::None => vec![],
    };
    let target_args = TargetArgs {
        target: format!("{}:{}", args.dag, stages.join(",")),
        overrides: overrides.clone(),
    };
    let from_build = |e| CliError::from_build(e, &target_args);
    let target = Target::parse(&target_args.target, &overrides).map_err(from_build)?;
    let resolved = resolve(&target).map_err(from_build)?;
    let from_build = |e| CliError::from_build(e, &target_args);
    let stored = match &pipeline {
        Some(pipeline) => {
            let stored_args = TargetArgs {
                target: format!("{}:{}", args.dag, stored_stages.join(",")),
                overrides: overrides.clone(),
            };
            let from_build = |e| CliError::from_build(e, &stored_args);
            let stored_resolved = if stored_stages == stages {
                resolved.clone()
            } else {
                let names: Vec<&str> = stored_stages.iter().map(String::as_str).collect();
                pipeline
                    .resolve(&target.with_stages(&names))
                    .map_err(from_build)?
            };
            let dirs = if building {
                let reporter = out.reporter(&stored_resolved.plan.dag);
                let dirs = pipeline.ensure_built(&stored_resolved, &Default::default(), &reporter);
                drop(reporter);
                dirs.map_err(from_build)?
            } else {
                pipeline.object_dirs(&stored_resolved).map_err(|e| {
                    let not_built = matches!(e, ausa_build::BuildError::NotBuilt { .. });
                    let mut err = from_build(e);
                    if not_built {
                        let sets: String =
                            overrides.iter().map(|o| format!(" --set {o}")).collect();
                        err.message.push_str(&format!(
                            " (`ausa train --cache-mode {}` reads {} from the store)",
                            args.cache_mode.as_str(),
                            match args.cache_mode {
                                CacheMode::Tokens => "its token artifacts",
                                _ => "its artifacts",
                            }
                        ));
                        err.hints = vec![
                            format!("run `ausa build {}{sets}`", stored_args.target),
                            "or pass --precache to build them first".into(),
                        ];
                        if args.cache_mode == CacheMode::Full {
                            err.hints.push(
                                "or --cache-mode tokens or none to build the set artifacts per run"
                                    .into(),
                            );
                        }
                    }
                    err
                })?
            };
            Some(dirs)
        }
        None => None,
    };
    if args.cache_only {
        return Ok(None);
    }
    // `tokens` and `none`: what the store did not give runs into a scratch directory.
    let source = match (args.cache_mode, stored) {
        (CacheMode::Full, Some(dirs)) => Source::Store(dirs),
        (_, stored) => {
            let reporter = out.reporter(&resolved.plan.dag);
            let built = ausa_build::build_scratch(
                registry,
                &resolved,
                stored.as_ref(),
                &ausa_build::default_scratch_parent(),
                &reporter,
            );
            drop(reporter);
            Source::Scratch(built.map_err(from_build)?)
        }
    };
    Ok(Some(RunArtifacts {
        args: args.clone(),
        resolved,
        overrides,
        target_args,
        source,
    }))
}

fn lm(store: Option<&std::path::Path>, args: &LmArgs, out: &Output) -> Result<i32, CliError> {
    // Before the first tch call: CUDA must be loaded first (see ausa_train::device).
    let choice = match args.device {
        DeviceArg::Auto => DeviceChoice::Auto,
        DeviceArg::Cpu => DeviceChoice::Cpu,
        DeviceArg::Cuda => DeviceChoice::Cuda,
    };
    let device = device::select(choice).map_err(train_error)?;
    if let Some(n) = args.threads {
        tch::set_num_threads(n.max(1));
    }
    let Some(found) = artifacts(store, args, device, out)? else {
        out.log(&format!("{}: artifacts ready", args.dag));
        out.json(&json!({"ok": true, "cache_only": true}));
        return Ok(0);
    };
    // The flags in effect (`--memory-safe` may have changed some).
    let args = &found.args;
    let (resolved, overrides, dirs) = (&found.resolved, &found.overrides, found.dirs());
    let from_build = |e| CliError::from_build(e, &found.target_args);
    let stats = text_stats(resolved, dirs).map_err(|e| CliError::failure(e, None))?;
    let open = |split: Split| -> Result<Option<SplitInput>, CliError> {
        let paths = dirs.set_paths(split).map_err(from_build)?;
        if !paths.sequences.exists() {
            return Ok(None);
        }
        let data = SplitData::open(&paths).map_err(train_error)?;
        if data.num_sequences() == 0 {
            return Ok(None);
        }
        Ok(Some(SplitInput {
            data: data.to_device(device),
            stats: stats[split.index()],
        }))
    };
    let train_split = open(Split::Train)?.ok_or_else(|| {
        CliError::failure(
            format!("{}: the train split has no sequences", resolved.plan.dag),
            None,
        )
    })?;
    let valid = open(Split::Validation)?;
    let test = open(Split::Test)?;
    let data = &train_split.data;
    let (window, _) = data.window_stride();
    let attn = match args.attn {
        AttnArg::DotNaive => Attn::DotNaive,
        AttnArg::Sdpa => Attn::Sdpa,
        AttnArg::Ska => Attn::Ska,
    };
    let ska_layers = if args.ska_layers.is_empty() && attn == Attn::Ska {
        (0..args.layers).collect()
    } else {
        args.ska_layers.clone()
    };
    let config = TrainConfig {
        model: ModelConfig {
            vocab: i64::from(data.vocab()),
            seq_len: data.seq_len(),
            d_model: args.d_model,
            layers: args.layers,
            heads: args.heads,
            ffn_mult: args.ffn_mult,
            dropout: args.dropout,
            attn,
            ska_layers,
            beta: args.beta,
            router_topk: args.gate_topk,
            adapter_rank: args.adapter_rank,
            pos: match args.pos {
                PosArg::Learned => Pos::Learned,
                PosArg::Rotary => Pos::Rotary,
            },
            set_features: match args.set_features {
                SetFeaturesArg::Atoms => SetFeatures::Atoms,
                SetFeaturesArg::Hidden => SetFeatures::Hidden,
            },
            delta: match args.delta {
                DeltaArg::Minhash => DeltaEstimate::Minhash,
                DeltaArg::Exact => DeltaEstimate::Exact,
            },
        },
        batch: args.batch.unwrap_or(DEFAULT_BATCH),
        accum: args.accum,
        epochs: args.epochs.unwrap_or(1),
        steps: args.steps.or(if args.epochs.is_none() {
            Some(DEFAULT_STEPS)
        } else {
            None
        }),
        lr: args.lr,
        warmup: args.warmup,
        weight_decay: args.weight_decay,
        clip: args.clip,
        precision: match args.precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::Fp16 => Precision::Fp16,
        },
        seed: args.seed,
        eval_every: args.eval_every,
        eval_batches: args.eval_batches,
        save_every: args.save_every,
        ska_backend: match args.ska_backend {
            SkaBackend::Naive => ausa_train::model::SkaBackend::Naive,
            SkaBackend::Cuda => ausa_train::model::SkaBackend::Cuda,
        },
        fused_norm: match args.fused_layernorm {
            FusedLayerNormArg::Auto => ausa_train::model::FusedNorm::Auto,
            FusedLayerNormArg::On => ausa_train::model::FusedNorm::On,
            FusedLayerNormArg::Off => ausa_train::model::FusedNorm::Off,
        },
        ..TrainConfig::default()
    };
    let run_dir = args.out.clone().unwrap_or_else(|| {
        let dag = resolved.plan.dag.replace(['/', '.'], "_");
        PathBuf::from("runs").join(format!(
            "{dag}-lm-{}-d{}-l{}-w{window}-s{}",
            attn.as_str(),
            args.d_model,
            args.layers,
            args.seed
        ))
    });
    let artifacts: Vec<_> = resolved
        .plan
        .stages
        .iter()
        .map(|s| json!({"stage": s.name, "kind": s.kind, "fingerprint": s.fingerprint}))
        .collect();
    let meta = json!({
        "command": std::env::args().collect::<Vec<_>>(),
        "dag": resolved.plan.dag,
        "overrides": overrides,
        "cache_mode": args.cache_mode.as_str(),
        // The stages built outside the store for this run (`tokens`, `none`).
        "built_per_run": found.built_per_run(),
        "early": if train_split.data.leading_sets() > 0 { "leading" } else { "none" },
        "artifacts": artifacts,
    });
    if args.benchmark {
        return benchmark(args, config, &train_split.data, device, meta, out);
    }
    let run = Run {
        config,
        train: &train_split,
        valid: valid.as_ref(),
        test: test.as_ref(),
        out: run_dir,
        resume: args.resume,
        device,
        meta,
        stop_at: None,
        tensorboard: !args.no_tensorboard,
    };
    out.log(&format!(
        "training {} on {} ({} sequences of {} tokens) -> {}",
        attn.as_str(),
        resolved.plan.dag,
        data.num_sequences(),
        data.seq_len(),
        run.out.display()
    ));
    let bar = out.step_bar();
    let summary = train::run(&run, &mut |event| print_event(&bar, event));
    drop(bar);
    let summary = summary.map_err(train_error)?;
    out.json(&summary);
    out.log(&format!(
        "done: {} steps, loss {:.4} -> {:.4}{}, {:.0} tokens/s, {:.1}s",
        summary.steps,
        summary.first_loss.unwrap_or(f64::NAN),
        summary.last_loss.unwrap_or(f64::NAN),
        summary
            .valid
            .map(|v| format!(", valid ppl {:.2}", v.token_ppl))
            .unwrap_or_default(),
        summary.tokens_per_s,
        summary.elapsed_s
    ));
    Ok(0)
}

/// `--benchmark`: one row of the benchmark CSV.
fn benchmark(
    args: &LmArgs,
    config: TrainConfig,
    data: &SplitData,
    device: tch::Device,
    meta: serde_json::Value,
    out: &Output,
) -> Result<i32, CliError> {
    let csv = args.benchmark_csv.clone().unwrap_or_else(|| {
        args.out
            .as_deref()
            .unwrap_or(std::path::Path::new("runs"))
            .join("benchmark.csv")
    });
    let bench = Bench {
        config,
        data,
        device,
        settings: BenchSettings {
            warmup: args.bench_warmup,
            iters: args.bench_iters,
            csv: csv.clone(),
        },
        meta,
    };
    out.log(&format!(
        "benchmarking {} (B {} L {}) on {device:?}: {} warm-up + 3 x {} timed steps",
        bench.config.model.attn.as_str(),
        bench.config.batch,
        bench.config.model.seq_len,
        args.bench_warmup,
        args.bench_iters
    ));
    let r = bench::run(&bench).map_err(train_error)?;
    out.json(&r);
    let vram = r
        .max_vram_mb
        .map(|v| format!(", peak {v:.0} MiB"))
        .unwrap_or_default();
    out.log(&format!(
        "{} {}: {:.3} ms/step (loop {:.3}), {:.0} tokens/s{vram}; input {:.3} ms ({:.2}% of a step), forward {:.3}, backward {:.3}, optimizer {:.3} ms -> {}",
        r.backend,
        r.dtype,
        r.elapsed_ms,
        r.loop_ms,
        r.tokens_per_s,
        r.phases.input_ms,
        r.phases.input_fraction * 100.0,
        r.phases.forward_ms,
        r.phases.backward_ms,
        r.phases.optimizer_ms,
        csv.display()
    ));
    Ok(0)
}

/// `--memory-safe`: the flags the estimate picks from the free GPU memory (see
/// `ausa_train::memory`), printed with their reasons; on the CPU the flags as given.
fn memory_safe(
    args: &LmArgs,
    device: tch::Device,
    pipeline: Option<&Pipeline>,
    first: &Resolved,
    out: &Output,
) -> Result<LmArgs, CliError> {
    let tch::Device::Cuda(index) = device else {
        out.log("--memory-safe applies only on CUDA: this CPU run uses the flags as given");
        return Ok(args.clone());
    };
    let (free, _) = device::cuda_memory_info(index).map_err(|e| {
        CliError::failure(
            format!("--memory-safe: cannot read the free GPU memory ({e})"),
            Some("run without --memory-safe".into()),
        )
    })?;
    let param = |kind: &str, name: &str| -> Option<i64> {
        first
            .dag
            .stages
            .iter()
            .find(|s| s.kind == kind)?
            .params
            .get(name)?
            .to_json()
            .as_i64()
    };
    let missing = |what: &str| {
        CliError::usage(
            format!(
                "--memory-safe: DAG `{}` has no {what} parameter",
                first.dag.name
            ),
            Some("run without --memory-safe".into()),
        )
    };
    let attn = match args.attn {
        AttnArg::DotNaive => Attn::DotNaive,
        AttnArg::Sdpa => Attn::Sdpa,
        AttnArg::Ska => Attn::Ska,
    };
    let ska_layers = match attn {
        Attn::Ska if args.ska_layers.is_empty() => args.layers,
        Attn::Ska => args.ska_layers.len() as i64,
        _ => 0,
    };
    let start = memory::Shapes {
        vocab: param("tokenizer", "vocab_size").ok_or_else(|| missing("tokenizer.vocab_size"))?,
        seq_len: args
            .seq_len
            .or_else(|| param("sequences", "seq_len"))
            .ok_or_else(|| missing("sequences.seq_len"))?,
        d_model: args.d_model,
        layers: args.layers,
        ska_layers,
        heads: args.heads,
        ffn_mult: args.ffn_mult,
        attn: if attn == Attn::Ska {
            Attn::DotNaive
        } else {
            attn
        },
        precision: match args.precision {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::Fp16 => Precision::Fp16,
        },
        batch: args.batch.unwrap_or(DEFAULT_BATCH) as i64,
        window: args
            .window
            .or_else(|| param("banks", "window"))
            .ok_or_else(|| missing("banks.window"))?,
        stride: args
            .stride
            .or_else(|| param("banks", "stride"))
            .ok_or_else(|| missing("banks.stride"))?,
        minhash_k: args
            .minhash_k
            .or_else(|| param("minhash", "minhash_k"))
            .ok_or_else(|| missing("minhash.minhash_k"))?,
        router_topk: args
            .router_topk
            .or_else(|| param("routing", "router_topk"))
            .unwrap_or(0),
        split_tokens: split_tokens(pipeline, args, first),
    };
    let given = memory::Given {
        batch: args.batch.is_some(),
        stride: args.stride.is_some(),
        minhash_k: args.minhash_k.is_some(),
    };
    let choice = memory::choose(&start, given, free).map_err(|e| CliError::failure(e, None))?;
    for line in &choice.reasons {
        out.log(line);
    }
    let mut adjusted = args.clone();
    let s = &choice.shapes;
    adjusted.batch = Some(s.batch as usize);
    if s.stride != start.stride {
        adjusted.stride = Some(s.stride);
    }
    if s.minhash_k != start.minhash_k {
        adjusted.minhash_k = Some(s.minhash_k);
    }
    Ok(adjusted)
}

/// Tokens of all splits in the DAG's built `tokenize` object (None when not built, or
/// with no store: `--cache-mode none`).
fn split_tokens(pipeline: Option<&Pipeline>, args: &LmArgs, first: &Resolved) -> Option<u64> {
    let pipeline = pipeline?;
    let stage = first.dag.stages.iter().find(|s| s.kind == "tokenize")?;
    let target = Target::parse(&format!("{}:{}", args.dag, stage.name), &args.overrides).ok()?;
    let resolved = pipeline.resolve(&target).ok()?;
    let dirs = pipeline.object_dirs(&resolved).ok()?;
    let dir = dirs.dir_of_kind("tokenize").ok()?;
    let mut tokens = 0u64;
    for split in Split::ALL {
        let path = ausa_artifacts::tokens_path(dir, split);
        if path.exists() {
            tokens += TokensFile::open_structure(&path).ok()?.num_tokens() as u64;
        }
    }
    Some(tokens)
}

fn print_event(bar: &StepBar, event: &Event) {
    match event {
        Event::Train {
            step,
            steps,
            loss,
            lr,
            tokens_per_s,
            elapsed_s,
            ..
        } => {
            let eta = elapsed_s / *step as f64 * (steps - step) as f64;
            let status = format!("loss {loss:.4} {tokens_per_s:.0} tok/s");
            let line = format!(
                "step {step:>5}/{steps} loss {loss:.4} lr {lr:.2e} {tokens_per_s:.0} tok/s eta {eta:.0}s"
            );
            bar.step(*step, *steps, &status, &line);
        }
        Event::Eval {
            step,
            split,
            result,
        } => {
            let word = result
                .word_ppl
                .map(|w| format!(" word ppl {w:.2}"))
                .unwrap_or_default();
            let bpb = result
                .bits_per_byte
                .map(|b| format!(" bpb {b:.4}"))
                .unwrap_or_default();
            bar.println(&format!(
                "eval  {step:>5} {split}: loss {:.4} token ppl {:.2}{word}{bpb}",
                result.loss, result.token_ppl
            ));
        }
    }
}

/// Token counts (from the `tokenize` stage's files) and whitespace words and UTF-8
/// bytes (from the documents it tokenized) per split, indexed by `Split::index`.
fn text_stats(
    resolved: &Resolved,
    dirs: &ausa_build::ObjectDirs,
) -> Result<[Option<TextStats>; 3], String> {
    let mut stats = [None; 3];
    let (Ok(tokens_dir), Some(docs_dir)) =
        (dirs.dir_of_kind("tokenize"), documents_dir(resolved, dirs))
    else {
        return Ok(stats);
    };
    let docs =
        read_documents(ausa_artifacts::documents_path(&docs_dir)).map_err(|e| e.to_string())?;
    for split in Split::ALL {
        let path = ausa_artifacts::tokens_path(tokens_dir, split);
        if !path.exists() {
            continue;
        }
        let tokens = TokensFile::open_structure(&path).map_err(|e| e.to_string())?;
        let (mut words, mut bytes) = (0u64, 0u64);
        for d in docs.iter().filter(|d| d.split == split) {
            words += d.text.split_whitespace().count() as u64;
            bytes += d.text.len() as u64;
        }
        stats[split.index()] = Some(TextStats {
            tokens: tokens.num_tokens() as u64,
            words,
            bytes,
        });
    }
    Ok(stats)
}

/// The object of the documents the `tokenize` stage read (its `documents` input).
fn documents_dir(resolved: &Resolved, dirs: &ausa_build::ObjectDirs) -> Option<PathBuf> {
    let plan = &resolved.plan;
    let tokenize = plan.stages.iter().find(|s| s.kind == "tokenize")?;
    let &(_, upstream) = tokenize
        .inputs
        .iter()
        .find(|(slot, _)| *slot == "documents")?;
    dirs.stage(&plan.stages[upstream].name)
        .map(|o| o.dir.clone())
}
