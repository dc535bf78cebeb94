//! Set-kernel attention (SKA) for ausa: the reference backend (`--ska-backend naive`) in
//! batched libtorch tensor ops, on CPU and GPU alike.
//!
//! This crate owns the SPEC's method ("The method" in `../shared/docs/SPEC.md`) and nothing
//! else: no files, no training loop. The pieces, in the order a forward pass uses them:
//!
//! - [`SetLayout::new`] turns one batch's set structure (flat CSR arrays, as
//!   `ausa_artifacts::SetBatch` holds them, already tensors) into padded per-sequence
//!   blocks of `M` set slots and computes, **once per batch**, the MinHash distance
//!   `Delta` that every layer and head shares (no gradient flows into it), the causal
//!   attend mask `end_j <= end_i` and the token -> set route mask.
//! - [`pool_atoms`] is the differentiable CSR pooling `E(S) = sum_{u in S} e(u)` of the
//!   atom embeddings (one `embedding_bag` over per-slot bags; never cached across
//!   batches; [`pool::AtomPool`] is the same as an op with its own backward, and the
//!   CUDA kernels behind it) and [`Adapter`] the low-rank atom adapter `phi = e + alpha * e W1 W2`
//!   (rank 0 = off), linear, so applied to the pooled rows: `Phi(S) = adapter(E(S)) =
//!   sum_{u in S} phi(u)`, the SPEC's `atoms` set features. [`pool_hidden`] is the `hidden` choice: `Phi(S)`
//!   is the mean of a layer's input hidden states over the set's span `[start, end)`
//!   (contextual, and still causal: a set visible to token `t` ends at or before
//!   `t + 1`, so it pools positions `<= t` only).
//! - [`SetAttention`] is one SKA layer: set x set scores
//!   `(exp(-gamma_h Delta) + beta (A_h Phi_i).(B_h Phi_j)) / tau_h`, softmax over the visible
//!   key sets of the same sequence, values `V_h([Phi_j, psi(|S_j|)])`, then the router
//!   `softmax_j((x_t W_g) . Z_j)` over the sets token `t` may use, optional top-k
//!   (renormalized), heads merged, output projection.
//!
//! Beside them, [`shim`] is the crate's C++ shim over libtorch (CUDA memory statistics and
//! stream, the fused AdamW step, custom autograd ops written in Rust), the place for what
//! `tch` does not expose; [`router`] and [`set_attention`] are the two halves of the SKA
//! layer as such ops (a hand-written backward in tensor ops, or the fused CUDA kernels of
//! [`cuda`]), [`pool`] the atom pooling as one, [`graph`] CUDA graphs of a whole step (capture once,
//! replay without host work), and [`layer_norm`] the trainer's LayerNorm into bf16 / fp16 as one (the one
//! op here that is not SKA's: it lives beside the other CUDA kernels and their loader).
//!
//! Every step is a tensor op over the whole batch: there is no loop over sets or tokens in
//! Rust. Memory is `O(B M^2 k)` for `Delta` (built in chunks of signature columns) and
//! `O(B H L M)` for the router, with `M` the largest number of sets in one sequence.
//!
//! ```no_run
//! use ausa_kernels::{SetAttention, SetInputs, SetLayout, SkaConfig};
//! use tch::{nn, Device, Kind, Tensor};
//! # fn inputs() -> SetInputs { unimplemented!() }
//! let vs = nn::VarStore::new(Device::Cpu);
//! let config = SkaConfig { d_model: 64, heads: 4, ..SkaConfig::default() };
//! let layer = SetAttention::new(&vs.root() / "ska", &config);
//! let layout = SetLayout::new(&inputs(), 128); // once per batch
//! let phi = Tensor::zeros([2, layout.max_sets, 64], (Kind::Float, Device::Cpu));
//! let x = Tensor::zeros([2, 128, 64], (Kind::Float, Device::Cpu));
//! let y = layer.forward(&x, &phi, &layout); // [2, 128, 64]
//! ```

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// One batch's set structure as flat tensors (all integer tensors `Int64` unless said
/// otherwise; every index is batch-local), the layout `ausa_artifacts::SetBatch` uses.
#[derive(Debug)]
pub struct SetInputs {
    /// `B + 1` pointers into the sets: sequence `b` owns sets `seq_sets[b]..seq_sets[b+1]`.
    pub seq_sets: Tensor,
    /// The most sets any one sequence of the batch owns (`max_b seq_sets[b+1] -
    /// seq_sets[b]`). The producer knows it on the host; reading it back from `seq_sets`
    /// would make every batch wait for the GPU.
    pub max_sets: i64,
    /// `[Nsets, k]` MinHash values (any integer kind; only equality is used).
    pub signatures: Tensor,
    /// `[Nsets]` exact set sizes.
    pub sizes: Tensor,
    /// `[Nsets]` each set's `start`, a position of its sequence.
    pub starts: Tensor,
    /// `[Nsets]` each set's `end` (exclusive), a position of its sequence.
    pub ends: Tensor,
    /// `[Nvalues]` atom ids of every set, concatenated.
    pub values: Tensor,
    /// `[Nsets + 1]` offsets into `values`.
    pub set_offsets: Tensor,
    /// `[B, L, Mr]` bool: token `t` of sequence `b` may route to the sequence's local set
    /// `m` (from the routing table: causal `end <= t + 1`, and the table's own top-k).
    /// `Mr` may be smaller than the padded width; missing columns are not routable.
    pub route: Tensor,
    /// The most sets one token may route to (the most `true`s in a row of `route`, or
    /// any bound above it, at most `max_sets`): the routing table's own top-k bounds it.
    /// The producer knows it on the host. With at most
    /// [`cuda::ROUTER_TOPK_MAX`] the CUDA router lists each token's sets instead of
    /// scanning tiles of them; a smaller value than the truth costs time, never results.
    pub max_route_sets: i64,
}

