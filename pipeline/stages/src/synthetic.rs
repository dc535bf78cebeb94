//! The synthetic English-like text generator behind `corpus` with `source = "synthetic"`.
//!
//! A fixed vocabulary of pseudo-words (syllable strings; frequent words are shorter)
//! is sampled with Zipfian frequencies, and words are grouped into capitalized
//! sentences of 5 to 25 words with occasional commas and paragraph breaks. Document
//! lengths are log-uniform in `min_words..=max_words`.
//!
//! Every document is a pure function of (seed, document index), drawn from its own
//! [`SplitMix64`] stream, so documents can be generated in parallel in any order and
//! the bytes never depend on the thread count.

use std::collections::HashSet;

use ausa_artifacts::Split;

use crate::rng::{self, SplitMix64};

/// Stream ids keeping the split draw and the text draws of a document independent.
const STREAM_SPLIT: u64 = 1;
const STREAM_TEXT: u64 = 2;

/// The vocabulary does not depend on the corpus seed: the same `vocab_size` always
/// gives the same words, so corpora with different seeds share a vocabulary.
const VOCAB_SEED: u64 = 0x0A05_A0C0_FFEE;

const ONSETS: &[&str] = &[
    "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "y",
    "z", "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr",
];
const VOWELS: &[&str] = &[
    "a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "ee", "ou", "oo", "ie",
];
const CODAS: &[&str] = &[
    "", "", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck",
];

/// Settings of the generator (the `corpus` stage's synthetic parameters).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntheticConfig {
    pub(crate) docs: u64,
    pub(crate) seed: u64,
    pub(crate) vocab_size: usize,
    pub(crate) zipf_exponent: f64,
    pub(crate) min_words: u64,
    pub(crate) max_words: u64,
    pub(crate) validation_fraction: f64,
    pub(crate) test_fraction: f64,
}

/// A generated document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntheticDoc {
    pub(crate) text: String,
    pub(crate) words: u64,
}

/// A generator with its vocabulary and Zipf table built.
pub(crate) struct Generator {
    config: SyntheticConfig,
    vocab: Vec<String>,
    /// `cdf[r]` = probability that a word has rank `<= r`; the last entry is 1.
    cdf: Vec<f64>,
}

impl Generator {
    pub(crate) fn new(config: SyntheticConfig) -> Generator {
        let vocab = vocabulary(config.vocab_size);
        let cdf = zipf_cdf(config.vocab_size, config.zipf_exponent);
        Generator { config, vocab, cdf }
    }

    pub(crate) fn config(&self) -> &SyntheticConfig {
        &self.config
    }

    /// The split of document `index`.
    pub(crate) fn split_of(&self, index: u64) -> Split {
        let u = SplitMix64::for_item(self.config.seed, STREAM_SPLIT, index).next_f64();
        if u < self.config.test_fraction {
            Split::Test
        } else if u < self.config.test_fraction + self.config.validation_fraction {
            Split::Validation
        } else {
            Split::Train
        }
    }

    /// The text of document `index`.
    pub(crate) fn document(&self, index: u64) -> SyntheticDoc {
        let mut rng = SplitMix64::for_item(self.config.seed, STREAM_TEXT, index);
        let words = self.length(&mut rng);
        let mut text = String::with_capacity(words as usize * 7);
        let mut left = words;
        while left > 0 {
            let len = (5 + rng.below(21)).min(left);
            if !text.is_empty() {
                text.push_str(if rng.chance(0.15) { "\n\n" } else { " " });
            }
            self.sentence(&mut rng, len, &mut text);
            left -= len;
        }
        SyntheticDoc { text, words }
    }

    /// Log-uniform in `min_words..=max_words`, so short and long documents both occur.
    fn length(&self, rng: &mut SplitMix64) -> u64 {
        let (lo, hi) = (self.config.min_words, self.config.max_words);
        let (ln_lo, ln_hi) = (rng::ln(lo as f64), rng::ln(hi as f64));
        let n = rng::exp(ln_lo + rng.next_f64() * (ln_hi - ln_lo)).round() as u64;
        n.clamp(lo, hi)
    }

    fn sentence(&self, rng: &mut SplitMix64, len: u64, out: &mut String) {
        for i in 0..len {
            let word = &self.vocab[self.sample_rank(rng)];
            if i == 0 {
                out.push(word.as_bytes()[0].to_ascii_uppercase() as char);
                out.push_str(&word[1..]);
            } else {
                out.push(' ');
                out.push_str(word);
            }
            if i + 1 == len {
                out.push('.');
            } else if rng.chance(0.08) {
                out.push(',');
            }
        }
    }

    /// Inverse-CDF sampling by binary search.
    fn sample_rank(&self, rng: &mut SplitMix64) -> usize {
        let u = rng.next_f64();
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }
}

/// `size` distinct pseudo-words; rank 0 is the most frequent. Frequent words get fewer
/// syllables, as in natural language.
pub(crate) fn vocabulary(size: usize) -> Vec<String> {
    let mut rng = SplitMix64::new(VOCAB_SEED);
    let mut seen = HashSet::with_capacity(size);
    let mut words = Vec::with_capacity(size);
    while words.len() < size {
        let max_syllables = match words.len() {
            0..50 => 2,
            50..1000 => 3,
            _ => 4,
        };
        let syllables = 1 + rng.below(max_syllables);
        let word = pseudo_word(&mut rng, syllables);
        if seen.insert(word.clone()) {
            words.push(word);
        }
    }
    words
}

