//! The `tokenize` stage kind: encodes every document of a documents table with a
//! tokenizer and writes one token file per split (`tokens-<split>.arrow`, the format
//! of [`ausa_artifacts::tokens`]).
//!
//! Each document is encoded without special tokens and followed by the `</s>` id, so
//! a split's flat id buffer is the language-modelling stream. Documents are encoded
//! in parallel in chunks; the results are written in input order, so the files do not
//! depend on the thread count. Splits without documents get no file.

use std::ops::Range;
use std::path::Path;

use ausa_artifacts::{
    document_batches, documents_path, tokenizer_path, tokens_file_name, tokens_path, DocumentBatch,
    IdWidth, Split, TokensWriter,
};
use ausa_dag::{InputSlot, ParamSpec, ProgressUnit, Stage, StageContext, StageError, Stats};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::doc_stats::DOCUMENT_PRODUCERS;
use crate::tokenizer_encode::{EncodeCaches, Encoder, WordCache};

/// Documents per parallel task: about 60 KB of text at typical lengths, small enough
/// to balance, large enough that scheduling costs nothing.
const CHUNK_DOCS: usize = 64;

static INPUTS: [InputSlot; 2] = [
    InputSlot {
        name: "documents",
        kinds: DOCUMENT_PRODUCERS,
        doc: "the documents table to encode",
    },
    InputSlot {
        name: "tokenizer",
        kinds: &["tokenizer"],
        doc: "the tokenizer (tokenizer.json) to encode with",
    },
];

/// The `tokenize` stage kind (inputs `documents` and `tokenizer`; writes
/// `tokens-<split>.arrow`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenizeStage;

impl Stage for TokenizeStage {
    fn kind(&self) -> &'static str {
        "tokenize"
    }

    fn salt(&self) -> &'static str {
        "1"
    }

    fn doc(&self) -> &'static str {
        "Encodes every document with the tokenizer (no special tokens added; special-token \
         strings in the text stay plain text) and appends the `</s>` id after each. Writes \
         tokens-train.arrow, tokens-validation.arrow and tokens-test.arrow (splits with \
         documents only): Arrow IPC files, one row per document (doc_id, token ids as \
         LargeList<UInt16> or <UInt32>), read zero-copy through a memory map."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &[]
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let encoder = Encoder::load(&tokenizer_path(&ctx.input("tokenizer")?.dir))?;
        let path = documents_path(&ctx.input("documents")?.dir);
        let mut sinks = SplitSinks::new(ctx.out_dir, encoder.id_space());
        encode_all(ctx, &encoder, &path, &mut sinks)?;
        if sinks.documents() == 0 {
            return Err(format!("`{}` has no documents to tokenize", path.display()).into());
        }
        sinks.finish(&encoder)
    }
}

/// Streams the documents; reading the next batch overlaps with encoding this one.
fn encode_all(
    ctx: &StageContext<'_>,
    encoder: &Encoder,
    path: &Path,
    sinks: &mut SplitSinks<'_>,
) -> Result<(), StageError> {
    let mut batches = document_batches(path)?;
    ctx.progress
        .set_total(batches.num_rows(), ProgressUnit::Items("docs"));
    let caches = EncodeCaches::new();
    let mut next = batches.next().transpose()?;
    while let Some(batch) = next.take() {
        let (read, encoded) = rayon::join(
            || batches.next().transpose(),
            || encode_batch(encoder, &caches, &batch),
        );
        sinks.push(&batch, &encoded?)?;
        ctx.progress.advance(batch.len() as u64);
        next = read?;
    }
    Ok(())
}

/// The ids of a run of documents, each followed by `</s>`.
struct Encoded {
    docs: Range<usize>,
    ids: Vec<u32>,
    /// End of each document's ids (its `</s>` included) in `ids`.
    ends: Vec<usize>,
    /// Whitespace-separated words of each document.
    words: Vec<u64>,
}

fn encode_batch(
    encoder: &Encoder,
    caches: &EncodeCaches,
    batch: &DocumentBatch,
) -> Result<Vec<Encoded>, StageError> {
    let n = batch.len();
    let chunks: Vec<Range<usize>> = (0..n)
        .step_by(CHUNK_DOCS)
        .map(|start| start..(start + CHUNK_DOCS).min(n))
        .collect();
    chunks
        .into_par_iter()
        .map(|docs| {
            if encoder.is_fast() {
                caches.with(|cache| encode_chunk(encoder, cache, batch, docs))
            } else {
                // The library may run rayon tasks inside `encode`; holding a cache
                // lock across them could deadlock a worker that steals this task.
                encode_chunk(encoder, &mut WordCache::default(), batch, docs)
            }
        })
        .collect()
}

