//! Round trips and corruption handling of the set-artifact formats (banks,
//! signatures, routing).

use std::path::Path;

use ausa_artifacts::{
    write_routing, write_signatures, BankShape, BanksFile, BanksWriter, Routing, RoutingFile,
    RoutingLayout, SignaturesFile,
};
use proptest::prelude::*;

/// A bank: sequences of sets, each set's atoms and `[start, end)` with growing ends.
type Bank = Vec<Vec<(Vec<u32>, u32, u32)>>;

/// Banks whose spans are windows of 1 to 8 tokens with ends advancing by 0 to 3: spans
/// longer than one token that overlap, as the `banks` stage writes them.
fn bank_strategy(vocab: u32) -> impl Strategy<Value = Bank> {
    let set = (
        prop::collection::btree_set(0..vocab, 1..8),
        0u32..4,
        1u32..9,
    );
    prop::collection::vec(prop::collection::vec(set, 0..5), 0..6).prop_map(|seqs| {
        seqs.into_iter()
            .map(|sets| {
                let mut end = 1;
                sets.into_iter()
                    .map(|(atoms, step, width)| {
                        end += step;
                        (atoms.into_iter().collect(), end.saturating_sub(width), end)
                    })
                    .collect()
            })
            .collect()
    })
}

fn write_bank(path: &Path, vocab: u32, bank: &Bank) {
    let shape = BankShape {
        vocab_size: vocab,
        window: 4,
        stride: 2,
    };
    let mut writer = BanksWriter::new(path, shape);
    for seq in bank {
        for (atoms, start, end) in seq {
            writer.push_set(atoms, *start, *end).unwrap();
        }
        writer.end_sequence();
    }
    writer.finish().unwrap();
}

