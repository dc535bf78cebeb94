//! In-memory sets for tests and examples: windowed banks, a simple seeded MinHash
//! family and the causal route mask, built from token ids in plain Rust.
//!
//! This is *not* the pipeline's implementation (the `banks`, `minhash` and `routing`
//! stages are): it exists so that kernel and model tests can change tokens and rebuild
//! the matching set structure without a store. Same layout rules as the stages: full
//! windows `[s * stride, s * stride + window)` (the ones that fit; no clipped tail), with
//! `leading` first the partial windows `[0, k * stride)` below `window` (the `banks`
//! stage's `leading` option), atoms the sorted distinct ids, and token `t` routes to
//! sets with `end <= t + 1` ([`sets_recent`]: only the last `recent` of them, the
//! `routing` stage's `router_topk`).

use tch::{Device, Kind, Tensor};

use crate::SetInputs;

/// `batch` sequences of `len` token ids below `vocab`, pseudo-random from `seed` (a
/// 64-bit LCG: the same ids on every machine, no RNG crate and no global state).
pub fn random_tokens(seed: u64, batch: usize, len: usize, vocab: u32) -> Vec<Vec<u32>> {
    let mut state = seed;
    (0..batch)
        .map(|_| {
            (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % u64::from(vocab.max(1))) as u32
                })
                .collect()
        })
        .collect()
}

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
    /// Also the leading partial windows `[0, k * stride)`, `k * stride < window`.
    pub leading: bool,
}

impl ToyShape {
    /// The spans `[start, end)` of a sequence of `len` tokens, in end order.
    pub fn spans(&self, len: usize) -> Vec<(usize, usize)> {
        let mut spans = Vec::new();
        if self.leading && len >= self.window {
            spans.extend(
                (1..)
                    .map(|k| (0, k * self.stride))
                    .take_while(|&(_, end)| end < self.window),
            );
        }
        let mut start = 0;
        while start + self.window <= len {
            spans.push((start, start + self.window));
            start += self.stride;
        }
        spans
    }
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
    sets_recent(tokens, shape, 0, device)
}

/// [`sets`] with the route of each token limited to the `recent` most recent of its
/// visible sets (0: all of them), as the `routing` stage's `router_topk` limits it
/// (`--router-topk` of `ausa train lm`): the visible sets are a prefix of the spans
/// (ends are non-decreasing), and token `t` keeps the last `recent` of that prefix.
pub fn sets_recent(
    tokens: &[Vec<u32>],
    shape: ToyShape,
    recent: usize,
    device: Device,
) -> SetInputs {
    let (mut seq_sets, mut sigs, mut sizes) = (vec![0i64], vec![], vec![]);
    let (mut starts, mut ends) = (vec![], vec![]);
    let (mut values, mut set_offsets) = (vec![], vec![0i64]);
    let len = tokens.first().map_or(0, Vec::len);
    // Every sequence has the same length, hence the same spans.
    let spans = shape.spans(len);
    for seq in tokens {
        for &(start, end) in &spans {
            let mut atoms = seq[start..end].to_vec();
            atoms.sort_unstable();
            atoms.dedup();
            sigs.extend(signature(&atoms, shape).into_iter().map(i64::from));
            sizes.push(atoms.len() as i64);
            starts.push(start as i64);
            ends.push(end as i64);
            values.extend(atoms.iter().map(|&u| i64::from(u)));
            set_offsets.push(values.len() as i64);
        }
        seq_sets.push(seq_sets.last().copied().unwrap_or(0) + spans.len() as i64);
    }
    let per_seq = spans.len();
    let mut route = vec![false; tokens.len() * len * per_seq];
    for b in 0..tokens.len() {
        for t in 0..len {
            let visible = spans.iter().take_while(|&&(_, end)| end <= t + 1).count();
            let first = if recent == 0 {
                0
            } else {
                visible.saturating_sub(recent)
            };
            for m in first..visible {
                route[(b * len + t) * per_seq + m] = true;
            }
        }
    }
    let long = |v: &[i64]| Tensor::from_slice(v).to_device(device);
    let nsets = sizes.len() as i64;
    SetInputs {
        seq_sets: long(&seq_sets),
        max_sets: per_seq as i64,
        signatures: long(&sigs).view([nsets, shape.k as i64]),
        sizes: long(&sizes),
        starts: long(&starts),
        ends: long(&ends),
        values: long(&values),
        set_offsets: long(&set_offsets),
        route: Tensor::from_slice(&route)
            .view([tokens.len() as i64, len as i64, per_seq as i64])
            .to_device(device),
        max_route_sets: if recent == 0 {
            per_seq
        } else {
            recent.min(per_seq)
        } as i64,
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
