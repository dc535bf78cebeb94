//! Properties of the set stages: bank CSR invariants, routing causality, MinHash
//! accuracy and thread-count determinism.

use std::collections::BTreeSet;

use ausa_artifacts::{BankShape, BanksFile, BanksWriter, Routing};
use ausa_stages::banks::{bank, windows};
use ausa_stages::minhash::{estimated_jaccard, sign_all, MinHasher};
use ausa_stages::routing::route_sequence;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn banks_cover_every_token_with_sorted_distinct_sets(
        ids in prop::collection::vec(0u32..50, 1..300),
        window in 1u32..70,
        stride_frac in 0.0f64..1.0,
    ) {
        let stride = 1 + ((window - 1) as f64 * stride_frac) as u32;
        let sets = bank(&ids, window, stride);
        let mut covered = vec![false; ids.len()];
        let mut last_end = 0;
        for (atoms, start, end) in &sets {
            prop_assert!(start < end && *end as usize <= ids.len());
            prop_assert!(*end >= last_end);
            last_end = *end;
            prop_assert!(atoms.windows(2).all(|w| w[0] < w[1]));
            let exact: BTreeSet<u32> = ids[*start as usize..*end as usize].iter().copied().collect();
            prop_assert_eq!(atoms.clone(), exact.into_iter().collect::<Vec<_>>());
            covered[*start as usize..*end as usize].iter_mut().for_each(|c| *c = true);
        }
        prop_assert!(covered.iter().all(|&c| c));
    }

    #[test]
    fn causal_routing_never_sees_a_set_ending_after_t_plus_one(
        len in 1u32..300,
        window in 1u32..70,
        stride_frac in 0.0f64..1.0,
        topk in 0u32..5,
    ) {
        let stride = 1 + ((window - 1) as f64 * stride_frac) as u32;
        let ends: Vec<u32> = windows(len, window, stride).iter().map(|w| w.1).collect();
        let mut routing = Routing { seq_offsets: vec![0], token_offsets: vec![0], sets: vec![] };
        route_sequence(&ends, true, topk, &mut routing);
        prop_assert_eq!(routing.token_offsets.len() - 1, len as usize);
        for t in 0..len as usize {
            let cands = &routing.sets[routing.token_offsets[t] as usize..routing.token_offsets[t + 1] as usize];
            prop_assert!(cands.iter().all(|&j| ends[j as usize] <= t as u32 + 1));
            let visible = ends.iter().filter(|&&e| e <= t as u32 + 1).count();
            let want = if topk == 0 { visible } else { visible.min(topk as usize) };
            prop_assert_eq!(cands.len(), want);
        }
    }
}

/// Exact Jaccard similarity of two sets.
fn jaccard(a: &BTreeSet<u32>, b: &BTreeSet<u32>) -> f64 {
    a.intersection(b).count() as f64 / a.union(b).count() as f64
}

#[test]
fn estimated_jaccard_stays_within_the_binomial_bound() {
    let k = 128;
    let hasher = MinHasher::new(4096, k, 42);
    let mut rng = 0x1234_5678_u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let trials = 400;
    let mut outside = 0;
    for _ in 0..trials {
        let shared = (next() % 40) as u32;
        let a: BTreeSet<u32> = (0..40).map(|_| (next() % 4096) as u32).collect();
        let b: BTreeSet<u32> = a
            .iter()
            .take(shared as usize)
            .copied()
            .chain((0..40 - shared).map(|_| (next() % 4096) as u32))
            .collect();
        let (mut sa, mut sb) = (vec![0; k], vec![0; k]);
        hasher.sign(a.iter().copied(), &mut sa);
        hasher.sign(b.iter().copied(), &mut sb);
        let exact = jaccard(&a, &b);
        // The estimate is Binomial(k, J) / k: 4 standard deviations, plus 1/k slack.
        let bound = 4.0 * (exact * (1.0 - exact) / k as f64).sqrt() + 1.0 / k as f64;
        if (estimated_jaccard(&sa, &sb) - exact).abs() > bound {
            outside += 1;
        }
    }
    assert!(
        outside <= trials / 100,
        "{outside} of {trials} estimates outside the bound"
    );
}

#[test]
fn signatures_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("banks-train.arrow");
    let shape = BankShape {
        vocab_size: 1000,
        window: 64,
        stride: 32,
    };
    let mut writer = BanksWriter::new(&path, shape);
    let ids: Vec<u32> = (0..256 * 40).map(|i| (i * 7919 % 1000) as u32).collect();
    for seq in ids.chunks(256) {
        for (atoms, start, end) in bank(seq, 64, 32) {
            writer.push_set(&atoms, start, end).unwrap();
        }
        writer.end_sequence();
    }
    writer.finish().unwrap();
    let banks = BanksFile::open(&path).unwrap();
    let hasher = MinHasher::new(1000, 128, 3);
    let sign = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| sign_all(&banks, &hasher))
    };
    let one = sign(1);
    assert_eq!(one, sign(2));
    assert_eq!(one.1.len(), banks.num_sets());
}

#[test]
fn gather_returns_a_rebased_batch_and_a_short_last_batch() {
    use ausa_artifacts::{write_routing, write_signatures, SetArtifacts};
    let dir = tempfile::tempdir().unwrap();
    let [b, m, r] = ["banks.arrow", "minhash.arrow", "routing.arrow"].map(|f| dir.path().join(f));
    let shape = BankShape {
        vocab_size: 100,
        window: 8,
        stride: 4,
    };
    let mut writer = BanksWriter::new(&b, shape);
    let ids: Vec<u32> = (0..32 * 5).map(|i| (i * 37 % 100) as u32).collect();
    for seq in ids.chunks(32) {
        for (atoms, start, end) in bank(seq, 8, 4) {
            writer.push_set(&atoms, start, end).unwrap();
        }
        writer.end_sequence();
    }
    writer.finish().unwrap();
    let banks = BanksFile::open(&b).unwrap();
    let (sigs, sizes) = sign_all(&banks, &MinHasher::new(100, 32, 1));
    write_signatures(&m, 32, 1, sigs, sizes).unwrap();
    write_routing(
        &r,
        true,
        0,
        ausa_stages::routing::route_banks(&banks, true, 0),
    )
    .unwrap();
    let sets = SetArtifacts::open(&b, &m, &r).unwrap();
    let batch = sets.gather(&[3, 4]).unwrap();
    assert_eq!(batch.seq_sets.len(), 3);
    assert_eq!(batch.set_offsets[0], 0);
    assert_eq!(
        *batch.set_offsets.last().unwrap() as usize,
        batch.values.len()
    );
    assert_eq!(batch.signatures.len(), batch.sizes.len() * 32);
    assert_eq!(batch.seq_tokens, vec![0, 32, 64]);
    assert!(sets.gather(&[5]).is_err());
}
