//! Signing throughput of the `minhash` stage's kernel on a real bank file, for
//! `tests/bench/sets.sh` (which runs `rensa` on the same sets in the same run).
//!
//! Usage: `minhash_bench BANKS.arrow [K] [REPEATS]`; prints one JSON line with the
//! best of REPEATS runs (table construction included, file opening excluded).

// A benchmark reports on stdout for the script that runs it.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use ausa_artifacts::BanksFile;
use ausa_stages::minhash::{sign_all, MinHasher};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or("usage: minhash_bench BANKS.arrow [K] [REPEATS]")?;
    let k: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let repeats: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let banks = BanksFile::open(&path)?;
    let mut best = f64::INFINITY;
    let mut checksum = 0u64;
    for _ in 0..repeats {
        let start = Instant::now();
        let hasher = MinHasher::new(banks.shape().vocab_size, k, 0);
        let (signatures, _) = sign_all(&banks, &hasher)?;
        best = best.min(start.elapsed().as_secs_f64());
        checksum = signatures.iter().map(|&v| u64::from(v)).sum();
    }
    let sets = banks.num_sets();
    println!(
        "{{\"tool\": \"ausa\", \"sets\": {sets}, \"atoms\": {}, \"k\": {k}, \"threads\": {}, \
         \"seconds\": {best:.4}, \"sets_per_s\": {:.0}, \"checksum\": {checksum}}}",
        banks.values().len(),
        rayon::current_num_threads(),
        sets as f64 / best
    );
    Ok(())
}