fn read_bank(file: &BanksFile) -> Bank {
    (0..file.num_sequences())
        .map(|s| {
            file.sets_of(s)
                .unwrap()
                .map(|i| {
                    let span = &file.spans()[2 * i..2 * i + 2];
                    (file.set(i).unwrap().to_vec(), span[0], span[1])
                })
                .collect()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn generated_banks_have_overlapping_windows(bank in bank_strategy(50)) {
        // The strategy itself: spans are never empty and can be longer than 1.
        for (_, start, end) in bank.iter().flatten() {
            prop_assert!(start < end);
        }
    }

    #[test]
    fn banks_round_trip_deterministically(bank in bank_strategy(70_000)) {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.arrow"), dir.path().join("b.arrow"));
        write_bank(&a, 70_000, &bank);
        write_bank(&b, 70_000, &bank);
        prop_assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let file = BanksFile::open(&a).unwrap();
        prop_assert_eq!(read_bank(&file), bank);
        let offsets = file.set_offsets();
        prop_assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn damaged_banks_are_errors_not_panics(bank in bank_strategy(300), cut in 0.0f64..1.0, flip in any::<(usize, u8)>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("banks-train.arrow");
        write_bank(&path, 300, &bank);
        let bytes = std::fs::read(&path).unwrap();
        let truncated = &bytes[..(bytes.len() as f64 * cut) as usize];
        std::fs::write(&path, truncated).unwrap();
        let err = BanksFile::open(&path).unwrap_err();
        prop_assert!(err.to_string().contains("banks-train.arrow"), "{}", err);
        let mut flipped = bytes.clone();
        let at = flip.0 % flipped.len();
        flipped[at] ^= flip.1.max(1);
        std::fs::write(&path, &flipped).unwrap();
        // A flip is either rejected with an error naming the file, or lands where no
        // check can see it (padding, an atom id still in range): never a panic.
        if let Err(err) = BanksFile::open(&path).map(|f| read_bank(&f)) {
            prop_assert!(err.to_string().contains("banks-train.arrow"), "{}", err);
        }
    }
}

#[test]
fn signatures_round_trip_and_reject_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("minhash-train.arrow");
    let sigs: Vec<u32> = (0..5 * 32).collect();
    write_signatures(&path, 32, 7, sigs.clone(), vec![1, 2, 3, 4, 5]).unwrap();
    let file = SignaturesFile::open(&path).unwrap();
    assert_eq!((file.k(), file.seed(), file.num_sets()), (32, 7, 5));
    assert_eq!(file.signatures(), &sigs[..]);
    assert_eq!(file.sizes(), &[1, 2, 3, 4, 5]);
    let bytes = std::fs::read(&path).unwrap();
    for cut in (0..bytes.len()).step_by(7) {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let err = SignaturesFile::open(&path).unwrap_err();
        assert!(err.to_string().contains("minhash-train.arrow"), "{err}");
    }
}

fn two_layouts() -> Routing {
    Routing {
        causal: true,
        topk: 0,
        sequences: 9,
        layouts: vec![
            RoutingLayout {
                ends: vec![2, 3],
                token_offsets: vec![0, 0, 1, 3],
                sets: vec![0, 0, 1],
            },
            RoutingLayout {
                ends: vec![1],
                token_offsets: vec![0, 1],
                sets: vec![0],
            },
        ],
    }
}

#[test]
fn routing_round_trips_and_rejects_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing-train.arrow");
    let routing = two_layouts();
    write_routing(&path, &routing).unwrap();
    let file = RoutingFile::open(&path).unwrap();
    assert!(file.causal());
    assert_eq!((file.num_sequences(), file.num_layouts()), (9, 2));
    let table = file.layout_of(&[2, 3]).unwrap();
    assert_eq!(table.num_tokens(), 3);
    let rows: Vec<&[u32]> = (0..3).map(|t| table.candidates(t)).collect();
    assert_eq!(rows, vec![&[][..], &[0][..], &[0, 1][..]]);
    assert_eq!(file.layout_of(&[1]).unwrap().candidates(0), &[0]);
    assert!(file.layout_of(&[2]).is_none());
    let bytes = std::fs::read(&path).unwrap();
    for cut in (0..bytes.len()).step_by(5) {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        assert!(RoutingFile::open(&path).is_err());
    }
}

#[test]
fn routing_rejects_tables_that_break_causality_or_name_missing_sets() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routing-train.arrow");
    let mut future = two_layouts();
    future.layouts[0].sets = vec![1, 0, 1];
    let mut missing = two_layouts();
    missing.layouts[1].sets = vec![4];
    let mut short = two_layouts();
    short.layouts[0].token_offsets.pop();
    for (bad, want) in [
        (future, "token 1 to set 1"),
        (missing, "set 4"),
        (short, "2 token positions"),
    ] {
        write_routing(&path, &bad).unwrap();
        let err = RoutingFile::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("routing-train.arrow") && err.contains(want),
            "{err}"
        );
    }
}

/// Flips every byte of `path` in turn (xor `mask`) and opens it with `open`: any
/// outcome but a panic is fine (a flip in padding or a value changes nothing the
/// reader can see), and an error names the file.
fn flip_every_byte<T>(
    path: &Path,
    mask: u8,
    open: impl Fn(&Path) -> Result<T, ausa_artifacts::ArtifactError>,
) {
    let bytes = std::fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    for at in 0..bytes.len() {
        let mut flipped = bytes.clone();
        flipped[at] ^= mask;
        std::fs::write(path, &flipped).unwrap();
        if let Err(err) = open(path) {
            assert!(err.to_string().contains(name), "byte {at}: {err}");
        }
    }
}

#[test]
fn damaged_signatures_and_routing_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let sigs = dir.path().join("minhash-train.arrow");
    write_signatures(
        &sigs,
        32,
        7,
        (0..3 * 32).collect::<Vec<u32>>(),
        vec![4, 5, 6],
    )
    .unwrap();
    let routing = dir.path().join("routing-train.arrow");
    write_routing(&routing, &two_layouts()).unwrap();
    for mask in [0x01, 0x80, 0xFF] {
        flip_every_byte(&sigs, mask, |p| SignaturesFile::open(p).map(|_| ()));
        flip_every_byte(&routing, mask, |p| RoutingFile::open(p).map(|_| ()));
    }
}
