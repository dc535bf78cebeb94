//! Encoding text with a `tokenizer.json`.
//!
//! Every file is loaded with the `tokenizers` crate (which validates it and defines
//! the expected output). When the file is a plain byte-level BPE tokenizer (the
//! kind the `tokenizer` stage trains: no normalizer, a `ByteLevel` pre-tokenizer
//! without prefix space, a BPE model without dropout or affixes, only special added
//! tokens), encoding uses a specialised path instead: the hand-written GPT-2 split
//! of [`crate::tokenizer_pretok`], then the library's merge algorithm over byte ids,
//! with a per-thread cache of pieces. It gives the same ids as the library (tests
//! compare them on adversarial text) several times faster, because it skips what
//! ids do not need: offsets, token strings, alignment tracking. Other tokenizers go
//! through the library.
//!
//! Both paths encode text without adding special tokens, and treat special-token
//! strings inside the text (`"</s>"`) as plain text, never as the special token
//! (the library's `encode_special_tokens` mode): documents cannot inject control
//! tokens. Non-special added tokens are matched in text, as the library does: that
//! is how unknown-word markers become `<unk>` ([`crate::tokenizer_markers`]; the fast
//! path handles one such token with `Replace` normalizers in front of it).
//! Truncation and padding settings in the file are ignored.
//!
//! The Python call that gives the same ids (the interop check uses it):
//!
//! ```python
//! tok = tokenizers.Tokenizer.from_file("tokenizer.json")
//! tok.encode_special_tokens = True
//! ids = tok.encode(text, add_special_tokens=False).ids + [tok.token_to_id("</s>")]
//! ```

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Mutex, PoisonError};

use ausa_dag::StageError;
use rustc_hash::FxHashMap;
use serde_json::Value;
use tokenizers::Tokenizer;

use crate::tokenizer_markers::Markers;
use crate::tokenizer_pretok::{byte_chars, byte_level_string, pieces};

/// The token appended after every document.
pub(crate) const EOS_TOKEN: &str = "</s>";

/// Cached pieces per thread before the cache is emptied (bounds memory on corpora
/// with a huge vocabulary of distinct words).
const MAX_CACHED_PIECES: usize = 1 << 19;

/// A pair of adjacent token ids.
type Pair = (u32, u32);

/// A loaded tokenizer ready to encode documents.
pub(crate) struct Encoder {
    fast: Option<FastBpe>,
    library: Tokenizer,
    eos_id: u32,
    id_space: u32,
}

/// Piece-to-ids cache of the fast path.
#[derive(Default)]
pub(crate) struct WordCache {
    map: FxHashMap<Box<[u8]>, Box<[u32]>>,
}

/// One [`WordCache`] per rayon worker thread, kept for a whole stage run.
pub(crate) struct EncodeCaches {
    caches: Vec<Mutex<WordCache>>,
}

impl EncodeCaches {
    /// One cache per thread of the current rayon pool.
    pub(crate) fn new() -> EncodeCaches {
        let threads = rayon::current_num_threads().max(1);
        EncodeCaches {
            caches: (0..threads).map(|_| Mutex::default()).collect(),
        }
    }

    /// Runs `f` with the calling thread's cache (uncontended on pool threads).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut WordCache) -> R) -> R {
        let i = rayon::current_thread_index().unwrap_or(0) % self.caches.len();
        let mut cache = self.caches[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut cache)
    }
}

impl Encoder {
    /// Loads the `tokenizer.json` at `path`.
    pub(crate) fn load(path: &Path) -> Result<Encoder, StageError> {
        let json = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read tokenizer `{}`: {e}", path.display()))?;
        Encoder::from_json(&json).map_err(|e| format!("tokenizer `{}`: {e}", path.display()).into())
    }

    /// Loads a `tokenizer.json` text; the error does not name a file.
    pub(crate) fn from_json(json: &str) -> Result<Encoder, String> {
        let mut library = Tokenizer::from_str(json).map_err(|e| {
            format!(
                "the `tokenizers` library cannot load it ({e}); give a tokenizer.json it writes"
            )
        })?;
        library.set_encode_special_tokens(true);
        library
            .with_truncation(None)
            .map_err(|e| format!("cannot disable truncation ({e})"))?;
        library.with_padding(None);
        let eos_id = library.token_to_id(EOS_TOKEN).ok_or_else(|| {
            format!(
                "it has no `{EOS_TOKEN}` token, which ends every document; add it as a \
                 special token"
            )
        })?;
        let id_space = library.get_vocab(true).values().max().map_or(0, |&m| m + 1);
        let fast = serde_json::from_str::<Value>(json)
            .ok()
            .and_then(|v| FastBpe::from_json(&v));
        Ok(Encoder {
            fast,
            library,
            eos_id,
            id_space,
        })
    }

