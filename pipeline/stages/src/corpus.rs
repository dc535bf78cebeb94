//! The `corpus` stage kind: builds `documents.parquet` from a synthetic generator or
//! from local text, JSONL or Parquet files.

use std::path::Path;

use ausa_artifacts::{DocumentsWriter, Split, DOCUMENTS_FILE};
use ausa_dag::{
    ParamDefault, ParamSpec, ParamType, ParamValue, Params, ProgressUnit, Stage, StageContext,
    StageError, Stats,
};
use rayon::prelude::*;
use serde_json::json;

use crate::local::{self, LocalOptions};
use crate::synthetic::{Generator, SyntheticConfig, SyntheticDoc};

/// Documents generated per parallel chunk: large enough to keep every core busy,
/// small enough that a chunk's text (about 10 MB at default lengths) stays modest.
const SYNTHETIC_CHUNK: usize = 4096;

/// The `Paths` parameters of the local source, one per split, in output order.
pub(crate) const SPLIT_PARAMS: [(Split, &str); 3] = [
    (Split::Train, "train"),
    (Split::Validation, "validation"),
    (Split::Test, "test"),
];

static PARAMS: [ParamSpec; 16] = [
    ParamSpec {
        name: "source",
        ty: ParamType::Choice(&["synthetic", "local"]),
        default: ParamDefault::Str("synthetic"),
        doc: "Where documents come from: the built-in generator or local files",
    },
    ParamSpec {
        name: "docs",
        ty: ParamType::Int {
            min: 1,
            max: 100_000_000,
        },
        default: ParamDefault::Int(2000),
        doc: "synthetic: number of documents",
    },
    ParamSpec {
        name: "seed",
        ty: ParamType::Int {
            min: 0,
            max: i64::MAX,
        },
        default: ParamDefault::Int(0),
        doc: "synthetic: random seed (documents and splits)",
    },
    ParamSpec {
        name: "vocab_size",
        ty: ParamType::Int {
            min: 10,
            max: 1_000_000,
        },
        default: ParamDefault::Int(5000),
        doc: "synthetic: number of distinct words",
    },
    ParamSpec {
        name: "zipf_exponent",
        ty: ParamType::Float { min: 0.5, max: 3.0 },
        default: ParamDefault::Float(1.1),
        doc: "synthetic: word frequency of rank r is proportional to 1 / r^zipf_exponent",
    },
    ParamSpec {
        name: "min_words",
        ty: ParamType::Int {
            min: 1,
            max: 10_000_000,
        },
        default: ParamDefault::Int(20),
        doc: "synthetic: fewest words in a document",
    },
    ParamSpec {
        name: "max_words",
        ty: ParamType::Int {
            min: 1,
            max: 10_000_000,
        },
        default: ParamDefault::Int(2000),
        doc: "synthetic: most words in a document (lengths are log-uniform in between)",
    },
    ParamSpec {
        name: "validation_fraction",
        ty: ParamType::Float { min: 0.0, max: 0.5 },
        default: ParamDefault::Float(0.05),
        doc: "synthetic: expected fraction of documents in the validation split",
    },
    ParamSpec {
        name: "test_fraction",
        ty: ParamType::Float { min: 0.0, max: 0.5 },
        default: ParamDefault::Float(0.05),
        doc: "synthetic: expected fraction of documents in the test split",
    },
    paths_param(
        "train",
        "local: files, directories or globs of the train split",
    ),
    paths_param(
        "validation",
        "local: files, directories or globs of the validation split",
    ),
    paths_param(
        "test",
        "local: files, directories or globs of the test split",
    ),
    ParamSpec {
        name: "text_format",
        ty: ParamType::Choice(&["auto", "paragraphs", "wikitext", "lines"]),
        default: ParamDefault::Str("auto"),
        doc: "local .txt files: documents are blank-line separated paragraphs, WikiText \
              articles, or lines; auto = wikitext if a ` = Title = ` line exists, else paragraphs",
    },
    ParamSpec {
        name: "jsonl_field",
        ty: ParamType::Str,
        default: ParamDefault::Str("text"),
        doc: "local .jsonl files: the string field holding the text",
    },
    ParamSpec {
        name: "parquet_column",
        ty: ParamType::Str,
        default: ParamDefault::Str("text"),
        doc: "local .parquet files: the Utf8 or LargeUtf8 column holding the text",
    },
    ParamSpec {
        name: "on_invalid_utf8",
        ty: ParamType::Choice(&["error", "replace"]),
        default: ParamDefault::Str("error"),
        doc: "local .txt/.jsonl files: fail on invalid UTF-8, or replace it with U+FFFD",
    },
];

