//! Properties of the set stages: bank CSR invariants, routing causality, MinHash
//! accuracy and thread-count determinism.

use std::collections::BTreeSet;

use ausa_artifacts::{BankShape, BanksFile, BanksWriter};
use ausa_stages::banks::{bank, windows, Windows};
use ausa_stages::minhash::{estimated_jaccard, hash, sign_all, MinHasher};
use ausa_stages::routing::route_layout;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn banks_cover_every_token_with_sorted_distinct_sets(
        ids in prop::collection::vec(0u32..50, 1..300),
        window in 1u32..70,
        stride_frac in 0.0f64..1.0,
        leading in any::<bool>(),
    ) {
        let stride = 1 + ((window - 1) as f64 * stride_frac) as u32;
        let shape = Windows { window, stride, leading };
        let sets = shape.bank(&ids);
        if !leading {
            prop_assert_eq!(&sets, &bank(&ids, window, stride));
        }
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

    /// Causal tokens see exactly the sets ending at or before `t + 1`, and with top-k
    /// only the `k` most recent of them (the last ones in bank order).
    #[test]
    fn causal_routing_sees_the_most_recent_visible_sets(
        len in 1u32..300,
        window in 1u32..70,
        stride_frac in 0.0f64..1.0,
        topk in 0u32..5,
        leading in any::<bool>(),
    ) {
        let stride = 1 + ((window - 1) as f64 * stride_frac) as u32;
        let shape = Windows { window, stride, leading };
        let ends: Vec<u32> = shape.spans(len).iter().map(|w| w.1).collect();
        let routing = route_layout(&ends, true, topk);
        prop_assert_eq!(routing.token_offsets.len() - 1, len as usize);
        for t in 0..len as usize {
            let cands = &routing.sets[routing.token_offsets[t] as usize..routing.token_offsets[t + 1] as usize];
            let visible: Vec<u32> = (0..ends.len() as u32)
                .filter(|&j| ends[j as usize] <= t as u32 + 1)
                .collect();
            let keep = if topk == 0 { visible.len() } else { visible.len().min(topk as usize) };
            prop_assert_eq!(cands, &visible[visible.len() - keep..], "token {}", t);
        }
    }

    /// With the leading partial windows every position from `stride - 1` on sees a
    /// set (without them, from `window - 1` on), and the extra sets are exactly the
    /// prefixes `[0, k * stride)` below the first window's end.
    #[test]
    fn leading_windows_give_every_position_from_stride_minus_one_a_set(
        len in 1u32..300,
        window in 1u32..70,
        stride_frac in 0.0f64..1.0,
    ) {
        let stride = 1 + ((window - 1) as f64 * stride_frac) as u32;
        let full = windows(len, window, stride);
        let with = Windows { window, stride, leading: true }.spans(len);
        let extra = &with[..with.len() - full.len()];
        prop_assert_eq!(&with[extra.len()..], &full[..]);
        let want: Vec<(u32, u32)> = (1..).map(|k| (0, k * stride)).take_while(|s| s.1 < window.min(len)).collect();
        prop_assert_eq!(extra, &want[..]);
        for (spans, first_seen) in [(&full, window.min(len)), (&with, stride.min(len))] {
            let ends: Vec<u32> = spans.iter().map(|w| w.1).collect();
            let routing = route_layout(&ends, true, 0);
            let blind = (0..len as usize)
                .filter(|&t| routing.token_offsets[t] == routing.token_offsets[t + 1])
                .count() as u32;
            prop_assert_eq!(blind, first_seen - 1, "positions without a visible set");
        }
    }

    /// Non-causal tokens see every set of their sequence, whatever `router_topk`.
    #[test]
    fn non_causal_routing_sees_every_set(
        len in 1u32..300,
        window in 1u32..70,
        stride_frac in 0.0f64..1.0,
        topk in 0u32..5,
    ) {
        let stride = 1 + ((window - 1) as f64 * stride_frac) as u32;
        let ends: Vec<u32> = windows(len, window, stride).iter().map(|w| w.1).collect();
        let routing = route_layout(&ends, false, topk);
        let all: Vec<u32> = (0..ends.len() as u32).collect();
        prop_assert_eq!(routing.token_offsets.len() - 1, len as usize);
        for t in 0..len as usize {
            let cands = &routing.sets[routing.token_offsets[t] as usize..routing.token_offsets[t + 1] as usize];
            prop_assert_eq!(cands, &all[..], "token {}", t);
        }
    }

    /// The vectorized kernel against the definition: value `i` of a set's signature
    /// is the minimum of `hash(seed, i, atom)` over its atoms (`u32::MAX` when empty),
    /// for 16- and 32-bit atom ids.
    #[test]
    fn signatures_match_the_plain_definition(
        sets in prop::collection::vec(prop::collection::btree_set(0u32..70_000, 0..30), 1..20),
        wide in any::<bool>(),
        k in 32usize..70,
        seed in any::<u64>(),
    ) {
        let vocab = if wide { 70_000 } else { 1 << 16 };
        let sets: Vec<Vec<u32>> = sets
            .into_iter()
            .map(|s| s.into_iter().filter(|&a| a < vocab).collect())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("banks.arrow");
        let shape = BankShape { vocab_size: vocab, window: 30, stride: 30 };
        let mut writer = BanksWriter::new(&path, shape);
        for (j, atoms) in sets.iter().enumerate() {
            writer.push_set(atoms, j as u32, j as u32 + 1).unwrap();
        }
        writer.end_sequence();
        writer.finish().unwrap();
        let banks = BanksFile::open(&path).unwrap();
        prop_assert_eq!(banks.values().width().bits(), if wide { 32 } else { 16 });
        let (signatures, sizes) = sign_all(&banks, &MinHasher::new(vocab, k, seed)).unwrap();
        for (j, atoms) in sets.iter().enumerate() {
            prop_assert_eq!(sizes[j] as usize, atoms.len());
            for i in 0..k {
                let want = atoms.iter().map(|&a| hash(seed, i as u64, u64::from(a))).min();
                prop_assert_eq!(signatures[j * k + i], want.unwrap_or(u32::MAX));
            }
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
        hasher.sign(&a.iter().copied().collect::<Vec<_>>(), &mut sa);
        hasher.sign(&b.iter().copied().collect::<Vec<_>>(), &mut sb);
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
    // 400 sequences of 7 sets: several parallel runs of sets.
    let ids: Vec<u32> = (0..256 * 400).map(|i| (i * 7919 % 1000) as u32).collect();
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
        pool.install(|| sign_all(&banks, &hasher).unwrap())
    };
    let one = sign(1);
    assert_eq!(one, sign(2));
    assert_eq!(one.1.len(), banks.num_sets());
    for (j, signature) in one.0.chunks(128).enumerate() {
        let mut alone = vec![0; 128];
        hasher.sign(&banks.set(j).unwrap().to_vec(), &mut alone);
        assert_eq!(signature, alone, "set {j}");
    }
}

/// Writes the four set files of `ids` cut into sequences of `len` tokens (window 8,
/// stride 4, k 32) into `dir`; returns their paths.
fn write_set_files(dir: &std::path::Path, ids: &[u32], len: usize) -> ausa_artifacts::SetPaths {
    use ausa_artifacts::{write_routing, write_signatures, SetPaths, TokensWriter};
    let paths = SetPaths {
        sequences: dir.join("sequences.arrow"),
        banks: dir.join("banks.arrow"),
        signatures: dir.join("minhash.arrow"),
        routing: dir.join("routing.arrow"),
    };
    let mut sequences = TokensWriter::create(&paths.sequences, 100).unwrap();
    let shape = BankShape {
        vocab_size: 100,
        window: 8,
        stride: 4,
    };
    let mut writer = BanksWriter::new(&paths.banks, shape);
    for (i, seq) in ids.chunks(len).enumerate() {
        sequences.push_document((i * len) as u64, seq).unwrap();
        for (atoms, start, end) in bank(seq, 8, 4) {
            writer.push_set(&atoms, start, end).unwrap();
        }
        writer.end_sequence();
    }
    sequences.finish().unwrap();
    writer.finish().unwrap();
    let banks = BanksFile::open(&paths.banks).unwrap();
    let (sigs, sizes) = sign_all(&banks, &MinHasher::new(100, 32, 1)).unwrap();
    write_signatures(&paths.signatures, 32, 1, sigs, sizes).unwrap();
    let routing = ausa_stages::routing::route_banks(&banks, true, 0);
    write_routing(&paths.routing, &routing).unwrap();
    paths
}

#[test]
fn gather_returns_a_rebased_batch_with_batch_set_indices() {
    use ausa_artifacts::SetArtifacts;
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<u32> = (0..32 * 5).map(|i| (i * 37 % 100) as u32).collect();
    let paths = write_set_files(dir.path(), &ids, 32);
    let sets = SetArtifacts::open(&paths).unwrap();
    let batch = sets.gather(&[3, 4]).unwrap();
    assert_eq!(batch.tokens, ids[3 * 32..5 * 32]);
    assert_eq!(batch.seq_tokens, vec![0, 32, 64]);
    let expected: Vec<_> = [3, 4]
        .iter()
        .flat_map(|&s| bank(&ids[s * 32..(s + 1) * 32], 8, 4))
        .collect();
    assert_eq!(batch.sizes.len(), expected.len());
    assert_eq!(batch.seq_sets, vec![0, 7, 14]);
    for (j, (atoms, start, end)) in expected.iter().enumerate() {
        let range = batch.set_offsets[j] as usize..batch.set_offsets[j + 1] as usize;
        assert_eq!(&batch.values[range], &atoms[..]);
        assert_eq!(batch.sizes[j] as usize, atoms.len());
        assert_eq!(&batch.spans[2 * j..2 * j + 2], &[*start, *end]);
    }
    assert_eq!(batch.signatures.len(), batch.sizes.len() * 32);
    assert_eq!(batch.token_offsets.len(), 65);
    for t in 0..64 {
        let seq = t / 32;
        let own = batch.seq_sets[seq] as u32..batch.seq_sets[seq + 1] as u32;
        let cands =
            &batch.candidates[batch.token_offsets[t] as usize..batch.token_offsets[t + 1] as usize];
        let visible = (own.start..own.end)
            .filter(|&c| batch.spans[2 * c as usize + 1] as usize <= t % 32 + 1)
            .collect::<Vec<_>>();
        assert_eq!(cands, &visible[..], "token {t}");
    }
}

#[test]
fn gather_serves_a_short_last_batch_and_rejects_unknown_sequences() {
    use ausa_artifacts::SetArtifacts;
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<u32> = (0..32 * 5).map(|i| (i * 11 % 100) as u32).collect();
    let sets = SetArtifacts::open(&write_set_files(dir.path(), &ids, 32)).unwrap();
    let batches: Vec<_> = [&[0usize, 1][..], &[2, 3], &[4]]
        .iter()
        .map(|b| sets.gather(b).unwrap())
        .collect();
    assert_eq!(batches[2].seq_tokens, vec![0, 32]);
    assert_eq!(batches[2].tokens, ids[128..]);
    let err = sets.gather(&[5]).unwrap_err().to_string();
    assert!(err.contains("no sequence 5"), "{err}");
}

#[test]
fn files_from_different_builds_are_rejected_at_open() {
    use ausa_artifacts::SetArtifacts;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ids: Vec<u32> = (0..32 * 5).map(|i| (i * 13 % 100) as u32).collect();
    let mut paths = write_set_files(a.path(), &ids, 32);
    let other = write_set_files(b.path(), &ids[..32 * 4], 32);
    paths.routing = other.routing;
    let err = SetArtifacts::open(&paths).unwrap_err().to_string();
    assert!(
        err.contains("routing.arrow") && err.contains("different builds"),
        "{err}"
    );
}

/// Known values of the hash family (computed independently with the Python reference
/// in tests/interop/sets_check.py, which checks the same vectors): a change of the
/// mixer's constants or shifts fails here.
#[test]
fn the_minhash_family_matches_known_vectors() {
    let vectors: [((u64, u64, u64), u32); 5] = [
        ((0, 0, 1), 2181674112),
        ((0, 1, 0), 3793791033),
        ((7, 3, 12345), 390360134),
        ((1 << 63, 255, u32::MAX as u64), 1301945997),
        ((123456789, 127, 65535), 2112175662),
    ];
    for ((seed, i, u), want) in vectors {
        assert_eq!(hash(seed, i, u), want, "h_{i}({u}) with seed {seed}");
    }
    // The kernel too: the signature of {1, 5, 77} with seed 3.
    let hasher = MinHasher::new(100, 32, 3);
    let mut signature = vec![0; 32];
    hasher.sign(&[1, 5, 77], &mut signature);
    assert_eq!(
        signature[..4],
        [164134075, 711842570, 1478246242, 1111920719]
    );
}
