//! Test fixtures (cargo feature `testing`): small, consistent set artifacts written
//! with this crate's writers, for tests of the readers and of the trainers.
//!
//! The files are what the `sequences`, `banks`, `minhash` and `routing` stages would
//! write for the same token stream in their layout and cross-file invariants (same
//! sequences, same sets, causal routing by set ends); the signature values are a
//! simple deterministic stand-in, not the `minhash` stage's hash family.

use std::path::Path;

use crate::{
    banks_path, minhash_path, routing_path, sequences_path, write_routing, write_signatures,
    ArtifactError, BankShape, BanksWriter, Routing, RoutingLayout, SetPaths, Split, TokensWriter,
};

/// What [`write_set_split`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetFixture {
    /// Every id is below this.
    pub vocab_size: u32,
    /// Tokens per sequence (a shorter tail of the stream is dropped).
    pub seq_len: usize,
    /// Tokens per set window.
    pub window: u32,
    /// Tokens between window starts (at most `window`).
    pub stride: u32,
    /// Signature values per set.
    pub minhash_k: u32,
}

impl Default for SetFixture {
    /// Vocabulary 100, sequences of 32 tokens, windows of 8 every 4, k = 32.
    fn default() -> SetFixture {
        SetFixture {
            vocab_size: 100,
            seq_len: 32,
            window: 8,
            stride: 4,
            minhash_k: 32,
        }
    }
}

/// The windows `[start, end)` of a sequence of `len` tokens: every `stride` tokens,
/// the last one the first to reach the end (clipped), as the `banks` stage cuts them.
pub fn windows(len: u32, window: u32, stride: u32) -> Vec<(u32, u32)> {
    let mut spans = Vec::new();
    let mut start = 0;
    let mut end = 0;
    while end < len {
        end = (start + window).min(len);
        spans.push((start, end));
        start += stride.max(1);
    }
    spans
}

/// The sorted distinct ids of `ids`.
fn set_of(ids: &[u32]) -> Vec<u32> {
    let mut set = ids.to_vec();
    set.sort_unstable();
    set.dedup();
    set
}

/// Writes `sequences-`, `banks-`, `minhash-` and `routing-<split>.arrow` for the token
/// stream `ids` (each id below `fixture.vocab_size`) into `dir`, and returns their
/// paths. Routing is causal without top-k: token `t` sees the sets ending at or
/// before `t + 1`.
pub fn write_set_split(
    dir: &Path,
    split: Split,
    ids: &[u32],
    fixture: &SetFixture,
) -> Result<SetPaths, ArtifactError> {
    let paths = SetPaths {
        sequences: sequences_path(dir, split),
        banks: banks_path(dir, split),
        signatures: minhash_path(dir, split),
        routing: routing_path(dir, split),
    };
    let shape = BankShape {
        vocab_size: fixture.vocab_size,
        window: fixture.window,
        stride: fixture.stride,
    };
    let mut sequences = TokensWriter::create(&paths.sequences, fixture.vocab_size)?;
    let mut banks = BanksWriter::new(&paths.banks, shape);
    let (mut signatures, mut sizes) = (Vec::new(), Vec::new());
    let mut routing = Routing {
        causal: true,
        topk: 0,
        sequences: 0,
        layouts: Vec::new(),
    };
    let len = fixture.seq_len.max(1);
    for (i, seq) in ids.chunks_exact(len).enumerate() {
        sequences.push_document((i * len) as u64, seq)?;
        let spans = windows(seq.len() as u32, fixture.window, fixture.stride);
        for &(start, end) in &spans {
            let set = set_of(&seq[start as usize..end as usize]);
            banks.push_set(&set, start, end)?;
            for j in 0..fixture.minhash_k {
                let value = set.iter().map(|&a| a.wrapping_mul(2 * j + 1) ^ j).min();
                signatures.push(value.unwrap_or(u32::MAX));
            }
            sizes.push(set.len() as u32);
        }
        banks.end_sequence();
        let ends: Vec<u32> = spans.iter().map(|&(_, end)| end).collect();
        if !routing.layouts.iter().any(|l| l.ends == ends) {
            routing.layouts.push(causal_layout(ends));
        }
        routing.sequences += 1;
    }
    sequences.finish()?;
    banks.finish()?;
    write_signatures(&paths.signatures, fixture.minhash_k, 0, signatures, sizes)?;
    write_routing(&paths.routing, &routing)?;
    Ok(paths)
}

/// The causal table of one layout: token `t` sees the sets with `end <= t + 1`.
fn causal_layout(ends: Vec<u32>) -> RoutingLayout {
    let tokens = ends.last().copied().unwrap_or(0);
    let mut layout = RoutingLayout {
        token_offsets: vec![0],
        ..RoutingLayout::default()
    };
    for t in 0..tokens {
        let visible = ends.iter().take_while(|&&end| end <= t + 1).count();
        layout.sets.extend(0..visible as u32);
        layout.token_offsets.push(layout.sets.len() as u64);
    }
    layout.ends = ends;
    layout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SetArtifacts;

    #[test]
    fn the_fixture_opens_and_gathers() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<u32> = (0..32 * 3 + 5).map(|i| (i * 37 % 100) as u32).collect();
        let paths =
            write_set_split(dir.path(), Split::Train, &ids, &SetFixture::default()).unwrap();
        assert!(paths.sequences.ends_with("sequences-train.arrow"));
        let sets = SetArtifacts::open(&paths).unwrap();
        assert_eq!(sets.num_sequences(), 3);
        let batch = sets.gather(&[1]).unwrap();
        assert_eq!(batch.tokens, ids[32..64]);
        assert_eq!(batch.seq_sets, vec![0, 7]);
        assert_eq!(&batch.spans[..4], &[0, 8, 4, 12]);
        // Token 10 sees the sets ending at or before 11: only [0, 8).
        let t = 10;
        let seen =
            &batch.candidates[batch.token_offsets[t] as usize..batch.token_offsets[t + 1] as usize];
        assert_eq!(seen, &[0]);
    }

    #[test]
    fn windows_cover_the_sequence() {
        assert_eq!(windows(10, 4, 3), [(0, 4), (3, 7), (6, 10)]);
        assert_eq!(windows(3, 8, 4), [(0, 3)]);
        assert_eq!(windows(8, 4, 4), [(0, 4), (4, 8)]);
    }
}
