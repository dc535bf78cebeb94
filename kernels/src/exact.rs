//! The exact set distance `Delta = |A| + |B| - 2 |A n B|` (the symmetric difference),
//! for universes small enough to hold a set as a bitset: the reference of the CUDA
//! `delta_exact` kernel and the ground truth the MinHash estimate is measured against.

use tch::{Kind, Tensor};

use crate::SetLayout;

/// The largest universe (atom ids below it) [`exact_delta`] and the CUDA bitset kernel
/// accept: 4096 atoms are 128 words of 32 bits per set.
pub const MAX_EXACT_UNIVERSE: i64 = 4096;

/// `[B, M, M]` fp32 exact `Delta` between every pair of set slots of each sequence
/// (padding slots are empty sets), from the layout's atom ids and set sizes. Every atom id must lie
/// below `universe` and `universe` must be at most [`MAX_EXACT_UNIVERSE`]; the caller
/// checks both (the vocabulary size is known when the artifacts are opened).
///
/// Built as a batched product of 0/1 indicator rows: `|A n B|` is at most the window,
/// so fp32 holds it exactly.
pub fn exact_delta(layout: &SetLayout, universe: i64) -> Tensor {
    assert!(
        (1..=MAX_EXACT_UNIVERSE).contains(&universe),
        "exact Delta needs a universe of 1..={MAX_EXACT_UNIVERSE} atoms, got {universe}"
    );
    tch::no_grad(|| {
        let device = layout.values.device();
        let (batch, m) = (layout.batch, layout.max_sets);
        let rows = Tensor::zeros([batch * m, universe], (Kind::Float, device));
        let rows = rows
            .index_put(
                &[
                    Some(layout.value_slot.shallow_clone()),
                    Some(layout.values.shallow_clone()),
                ],
                &Tensor::ones([1], (Kind::Float, device)),
                false,
            )
            .view([batch, m, universe]);
        let inter = rows.bmm(&rows.transpose(1, 2));
        let sizes = layout.sizes.to_kind(Kind::Float);
        sizes.unsqueeze(2) + sizes.unsqueeze(1) - inter * 2.0
    })
}