/// The per-batch structure every SKA layer and head shares: built once per batch.
#[derive(Debug)]
pub struct SetLayout {
    /// Sequences in the batch.
    pub batch: i64,
    /// Tokens per sequence.
    pub seq_len: i64,
    /// Set slots per sequence (the most sets any sequence of the batch has).
    pub max_sets: i64,
    /// `[B, M, M]` fp32 MinHash distance `Delta` (no gradient).
    pub delta: Tensor,
    /// `[B, 1, M, M]` bool: query set `i` may attend key set `j` (both real sets of the
    /// same sequence, `end_j <= end_i`).
    pub attend: Tensor,
    /// `[B, 1, L, M]` bool: token `t` may use set `j`.
    pub route: Tensor,
    /// The most sets one token may use ([`SetInputs::max_route_sets`], at most
    /// `max_sets`).
    pub max_route_sets: i64,
    /// `[B, M]` fp32 set sizes (0 in padding slots).
    pub sizes: Tensor,
    /// `[B, M]` `Int64` span starts (0 in padding slots).
    pub starts: Tensor,
    /// `[B, M]` `Int64` span ends (0 in padding slots: an empty span).
    pub ends: Tensor,
    /// `[Nvalues]` atom ids.
    pub values: Tensor,
    /// `[Nvalues]` the padded slot `b * M + m` each atom occurrence belongs to.
    pub value_slot: Tensor,
    /// `[B * M + 1]` `Int64`: slot `b * M + m` owns atoms
    /// `values[slot_offsets[s]..slot_offsets[s + 1]]` (empty for a padding slot): the
    /// per-slot bags [`pool_atoms`] sums.
    pub slot_offsets: Tensor,
    /// `[Nvalues]` `Int` (32-bit) atom ids sorted (stably: equal ids keep their order in
    /// `values`), for the gradient of the pooling: each atom's occurrences form one run.
    /// 32-bit keys: half the radix passes of a 64-bit sort.
    pub atom_ids: Tensor,
    /// `[Nvalues]` `Int`: the slot of each entry of `atom_ids` (`value_slot` in that
    /// order).
    pub atom_slots: Tensor,
}

