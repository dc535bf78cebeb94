//! A deterministic byte-level BPE trainer.
//!
//! The `tokenizers` crate's trainer gives different merges from run to run on
//! corpora with tied pair counts: it counts words in parallel into hash maps and its
//! result depends on iteration order. This trainer is deterministic by
//! construction:
//!
//! - Words (pre-tokenizer pieces) arrive with their counts and are sorted by bytes,
//!   so nothing depends on how counting was split across threads.
//! - Each step merges the adjacent pair with the highest total count; ties go to the
//!   smallest `(left id, right id)`. Ids are fixed before training (the byte `b` is
//!   `first_id + b`) or assigned in merge order, so the order is total.
//! - Hash maps hold counts and word lists only; no decision iterates over them.
//!
//! Counting is incremental: a merge updates only the words that contain its pair
//! (found through a pair-to-words index) and a max-heap with lazy deletion yields the
//! next pair. Pairs are counted with overlaps, as in the `tokenizers` crate (`aaa`
//! has two `(a, a)` pairs), and a word merges its pair left to right.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap;

/// An adjacent pair of token ids.
type Pair = (u32, u32);

/// What [`train`] learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trained {
    /// Bytes of every token from `first_id` on: the 256 bytes, then merged tokens.
    pub(crate) tokens: Vec<Vec<u8>>,
    /// The merges in rank order, as `(left id, right id)`.
    pub(crate) merges: Vec<Pair>,
}

/// The training state.
struct Trainer<'w> {
    first_id: u32,
    words: Vec<Vec<u32>>,
    counts: &'w [u64],
    tokens: Vec<Vec<u8>>,
    ids: FxHashMap<Vec<u8>, u32>,
    pair_counts: FxHashMap<Pair, i64>,
    pair_words: FxHashMap<Pair, Vec<u32>>,
    heap: BinaryHeap<(i64, Reverse<Pair>)>,
    merges: Vec<Pair>,
}

/// Trains until `max_tokens` tokens exist (the 256 bytes included) or no pair occurs
/// `min_frequency` times. `words` are `(bytes, count)` sorted by bytes, without
/// duplicates; `first_id` is the id of byte 0 (ids below it are special tokens).
pub(crate) fn train(
    words: &[(Vec<u8>, u64)],
    first_id: u32,
    max_tokens: usize,
    min_frequency: u64,
    mut on_merge: impl FnMut(usize),
) -> Trained {
    let counts: Vec<u64> = words.iter().map(|(_, c)| *c).collect();
    let mut trainer = Trainer::new(words, &counts, first_id);
    while trainer.tokens.len() < max_tokens {
        let Some(pair) = trainer.next_pair(min_frequency) else {
            break;
        };
        trainer.merge(pair);
        on_merge(trainer.merges.len());
    }
    Trained {
        tokens: trainer.tokens,
        merges: trainer.merges,
    }
}

impl<'w> Trainer<'w> {
    fn new(words: &[(Vec<u8>, u64)], counts: &'w [u64], first_id: u32) -> Trainer<'w> {
        let tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let ids = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), first_id + i as u32))
            .collect();
        let symbols = words
            .iter()
            .map(|(bytes, _)| bytes.iter().map(|&b| first_id + u32::from(b)).collect())
            .collect();
        let mut trainer = Trainer {
            first_id,
            words: symbols,
            counts,
            tokens,
            ids,
            pair_counts: FxHashMap::default(),
            pair_words: FxHashMap::default(),
            heap: BinaryHeap::new(),
            merges: Vec::new(),
        };
        trainer.count_all_pairs();
        trainer
    }

    fn count_all_pairs(&mut self) {
        for w in 0..self.words.len() {
            let count = self.counts[w] as i64;
            for pair in self.words[w].windows(2) {
                let pair = (pair[0], pair[1]);
                *self.pair_counts.entry(pair).or_default() += count;
                self.pair_words.entry(pair).or_default().push(w as u32);
            }
        }
        let mut initial: Vec<(i64, Reverse<Pair>)> = self
            .pair_counts
            .iter()
            .map(|(&pair, &count)| (count, Reverse(pair)))
            .collect();
        // Sorted only so that the heap's layout, too, never depends on hashing.
        initial.sort_unstable();
        self.heap = BinaryHeap::from(initial);
    }

    /// The most frequent pair (ties: smallest ids), if it occurs `min_frequency` times.
    fn next_pair(&mut self, min_frequency: u64) -> Option<Pair> {
        while let Some((count, Reverse(pair))) = self.heap.pop() {
            let current = self.pair_counts.get(&pair).copied().unwrap_or(0);
            if count != current {
                // A stale entry: requeue with the current count.
                if current > 0 {
                    self.heap.push((current, Reverse(pair)));
                }
                continue;
            }
            return (current > 0 && current as u64 >= min_frequency).then_some(pair);
        }
        None
    }

    /// Adds the merged token (or reuses an existing one with the same bytes) and
    /// rewrites every word that contains `pair`.
    fn merge(&mut self, pair: Pair) {
        let new_id = self.intern(pair);
        self.merges.push(pair);
        let mut affected = self.pair_words.remove(&pair).unwrap_or_default();
        affected.sort_unstable();
        affected.dedup();
        let mut grown: Vec<Pair> = Vec::new();
        for w in affected {
            self.rewrite_word(w as usize, pair, new_id, &mut grown);
        }
        grown.sort_unstable();
        grown.dedup();
        for pair in grown {
            let count = self.pair_counts.get(&pair).copied().unwrap_or(0);
            if count > 0 {
                self.heap.push((count, Reverse(pair)));
            }
        }
    }

    fn intern(&mut self, (a, b): Pair) -> u32 {
        let mut bytes = self.tokens[(a - self.first_id) as usize].clone();
        bytes.extend_from_slice(&self.tokens[(b - self.first_id) as usize]);
        if let Some(&id) = self.ids.get(&bytes) {
            return id;
        }
        let id = self.first_id + self.tokens.len() as u32;
        self.ids.insert(bytes.clone(), id);
        self.tokens.push(bytes);
        id
    }

    /// Merges `pair` in word `w` and applies the change in pair counts; pairs that
    /// gained occurrences are added to `grown`.
    fn rewrite_word(&mut self, w: usize, pair: Pair, new_id: u32, grown: &mut Vec<Pair>) {
        let Some(merged) = merge_pair(&self.words[w], pair, new_id) else {
            return;
        };
        let count = self.counts[w] as i64;
        for p in self.words[w].windows(2) {
            *self.pair_counts.entry((p[0], p[1])).or_default() -= count;
        }
        for p in merged.windows(2) {
            let p = (p[0], p[1]);
            *self.pair_counts.entry(p).or_default() += count;
            self.pair_words.entry(p).or_default().push(w as u32);
            grown.push(p);
        }
        self.words[w] = merged;
    }
}

