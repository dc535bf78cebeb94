//! How far the MinHash estimate of the set distance is from the exact one, on real banks.
//!
//! For every sequence of a split and every causal pair of its sets (key set `j` before
//! query set `i`, `j < i`), the exact `Delta = |A| + |B| - 2 |A n B|` (a merge of the two
//! sorted atom lists) against the estimate the kernels use: `J = mean_c [sig_c(A) ==
//! sig_c(B)]`, `inter = J / (1 + J) (|A| + |B|)`, `Delta = max(0, |A| + |B| - 2 inter)`
//! (the same formula as `ausa_kernels::minhash_delta`, here in f64 so only the MinHash
//! error shows).
//!
//! Prints CSV rows to stdout: `k,kind,lo,hi,value` where kind `hist` is the count of pairs
//! whose error `estimate - exact` lies in `[lo, hi)`, and kind `stat` gives the summary
//! (`pairs`, `mean` (the signed bias), `mean_abs`, `rmse`, `mean_rel`, `p50_abs`, `p90_abs`, `p99_abs`, `max_abs`,
//! `mean_exact`) in `value` with empty `lo`/`hi`.
//!
//! Usage: minhash_error BANKS.arrow SIGNATURES.arrow
#![allow(clippy::print_stdout, clippy::print_stderr)]

use ausa_artifacts::{BanksFile, SignaturesFile, TokenIds};

/// Histogram bin width in units of Delta, and the covered range `[-RANGE, RANGE)`.
const BIN: f64 = 2.0;
const RANGE: f64 = 40.0;

fn atoms(ids: TokenIds<'_>) -> Vec<u32> {
    (0..ids.len()).filter_map(|i| ids.get(i)).collect()
}

fn common(a: &[u32], b: &[u32]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [banks_path, sigs_path] = args.as_slice() else {
        eprintln!("usage: minhash_error BANKS.arrow SIGNATURES.arrow");
        std::process::exit(2);
    };
    let banks = BanksFile::open(banks_path)?;
    let sigs = SignaturesFile::open(sigs_path)?;
    let k = sigs.k() as usize;
    if sigs.num_sets() != banks.num_sets() {
        return Err(format!(
            "{sigs_path} has {} sets, {banks_path} {}: not the signatures of these banks",
            sigs.num_sets(),
            banks.num_sets()
        )
        .into());
    }
    let signature = |s: usize| &sigs.signatures()[s * k..(s + 1) * k];
    let bins = (2.0 * RANGE / BIN) as usize;
    let mut hist = vec![0u64; bins + 2]; // [below, bins..., above]
    let (mut errors, mut rel_sum, mut exact_sum, mut signed_sum) = (Vec::new(), 0.0, 0.0, 0.0);
    for seq in 0..banks.num_sequences() {
        let range = banks.sets_of(seq).ok_or("sequence index out of range")?;
        let sets: Vec<Vec<u32>> = range
            .clone()
            .map(|s| banks.set(s).map(atoms).ok_or("set index out of range"))
            .collect::<Result<_, _>>()?;
        for (qi, q) in range.clone().enumerate() {
            for (kj, key) in range.clone().enumerate().take(qi) {
                let (a, b) = (&sets[qi], &sets[kj]);
                let size_sum = (a.len() + b.len()) as f64;
                let exact = size_sum - 2.0 * common(a, b) as f64;
                let equal = signature(q)
                    .iter()
                    .zip(signature(key))
                    .filter(|(x, y)| x == y)
                    .count();
                let jaccard = equal as f64 / k as f64;
                let inter = jaccard / (1.0 + jaccard) * size_sum;
                let estimate = (size_sum - 2.0 * inter).max(0.0);
                let error = estimate - exact;
                let bin = ((error + RANGE) / BIN).floor();
                let slot = if bin < 0.0 {
                    0
                } else if bin >= bins as f64 {
                    bins + 1
                } else {
                    bin as usize + 1
                };
                hist[slot] += 1;
                rel_sum += error.abs() / exact.max(1.0);
                exact_sum += exact;
                signed_sum += error;
                errors.push(error.abs());
            }
        }
    }
    let pairs = errors.len();
    if pairs == 0 {
        return Err("no pairs of sets: sequences hold at most one set".into());
    }
    errors.sort_by(f64::total_cmp);
    let quantile = |q: f64| errors[((pairs - 1) as f64 * q).round() as usize];
    let n = pairs as f64;
    println!("k,kind,lo,hi,value");
    for (slot, count) in hist.iter().enumerate() {
        let lo = if slot == 0 {
            f64::NEG_INFINITY
        } else {
            -RANGE + (slot - 1) as f64 * BIN
        };
        let hi = if slot == bins + 1 {
            f64::INFINITY
        } else {
            -RANGE + slot as f64 * BIN
        };
        println!("{k},hist,{lo},{hi},{count}");
    }
    let stats = [
        ("pairs", n),
        ("mean", signed_sum / n),
        ("mean_abs", errors.iter().sum::<f64>() / n),
        (
            "rmse",
            (errors.iter().map(|e| e * e).sum::<f64>() / n).sqrt(),
        ),
        ("mean_rel", rel_sum / n),
        ("p50_abs", quantile(0.5)),
        ("p90_abs", quantile(0.9)),
        ("p99_abs", quantile(0.99)),
        ("max_abs", errors[pairs - 1]),
        ("mean_exact", exact_sum / n),
    ];
    for (name, value) in stats {
        println!("{k},stat,{name},,{value}");
    }
    Ok(())
}