const fn paths_param(name: &'static str, doc: &'static str) -> ParamSpec {
    ParamSpec {
        name,
        ty: ParamType::Paths {
            extensions: &["txt", "jsonl", "parquet"],
        },
        default: ParamDefault::NoPaths,
        doc,
    }
}

/// The `corpus` stage kind (no inputs; writes `documents.parquet`).
#[derive(Debug, Default, Clone, Copy)]
pub struct CorpusStage;

impl Stage for CorpusStage {
    fn kind(&self) -> &'static str {
        "corpus"
    }

    fn salt(&self) -> &'static str {
        "1"
    }

    fn doc(&self) -> &'static str {
        "Builds the documents table (documents.parquet: doc_id, split, text) from a \
         deterministic synthetic English-like generator with a Zipfian vocabulary, or from \
         local .txt (paragraphs, WikiText articles or lines), .jsonl or .parquet files given \
         per split. Rows are train, then validation, then test documents, each in input \
         order; doc_id is the row index. Documents are trimmed and empty ones dropped."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }

    fn inputs(&self) -> &'static [ausa_dag::InputSlot] {
        &[]
    }

    fn check(&self, params: &Params) -> Result<(), String> {
        match params.str("source").map_err(|e| e.to_string())? {
            "synthetic" => check_synthetic(params).map_err(|e| e.to_string()),
            _ => check_local(params),
        }
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let path = ctx.out_dir.join(DOCUMENTS_FILE);
        let mut sink = CorpusSink::create(&path)?;
        let source = ctx.params.str("source")?;
        if source == "synthetic" {
            let generator = Generator::new(synthetic_config(ctx.params)?);
            write_synthetic(&generator, &mut sink, ctx)?;
        } else {
            local::write_local(&LocalOptions::from_params(ctx.params)?, &mut sink, ctx)?;
        }
        sink.finish(source)
    }
}

fn check_synthetic(params: &Params) -> Result<(), StageError> {
    let (min, max) = (params.int("min_words")?, params.int("max_words")?);
    if min > max {
        return Err(format!("min_words ({min}) must not exceed max_words ({max})").into());
    }
    let (val, test) = (
        params.float("validation_fraction")?,
        params.float("test_fraction")?,
    );
    if val + test >= 1.0 {
        return Err(format!(
            "validation_fraction ({val}) + test_fraction ({test}) must be below 1, \
             or no documents are left for training"
        )
        .into());
    }
    Ok(())
}

fn check_local(params: &Params) -> Result<(), String> {
    let given = SPLIT_PARAMS
        .iter()
        .any(|(_, name)| matches!(params.get(name), Some(ParamValue::Paths(p)) if !p.is_empty()));
    if given {
        Ok(())
    } else {
        Err(
            "source = \"local\" needs files in at least one of `train`, `validation`, `test`"
                .to_string(),
        )
    }
}

fn synthetic_config(params: &Params) -> Result<SyntheticConfig, StageError> {
    let int = |name: &str| -> Result<u64, StageError> { Ok(u64::try_from(params.int(name)?)?) };
    Ok(SyntheticConfig {
        docs: int("docs")?,
        seed: int("seed")?,
        vocab_size: usize::try_from(int("vocab_size")?)?,
        zipf_exponent: params.float("zipf_exponent")?,
        min_words: int("min_words")?,
        max_words: int("max_words")?,
        validation_fraction: params.float("validation_fraction")?,
        test_fraction: params.float("test_fraction")?,
    })
}

