//! The `banks` stage kind: each sequence's bank of sets, written as
//! `banks-<split>.arrow` ([`ausa_artifacts::banks`]).
//!
//! Windows of `window` tokens start every `stride` tokens (`stride <= window`); the
//! last window is the first one reaching the sequence's end (clipped to it), so
//! every token lies in some window. A set is the sorted distinct ids of its
//! window. Sequences are processed in parallel and written in order, so the bytes
//! do not depend on the thread count. Parameters owned here: `window`, `stride`,
//! `leading`.
//!
//! `leading = true` is the SPEC's early-positions remedy: with full windows only, a
//! causal token `t` sees its first set at `t = window - 1`, so the first `window - 1`
//! positions of every sequence get no set context. The leading partial windows
//! `[0, stride)`, `[0, 2 * stride)`, ... (every multiple of `stride` below the first
//! window's end) come first in the bank, so every position from `stride - 1` on
//! sees a set. Their ends are increasing and below the first window's, so the bank
//! stays in end order (what routing and the causal attend rule rely on). Off by
//! default, and then out of the key, so banks built before the option existed keep
//! their fingerprints.

use std::path::Path;

use ausa_artifacts::histogram::Buckets;
use ausa_artifacts::{banks_path, sequences_path, BankShape, BanksWriter, Split, TokensFile};
use ausa_dag::{InputSlot, StageContext, StageError, Stats, TypedStage};
use rayon::prelude::*;
use serde_json::{json, Value};

static INPUTS: [InputSlot; 1] = [InputSlot {
    name: "sequences",
    kinds: &["sequences"],
    doc: "the sequences whose windows become sets",
}];

ausa_dag::stage_params! {
    /// Parameters of the `banks` stage.
    pub struct BanksParams {
        window: u32 = int(1, 1 << 20, 64, "tokens per window (set)"),
        stride: u32 = int(1, 1 << 20, 32,
            "tokens between window starts (at most window, so every token is covered)"),
        leading: bool = bool(false,
            "also the leading partial windows [0, stride), [0, 2*stride), ... before the first \
             full one, so every position from stride-1 on sees a set (early-positions remedy)")
            .keyed_unless_default(),
    }
}

/// Sequences per parallel task.
const CHUNK_SEQS: usize = 256;

/// The `banks` stage kind (input `sequences`; writes `banks-<split>.arrow`).
#[derive(Debug, Default, Clone, Copy)]
pub struct BanksStage;

impl TypedStage for BanksStage {
    type Params = BanksParams;

    fn kind(&self) -> &'static str {
        "banks"
    }

    fn salt(&self) -> &'static str {
        "2"
    }

    fn doc(&self) -> &'static str {
        "For every sequence, windows of `window` tokens every `stride` tokens (the last one \
         clipped at the sequence end; with `leading`, first the partial windows [0, stride), \
         [0, 2*stride), ... below the first window's end); each set is the sorted distinct \
         atom ids of its window with its span. Writes banks-<split>.arrow: a two-level CSR (values, set offsets, \
         sequence offsets, spans)."
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn check(&self, params: &BanksParams) -> Result<(), String> {
        let BanksParams { window, stride, .. } = *params;
        if stride > window {
            return Err(format!(
                "stride ({stride}) must not exceed window ({window}): tokens between windows \
                 would belong to no set"
            ));
        }
        Ok(())
    }

    fn run(&self, params: &BanksParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let shape = Windows::of(params);
        let dir = &ctx.input("sequences")?.dir;
        let mut splits = serde_json::Map::new();
        for split in Split::ALL {
            let path = sequences_path(dir, split);
            if path.exists() {
                let out = banks_path(ctx.out_dir, split);
                let stats = bank_split(&path, &out, shape)?;
                splits.insert(split.as_str().into(), stats);
            }
        }
        let mut stats = Stats::new();
        stats.insert("window".into(), json!(shape.window));
        stats.insert("stride".into(), json!(shape.stride));
        if shape.leading {
            stats.insert("leading".into(), json!(true));
        }
        stats.insert("splits".into(), Value::Object(splits));
        Ok(stats)
    }
}

/// How a sequence is cut into sets: the `banks` stage's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// Tokens per window.
    pub window: u32,
    /// Tokens between window starts.
    pub stride: u32,
    /// Also the leading partial windows `[0, k * stride)` below the first window's end.
    pub leading: bool,
}

impl Windows {
    /// Full windows only (`leading` off).
    pub fn full(window: u32, stride: u32) -> Windows {
        Windows {
            window,
            stride,
            leading: false,
        }
    }