/// Signature columns compared at once when building `Delta`, bounding the `[B, M, M, c]`
/// temporary.
const DELTA_CHUNK: i64 = 32;

impl SetLayout {
    /// Whether the router may take its per-token kernels for this batch: no token routes
    /// to more than [`cuda::ROUTER_TOPK_MAX`] sets, and `AUSA_ROUTER_PER_TOKEN=1`
    /// ([`cuda::per_token_router`]) while those kernels are unmeasured.
    pub fn narrow_route(&self) -> bool {
        self.max_route_sets <= cuda::ROUTER_TOPK_MAX && cuda::per_token_router()
    }

    /// Pads the batch's sets into per-sequence slots and computes `Delta` and the masks.
    /// `seq_len` is the number of tokens per sequence (`route`'s second dimension).
    pub fn new(inputs: &SetInputs, seq_len: i64) -> SetLayout {
        tch::no_grad(|| Self::build(inputs, seq_len))
    }

    fn build(inputs: &SetInputs, seq_len: i64) -> SetLayout {
        let device = inputs.signatures.device();
        let long = (Kind::Int64, device);
        let seq_sets = inputs.seq_sets.to_kind(Kind::Int64);
        let batch = seq_sets.size()[0] - 1;
        let counts = seq_sets.narrow(0, 1, batch) - seq_sets.narrow(0, 0, batch);
        let max_sets = if batch == 0 { 0 } else { inputs.max_sets };
        let nsets = inputs.sizes.size()[0];
        // slot of set s = b * M + (s - seq_sets[b]), with b its sequence.
        let set_seq =
            Tensor::arange(batch, long).repeat_interleave_self_tensor(&counts, 0, Some(nsets));
        let local = Tensor::arange(nsets, long) - seq_sets.index_select(0, &set_seq);
        let slot = &set_seq * max_sets + &local;
        let slots = batch * max_sets;

        let k = inputs.signatures.size()[1];
        let pad = |t: &Tensor, fill: f64| {
            let dims: Vec<i64> = std::iter::once(slots)
                .chain(t.size()[1..].iter().copied())
                .collect();
            Tensor::full(&dims, fill, (t.kind(), device)).index_copy(0, &slot, t)
        };
        let valid = pad(&Tensor::ones([nsets], (Kind::Bool, device)), 0.0).view([batch, max_sets]);
        let sizes = pad(&inputs.sizes.to_kind(Kind::Float), 0.0).view([batch, max_sets]);
        let starts = pad(&inputs.starts.to_kind(Kind::Int64), 0.0).view([batch, max_sets]);
        let ends = pad(&inputs.ends.to_kind(Kind::Int64), 0.0).view([batch, max_sets]);
        let signatures = pad(&inputs.signatures, 0.0).view([batch, max_sets, k]);

        let delta = minhash_delta(&signatures, &sizes);

        let attend = valid.unsqueeze(2)
            * valid.unsqueeze(1)
            * ends.unsqueeze(1).le_tensor(&ends.unsqueeze(2));
        let attend = attend.unsqueeze(1);

        let route_in = inputs.route.to_kind(Kind::Bool);
        let width = route_in.size()[2].min(max_sets);
        let route = Tensor::zeros([batch, seq_len, max_sets], (Kind::Bool, device));
        let route = if width > 0 {
            route.slice_scatter(&route_in.narrow(2, 0, width), 2, 0, width, 1)
        } else {
            route
        };
        let route = (route * valid.unsqueeze(1)).unsqueeze(1);

        let nvalues = inputs.values.size()[0];
        let offsets = inputs.set_offsets.to_kind(Kind::Int64);
        let per_set = offsets.narrow(0, 1, nsets) - offsets.narrow(0, 0, nsets);
        let value_set =
            Tensor::arange(nsets, long).repeat_interleave_self_tensor(&per_set, 0, Some(nvalues));
        let value_slot = slot.index_select(0, &value_set);
        // Slot (b, m) is set seq_sets[b] + m while m < count_b; a padding slot points at
        // the end of its sequence's atoms, an empty bag. Non-decreasing by construction.
        let slot_set = seq_sets.narrow(0, 0, batch).unsqueeze(1)
            + Tensor::arange(max_sets, long)
                .unsqueeze(0)
                .minimum(&counts.unsqueeze(1));
        let slot_offsets = Tensor::cat(
            &[
                offsets.index_select(0, &slot_set.flatten(0, -1)),
                offsets.narrow(0, nsets, 1),
            ],
            0,
        );

        let values = inputs.values.to_kind(Kind::Int64);
        let (atom_ids, order) = values.to_kind(Kind::Int).sort_stable(true, 0, false);
        let atom_slots = value_slot.index_select(0, &order).to_kind(Kind::Int);

        SetLayout {
            batch,
            seq_len,
            max_sets,
            delta,
            attend,
            route,
            max_route_sets: inputs.max_route_sets.min(max_sets),
            sizes,
            starts,
            ends,
            values,
            value_slot,
            slot_offsets,
            atom_ids,
            atom_slots,
        }
    }
}

