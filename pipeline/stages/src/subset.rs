//! The `subset` stage kind: a token-budget subset of the train split.
//!
//! Policy, in order:
//! 1. The budget is `fraction` of the train split's whitespace words (the WikiText
//!    convention), or `words` when that is given.
//! 2. Train documents are sorted by length and cut into `strata` equal-count length
//!    strata (deciles by default); each stratum receives the share of the budget its
//!    own words represent, and is sampled in a seeded shuffled order until its share is
//!    met. The subset therefore has the corpus's length distribution.
//! 3. Every word type gets a frequency class, `floor(log2(count))` of its count in the
//!    full train split. The *unigram histogram* is the share of word occurrences per
//!    class. While the subset's histogram is more than `epsilon` (total variation
//!    distance) from the full split's, seeded swaps of one selected and one unselected
//!    document of the same stratum are tried and kept when they reduce the distance
//!    without moving the total by more than 0.5% of the budget.
//!
//! Validation and test splits pass through whole. Output rows keep their `doc_id`s and
//! input order.

use std::collections::HashMap;

use ausa_artifacts::{
    doc_stats_path, documents_path, read_doc_stats, read_documents, Document, DocumentsWriter,
    Split, DOCUMENTS_FILE,
};
use ausa_dag::{InputSlot, ProgressUnit, StageContext, StageError, Stats, TypedStage};
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::doc_stats::DOCUMENT_PRODUCERS;
use crate::rng::SplitMix64;

static INPUTS: [InputSlot; 2] = [
    InputSlot {
        name: "documents",
        kinds: DOCUMENT_PRODUCERS,
        doc: "the documents to subset",
    },
    InputSlot {
        name: "doc_stats",
        kinds: &["doc_stats"],
        doc: "word counts of those documents",
    },
];

ausa_dag::stage_params! {
    /// Parameters of the `subset` stage.
    pub struct SubsetParams {
        fraction: f64 = float(0.0, 1.0, 1.0,
            "budget as a fraction of the train split's words (ignored when `words` > 0)"),
        words: u64 = int(0, i64::MAX, 0,
            "budget as an absolute number of train words (0: use `fraction`)"),
        seed: u64 = int(0, i64::MAX, 0, "seed of the sampling and swap order"),
        strata: usize = int(1, 100, 10,
            "number of equal-count document length strata (10: deciles)"),
        epsilon: f64 = float(0.0, 1.0, 0.01,
            "largest accepted total variation distance of the unigram log-frequency histogram"),
        max_swaps: u64 = int(0, 10_000_000, 20_000,
            "swap attempts allowed to bring the histogram within epsilon"),
    }
}

/// Frequency classes: `floor(log2(count))` for counts up to 2^40.
const CLASSES: usize = 41;

/// The `subset` stage kind (inputs `documents` and `doc_stats`; writes `documents.parquet`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SubsetStage;

impl TypedStage for SubsetStage {
    type Params = SubsetParams;

    fn kind(&self) -> &'static str {
        "subset"
    }

    fn salt(&self) -> &'static str {
        "1"
    }

    fn doc(&self) -> &'static str {
        "Selects a token-budget subset of the train split (length-stratified, seeded, \
         keeping the unigram log-frequency histogram within epsilon of the full split); \
         validation and test pass through whole."
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn check(&self, params: &SubsetParams) -> Result<(), String> {
        if params.words == 0 && params.fraction <= 0.0 {
            return Err("the budget is empty: set `fraction` > 0 or `words` > 0".into());
        }
        Ok(())
    }

    fn run(&self, params: &SubsetParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let docs_dir = &ctx.input("documents")?.dir;
        let docs = read_documents(documents_path(docs_dir))?;
        let counts = word_counts(
            &docs,
            &read_doc_stats(doc_stats_path(&ctx.input("doc_stats")?.dir))?,
        )?;
        ctx.progress
            .set_total(docs.len() as u64, ProgressUnit::Items("docs"));
        let train: Vec<usize> = (0..docs.len())
            .filter(|&i| docs[i].split == Split::Train)
            .collect();
        let total: u64 = train.iter().map(|&i| counts[i]).sum();
        if total == 0 {
            return Err(format!(
                "the train split of {} has no words to subset",
                docs_dir.display()
            )
            .into());
        }
        let budget = budget(params, total)?;
        let selection = select(params, &docs, &counts, &train, budget)?;
        let mut writer = DocumentsWriter::create(ctx.out_dir.join(DOCUMENTS_FILE))?;
        for (i, doc) in docs.iter().enumerate() {
            if doc.split != Split::Train || selection.chosen[i] {
                writer.push(doc.doc_id, doc.split, &doc.text)?;
            }
            ctx.progress.advance(1);
        }
        writer.finish()?;
        Ok(selection.stats(params, budget, total, &docs, &counts))
    }
}

/// Word counts per document, taken from `doc_stats` after checking it describes `docs`.
fn word_counts(
    docs: &[Document],
    stats: &[ausa_artifacts::DocStat],
) -> Result<Vec<u64>, StageError> {
    if stats.len() != docs.len() || stats.iter().zip(docs).any(|(s, d)| s.doc_id != d.doc_id) {
        return Err(
            "the doc_stats input does not describe the documents input (different \
                    documents); connect both to the same upstream"
                .into(),
        );
    }
    Ok(stats.iter().map(|s| s.words).collect())
}