fn pseudo_word(rng: &mut SplitMix64, syllables: u64) -> String {
    let mut word = String::new();
    for _ in 0..syllables {
        for part in [ONSETS, VOWELS, CODAS] {
            word.push_str(part[rng.below(part.len() as u64) as usize]);
        }
    }
    word
}

/// The cumulative distribution of ranks `0..size` with weights `1 / (rank + 1)^s`.
fn zipf_cdf(size: usize, exponent: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=size)
        .map(|r| 1.0 / rng::pow(r as f64, exponent))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = weights
        .iter()
        .map(|w| {
            acc += w;
            acc / total
        })
        .collect();
    if let Some(last) = cdf.last_mut() {
        *last = 1.0;
    }
    cdf
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn config(docs: u64) -> SyntheticConfig {
        SyntheticConfig {
            docs,
            seed: 7,
            vocab_size: 5000,
            zipf_exponent: 1.1,
            min_words: 20,
            max_words: 2000,
            validation_fraction: 0.05,
            test_fraction: 0.05,
        }
    }

    fn bare_word(token: &str) -> String {
        token.trim_end_matches([',', '.']).to_ascii_lowercase()
    }

    #[test]
    fn vocabulary_is_distinct_lowercase_and_short_at_the_top() {
        let vocab = vocabulary(20_000);
        assert_eq!(vocab.iter().collect::<HashSet<_>>().len(), 20_000);
        assert!(vocab
            .iter()
            .all(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase())));
        let mean_len = |ws: &[String]| ws.iter().map(String::len).sum::<usize>() / ws.len();
        assert!(mean_len(&vocab[..50]) < mean_len(&vocab[10_000..]));
        assert_eq!(
            vocabulary(100),
            vocab[..100],
            "a prefix does not depend on the size"
        );
    }

    #[test]
    fn documents_have_the_drawn_word_count_and_sentences() {
        let generator = Generator::new(config(50));
        for i in 0..50 {
            let doc = generator.document(i);
            assert_eq!(doc.text.split_whitespace().count() as u64, doc.words);
            assert!((20..=2000).contains(&doc.words), "{}", doc.words);
            assert!(doc.text.ends_with('.') && doc.text.as_bytes()[0].is_ascii_uppercase());
            assert_eq!(doc.text, doc.text.trim());
            assert_eq!(doc, generator.document(i), "pure function of the index");
        }
    }

    #[test]
    fn zipf_frequencies_follow_the_exponent() {
        let generator = Generator::new(config(400));
        let mut counts: HashMap<String, u64> = HashMap::new();
        for i in 0..400 {
            for token in generator.document(i).text.split_whitespace() {
                *counts.entry(bare_word(token)).or_default() += 1;
            }
        }
        let total: u64 = counts.values().sum();
        assert!(
            counts.len() <= 5000 && counts.len() > 2000,
            "{} distinct",
            counts.len()
        );
        let harmonic: f64 = (1..=5000).map(|r| 1.0 / (r as f64).powf(1.1)).sum();
        let top_share = counts[&generator.vocab[0]] as f64 / total as f64;
        let expected = 1.0 / harmonic;
        assert!(
            (top_share / expected - 1.0).abs() < 0.1,
            "{top_share} vs {expected}"
        );
        let ratio = counts[&generator.vocab[0]] as f64 / counts[&generator.vocab[1]] as f64;
        assert!(
            (ratio - 2f64.powf(1.1)).abs() < 0.25,
            "rank 1 / rank 2 = {ratio}"
        );
    }

    #[test]
    fn splits_follow_the_fractions() {
        let generator = Generator::new(config(20_000));
        let mut counts = [0u32; 3];
        for i in 0..20_000 {
            counts[generator.split_of(i).index()] += 1;
        }
        for held_out in &counts[1..] {
            assert!((850..1150).contains(held_out), "{counts:?}");
        }
    }

    #[test]
    fn seed_changes_documents_but_not_vocabulary() {
        let a = Generator::new(config(1));
        let b = Generator::new(SyntheticConfig {
            seed: 8,
            ..config(1)
        });
        assert_ne!(a.document(0), b.document(0));
        assert_eq!(a.vocab, b.vocab);
    }

    #[test]
    fn extreme_parameters_work() {
        let tiny = Generator::new(SyntheticConfig {
            vocab_size: 10,
            zipf_exponent: 3.0,
            min_words: 1,
            max_words: 1,
            ..config(20)
        });
        for i in 0..20 {
            let doc = tiny.document(i);
            assert_eq!(doc.words, 1);
            let word = bare_word(&doc.text);
            assert!(tiny.vocab.contains(&word), "{word}");
        }
        let huge = Generator::new(SyntheticConfig {
            vocab_size: 1_000_000,
            zipf_exponent: 0.5,
            ..config(1)
        });
        assert_eq!(huge.vocab.len(), 1_000_000);
        assert_eq!(huge.cdf.len(), 1_000_000);
        assert!(huge.cdf.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            huge.document(0).text.split_whitespace().count() as u64,
            huge.document(0).words
        );
    }
}