    /// The id of `</s>`.
    pub(crate) fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// One more than the largest id: every id is below it.
    pub(crate) fn id_space(&self) -> u32 {
        self.id_space
    }

    /// The number of tokens of the vocabulary, added tokens included.
    pub(crate) fn vocab_len(&self) -> usize {
        self.library.get_vocab_size(true)
    }

    /// Whether the byte-level BPE fast path is used.
    pub(crate) fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Appends the ids of `text` (no special tokens added) to `out`.
    pub(crate) fn encode(
        &self,
        text: &str,
        cache: &mut WordCache,
        out: &mut Vec<u32>,
    ) -> Result<(), StageError> {
        match &self.fast {
            Some(fast) => fast.encode(text, cache, out),
            None => out.extend_from_slice(self.library.encode_fast(text, false)?.get_ids()),
        }
        Ok(())
    }

    /// The ids of `text` from the `tokenizers` library, whatever the path (tests).
    #[cfg(test)]
    pub(crate) fn encode_with_library(&self, text: &str) -> Vec<u32> {
        self.library.encode(text, false).unwrap().get_ids().to_vec()
    }
}

/// Byte-level BPE over byte ids.
struct FastBpe {
    byte_ids: [u32; 256],
    merges: FxHashMap<Pair, (u32, u32)>,
    /// With `ignore_merges`, pieces that are whole tokens map to them directly.
    whole_pieces: Option<FxHashMap<Vec<u8>, u32>>,
    /// The non-special added token matched in text, with the normalizer's
    /// replacements in front of it.
    markers: Option<Markers>,
}

/// A symbol of a word during merging; `alive == false` once merged into its left.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    id: u32,
    prev: usize,
    next: usize,
    alive: bool,
}

/// `prev`/`next` value meaning "none".
const NONE: usize = usize::MAX;

