//! The training loop and everything a run writes.
//!
//! A *step* is one optimizer update over `accum` micro-batches of `batch` sequences;
//! micro-batches come from a seeded sampler ([`Sampler`]: a fresh permutation of the
//! training sequences per epoch, the last short batch kept and weighted by its tokens).
//! AdamW is libtorch's fused kernel (decoupled weight decay on matrices only) with its
//! moments and step count saved, so a resumed run continues exactly; dropout is reseeded
//! from `(seed, step, micro-batch)` before every forward pass for the same reason.
//!
//! A step never waits for the GPU: the batch ids go up through pinned memory, the loss and
//! the gradient norm stay on the device, and the per-step metrics are read in one
//! transfer when they are written (every step on the CPU; on CUDA at most once a second,
//! and before evaluations, checkpoints and the end), see `Pending`.
//!
//! The run directory (`--out`):
//!
//! | file | written |
//! |---|---|
//! | `run_meta.json` | at start (temp file + rename): versions, device, every setting, seeds, the artifacts read |
//! | `metrics.jsonl` | one JSON object per step (`"kind": "train"`) and per evaluation (`"kind": "eval"`) |
//! | `summary.csv`, `summary.json` | at the end (temp file + rename) |
//! | `checkpoint/` | `model.safetensors`, `optim.safetensors`, `state.json`: written into `checkpoint.tmp/`, then renamed |
//! | `tb/events.out.tfevents.*` | TensorBoard event files (unless `tensorboard` is off): the scalars of every `metrics.jsonl` line as it is written ([`ausa_track::scalars`]: `train/loss`, `valid/word_ppl`, ...); a resumed run adds a file that starts with a restart marker |
//!
//! Perplexities: token perplexity is `exp` of the mean next-token NLL. Word-level
//! perplexity scales the mean NLL to the split's whole token count and divides by its
//! whitespace words, `exp(mean_nll * tokens / words)` (so numbers compare across
//! tokenizers); bits per byte is `mean_nll * tokens / (bytes * ln 2)`. Both need the
//! split's [`TextStats`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Device, Kind, Tensor};

use crate::data::SplitData;
use crate::model::{next_token_loss, Inputs, Lm, ModelConfig};
use crate::Error;

/// `--precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere.
    Fp32,
    /// bf16 matmuls, fp32 master weights and norms.
    Bf16,
    /// fp16 matmuls with a static loss scale (steps with non-finite gradients are skipped).
    Fp16,
}

impl Precision {
    /// Parses the flag value.
    pub fn parse(s: &str) -> Option<Precision> {
        match s {
            "fp32" => Some(Precision::Fp32),
            "bf16" => Some(Precision::Bf16),
            "fp16" => Some(Precision::Fp16),
            _ => None,
        }
    }

    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Fp16 => "fp16",
        }
    }

    pub(crate) fn kind(self) -> Kind {
        match self {
            Precision::Fp32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::Fp16 => Kind::Half,
        }
    }

    fn loss_scale(self) -> f64 {
        match self {
            Precision::Fp16 => 1024.0,
            _ => 1.0,
        }
    }
}

/// Everything that decides what a run computes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model.
    pub model: ModelConfig,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub accum: usize,
    /// Epochs over the training split (ignored when `steps` is set).
    pub epochs: usize,
    /// Optimizer steps; `None`: as many as `epochs` take.
    pub steps: Option<usize>,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate over the peak (cosine decay target).
    pub min_lr_ratio: f64,
    /// Linear warmup steps.
    pub warmup: usize,
    /// AdamW decoupled weight decay (matrices and embeddings only).
    pub weight_decay: f64,
    /// AdamW betas.
    pub betas: (f64, f64),
    /// AdamW epsilon.
    pub eps: f64,
    /// Gradient clipping by global norm (0 = off).
    pub clip: f64,
    /// Compute precision.
    pub precision: Precision,
    /// Seed of the initialization, the sampler and dropout.
    pub seed: u64,
    /// Validation every N steps (0 = only at the end).
    pub eval_every: usize,
    /// Batches per evaluation (0 = the whole split).
    pub eval_batches: usize,
    /// Checkpoint every N steps (0 = only at the end).
    pub save_every: usize,
    /// How SKA blocks compute (absent in older run configurations: naive).
    #[serde(default)]
    pub ska_backend: crate::model::SkaBackend,
    /// How the LayerNorms before half-precision matmuls compute (absent in older run
    /// configurations: auto).
    #[serde(default)]
    pub fused_norm: crate::model::FusedNorm,
}