/// `word` with every occurrence of `pair` (left to right) replaced by `new_id`, or
/// `None` if it does not contain the pair (an index entry can be stale).
fn merge_pair(word: &[u32], (a, b): Pair, new_id: u32) -> Option<Vec<u32>> {
    if !word.windows(2).any(|p| p[0] == a && p[1] == b) {
        return None;
    }
    let mut merged = Vec::with_capacity(word.len());
    let mut i = 0;
    while i < word.len() {
        if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
            merged.push(new_id);
            i += 2;
        } else {
            merged.push(word[i]);
            i += 1;
        }
    }
    Some(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[(&str, u64)]) -> Vec<(Vec<u8>, u64)> {
        let mut words: Vec<_> = list
            .iter()
            .map(|(w, c)| (w.as_bytes().to_vec(), *c))
            .collect();
        words.sort();
        words
    }

    fn token(t: &Trained, id: u32) -> String {
        String::from_utf8(t.tokens[id as usize].clone()).unwrap()
    }

    #[test]
    fn merges_the_most_frequent_pair_first() {
        let t = train(
            &words(&[("abab", 3), ("ab", 1), ("cd", 2)]),
            0,
            259,
            1,
            |_| {},
        );
        assert_eq!(t.merges[0], (u32::from(b'a'), u32::from(b'b')));
        assert_eq!(token(&t, 256), "ab");
        assert_eq!(token(&t, 257), "abab");
        assert_eq!(token(&t, 258), "cd");
        assert_eq!(t.tokens.len(), 259);
    }

    #[test]
    fn ties_go_to_the_smallest_pair() {
        let t = train(&words(&[("yz", 5), ("bc", 5)]), 4, 257, 1, |_| {});
        assert_eq!(t.merges, vec![(4 + u32::from(b'b'), 4 + u32::from(b'c'))]);
        assert_eq!(t.tokens[256], b"bc");
    }

    #[test]
    fn overlapping_pairs_merge_left_to_right() {
        assert_eq!(merge_pair(&[1, 1, 1], (1, 1), 9), Some(vec![9, 1]));
        assert_eq!(merge_pair(&[1, 1, 1, 1], (1, 1), 9), Some(vec![9, 9]));
        assert_eq!(merge_pair(&[1, 2], (2, 1), 9), None);
    }

    #[test]
    fn stops_below_min_frequency() {
        let t = train(&words(&[("ab", 3), ("cd", 1)]), 0, 1000, 2, |_| {});
        assert_eq!(t.merges.len(), 1);
    }

    #[test]
    fn reuses_a_token_reached_by_two_merges() {
        // "abc" built as (ab, c) and as (a, bc) is one token.
        let list = words(&[("abc", 1)]);
        let counts = [1];
        let mut trainer = Trainer::new(&list, &counts, 0);
        let (a, b, c) = (u32::from(b'a'), u32::from(b'b'), u32::from(b'c'));
        let ab = trainer.intern((a, b));
        let bc = trainer.intern((b, c));
        let abc = trainer.intern((ab, c));
        assert_eq!(trainer.intern((a, bc)), abc);
        assert_eq!(trainer.tokens.len(), 259);
    }
}
