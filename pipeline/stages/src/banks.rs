//! The `banks` stage kind: each sequence's bank of sets, written as
//! `banks-<split>.arrow` ([`ausa_artifacts::banks`]).
//!
//! Windows of `window` tokens start every `stride` tokens (`stride <= window`); the
//! last window is the first one reaching the sequence's end (clipped to it), so
//! every token lies in some window. A set is the sorted distinct ids of its
//! window. Sequences are processed in parallel and written in order, so the bytes
//! do not depend on the thread count. Parameters owned here: `window`, `stride`.

use std::path::Path;

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
         clipped at the sequence end); each set is the sorted distinct atom ids of its window \
         with its span. Writes banks-<split>.arrow: a two-level CSR (values, set offsets, \
         sequence offsets, spans)."
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn check(&self, params: &BanksParams) -> Result<(), String> {
        let BanksParams { window, stride } = *params;
        if stride > window {
            return Err(format!(
                "stride ({stride}) must not exceed window ({window}): tokens between windows \
                 would belong to no set"
            ));
        }
        Ok(())
    }

    fn run(&self, params: &BanksParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let BanksParams { window, stride } = *params;
        let dir = &ctx.input("sequences")?.dir;
        let mut splits = serde_json::Map::new();
        for split in Split::ALL {
            let path = sequences_path(dir, split);
            if path.exists() {
                let out = banks_path(ctx.out_dir, split);
                let stats = bank_split(&path, &out, window, stride)?;
                splits.insert(split.as_str().into(), stats);
            }
        }
        let mut stats = Stats::new();
        stats.insert("window".into(), json!(window));
        stats.insert("stride".into(), json!(stride));
        stats.insert("splits".into(), Value::Object(splits));
        Ok(stats)
    }
}

/// The spans `[start, end)` of the windows of a sequence of `len` tokens.
pub fn windows(len: u32, window: u32, stride: u32) -> Vec<(u32, u32)> {
    let mut spans = Vec::new();
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

/// The sorted distinct ids of `ids`.
pub fn set_of(ids: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut set: Vec<u32> = ids.collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// One sequence's bank: its sets with their spans.
pub fn bank(ids: &[u32], window: u32, stride: u32) -> Vec<(Vec<u32>, u32, u32)> {
    windows(ids.len() as u32, window, stride)
        .into_iter()
        .map(|(s, e)| (set_of(ids[s as usize..e as usize].iter().copied()), s, e))
        .collect()
}

fn bank_split(path: &Path, out: &Path, window: u32, stride: u32) -> Result<Value, StageError> {
    let file = TokensFile::open(path)?;
    let shape = BankShape {
        vocab_size: file.vocab_size(),
        window,
        stride,
    };
    let mut writer = BanksWriter::new(out, shape);
    let mut hist = Histograms::default();
    let n = file.num_documents();
    let chunks: Vec<usize> = (0..n).step_by(CHUNK_SEQS).collect();
    let banks: Vec<Vec<_>> = chunks
        .into_par_iter()
        .map(|first| {
            (first..(first + CHUNK_SEQS).min(n))
                .map(|i| {
                    bank(
                        &file.document(i).map(|d| d.to_vec()).unwrap_or_default(),
                        window,
                        stride,
                    )
                })
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
    let mut buckets = std::collections::BTreeMap::<u64, u64>::new();
    for &v in values {
        *buckets.entry(v.max(1).next_power_of_two()).or_default() += 1;
    }
    buckets
        .into_iter()
        .map(|(le, count)| json!({ "le": le, "count": count }))
        .collect()
}
