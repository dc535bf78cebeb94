//! Open and gather latency of one split's set artifacts, for `tests/bench/sets.sh`.
//!
//! Usage: `gather_bench SEQUENCES BANKS MINHASH ROUTING [BATCH] [ROUNDS]`. Opens the four
//! files ROUNDS times (each open maps and validates them afresh) and gathers ROUNDS
//! batches of BATCH pseudo-random sequences (plus the last, short batch); prints one
//! JSON line with the median and worst times in milliseconds and the file sizes.

// A benchmark reports on stdout for the script that runs it.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use ausa_artifacts::{SetArtifacts, SetPaths};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sequences, banks, signatures, routing] = match args.get(..4) {
        Some([a, b, c, d]) => [a, b, c, d].map(PathBuf::from),
        _ => {
            return Err(
                "usage: gather_bench SEQUENCES BANKS MINHASH ROUTING [BATCH] [ROUNDS]".into(),
            )
        }
    };
    let batch: usize = args.get(4).map_or(Ok(32), |a| a.parse())?;
    let rounds: usize = args.get(5).map_or(Ok(50), |a| a.parse())?;
    let paths = SetPaths {
        sequences,
        banks,
        signatures,
        routing,
    };
    let bytes: u64 = [
        &paths.sequences,
        &paths.banks,
        &paths.signatures,
        &paths.routing,
    ]
    .iter()
    .map(|p| std::fs::metadata(p).map(|m| m.len()))
    .sum::<Result<u64, _>>()?;
    let mut opens = Vec::new();
    let mut artifacts = None;
    for _ in 0..rounds {
        let start = Instant::now();
        artifacts = Some(SetArtifacts::open(&paths)?);
        opens.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let artifacts = artifacts.ok_or("ROUNDS must be at least 1")?;
    let n = artifacts.num_sequences();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut gathers = Vec::new();
    let mut tokens = 0;
    for _ in 0..rounds {
        let ids: Vec<usize> = (0..batch)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state % n as u64) as usize
            })
            .collect();
        let start = Instant::now();
        let got = artifacts.gather(&ids)?;
        gathers.push(start.elapsed().as_secs_f64() * 1e3);
        tokens = got.tokens.len();
    }
    let short: Vec<usize> = (n - (n % batch).max(1)..n).collect();
    let last = artifacts.gather(&short)?;
    println!(
        "{{\"sequences\": {n}, \"artifact_bytes\": {bytes}, \"open_ms_median\": {:.3}, \
         \"open_ms_max\": {:.3}, \"batch\": {batch}, \"batch_tokens\": {tokens}, \
         \"gather_ms_median\": {:.3}, \"gather_ms_max\": {:.3}, \"last_batch_sequences\": {}}}",
        median(&mut opens),
        opens.iter().cloned().fold(0.0, f64::max),
        median(&mut gathers),
        gathers.iter().cloned().fold(0.0, f64::max),
        last.seq_tokens.len() - 1
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