impl Default for TrainConfig {
    fn default() -> TrainConfig {
        TrainConfig {
            model: ModelConfig {
                vocab: 0,
                seq_len: 0,
                d_model: 128,
                layers: 2,
                heads: 4,
                ffn_mult: 4,
                dropout: 0.0,
                attn: crate::model::Attn::Sdpa,
                ska_layers: vec![],
                beta: 0.0,
                router_topk: 0,
                adapter_rank: 0,
                pos: crate::model::Pos::Learned,
                set_features: crate::model::SetFeatures::Atoms,
                delta: crate::model::DeltaEstimate::Minhash,
            },
            ska_backend: crate::model::SkaBackend::Naive,
            fused_norm: crate::model::FusedNorm::Auto,
            batch: 16,
            accum: 1,
            epochs: 1,
            steps: None,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup: 10,
            weight_decay: 0.1,
            betas: (0.9, 0.95),
            eps: 1e-8,
            clip: 1.0,
            precision: Precision::Fp32,
            seed: 0,
            eval_every: 0,
            eval_batches: 0,
            save_every: 0,
        }
    }
}

/// Text counts of a split, for word-level perplexity and bits per byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TextStats {
    /// Token ids in the split's token file.
    pub tokens: u64,
    /// Whitespace-separated words of the split's text.
    pub words: u64,
    /// UTF-8 bytes of the split's text.
    pub bytes: u64,
}

/// One split's data and text counts.
#[derive(Debug)]
pub struct SplitInput {
    /// The set artifacts.
    pub data: SplitData,
    /// Text counts (without them word perplexity and bits per byte are left out).
    pub stats: Option<TextStats>,
}

/// A run: configuration, data, where it writes.
#[derive(Debug)]
pub struct Run<'a> {
    /// What to compute.
    pub config: TrainConfig,
    /// Training split.
    pub train: &'a SplitInput,
    /// Validation split.
    pub valid: Option<&'a SplitInput>,
    /// Test split (evaluated once at the end).
    pub test: Option<&'a SplitInput>,
    /// The run directory.
    pub out: PathBuf,
    /// Continue from `out/checkpoint`.
    pub resume: bool,
    /// The device (see [`crate::device::select`]).
    pub device: Device,
    /// Extra fields for `run_meta.json` (command line, DAG, artifact fingerprints).
    pub meta: serde_json::Value,
    /// Stop after this many steps as an interrupted run would (the checkpoint is
    /// written); the schedule still runs to the full step count on resume.
    pub stop_at: Option<usize>,
    /// Write TensorBoard event files into `out/tb/`.
    pub tensorboard: bool,
}

/// What a run reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Event {
    /// One optimizer step.
    Train {
        /// Steps done (1-based).
        step: usize,
        /// Steps in the run.
        steps: usize,
        /// Epoch of the step's first micro-batch.
        epoch: usize,
        /// Mean training NLL of the step.
        loss: f64,
        /// Learning rate used.
        lr: f64,
        /// Global gradient norm before clipping.
        grad_norm: f64,
        /// Tokens per second over the run so far.
        tokens_per_s: f64,
        /// Optimizer steps per second over the run (or resume) so far.
        steps_per_s: f64,
        /// Peak device memory allocated so far, MiB (CUDA only: the caching
        /// allocator's peak since the process started).
        #[serde(skip_serializing_if = "Option::is_none")]
        peak_vram_mib: Option<f64>,
        /// Seconds since the run (or resume) started.
        elapsed_s: f64,
    },
    /// One evaluation.
    Eval {
        /// Steps done when evaluated.
        step: usize,
        /// `valid` or `test`.
        split: String,
        /// The result.
        #[serde(flatten)]
        result: EvalResult,
    },
}

/// Perplexities of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    /// Mean next-token NLL (nats).
    pub loss: f64,
    /// Predicted positions evaluated.
    pub positions: i64,
    /// `exp(loss)`.
    pub token_ppl: f64,
    /// Word-level perplexity (with text counts).
    pub word_ppl: Option<f64>,
    /// Bits per byte (with text counts).
    pub bits_per_byte: Option<f64>,
}

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The run directory.
    pub out: PathBuf,
    /// Steps done.
    pub steps: usize,
    /// Loss of the first step of this process.
    pub first_loss: Option<f64>,
    /// Loss of the last step.
    pub last_loss: Option<f64>,
    /// Final validation.
    pub valid: Option<EvalResult>,
    /// Test.
    pub test: Option<EvalResult>,
    /// Training tokens per second (this process).
    pub tokens_per_s: f64,
    /// Seconds of training (this process).
    pub elapsed_s: f64,
    /// The CUDA caching allocator's peak of this process (training and evaluation), MiB;
    /// `None` on the CPU.
    pub peak_vram_mib: Option<f64>,
}