fn encode_chunk(
    encoder: &Encoder,
    cache: &mut WordCache,
    batch: &DocumentBatch,
    docs: Range<usize>,
) -> Result<Encoded, StageError> {
    let mut encoded = Encoded {
        docs: docs.clone(),
        ids: Vec::new(),
        ends: Vec::with_capacity(docs.len()),
        words: Vec::with_capacity(docs.len()),
    };
    for i in docs {
        let text = batch.get(i).text;
        encoder.encode(text, cache, &mut encoded.ids)?;
        encoded.ids.push(encoder.eos_id());
        encoded.ends.push(encoded.ids.len());
        encoded.words.push(text.split_whitespace().count() as u64);
    }
    Ok(encoded)
}

/// One split's writer and totals.
struct SplitSink {
    writer: TokensWriter,
    words: u64,
}

/// The writers of the splits seen so far, created on their first document.
struct SplitSinks<'a> {
    out_dir: &'a Path,
    id_space: u32,
    sinks: [Option<SplitSink>; 3],
}

impl<'a> SplitSinks<'a> {
    fn new(out_dir: &'a Path, id_space: u32) -> SplitSinks<'a> {
        SplitSinks {
            out_dir,
            id_space,
            sinks: Default::default(),
        }
    }

    fn documents(&self) -> u64 {
        self.sinks
            .iter()
            .flatten()
            .map(|s| s.writer.documents())
            .sum()
    }

    /// Appends the encoded documents of `batch`, in order.
    fn push(&mut self, batch: &DocumentBatch, encoded: &[Encoded]) -> Result<(), StageError> {
        for chunk in encoded {
            let mut start = 0;
            for (k, i) in chunk.docs.clone().enumerate() {
                let doc = batch.get(i);
                let end = chunk.ends[k];
                let sink = self.sink(doc.split)?;
                sink.writer
                    .push_document(doc.doc_id, &chunk.ids[start..end])?;
                sink.words += chunk.words[k];
                start = end;
            }
        }
        Ok(())
    }

    fn sink(&mut self, split: Split) -> Result<&mut SplitSink, StageError> {
        let slot = &mut self.sinks[split.index()];
        if slot.is_none() {
            let writer = TokensWriter::create(tokens_path(self.out_dir, split), self.id_space)?;
            *slot = Some(SplitSink { writer, words: 0 });
        }
        slot.as_mut()
            .ok_or_else(|| "split writer vanished (bug)".into())
    }

    /// Writes every file and returns the statistics.
    fn finish(self, encoder: &Encoder) -> Result<Stats, StageError> {
        let mut splits = serde_json::Map::new();
        let (mut documents, mut tokens, mut words) = (0, 0, 0);
        for (split, sink) in Split::ALL.into_iter().zip(self.sinks) {
            let Some(sink) = sink else { continue };
            let summary = sink.writer.finish()?;
            documents += summary.documents;
            tokens += summary.tokens;
            words += sink.words;
            let value = json!({
                "file": tokens_file_name(split),
                "documents": summary.documents,
                "tokens": summary.tokens,
                "words": sink.words,
                "tokens_per_word": tokens_per_word(summary.tokens, summary.documents, sink.words),
            });
            splits.insert(split.as_str().to_string(), value);
        }
        let mut stats = Stats::new();
        stats.insert("documents".into(), json!(documents));
        stats.insert("tokens".into(), json!(tokens));
        stats.insert("words".into(), json!(words));
        stats.insert(
            "tokens_per_word".into(),
            tokens_per_word(tokens, documents, words),
        );
        stats.insert("splits".into(), Value::Object(splits));
        stats.insert("vocab_size".into(), json!(self.id_space));
        stats.insert(
            "id_width".into(),
            json!(IdWidth::for_vocab(self.id_space).bits()),
        );
        stats.insert("eos_id".into(), json!(encoder.eos_id()));
        let path = if encoder.is_fast() {
            "byte-level BPE fast path"
        } else {
            "tokenizers library"
        };
        stats.insert("encoder".into(), json!(path));
        Ok(stats)
    }
}

/// Text tokens (the `</s>` after each document excluded) per whitespace word, to
/// four decimals; null without words.
fn tokens_per_word(tokens: u64, documents: u64, words: u64) -> Value {
    if words == 0 {
        return Value::Null;
    }
    let ratio = tokens.saturating_sub(documents) as f64 / words as f64;
    json!((ratio * 1e4).round() / 1e4)
}