impl FastBpe {
    /// The fast path for `json`, or `None` if the tokenizer is not plain byte-level BPE.
    fn from_json(json: &Value) -> Option<FastBpe> {
        if !is_plain_byte_level(json) {
            return None;
        }
        let markers = markers(json)?;
        let model = &json["model"];
        let vocab: FxHashMap<&str, u32> = model["vocab"]
            .as_object()?
            .iter()
            .map(|(token, id)| Some((token.as_str(), u32::try_from(id.as_u64()?).ok()?)))
            .collect::<Option<_>>()?;
        let chars = byte_chars();
        let mut byte_ids = [0u32; 256];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            *id = *vocab.get(chars[b].to_string().as_str())?;
        }
        let merges = merge_map(&model["merges"], &vocab)?;
        let whole_pieces = (model["ignore_merges"] == true).then(|| whole_pieces(&vocab, &chars));
        Some(FastBpe {
            byte_ids,
            merges,
            whole_pieces,
            markers,
        })
    }

    fn encode(&self, text: &str, cache: &mut WordCache, out: &mut Vec<u32>) {
        match &self.markers {
            None => self.encode_pieces(text, cache, out),
            Some(markers) => {
                let out = std::cell::RefCell::new(out);
                let done: Result<(), std::convert::Infallible> = markers.split(
                    text,
                    |segment| {
                        self.encode_pieces(segment, cache, &mut out.borrow_mut());
                        Ok(())
                    },
                    || {
                        out.borrow_mut().push(markers.id());
                        Ok(())
                    },
                );
                let Ok(()) = done;
            }
        }
    }

    fn encode_pieces(&self, text: &str, cache: &mut WordCache, out: &mut Vec<u32>) {
        for piece in pieces(text) {
            self.encode_piece(piece.as_bytes(), cache, out);
        }
    }

    fn encode_piece(&self, bytes: &[u8], cache: &mut WordCache, out: &mut Vec<u32>) {
        if let ([b], None) = (bytes, &self.whole_pieces) {
            out.push(self.byte_ids[usize::from(*b)]);
            return;
        }
        if let Some(ids) = cache.map.get(bytes) {
            out.extend_from_slice(ids);
            return;
        }
        let start = out.len();
        self.merge_piece(bytes, out);
        if cache.map.len() >= MAX_CACHED_PIECES {
            cache.map.clear();
        }
        cache.map.insert(bytes.into(), out[start..].into());
    }

    /// The `tokenizers` crate's merge loop: repeatedly merge the pair of lowest rank,
    /// leftmost first, skipping queue entries made stale by earlier merges.
    fn merge_piece(&self, bytes: &[u8], out: &mut Vec<u32>) {
        if let Some(&id) = self.whole_pieces.as_ref().and_then(|w| w.get(bytes)) {
            out.push(id);
            return;
        }
        let n = bytes.len();
        let mut symbols: Vec<Symbol> = (0..n)
            .map(|i| Symbol {
                id: self.byte_ids[usize::from(bytes[i])],
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
                alive: true,
            })
            .collect();
        let mut queue: BinaryHeap<Reverse<(u32, usize, u32)>> = (0..n.saturating_sub(1))
            .filter_map(|i| self.queued(&symbols, i))
            .collect();
        while let Some(Reverse((_, pos, new_id))) = queue.pop() {
            if self.apply(&mut symbols, pos, new_id) {
                let prev = symbols[pos].prev;
                queue.extend(self.queued(&symbols, prev));
                queue.extend(self.queued(&symbols, pos));
            }
        }
        out.extend(symbols.iter().filter(|s| s.alive).map(|s| s.id));
    }

    /// The queue entry for the pair starting at symbol `pos`, if it has a merge.
    fn queued(&self, symbols: &[Symbol], pos: usize) -> Option<Reverse<(u32, usize, u32)>> {
        let left = symbols.get(pos)?;
        let right = symbols.get(left.next)?;
        let &(rank, new_id) = self.merges.get(&(left.id, right.id))?;
        Some(Reverse((rank, pos, new_id)))
    }

    /// Merges symbol `pos` with its right neighbour if the entry is still current.
    fn apply(&self, symbols: &mut [Symbol], pos: usize, new_id: u32) -> bool {
        let left = symbols[pos];
        if !left.alive || left.next == NONE {
            return false;
        }
        let right = symbols[left.next];
        if self.merges.get(&(left.id, right.id)).map(|m| m.1) != Some(new_id) {
            return false;
        }
        symbols[pos].id = new_id;
        symbols[pos].next = right.next;
        symbols[left.next].alive = false;
        if let Some(after) = symbols.get_mut(right.next) {
            after.prev = pos;
        }
        true
    }
}

/// A `ByteLevel` pre-tokenizer without prefix space using the GPT-2 split, and a BPE
/// model without dropout or subword affixes (the normalizer is checked by [`markers`]).
fn is_plain_byte_level(json: &Value) -> bool {
    let pre = &json["pre_tokenizer"];
    let model = &json["model"];
    let empty = |v: &Value| v.is_null() || v == "";
    pre["type"] == "ByteLevel"
        && pre["add_prefix_space"] == false
        && (pre["use_regex"].is_null() || pre["use_regex"] == true)
        && model["type"] == "BPE"
        && (model["dropout"].is_null() || model["dropout"] == 0.0)
        && empty(&model["continuing_subword_prefix"])
        && empty(&model["end_of_word_suffix"])
}

/// What the fast path must do besides BPE: `Some(None)` for nothing (no normalizer,
/// only special added tokens), `Some(Some(markers))` for one non-special added token
/// (matched in text even in `encode_special_tokens` mode) behind a normalizer of
/// `Replace(string, that token)` steps, `None` for anything else (the library's path).
fn markers(json: &Value) -> Option<Option<Markers>> {
    let tokens = match &json["added_tokens"] {
        Value::Null => &[][..],
        Value::Array(tokens) => tokens.as_slice(),
        _ => return None,
    };
    let plain: Vec<&Value> = tokens.iter().filter(|t| t["special"] != true).collect();
    let token = match plain.as_slice() {
        [] => return json["normalizer"].is_null().then_some(None),
        [token] => token,
        _ => return None,
    };
    let flags_off = ["lstrip", "rstrip", "single_word"]
        .iter()
        .all(|flag| token[*flag] != true);
    let content = token["content"].as_str()?;
    let id = u32::try_from(token["id"].as_u64()?).ok()?;
    if !flags_off || content.is_empty() {
        return None;
    }
    let steps = match &json["normalizer"] {
        Value::Null => Vec::new(),
        n if n["type"] == "Sequence" => n["normalizers"].as_array()?.iter().collect(),
        n => vec![n],
    };
    if !steps.is_empty() && token["normalized"] != true {
        return None; // matched before normalization: replacements could not create it
    }
    let replaced = steps
        .iter()
        .map(|step| {
            let pattern = step["pattern"]["String"].as_str()?;
            let ok = step["type"] == "Replace" && step["content"] == content && !pattern.is_empty();
            ok.then(|| pattern.to_string())
        })
        .collect::<Option<Vec<_>>>()?;
    let mut all = replaced;
    all.push(content.to_string());
    Some(Some(Markers::new(&all, content, id)))
}

