//! GPU memory: `--memory-safe`'s choice of shapes from the free VRAM ([`choose`]), and
//! out-of-memory failures turned into a clear error ([`guard`]).
//!
//! **The estimate** ([`estimate`]) adds up what a training step keeps on the device, in
//! bytes, from the flags alone (no allocation is tried):
//! - parameters, gradients and both AdamW moments in fp32, plus the compute-precision copy
//!   of the weights: `(16 + c) P` (`c` = 4 for fp32, 2 for bf16/fp16);
//! - per block and token, the activations saved for backward:
//!   `d (16 + c (7 + 2 ffn_mult))` (fp32 residual and LayerNorm, the rest in compute
//!   precision), and `dot-naive`'s score matrices, `H L (8 + 3c)` per token;
//!   `sdpa` keeps none;
//! - per SKA block and sequence, with `M = ceil(L / stride)` sets: `6 c H (M^2 + L M)` (kernel,
//!   scores, weights; router logits, gates) plus the pooled atom features
//!   `4 d M window`;
//! - the logits, `B L V (c + 12)` (compute precision, fp32, log-softmax, gradient);
//! - the whole split on the device when its token count is known: 2 bytes per token and,
//!   per set (`tokens / stride` of them), `4 k + 2 window + 20`;
//!
//! times 1.25 for the caching allocator's rounding and fragmentation. The budget is 80%
//! of the memory the driver reports free.
//!
//! **The choice** keeps every value the user gave. Values the user left to the DAG are
//! lowered, in this order, until the estimate fits: `--batch` (halved, down to 1), then for
//! SKA `--minhash-k` (halved, down to 32) and `--stride` (doubled, up to `--window`).
//! `--window` and `--router-topk` stay as the DAG has them (the naive backend's memory
//! does not depend on the top-k). Each choice is reported with its reason.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::model::Attn;
use crate::train::Precision;
use crate::Error;

/// The shapes an estimate depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct Shapes {
    /// Vocabulary size.
    pub vocab: i64,
    /// Tokens per sequence.
    pub seq_len: i64,
    /// Model width.
    pub d_model: i64,
    /// Blocks.
    pub layers: i64,
    /// Blocks with SKA attention (the others use `attn`'s dot attention).
    pub ska_layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// MLP width over `d_model`.
    pub ffn_mult: i64,
    /// Attention of the non-SKA blocks.
    pub attn: Attn,
    /// Compute precision.
    pub precision: Precision,
    /// Sequences per micro-batch.
    pub batch: i64,
    /// Bank window.
    pub window: i64,
    /// Bank stride.
    pub stride: i64,
    /// MinHash values per set.
    pub minhash_k: i64,
    /// Routing table top-k.
    pub router_topk: i64,
    /// Tokens of all splits moved to the device (None: not known, not counted).
    pub split_tokens: Option<u64>,
}

/// Which of [`Shapes`]' values the user gave (those are never changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Given {
    /// `--batch` was given.
    pub batch: bool,
    /// `--stride` was given.
    pub stride: bool,
    /// `--minhash-k` was given.
    pub minhash_k: bool,
}

const SAFETY: f64 = 1.25;
const BUDGET: f64 = 0.8;

/// Estimated peak device bytes of a training step (see the module docs).
pub fn estimate(s: &Shapes) -> u64 {
    let c: f64 = match s.precision {
        Precision::Fp32 => 4.0,
        _ => 2.0,
    };
    let (v, l, d, b, h) = (
        s.vocab as f64,
        s.seq_len as f64,
        s.d_model as f64,
        s.batch as f64,
        s.heads as f64,
    );
    let mult = s.ffn_mult as f64;
    let dot_layers = (s.layers - s.ska_layers).max(0) as f64;
    let ska_layers = s.ska_layers.max(0) as f64;
    let block_params = (4.0 + 2.0 * mult) * d * d + (9.0 + mult) * d;
    let params = v * d + l * d + s.layers as f64 * block_params;
    let mut bytes = (16.0 + c) * params;
    let per_token = d * (16.0 + c * (7.0 + 2.0 * mult));
    bytes += s.layers as f64 * b * l * per_token;
    if s.attn == Attn::DotNaive {
        bytes += dot_layers * b * h * l * l * (8.0 + 3.0 * c);
    }
    let stride = s.stride.max(1) as f64;
    let window = s.window.max(1) as f64;
    if ska_layers > 0.0 {
        let m = (l / stride).ceil();
        bytes += ska_layers * b * 6.0 * c * h * (m * m + l * m);
        bytes += b * 4.0 * d * m * window;
    }
    bytes += b * l * v * (c + 12.0);
    if let Some(tokens) = s.split_tokens {
        let tokens = tokens as f64;
        let sets = tokens / stride;
        bytes += 2.0 * tokens + sets * (4.0 * s.minhash_k as f64 + 2.0 * window + 20.0);
    }
    (bytes * SAFETY) as u64
}