/// Generates in parallel chunks and writes each chunk in index order, so memory stays
/// bounded and the bytes do not depend on the thread count. Writing (zstd) of one
/// chunk overlaps with generating the next.
pub(crate) fn write_synthetic(
    generator: &Generator,
    sink: &mut CorpusSink,
    ctx: &StageContext<'_>,
) -> Result<(), StageError> {
    ctx.progress
        .set_total(generator.config().docs, ProgressUnit::Items("docs"));
    let mut pending: Vec<(Split, SyntheticDoc)> = Vec::new();
    for chunk in synthetic_chunks(generator) {
        let (written, generated) = rayon::join(
            || write_generated(sink, &pending, ctx),
            || {
                chunk
                    .par_iter()
                    .map(|&(split, i)| (split, generator.document(i)))
                    .collect()
            },
        );
        written?;
        pending = generated;
    }
    write_generated(sink, &pending, ctx)
}

/// `(split, index)` chunks: all train documents in index order, then validation, then
/// test.
fn synthetic_chunks(generator: &Generator) -> impl Iterator<Item = Vec<(Split, u64)>> + '_ {
    let docs = generator.config().docs;
    let mut ordered = Split::ALL.into_iter().flat_map(move |split| {
        (0..docs)
            .filter(move |&i| generator.split_of(i) == split)
            .map(move |i| (split, i))
    });
    std::iter::from_fn(move || {
        let chunk: Vec<_> = ordered.by_ref().take(SYNTHETIC_CHUNK).collect();
        (!chunk.is_empty()).then_some(chunk)
    })
}

fn write_generated(
    sink: &mut CorpusSink,
    docs: &[(Split, SyntheticDoc)],
    ctx: &StageContext<'_>,
) -> Result<(), StageError> {
    for (split, doc) in docs {
        sink.push_counted(*split, &doc.text, doc.words)?;
    }
    ctx.progress.advance(docs.len() as u64);
    Ok(())
}

/// Per-split totals reported in the stage's statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SplitTotals {
    pub(crate) documents: u64,
    pub(crate) words: u64,
    pub(crate) bytes: u64,
}

/// The documents writer plus the running `doc_id` and totals.
pub(crate) struct CorpusSink {
    writer: DocumentsWriter,
    next_id: u64,
    totals: [SplitTotals; 3],
}

impl CorpusSink {
    pub(crate) fn create(path: &Path) -> Result<CorpusSink, StageError> {
        Ok(CorpusSink {
            writer: DocumentsWriter::create(path)?,
            next_id: 0,
            totals: Default::default(),
        })
    }

    /// Adds a document after trimming it; empty documents are dropped.
    pub(crate) fn push(&mut self, split: Split, text: &str) -> Result<(), StageError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        self.push_counted(split, text, text.split_whitespace().count() as u64)
    }

    /// Adds a trimmed, non-empty document whose word count is known.
    pub(crate) fn push_counted(
        &mut self,
        split: Split,
        text: &str,
        words: u64,
    ) -> Result<(), StageError> {
        self.writer.push(self.next_id, split, text)?;
        self.next_id += 1;
        let totals = &mut self.totals[split.index()];
        totals.documents += 1;
        totals.words += words;
        totals.bytes += text.len() as u64;
        Ok(())
    }

    pub(crate) fn totals(&self, split: Split) -> SplitTotals {
        self.totals[split.index()]
    }

    fn finish(self, source: &str) -> Result<Stats, StageError> {
        self.writer.finish()?;
        let sum = |f: fn(&SplitTotals) -> u64| self.totals.iter().map(f).sum::<u64>();
        let splits: serde_json::Map<_, _> = Split::ALL
            .iter()
            .map(|&s| {
                let t = self.totals[s.index()];
                let value = json!({"documents": t.documents, "words": t.words, "bytes": t.bytes});
                (s.as_str().to_string(), value)
            })
            .collect();
        let mut stats = Stats::new();
        stats.insert("documents".into(), json!(sum(|t| t.documents)));
        stats.insert("words".into(), json!(sum(|t| t.words)));
        stats.insert("bytes".into(), json!(sum(|t| t.bytes)));
        stats.insert("splits".into(), serde_json::Value::Object(splits));
        stats.insert("source".into(), json!(source));
        Ok(stats)
    }
}
