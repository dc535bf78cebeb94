//! GPU memory: `--memory-safe`'s choice of shapes from the free VRAM ([`choose`]), and
//! out-of-memory failures turned into a clear error ([`guard`]).
//!
//! **The estimate** ([`estimate`]) adds up what a training step keeps on the device, in
//! bytes, from the flags alone (no allocation is tried):
//! - parameters, gradients and both AdamW moments in fp32, plus the compute-precision copy
//!   of the weights: `(16 + c) P` (`c` = 4 for fp32, 2 for bf16/fp16);
//! - per dot block and token, the activations saved for backward:
//!   `d (16 + c (7 + 2 ffn_mult))` (fp32 residual and LayerNorm, the rest in compute
//!   precision), and `dot-naive`'s saved softmax, `H L s` per token (`s` = 4 bytes in fp32;
//!   6 in bf16/fp16: the fp32 softmax and its cast), plus one layer's transient scores,
//!   `B H L^2 (3c + 4)`; `sdpa` keeps none;
//! - per SKA block and sequence, with `M = ceil(L / stride)` sets: `3 c H (M^2 + L M)`
//!   (kernel scores and weights; router logits and gates), and `d (16 + c (4 + 2 ffn_mult))`
//!   per token instead of the dot block's; plus the pooled atom features `4 d M window`;
//! - the logits, `B L V (c + 12)` (compute precision, fp32, log-softmax, gradient);
//! - the whole split on the device when its token count is known: 2 bytes per token and,
//!   per set (`tokens / stride` of them), `4 k + 2 window + 20`;
//!
//! times 1.25 for the caching allocator's rounding and fragmentation. The budget is 80%
//! of the memory the driver reports free. Against peaks measured on the H200
//! (docs/benchmarks.md) the estimate is 1.0-1.6x high (pinned in a test).
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
    // A dot block saves q, k, v and the attention output; an SKA block only the router's
    // query and output.
    let per_token = |projections: f64| d * (16.0 + c * (projections + 2.0 * mult));
    bytes += b * l * (dot_layers * per_token(7.0) + ska_layers * per_token(4.0));
    if s.attn == Attn::DotNaive && dot_layers > 0.0 {
        let saved = if c < 4.0 { 4.0 + c } else { 4.0 };
        bytes += dot_layers * b * h * l * l * saved + b * h * l * l * (3.0 * c + 4.0);
    }
    let stride = s.stride.max(1) as f64;
    let window = s.window.max(1) as f64;
    if ska_layers > 0.0 {
        let m = (l / stride).ceil();
        bytes += ska_layers * b * 3.0 * c * h * (m * m + l * m);
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
        reasons.push(why(
            "--minhash-k",
            given.minhash_k,
            start.minhash_k,
            s.minhash_k,
        ));
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
    let line = text[..end].trim_end_matches("\")");
    // libtorch's allocator message runs on with tuning advice: keep whole sentences that
    // fit in 300 characters (the first one always).
    let mut kept = String::new();
    for sentence in line.split_inclusive(". ") {
        if !kept.is_empty() && kept.len() + sentence.len() > 300 {
            break;
        }
        kept.push_str(sentence);
    }
    kept.trim_end().to_string()
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
        Ok(Err(Error::Torch(text))) if is_out_of_memory(&text) => {
            Err(Error::OutOfMemory(format!("{}; {hint}", first_line(&text))))
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt2(attn: Attn, batch: i64, seq_len: i64) -> Shapes {
        Shapes {
            vocab: 1024,
            seq_len,
            d_model: 768,
            layers: 12,
            ska_layers: 0,
            heads: 12,
            ffn_mult: 4,
            attn,
            precision: Precision::Bf16,
            batch,
            window: 64,
            stride: 32,
            minhash_k: 128,
            router_topk: 0,
            split_tokens: None,
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_estimate_grows_with_batch_and_quadratically_for_dot_naive_scores() {
        let sdpa = estimate(&gpt2(Attn::Sdpa, 16, 1024));
        assert!(estimate(&gpt2(Attn::Sdpa, 32, 1024)) > sdpa);
        // The measured peak of the PyTorch peer at these shapes is 6.7 GB: same scale.
        assert!((4 * GIB..16 * GIB).contains(&sdpa), "{sdpa}");
        let dot = |l| estimate(&gpt2(Attn::DotNaive, 4, l)) - estimate(&gpt2(Attn::Sdpa, 4, l));
        let ratio = dot(2048) as f64 / dot(1024) as f64;
        assert!((3.9..4.1).contains(&ratio), "scores grow as L^2: {ratio}");
        let mut with_data = gpt2(Attn::Sdpa, 16, 1024);
        with_data.split_tokens = Some(100_000_000);
        assert!(
            estimate(&with_data) > sdpa + GIB,
            "the split on the device counts"
        );
    }

    /// Peaks of the CUDA caching allocator measured on the H200 at GPT-2-small width
    /// (docs/benchmarks.md, `--benchmark` rows): the estimate must cover each, and not by
    /// more than 1.6x (a looser estimate wastes the GPU).
    #[test]
    fn the_estimate_covers_measured_h200_peaks_without_wasting_much() {
        let mib = |v: f64| (v * (1u64 << 20) as f64) as u64;
        let mut ska = gpt2(Attn::DotNaive, 4, 4096);
        ska.ska_layers = 12;
        ska.precision = Precision::Fp32;
        let mut dot32 = gpt2(Attn::DotNaive, 1, 4096);
        dot32.precision = Precision::Fp32;
        let mut sdpa32 = gpt2(Attn::Sdpa, 64, 256);
        sdpa32.precision = Precision::Fp32;
        let cases = [
            (gpt2(Attn::Sdpa, 16, 1024), 6779.6),
            (gpt2(Attn::DotNaive, 16, 1024), 22027.8),
            (gpt2(Attn::DotNaive, 4, 4096), 69470.8),
            (dot32, 15054.9),
            (sdpa32, 10707.5),
            (ska, 13510.4),
        ];
        for (shapes, peak) in cases {
            let ratio = estimate(&shapes) as f64 / mib(peak) as f64;
            assert!(
                (1.0..1.6).contains(&ratio),
                "{:?} L{} B{}: estimate / measured = {ratio:.2}",
                shapes.attn,
                shapes.seq_len,
                shapes.batch
            );
        }
    }

    #[test]
    fn an_ungiven_batch_is_halved_until_it_fits_and_a_given_one_is_kept() {
        let start = gpt2(Attn::DotNaive, 64, 4096);
        let free = 100 * GIB;
        let choice = choose(&start, Given::default(), free).unwrap();
        assert!(choice.shapes.batch < 64 && choice.shapes.batch >= 1);
        assert!(choice.estimate <= choice.budget && choice.budget == (free as f64 * 0.8) as u64);
        let mut bigger = choice.shapes.clone();
        bigger.batch *= 2;
        assert!(
            estimate(&bigger) > choice.budget,
            "the largest power-of-two step that fits"
        );
        assert!(
            choice
                .reasons
                .iter()
                .any(|r| r.contains("--batch") && r.contains("lowered from 64")),
            "{:?}",
            choice.reasons
        );
        let given = Given {
            batch: true,
            ..Given::default()
        };
        let err = choose(&start, given, free).unwrap_err();
        assert!(
            err.contains("lower --batch") && err.contains("--attn sdpa"),
            "{err}"
        );
        let small = choose(&gpt2(Attn::Sdpa, 8, 256), given, free).unwrap();
        assert_eq!(small.shapes.batch, 8);
        assert!(small
            .reasons
            .iter()
            .any(|r| r.contains("--batch 8: as given")));
    }

    #[test]
    fn ska_lowers_minhash_k_then_raises_the_stride_once_the_batch_is_one() {
        let mut start = gpt2(Attn::DotNaive, 4, 4096);
        start.ska_layers = 12;
        start.stride = 8;
        start.split_tokens = Some(2_000_000_000);
        let need = |s: &Shapes| estimate(s);
        let mut at_one = start.clone();
        at_one.batch = 1;
        at_one.minhash_k = 32;
        // A budget between the stride-8 and the stride-64 estimates at batch 1.
        let mut wide = at_one.clone();
        wide.stride = 64;
        let free = ((need(&wide) + need(&at_one)) as f64 / 2.0 / 0.8) as u64;
        let choice = choose(&start, Given::default(), free).unwrap();
        assert_eq!(choice.shapes.batch, 1);
        assert_eq!(choice.shapes.minhash_k, 32);
        assert!(choice.shapes.stride > 8 && choice.shapes.stride <= 64);
        assert!(choice
            .reasons
            .iter()
            .any(|r| r.contains("--stride") && r.contains("raised from 8")));
        let given = Given {
            stride: true,
            ..Given::default()
        };
        assert!(choose(&start, given, free)
            .unwrap_err()
            .contains("raise --stride"));
    }

    #[test]
    fn guard_turns_an_out_of_memory_panic_into_an_error_with_the_hint() {
        let oom = guard("lower --batch (now 16)", || -> Result<(), Error> {
            panic!("called `Result::unwrap()` on an `Err` value: Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 139.81 GiB\\nException raised from malloc at /pytorch/c10/cuda/CUDACachingAllocator.cpp:1499\")")
        })
        .unwrap_err();
        let text = oom.to_string();
        assert!(matches!(oom, Error::OutOfMemory(_)), "{text}");
        assert!(
            text.contains("CUDA out of memory. Tried to allocate 2.00 GiB"),
            "{text}"
        );
        assert!(text.contains("lower --batch (now 16)"), "{text}");
        assert!(
            !text.contains("Exception raised"),
            "no C++ backtrace: {text}"
        );
        let long = guard("hint", || -> Result<(), Error> {
            panic!("Torch(\"CUDA out of memory. Tried to allocate 12.00 GiB. GPU 0 has a total capacity of 139.80 GiB of which 4.64 GiB is free. Including non-PyTorch memory, this process has 135.15 GiB memory in use. Of the allocated memory 131.51 GiB is allocated by PyTorch, and 2.98 GiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.\\nException raised from malloc\")")
        })
        .unwrap_err()
        .to_string();
        assert!(long.contains("4.64 GiB is free."), "{long}");
        assert!(
            !long.contains("PYTORCH_CUDA_ALLOC_CONF"),
            "whole sentences, cut: {long}"
        );
        assert_eq!(oom.exit_code(), 1);
        let other = guard("hint", || -> Result<(), Error> {
            panic!("Torch(\"shape mismatch\")")
        })
        .unwrap_err();
        assert!(
            matches!(&other, Error::Torch(t) if t == "shape mismatch"),
            "{other}"
        );
        assert_eq!(guard("hint", || Ok(7)).unwrap(), 7);
        let typed = guard("hint", || -> Result<(), Error> {
            Err(Error::Torch("CUDA out of memory. Tried".into()))
        });
        assert!(matches!(typed, Err(Error::OutOfMemory(_))));
        assert!(is_out_of_memory(
            "DefaultCPUAllocator: can't allocate memory: you tried"
        ));
        assert!(!is_out_of_memory("index out of range"));
    }
}