/// `[B, M, M]` fp32 MinHash distance between every pair of set slots of each sequence,
/// from padded `[B, M, k]` signatures and `[B, M]` fp32 sizes:
/// `J = mean_i [sig_i(A) == sig_i(B)]`, `inter = J / (1 + J) * (|A| + |B|)`,
/// `Delta = max(0, |A| + |B| - 2 inter)`. The reference of the CUDA `delta_minhash`.
pub fn minhash_delta(signatures: &Tensor, sizes: &Tensor) -> Tensor {
    let (batch, max_sets, k) = signatures.size3().expect("signatures are [B, M, k]");
    let device = signatures.device();
    // J = mean_i [sig_i(A) == sig_i(B)], summed over column chunks.
    let mut equal = Tensor::zeros([batch, max_sets, max_sets], (Kind::Float, device));
    let mut col = 0;
    while col < k {
        let width = DELTA_CHUNK.min(k - col);
        let part = signatures.narrow(2, col, width);
        let eq = part.unsqueeze(2).eq_tensor(&part.unsqueeze(1));
        equal += eq.sum_dim_intlist(-1, false, Kind::Float);
        col += width;
    }
    let jaccard = equal / (k.max(1) as f64);
    let size_sum = sizes.unsqueeze(2) + sizes.unsqueeze(1);
    let inter = &jaccard / (&jaccard + 1.0) * &size_sum;
    (size_sum - inter * 2.0).clamp_min(0.0)
}

/// `softmax` over the last dimension restricted to `mask`; a row with no visible entry
/// gives all zeros (never NaN, and no NaN in the gradient either).
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Tensor {
    let hidden = mask.logical_not();
    let empty = mask.any_dim(-1, true).logical_not();
    // Empty rows become a harmless uniform softmax, then the mask zeroes them.
    let filled = scores
        .masked_fill(&hidden, f64::NEG_INFINITY)
        .masked_fill(&empty, 0.0);
    filled.softmax(-1, scores.kind()) * mask.to_kind(scores.kind())
}

/// Keeps, per row, only the `k` visible entries of `mask` with the highest `scores`
/// (`k = 0`: all of them).
pub fn top_k_mask(scores: &Tensor, mask: &Tensor, k: i64) -> Tensor {
    let width = *scores.size().last().unwrap_or(&0);
    if k <= 0 || k >= width {
        return mask.shallow_clone();
    }
    let visible = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    let (_, index) = visible.detach().topk(k, -1, true, false);
    let keep = mask.zeros_like().scatter_value(-1, &index, 1);
    keep.logical_and(mask)
}