/// `(left id, right id) -> (rank, merged id)`, as the library builds it (a repeated
/// pair keeps its last rank). Merges are `"a b"` strings or `["a", "b"]` pairs.
fn merge_map(merges: &Value, vocab: &FxHashMap<&str, u32>) -> Option<FxHashMap<Pair, (u32, u32)>> {
    let mut map = FxHashMap::default();
    for (rank, merge) in merges.as_array()?.iter().enumerate() {
        let (a, b) = match merge {
            Value::String(s) => s.split_once(' ')?,
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(a), Value::String(b)] => (a.as_str(), b.as_str()),
                _ => return None,
            },
            _ => return None,
        };
        let merged = *vocab.get(format!("{a}{b}").as_str())?;
        map.insert((*vocab.get(a)?, *vocab.get(b)?), (rank as u32, merged));
    }
    Some(map)
}

/// Vocabulary entries written entirely in byte-level characters, by their bytes.
fn whole_pieces(vocab: &FxHashMap<&str, u32>, chars: &[char; 256]) -> FxHashMap<Vec<u8>, u32> {
    let byte_of: FxHashMap<char, u8> = (0..=255u8).map(|b| (chars[usize::from(b)], b)).collect();
    vocab
        .iter()
        .filter_map(|(token, &id)| {
            let bytes: Option<Vec<u8>> = token.chars().map(|c| byte_of.get(&c).copied()).collect();
            bytes.map(|b| (b, id))
        })
        .collect()
}

