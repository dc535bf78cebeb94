//! The `tokenizer` stage kind: trains a byte-level BPE tokenizer on the train split
//! of a documents table, or adopts a given `tokenizer.json`, and writes
//! `tokenizer.json` (the `tokenizers` library's format, loadable unchanged by its
//! Python package).
//!
//! Training is deterministic whatever the thread count: pieces of the GPT-2 split are
//! counted per document batch in parallel (sums do not depend on order), sorted, and
//! merged by [`crate::tokenizer_bpe`], whose tie-breaking is total. The library is
//! used only to assemble and serialize the result, whose JSON lists the vocabulary by
//! id, the merges by rank and the added tokens by id.
//!
//! Ids: `<pad>` 0, `<s>` 1, `</s>` 2, `<unk>` 3, byte `b` is `4 + b`, then merged
//! tokens in merge order.

use std::path::Path;

use ausa_artifacts::{document_batches, documents_path, DocumentBatch, Split};
use ausa_dag::{
    ExternalFile, InputSlot, ParamDefault, ParamSpec, ParamType, Params, ProgressUnit, Stage,
    StageContext, StageError, Stats,
};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde_json::json;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::doc_stats::DOCUMENT_PRODUCERS;
use crate::tokenizer_bpe::{self, Trained};
use crate::tokenizer_encode::{byte_level, Encoder, EOS_TOKEN};
use crate::tokenizer_pretok::pieces;
use crate::WriteError;

/// The file this stage writes.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// The special tokens of a trained tokenizer, with ids 0, 1, 2, 3.
pub const SPECIAL_TOKENS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

/// Distinct byte values, each a base token.
const BYTE_ALPHABET: usize = 256;

/// The id of byte 0.
const FIRST_BYTE_ID: u32 = SPECIAL_TOKENS.len() as u32;

static INPUTS: [InputSlot; 1] = [InputSlot {
    name: "documents",
    kinds: DOCUMENT_PRODUCERS,
    doc: "the documents table; its train split trains the tokenizer",
}];

static PARAMS: [ParamSpec; 4] = [
    ParamSpec {
        name: "vocab_size",
        ty: ParamType::Int {
            min: 1,
            max: 1 << 24,
        },
        default: ParamDefault::Int(8192),
        doc: "tokens in the trained vocabulary, at most (256 bytes and 4 special tokens included)",
    },
    ParamSpec {
        name: "min_frequency",
        ty: ParamType::Int {
            min: 1,
            max: i64::MAX,
        },
        default: ParamDefault::Int(2),
        doc: "training stops when no pair of tokens occurs this often",
    },
    ParamSpec {
        name: "model",
        ty: ParamType::Choice(&["bpe"]),
        default: ParamDefault::Str("bpe"),
        doc: "tokenizer model: byte-level BPE",
    },
    ParamSpec {
        name: "path",
        ty: ParamType::Paths {
            extensions: &["json"],
        },
        default: ParamDefault::NoPaths,
        doc: "an existing tokenizer.json to use instead of training (needs a `</s>` token)",
    },
];

/// The `tokenizer` stage kind (input `documents`; writes `tokenizer.json`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenizerStage;

