//! The `corpus` stage kind: builds `documents.parquet` from a synthetic generator or
//! from local text, JSONL or Parquet files.

use ausa_artifacts::{Split, DOCUMENTS_FILE};
use ausa_dag::{InputSlot, ProgressUnit, StageContext, StageError, Stats, TypedStage};
use rayon::prelude::*;
use serde_json::json;

use crate::local::{self, LocalOptions, EXTENSIONS};
use crate::sink::DocumentSink;
use crate::synthetic::{Generator, SyntheticConfig, SyntheticDoc};
use crate::txt::TextFormat;

/// Documents generated per parallel chunk: large enough to keep every core busy,
/// small enough that a chunk's text (about 10 MB at default lengths) stays modest.
const SYNTHETIC_CHUNK: usize = 4096;

ausa_dag::stage_params! {
    /// Parameters of the `corpus` stage. Each applies to one source only (the other
    /// source's parameters stay out of the key).
    pub struct CorpusParams {
        source: String = choice(&["synthetic", "local"], "synthetic",
            "Where documents come from: the built-in generator or local files"),
        docs: u64 = int(1, 100_000_000, 2000, "synthetic: number of documents")
            .only_if("source", "synthetic"),
        seed: u64 = int(0, i64::MAX, 0, "synthetic: random seed (documents and splits)")
            .only_if("source", "synthetic"),
        vocab_size: usize = int(10, 1_000_000, 5000, "synthetic: number of distinct words")
            .only_if("source", "synthetic"),
        zipf_exponent: f64 = float(0.5, 3.0, 1.1,
            "synthetic: word frequency of rank r is proportional to 1 / r^zipf_exponent")
            .only_if("source", "synthetic"),
        min_words: u64 = int(1, 10_000_000, 20, "synthetic: fewest words in a document")
            .only_if("source", "synthetic"),
        max_words: u64 = int(1, 10_000_000, 2000,
            "synthetic: most words in a document (lengths are log-uniform in between)")
            .only_if("source", "synthetic"),
        validation_fraction: f64 = float(0.0, 0.5, 0.05,
            "synthetic: expected fraction of documents in the validation split")
            .only_if("source", "synthetic"),
        test_fraction: f64 = float(0.0, 0.5, 0.05,
            "synthetic: expected fraction of documents in the test split")
            .only_if("source", "synthetic"),
        train: Vec<String> = paths(EXTENSIONS,
            "local: files, directories or globs of the train split")
            .only_if("source", "local"),
        validation: Vec<String> = paths(EXTENSIONS,
            "local: files, directories or globs of the validation split")
            .only_if("source", "local"),
        test: Vec<String> = paths(EXTENSIONS,
            "local: files, directories or globs of the test split")
            .only_if("source", "local"),
        text_format: TextFormat = choice(TextFormat::NAMES, "auto",
            "local .txt/.tokens files (CRLF line endings read as LF): documents are \
             blank-line separated paragraphs, WikiText articles, or lines; auto = wikitext \
             if a ` = Title = ` line exists, else paragraphs")
            .only_if("source", "local"),
        jsonl_field: String = string("text", "local .jsonl files: the string field holding the text")
            .only_if("source", "local"),
        parquet_column: String = string("text",
            "local .parquet files: the Utf8 or LargeUtf8 column holding the text")
            .only_if("source", "local"),
        on_invalid_utf8: String = choice(&["error", "replace"], "error",
            "local .txt/.tokens/.jsonl files: fail on invalid UTF-8, or replace it with U+FFFD")
            .only_if("source", "local"),
    }
}

impl CorpusParams {
    fn is_synthetic(&self) -> bool {
        self.source == "synthetic"
    }

    fn synthetic(&self) -> SyntheticConfig {
        SyntheticConfig {
            docs: self.docs,
            seed: self.seed,
            vocab_size: self.vocab_size,
            zipf_exponent: self.zipf_exponent,
            min_words: self.min_words,
            max_words: self.max_words,
            validation_fraction: self.validation_fraction,
            test_fraction: self.test_fraction,
        }
    }

    fn local(&self) -> LocalOptions<'_> {
        LocalOptions {
            text_format: self.text_format,
            jsonl_field: &self.jsonl_field,
            parquet_column: &self.parquet_column,
            replace_invalid_utf8: self.on_invalid_utf8 == "replace",
        }
    }

    fn check_synthetic(&self) -> Result<(), String> {
        let (min, max) = (self.min_words, self.max_words);
        if min > max {
            return Err(format!(
                "min_words ({min}) must not exceed max_words ({max})"
            ));
        }
        let (val, test) = (self.validation_fraction, self.test_fraction);
        if val + test >= 1.0 {
            return Err(format!(
                "validation_fraction ({val}) + test_fraction ({test}) must be below 1, \
                 or no documents are left for training"
            ));
        }
        Ok(())
    }

    fn check_local(&self) -> Result<(), String> {
        if [&self.train, &self.validation, &self.test]
            .iter()
            .any(|paths| !paths.is_empty())
        {
            return Ok(());
        }
        Err(
            "source = \"local\" needs files in at least one of `train`, `validation`, `test`"
                .to_string(),
        )
    }
}

/// The `corpus` stage kind (no inputs; writes `documents.parquet`).
#[derive(Debug, Default, Clone, Copy)]
pub struct CorpusStage;

impl TypedStage for CorpusStage {
    type Params = CorpusParams;

    fn kind(&self) -> &'static str {
        "corpus"
    }

    fn salt(&self) -> &'static str {
        // 2: CRLF line endings of local text files are read as LF.
        "2"
    }

    fn doc(&self) -> &'static str {
        "Builds the documents table (documents.parquet: doc_id, split, text) from a \
         deterministic synthetic English-like generator with a Zipfian vocabulary, or from \
         local .txt or .tokens (paragraphs, WikiText articles or lines; CRLF read as LF), \
         .jsonl or .parquet files given per split. Rows are train, then validation, then \
         test documents, each in input order; doc_id is the row index. Documents are \
         trimmed and empty ones dropped."
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &[]
    }

    fn check(&self, params: &CorpusParams) -> Result<(), String> {
        if params.is_synthetic() {
            params.check_synthetic()
        } else {
            params.check_local()
        }
    }

    fn run(&self, params: &CorpusParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let mut sink = DocumentSink::create(&ctx.out_dir.join(DOCUMENTS_FILE))?;
        if params.is_synthetic() {
            let generator = Generator::new(params.synthetic());
            write_synthetic(&generator, &mut sink, ctx)?;
        } else {
            local::write_local(&params.local(), &mut sink, ctx)?;
        }
        let mut stats = sink.finish()?;
        stats.insert("source".into(), json!(params.source));
        Ok(stats)
    }
}

/// Generates in parallel chunks and writes each chunk in index order, so memory stays
/// bounded and the bytes do not depend on the thread count. Writing (zstd) of one
/// chunk overlaps with generating the next.
pub(crate) fn write_synthetic(
    generator: &Generator,
    sink: &mut DocumentSink,
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
    sink: &mut DocumentSink,
    docs: &[(Split, SyntheticDoc)],
    ctx: &StageContext<'_>,
) -> Result<(), StageError> {
    for (split, doc) in docs {
        sink.push_counted(*split, &doc.text, doc.words)?;
    }
    ctx.progress.advance(docs.len() as u64);
    Ok(())
}