/// The byte-level string of `bytes` (for building vocabularies).
pub(crate) fn byte_level(bytes: &[u8]) -> String {
    byte_level_string(bytes, &byte_chars())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use crate::tokenizer::train_on_texts;

    /// Fragments that exercise every branch of the GPT-2 split and of byte-level BPE.
    const FRAGMENTS: &[&str] = &[
        "a",
        "b",
        "ab",
        "the",
        "The",
        " ",
        "  ",
        "   ",
        "\n",
        "\n\n",
        "\t",
        "\r\n",
        "\u{a0}",
        "\u{3000}",
        "\u{2028}",
        "\u{200b}",
        "'s",
        "'t",
        "'re",
        "'ll",
        "'d",
        "'m",
        "'ve",
        "'",
        "'S",
        "1",
        "23",
        "456",
        "٣",
        "Ⅻ",
        "½",
        "é",
        "e\u{301}",
        "中文",
        "日本語",
        "😀",
        "🏳️‍🌈",
        "!",
        "...",
        "?!",
        "</s>",
        "<s>",
        "<pad>",
        "<unk>",
        " </s>",
        "-",
        "_",
        "$5.00",
        "x",
        "Q",
        "\u{0}",
        "\u{7f}",
        "Ǆ",
        "ß",
        "naïve",
        "don't",
        "it's",
        " 's",
        "\u{ffff}",
    ];

    fn random_text(rng: &mut SplitMix64) -> String {
        let n = 1 + rng.below(12) as usize;
        (0..n)
            .map(|_| FRAGMENTS[rng.below(FRAGMENTS.len() as u64) as usize])
            .collect()
    }

    fn texts(seed: u64, count: usize) -> Vec<String> {
        let mut rng = SplitMix64::new(seed);
        (0..count).map(|_| random_text(&mut rng)).collect()
    }

    fn trained_json() -> String {
        let train = texts(1, 3000);
        let refs: Vec<&str> = train.iter().map(String::as_str).collect();
        train_on_texts(&refs, 900, 1, &[])
    }

    fn assert_matches_library(encoder: &Encoder, seed: u64) {
        let mut cache = WordCache::default();
        for text in texts(seed, 3000) {
            let mut ids = Vec::new();
            encoder.encode(&text, &mut cache, &mut ids).unwrap();
            assert_eq!(ids, encoder.encode_with_library(&text), "text {text:?}");
        }
    }

    fn edited(json: &str, edit: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(json).unwrap();
        edit(&mut value);
        serde_json::to_string(&value).unwrap()
    }

    #[test]
    fn fast_path_matches_the_library() {
        let encoder = Encoder::from_json(&trained_json()).unwrap();
        assert!(encoder.is_fast());
        assert_eq!(encoder.eos_id(), 2);
        assert_matches_library(&encoder, 2);
    }

    #[test]
    fn fast_path_matches_the_library_with_ignore_merges_and_string_merges() {
        let json = edited(&trained_json(), |v| {
            v["model"]["ignore_merges"] = Value::Bool(true);
            let merges = v["model"]["merges"].as_array().unwrap().clone();
            let strings = merges
                .iter()
                .map(|m| {
                    Value::String(format!(
                        "{} {}",
                        m[0].as_str().unwrap(),
                        m[1].as_str().unwrap()
                    ))
                })
                .collect();
            v["model"]["merges"] = Value::Array(strings);
        });
        let encoder = Encoder::from_json(&json).unwrap();
        assert!(encoder.is_fast());
        assert_matches_library(&encoder, 3);
    }

    fn trained_with_markers(markers: &[&str]) -> String {
        let train = texts(5, 3000);
        let refs: Vec<&str> = train.iter().map(String::as_str).collect();
        train_on_texts(&refs, 900, 1, markers)
    }

    #[test]
    fn unknown_markers_are_the_unk_token_on_both_paths() {
        for markers in [&["<unk>"][..], &["@@UNK@@", "<unk>"], &["[UNK]"]] {
            let json = trained_with_markers(markers);
            let encoder = Encoder::from_json(&json).unwrap();
            assert!(
                encoder.is_fast(),
                "{markers:?}: the fast path handles markers"
            );
            assert_matches_library(&encoder, 6);
            let mut ids = Vec::new();
            let text = format!("a {} b </s> <s> <pad>", markers[0]);
            encoder
                .encode(&text, &mut WordCache::default(), &mut ids)
                .unwrap();
            assert_eq!(
                ids.iter().filter(|&&i| i == 3).count(),
                1,
                "{markers:?}: {ids:?}"
            );
            assert!(ids.iter().all(|&i| i >= 3), "no <pad> <s> </s>: {ids:?}");
            assert_eq!(ids, encoder.encode_with_library(&text));
        }
    }

    #[test]
    fn without_markers_unk_is_plain_text() {
        let encoder = Encoder::from_json(&trained_json()).unwrap();
        let mut ids = Vec::new();
        encoder
            .encode("a <unk> b", &mut WordCache::default(), &mut ids)
            .unwrap();
        assert!(!ids.contains(&3), "{ids:?}");
    }

    #[test]
    fn other_tokenizers_use_the_library() {
        let json = edited(&trained_json(), |v| {
            v["pre_tokenizer"]["add_prefix_space"] = Value::Bool(true);
        });
        let encoder = Encoder::from_json(&json).unwrap();
        assert!(!encoder.is_fast());
        assert_matches_library(&encoder, 4);
    }

    #[test]
    fn special_token_strings_are_plain_text() {
        let encoder = Encoder::from_json(&trained_json()).unwrap();
        let mut ids = Vec::new();
        encoder
            .encode("a</s>b", &mut WordCache::default(), &mut ids)
            .unwrap();
        assert!(!ids.contains(&encoder.eos_id()), "{ids:?}");
    }

    #[test]
    fn a_tokenizer_without_eos_is_rejected() {
        let json = edited(&trained_json(), |v| {
            let tokens = v["added_tokens"].as_array_mut().unwrap();
            tokens.retain(|t| t["content"] != "</s>");
            let vocab = v["model"]["vocab"].as_object_mut().unwrap();
            vocab.remove("</s>");
        });
        let err = Encoder::from_json(&json).err().unwrap();
        assert!(err.contains("no `</s>` token"), "{err}");
        let err = Encoder::from_json("{not json").err().unwrap();
        assert!(err.contains("cannot load"), "{err}");
    }
}