/// The low-rank atom adapter `phi(u) = e + alpha * (e W1) W2` for atom embedding `e`
/// (rank 0: `phi = e`). `W2` starts at zero so training starts from `phi = e`.
#[derive(Debug)]
pub struct Adapter {
    w1: Option<Tensor>,
    w2: Option<Tensor>,
    alpha: f64,
}

impl Adapter {
    /// An adapter of `rank` on `dim`-wide embeddings under `path` (`w1`, `w2`).
    pub fn new(path: nn::Path, dim: i64, rank: i64, alpha: f64) -> Adapter {
        if rank <= 0 {
            return Adapter {
                w1: None,
                w2: None,
                alpha,
            };
        }
        let std = 1.0 / (dim as f64).sqrt();
        let w1 = path.var(
            "w1",
            &[dim, rank],
            Init::Randn {
                mean: 0.0,
                stdev: std,
            },
        );
        let w2 = path.var("w2", &[rank, dim], Init::Const(0.0));
        Adapter {
            w1: Some(w1),
            w2: Some(w2),
            alpha,
        }
    }

    /// Applies the adapter to `[.., dim]` embeddings.
    pub fn forward(&self, e: &Tensor) -> Tensor {
        match (&self.w1, &self.w2) {
            (Some(w1), Some(w2)) => {
                let kind = e.kind();
                e + e.matmul(&w1.to_kind(kind)).matmul(&w2.to_kind(kind)) * self.alpha
            }
            _ => e.shallow_clone(),
        }
    }
}

/// `Phi(S) = sum_{u in S} table[u]` for every set slot of the batch: `[B, M, dim]` from
/// an atom table (`[atoms, dim]`, e.g. the token embedding), differentiable in `table`.
/// Padding slots are zero.
///
/// One `embedding_bag` (sum) over the layout's per-slot bags: the `[Nvalues, dim]`
/// gathered rows are never written, and the table's gradient comes from libtorch's
/// sorted segment reduction (PyTorch's determinism notes list only `mode='max'` of
/// `EmbeddingBag` as nondeterministic on CUDA, and list `index_add`, which this replaces:
/// one float atomic per atom occurrence, in no fixed order). A linear map of
/// the atoms (the [`Adapter`]) commutes with the sum: apply it to the pooled rows, `M`
/// rows per sequence instead of one per atom occurrence.
pub fn pool_atoms(table: &Tensor, layout: &SetLayout) -> Tensor {
    let dim = *table.size().last().unwrap_or(&0);
    bag_sums(table, &layout.values, &layout.slot_offsets).view([layout.batch, layout.max_sets, dim])
}

/// `[S, dim]` sums of `table`'s rows over the bags of `values` that `offsets` (`S + 1`
/// entries, ending with the total) delimits: one `embedding_bag` (zero rows for no bag).
pub(crate) fn bag_sums(table: &Tensor, values: &Tensor, offsets: &Tensor) -> Tensor {
    let dim = *table.size().last().unwrap_or(&0);
    if offsets.size()[0] <= 1 {
        return Tensor::zeros([0, dim], (table.kind(), table.device()));
    }
    let (pooled, _, _, _) = Tensor::embedding_bag::<Tensor>(
        table, values, offsets, false, 0, // sum
        false, None, true, // offsets ends with the total
    );
    pooled
}

/// [`pool_atoms`] through `op` when there is one (the op of the layers' backend,
/// [`pool::AtomPool::new`]), else libtorch's `embedding_bag`. Panics if the op fails (its
/// inputs are the layout's own, checked when the layout was made), as
/// [`SetAttention::forward`] does.
pub fn pool_atoms_with(op: Option<&pool::AtomPool>, table: &Tensor, layout: &SetLayout) -> Tensor {
    match op {
        Some(op) => op
            .forward(table, layout)
            .unwrap_or_else(|e| panic!("the atom pooling: {e}")),
        None => pool_atoms(table, layout),
    }
}