    /// The shape the stage's parameters describe.
    pub fn of(params: &BanksParams) -> Windows {
        Windows {
            window: params.window,
            stride: params.stride,
            leading: params.leading,
        }
    }

    /// The spans `[start, end)` of the sets of a sequence of `len` tokens, in bank
    /// (end) order.
    pub fn spans(self, len: u32) -> Vec<(u32, u32)> {
        let Windows {
            window,
            stride,
            leading,
        } = self;
        let mut spans = Vec::new();
        if leading && len > 0 {
            // The first full window ends at min(window, len); the partial windows
            // [0, k * stride) below that end give positions stride-1 .. a set.
            let first_end = window.min(len);
            let mut end = stride;
            while end < first_end {
                spans.push((0, end));
                end += stride;
            }
        }
        let mut start = 0;
        while start < len {
            let end = (start + window).min(len);
            spans.push((start, end));
            if end == len {
                break;
            }
            start += stride;
        }
        spans
    }

    /// One sequence's bank: its sets with their spans.
    pub fn bank(self, ids: &[u32]) -> Vec<(Vec<u32>, u32, u32)> {
        self.spans(ids.len() as u32)
            .into_iter()
            .map(|(s, e)| (set_of(ids[s as usize..e as usize].iter().copied()), s, e))
            .collect()
    }
}

/// The spans `[start, end)` of the full windows of a sequence of `len` tokens.
pub fn windows(len: u32, window: u32, stride: u32) -> Vec<(u32, u32)> {
    Windows::full(window, stride).spans(len)
}

/// The sorted distinct ids of `ids`.
pub fn set_of(ids: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut set: Vec<u32> = ids.collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// One sequence's bank of full windows: its sets with their spans.
pub fn bank(ids: &[u32], window: u32, stride: u32) -> Vec<(Vec<u32>, u32, u32)> {
    Windows::full(window, stride).bank(ids)
}

fn bank_split(path: &Path, out: &Path, windows: Windows) -> Result<Value, StageError> {
    let file = TokensFile::open(path)?;
    let shape = BankShape {
        vocab_size: file.vocab_size(),
        window: windows.window,
        stride: windows.stride,
    };
    let mut writer = BanksWriter::new(out, shape);
    let mut hist = Histograms::default();
    let n = file.num_documents();
    let chunks: Vec<usize> = (0..n).step_by(CHUNK_SEQS).collect();
    let banks: Vec<Vec<_>> = chunks
        .into_par_iter()
        .map(|first| {
            (first..(first + CHUNK_SEQS).min(n))
                .map(|i| windows.bank(&file.document(i).map(|d| d.to_vec()).unwrap_or_default()))
                .collect()
        })
        .collect();
    for seq in banks.iter().flatten() {
        for (atoms, start, end) in seq {
            writer.push_set(atoms, *start, *end)?;
            hist.set_sizes.push(atoms.len() as u64);
        }
        writer.end_sequence();
        hist.sets_per_seq.push(seq.len() as u64);
    }
    let summary = writer.finish()?;
    Ok(hist.stats(summary.sequences, summary.sets, summary.atoms))
}

/// Set sizes and sets per sequence, for the statistics.
#[derive(Default)]
struct Histograms {
    set_sizes: Vec<u64>,
    sets_per_seq: Vec<u64>,
}

impl Histograms {
    fn stats(&self, sequences: u64, sets: u64, atoms: u64) -> Value {
        json!({
            "sequences": sequences,
            "sets": sets,
            "atoms": atoms,
            "avg_sets_per_seq": ratio(sets, sequences),
            "avg_atoms_per_set": ratio(atoms, sets),
            "set_size_histogram": histogram(&self.set_sizes),
            "sets_per_seq_histogram": histogram(&self.sets_per_seq),
        })
    }
}

fn ratio(a: u64, b: u64) -> Value {
    if b == 0 {
        return Value::Null;
    }
    json!(((a as f64 / b as f64) * 1e3).round() / 1e3)
}

/// Counts per power-of-two bucket, smallest first: `[{"le": 1, "count": n}, {"le": 2,
/// ...}, {"le": 4, ...}]` (a list, so JSON readers keep the numeric order).
fn histogram(values: &[u64]) -> Value {
    ausa_artifacts::histogram::histogram(values.iter().copied(), Buckets::PowerOfTwo)
        .into_iter()
        .map(|(le, count)| json!({ "le": le, "count": count }))
        .collect()
}
