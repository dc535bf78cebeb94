//! The `doc_stats` stage kind: per-document word and character counts of a documents
//! table, and per-split length summaries and histograms.

use ausa_artifacts::{
    document_batches, documents_path, histogram_path, DocStat, DocStatsWriter, Split,
    DOC_STATS_FILE,
};
use ausa_dag::{InputSlot, ProgressUnit, StageContext, StageError, Stats, TypedStage};
use rayon::prelude::*;

use crate::sink::WriteError;
use serde_json::{json, Value};

/// Stage kinds whose artifacts hold a `documents.parquet`; a new producer of documents
/// is added here.
pub const DOCUMENT_PRODUCERS: &[&str] = &["corpus", "download", "subset"];

static INPUTS: [InputSlot; 1] = [InputSlot {
    name: "documents",
    kinds: DOCUMENT_PRODUCERS,
    doc: "the documents table (documents.parquet) to measure",
}];

ausa_dag::stage_params! {
    /// Parameters of the `doc_stats` stage.
    pub struct DocStatsParams {
        histogram_bins: usize = int(1, 64, 16,
            "number of log2 word-count bins; the last one is open-ended"),
    }
}

/// The `doc_stats` stage kind (input `documents`; writes `doc_stats.parquet` and
/// `histogram.json`).
#[derive(Debug, Default, Clone, Copy)]
pub struct DocStatsStage;

impl TypedStage for DocStatsStage {
    type Params = DocStatsParams;

    fn kind(&self) -> &'static str {
        "doc_stats"
    }

    fn salt(&self) -> &'static str {
        "1"
    }

    fn doc(&self) -> &'static str {
        "Measures every document of a documents table: whitespace-separated words and \
         Unicode characters (doc_stats.parquet, same row order). Reports per split the \
         document count, total words and characters, min/max/mean/median words, and a \
         histogram of word counts in log2 bins (also written to histogram.json)."
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn run(&self, params: &DocStatsParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let bins = params.histogram_bins;
        let accumulators = measure(ctx)?;
        let summaries: Vec<(Split, Value)> = Split::ALL
            .iter()
            .map(|&s| (s, accumulators[s.index()].summary(bins)))
            .collect();
        write_histogram(ctx, &summaries)?;
        Ok(stats(&accumulators, summaries))
    }
}

/// Streams the input, writing `doc_stats.parquet`; returns the per-split counts.
fn measure(ctx: &StageContext<'_>) -> Result<[SplitAccumulator; 3], StageError> {
    let batches = document_batches(documents_path(&ctx.input("documents")?.dir))?;
    ctx.progress
        .set_total(batches.num_rows(), ProgressUnit::Items("docs"));
    let mut writer = DocStatsWriter::create(ctx.out_dir.join(DOC_STATS_FILE))?;
    let mut accumulators: [SplitAccumulator; 3] = Default::default();
    for batch in batches {
        let batch = batch?;
        let measured: Vec<DocStat> = (0..batch.len())
            .into_par_iter()
            .map(|i| {
                let doc = batch.get(i);
                DocStat::measure(doc.doc_id, doc.split, doc.text)
            })
            .collect();
        for stat in &measured {
            writer.push(stat)?;
            accumulators[stat.split.index()].add(stat);
        }
        ctx.progress.advance(measured.len() as u64);
    }
    writer.finish()?;
    Ok(accumulators)
}

/// Word counts of one split, kept whole for the exact median.
#[derive(Debug, Default, Clone)]
struct SplitAccumulator {
    words: Vec<u64>,
    chars: u64,
}

impl SplitAccumulator {
    fn add(&mut self, stat: &DocStat) {
        self.words.push(stat.words);
        self.chars += stat.chars;
    }

    fn total_words(&self) -> u64 {
        self.words.iter().sum()
    }

    /// Summary statistics; min/max/mean/median are null for an empty split.
    fn summary(&self, bins: usize) -> Value {
        let n = self.words.len();
        let mut sorted = self.words.clone();
        sorted.sort_unstable();
        let median = match n {
            0 => Value::Null,
            _ if n % 2 == 1 => json!(sorted[n / 2] as f64),
            _ => json!((sorted[n / 2 - 1] + sorted[n / 2]) as f64 / 2.0),
        };
        let mean = (n > 0).then(|| round2(self.total_words() as f64 / n as f64));
        json!({
            "documents": n,
            "words": self.total_words(),
            "chars": self.chars,
            "min_words": sorted.first(),
            "max_words": sorted.last(),
            "mean_words": mean,
            "median_words": median,
            "histogram": histogram(&self.words, bins),
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// The log2 bin of a word count: bin 0 holds 0 and 1 word, bin k holds
/// `2^k..2^(k+1)`, and the last bin everything above.
pub(crate) fn log2_bin(words: u64, bins: usize) -> usize {
    let k = if words < 2 {
        0
    } else {
        63 - words.leading_zeros() as usize
    };
    k.min(bins - 1)
}

/// `{"bins": [{"lo", "hi", "count"}, ...]}`: `lo` inclusive, `hi` exclusive, and
/// `hi` null for the last, open-ended bin.
pub(crate) fn histogram(words: &[u64], bins: usize) -> Value {
    let mut counts = vec![0u64; bins];
    for &w in words {
        counts[log2_bin(w, bins)] += 1;
    }
    let rows: Vec<Value> = counts
        .iter()
        .enumerate()
        .map(|(k, count)| {
            let lo = if k == 0 { 0 } else { 1u64 << k };
            let hi = (k + 1 < bins).then(|| 1u64 << (k + 1));
            json!({"lo": lo, "hi": hi, "count": count})
        })
        .collect();
    json!({ "bins": rows })
}

fn write_histogram(ctx: &StageContext<'_>, summaries: &[(Split, Value)]) -> Result<(), StageError> {
    let splits: serde_json::Map<String, Value> = summaries
        .iter()
        .map(|(s, summary)| (s.as_str().to_string(), summary["histogram"].clone()))
        .collect();
    let doc = json!({
        "scheme": "log2 word counts: bin 0 is [0, 2), bin k is [2^k, 2^(k+1)), the last bin is open-ended",
        "splits": splits,
    });
    let path = histogram_path(ctx.out_dir);
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    std::fs::write(&path, bytes).map_err(|source| WriteError { path, source })?;
    Ok(())
}

fn stats(accumulators: &[SplitAccumulator; 3], summaries: Vec<(Split, Value)>) -> Stats {
    let mut stats = Stats::new();
    let documents: usize = accumulators.iter().map(|a| a.words.len()).sum();
    stats.insert("documents".into(), json!(documents));
    stats.insert(
        "words".into(),
        json!(accumulators.iter().map(|a| a.total_words()).sum::<u64>()),
    );
    stats.insert(
        "chars".into(),
        json!(accumulators.iter().map(|a| a.chars).sum::<u64>()),
    );
    let splits: serde_json::Map<String, Value> = summaries
        .into_iter()
        .map(|(s, v)| (s.as_str().to_string(), v))
        .collect();
    stats.insert("splits".into(), Value::Object(splits));
    stats
}