/// Seeded deterministic order of micro-batches: epoch `e` is a Fisher-Yates permutation
/// of `0..n` from `seed` and `e`, cut into batches of `batch` (the last one shorter).
#[derive(Debug, Clone)]
pub struct Sampler {
    n: usize,
    batch: usize,
    seed: u64,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Sampler {
    /// A sampler over `n` sequences.
    pub fn new(n: usize, batch: usize, seed: u64) -> Sampler {
        Sampler {
            n,
            batch: batch.max(1),
            seed,
        }
    }

    /// Micro-batches per epoch.
    pub fn per_epoch(&self) -> usize {
        self.n.div_ceil(self.batch)
    }

    /// The permutation of epoch `epoch`.
    pub fn permutation(&self, epoch: usize) -> Vec<i64> {
        let mut order: Vec<i64> = (0..self.n as i64).collect();
        let mut state = self.seed ^ (epoch as u64).wrapping_mul(0xD1B5_4A32_D192_ED03);
        for i in (1..order.len()).rev() {
            let j = (splitmix(&mut state) % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        order
    }

    /// Micro-batch `g` of the stream (epoch `g / per_epoch`) and its epoch.
    pub fn micro_batch(&self, g: usize) -> (usize, Vec<i64>) {
        let per = self.per_epoch().max(1);
        let (epoch, i) = (g / per, g % per);
        let order = self.permutation(epoch);
        let end = ((i + 1) * self.batch).min(self.n);
        (epoch, order[i * self.batch..end].to_vec())
    }
}

/// AdamW over the model's variables (sorted by name), state saved in checkpoints.
///
/// The update is libtorch's fused AdamW kernel (CPU and CUDA) behind
/// [`ausa_kernels::shim::adamw_step`], with the global-norm clipping and the fp16 skip
/// computed on the device: a step never waits for the GPU. The step count is a device
/// scalar for the same reason (it does not advance on a skipped step).
pub(crate) struct AdamW {
    names: Vec<String>,
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    decay: Vec<bool>,
    /// Steps taken (`Float` scalar on the parameters' device).
    t: Tensor,
}

impl AdamW {
    pub(crate) fn new(vs: &tch::nn::VarStore) -> AdamW {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let decay = vars
            .iter()
            .map(|(name, t)| t.dim() >= 2 && !name.contains("log_"))
            .collect();
        let m = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        let v = vars.iter().map(|(_, t)| t.zeros_like()).collect();
        let (names, params) = vars.into_iter().unzip();
        AdamW {
            names,
            params,
            m,
            v,
            decay,
            t: Tensor::zeros([], (Kind::Float, vs.device())),
        }
    }

    fn zero_grad(&mut self) -> Result<(), Error> {
        ausa_kernels::shim::set_grads_to_none(&mut self.params).map_err(shim_error)
    }

    /// Unscales, clips and applies one update; returns the gradient norm before clipping
    /// (a device scalar; non-finite, and no update made, when a gradient is not finite).
    fn step(&mut self, config: &TrainConfig, lr: f64, unscale: f64) -> Result<Tensor, Error> {
        let state = ausa_kernels::shim::AdamWState {
            params: &mut self.params,
            exp_avg: &mut self.m,
            exp_avg_sq: &mut self.v,
            decay: &self.decay,
            step: &mut self.t,
        };
        let hyper = ausa_kernels::shim::AdamWHyper {
            lr,
            beta1: config.betas.0,
            beta2: config.betas.1,
            weight_decay: config.weight_decay,
            eps: config.eps,
            max_norm: config.clip,
            unscale,
        };
        ausa_kernels::shim::adamw_step(state, hyper).map_err(shim_error)
    }

    /// Steps taken (reads the device; for checkpoints).
    fn steps_taken(&self) -> i64 {
        self.t.double_value(&[]) as i64
    }
}

fn shim_error(e: ausa_kernels::shim::ShimError) -> Error {
    Error::Torch(e.0)
}

/// The learning rate at step `step` (0-based) of `total`: linear warmup, cosine decay.
pub fn learning_rate(config: &TrainConfig, step: usize, total: usize) -> f64 {
    let peak = config.lr;
    if step < config.warmup {
        return peak * (step + 1) as f64 / config.warmup as f64;
    }
    let span = total.saturating_sub(config.warmup).max(1) as f64;
    let progress = ((step - config.warmup) as f64 / span).min(1.0);
    let min = peak * config.min_lr_ratio;
    min + (peak - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` through a temp file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Mean NLL over a split (the first `max_batches` batches in order, 0 = all).
pub fn evaluate(
    model: &Lm,
    split: &SplitInput,
    batch: usize,
    max_batches: usize,
    kind: Kind,
) -> EvalResult {
    let data = &split.data;
    let n = data.num_sequences();
    let batch = batch.max(1) as i64;
    let (mut sum, mut count) = (0.0f64, 0i64);
    tch::no_grad(|| {
        let mut start = 0;
        let mut done = 0;
        while start < n && (max_batches == 0 || done < max_batches) {
            let ids: Vec<i64> = (start..(start + batch).min(n)).collect();
            let b = data.batch(&ids);
            let layout = model
                .config()
                .uses_sets()
                .then(|| model.config().set_layout(&b.sets, data.seq_len()));
            let logits = model.forward(&Inputs {
                tokens: &b.tokens,
                sets: layout.as_ref(),
                kind,
                train: false,
            });
            let (loss, positions) = next_token_loss(&logits, &b.tokens);
            sum += loss.double_value(&[]) * positions as f64;
            count += positions;
            start += batch;
            done += 1;
        }
    });
    let loss = sum / count.max(1) as f64;
    let scaled = split.stats.map(|s| loss * s.tokens as f64);
    EvalResult {
        loss,
        positions: count,
        token_ppl: loss.exp(),
        word_ppl: split
            .stats
            .zip(scaled)
            .filter(|(s, _)| s.words > 0)
            .map(|(s, nll)| (nll / s.words as f64).exp()),
        bits_per_byte: split
            .stats
            .zip(scaled)
            .filter(|(s, _)| s.bytes > 0)
            .map(|(s, nll)| nll / (s.bytes as f64 * std::f64::consts::LN_2)),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    adam_t: i64,
    config: TrainConfig,
}

fn save_checkpoint(
    out: &Path,
    opt: &AdamW,
    step: usize,
    config: &TrainConfig,
) -> Result<(), Error> {
    let tmp = out.join("checkpoint.tmp");
    let dir = out.join("checkpoint");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let model: Vec<(&str, &Tensor)> = opt
        .names
        .iter()
        .map(String::as_str)
        .zip(&opt.params)
        .collect();
    Tensor::write_safetensors(&model, tmp.join("model.safetensors"))?;
    let m_names: Vec<String> = opt.names.iter().map(|n| format!("m.{n}")).collect();
    let v_names: Vec<String> = opt.names.iter().map(|n| format!("v.{n}")).collect();
    let moments: Vec<(&str, &Tensor)> = m_names
        .iter()
        .map(String::as_str)
        .zip(&opt.m)
        .chain(v_names.iter().map(String::as_str).zip(&opt.v))
        .collect();
    Tensor::write_safetensors(&moments, tmp.join("optim.safetensors"))?;
    let state = CheckpointState {
        step,
        adam_t: opt.steps_taken(),
        config: config.clone(),
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| Error::Checkpoint(e.to_string()))?;
    std::fs::write(tmp.join("state.json"), json).map_err(io(&tmp))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))
}

fn load_checkpoint(out: &Path, opt: &mut AdamW, config: &TrainConfig) -> Result<usize, Error> {
    let dir = out.join("checkpoint");
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| {
        Error::Checkpoint(format!(
            "--resume: cannot read {} ({e}); start the run without --resume, or pass the --out of an existing run",
            state_path.display()
        ))
    })?;
    let state: CheckpointState = serde_json::from_str(&text)
        .map_err(|e| Error::Checkpoint(format!("{}: {e}", state_path.display())))?;
    if state.config.model != config.model {
        return Err(Error::Checkpoint(format!(
            "{}: the checkpoint is of another model ({:?}); resume with the same model flags or another --out",
            state_path.display(),
            state.config.model
        )));
    }
    let read = |name: &str| -> Result<std::collections::HashMap<String, Tensor>, Error> {
        let path = dir.join(name);
        Ok(Tensor::read_safetensors(&path)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?
            .into_iter()
            .collect())
    };
    let model = read("model.safetensors")?;
    let moments = read("optim.safetensors")?;
    tch::no_grad(|| -> Result<(), Error> {
        for i in 0..opt.names.len() {
            let name = &opt.names[i];
            for (target, key, source) in [
                (&mut opt.params[i], name.clone(), &model),
                (&mut opt.m[i], format!("m.{name}"), &moments),
                (&mut opt.v[i], format!("v.{name}"), &moments),
            ] {
                let saved = source.get(&key).ok_or_else(|| {
                    Error::Checkpoint(format!("{}: no tensor `{key}`", dir.display()))
                })?;
                if saved.size() != target.size() {
                    return Err(Error::Checkpoint(format!(
                        "{}: `{key}` has shape {:?}, the model needs {:?}",
                        dir.display(),
                        saved.size(),
                        target.size()
                    )));
                }
                target.copy_(saved);
            }
        }
        Ok(())
    })?;
    let _ = opt.t.fill_(state.adam_t as f64);
    Ok(state.step)
}

fn total_steps(config: &TrainConfig, sampler: &Sampler) -> usize {
    config
        .steps
        .unwrap_or_else(|| (config.epochs * sampler.per_epoch()).div_ceil(config.accum.max(1)))
}

/// The part of an optimizer step that just ended ([`train_step`] marks each; the
/// benchmark's clock synchronizes the device there and reads the time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The batch gathered and on the device.
    Input,
    /// Forward pass and loss (the batch's set layout included).
    Forward,
    /// Backward pass.
    Backward,
    /// Clipping and the AdamW update.
    Optimizer,
}

/// What [`train_step`] leaves on the device.
pub(crate) struct StepOutput {
    /// Mean training NLL of the step (a scalar).
    pub(crate) loss: Tensor,
    /// Global gradient norm before clipping (non-finite when the step was skipped).
    pub(crate) grad_norm: Tensor,
}

/// The model input of one micro-batch: its tokens and, when a block uses SKA, its set
/// layout (the only data a model without SKA blocks gathers is the tokens).
pub(crate) fn micro_batch_inputs(
    model: &Lm,
    data: &SplitData,
    ids: &[i64],
) -> (Tensor, Option<crate::data::Batch>) {
    if model.config().uses_sets() {
        let batch = data.batch(ids);
        (batch.tokens.shallow_clone(), Some(batch))
    } else {
        (data.tokens(ids), None)
    }
}

/// One optimizer step over the micro-batches `micro` (sequence ids each): forward,
/// backward (the loss of each weighted by its share of the step's positions), then AdamW.
/// Nothing is read back from the device.
#[allow(clippy::too_many_arguments)]
pub(crate) fn train_step(
    model: &Lm,
    opt: &mut AdamW,
    data: &SplitData,
    micro: &[Vec<i64>],
    config: &TrainConfig,
    step: usize,
    lr: f64,
    mark: &mut dyn FnMut(Phase),
) -> Result<StepOutput, Error> {
    let kind = config.precision.kind();
    let scale = config.precision.loss_scale();
    let seq_len = data.seq_len();
    opt.zero_grad()?;
    let positions: i64 = micro
        .iter()
        .map(|ids| ids.len() as i64 * (seq_len - 1))
        .sum();
    let mut loss_sum: Option<Tensor> = None;
    for (a, ids) in micro.iter().enumerate() {
        tch::manual_seed((config.seed ^ ((step as u64) << 16) ^ a as u64) as i64);
        let (tokens, batch) = micro_batch_inputs(model, data, ids);
        mark(Phase::Input);
        let layout = batch.map(|b| model.config().set_layout(&b.sets, seq_len));
        let logits = model.forward(&Inputs {
            tokens: &tokens,
            sets: layout.as_ref(),
            kind,
            train: true,
        });
        let (loss, n) = next_token_loss(&logits, &tokens);
        let weight = n as f64 / positions as f64;
        mark(Phase::Forward);
        (&loss * (weight * scale)).backward();
        mark(Phase::Backward);
        let part = loss.detach() * weight;
        loss_sum = Some(match loss_sum {
            Some(sum) => sum + part,
            None => part,
        });
    }
    let grad_norm = opt.step(config, lr, scale)?;
    mark(Phase::Optimizer);
    let loss = loss_sum.ok_or_else(|| Error::Usage("a step needs a micro-batch".into()))?;
    Ok(StepOutput { loss, grad_norm })
}

/// A step whose loss and gradient norm are still on the device.
struct PendingStep {
    step: usize,
    /// Steps done by this process (a resumed run counts from its resume).
    steps_here: usize,
    steps: usize,
    epoch: usize,
    lr: f64,
    loss: Tensor,
    grad_norm: Tensor,
    tokens: i64,
    elapsed_s: f64,
}

/// Steps not yet written to `metrics.jsonl`: their device scalars are read in one
/// transfer (one synchronization) per flush, so training runs ahead of the logging.
struct Pending {
    steps: Vec<PendingStep>,
    /// The CUDA device whose allocator peak the steps report.
    cuda: Option<usize>,
    /// Flush every step (the CPU: reading a value costs nothing there) or at most this often.
    every: std::time::Duration,
    last_flush: Instant,
    first_loss: Option<f64>,
    last_loss: Option<f64>,
}

impl Pending {
    fn new(device: Device) -> Pending {
        let every = match device {
            Device::Cpu => std::time::Duration::ZERO,
            _ => std::time::Duration::from_secs(1),
        };
        Pending {
            steps: vec![],
            cuda: match device {
                Device::Cuda(i) => Some(i),
                _ => None,
            },
            every,
            last_flush: Instant::now(),
            first_loss: None,
            last_loss: None,
        }
    }

    fn push(&mut self, step: PendingStep) {
        self.steps.push(step);
    }

    fn due(&self) -> bool {
        self.last_flush.elapsed() >= self.every
    }

    /// Reads the pending scalars (one transfer) and reports one event per step.
    fn flush(&mut self, log: &mut dyn FnMut(&Event) -> Result<(), Error>) -> Result<(), Error> {
        self.last_flush = Instant::now();
        if self.steps.is_empty() {
            return Ok(());
        }
        let scalars: Vec<Tensor> = self
            .steps
            .iter()
            .flat_map(|p| [p.loss.view([1]), p.grad_norm.view([1])])
            .collect();
        let values = Vec::<f64>::try_from(
            Tensor::cat(&scalars, 0)
                .to_kind(Kind::Double)
                .to_device(Device::Cpu),
        )?;
        // The allocator's own counters (host memory, no synchronization); after the
        // transfer above, so the peak covers every pending step.
        let peak_vram_mib = match self.cuda {
            Some(i) => Some(
                ausa_kernels::shim::cuda_memory(i)
                    .map_err(shim_error)?
                    .peak_allocated as f64
                    / (1u64 << 20) as f64,
            ),
            None => None,
        };
        for (p, v) in self.steps.drain(..).zip(values.chunks(2)) {
            let (loss, grad_norm) = (v[0], v[1]);
            self.first_loss.get_or_insert(loss);
            self.last_loss = Some(loss);
            log(&Event::Train {
                step: p.step,
                steps: p.steps,
                epoch: p.epoch,
                loss,
                lr: p.lr,
                grad_norm,
                tokens_per_s: p.tokens as f64 / p.elapsed_s.max(1e-9),
                steps_per_s: p.steps_here as f64 / p.elapsed_s.max(1e-9),
                peak_vram_mib,
                elapsed_s: p.elapsed_s,
            })?;
        }
        Ok(())
    }
}

/// Checks the model against the training data and the batch settings (usage errors).
pub(crate) fn check_shapes(config: &TrainConfig, data: &SplitData) -> Result<(), Error> {
    config.model.check().map_err(Error::Usage)?;
    if data.seq_len() != config.model.seq_len || i64::from(data.vocab()) != config.model.vocab {
        return Err(Error::Usage(format!(
            "the model is for --seq-len {} and vocabulary {}, the training artifacts have sequences of {} tokens and vocabulary {}",
            config.model.seq_len, config.model.vocab, data.seq_len(), data.vocab()
        )));
    }
    if config.batch == 0 || config.accum == 0 {
        return Err(Error::Usage(
            "--batch and --accum must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Runs training: writes the run directory and returns the summary.
pub fn run(run: &Run, progress: &mut dyn FnMut(&Event)) -> Result<Summary, Error> {
    let config = &run.config;
    let data = &run.train.data;
    check_shapes(config, data)?;
    // Before the run directory exists: a backend that cannot run here is a usage error.
    config
        .ska_backend
        .ops(&config.model, config.precision.kind(), run.device)
        .map_err(Error::Usage)?;
    config
        .fused_norm
        .ops(config.precision.kind(), run.device)
        .map_err(Error::Usage)?;
    let out = &run.out;
    let metrics_path = out.join("metrics.jsonl");
    if !run.resume && metrics_path.exists() {
        return Err(Error::Usage(format!(
            "{} already holds a run; pass --resume to continue it, or another --out",
            out.display()
        )));
    }
    if run.resume && !out.join("checkpoint").join("state.json").exists() {
        return Err(Error::Checkpoint(format!(
            "--resume: {} has no checkpoint; start the run without --resume",
            out.display()
        )));
    }
    let existed = out.exists();
    std::fs::create_dir_all(out).map_err(io(out))?;
    let result = crate::memory::guard(&oom_hint(config), || train(run, progress));
    if result.is_err() && !run.resume && !out.join("checkpoint").exists() {
        // Nothing to resume: leave no half-written run behind (a retry can use this --out).
        remove_partial_run(out, existed);
    }
    result
}

/// The flags that lower a run's memory, with their values (for out-of-memory errors).
pub fn oom_hint(config: &TrainConfig) -> String {
    let m = &config.model;
    let attn = match m.attn {
        crate::model::Attn::DotNaive => {
            ", or --attn sdpa (dot-naive keeps B*H*L^2 scores per layer)"
        }
        _ => "",
    };
    format!(
        "lower --batch (now {}, --accum keeps the tokens per step), --seq-len ({}), --d-model ({}) or --layers ({}){attn}; or pass --memory-safe to pick from the free memory",
        config.batch, m.seq_len, m.d_model, m.layers
    )
}

/// Removes what a failed fresh run wrote into `out` (and `out` itself when this run
/// created it and it is empty now). Best effort: the run's own error is what is reported.
fn remove_partial_run(out: &Path, existed: bool) {
    for name in [
        "run_meta.json",
        "metrics.jsonl",
        "summary.csv",
        "summary.json",
    ] {
        let _ = std::fs::remove_file(out.join(name));
    }
    let _ = std::fs::remove_dir_all(out.join("checkpoint.tmp"));
    let _ = std::fs::remove_dir_all(out.join(TB_DIR));
    if !existed {
        let _ = std::fs::remove_dir(out);
    }
}

/// The TensorBoard directory inside a run directory.
pub const TB_DIR: &str = "tb";

/// The body of [`run`] once the run directory exists.
fn train(run: &Run, progress: &mut dyn FnMut(&Event)) -> Result<Summary, Error> {
    let config = &run.config;
    let data = &run.train.data;
    let out = &run.out;
    let metrics_path = out.join("metrics.jsonl");
    tch::manual_seed(config.seed as i64);
    let vs = tch::nn::VarStore::new(run.device);
    let (model, norm) = build_model(&vs, config, run.device)?;
    let mut opt = AdamW::new(&vs);
    let sampler = Sampler::new(data.num_sequences() as usize, config.batch, config.seed);
    let total = total_steps(config, &sampler);
    let start = if run.resume {
        load_checkpoint(out, &mut opt, config)?
    } else {
        0
    };
    write_meta(run, total, norm)?;
    let mut metrics = open_metrics(&metrics_path, run.resume, start)?;
    // A new event file per process; a resumed run's begins with a restart marker at
    // its first new step, so TensorBoard drops what the killed process logged after
    // the checkpoint (as `open_metrics` did).
    let mut tb = match run.tensorboard {
        true => {
            let mut tb = ausa_track::tfevents::EventWriter::create(&out.join(TB_DIR))?;
            if run.resume {
                tb.restart(start as u64 + 1)?;
            }
            Some(tb)
        }
        false => None,
    };
    let mut log = |event: &Event| -> Result<(), Error> {
        let line = serde_json::to_string(event).map_err(|e| Error::Torch(e.to_string()))?;
        writeln!(metrics, "{line}").map_err(io(&metrics_path))?;
        if let Some(tb) = tb.as_mut() {
            // The same numbers as the line (one mapping: ausa_track::scalars).
            let value = serde_json::to_value(event).map_err(|e| Error::Torch(e.to_string()))?;
            tb.metrics_line(&value)?;
        }
        progress(event);
        Ok(())
    };
    let kind = config.precision.kind();
    // One evaluation of `split`, logged as the `eval` event of `step`.
    let evaluate_and_log = |split: &SplitInput,
                            name: &str,
                            step: usize,
                            log: &mut dyn FnMut(&Event) -> Result<(), Error>|
     -> Result<EvalResult, Error> {
        let result = evaluate(&model, split, config.batch, config.eval_batches, kind);
        log(&Event::Eval {
            step,
            split: name.into(),
            result,
        })?;
        Ok(result)
    };

    let started = Instant::now();
    let mut tokens = 0i64;
    let mut pending = Pending::new(run.device);
    let mut step = start;
    let mut valid = None;
    while step < total {
        if run.stop_at == Some(step) {
            break;
        }
        let lr = learning_rate(config, step, total);
        let micro: Vec<(usize, Vec<i64>)> = (0..config.accum)
            .map(|a| sampler.micro_batch(step * config.accum + a))
            .collect();
        let ids: Vec<Vec<i64>> = micro.iter().map(|(_, ids)| ids.clone()).collect();
        let out_step = train_step(&model, &mut opt, data, &ids, config, step, lr, &mut |_| {})?;
        tokens += ids.iter().map(|i| i.len() as i64).sum::<i64>() * data.seq_len();
        step += 1;
        pending.push(PendingStep {
            step,
            steps_here: step - start,
            steps: total,
            epoch: micro[0].0,
            lr,
            loss: out_step.loss,
            grad_norm: out_step.grad_norm,
            tokens,
            elapsed_s: started.elapsed().as_secs_f64(),
        });
        let evaluate_now = config.eval_every > 0 && step % config.eval_every == 0 && step < total;
        let save_now = config.save_every > 0 && step % config.save_every == 0;
        if pending.due() || evaluate_now || save_now {
            pending.flush(&mut log)?;
        }
        if let Some(split) = run.valid.filter(|_| evaluate_now) {
            evaluate_and_log(split, "valid", step, &mut log)?;
        }
        if save_now {
            save_checkpoint(out, &opt, step, config)?;
        }
    }
    pending.flush(&mut log)?;
    let (first_loss, last_loss) = (pending.first_loss, pending.last_loss);
    let elapsed = started.elapsed().as_secs_f64();
    save_checkpoint(out, &opt, step, config)?;
    let mut test = None;
    if step == total {
        if let Some(split) = run.valid {
            valid = Some(evaluate_and_log(split, "valid", step, &mut log)?);
        }
        if let Some(split) = run.test {
            test = Some(evaluate_and_log(split, "test", step, &mut log)?);
        }
    }
    let summary = Summary {
        out: out.clone(),
        steps: step,
        first_loss,
        last_loss,
        valid,
        test,
        tokens_per_s: tokens as f64 / elapsed.max(1e-9),
        elapsed_s: elapsed,
        peak_vram_mib: match run.device {
            Device::Cuda(i) => Some(
                ausa_kernels::shim::cuda_memory(i)
                    .map_err(shim_error)?
                    .peak_allocated as f64
                    / (1u64 << 20) as f64,
            ),
            _ => None,
        },
    };
    write_summary(run, &summary)?;
    Ok(summary)
}

/// Opens `metrics.jsonl`: new, or on resume cut back to the lines of steps `<= step`.
fn open_metrics(path: &Path, resume: bool, step: usize) -> Result<std::fs::File, Error> {
    if resume && path.exists() {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        let kept: String = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s as usize <= step)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(path, kept.as_bytes())?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io(path))
}

pub(crate) fn git_revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["-C", env!("CARGO_MANIFEST_DIR"), "rev-parse", "HEAD"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn split_meta(split: &SplitInput) -> serde_json::Value {
    data_meta(&split.data, split.stats)
}

/// The shape of one split's set artifacts, for the metadata.
pub(crate) fn data_meta(d: &SplitData, stats: Option<TextStats>) -> serde_json::Value {
    let (window, stride) = d.window_stride();
    json!({
        "sequences": d.num_sequences(),
        "seq_len": d.seq_len(),
        "sets_per_seq": d.sets_per_seq(),
        "window": window,
        "stride": stride,
        "minhash_k": d.minhash_k(),
        "router_topk": d.router_topk(),
        "leading_sets": d.leading_sets(),
        "positions_without_set": d.blind_positions(),
        "text": stats,
        "histograms": histograms_meta(d.histograms()),
    })
}

/// The bank histograms for the metadata: `{"sets_per_seq": {"unit", "bin_width",
/// "bins": [{"le", "count"}]}, "atoms_per_set": {...}}` (bucket `le` counts the values
/// in `(le - bin_width, le]`).
fn histograms_meta(h: &crate::data::BankHistograms) -> serde_json::Value {
    let one = |h: &crate::data::BankHistogram, unit: &str| {
        json!({
            "unit": unit,
            "bin_width": h.width,
            "bins": h.bins.iter().map(|&(le, count)| json!({"le": le, "count": count})).collect::<Vec<_>>(),
        })
    };
    json!({
        "sets_per_seq": one(&h.sets_per_seq, "sequences"),
        "atoms_per_set": one(&h.atoms_per_set, "sets"),
    })
}

/// The model of `config` in `vs` with the ops `--ska-backend` and `--fused-layernorm`
/// resolve to on `device`, and the LayerNorm's (for run_meta). One place for training and
/// `--benchmark`, so both time the same model.
pub(crate) fn build_model(
    vs: &tch::nn::VarStore,
    config: &TrainConfig,
    device: Device,
) -> Result<(Lm, ausa_kernels::OpImpl), Error> {
    let router = config
        .ska_backend
        .ops(&config.model, config.precision.kind(), device)
        .map_err(Error::Usage)?;
    let norm = config
        .fused_norm
        .ops(config.precision.kind(), device)
        .map_err(Error::Usage)?;
    let model = Lm::with_ops(&vs.root(), &config.model, router)
        .with_layer_norm(norm)
        .map_err(Error::Usage)?;
    Ok((model, norm))
}

/// `norm`: what `--fused-layernorm` resolved to for this run's model.
fn write_meta(run: &Run, total: usize, norm: ausa_kernels::OpImpl) -> Result<(), Error> {
    let device = match run.device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".to_string(),
    };
    let meta = json!({
        "ausa_version": env!("CARGO_PKG_VERSION"),
        "git_revision": git_revision(),
        "libtorch": {
            "version_expected": "2.11.0",
            "dir": crate::device::libtorch_dir(),
        },
        "device": device,
        "gpu_name": crate::device::gpu_name(),
        "config": run.config,
        "steps": total,
        "seeds": { "seed": run.config.seed },
        // What the artifacts hold (leading partial windows in the banks), not a flag.
        "early_position_remedy": if run.train.data.leading_sets() > 0 { "leading" } else { "none" },
        "set_features": run.config.model.set_features.as_str(),
        "delta": run.config.model.delta.as_str(),
        "pos": run.config.model.pos.as_str(),
        "ska_backend": run.config.ska_backend.as_str(),
        // The CUDA kernels' tuning variables as this process read them (they pick
        // kernels and launch shapes: the same results to rounding, not the same bits).
        "kernel_knobs": ausa_kernels::cuda::tuning_knobs()
            .into_iter()
            .map(|(name, value)| (name.to_string(), json!(value)))
            .collect::<serde_json::Map<_, _>>(),
        // What --fused-layernorm resolved to on this device and precision.
        "layer_norm": match norm {
            ausa_kernels::OpImpl::Cuda { .. } => "fused-cuda",
            _ => "libtorch",
        },
        "resume": run.resume,
        "data": {
            "train": split_meta(run.train),
            "valid": run.valid.map(split_meta),
            "test": run.test.map(split_meta),
        },
        "run": run.meta,
    });
    let path = run.out.join("run_meta.json");
    let bytes = serde_json::to_vec_pretty(&meta).map_err(|e| Error::Torch(e.to_string()))?;
    write_atomic(&path, &bytes)
}

fn write_summary(run: &Run, summary: &Summary) -> Result<(), Error> {
    let c = &run.config;
    let m = &c.model;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    let header = "attn,precision,d_model,layers,heads,seq_len,batch,accum,steps,first_loss,last_loss,valid_loss,valid_token_ppl,valid_word_ppl,valid_bpb,test_loss,test_token_ppl,test_word_ppl,test_bpb,tokens_per_s,elapsed_s,peak_vram_mib";
    let eval = |e: Option<EvalResult>| {
        [
            opt(e.map(|e| e.loss)),
            opt(e.map(|e| e.token_ppl)),
            opt(e.and_then(|e| e.word_ppl)),
            opt(e.and_then(|e| e.bits_per_byte)),
        ]
        .join(",")
    };
    let row = format!(
        "{},{},{},{},{},{},{},{},{},{},{},{},{},{:.1},{:.3},{}",
        m.attn.as_str(),
        serde_json::to_value(c.precision)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        m.d_model,
        m.layers,
        m.heads,
        m.seq_len,
        c.batch,
        c.accum,
        summary.steps,
        opt(summary.first_loss),
        opt(summary.last_loss),
        eval(summary.valid),
        eval(summary.test),
        summary.tokens_per_s,
        summary.elapsed_s,
        summary
            .peak_vram_mib
            .map_or(String::new(), |v| format!("{v:.1}"))
    );
    write_atomic(
        &run.out.join("summary.csv"),
        format!("{header}\n{row}\n").as_bytes(),
    )?;
    let json = serde_json::to_vec_pretty(summary).map_err(|e| Error::Torch(e.to_string()))?;
    write_atomic(&run.out.join("summary.json"), &json)
}