fn budget(params: &SubsetParams, total: u64) -> Result<u64, StageError> {
    let budget = if params.words > 0 {
        params.words
    } else {
        (params.fraction * total as f64).round() as u64
    };
    if budget > total {
        return Err(format!(
            "the budget of {budget} words is larger than the train split ({total} words); \
             lower `words` or use `fraction`"
        )
        .into());
    }
    Ok(budget.max(1))
}

/// Which train documents were chosen, and how.
struct Selection {
    chosen: Vec<bool>,
    strata: Vec<Vec<usize>>,
    divergence_before: f64,
    divergence_after: f64,
    swaps: u64,
}

fn select(
    params: &SubsetParams,
    docs: &[Document],
    counts: &[u64],
    train: &[usize],
    budget: u64,
) -> Result<Selection, StageError> {
    let seed = params.seed;
    let strata = stratify(train, counts, params.strata);
    let total: u64 = train.iter().map(|&i| counts[i]).sum();
    let mut chosen = vec![false; docs.len()];
    for (s, stratum) in strata.iter().enumerate() {
        let words: u64 = stratum.iter().map(|&i| counts[i]).sum();
        let target = (budget as f64 * words as f64 / total as f64).round() as u64;
        let mut order = stratum.clone();
        shuffle(&mut order, SplitMix64::for_item(seed, 0x5b5e7, s as u64));
        // Take a document when it fits, or when taking it lands closer to the share
        // than stopping short; keep scanning so shorter documents can fill the gap.
        let mut taken = 0;
        for i in order {
            if taken >= target {
                break;
            }
            let after = taken + counts[i];
            if after <= target || after - target < target - taken {
                chosen[i] = true;
                taken = after;
            }
        }
    }
    if train.iter().all(|&i| chosen[i]) {
        // The whole split: its histogram is the full one by definition, so skip the
        // word-frequency pass (the costliest part of this stage).
        return Ok(Selection {
            chosen,
            strata,
            divergence_before: 0.0,
            divergence_after: 0.0,
            swaps: 0,
        });
    }
    let classes = ClassHistograms::new(docs, train);
    let full = classes.total(train.iter().copied());
    let before = tv_distance(
        &full,
        &classes.total(train.iter().copied().filter(|&i| chosen[i])),
    );
    let mut selection = Selection {
        chosen,
        strata,
        divergence_before: before,
        divergence_after: before,
        swaps: 0,
    };
    selection.swap_towards(params, &classes, &full, counts, budget)?;
    Ok(selection)
}

/// Equal-count length strata of the train documents (sorted by words, then position).
fn stratify(train: &[usize], counts: &[u64], n: usize) -> Vec<Vec<usize>> {
    let mut sorted = train.to_vec();
    sorted.sort_by_key(|&i| (counts[i], i));
    let n = n.min(sorted.len()).max(1);
    (0..n)
        .map(|s| sorted[s * sorted.len() / n..(s + 1) * sorted.len() / n].to_vec())
        .collect()
}

fn shuffle(items: &mut [usize], mut rng: SplitMix64) {
    for i in (1..items.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// Per train document, its word occurrences per frequency class of the full split.
struct ClassHistograms {
    per_doc: HashMap<usize, [u64; CLASSES]>,
}

impl ClassHistograms {
    fn new(docs: &[Document], train: &[usize]) -> ClassHistograms {
        let mut freq: HashMap<&str, u64> = HashMap::new();
        for &i in train {
            for w in docs[i].text.split_whitespace() {
                *freq.entry(w).or_default() += 1;
            }
        }
        let per_doc = train
            .par_iter()
            .map(|&i| {
                let mut h = [0u64; CLASSES];
                for w in docs[i].text.split_whitespace() {
                    let class = 63 - freq[w].leading_zeros() as usize;
                    h[class.min(CLASSES - 1)] += 1;
                }
                (i, h)
            })
            .collect();
        ClassHistograms { per_doc }
    }

    fn total(&self, docs: impl Iterator<Item = usize>) -> [u64; CLASSES] {
        let mut sum = [0u64; CLASSES];
        for i in docs {
            for (s, v) in sum.iter_mut().zip(&self.per_doc[&i]) {
                *s += v;
            }
        }
        sum
    }
}

/// Total variation distance between two histograms, as distributions.
fn tv_distance(a: &[u64; CLASSES], b: &[u64; CLASSES]) -> f64 {
    let (sa, sb) = (
        a.iter().sum::<u64>().max(1) as f64,
        b.iter().sum::<u64>().max(1) as f64,
    );
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 / sa - *y as f64 / sb).abs())
        .sum::<f64>()
        / 2.0
}