/// The `hidden` set features: `Phi(S)` for every set slot (`[B, M, d]`) as the mean
/// of `hidden` (`[B, L, d]`, a layer's input states) over the set's span
/// `[start, end)`; padding slots are zero. One batched matmul with the `[B, M, L]`
/// span-membership weights, differentiable in `hidden`.
///
/// The mean (not the sum) keeps `Phi` at the scale of the normalized states whatever
/// the window; the size still reaches the values through `psi(|S|)`. Causal by
/// construction: the weights of a set are zero at positions `>= end`, so a set a
/// token may use (`end <= t + 1`) mixes positions `<= t` only (exactly: the zero
/// weights add exact zeros).
pub fn pool_hidden(hidden: &Tensor, layout: &SetLayout) -> Tensor {
    let device = hidden.device();
    let positions = Tensor::arange(layout.seq_len, (Kind::Int64, device)).view([1, 1, -1]);
    let inside = positions
        .ge_tensor(&layout.starts.unsqueeze(-1))
        .logical_and(&positions.lt_tensor(&layout.ends.unsqueeze(-1)));
    let len = (&layout.ends - &layout.starts).clamp_min(1).unsqueeze(-1);
    let weights = inside.to_kind(Kind::Float) / len.to_kind(Kind::Float);
    weights.to_kind(hidden.kind()).matmul(hidden)
}

/// The size feature `psi(|S|) = ln(1 + |S|)`, appended to `Phi` before the value map.
pub fn psi(sizes: &Tensor) -> Tensor {
    sizes.log1p()
}

/// Shape and options of one [`SetAttention`] layer.
#[derive(Debug, Clone, PartialEq)]
pub struct SkaConfig {
    /// Model width (the width of `Phi` and of the token states).
    pub d_model: i64,
    /// Heads; `d_model` must be divisible by it.
    pub heads: i64,
    /// Weight of the content term `(A_h Phi_i).(B_h Phi_j)`; 0 leaves `A`, `B` out.
    pub beta: f64,
    /// Router top-k over the gates (renormalized); 0 = every visible set.
    pub router_topk: i64,
    /// Initial `gamma_h` (all heads); `Delta` ranges over `[0, 2 * window]`.
    pub gamma_init: f64,
    /// Initial `tau_h` (all heads).
    pub tau_init: f64,
    /// How the set attention and the router are computed and differentiated. For
    /// `Cuda`, the caller opens the device's kernels first (`cuda::CudaKernels::shared`),
    /// so a missing GPU is its error, not a panic in [`SetAttention::new`].
    pub ops: OpImpl,
}

impl Default for SkaConfig {
    fn default() -> SkaConfig {
        SkaConfig {
            d_model: 64,
            heads: 4,
            beta: 0.0,
            router_topk: 0,
            gamma_init: 0.05,
            tau_init: 0.1,
            ops: OpImpl::Autograd,
        }
    }
}

/// How an SKA layer computes its two ops, the set attention ([`set_attention`]) and the
/// router ([`router`]), and how they are differentiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OpImpl {
    /// Tensor ops, gradient by libtorch's autograd (the reference, `--ska-backend naive`).
    #[default]
    Autograd,
    /// Tensor ops with the hand-written backward, through the autograd bridge (the plain
    /// reference of the kernels' math; any device).
    Manual,
    /// The fused CUDA kernels on CUDA device `ordinal`.
    Cuda {
        /// The CUDA device.
        ordinal: usize,
    },
}

impl OpImpl {
    /// The implementation behind an op with a hand-written backward (the router's, the
    /// set attention's); `None` for [`OpImpl::Autograd`], which needs no op. For `Cuda`,
    /// the device's kernels are opened (or reused) here.
    pub(crate) fn op_backend(self) -> Result<Option<OpBackend>, String> {
        Ok(Some(match self {
            OpImpl::Autograd => return Ok(None),
            OpImpl::Manual => OpBackend::Manual,
            OpImpl::Cuda { ordinal } => {
                OpBackend::Cuda(cuda::CudaKernels::shared(ordinal).map_err(|e| e.to_string())?)
            }
        }))
    }
}

