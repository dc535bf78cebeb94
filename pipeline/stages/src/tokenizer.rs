//! The `tokenizer` stage kind: trains a byte-level BPE tokenizer on the train split
//! of a documents table, or adopts a given `tokenizer.json`, and writes
//! `tokenizer.json` (the `tokenizers` library's format, loadable unchanged by its
//! Python package).
//!
//! Training is deterministic whatever the thread count: pieces of the GPT-2 split are
//! counted per document batch in parallel (sums do not depend on order), sorted, and
//! merged by `crate::tokenizer_bpe`, whose tie-breaking is total. The library is
//! used only to assemble and serialize the result, whose JSON lists the vocabulary by
//! id, the merges by rank and the added tokens by id.
//!
//! Ids: `<pad>` 0, `<s>` 1, `</s>` 2, `<unk>` 3, byte `b` is `4 + b`, then merged
//! tokens in merge order.
//!
//! With `unknown_markers` (WikiText's `<unk>`), each marker in the text is the `<unk>`
//! token: training counts only the text between markers, and `tokenizer.json` makes
//! `<unk>` a non-special added token (plus `Replace` normalizers for markers spelled
//! otherwise), see `crate::tokenizer_markers`. The Python `tokenizers` call that
//! reproduces the `tokenize` stage's ids is
//! `tok.encode_special_tokens = True; tok.encode(text, add_special_tokens=False).ids`
//! (then the `</s>` id): `<pad>`, `<s>`, `</s>` in text stay plain text, `<unk>`
//! (when it is a marker) becomes id 3.

use std::path::Path;

use ausa_artifacts::{document_batches, documents_path, tokenizer_path, DocumentBatch, Split};
use ausa_dag::{
    ExternalFile, InputSlot, ProgressUnit, StageContext, StageError, Stats, TypedStage,
};
use rayon::prelude::*;
use rustc_hash::FxHashMap;
use serde_json::json;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Replace, Sequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

use crate::doc_stats::DOCUMENT_PRODUCERS;
use crate::sink::WriteError;
use crate::tokenizer_bpe::{self, Trained};
use crate::tokenizer_encode::{byte_level, Encoder, EOS_TOKEN};
use crate::tokenizer_markers::Markers;
use crate::tokenizer_pretok::pieces;

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

ausa_dag::stage_params! {
    /// Parameters of the `tokenizer` stage.
    pub struct TokenizerParams {
        vocab_size: usize = int(1, 1 << 24, 8192,
            "tokens in the trained vocabulary, at most (256 bytes and 4 special tokens included)"),
        min_frequency: u64 = int(1, i64::MAX, 2,
            "training stops when no pair of tokens occurs this often"),
        model: String = choice(&["bpe"], "bpe", "tokenizer model: byte-level BPE"),
        path: Vec<String> = paths(&["json"],
            "an existing tokenizer.json to use instead of training (needs a `</s>` token)"),
        unknown_markers: Vec<String> = strings(
            "strings in the text that stand for unknown words (WikiText: [\"<unk>\"]): each \
             occurrence is encoded as the <unk> token (id 3); empty = none"),
    }
}

impl TokenizerParams {
    /// The markers as the encoder applies them, if any.
    fn markers(&self) -> Option<Markers> {
        (!self.unknown_markers.is_empty())
            .then(|| Markers::new(&self.unknown_markers, UNK_TOKEN, UNK_ID))
    }
}

/// The unknown-word token and its id.
const UNK_TOKEN: &str = SPECIAL_TOKENS[3];
const UNK_ID: u32 = 3;

/// The `tokenizer` stage kind (input `documents`; writes `tokenizer.json`).
#[derive(Debug, Default, Clone, Copy)]
pub struct TokenizerStage;

impl TypedStage for TokenizerStage {
    type Params = TokenizerParams;

