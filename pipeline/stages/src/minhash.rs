//! The `minhash` stage kind: `k` MinHash values and the exact size of every set,
//! written as `minhash-<split>.arrow` ([`ausa_artifacts::signatures`]).
//!
//! The hash family is `h_i(u) = mix(seed, i, u)` (a SplitMix64 finalizer, top 32
//! bits). Every atom's `k` values are computed once into a vocab x k table, so a
//! set's signature is the element-wise minimum of its atoms' rows: a loop the
//! compiler vectorizes, run in parallel over sets. Output rows are written in set
//! order, so the bytes do not depend on the thread count. Parameters owned here:
//! `minhash_k` (32..=256) and `seed`.

use std::path::Path;

use ausa_artifacts::{banks_path, minhash_path, write_signatures, BanksFile, Split};
use ausa_dag::{
    InputSlot, ParamDefault, ParamSpec, ParamType, Stage, StageContext, StageError, Stats,
};
use rayon::prelude::*;
use serde_json::{json, Value};

static INPUTS: [InputSlot; 1] = [InputSlot {
    name: "banks",
    kinds: &["banks"],
    doc: "the set banks to sign",
}];

static PARAMS: [ParamSpec; 2] = [
    ParamSpec {
        name: "minhash_k",
        ty: ParamType::Int { min: 32, max: 256 },
        default: ParamDefault::Int(128),
        doc: "hash functions (signature values) per set",
    },
    ParamSpec {
        name: "seed",
        ty: ParamType::Int {
            min: 0,
            max: i64::MAX,
        },
        default: ParamDefault::Int(0),
        doc: "seed of the hash family",
    },
];

/// Sets per parallel task.
const CHUNK_SETS: usize = 1024;

/// The `minhash` stage kind (input `banks`; writes `minhash-<split>.arrow`).
#[derive(Debug, Default, Clone, Copy)]
pub struct MinHashStage;

impl Stage for MinHashStage {
    fn kind(&self) -> &'static str {
        "minhash"
    }

    fn salt(&self) -> &'static str {
        "1"
    }

    fn doc(&self) -> &'static str {
        "Signs every set of the banks with minhash_k seeded hash functions over atom ids \
         (u32 values) and records its exact size. Writes minhash-<split>.arrow, one row per \
         set in bank order."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let k = ctx.params.int("minhash_k")? as usize;
        let seed = ctx.params.int("seed")? as u64;
        let dir = &ctx.input("banks")?.dir;
        let mut splits = serde_json::Map::new();
        for split in Split::ALL {
            let path = banks_path(dir, split);
            if path.exists() {
                let out = minhash_path(ctx.out_dir, split);
                splits.insert(split.as_str().into(), sign_split(&path, &out, k, seed)?);
            }
        }
        let mut stats = Stats::new();
        stats.insert("minhash_k".into(), json!(k));
        stats.insert("seed".into(), json!(seed));
        stats.insert("splits".into(), Value::Object(splits));
        Ok(stats)
    }
}

/// The hash family's table: `k` values per atom, row-major.
pub struct MinHasher {
    k: usize,
    table: Vec<u32>,
}

impl MinHasher {
    /// Hashes every atom below `vocab_size` once.
    pub fn new(vocab_size: u32, k: usize, seed: u64) -> MinHasher {
        let table = (0..vocab_size as u64)
            .flat_map(|u| (0..k as u64).map(move |i| hash(seed, i, u)))
            .collect();
        MinHasher { k, table }
    }

    /// Hashes per signature.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Writes the signature of `atoms` (each below the vocabulary size) into `out`
    /// (`k` values); an empty set signs as all `u32::MAX`.
    pub fn sign(&self, atoms: impl Iterator<Item = u32>, out: &mut [u32]) {
        out.fill(u32::MAX);
        for atom in atoms {
            let start = atom as usize * self.k;
            let row = &self.table[start..start + self.k];
            for (o, &h) in out.iter_mut().zip(row) {
                *o = (*o).min(h);
            }
        }
    }
}

/// `h_i(u)`: SplitMix64's finalizer over the seed, the function index and the atom.
pub fn hash(seed: u64, i: u64, u: u64) -> u32 {
    let mut z = seed
        .wrapping_add(i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(u.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 32) as u32
}

/// The estimated Jaccard similarity: the fraction of equal signature values.
pub fn estimated_jaccard(a: &[u32], b: &[u32]) -> f64 {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count();
    equal as f64 / a.len().max(1) as f64
}

/// Signs every set of `banks` in parallel; returns the signatures (row-major) and sizes.
pub fn sign_all(banks: &BanksFile, hasher: &MinHasher) -> (Vec<u32>, Vec<u32>) {
    let k = hasher.k();
    let n = banks.num_sets();
    let mut signatures = vec![0u32; n * k];
    signatures
        .par_chunks_mut(CHUNK_SETS * k)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, out) in chunk.chunks_mut(k).enumerate() {
                let set = banks
                    .set(c * CHUNK_SETS + j)
                    .unwrap_or(ausa_artifacts::TokenIds::U32(&[]));
                hasher.sign(set.iter(), out);
            }
        });
    let offsets = banks.set_offsets();
    let sizes = offsets.windows(2).map(|w| (w[1] - w[0]) as u32).collect();
    (signatures, sizes)
}

fn sign_split(path: &Path, out: &Path, k: usize, seed: u64) -> Result<Value, StageError> {
    let banks = BanksFile::open(path)?;
    let hasher = MinHasher::new(banks.shape().vocab_size, k, seed);
    if let Some(bad) = banks
        .values()
        .iter()
        .find(|&a| a >= banks.shape().vocab_size)
    {
        return Err(format!(
            "`{}` has atom id {bad} beyond its vocabulary",
            path.display()
        )
        .into());
    }
    let (signatures, sizes) = sign_all(&banks, &hasher);
    write_signatures(out, k as u32, seed, signatures, sizes)?;
    Ok(json!({ "sets": banks.num_sets() }))
}