/// How a custom SKA op computes: tensor ops with the written-out backward, or the CUDA
/// kernels of one device.
pub(crate) enum OpBackend {
    Manual,
    Cuda(std::sync::Arc<cuda::CudaKernels>),
}

/// One set-kernel attention layer with its router (replaces self-attention in a block).
#[derive(Debug)]
pub struct SetAttention {
    heads: i64,
    head_dim: i64,
    beta: f64,
    router_topk: i64,
    /// `ln gamma_h`: `gamma = exp(.)` keeps it positive.
    log_gamma: Tensor,
    /// `ln tau_h`.
    log_tau: Tensor,
    /// `[H, d, dh]` query-side content map (only with `beta != 0`).
    a: Option<Tensor>,
    /// `[H, d, dh]` key-side content map.
    b: Option<Tensor>,
    /// `[d + 1, H * dh]` value map of `[Phi_j, psi(|S_j|)]`, all heads.
    v: nn::Linear,
    /// `[d, H * dh]` router query map.
    gate: nn::Linear,
    /// `[H * dh, d]` output projection.
    out: nn::Linear,
    /// The router op (`None`: tensor ops under libtorch's autograd).
    router: Option<router::Router>,
    /// The set x set attention op (`None`: tensor ops under libtorch's autograd).
    attention: Option<set_attention::FusedSetAttention>,
}

impl SetAttention {
    /// A layer under `path`; panics if `d_model` is not divisible by `heads`, or if the
    /// CUDA router's kernels do not open (both checked by the caller first).
    pub fn new(path: nn::Path, config: &SkaConfig) -> SetAttention {
        let (d, h) = (config.d_model, config.heads);
        assert!(
            h > 0 && d % h == 0,
            "d_model {d} not divisible by heads {h}"
        );
        let dh = d / h;
        let init = |v: f64| Init::Const(v.ln());
        let log_gamma = path.var("log_gamma", &[h], init(config.gamma_init));
        let log_tau = path.var("log_tau", &[h], init(config.tau_init));
        let std = 1.0 / (d as f64).sqrt();
        let (a, b) = if config.beta != 0.0 {
            let normal = Init::Randn {
                mean: 0.0,
                stdev: std,
            };
            (
                Some(path.var("a", &[h, d, dh], normal)),
                Some(path.var("b", &[h, d, dh], normal)),
            )
        } else {
            (None, None)
        };
        let linear =
            |name: &str, i: i64, o: i64| nn::linear(&path / name, i, o, Default::default());
        SetAttention {
            heads: h,
            head_dim: dh,
            beta: config.beta,
            router_topk: config.router_topk,
            log_gamma,
            log_tau,
            a,
            b,
            v: linear("v", d + 1, d),
            gate: linear("gate", d, d),
            out: linear("out", d, d),
            router: router::Router::new(config.ops, config.router_topk)
                .unwrap_or_else(|e| panic!("the SKA router: {e}")),
            attention: set_attention::FusedSetAttention::new(config.ops, config.beta)
                .unwrap_or_else(|e| panic!("the SKA set attention: {e}")),
        }
    }

    /// `gamma_h`, positive by construction.
    pub fn gamma(&self) -> Tensor {
        self.log_gamma.exp()
    }

    /// `tau_h`, positive by construction.
    pub fn tau(&self) -> Tensor {
        self.log_tau.exp()
    }