    fn kind(&self) -> &'static str {
        "tokenizer"
    }

    fn salt(&self) -> &'static str {
        // 2: unknown-word markers.
        "2"
    }

    fn doc(&self) -> &'static str {
        "Trains a byte-level BPE tokenizer (GPT-2 pre-tokenizer split, all 256 bytes as \
         base tokens, special tokens <pad> <s> </s> <unk> = ids 0-3) on the train split, \
         deterministically: the most frequent pair is merged first, ties go to the \
         smallest pair of ids. Writes tokenizer.json in the Hugging Face `tokenizers` \
         format. With `path`, adopts that tokenizer.json unchanged instead of training. \
         With unknown_markers (WikiText: [\"<unk>\"]), each marker in text is the <unk> \
         token. The Python `tokenizers` call giving the `tokenize` stage's ids: \
         tok.encode_special_tokens = True; tok.encode(text, add_special_tokens=False).ids \
         plus the </s> id (<pad> <s> </s> in text stay plain text)."
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn check(&self, params: &TokenizerParams) -> Result<(), String> {
        let vocab_size = params.vocab_size;
        let least = BYTE_ALPHABET + SPECIAL_TOKENS.len();
        if !params.unknown_markers.is_empty() && !params.path.is_empty() {
            return Err(
                "unknown_markers applies to trained tokenizers; an adopted tokenizer.json \
                 (`path`) is used unchanged"
                    .into(),
            );
        }
        if params.unknown_markers.iter().any(String::is_empty) {
            return Err("unknown_markers must not contain an empty string".into());
        }
        if vocab_size < least {
            return Err(format!(
                "vocab_size {vocab_size} is smaller than the byte alphabet ({BYTE_ALPHABET}) \
                 plus {} special tokens; use at least {least}",
                SPECIAL_TOKENS.len()
            ));
        }
        Ok(())
    }

    fn run(&self, params: &TokenizerParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        match ctx.external_files("path") {
            [] => train(params, ctx),
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
    let out = tokenizer_path(ctx.out_dir);
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

/// Piece counts of one batch, borrowing the text (pieces of text cut at markers
/// are owned).
#[derive(Debug, Default)]
struct Tally<'a> {
    words: FxHashMap<&'a str, u64>,
    owned: FxHashMap<String, u64>,
    documents: u64,
    bytes: u64,
}

impl<'a> Tally<'a> {
    fn add(mut self, text: &'a str, markers: Option<&Markers>) -> Tally<'a> {
        self.documents += 1;
        self.bytes += text.len() as u64;
        match markers {
            None => self.add_pieces(text),
            Some(markers) if markers.replaced().is_empty() => {
                // Only the text between markers is learned from.
                for segment in text.split(markers.token()) {
                    self.add_pieces(segment);
                }
            }
            Some(markers) => {
                // Pieces of replaced text are new strings, counted apart (they borrow
                // nothing).
                let mut owned: Vec<String> = Vec::new();
                let _ = markers.split::<()>(
                    text,
                    |segment| {
                        owned.push(segment.to_string());
                        Ok(())
                    },
                    || Ok(()),
                );
                for segment in owned {
                    for piece in pieces(&segment) {
                        *self.owned.entry(piece.to_string()).or_default() += 1;
                    }
                }
            }
        }
        self
    }

    fn add_pieces(&mut self, text: &'a str) {
        for piece in pieces(text) {
            *self.words.entry(piece).or_default() += 1;
        }
    }

    fn merge(mut self, mut other: Tally<'a>) -> Tally<'a> {
        if self.words.len() < other.words.len() {
            std::mem::swap(&mut self, &mut other);
        }
        for (word, count) in other.words {
            *self.words.entry(word).or_default() += count;
        }
        for (word, count) in other.owned {
            *self.owned.entry(word).or_default() += count;
        }
        self.documents += other.documents;
        self.bytes += other.bytes;
        self
    }
}

impl WordCounts {
    fn add(&mut self, tally: Tally<'_>) {
        let owned = tally.owned.iter().map(|(w, c)| (w.as_str(), *c));
        for (word, count) in tally.words.into_iter().chain(owned) {
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

fn tally_batch<'a>(batch: &'a DocumentBatch, markers: Option<&Markers>) -> Tally<'a> {
    (0..batch.len())
        .into_par_iter()
        .map(|i| batch.get(i))
        .filter(|doc| doc.split == Split::Train)
        .fold(Tally::default, |tally, doc| tally.add(doc.text, markers))
        .reduce(Tally::default, Tally::merge)
}

/// Counts the pieces of every train document; reading the next batch overlaps with
/// counting the current one.
fn count_words(
    ctx: &StageContext<'_>,
    path: &Path,
    markers: Option<&Markers>,
) -> Result<WordCounts, StageError> {
    let mut batches = document_batches(path)?;
    ctx.progress
        .set_total(batches.num_rows(), ProgressUnit::Items("docs"));
    let mut counts = WordCounts::default();
    let mut next = batches.next().transpose()?;
    while let Some(batch) = next.take() {
        let (read, tally) = rayon::join(
            || batches.next().transpose(),
            || tally_batch(&batch, markers),
        );
        counts.add(tally);
        ctx.progress.advance(batch.len() as u64);
        next = read?;
    }
    Ok(counts)
}

fn train(params: &TokenizerParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
    let (vocab_size, min_frequency) = (params.vocab_size, params.min_frequency);
    let markers = params.markers();
    let path = documents_path(&ctx.input("documents")?.dir);
    let counts = count_words(ctx, &path, markers.as_ref())?;
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
    let tokenizer = assemble(&trained, markers.as_ref())?;
    write_tokenizer(ctx, &tokenizer)?;
    let mut stats = Stats::new();
    stats.insert("source".into(), json!("trained"));
    stats.insert("vocab_size".into(), json!(tokenizer.get_vocab_size(true)));
    stats.insert("merges".into(), json!(trained.merges.len()));
    stats.insert("train_documents".into(), json!(documents));
    stats.insert("train_bytes".into(), json!(bytes));
    stats.insert("distinct_pieces".into(), json!(words.len()));
    stats.insert("eos_id".into(), json!(tokenizer.token_to_id(EOS_TOKEN)));
    stats.insert("unknown_markers".into(), json!(params.unknown_markers));
    stats.insert("python_encode".into(), json!(PYTHON_ENCODE));
    Ok(stats)
}

/// The Python `tokenizers` call that gives the `tokenize` stage's ids for `text`
/// (reported in the statistics; the interop check runs exactly this).
pub const PYTHON_ENCODE: &str = "tok = tokenizers.Tokenizer.from_file(\"tokenizer.json\"); \
     tok.encode_special_tokens = True; \
     ids = tok.encode(text, add_special_tokens=False).ids + [tok.token_to_id(\"</s>\")]";

/// The library tokenizer for a trained vocabulary and merges.
fn assemble(trained: &Trained, markers: Option<&Markers>) -> Result<Tokenizer, StageError> {
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
    let (special, plain): (Vec<&str>, Vec<&str>) = SPECIAL_TOKENS
        .iter()
        .partition(|t| markers.is_none() || **t != UNK_TOKEN);
    let special: Vec<AddedToken> = special.iter().map(|t| AddedToken::from(*t, true)).collect();
    tokenizer.add_special_tokens(&special);
    if let Some(markers) = markers {
        // Not special: matched in text even in `encode_special_tokens` mode.
        let unk: Vec<AddedToken> = plain.iter().map(|t| AddedToken::from(*t, false)).collect();
        tokenizer.add_tokens(&unk);
        let replace: Vec<NormalizerWrapper> = markers
            .replaced()
            .iter()
            .map(|m| Replace::new(m.as_str(), UNK_TOKEN).map(NormalizerWrapper::from))
            .collect::<Result<_, _>>()?;
        if !replace.is_empty() {
            tokenizer.with_normalizer(Some(Sequence::new(replace)));
        }
    }
    Ok(tokenizer)
}

fn write_tokenizer(ctx: &StageContext<'_>, tokenizer: &Tokenizer) -> Result<(), StageError> {
    let json = tokenizer.to_string(true)?;
    let path = tokenizer_path(ctx.out_dir);
    std::fs::write(&path, json).map_err(|source| WriteError { path, source })?;
    Ok(())
}

/// A trained tokenizer.json for `texts` (all treated as train documents).
#[cfg(test)]
pub(crate) fn train_on_texts(
    texts: &[&str],
    vocab_size: usize,
    min_frequency: u64,
    unknown_markers: &[&str],
) -> String {
    let markers = (!unknown_markers.is_empty()).then(|| {
        let markers: Vec<String> = unknown_markers.iter().map(|m| m.to_string()).collect();
        Markers::new(&markers, UNK_TOKEN, UNK_ID)
    });
    let mut counts = WordCounts::default();
    for text in texts {
        counts.add(Tally::default().add(text, markers.as_ref()));
    }
    let max_tokens = vocab_size - SPECIAL_TOKENS.len();
    let trained = tokenizer_bpe::train(
        &counts.sorted(),
        FIRST_BYTE_ID,
        max_tokens,
        min_frequency,
        |_| {},
    );
    assemble(&trained, markers.as_ref())
        .unwrap()
        .to_string(true)
        .unwrap()
}
