//! Histograms of counts (sets per sequence, atoms per set): the one bucketing the
//! `banks` stage's manifest statistics and the trainer's `run_meta.json` share.
//!
//! A histogram is a list of `(le, count)` pairs, smallest bucket first: bucket `le`
//! counts the values `v` with `previous le < v <= le` under the bucketing
//! ([`Buckets`]). Deterministic: the same values give the same list in any order.

use std::collections::BTreeMap;

/// How values map to buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buckets {
    /// Powers of two: `v` goes to the smallest power of two `>= max(v, 1)`.
    PowerOfTwo,
    /// Equal widths: `v` goes to `ceil(v / width) * width` (`width` 1: one bucket per
    /// integer; 0 stays 0).
    Width(u64),
}

impl Buckets {
    /// Integer buckets of the smallest width that keeps values up to `max` within
    /// `max_bins` buckets (width 1 when `max <= max_bins`).
    pub fn bounded(max: u64, max_bins: u64) -> Buckets {
        Buckets::Width(max.div_ceil(max_bins.max(1)).max(1))
    }

    /// The bucket (its upper bound, inclusive) of `v`.
    pub fn upper(self, v: u64) -> u64 {
        match self {
            Buckets::PowerOfTwo => v.max(1).next_power_of_two(),
            Buckets::Width(w) => {
                let w = w.max(1);
                v.div_ceil(w) * w
            }
        }
    }

    /// Width of a bucket for [`Buckets::Width`]; `None` for powers of two.
    pub fn width(self) -> Option<u64> {
        match self {
            Buckets::PowerOfTwo => None,
            Buckets::Width(w) => Some(w.max(1)),
        }
    }
}

/// Counts of `values` per bucket, as `(le, count)` pairs, smallest first; empty buckets
/// are left out.
pub fn histogram(values: impl IntoIterator<Item = u64>, buckets: Buckets) -> Vec<(u64, u64)> {
    let mut counts = BTreeMap::<u64, u64>::new();
    for v in values {
        *counts.entry(buckets.upper(v)).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// The lengths of the ranges that `offsets` delimit (`offsets[i + 1] - offsets[i]`):
/// sets per sequence from a bank's `seq_offsets`, atoms per set from its `set_offsets`.
pub fn lengths(offsets: &[u64]) -> impl Iterator<Item = u64> + '_ {
    offsets.windows(2).map(|w| w[1] - w[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powers_of_two_and_widths() {
        let v = [0, 1, 2, 3, 4, 5, 8, 9];
        assert_eq!(
            histogram(v, Buckets::PowerOfTwo),
            vec![(1, 2), (2, 1), (4, 2), (8, 2), (16, 1)]
        );
        assert_eq!(
            histogram(v, Buckets::Width(1)),
            vec![
                (0, 1),
                (1, 1),
                (2, 1),
                (3, 1),
                (4, 1),
                (5, 1),
                (8, 1),
                (9, 1)
            ]
        );
        assert_eq!(
            histogram(v, Buckets::Width(4)),
            vec![(0, 1), (4, 4), (8, 2), (12, 1)]
        );
        assert_eq!(Buckets::bounded(64, 64), Buckets::Width(1));
        assert_eq!(Buckets::bounded(65, 64), Buckets::Width(2));
        assert_eq!(Buckets::bounded(0, 64), Buckets::Width(1));
        assert_eq!(lengths(&[0, 3, 3, 10]).collect::<Vec<_>>(), vec![3, 0, 7]);
    }
}