    /// The set outputs `Z` (`[B, H, M, dh]`) from `phi` (`[B, M, d]`).
    pub fn set_outputs(&self, phi: &Tensor, layout: &SetLayout) -> Tensor {
        let kind = phi.kind();
        let (bsz, m, h, dh) = (layout.batch, layout.max_sets, self.heads, self.head_dim);
        // `[Phi, psi]` has d + 1 columns; zero columns up to a multiple of 8 (and the same
        // in the weight) keep the product exact and on cuBLAS's tensor-core kernels.
        let width = linear::aligned_width(h * dh + 1);
        let value_in = linear::pad_columns(
            &Tensor::cat(
                &[
                    phi.shallow_clone(),
                    psi(&layout.sizes).to_kind(kind).unsqueeze(-1),
                ],
                -1,
            ),
            width,
        );
        let weight = linear::pad_columns(&self.v.ws, width);
        let values = linear::affine(&value_in, &weight, self.v.bs.as_ref())
            .view([bsz, m, h, dh])
            .transpose(1, 2);
        // (A_h Phi_i) and (B_h Phi_j): [B, 1, M, d] x [1, H, d, dh] = [B, H, M, dh].
        let content = match (&self.a, &self.b) {
            (Some(a), Some(b)) => Some((
                phi.unsqueeze(1).matmul(&a.to_kind(kind).unsqueeze(0)),
                phi.unsqueeze(1).matmul(&b.to_kind(kind).unsqueeze(0)),
            )),
            _ => None,
        };
        if let Some(op) = &self.attention {
            let args = set_attention::SetAttentionArgs {
                delta: &layout.delta,
                attend: &layout.attend,
                gamma: &self.gamma(),
                tau: &self.tau(),
                v: &values,
                content: content.as_ref().map(|(qa, kb)| (qa, kb)),
            };
            return op.forward(&args).unwrap_or_else(|e| panic!("{e}"));
        }
        let view_h = |t: Tensor| t.view([1, h, 1, 1]);
        let kernel =
            (layout.delta.to_kind(kind).unsqueeze(1) * -view_h(self.gamma().to_kind(kind))).exp();
        // Out of place: exp's backward needs its output unmodified.
        let scores = match content {
            Some((qa, kb)) => kernel + qa.matmul(&kb.transpose(-1, -2)) * self.beta,
            None => kernel,
        };
        let scores = scores / view_h(self.tau().to_kind(kind));
        let weights = masked_softmax(&scores, &layout.attend);
        weights.matmul(&values)
    }

    /// The layer's output `[B, L, d]` for token states `x` (`[B, L, d]`) and set features
    /// `phi` (`[B, M, d]`, from [`pool_atoms`] and the [`Adapter`]).
    pub fn forward(&self, x: &Tensor, phi: &Tensor, layout: &SetLayout) -> Tensor {
        let (bsz, l, h, dh) = (layout.batch, layout.seq_len, self.heads, self.head_dim);
        let query = linear_kind(&self.gate, x)
            .view([bsz, l, h, dh])
            .transpose(1, 2);
        let routed = self.core(&query, &phi.to_kind(x.kind()), layout);
        let mixed = routed.transpose(1, 2).reshape([bsz, l, h * dh]);
        linear_kind(&self.out, &mixed)
    }

    /// The layer without its gate and output projections: the heads' router outputs
    /// (`[B, H, L, dh]`) for the router queries `query` (`[B, H, L, dh]`, the gate
    /// projection's output per head) and set features `phi` (`[B, M, d]`, of `query`'s
    /// kind). What [`SetAttention::forward`] wraps, and what `ausa bench ska --core` times
    /// against the attention peers (which take their queries, keys and values as inputs).
    pub fn core(&self, query: &Tensor, phi: &Tensor, layout: &SetLayout) -> Tensor {
        let z = self.set_outputs(phi, layout);
        match &self.router {
            Some(router) => router
                .forward(query, &z, &layout.route, layout.narrow_route())
                .unwrap_or_else(|e| panic!("{e}")),
            None => {
                let logits = query.matmul(&z.transpose(-1, -2)); // [B, H, L, M]
                let mask = layout.route.expand_as(&logits);
                let mask = top_k_mask(&logits, &mask, self.router_topk);
                masked_softmax(&logits, &mask).matmul(&z)
            }
        }
    }
}

pub use linear::linear_kind;

pub mod cuda;
pub mod exact;
pub mod graph;
pub mod layer_norm;
pub mod linear;
pub mod pool;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cuda;

pub mod router;
pub mod set_attention;
pub mod shim;
pub mod toy;
