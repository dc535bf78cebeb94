//! The `sequences` stage kind: cuts each split's token stream into fixed-length
//! sequences and writes `sequences-<split>.arrow`.
//!
//! Sequence `i` is the ids `[i * seq_stride, i * seq_stride + seq_len)` of the
//! split's stream (documents concatenated, each ending in `</s>`); a tail shorter
//! than `seq_len` is dropped (counted in the statistics). The file uses the token
//! file format ([`ausa_artifacts::tokens`]) with one row per sequence; its `doc_id`
//! column holds the sequence's start position in the stream. Parameters owned here:
//! `seq_len` and `seq_stride` (0 = `seq_len`, non-overlapping).

use std::path::Path;

use ausa_artifacts::{sequences_path, tokens_path, Split, TokensFile, TokensWriter};
use ausa_dag::{InputSlot, StageContext, StageError, Stats, TypedStage};
use serde_json::{json, Value};

static INPUTS: [InputSlot; 1] = [InputSlot {
    name: "tokens",
    kinds: &["tokenize"],
    doc: "the token ids to cut into sequences",
}];

ausa_dag::stage_params! {
    /// Parameters of the `sequences` stage.
    pub struct SequencesParams {
        seq_len: usize = int(1, 1 << 20, 256, "tokens per sequence"),
        seq_stride: usize = int(0, 1 << 20, 0,
            "tokens between sequence starts (0 = seq_len: non-overlapping)"),
    }
}

/// The `sequences` stage kind (input `tokens`; writes `sequences-<split>.arrow`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SequencesStage;

impl TypedStage for SequencesStage {
    type Params = SequencesParams;

    fn kind(&self) -> &'static str {
        "sequences"
    }

    fn salt(&self) -> &'static str {
        "1"
    }

    fn doc(&self) -> &'static str {
        "Cuts each split's token stream into sequences of seq_len ids starting every \
         seq_stride ids (0 = seq_len); a shorter tail is dropped. Writes \
         sequences-<split>.arrow in the token file format, one row per sequence, doc_id = \
         the start position in the stream."
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn run(&self, params: &SequencesParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let (len, stride) = params.shape();
        let dir = &ctx.input("tokens")?.dir;
        let mut splits = serde_json::Map::new();
        for split in Split::ALL {
            let path = tokens_path(dir, split);
            if path.exists() {
                let stats = cut_split(&path, &sequences_path(ctx.out_dir, split), len, stride)?;
                splits.insert(split.as_str().into(), stats);
            }
        }
        let mut stats = Stats::new();
        stats.insert("seq_len".into(), json!(len));
        stats.insert("seq_stride".into(), json!(stride));
        stats.insert("splits".into(), Value::Object(splits));
        Ok(stats)
    }
}

impl SequencesParams {
    /// `seq_len` and the effective `seq_stride`.
    fn shape(&self) -> (usize, usize) {
        let stride = match self.seq_stride {
            0 => self.seq_len,
            s => s,
        };
        (self.seq_len, stride)
    }
}

/// The start of every full sequence in a stream of `n` ids.
pub fn sequence_starts(n: usize, len: usize, stride: usize) -> impl Iterator<Item = usize> {
    (0..).step_by(stride).take_while(move |s| s + len <= n)
}

fn cut_split(tokens: &Path, out: &Path, len: usize, stride: usize) -> Result<Value, StageError> {
    let file = TokensFile::open(tokens)?;
    let ids = file.ids();
    let mut writer = TokensWriter::create(out, file.vocab_size())?;
    let mut scratch = Vec::with_capacity(len);
    let mut covered = 0;
    for start in sequence_starts(ids.len(), len, stride) {
        scratch.clear();
        scratch.extend(
            ids.slice(start..start + len)
                .into_iter()
                .flat_map(|s| s.iter()),
        );
        writer.push_document(start as u64, &scratch)?;
        covered = start + len;
    }
    let summary = writer.finish()?;
    Ok(json!({
        "sequences": summary.documents,
        "tokens": summary.tokens,
        "dropped_tail_tokens": ids.len() - covered.min(ids.len()),
    }))
}
