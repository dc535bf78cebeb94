//! In-memory sets for tests and examples: windowed banks, a simple seeded MinHash
//! family and the causal route mask, built from token ids in plain Rust.
//!
//! This is *not* the pipeline's implementation (the `banks`, `minhash` and `routing`
//! stages are): it exists so that kernel and model tests can change tokens and rebuild
//! the matching set structure without a store. Same layout rules as the stages: set `s`
//! of a sequence covers `[s * stride, s * stride + window)` (full windows only), its atoms
//! are the sorted distinct ids, and token `t` routes to sets with `end <= t + 1`.

use tch::{Device, Kind, Tensor};

use crate::SetInputs;

/// A bank shape for [`sets`].
#[derive(Debug, Clone, Copy)]
pub struct ToyShape {
    /// Tokens per set window.
    pub window: usize,
    /// Window step.
    pub stride: usize,
    /// MinHash values per set.
    pub k: usize,
    /// Hash family seed.
    pub seed: u64,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `k` MinHash values of the set `atoms` under the toy hash family.
pub fn signature(atoms: &[u32], shape: ToyShape) -> Vec<u32> {
    (0..shape.k as u64)
        .map(|i| {
            atoms
                .iter()
                .map(|&u| splitmix(shape.seed ^ (i << 32) ^ u64::from(u)) as u32)
                .min()
                .unwrap_or(u32::MAX)
        })
        .collect()
}

/// The set inputs of equal-length sequences `tokens` (each `L` ids), on `device`.
pub fn sets(tokens: &[Vec<u32>], shape: ToyShape, device: Device) -> SetInputs {
    let (mut seq_sets, mut sigs, mut sizes) = (vec![0i64], vec![], vec![]);
    let (mut starts, mut ends) = (vec![], vec![]);
    let (mut values, mut set_offsets) = (vec![], vec![0i64]);
    let len = tokens.first().map_or(0, Vec::len);
    let mut per_seq = 0;
    for seq in tokens {
        let mut count = 0;
        let mut start = 0;
        while start + shape.window <= seq.len() {
            let mut atoms = seq[start..start + shape.window].to_vec();
            atoms.sort_unstable();
            atoms.dedup();
            sigs.extend(signature(&atoms, shape).into_iter().map(i64::from));
            sizes.push(atoms.len() as i64);
            starts.push(start as i64);
            ends.push((start + shape.window) as i64);
            values.extend(atoms.iter().map(|&u| i64::from(u)));
            set_offsets.push(values.len() as i64);
            count += 1;
            start += shape.stride;
        }
        per_seq = count;
        seq_sets.push(seq_sets.last().copied().unwrap_or(0) + count as i64);
    }
    // Every sequence has the same length, hence the same set ends.
    let mut route = vec![false; tokens.len() * len * per_seq];
    for b in 0..tokens.len() {
        for t in 0..len {
            for m in 0..per_seq {
                route[(b * len + t) * per_seq + m] = m * shape.stride + shape.window <= t + 1;
            }
        }
    }
    let long = |v: &[i64]| Tensor::from_slice(v).to_device(device);
    let nsets = sizes.len() as i64;
    SetInputs {
        seq_sets: long(&seq_sets),
        signatures: long(&sigs).view([nsets, shape.k as i64]),
        sizes: long(&sizes),
        starts: long(&starts),
        ends: long(&ends),
        values: long(&values),
        set_offsets: long(&set_offsets),
        route: Tensor::from_slice(&route)
            .view([tokens.len() as i64, len as i64, per_seq as i64])
            .to_device(device),
    }
}

/// `[B, L]` `Int64` token tensor of `tokens`.
pub fn token_tensor(tokens: &[Vec<u32>], device: Device) -> Tensor {
    let flat: Vec<i64> = tokens.iter().flatten().map(|&t| i64::from(t)).collect();
    let len = tokens.first().map_or(0, Vec::len) as i64;
    Tensor::from_slice(&flat)
        .view([tokens.len() as i64, len])
        .to_kind(Kind::Int64)
        .to_device(device)
}