impl Selection {
    /// Seeded swaps within strata that bring the histogram closer to the full split's.
    fn swap_towards(
        &mut self,
        params: &SubsetParams,
        classes: &ClassHistograms,
        full: &[u64; CLASSES],
        counts: &[u64],
        budget: u64,
    ) -> Result<(), StageError> {
        let epsilon = params.epsilon;
        let mut rng = SplitMix64::for_item(params.seed, 0x5a4b, 0);
        let mut current = classes.total(self.chosen_train());
        let mut words: u64 = self.chosen_train().map(|i| counts[i]).sum();
        let slack = (budget / 200).max(1);
        for _ in 0..params.max_swaps {
            if self.divergence_after <= epsilon {
                break;
            }
            let stratum = &self.strata[rng.below(self.strata.len() as u64) as usize];
            let a = stratum[rng.below(stratum.len() as u64) as usize];
            let b = stratum[rng.below(stratum.len() as u64) as usize];
            let (out, inn) = match (self.chosen[a], self.chosen[b]) {
                (true, false) => (a, b),
                (false, true) => (b, a),
                _ => continue,
            };
            let new_words = words + counts[inn] - counts[out];
            if new_words.abs_diff(budget) > slack.max(words.abs_diff(budget)) {
                continue;
            }
            let mut candidate = current;
            for (k, c) in candidate.iter_mut().enumerate() {
                *c = *c + classes.per_doc[&inn][k] - classes.per_doc[&out][k];
            }
            let d = tv_distance(full, &candidate);
            if d < self.divergence_after {
                self.chosen[out] = false;
                self.chosen[inn] = true;
                current = candidate;
                words = new_words;
                self.divergence_after = d;
                self.swaps += 1;
            }
        }
        Ok(())
    }

    fn chosen_train(&self) -> impl Iterator<Item = usize> + '_ {
        self.strata
            .iter()
            .flatten()
            .copied()
            .filter(|&i| self.chosen[i])
    }

    fn stats(
        &self,
        params: &SubsetParams,
        budget: u64,
        total: u64,
        docs: &[Document],
        counts: &[u64],
    ) -> Stats {
        let achieved: u64 = self.chosen_train().map(|i| counts[i]).sum();
        let strata: Vec<Value> = self
            .strata
            .iter()
            .map(|s| {
                let picked: Vec<usize> = s.iter().copied().filter(|&i| self.chosen[i]).collect();
                json!({
                    "min_words": s.first().map(|&i| counts[i]),
                    "max_words": s.last().map(|&i| counts[i]),
                    "documents": s.len(),
                    "selected_documents": picked.len(),
                    "words": s.iter().map(|&i| counts[i]).sum::<u64>(),
                    "selected_words": picked.iter().map(|&i| counts[i]).sum::<u64>(),
                })
            })
            .collect();
        let passed = |split: Split| docs.iter().filter(|d| d.split == split).count();
        let mut stats = Stats::new();
        stats.insert("requested_words".into(), json!(budget));
        stats.insert("achieved_words".into(), json!(achieved));
        stats.insert("train_words".into(), json!(total));
        stats.insert(
            "achieved_fraction".into(),
            json!(achieved as f64 / total as f64),
        );
        stats.insert(
            "relative_error".into(),
            json!((achieved as f64 - budget as f64) / budget as f64),
        );
        stats.insert(
            "selected_train_documents".into(),
            json!(self.chosen_train().count()),
        );
        stats.insert(
            "validation_documents".into(),
            json!(passed(Split::Validation)),
        );
        stats.insert("test_documents".into(), json!(passed(Split::Test)));
        stats.insert("strata".into(), Value::Array(strata));
        stats.insert(
            "histogram_divergence_before_swaps".into(),
            json!(self.divergence_before),
        );
        stats.insert("histogram_divergence".into(), json!(self.divergence_after));
        stats.insert("epsilon".into(), json!(params.epsilon));
        stats.insert("swaps".into(), json!(self.swaps));
        stats.insert("seed".into(), json!(params.seed));
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strata_have_equal_counts_and_increasing_lengths() {
        let counts: Vec<u64> = (0..100).map(|i| (i * 37 % 101) as u64).collect();
        let train: Vec<usize> = (0..100).collect();
        let strata = stratify(&train, &counts, 10);
        assert_eq!(strata.len(), 10);
        assert!(strata.iter().all(|s| s.len() == 10));
        for pair in strata.windows(2) {
            assert!(counts[*pair[0].last().unwrap()] <= counts[pair[1][0]]);
        }
    }

    #[test]
    fn tv_distance_is_zero_for_proportional_histograms_and_one_for_disjoint() {
        let mut a = [0u64; CLASSES];
        let mut b = [0u64; CLASSES];
        a[1] = 2;
        a[3] = 6;
        b[1] = 1;
        b[3] = 3;
        assert!(tv_distance(&a, &b).abs() < 1e-12);
        let mut c = [0u64; CLASSES];
        c[5] = 1;
        assert!((tv_distance(&a, &c) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn shuffle_is_a_seeded_permutation() {
        let mut a: Vec<usize> = (0..50).collect();
        let mut b = a.clone();
        shuffle(&mut a, SplitMix64::new(7));
        shuffle(&mut b, SplitMix64::new(7));
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(a, sorted);
    }
}