/// What `--memory-safe` picked.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The shapes to run with.
    pub shapes: Shapes,
    /// Estimated bytes of a step with them.
    pub estimate: u64,
    /// The budget they fit in.
    pub budget: u64,
    /// One line per value: what was chosen and why.
    pub reasons: Vec<String>,
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// Picks the shapes for `free` bytes of device memory (see the module docs); an error,
/// naming the flags to lower, when even the smallest choice does not fit.
pub fn choose(start: &Shapes, given: Given, free: u64) -> Result<Choice, String> {
    let budget = (free as f64 * BUDGET) as u64;
    let mut s = start.clone();
    let fits = |s: &Shapes| estimate(s) <= budget;
    let ska = s.ska_layers > 0;
    while !fits(&s) && !given.batch && s.batch > 1 {
        s.batch = (s.batch / 2).max(1);
    }
    while ska && !fits(&s) && !given.minhash_k && s.minhash_k > 32 {
        s.minhash_k = (s.minhash_k / 2).max(32);
    }
    while ska && !fits(&s) && !given.stride && s.stride < s.window {
        s.stride = (s.stride * 2).min(s.window);
    }
    let est = estimate(&s);
    let where_ = format!(
        "estimate {} of a {} budget (80% of {} free)",
        gib(est),
        gib(budget),
        gib(free)
    );
    if est > budget {
        return Err(format!(
            "--memory-safe: no setting fits: {where_} at --batch {} --seq-len {}; lower --batch, --seq-len, --d-model or --layers{}",
            s.batch,
            s.seq_len,
            if ska { ", or raise --stride" } else if s.attn == Attn::DotNaive { ", or use --attn sdpa" } else { "" }
        ));
    }
    let why = |flag: &str, given: bool, from: i64, to: i64| {
        if given {
            format!("{flag} {to}: as given")
        } else if from == to {
            format!("{flag} {to}: the default fits")
        } else {
            format!("{flag} {to}: lowered from {from} to fit")
        }
    };
    let mut reasons = vec![
        format!("--memory-safe: {where_}"),
        why("--batch", given.batch, start.batch, s.batch),
    ];
    if ska {
        reasons.push(why("--minhash-k", given.minhash_k, start.minhash_k, s.minhash_k));
        let stride = if given.stride || s.stride == start.stride {
            why("--stride", given.stride, start.stride, s.stride)
        } else {
            format!(
                "--stride {}: raised from {} to fit (fewer sets per sequence)",
                s.stride, start.stride
            )
        };
        reasons.push(stride);
        reasons.push(format!("--window {}: kept", s.window));
        reasons.push(format!(
            "--router-topk {}: kept (the naive backend's memory does not depend on it)",
            s.router_topk
        ));
    }
    if s.split_tokens.is_none() {
        reasons.push(
            "the split's size is not known yet (not built): its data on the GPU is not counted"
                .into(),
        );
    }
    Ok(Choice {
        shapes: s,
        estimate: est,
        budget,
        reasons,
    })
}

thread_local! {
    /// Whether this thread is inside [`guard`] (its panics are reported as errors, not
    /// printed).
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

static HOOK: Once = Once::new();

/// Installs (once) a panic hook that stays silent for threads inside [`guard`] and defers
/// to the previous hook everywhere else.
fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// The panic payload's text.
fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "a panic without a message".into()
    }
}

/// Whether a libtorch error text is an allocation failure (CUDA's caching allocator says
/// "CUDA out of memory", the CPU allocator "can't allocate memory").
pub fn is_out_of_memory(text: &str) -> bool {
    text.contains("out of memory") || text.contains("can't allocate memory")
}

/// The first line of libtorch's message, without tch's `Torch("..")` wrapper and the C++
/// backtrace (an unwrapped tch error prints its newlines escaped, as `\n`).
fn first_line(text: &str) -> String {
    let text = text
        .split_once("Torch(\"")
        .map_or(text, |(_, rest)| rest)
        .trim_start();
    let end = [text.find('\n'), text.find("\\n")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(text.len());
    text[..end]
        .trim_end_matches("\")")
        .chars()
        .take(400)
        .collect()
}

/// Runs `f`, turning a libtorch failure that surfaces as a panic (tch's infallible ops
/// unwrap their errors) into an [`Error`]: [`Error::OutOfMemory`] with `hint` (the flags to
/// lower) for an allocation failure, [`Error::Torch`] otherwise. Nothing is printed for
/// the panic itself.
pub fn guard<T>(hint: &str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    install_hook();
    let was = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was));
    match result {
        Ok(Err(Error::Torch(text))) if is_out_of_memory(&text) => Err(Error::OutOfMemory(
            format!("{}; {hint}", first_line(&text)),
        )),
        Ok(other) => other,
        Err(payload) => {
            let text = payload_text(payload.as_ref());
            if is_out_of_memory(&text) {
                Err(Error::OutOfMemory(format!("{}; {hint}", first_line(&text))))
            } else {
                Err(Error::Torch(first_line(&text)))
            }
        }
    }
}