impl Stage for TokenizerStage {
    fn kind(&self) -> &'static str {
        "tokenizer"
    }

    fn salt(&self) -> &'static str {
        "1"
    }

    fn doc(&self) -> &'static str {
        "Trains a byte-level BPE tokenizer (GPT-2 pre-tokenizer split, all 256 bytes as \
         base tokens, special tokens <pad> <s> </s> <unk> = ids 0-3) on the train split, \
         deterministically: the most frequent pair is merged first, ties go to the \
         smallest pair of ids. Writes tokenizer.json in the Hugging Face `tokenizers` \
         format. With `path`, adopts that tokenizer.json unchanged instead of training."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn check(&self, params: &Params) -> Result<(), String> {
        let vocab_size = params.int("vocab_size").map_err(|e| e.to_string())?;
        let least = BYTE_ALPHABET + SPECIAL_TOKENS.len();
        if vocab_size < least as i64 {
            return Err(format!(
                "vocab_size {vocab_size} is smaller than the byte alphabet ({BYTE_ALPHABET}) \
                 plus {} special tokens; use at least {least}",
                SPECIAL_TOKENS.len()
            ));
        }
        Ok(())
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        match ctx.external_files("path") {
            [] => train(ctx),
            [file] => adopt(ctx, file),
            files => Err(format!(
                "`path` names {} files ({}); give exactly one tokenizer.json",
                files.len(),
                files
                    .iter()
                    .map(|f| f.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
            .into()),
        }
    }
}

/// Copies a given tokenizer.json after checking that it loads and has `</s>`.
fn adopt(ctx: &StageContext<'_>, file: &ExternalFile) -> Result<Stats, StageError> {
    let encoder = Encoder::load(&file.path)?;
    let out = ctx.out_dir.join(TOKENIZER_FILE);
    std::fs::copy(&file.path, &out).map_err(|source| WriteError {
        path: out.clone(),
        source,
    })?;
    let json = std::fs::read_to_string(&out).map_err(|source| WriteError { path: out, source })?;
    let present: Vec<&str> = SPECIAL_TOKENS
        .into_iter()
        .filter(|t| json.contains(&format!("\"{t}\"")))
        .collect();
    let mut stats = Stats::new();
    stats.insert("source".into(), json!("file"));
    stats.insert("vocab_size".into(), json!(encoder.vocab_len()));
    stats.insert("eos_id".into(), json!(encoder.eos_id()));
    stats.insert("special_tokens".into(), json!(present));
    stats.insert("byte_level_bpe".into(), json!(encoder.is_fast()));
    Ok(stats)
}

/// Piece counts of the train split.
#[derive(Debug, Default)]
struct WordCounts {
    words: FxHashMap<Vec<u8>, u64>,
    documents: u64,
    bytes: u64,
}

/// Piece counts of one batch, borrowing the text.
#[derive(Debug, Default)]
struct Tally<'a> {
    words: FxHashMap<&'a str, u64>,
    documents: u64,
    bytes: u64,
}

