//! The `minhash` stage kind: `k` MinHash values and the exact size of every set,
//! written as `minhash-<split>.arrow` ([`ausa_artifacts::signatures`]).
//!
//! The hash family is `h_i(u) = mix(seed, i, u)` (a SplitMix64 finalizer, top 32
//! bits). Every atom's `k` values are computed once into a vocab x k table, so a
//! set's signature is the element-wise minimum of its atoms' rows: a loop the
//! compiler vectorizes (compiled for AVX-512, AVX2 and SSE4.1 too, picked at run time),
//! run in parallel over runs of sets. Output rows are written in set order, and integer
//! minima are exact, so the bytes depend neither on the thread count nor on the CPU.
//! Parameters owned here: `minhash_k` (32..=256) and `seed`.

use std::path::Path;

use arrow_buffer::ScalarBuffer;
use ausa_artifacts::{
    banks_path, filled_u32_buffer, minhash_path, write_signatures, BanksFile, Split, TokenIds,
};
use ausa_dag::{InputSlot, StageContext, StageError, Stats, TypedStage};
use rayon::prelude::*;
use serde_json::{json, Value};

static INPUTS: [InputSlot; 1] = [InputSlot {
    name: "banks",
    kinds: &["banks"],
    doc: "the set banks to sign",
}];

ausa_dag::stage_params! {
    /// Parameters of the `minhash` stage.
    pub struct MinHashParams {
        minhash_k: usize = int(32, 256, 128, "hash functions (signature values) per set"),
        seed: u64 = int(0, i64::MAX, 0, "seed of the hash family"),
    }
}

/// Sets per parallel task.
const CHUNK_SETS: usize = 256;

/// The `minhash` stage kind (input `banks`; writes `minhash-<split>.arrow`).
#[derive(Debug, Default, Clone, Copy)]
pub struct MinHashStage;

impl TypedStage for MinHashStage {
    type Params = MinHashParams;

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

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn run(&self, params: &MinHashParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let (k, seed) = (params.minhash_k, params.seed);
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

/// Signature values computed together: an accumulator of this many `u32` fits in
/// vector registers (4 with AVX-512, 8 with AVX2) for a whole set.
const LANES: usize = 64;

/// `LANES` consecutive hash values of one atom, aligned to whole cache lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u32; LANES]);

/// The hash family's table: per atom, `k` values padded to whole `Block`s, atom-major
/// so one set's blocks are contiguous rows the prefetcher follows.
pub struct MinHasher {
    k: usize,
    blocks_per_atom: usize,
    blocks: Vec<Block>,
}

impl MinHasher {
    /// Hashes every atom below `vocab_size` once, in parallel over atoms.
    pub fn new(vocab_size: u32, k: usize, seed: u64) -> MinHasher {
        let blocks_per_atom = k.div_ceil(LANES);
        let mut blocks = vec![Block([0; LANES]); vocab_size as usize * blocks_per_atom];
        blocks
            .par_chunks_mut(blocks_per_atom)
            .enumerate()
            .for_each(|(u, row)| {
                for (b, block) in row.iter_mut().enumerate() {
                    block.0 = std::array::from_fn(|l| hash(seed, (b * LANES + l) as u64, u as u64));
                }
            });
        MinHasher {
            k,
            blocks_per_atom,
            blocks,
        }
    }

    /// Hashes per signature.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Writes the signature of `atoms` (each below the vocabulary size) into `out`
    /// (`k` values); an empty set signs as all `u32::MAX`.
    pub fn sign(&self, atoms: &[u32], out: &mut [u32]) {
        sign_run(self, atoms, &[0, atoms.len() as u64], out);
    }
}

/// Signs consecutive sets: set `j` is `atoms[offsets[j]..offsets[j + 1]]`, its `k`
/// values go to `out[j * k..(j + 1) * k]`. Every atom must be below the hasher's
/// vocabulary and every offset within `atoms`.
///
/// Compiled once per instruction set and dispatched at run time: x86-64's baseline
/// (SSE2) has no unsigned 32-bit minimum, so without AVX2 or SSE4.1 each lane costs
/// several instructions instead of a fraction of one.
#[multiversion::multiversion(targets("x86_64+avx512f", "x86_64+avx2", "x86_64+sse4.1"))]
fn sign_run<A: Copy + Into<u32>>(
    hasher: &MinHasher,
    atoms: &[A],
    offsets: &[u64],
    out: &mut [u32],
) {
    let (k, per_atom) = (hasher.k, hasher.blocks_per_atom);
    for (bounds, signature) in offsets.windows(2).zip(out.chunks_exact_mut(k)) {
        let set = &atoms[bounds[0] as usize..bounds[1] as usize];
        for (b, values) in signature.chunks_mut(LANES).enumerate() {
            // Held in registers across the set: the loop is loads and minima only.
            let mut acc = [u32::MAX; LANES];
            for &atom in set {
                let block = &hasher.blocks[atom.into() as usize * per_atom + b].0;
                for (a, &h) in acc.iter_mut().zip(block) {
                    *a = (*a).min(h);
                }
            }
            values.copy_from_slice(&acc[..values.len()]);
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

/// Signs every set of `banks` in parallel; returns the signatures (row-major, in a
/// buffer that becomes the output array without a copy) and the set sizes.
/// Every atom must be below the vocabulary of `hasher` (see `sign_split`).
pub fn sign_all(
    banks: &BanksFile,
    hasher: &MinHasher,
) -> std::io::Result<(ScalarBuffer<u32>, Vec<u32>)> {
    let k = hasher.k();
    let offsets = banks.set_offsets();
    let signatures = filled_u32_buffer(banks.num_sets() * k, |signatures| {
        signatures
            .par_chunks_mut(CHUNK_SETS * k)
            .enumerate()
            .for_each(|(c, chunk)| {
                let first = c * CHUNK_SETS;
                let bounds = &offsets[first..=first + chunk.len() / k];
                match banks.values() {
                    TokenIds::U16(atoms) => sign_run(hasher, atoms, bounds, chunk),
                    TokenIds::U32(atoms) => sign_run(hasher, atoms, bounds, chunk),
                }
            });
    })?;
    let sizes = offsets.windows(2).map(|w| (w[1] - w[0]) as u32).collect();
    Ok((signatures, sizes))
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
    let (signatures, sizes) = sign_all(&banks, &hasher)?;
    write_signatures(out, k as u32, seed, signatures, sizes)?;
    Ok(json!({ "sets": banks.num_sets() }))
}