impl<'a> Tally<'a> {
    fn add(mut self, text: &'a str) -> Tally<'a> {
        for piece in pieces(text) {
            *self.words.entry(piece).or_default() += 1;
        }
        self.documents += 1;
        self.bytes += text.len() as u64;
        self
    }

    fn merge(mut self, mut other: Tally<'a>) -> Tally<'a> {
        if self.words.len() < other.words.len() {
            std::mem::swap(&mut self, &mut other);
        }
        for (word, count) in other.words {
            *self.words.entry(word).or_default() += count;
        }
        self.documents += other.documents;
        self.bytes += other.bytes;
        self
    }
}

impl WordCounts {
    fn add(&mut self, tally: Tally<'_>) {
        for (word, count) in tally.words {
            match self.words.get_mut(word.as_bytes()) {
                Some(total) => *total += count,
                None => {
                    self.words.insert(word.as_bytes().to_vec(), count);
                }
            }
        }
        self.documents += tally.documents;
        self.bytes += tally.bytes;
    }

    /// `(bytes, count)` sorted by bytes: the order training sees.
    fn sorted(self) -> Vec<(Vec<u8>, u64)> {
        let mut words: Vec<(Vec<u8>, u64)> = self.words.into_iter().collect();
        words.sort_unstable();
        words
    }
}

fn tally_batch(batch: &DocumentBatch) -> Tally<'_> {
    (0..batch.len())
        .into_par_iter()
        .map(|i| batch.get(i))
        .filter(|doc| doc.split == Split::Train)
        .fold(Tally::default, |tally, doc| tally.add(doc.text))
        .reduce(Tally::default, Tally::merge)
}

/// Counts the pieces of every train document; reading the next batch overlaps with
/// counting the current one.
fn count_words(ctx: &StageContext<'_>, path: &Path) -> Result<WordCounts, StageError> {
    let mut batches = document_batches(path)?;
    ctx.progress
        .set_total(batches.num_rows(), ProgressUnit::Items("docs"));
    let mut counts = WordCounts::default();
    let mut next = batches.next().transpose()?;
    while let Some(batch) = next.take() {
        let (read, tally) = rayon::join(|| batches.next().transpose(), || tally_batch(&batch));
        counts.add(tally);
        ctx.progress.advance(batch.len() as u64);
        next = read?;
    }
    Ok(counts)
}

fn train(ctx: &StageContext<'_>) -> Result<Stats, StageError> {
    let vocab_size = usize::try_from(ctx.params.int("vocab_size")?)?;
    let min_frequency = u64::try_from(ctx.params.int("min_frequency")?)?;
    let path = documents_path(&ctx.input("documents")?.dir);
    let counts = count_words(ctx, &path)?;
    if counts.documents == 0 {
        return Err(format!(
            "`{}` has no train documents; the tokenizer is trained on the train split",
            path.display()
        )
        .into());
    }
    let (documents, bytes) = (counts.documents, counts.bytes);
    let words = counts.sorted();
    let max_tokens = vocab_size.saturating_sub(SPECIAL_TOKENS.len());
    ctx.progress.set_total(
        max_tokens.saturating_sub(BYTE_ALPHABET) as u64,
        ProgressUnit::Items("merges"),
    );
    let trained = tokenizer_bpe::train(&words, FIRST_BYTE_ID, max_tokens, min_frequency, |_| {
        ctx.progress.advance(1)
    });
    let tokenizer = assemble(&trained)?;
    write_tokenizer(ctx, &tokenizer)?;
    let mut stats = Stats::new();
    stats.insert("source".into(), json!("trained"));
    stats.insert("vocab_size".into(), json!(tokenizer.get_vocab_size(true)));
    stats.insert("merges".into(), json!(trained.merges.len()));
    stats.insert("train_documents".into(), json!(documents));
    stats.insert("train_bytes".into(), json!(bytes));
    stats.insert("distinct_pieces".into(), json!(words.len()));
    stats.insert("eos_id".into(), json!(tokenizer.token_to_id(EOS_TOKEN)));
    Ok(stats)
}

/// The library tokenizer for a trained vocabulary and merges.
fn assemble(trained: &Trained) -> Result<Tokenizer, StageError> {
    let strings: Vec<String> = trained.tokens.iter().map(|t| byte_level(t)).collect();
    let mut vocab: Vocab = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), id as u32))
        .collect();
    for (i, token) in strings.iter().enumerate() {
        // Special tokens mix character classes that the pre-tokenizer always
        // splits apart, so no learned token can spell one; checked all the same.
        if vocab
            .insert(token.clone(), FIRST_BYTE_ID + i as u32)
            .is_some()
        {
            return Err(format!("learned token `{token}` collides with a special token").into());
        }
    }
    let string = |id: u32| strings[(id - FIRST_BYTE_ID) as usize].clone();
    let merges: Merges = trained
        .merges
        .iter()
        .map(|&(a, b)| (string(a), string(b)))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(SPECIAL_TOKENS[3].to_string())
        .build()?;
    let byte_level = ByteLevel::new(false, true, true);
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_pre_tokenizer(Some(byte_level))
        .with_decoder(Some(byte_level))
        .with_post_processor(Some(byte_level));
    let special: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}

fn write_tokenizer(ctx: &StageContext<'_>, tokenizer: &Tokenizer) -> Result<(), StageError> {
    let json = tokenizer.to_string(true)?;
    let path = ctx.out_dir.join(TOKENIZER_FILE);
    std::fs::write(&path, json).map_err(|source| WriteError { path, source })?;
    Ok(())
}

/// A trained tokenizer.json for `texts` (all treated as train documents).
#[cfg(test)]
pub(crate) fn train_on_texts(texts: &[&str], vocab_size: usize, min_frequency: u64) -> String {
    let mut counts = WordCounts::default();
    for text in texts {
        counts.add(Tally::default().add(text));
    }
    let max_tokens = vocab_size - SPECIAL_TOKENS.len();
    let trained = tokenizer_bpe::train(
        &counts.sorted(),
        FIRST_BYTE_ID,
        max_tokens,
        min_frequency,
        |_| {},
    );
    assemble(&trained).unwrap().to_string(true).unwrap()
}
