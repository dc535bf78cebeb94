//! The CUDA backend's plumbing: kernels written in CUDA C (`kernels/cuda/*.cu`, one file
//! per op family), compiled at run time with NVRTC for the device's architecture and
//! launched through the CUDA driver API (`cudarc`, loaded dynamically: nothing CUDA is
//! needed to build, and a machine without a GPU never loads a CUDA library).
//!
//! Compiled PTX is cached on disk (`$AUSA_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ausa/kernels`,
//! else `~/.cache/ausa/kernels`) under the blake3 hash of the source, the compile
//! options and the architecture, written through a temp file and a rename so two
//! processes never see half a file. A cache that cannot be written only costs the
//! compile time again.
//!
//! Kernels run on libtorch's current stream of the device, asked for (through the C++
//! shim) at every launch: a caller, or the autograd engine running a backward, may have
//! made any stream current, and the kernels must order with the libtorch ops around
//! them. Inputs and outputs are libtorch CUDA tensors passed by device pointer.
//!
//! Unsafe code: the launches. Invariant, checked by `device_ptr` before every launch:
//! each pointer is a contiguous CUDA tensor of the kind and element count the kernel
//! indexes (the shapes are checked against the kernel's arguments), and the tensors
//! outlive the launch because the caller holds them until the returned tensor is used,
//! which on the same stream orders after the kernel.
#![allow(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};
use tch::{Device, Kind, Tensor};

/// What went wrong on the CUDA path.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No GPU driver or no NVRTC on this machine.
    #[error("CUDA kernels are unavailable: {0}")]
    Unavailable(String),
    /// NVRTC rejected a kernel source (a bug of ours; the log says where).
    #[error("NVRTC could not compile kernels/cuda/{file}: {log}")]
    Compile {
        /// The source file.
        file: &'static str,
        /// NVRTC's log.
        log: String,
    },
    /// A driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// A tensor of the wrong device, kind or shape.
    #[error("{0}")]
    Input(String),
}

impl From<cudarc::driver::DriverError> for CudaError {
    fn from(e: cudarc::driver::DriverError) -> CudaError {
        CudaError::Driver(e.to_string())
    }
}

/// One op family's source.
struct Source {
    file: &'static str,
    text: &'static str,
}

const DELTA: Source = Source {
    file: "delta.cu",
    text: include_str!("../cuda/delta.cu"),
};

const ROUTER: Source = Source {
    file: "router.cu",
    text: include_str!("../cuda/router.cu"),
};

const LAYER_NORM: Source = Source {
    file: "layer_norm.cu",
    text: include_str!("../cuda/layer_norm.cu"),
};

const POOL: Source = Source {
    file: "pool.cu",
    text: include_str!("../cuda/pool.cu"),
};

/// Threads per block of the pooling kernels (`POOL_THREADS` in pool.cu), each over 4
/// columns (or 1 when the row width is not a multiple of 4).
const POOL_THREADS: u32 = 128;

/// The largest normalized size of the fused LayerNorm (`LN_C` in layer_norm.cu).
pub const LAYER_NORM_MAX_COLS: i64 = 1024;

/// Rows (one warp each) per block of the LayerNorm kernels (`LN_WARPS`).
const LAYER_NORM_WARPS: u32 = 8;

/// Rows each block of the LayerNorm backward sums into one row of `dw` / `db` partials.
const LAYER_NORM_ROWS_PER_BLOCK: i64 = 32;

const SET_ATTENTION: Source = Source {
    file: "set_attention.cu",
    text: include_str!("../cuda/set_attention.cu"),
};

/// Threads per block of the set-attention kernels (`THREADS` in set_attention.cu): a
/// group of [`set_attention_lanes`] lanes per row (query or key set), so `128 /
/// set_attention_lanes(d)` rows per block.
const SET_ATTENTION_THREADS: u32 = 128;

/// The largest head dimension of the set-attention kernels (registers).
pub const SET_ATTENTION_MAX_HEAD_DIM: i64 = 128;

/// Sets per tile of the set-attention kernels (`TJ` in set_attention.cu): a split range
/// is whole tiles.
const SET_ATTENTION_TILE: i64 = 32;

/// Blocks the set-attention kernels aim for when they split each row's inner range over
/// grid z ([`SetSplit::Auto`]): 132 SMs hold ~16 blocks of 128 threads each, and under
/// the causal rule about half of the ranges end early.
const SET_ATTENTION_TARGET_BLOCKS: i64 = 4096;

/// [`SET_ATTENTION_TARGET_BLOCKS`], or `$AUSA_SET_ATTENTION_SPLIT_BLOCKS` when it holds
/// a non-negative integer (0: never split), a tuning knob for A/B measurements.
fn set_attention_target_blocks() -> i64 {
    static TARGET: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    tuning_knob(
        &TARGET,
        "AUSA_SET_ATTENTION_SPLIT_BLOCKS",
        SET_ATTENTION_TARGET_BLOCKS,
        |v| v >= 0,
    )
}

/// How the set-attention kernels split each row's inner range (the keys of the forward
/// and of the query-side backward, the query rows of the key-side backward) over grid z.
/// Each range writes partial sums, merged in range order: deterministic for a given
/// split, and the split depends only on the shape (never on the device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetSplit {
    /// Ranges until the grid has about `SET_ATTENTION_TARGET_BLOCKS` blocks.
    Auto,
    /// At most this many ranges of whole tiles (1: no split).
    Ranges(i64),
}

/// Tokens per block of the router kernels (`ROWS` in router.cu).
const ROUTER_ROWS: u32 = 128;

/// Warps per block of the tensor-core top-k router forward (`MMA_WARPS`, 16 tokens each;
/// measured on the H200 at 16k: 8 warps 10% slower than 4).
const ROUTER_MMA_WARPS: u32 = 4;

/// Warps per block of the router's top-k `dq` kernel (`DQ_WARPS`).
const ROUTER_DQ_WARPS: u32 = 8;

/// Lanes per token row of the router's top-k `dq` (`DQ_TOKEN_LANES`, passed to NVRTC):
/// the power of two nearest below `d / 8` (about 8 dims per lane), 1 to 32, halved until
/// it divides `d`, so that every lane holds a whole run of `d / lanes` consecutive dims.
pub(crate) fn row_lanes(d: i64) -> u32 {
    let mut lanes = lanes_for(d, 8);
    while lanes > 1 && d % i64::from(lanes) != 0 {
        lanes /= 2;
    }
    lanes
}

/// The power of two nearest below `d / dims_per_lane`, 1 to 32.
fn lanes_for(d: i64, dims_per_lane: i64) -> u32 {
    let mut lanes = 1u32;
    while lanes < 32 && i64::from(lanes * 2) * dims_per_lane <= d {
        lanes *= 2;
    }
    lanes
}

/// Dims per lane of the set-attention kernels by default (`SA_LANES = d / this`, a power
/// of two): more lanes per row give those kernels more warps (at the shapes only
/// `B * H * M` rows exist, ~8k at 16k tokens) and fewer keys per lane for the per-pair
/// scalars. Measured on the H200 at 16k (Nsight kernel times, forward / bwd_q / bwd_kv):
/// 8 dims 0.161 / 0.172 / 0.171 ms, 4 dims 0.131 / 0.186 / 0.140 ms.
const SET_ATTENTION_DIMS_PER_LANE: i64 = 4;

/// Lanes per row of the set-attention kernels (`SA_LANES`) for head dimension `d`.
/// `AUSA_SET_ATTENTION_DIMS_PER_LANE` (1 to 64) overrides the dims per lane, for tuning
/// measurements.
pub(crate) fn set_attention_lanes(d: i64) -> u32 {
    lanes_for(d, set_attention_dims_per_lane())
}

/// [`SET_ATTENTION_DIMS_PER_LANE`], or `$AUSA_SET_ATTENTION_DIMS_PER_LANE` (1 to 64).
fn set_attention_dims_per_lane() -> i64 {
    static DIMS: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    tuning_knob(
        &DIMS,
        "AUSA_SET_ATTENTION_DIMS_PER_LANE",
        SET_ATTENTION_DIMS_PER_LANE,
        |v| (1..=64).contains(&v),
    )
}

/// Every kernel tuning variable with the value this process uses (its default, or the
/// environment's when valid), for a run's metadata: they choose kernels and launch
/// shapes (the results agree to rounding, the bits and the times need not).
pub fn tuning_knobs() -> Vec<(&'static str, i64)> {
    vec![
        ("AUSA_ROUTER_PER_TOKEN", i64::from(per_token_router())),
        ("AUSA_ROUTER_DZ_MMA", i64::from(dz_mma())),
        ("AUSA_ROUTER_DENSE_DZ_MAX_SETS", dense_dz_max_sets()),
        (
            "AUSA_SET_ATTENTION_SPLIT_BLOCKS",
            set_attention_target_blocks(),
        ),
        (
            "AUSA_SET_ATTENTION_DIMS_PER_LANE",
            set_attention_dims_per_lane(),
        ),
    ]
}

/// A tuning knob: `$name` when it holds an integer that `valid` accepts, else `default`,
/// read once per process (the kernels' launch shapes and the modules compiled for them
/// must agree for the whole run).
fn tuning_knob(
    cell: &'static std::sync::OnceLock<i64>,
    name: &str,
    default: i64,
    valid: impl Fn(i64) -> bool,
) -> i64 {
    *cell.get_or_init(|| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&v| valid(v))
            .unwrap_or(default)
    })
}

/// Tokens per tile of the router's `dz` kernels (`ST` in router.cu for head dimensions up
/// to 64; 16 above, where chunks of 32 tokens are still whole tiles).
const ROUTER_TOKEN_TILE: i64 = 32;

/// Blocks the chunked top-k `dz` aims for (the H200 has 132 SMs; ~8 blocks of 256
/// threads each fit on one).
const ROUTER_DZ_TARGET_BLOCKS: i64 = 2048;

/// Up to this many sets per sequence the top-k router's `dz` takes the kernel over tiles
/// of sets and chunks of tokens (`router_bwd_dz_kept`, reading each token's kept lists)
/// instead of the sparse one (a counting sort of all `B * H * L * 8` kept entries by set,
/// then a walk of each set's entries): its cost grows with `M * L`, the sparse one's with
/// `L` only.
const ROUTER_DENSE_DZ_MAX_SETS: i64 = 64;

/// [`ROUTER_DENSE_DZ_MAX_SETS`], or `$AUSA_ROUTER_DENSE_DZ_MAX_SETS` when it holds an
/// integer: a tuning knob to measure the crossover of the two `dz` paths
/// (docs/kernels.md); both give the same gradients to rounding.
fn dense_dz_max_sets() -> i64 {
    static LIMIT: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    tuning_knob(
        &LIMIT,
        "AUSA_ROUTER_DENSE_DZ_MAX_SETS",
        ROUTER_DENSE_DZ_MAX_SETS,
        |_| true,
    )
}

/// Tokens per chunk (one warp each) of the sparse `dz`'s bucketing (`BUCKET_TOKENS` in
/// router.cu).
const ROUTER_BUCKET_TOKENS: i64 = 32;

/// Shared memory of one bucketing block: each warp keeps a count per set (4 bytes), so
/// this bounds the sets per sequence of the top-k backward above 64 sets (12288: about
/// 390k tokens at stride 32), without opting in to more than the default 48 KiB.
const ROUTER_BUCKET_SHARED_BYTES: i64 = 48 * 1024;

/// The largest router top-k the fused router keeps in registers (`TOPK_MAX`).
pub const ROUTER_TOPK_MAX: i64 = 8;

/// Warps per block of the per-token router forward (`CAND_WARPS` in router.cu).
const ROUTER_CAND_WARPS: u32 = 8;

/// Dims per lane of the per-token router forward (`CAND_DIMS`): one 16-byte run of a
/// bf16 row.
const ROUTER_CAND_DIMS: i64 = 8;

/// Whether the per-token router forward (`router_fwd_cand_*`) takes head dimension `d`:
/// lanes of 8 dims, a power of two of them that divides a warp (`d` 8, 16, 32, 64, 128).
pub fn per_token_router_fits(d: i64) -> bool {
    d % ROUTER_CAND_DIMS == 0 && {
        let lanes = d / ROUTER_CAND_DIMS;
        lanes <= 32 && (lanes as u64).is_power_of_two()
    }
}

/// Whether [`CudaKernels::router_forward`] takes the per-token kernel: with top-k, a
/// narrow route and a head dimension it fits.
pub fn takes_per_token_forward(topk: i64, narrow: bool, d: i64) -> bool {
    topk > 0 && narrow && per_token_router_fits(d)
}

/// Whether the SKA layer hands a narrow route to the per-token router forward
/// (`SetAttention` asks; the kernels take whatever `narrow` they are given): off unless
/// `AUSA_ROUTER_PER_TOKEN=1`, until the kernel has been measured and tested on a GPU (it
/// was written and compiled in a session without one; docs/kernels.md).
pub fn per_token_router() -> bool {
    static ON: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    tuning_knob(&ON, "AUSA_ROUTER_PER_TOKEN", 0, |_| true) != 0
}

/// Sets per block of the router's `dz` kernel (`SJ` in router.cu).
const ROUTER_SET_TILE: i64 = 16;

/// The largest head dimension of the router kernels (registers and shared memory).
pub const ROUTER_MAX_HEAD_DIM: i64 = 128;

/// What the router forward keeps for its backward pass.
#[derive(Debug)]
pub struct RouterSaved {
    /// `[B, H, L, D]` the output, of `q`'s kind and memory layout (a transposed view of a
    /// `[B, L, H, D]` tensor when `q` was one; `TokenRows`).
    pub out: Tensor,
    /// `[B, H, L]` log-sum-exp of each token's kept logits (`-inf`: no visible set).
    pub lse: Tensor,
    /// `[B * H * L, 8]` the kept sets of each token with top-k (`-1` past them); a
    /// placeholder row without top-k.
    pub kept: Tensor,
    /// The top-k of the forward pass.
    pub topk: i64,
    /// `[B, L, ceil(M / 32)]` the route as bits (`route_pack` in router.cu), for the
    /// backward pass without top-k.
    pub route_bits: Tensor,
    /// `[B * H * L * 8]` the gate `P` of each kept slot, when the forward wrote it (the
    /// per-token forward): the backward then reads it instead of recomputing the logits.
    pub kept_p: Option<Tensor>,
}

/// A `[B, H, L, D]` token tensor of the router (`q`, its output, `dout`, `dq`) as the
/// kernels take it: contiguous storage, either head-major (`[B, H, L, D]`) or token-major
/// (`[B, L, H, D]`: a projection's output viewed per head, `view([B, L, H, D])
/// .transpose(1, 2)`, which the kernels read in place instead of a transposing copy in and
/// out of every call).
struct TokenRows {
    storage: Tensor,
    token_major: bool,
}

impl TokenRows {
    /// `t`'s rows, in `t`'s own layout (`layout: None`) or the given one, copied only when
    /// `t` does not lie that way.
    fn of(t: &Tensor, layout: Option<bool>) -> TokenRows {
        let token_major =
            layout.unwrap_or_else(|| !t.is_contiguous() && t.transpose(1, 2).is_contiguous());
        let storage = if token_major {
            t.transpose(1, 2).contiguous()
        } else {
            t.contiguous()
        };
        TokenRows {
            storage,
            token_major,
        }
    }

    /// A new `[b, h, l, d]` tensor of `kind` laid out as `token_major` says.
    fn empty([b, h, l, d]: [i64; 4], kind: Kind, device: Device, token_major: bool) -> TokenRows {
        let dims = if token_major {
            [b, l, h, d]
        } else {
            [b, h, l, d]
        };
        TokenRows {
            storage: Tensor::empty(dims, (kind, device)),
            token_major,
        }
    }

    /// The `[B, H, L, D]` tensor (a view of the storage).
    fn view(&self) -> Tensor {
        if self.token_major {
            self.storage.transpose(1, 2)
        } else {
            self.storage.shallow_clone()
        }
    }

    /// The layout flag the kernels take.
    fn flag(&self) -> i32 {
        i32::from(self.token_major)
    }
}

/// `t` at a 16-byte aligned address, for kernels that read it in 16-byte words: a view at
/// an unaligned offset is copied (libtorch's allocations are aligned).
fn aligned_16(t: Tensor) -> Tensor {
    if (t.data_ptr() as usize).is_multiple_of(16) {
        t
    } else {
        t.copy()
    }
}

/// The router's dimensions, checked once per call.
#[derive(Debug, Clone, Copy)]
struct RouterShape {
    b: i64,
    h: i64,
    l: i64,
    m: i64,
    d: i64,
}

impl RouterShape {
    fn check(q: &Tensor, z: &Tensor, route: &Tensor, topk: i64) -> Result<RouterShape, CudaError> {
        let [b, h, l, d] = dims(q, "q")?;
        let [_, _, m, _] = dims(z, "z")?;
        expect_shape(z, &[b, h, m, d], "z")?;
        if route.numel() as i64 != b * l * m {
            return Err(CudaError::Input(format!(
                "route: expected [B, L, M] = [{b}, {l}, {m}], got {:?}",
                route.size()
            )));
        }
        if !(0..=ROUTER_TOPK_MAX).contains(&topk) {
            return Err(CudaError::Input(format!(
                "the fused router keeps at most {ROUTER_TOPK_MAX} sets per token, got top-k {topk}"
            )));
        }
        if !(1..=ROUTER_MAX_HEAD_DIM).contains(&d) {
            return Err(CudaError::Input(format!(
                "the fused router supports head dimensions 1..={ROUTER_MAX_HEAD_DIM}, got {d}"
            )));
        }
        Ok(RouterShape { b, h, l, m, d })
    }

    /// `heads, len, m, topk` as the kernels take them.
    fn kernel_ints(&self, topk: i64) -> Result<[i32; 4], CudaError> {
        Ok([
            to_i32(self.h)?,
            to_i32(self.l)?,
            to_i32(self.m)?,
            to_i32(topk)?,
        ])
    }

    fn heads_dim(&self) -> Result<u32, CudaError> {
        u32::try_from(self.b * self.h)
            .ok()
            .filter(|&n| n <= 65_535)
            .ok_or_else(|| {
                CudaError::Input(format!(
                    "B * H = {} is too large (at most 65535)",
                    self.b * self.h
                ))
            })
    }

    /// 32-set words per token of the packed route.
    fn route_words(&self) -> i64 {
        (self.m + 31) / 32
    }

    /// A group of [`row_lanes`] lanes per token: blocks of `ROUTER_DQ_WARPS`
    /// warps x `B * H`.
    fn lane_group_grid(&self) -> Result<LaunchConfig, CudaError> {
        let threads = ROUTER_DQ_WARPS * 32;
        self.tokens_grid(threads / row_lanes(self.d), threads)
    }

    /// Sixteen tokens per warp: blocks of [`ROUTER_MMA_WARPS`] warps x `B * H`.
    fn mma_grid(&self) -> Result<LaunchConfig, CudaError> {
        self.tokens_grid(16 * ROUTER_MMA_WARPS, 32 * ROUTER_MMA_WARPS)
    }

    /// One thread per token: blocks of `ROUTER_ROWS` tokens x `B * H`.
    fn token_grid(&self) -> Result<LaunchConfig, CudaError> {
        self.tokens_grid(ROUTER_ROWS, ROUTER_ROWS)
    }

    /// Blocks of `threads` threads, each block `tokens` tokens of one sequence's head,
    /// over the `L` tokens (x) and `B * H` (y).
    fn tokens_grid(&self, tokens: u32, threads: u32) -> Result<LaunchConfig, CudaError> {
        let per_block = i64::from(tokens);
        let blocks = u32::try_from((self.l + per_block - 1) / per_block).map_err(|_| {
            CudaError::Input(format!("{} tokens per sequence are too many", self.l))
        })?;
        Ok(LaunchConfig {
            grid_dim: (blocks.max(1), self.heads_dim()?.max(1), 1),
            block_dim: (threads, 1, 1),
            shared_mem_bytes: 0,
        })
    }
}

/// The inputs of the fused set attention (fp32, on one GPU; [`CudaKernels`]'s
/// `set_attention_*`). `delta` and `attend` are the batch's, shared by every layer.
#[derive(Debug)]
pub struct SetAttentionInputs<'a> {
    /// `[B, M, M]` fp32 `Delta` between set slots.
    pub delta: &'a Tensor,
    /// `[B, M, M]` (or `[B, 1, M, M]`) bool: query set `i` may attend key set `j`.
    pub attend: &'a Tensor,
    /// `[H]` `gamma_h` (positive).
    pub gamma: &'a Tensor,
    /// `[H]` `tau_h` (positive).
    pub tau: &'a Tensor,
    /// `[B, H, M, D]` values `V_h([Phi_j, psi(|S_j|)])`.
    pub v: &'a Tensor,
    /// The content term: `(qa, kb, beta)`, `qa = A_h Phi_i` and `kb = B_h Phi_j`, both
    /// `[B, H, M, D]`; `None` when `beta` is 0.
    pub content: Option<(&'a Tensor, &'a Tensor, f64)>,
}

/// The gradients of the fused set attention, fp32.
#[derive(Debug)]
pub struct SetAttentionGrads {
    /// `[B, H, M, D]` of `v`.
    pub dv: Tensor,
    /// `[H]` of `gamma`.
    pub dgamma: Tensor,
    /// `[H]` of `tau`.
    pub dtau: Tensor,
    /// `[B, H, M, D]` of `qa` (with the content term).
    pub dqa: Option<Tensor>,
    /// `[B, H, M, D]` of `kb` (with the content term).
    pub dkb: Option<Tensor>,
}

/// The set attention's dimensions, checked once per call.
#[derive(Debug, Clone, Copy)]
struct SetShape {
    b: i64,
    h: i64,
    m: i64,
    d: i64,
}

impl SetShape {
    fn check(inputs: &SetAttentionInputs) -> Result<SetShape, CudaError> {
        let [b, h, m, d] = dims(inputs.v, "v")?;
        expect_shape(inputs.delta, &[b, m, m], "delta")?;
        if inputs.attend.numel() as i64 != b * m * m {
            return Err(CudaError::Input(format!(
                "attend: expected [B, M, M] = [{b}, {m}, {m}], got {:?}",
                inputs.attend.size()
            )));
        }
        expect_shape(inputs.gamma, &[h], "gamma")?;
        expect_shape(inputs.tau, &[h], "tau")?;
        if let Some((qa, kb, _)) = inputs.content {
            expect_shape(qa, &[b, h, m, d], "qa")?;
            expect_shape(kb, &[b, h, m, d], "kb")?;
        }
        if !(1..=SET_ATTENTION_MAX_HEAD_DIM).contains(&d) {
            return Err(CudaError::Input(format!(
                "the fused set attention supports head dimensions 1..={SET_ATTENTION_MAX_HEAD_DIM}, got {d}"
            )));
        }
        Ok(SetShape { b, h, m, d })
    }

    /// `(ranges, sets per range)` of `split`: whole tiles per range, as many ranges as
    /// wanted up to one tile each.
    fn ranges(&self, split: SetSplit) -> (i64, i64) {
        let tiles = ((self.m + SET_ATTENTION_TILE - 1) / SET_ATTENTION_TILE).max(1);
        let wanted = match split {
            SetSplit::Ranges(n) => n,
            SetSplit::Auto => {
                let rows = i64::from(SET_ATTENTION_THREADS / set_attention_lanes(self.d));
                let blocks = ((self.m + rows - 1) / rows).max(1) * (self.b * self.h).max(1);
                match set_attention_target_blocks() {
                    0 => 1,
                    target => (target + blocks - 1) / blocks,
                }
            }
        };
        let wanted = wanted.clamp(1, tiles);
        let width = (tiles + wanted - 1) / wanted * SET_ATTENTION_TILE;
        (((self.m + width - 1) / width).max(1), width)
    }

    /// A group of [`set_attention_lanes`] lanes per set row: blocks of `SET_ATTENTION_THREADS`
    /// threads x `B * H` x `ranges`.
    fn grid(&self, ranges: i64) -> Result<LaunchConfig, CudaError> {
        let rows = i64::from(SET_ATTENTION_THREADS / set_attention_lanes(self.d));
        let blocks = u32::try_from((self.m + rows - 1) / rows)
            .map_err(|_| CudaError::Input(format!("{} sets per sequence are too many", self.m)))?;
        let bh = u32::try_from(self.b * self.h)
            .ok()
            .filter(|&n| n <= 65_535)
            .ok_or_else(|| {
                CudaError::Input(format!(
                    "B * H = {} is too large (at most 65535)",
                    self.b * self.h
                ))
            })?;
        Ok(LaunchConfig {
            grid_dim: (blocks.max(1), bh.max(1), to_u32(ranges.max(1))?),
            block_dim: (SET_ATTENTION_THREADS, 1, 1),
            shared_mem_bytes: 0,
        })
    }
}

/// The set attention's input pointers (`delta, attend, gamma, tau, v, qa, kb`, in the
/// kernels' order), `beta` and the integer arguments, with the contiguous copies they
/// point into kept alive.
struct SetArgs {
    ptrs: [u64; 7],
    beta: f32,
    heads: i32,
    m: i32,
    _keep: Vec<Tensor>,
}

impl SetArgs {
    fn new(
        inputs: &SetAttentionInputs,
        shape: SetShape,
        ordinal: usize,
    ) -> Result<SetArgs, CudaError> {
        let SetShape { b, h, m, d } = shape;
        let delta = inputs.delta.contiguous();
        let attend = inputs.attend.reshape([b, m, m]).contiguous();
        let gamma = inputs.gamma.contiguous();
        let tau = inputs.tau.contiguous();
        let v = inputs.v.contiguous();
        let rows = b * h * m * d;
        let (qa, kb, beta) = match inputs.content {
            Some((qa, kb, beta)) => (qa.contiguous(), kb.contiguous(), beta as f32),
            // Never read (CONTENT=0): v stands in so every pointer is valid.
            None => (v.shallow_clone(), v.shallow_clone(), 0.0),
        };
        let ptrs = [
            device_ptr(&delta, Kind::Float, b * m * m, ordinal)?,
            device_ptr(&attend, Kind::Bool, b * m * m, ordinal)?,
            device_ptr(&gamma, Kind::Float, h, ordinal)?,
            device_ptr(&tau, Kind::Float, h, ordinal)?,
            device_ptr(&v, Kind::Float, rows, ordinal)?,
            device_ptr(&qa, Kind::Float, rows, ordinal)?,
            device_ptr(&kb, Kind::Float, rows, ordinal)?,
        ];
        Ok(SetArgs {
            ptrs,
            beta,
            heads: to_i32(h)?,
            m: to_i32(m)?,
            _keep: vec![delta, attend, gamma, tau, v, qa, kb],
        })
    }
}

/// Every op family's source (what [`compile_all`] checks).
const SOURCES: &[&Source] = &[&DELTA, &ROUTER, &SET_ATTENTION, &LAYER_NORM, &POOL];

/// Threads per block side of the pairwise kernels (`TILE` in delta.cu).
const TILE: u32 = 16;

/// Whether a library of `name` (`cuda`, `nvrtc`) can be loaded, under any of the names
/// cudarc would try. cudarc panics when it finds none, so this is asked first.
fn loadable(name: &str) -> bool {
    cudarc::get_lib_name_candidates(name)
        .iter()
        .any(|candidate| {
            // SAFETY: loading a shared library runs its initializers; the CUDA driver and
            // NVRTC libraries are the ones cudarc loads next anyway.
            unsafe { libloading::Library::new(candidate) }.is_ok()
        })
}

/// NVRTC opens its builtins library by name at the first compile, searching its own
/// paths, which miss the PyPI install's folder; loading it first from ours (the binary's
/// RPATH, `LD_LIBRARY_PATH`) makes that lookup find the copy already in memory. Best
/// effort: where this finds nothing, NVRTC's own lookup may still succeed.
fn preload_nvrtc_builtins() {
    for name in [
        "libnvrtc-builtins.so.13.0",
        "libnvrtc-builtins.so.13",
        "libnvrtc-builtins.so",
    ] {
        // SAFETY: NVRTC's own helper library, which NVRTC loads next anyway; leaked so it
        // stays loaded for NVRTC.
        if let Ok(lib) = unsafe { libloading::Library::new(name) } {
            std::mem::forget(lib);
            return;
        }
    }
}

/// Loads libtorch's CUDA library by name (found through `LD_LIBRARY_PATH` or the test
/// binary's RPATH), as the trainer does at start (`ausa_train::device`), so the GPU tests
/// of this crate can make CUDA tensors. Kept loaded for the rest of the process.
#[cfg(test)]
pub(crate) fn load_libtorch_cuda_for_tests() -> bool {
    // SAFETY: libtorch's own CUDA library, loaded before any CUDA tensor exists; leaked
    // on purpose so its code stays mapped while tensors use it.
    unsafe { libloading::Library::new("libtorch_cuda.so") }
        .map(std::mem::forget)
        .is_ok()
}

/// This crate's test binary loads libtorch_cuda.so before `main`, before any test runs.
/// libtorch decides once per process, at its first CUDA query (any tensor op may make
/// one), whether CUDA is there; a GPU test that loaded the library only when it started
/// would find CUDA missing whenever a CPU test of the same process ran first (seen on the
/// H200 with `--test-threads 1`). On a machine without the library this does nothing.
///
/// An `.init_array` entry is how an ELF program runs code before `main` (what the `ctor`
/// crate does); its dependencies, libtorch_cpu among them, are initialized by then.
#[cfg(all(test, target_os = "linux"))]
#[used]
#[link_section = ".init_array"]
static LOAD_LIBTORCH_CUDA_BEFORE_MAIN: extern "C" fn() = {
    extern "C" fn load() {
        let _ = load_libtorch_cuda_for_tests();
    }
    load
};

/// A specialized module: its source file and `-D` defines.
type ModuleKey = (&'static str, Vec<String>);

/// The compiled kernels on one GPU.
pub struct CudaKernels {
    ctx: Arc<CudaContext>,
    delta: Arc<CudaModule>,
    /// Modules compiled with `-D` constants (head dimension, content term), per source
    /// file and defines, compiled at first use.
    specialized: std::sync::Mutex<std::collections::HashMap<ModuleKey, Arc<CudaModule>>>,
    arch: String,
    ordinal: usize,
}

impl std::fmt::Debug for CudaKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKernels")
            .field("ordinal", &self.ordinal)
            .finish()
    }
}

impl CudaKernels {
    /// Opens GPU `ordinal` (libtorch's primary context) and loads every kernel, compiling
    /// what the disk cache does not hold.
    pub fn open(ordinal: usize) -> Result<CudaKernels, CudaError> {
        for lib in ["cuda", "nvrtc"] {
            if !loadable(lib) {
                return Err(CudaError::Unavailable(format!(
                    "lib{lib}.so was not found (a GPU machine has it; put its directory on LD_LIBRARY_PATH)"
                )));
            }
        }
        preload_nvrtc_builtins();
        let ctx = CudaContext::new(ordinal)?;
        let (major, minor) = ctx.compute_capability()?;
        let arch = format!("sm_{major}{minor}");
        let delta = ctx.load_module(compiled(&DELTA, &arch, &[])?)?;
        Ok(CudaKernels {
            ctx,
            delta,
            specialized: Default::default(),
            arch,
            ordinal,
        })
    }

    /// The kernels of device `ordinal`, opened at the first call and shared by every
    /// later caller of the process (a failed open is not kept: the next call retries).
    pub fn shared(ordinal: usize) -> Result<Arc<CudaKernels>, CudaError> {
        static OPENED: std::sync::Mutex<Vec<(usize, Arc<CudaKernels>)>> =
            std::sync::Mutex::new(Vec::new());
        let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, k)) = opened.iter().find(|(o, _)| *o == ordinal) {
            return Ok(k.clone());
        }
        let k = Arc::new(CudaKernels::open(ordinal)?);
        opened.push((ordinal, k.clone()));
        Ok(k)
    }

    /// `[B, M, M]` MinHash `Delta` from padded `[B, M, k]` signatures (any 32-bit integer
    /// kind; only equality matters) and `[B, M]` fp32 set sizes, as
    /// `crate::minhash_delta` computes it.
    pub fn delta_minhash(&self, signatures: &Tensor, sizes: &Tensor) -> Result<Tensor, CudaError> {
        let [b, m, _] = dims(signatures, "signatures")?;
        let mut out = Tensor::empty([b, m, m], (Kind::Float, signatures.device()));
        self.delta_minhash_into(signatures, sizes, &mut out)?;
        Ok(out)
    }

    /// [`CudaKernels::delta_minhash`] into an existing `[B, M, M]` fp32 tensor (every
    /// element is written; the tests poison it first).
    pub fn delta_minhash_into(
        &self,
        signatures: &Tensor,
        sizes: &Tensor,
        out: &mut Tensor,
    ) -> Result<(), CudaError> {
        let [b, m, k] = dims(signatures, "signatures")?;
        expect_shape(sizes, &[b, m], "sizes")?;
        expect_shape(out, &[b, m, m], "out")?;
        let signatures = signatures.contiguous();
        let sizes = sizes.contiguous();
        let (sig_ptr, size_ptr, out_ptr) = (
            device_ptr(&signatures, Kind::Int, b * m * k, self.ordinal)?,
            device_ptr(&sizes, Kind::Float, b * m, self.ordinal)?,
            device_ptr(out, Kind::Float, b * m * m, self.ordinal)?,
        );
        let (m32, k32) = (to_i32(m)?, to_i32(k)?);
        let f = self.delta.load_function("delta_minhash")?;
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(&sig_ptr)
            .arg(&size_ptr)
            .arg(&out_ptr)
            .arg(&m32)
            .arg(&k32);
        // SAFETY: see the module invariant; the kernel reads b*m*k u32 and b*m f32 and
        // writes b*m*m f32, exactly the checked element counts.
        unsafe { launch.launch(pair_grid(b, m)?) }?;
        Ok(())
    }

    /// `[B, M, M]` exact `Delta` from the layout's atom ids through bitsets of
    /// `universe` atoms (at most [`crate::exact::MAX_EXACT_UNIVERSE`]), as
    /// `crate::exact::exact_delta` computes it.
    pub fn delta_exact(
        &self,
        layout: &crate::SetLayout,
        universe: i64,
    ) -> Result<Tensor, CudaError> {
        if !(1..=crate::exact::MAX_EXACT_UNIVERSE).contains(&universe) {
            return Err(CudaError::Input(format!(
                "exact Delta needs a universe of 1..={} atoms, got {universe}",
                crate::exact::MAX_EXACT_UNIVERSE
            )));
        }
        let (b, m) = (layout.batch, layout.max_sets);
        let words = (universe + 31) / 32;
        let values = layout.values.to_kind(Kind::Int64).contiguous();
        let slots = layout.value_slot.to_kind(Kind::Int64).contiguous();
        let n = values.size()[0];
        if n > 0 {
            let (lo, hi) = (values.min().int64_value(&[]), values.max().int64_value(&[]));
            if lo < 0 || hi >= universe {
                return Err(CudaError::Input(format!(
                    "atom ids {lo}..={hi} do not fit a universe of {universe}"
                )));
            }
        }
        let device = values.device();
        let bits = Tensor::zeros([b * m, words], (Kind::Int, device));
        let sizes = layout.sizes.to_kind(Kind::Float).contiguous();
        let out = Tensor::empty([b, m, m], (Kind::Float, device));
        let (value_ptr, slot_ptr, bits_ptr, size_ptr, out_ptr) = (
            device_ptr(&values, Kind::Int64, n, self.ordinal)?,
            device_ptr(&slots, Kind::Int64, n, self.ordinal)?,
            device_ptr(&bits, Kind::Int, b * m * words, self.ordinal)?,
            device_ptr(&sizes, Kind::Float, b * m, self.ordinal)?,
            device_ptr(&out, Kind::Float, b * m * m, self.ordinal)?,
        );
        let words32 = to_i32(words)?;
        let stream = self.current_stream()?;
        if n > 0 {
            let fill = self.delta.load_function("bitset_fill")?;
            let mut launch = stream.launch_builder(&fill);
            launch
                .arg(&value_ptr)
                .arg(&slot_ptr)
                .arg(&bits_ptr)
                .arg(&n)
                .arg(&words32);
            let blocks = u32::try_from((n + 255) / 256)
                .map_err(|_| CudaError::Input(format!("{n} atom occurrences are too many")))?;
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: see the module invariant; ids were checked below `universe`, and
            // every slot is below b*m (SetLayout builds them so), so each bit lies
            // inside the b*m*words words of `bits`.
            unsafe { launch.launch(cfg) }?;
        }
        let f = self.delta.load_function("delta_exact")?;
        let mut launch = stream.launch_builder(&f);
        let m32 = to_i32(m)?;
        launch
            .arg(&bits_ptr)
            .arg(&size_ptr)
            .arg(&out_ptr)
            .arg(&m32)
            .arg(&words32);
        // SAFETY: see the module invariant; reads b*m*words u32 and b*m f32, writes
        // b*m*m f32.
        unsafe { launch.launch(pair_grid(b, m)?) }?;
        Ok(out)
    }

    /// The fused router forward: for queries `q` (`[B, H, L, D]` fp32) and set outputs
    /// `z` (`[B, H, M, D]` fp32), with `route` (`[B, L, M]` or `[B, 1, L, M]` bool, token
    /// `t` may use set `j`), the softmax over the visible sets of `q_t . z_j` (or over the
    /// `topk` best of them; 0 keeps every visible set) mixing `z`. A token with no visible
    /// set gets a zero output. Returns what [`CudaKernels::router_backward`] needs.
    ///
    /// `q` is fp32 or bf16 (the output is of its kind, see [`router_token_kind`]); `z`
    /// is fp32 or bf16. `bf16_values`: every value of `q` and `z` is a bf16 value (they
    /// come from a bf16 step; implied by a bf16 `q` or `z`): the top-k logits may then run
    /// as bf16 tensor-core products (exact products, fp32 sums) when the head dimension is
    /// a multiple of 16 on sm_80 or later. That kernel reads `z` in bf16 and the others in
    /// fp32: a `z` of the kind the chosen kernel reads is used as it is, without a cast.
    ///
    /// `narrow`: the caller knows that no token's route holds more than
    /// [`ROUTER_TOPK_MAX`] sets (a routing table's own top-k): with top-k the forward then
    /// takes the per-token kernel (`router_fwd_cand_*`), which lists each token's sets
    /// instead of scanning tiles of them. A hint only: a token with more sets is still
    /// routed right by that kernel, more slowly.
    pub fn router_forward(
        &self,
        q: &Tensor,
        z: &Tensor,
        route: &Tensor,
        topk: i64,
        bf16_values: bool,
        narrow: bool,
    ) -> Result<RouterSaved, CudaError> {
        let shape = RouterShape::check(q, z, route, topk)?;
        let RouterShape { b, h, l, m, d } = shape;
        let tokens = router_token_kind(q)?;
        if !matches!(z.kind(), Kind::Float | Kind::BFloat16) {
            return Err(CudaError::Input(format!(
                "z: expected Float or BFloat16, got {:?}",
                z.kind()
            )));
        }
        let bf16_values = bf16_values || tokens == Kind::BFloat16 || z.kind() == Kind::BFloat16;
        if takes_per_token_forward(topk, narrow, d) {
            return self.router_forward_per_token(q, z, route, shape, topk, bf16_values);
        }
        let tensor_cores = topk > 0 && bf16_values && d % 16 == 0 && self.has_bf16_mma();
        // The set rows as the chosen kernel reads them: bf16 for the tensor-core kernel
        // (exact: z holds bf16 values there; half the bytes of every block's staging and
        // no conversions), fp32 for the others.
        let z_kind = if tensor_cores {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        let device = q.device();
        let q = TokenRows::of(q, None);
        let z = z.to_kind(z_kind).contiguous();
        // The tensor-core kernel's mix reads z rows and writes out rows in 16-byte words:
        // out is allocated here (aligned), and a z view at an unaligned offset is copied.
        let z = if tensor_cores { aligned_16(z) } else { z };
        let route = route.reshape([b, l, m]).contiguous();
        let out = TokenRows::empty([b, h, l, d], tokens, device, q.token_major);
        let lse = Tensor::empty([b, h, l], (Kind::Float, device));
        let kept_rows = if topk > 0 { b * h * l } else { 1 };
        let kept = Tensor::empty([kept_rows, ROUTER_TOPK_MAX], (Kind::Int, device));
        let ptrs = [
            device_ptr(&q.storage, tokens, b * h * l * d, self.ordinal)?,
            device_ptr(&z, z_kind, b * h * m * d, self.ordinal)?,
            device_ptr(&route, Kind::Bool, b * l * m, self.ordinal)?,
            device_ptr(&out.storage, tokens, b * h * l * d, self.ordinal)?,
            device_ptr(&lse, Kind::Float, b * h * l, self.ordinal)?,
            device_ptr(&kept, Kind::Int, kept_rows * ROUTER_TOPK_MAX, self.ordinal)?,
        ];
        let module = self.router(d, tokens)?;
        let route_bits = self.route_pack(&module, shape, &ptrs[2])?;
        let bits_ptr = device_ptr(
            &route_bits,
            Kind::Int,
            b * l * shape.route_words(),
            self.ordinal,
        )?;
        let (name, grid) = match (topk > 0, tensor_cores) {
            (true, true) => ("router_fwd_topk_mma", shape.mma_grid()?),
            (true, false) => ("router_fwd_topk", shape.token_grid()?),
            (false, _) => ("router_fwd", shape.token_grid()?),
        };
        let f = module.load_function(name)?;
        let ints = shape.kernel_ints(topk)?;
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        launch.arg(&ptrs[0]).arg(&ptrs[1]);
        for p in [&bits_ptr, &ptrs[3], &ptrs[4], &ptrs[5]] {
            launch.arg(p);
        }
        for i in &ints {
            launch.arg(i);
        }
        let layout = q.flag();
        launch.arg(&layout);
        // SAFETY: see the module invariant; the kernel reads q, z (b*h*m*d, bf16 for the
        // MMA kernel, fp32 for the others), the route bits and
        // writes out, lse and (with top-k) kept, each of the element count checked above,
        // q and out both in the layout `layout` names; the module's HEAD_DIM is `d` (a
        // multiple of 16 for the MMA kernel).
        unsafe { launch.launch(grid) }?;
        Ok(RouterSaved {
            out: out.view(),
            lse,
            kept,
            topk,
            route_bits,
            kept_p: None,
        })
    }

    /// The top-k forward by `router_fwd_cand_z16` / `_z32` (router.cu): a group of lanes
    /// per (token, head) over the token's own candidate sets. `z` is read in bf16 when
    /// every value is one (`bf16_values`: exact), else in fp32.
    fn router_forward_per_token(
        &self,
        q: &Tensor,
        z: &Tensor,
        route: &Tensor,
        shape: RouterShape,
        topk: i64,
        bf16_values: bool,
    ) -> Result<RouterSaved, CudaError> {
        let RouterShape { b, h, l, m, d } = shape;
        let tokens = router_token_kind(q)?;
        let device = q.device();
        let z_kind = if bf16_values {
            Kind::BFloat16
        } else {
            Kind::Float
        };
        let q = TokenRows::of(q, None);
        // The kernel reads z rows in 16-byte runs.
        let z = aligned_16(z.to_kind(z_kind).contiguous());
        let route = route.reshape([b, l, m]).contiguous();
        let out = TokenRows::empty([b, h, l, d], tokens, device, q.token_major);
        let lse = Tensor::empty([b, h, l], (Kind::Float, device));
        let rows = b * h * l;
        let kept = Tensor::empty([rows.max(1), ROUTER_TOPK_MAX], (Kind::Int, device));
        let kept_p = Tensor::empty([rows.max(1) * ROUTER_TOPK_MAX], (Kind::Float, device));
        let module = self.router(d, tokens)?;
        let route_ptr = device_ptr(&route, Kind::Bool, b * l * m, self.ordinal)?;
        let route_bits = self.route_pack(&module, shape, &route_ptr)?;
        // No (token, head) row: nothing to launch (a grid of no blocks is an error).
        if rows > 0 {
            let ptrs = [
                device_ptr(&q.storage, tokens, rows * d, self.ordinal)?,
                device_ptr(&z, z_kind, b * h * m * d, self.ordinal)?,
                device_ptr(
                    &route_bits,
                    Kind::Int,
                    b * l * shape.route_words(),
                    self.ordinal,
                )?,
                device_ptr(&out.storage, tokens, rows * d, self.ordinal)?,
                device_ptr(&lse, Kind::Float, rows, self.ordinal)?,
                device_ptr(&kept, Kind::Int, rows * ROUTER_TOPK_MAX, self.ordinal)?,
                device_ptr(&kept_p, Kind::Float, rows * ROUTER_TOPK_MAX, self.ordinal)?,
            ];
            let name = if z_kind == Kind::BFloat16 {
                "router_fwd_cand_z16"
            } else {
                "router_fwd_cand_z32"
            };
            let f = module.load_function(name)?;
            let groups_per_block = i64::from(ROUTER_CAND_WARPS) * (32 * ROUTER_CAND_DIMS / d);
            let blocks = u32::try_from((rows + groups_per_block - 1) / groups_per_block)
                .map_err(|_| CudaError::Input(format!("{rows} router rows are too many")))?;
            let ints = [
                to_i32(b)?,
                to_i32(h)?,
                to_i32(l)?,
                to_i32(m)?,
                to_i32(topk)?,
                q.flag(),
                i32::from(ptrs[0].is_multiple_of(16)),
            ];
            let stream = self.current_stream()?;
            let mut launch = stream.launch_builder(&f);
            for p in &ptrs {
                launch.arg(p);
            }
            for i in &ints {
                launch.arg(i);
            }
            let cfg = LaunchConfig {
                grid_dim: (blocks, 1, 1),
                block_dim: (ROUTER_CAND_WARPS * 32, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: see the module invariant; the kernel reads q (b*h*l*d of `tokens`,
            // in the layout of its flag, 16-byte runs only when the flag says its base is
            // aligned), z (b*h*m*d of z_kind, 16-byte aligned base, checked above, rows of
            // whole 16-byte words since d % 8 == 0), the route bits, and writes out (our
            // aligned allocation), lse, kept and kept_p, each of the element count
            // checked above.
            unsafe { launch.launch(cfg) }?;
        }
        Ok(RouterSaved {
            out: out.view(),
            lse,
            kept,
            topk,
            route_bits,
            kept_p: Some(kept_p),
        })
    }

    /// `route` (`[B, L, M]` bool at `route_ptr`) as `[B, L, ceil(M / 32)]` words of bits.
    fn route_pack(
        &self,
        module: &Arc<CudaModule>,
        shape: RouterShape,
        route_ptr: &u64,
    ) -> Result<Tensor, CudaError> {
        let RouterShape { b, l, m, .. } = shape;
        let words = shape.route_words();
        let device = Device::Cuda(self.ordinal);
        let bits = Tensor::empty([b, l, words], (Kind::Int, device));
        let n = b * l * words;
        if n == 0 {
            return Ok(bits);
        }
        let bits_ptr = device_ptr(&bits, Kind::Int, n, self.ordinal)?;
        let f = module.load_function("route_pack")?;
        let (rows, m32, words32) = (b * l, to_i32(m)?, to_i32(words)?);
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        launch
            .arg(route_ptr)
            .arg(&bits_ptr)
            .arg(&rows)
            .arg(&m32)
            .arg(&words32);
        let blocks = u32::try_from((n + 255) / 256)
            .map_err(|_| CudaError::Input(format!("a route of {n} words is too large")))?;
        let cfg = LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: see the module invariant; reads b*l*m bytes of route, writes b*l*words
        // u32 of bits.
        unsafe { launch.launch(cfg) }?;
        Ok(bits)
    }

    /// The router's gradients `(dq, dz)` for the output gradient `dout` (`[B, H, L, D]`),
    /// from the forward's inputs and what it saved. `dout` is cast to `q`'s kind when it
    /// has another; `z` is fp32 or bf16 (the top-k `dq` reads a bf16 `z` as it is); the
    /// returned `dq` is of `q`'s kind, `dz` is fp32. Deterministic: every element is
    /// summed in a fixed order by one thread.
    pub fn router_backward(
        &self,
        q: &Tensor,
        z: &Tensor,
        route: &Tensor,
        saved: &RouterSaved,
        dout: &Tensor,
    ) -> Result<(Tensor, Tensor), CudaError> {
        let shape = RouterShape::check(q, z, route, saved.topk)?;
        let RouterShape { b, h, l, m, d } = shape;
        expect_shape(dout, &[b, h, l, d], "dout")?;
        let tokens = router_token_kind(q)?;
        let device = q.device();
        // Every token tensor in q's layout (the forward wrote out in it; dout usually
        // arrives in it, as the gradient of the same transposed view).
        let q = TokenRows::of(q, None);
        let out = TokenRows::of(&saved.out, Some(q.token_major));
        let dout = TokenRows::of(&dout.to_kind(tokens), Some(q.token_major));
        // The top-k dq reads z in bf16 or fp32 as it comes; the other kernels fp32.
        let z_bf16 = saved.topk > 0 && z.kind() == Kind::BFloat16;
        let z_kind = if z_bf16 { Kind::BFloat16 } else { Kind::Float };
        let z = z.to_kind(z_kind).contiguous();
        let route = route.reshape([b, l, m]).contiguous();
        let dq = TokenRows::empty([b, h, l, d], tokens, device, q.token_major);
        let layout = q.flag();
        let dz = Tensor::empty([b, h, m, d], (Kind::Float, device));
        let dsum = Tensor::empty([b, h, l], (Kind::Float, device));
        let kept_rows = saved.kept.size()[0];
        let (q_ptr, z_ptr, route_ptr, out_ptr, lse_ptr, kept_ptr, dout_ptr) = (
            device_ptr(&q.storage, tokens, b * h * l * d, self.ordinal)?,
            device_ptr(&z, z_kind, b * h * m * d, self.ordinal)?,
            device_ptr(&route, Kind::Bool, b * l * m, self.ordinal)?,
            device_ptr(&out.storage, tokens, b * h * l * d, self.ordinal)?,
            device_ptr(&saved.lse, Kind::Float, b * h * l, self.ordinal)?,
            device_ptr(
                &saved.kept,
                Kind::Int,
                kept_rows * ROUTER_TOPK_MAX,
                self.ordinal,
            )?,
            device_ptr(&dout.storage, tokens, b * h * l * d, self.ordinal)?,
        );
        if saved.topk > 0 && kept_rows != b * h * l {
            return Err(CudaError::Input(
                "saved top-k lists do not match the shapes".into(),
            ));
        }
        let (dq_ptr, dz_ptr, dsum_ptr) = (
            device_ptr(&dq.storage, tokens, b * h * l * d, self.ordinal)?,
            device_ptr(&dz, Kind::Float, b * h * m * d, self.ordinal)?,
            device_ptr(&dsum, Kind::Float, b * h * l, self.ordinal)?,
        );
        // With top-k, P and dS of every kept slot (for the sparse dz); else placeholders.
        let slots = kept_rows * ROUTER_TOPK_MAX;
        // P from the forward when it wrote it (then the top-k dq reads it, and reads no q).
        let forward_p = saved
            .kept_p
            .as_ref()
            .filter(|p| saved.topk > 0 && p.numel() as i64 == slots && p.kind() == Kind::Float);
        let p_saved = forward_p.is_some();
        let kept_p = forward_p.map_or_else(
            || Tensor::empty([slots], (Kind::Float, device)),
            Tensor::shallow_clone,
        );
        let kept_ds = Tensor::empty([slots], (Kind::Float, device));
        let (kept_p_ptr, kept_ds_ptr) = (
            device_ptr(&kept_p, Kind::Float, slots, self.ordinal)?,
            device_ptr(&kept_ds, Kind::Float, slots, self.ordinal)?,
        );
        let module = self.router(d, tokens)?;
        let ints = shape.kernel_ints(saved.topk)?;
        let stream = self.current_stream()?;
        if saved.topk > 0 {
            let f = module.load_function(if p_saved {
                "router_bwd_dq_topk_saved_p"
            } else {
                "router_bwd_dq_topk"
            })?;
            let mut launch = stream.launch_builder(&f);
            for p in [
                &q_ptr,
                &z_ptr,
                &out_ptr,
                &lse_ptr,
                &kept_ptr,
                &dout_ptr,
                &dq_ptr,
                &dsum_ptr,
                &kept_p_ptr,
                &kept_ds_ptr,
            ] {
                launch.arg(p);
            }
            for i in &ints {
                launch.arg(i);
            }
            let z_bf16 = i32::from(z_bf16);
            // 16-byte row runs need 16-byte aligned base pointers (libtorch's allocations
            // are; a view at an offset may not be); the kernel checks the row width.
            let aligned = i32::from(
                [q_ptr, z_ptr, out_ptr, dout_ptr, dq_ptr]
                    .iter()
                    .all(|p| p.is_multiple_of(16)),
            );
            launch.arg(&layout).arg(&z_bf16).arg(&aligned);
            // SAFETY: see the module invariant; reads the forward's tensors, its kept
            // lists (and with p_saved its kept_p, which the saved_p kernel only reads)
            // and dout, writes dq, dsum (per-token dout . out), kept_p (unless p_saved)
            // and kept_ds,
            // all of the checked element counts, the token rows in the layout `layout`,
            // z in the kind `z_bf16` names; 16-byte accesses only from 16-byte aligned
            // bases (`aligned`) at row offsets of whole 16-byte words.
            unsafe { launch.launch(shape.lane_group_grid()?) }?;
        } else {
            expect_shape(
                &saved.route_bits,
                &[b, l, shape.route_words()],
                "route bits",
            )?;
            let bits_ptr = device_ptr(
                &saved.route_bits,
                Kind::Int,
                b * l * shape.route_words(),
                self.ordinal,
            )?;
            let f = module.load_function("router_bwd_dq")?;
            let mut launch = stream.launch_builder(&f);
            for p in [
                &q_ptr, &z_ptr, &bits_ptr, &out_ptr, &lse_ptr, &dout_ptr, &dq_ptr, &dsum_ptr,
            ] {
                launch.arg(p);
            }
            for i in &ints[..3] {
                launch.arg(i);
            }
            launch.arg(&layout);
            // SAFETY: see the module invariant; reads the forward's tensors, the route
            // bits and dout, writes dq and dsum, all of the checked element counts, the
            // token rows in the layout `layout`.
            unsafe { launch.launch(shape.token_grid()?) }?;
        }
        // dz. With top-k, from the kept lists router_bwd_dq_topk wrote: a counting sort of
        // every kept entry by set, or with few sets per sequence a pass over the tokens
        // per tile of 16 sets. Without top-k, the pass recomputes P.
        if saved.topk > 0 && m > dense_dz_max_sets() {
            self.router_dz_sparse(
                &module,
                shape,
                &saved.kept,
                [q_ptr, dout_ptr, kept_p_ptr, kept_ds_ptr],
                &dz,
                (layout, tokens),
            )?;
            return Ok((dq.view(), dz));
        }
        let set_tiles = u32::try_from((m + ROUTER_SET_TILE - 1) / ROUTER_SET_TILE)
            .map_err(|_| CudaError::Input(format!("{m} sets are too many")))?;
        if saved.topk > 0 {
            self.router_dz_kept(
                &module,
                shape,
                set_tiles,
                &ints,
                (layout, tokens),
                &dz,
                [q_ptr, dout_ptr, kept_ptr, kept_p_ptr, kept_ds_ptr],
            )?;
            return Ok((dq.view(), dz));
        }
        let f = module.load_function("router_bwd_dz")?;
        let mut launch = stream.launch_builder(&f);
        for p in [
            &q_ptr, &z_ptr, &route_ptr, &lse_ptr, &kept_ptr, &dout_ptr, &dsum_ptr, &dz_ptr,
        ] {
            launch.arg(p);
        }
        for i in &ints {
            launch.arg(i);
        }
        launch.arg(&layout);
        let cfg = LaunchConfig {
            grid_dim: (set_tiles.max(1), shape.heads_dim()?, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above; reads dsum written by the previous launch on this stream,
        // writes dz, every element once.
        unsafe { launch.launch(cfg) }?;
        Ok((dq.view(), dz))
    }

    /// The top-k router's `dz` from the kept lists by tiles of sets (`router_bwd_dz_kept`,
    /// or its tensor-core twin `router_bwd_dz_kept_mma` for bf16 token rows on sm_80+),
    /// the tokens split into chunks so that the grid has about
    /// `ROUTER_DZ_TARGET_BLOCKS` blocks; each chunk's sums go to a partial buffer that
    /// `sum_chunks` adds in chunk order (deterministic). `ptrs` are `q, dout, kept,
    /// kept_p, kept_ds`; `tokens` is their kind.
    #[allow(clippy::too_many_arguments)]
    fn router_dz_kept(
        &self,
        module: &Arc<CudaModule>,
        shape: RouterShape,
        set_tiles: u32,
        ints: &[i32; 4],
        (layout, tokens): (i32, Kind),
        dz: &Tensor,
        ptrs: [u64; 5],
    ) -> Result<(), CudaError> {
        let RouterShape { b, h, l, m, d } = shape;
        let n = b * h * m * d;
        let token_tiles = (l + ROUTER_TOKEN_TILE - 1) / ROUTER_TOKEN_TILE;
        let blocks = i64::from(set_tiles.max(1)) * b * h;
        let chunks = ((ROUTER_DZ_TARGET_BLOCKS + blocks - 1) / blocks).clamp(1, token_tiles.max(1));
        // Chunks of whole token tiles; the last may be shorter (or the count smaller).
        let chunk = (token_tiles + chunks - 1) / chunks * ROUTER_TOKEN_TILE;
        let chunks = ((l + chunk - 1) / chunk).max(1);
        let partial = if chunks > 1 {
            Tensor::empty([chunks, n], (Kind::Float, dz.device()))
        } else {
            dz.shallow_clone()
        };
        let partial_ptr = device_ptr(&partial, Kind::Float, chunks * n, self.ordinal)?;
        let name = if tokens == Kind::BFloat16 && d % 16 == 0 && self.has_bf16_mma() && dz_mma() {
            "router_bwd_dz_kept_mma"
        } else {
            "router_bwd_dz_kept"
        };
        let f = module.load_function(name)?;
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        for p in ptrs.iter().chain([&partial_ptr]) {
            launch.arg(p);
        }
        for i in ints {
            launch.arg(i);
        }
        let chunk32 = to_i32(chunk)?;
        launch.arg(&layout).arg(&chunk32);
        let cfg = LaunchConfig {
            grid_dim: (set_tiles.max(1), shape.heads_dim()?, to_u32(chunks)?),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: see the module invariant; reads q and dout (b*h*l*d, in the layout
        // `layout`), kept, kept_p and kept_ds (b*h*l*8, written by router_bwd_dq_topk
        // before on this stream); block z writes elements z*n .. (z+1)*n of `partial`
        // (chunks * n), every element once.
        unsafe { launch.launch(cfg) }?;
        if chunks == 1 {
            return Ok(());
        }
        let dz_ptr = device_ptr(dz, Kind::Float, n, self.ordinal)?;
        let f = module.load_function("sum_chunks")?;
        let mut launch = stream.launch_builder(&f);
        let chunks32 = to_i32(chunks)?;
        launch.arg(&partial_ptr).arg(&dz_ptr).arg(&n).arg(&chunks32);
        let cfg = LaunchConfig {
            grid_dim: (to_u32((n + 255) / 256)?, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: reads chunks * n floats of `partial`, written by the launch before on
        // this stream; writes the n floats of dz.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// The fused set attention's forward (`set_attention.cu`): `(out, lse)`, both fp32,
    /// `[B, H, M, D]` and `[B, H, M]`, as `SetAttention::set_outputs` computes `out`.
    pub fn set_attention_forward(
        &self,
        inputs: &SetAttentionInputs,
    ) -> Result<(Tensor, Tensor), CudaError> {
        let SetShape { b, h, m, d } = SetShape::check(inputs)?;
        let device = inputs.v.device();
        let mut out = Tensor::empty([b, h, m, d], (Kind::Float, device));
        let mut lse = Tensor::empty([b, h, m], (Kind::Float, device));
        self.set_attention_forward_into(inputs, &mut out, &mut lse)?;
        Ok((out, lse))
    }

    /// [`CudaKernels::set_attention_forward`] into existing tensors (every element is
    /// written; the tests poison them first).
    pub fn set_attention_forward_into(
        &self,
        inputs: &SetAttentionInputs,
        out: &mut Tensor,
        lse: &mut Tensor,
    ) -> Result<(), CudaError> {
        self.set_attention_forward_split(inputs, out, lse, SetSplit::Auto)
    }

    /// [`CudaKernels::set_attention_forward_into`] with the key ranges of `split` (the
    /// tests compare splits; the same result to fp32 rounding).
    pub fn set_attention_forward_split(
        &self,
        inputs: &SetAttentionInputs,
        out: &mut Tensor,
        lse: &mut Tensor,
        split: SetSplit,
    ) -> Result<(), CudaError> {
        let shape = SetShape::check(inputs)?;
        let SetShape { b, h, m, d } = shape;
        expect_shape(out, &[b, h, m, d], "out")?;
        expect_shape(lse, &[b, h, m], "lse")?;
        let args = SetArgs::new(inputs, shape, self.ordinal)?;
        let (ranges, width) = shape.ranges(split);
        let rows = b * h * m;
        let outs = [
            device_ptr(out, Kind::Float, rows * d, self.ordinal)?,
            device_ptr(lse, Kind::Float, rows, self.ordinal)?,
        ];
        // With ranges, the partial sums of each; with one range the kernel writes out and
        // lse directly and never touches the partial pointers (out and lse stand in, no
        // allocation per call).
        let device = inputs.v.device();
        let parts = (ranges > 1).then(|| {
            (
                Tensor::empty([ranges * rows * d], (Kind::Float, device)),
                Tensor::empty([ranges * rows * 2], (Kind::Float, device)),
            )
        });
        let part_ptrs = match &parts {
            Some((acc, stat)) => [
                device_ptr(acc, Kind::Float, ranges * rows * d, self.ordinal)?,
                device_ptr(stat, Kind::Float, ranges * rows * 2, self.ordinal)?,
            ],
            None => outs,
        };
        let module = self.set_attention(d, inputs.content.is_some())?;
        let f = module.load_function("set_attn_fwd")?;
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        for p in &args.ptrs {
            launch.arg(p);
        }
        launch.arg(&args.beta);
        for p in outs.iter().chain(&part_ptrs) {
            launch.arg(p);
        }
        let width32 = to_i32(width)?;
        launch.arg(&args.heads).arg(&args.m).arg(&width32);
        // SAFETY: see the module invariant; reads delta and attend (b*m*m), gamma and tau
        // (h), v, qa, kb (b*h*m*d; qa and kb only when the module has CONTENT=1, else
        // they alias v); with one range writes out and lse, with `ranges` the partials
        // of ranges * rows rows (grid z = ranges, each range below m), all of the checked
        // element counts; the module's HEAD_DIM is `d`.
        unsafe { launch.launch(shape.grid(ranges)?) }?;
        if ranges > 1 {
            let f = module.load_function("set_attn_fwd_combine")?;
            let mut launch = stream.launch_builder(&f);
            let ranges32 = to_i32(ranges)?;
            launch
                .arg(&part_ptrs[0])
                .arg(&part_ptrs[1])
                .arg(&outs[0])
                .arg(&outs[1])
                .arg(&rows)
                .arg(&ranges32);
            // SAFETY: reads the ranges * rows partials the launch before wrote on this
            // stream, writes the rows * d outputs and rows lse, one thread each.
            unsafe { launch.launch(LaunchConfig::for_num_elems(to_u32(rows * d)?)) }?;
        }
        Ok(())
    }

    /// The fused set attention's gradients for the output gradient `dout` (`[B, H, M,
    /// D]`), from the forward's inputs and its `out` and `lse`. Deterministic: every
    /// element is summed in a fixed order by one thread, and `gamma` / `tau` from
    /// per-row partials by a fixed-shape reduction.
    pub fn set_attention_backward(
        &self,
        inputs: &SetAttentionInputs,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
    ) -> Result<SetAttentionGrads, CudaError> {
        self.set_attention_backward_split(inputs, out, lse, dout, SetSplit::Auto)
    }

    /// [`CudaKernels::set_attention_backward`] with the inner ranges of `split`.
    pub fn set_attention_backward_split(
        &self,
        inputs: &SetAttentionInputs,
        out: &Tensor,
        lse: &Tensor,
        dout: &Tensor,
        split: SetSplit,
    ) -> Result<SetAttentionGrads, CudaError> {
        let shape = SetShape::check(inputs)?;
        let SetShape { b, h, m, d } = shape;
        expect_shape(out, &[b, h, m, d], "out")?;
        expect_shape(lse, &[b, h, m], "lse")?;
        expect_shape(dout, &[b, h, m, d], "dout")?;
        let args = SetArgs::new(inputs, shape, self.ordinal)?;
        let (ranges, width) = shape.ranges(split);
        let dout = dout.contiguous();
        let device = inputs.v.device();
        // Range z of each gradient at [z]: summed over the ranges below, in one
        // fixed-shape reduction each.
        let dsum = Tensor::empty([b, h, m], (Kind::Float, device));
        let rows = || Tensor::empty([ranges, b, h, m], (Kind::Float, device));
        let (gamma_rows, tau_rows) = (rows(), rows());
        let dv = Tensor::empty([ranges, b, h, m, d], (Kind::Float, device));
        let content = inputs.content.is_some();
        // Without the content term the kernels write no dqa / dkb: a placeholder of one
        // element stands in for them.
        let grad_len = if content { ranges * b * h * m * d } else { 1 };
        let dqa = Tensor::empty([grad_len], (Kind::Float, device));
        let dkb = Tensor::empty([grad_len], (Kind::Float, device));
        let ptr = |t: &Tensor, n: i64| device_ptr(t, Kind::Float, n, self.ordinal);
        let (out_ptr, lse_ptr, dout_ptr) = (
            ptr(out, b * h * m * d)?,
            ptr(lse, b * h * m)?,
            ptr(&dout, b * h * m * d)?,
        );
        let (dsum_ptr, gamma_rows_ptr, tau_rows_ptr) = (
            ptr(&dsum, b * h * m)?,
            ptr(&gamma_rows, ranges * b * h * m)?,
            ptr(&tau_rows, ranges * b * h * m)?,
        );
        let (dv_ptr, dqa_ptr, dkb_ptr) = (
            ptr(&dv, ranges * b * h * m * d)?,
            ptr(&dqa, grad_len)?,
            ptr(&dkb, grad_len)?,
        );
        let width32 = to_i32(width)?;
        let module = self.set_attention(d, content)?;

        let f = module.load_function("set_attn_bwd_q")?;
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        for p in &args.ptrs {
            launch.arg(p);
        }
        launch.arg(&args.beta);
        for p in [
            &out_ptr,
            &lse_ptr,
            &dout_ptr,
            &dqa_ptr,
            &dsum_ptr,
            &gamma_rows_ptr,
            &tau_rows_ptr,
        ] {
            launch.arg(p);
        }
        launch.arg(&args.heads).arg(&args.m).arg(&width32);
        // SAFETY: see the module invariant; reads the forward's inputs, out, lse and dout,
        // writes dsum, and per range (grid z = ranges) dqa (only with CONTENT=1) and the
        // per-row gamma / tau partials, all of the checked element counts.
        unsafe { launch.launch(shape.grid(ranges)?) }?;

        let f = module.load_function("set_attn_bwd_kv")?;
        let mut launch = stream.launch_builder(&f);
        for p in &args.ptrs {
            launch.arg(p);
        }
        launch.arg(&args.beta);
        for p in [&lse_ptr, &dout_ptr, &dsum_ptr, &dv_ptr, &dkb_ptr] {
            launch.arg(p);
        }
        launch.arg(&args.heads).arg(&args.m).arg(&width32);
        // SAFETY: as above; reads dsum written by the previous launch on this stream,
        // writes per range dv and (with CONTENT=1) dkb.
        unsafe { launch.launch(shape.grid(ranges)?) }?;

        // Per-row partials [ranges, B, H, M] -> [H]: the sets' axis first (contiguous, one
        // reduction per row in parallel), then the few left. One reduction over axes
        // (0, 1, 3) runs on a single block: 17.6 us at 16k (Nsight), a few here.
        let per_head = |t: &Tensor| {
            t.sum_dim_intlist([3i64].as_slice(), false, Kind::Float)
                .sum_dim_intlist([0i64, 1].as_slice(), false, Kind::Float)
        };
        let merged = |t: &Tensor| {
            let t = t.view([ranges, b, h, m, d]);
            if ranges > 1 {
                t.sum_dim_intlist([0i64].as_slice(), false, Kind::Float)
            } else {
                t.squeeze_dim(0)
            }
        };
        let (dqa, dkb) = if content {
            (Some(merged(&dqa)), Some(merged(&dkb)))
        } else {
            (None, None)
        };
        Ok(SetAttentionGrads {
            dv: merged(&dv),
            dgamma: per_head(&gamma_rows),
            dtau: per_head(&tau_rows),
            dqa,
            dkb,
        })
    }

    /// The atom pooling `out[s] = sum_{e in slot s} table[values[e]]` (`[S, dim]` fp32)
    /// for the fp32 `table` (`[V, dim]`), the Int64 atom ids `values` (`[N]`) and the
    /// slot CSR `offsets` (`[S + 1]` Int64, non-decreasing, ending at most at `N`), as
    /// `crate::pool_atoms` computes it. Every row of the output is written (an empty
    /// slot gives zeros); an id outside `[0, V)` adds nothing.
    pub fn pool_forward(
        &self,
        table: &Tensor,
        values: &Tensor,
        offsets: &Tensor,
    ) -> Result<Tensor, CudaError> {
        let [vocab, dim] = dims(table, "table")?;
        let [n] = dims(values, "values")?;
        let [s1] = dims(offsets, "offsets")?;
        let slots = s1 - 1;
        if slots < 0 {
            return Err(CudaError::Input(
                "offsets: empty (expected S + 1 entries)".into(),
            ));
        }
        let out = Tensor::empty([slots, dim], (Kind::Float, table.device()));
        if slots == 0 || dim == 0 {
            return Ok(out);
        }
        let (table, values, offsets) = (
            table.contiguous(),
            values.contiguous(),
            offsets.contiguous(),
        );
        let ptrs = [
            device_ptr(&table, Kind::Float, vocab * dim, self.ordinal)?,
            device_ptr(&values, Kind::Int64, n, self.ordinal)?,
            device_ptr(&offsets, Kind::Int64, s1, self.ordinal)?,
            device_ptr(&out, Kind::Float, slots * dim, self.ordinal)?,
        ];
        let (vocab32, dim32, vec) = (to_i32(vocab)?, to_i32(dim)?, i32::from(dim % 4 == 0));
        let module = self.specialized(&POOL, vec![])?;
        let f = module.load_function("pool_fwd")?;
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        for p in &ptrs {
            launch.arg(p);
        }
        launch.arg(&vocab32).arg(&dim32).arg(&vec);
        // SAFETY: see the module invariant; block x reads offsets[x..=x+1] (x < S), the
        // ids between them (the caller's CSR: within the N values), rows of table only for
        // ids in [0, V), and writes row x of out; the columns stay below dim (float4
        // accesses only when dim % 4 == 0, so rows stay 16-byte aligned in libtorch's
        // 256-byte aligned allocations).
        unsafe { launch.launch(pool_grid(slots, dim)?) }?;
        Ok(out)
    }

    /// The gradient of [`CudaKernels::pool_forward`] with respect to the table (`[vocab,
    /// dim]` fp32) for the output gradient `dout` (`[S, dim]` fp32), from the occurrences
    /// in atom order: `sorted_atoms` (`[N]` Int, non-decreasing) and `sorted_slots` (`[N]`
    /// Int, the slot of each, below S), as `SetLayout` keeps them. Deterministic: each atom's rows are summed
    /// in the same order on every run, without atomics.
    pub fn pool_backward(
        &self,
        dout: &Tensor,
        sorted_atoms: &Tensor,
        sorted_slots: &Tensor,
        vocab: i64,
    ) -> Result<Tensor, CudaError> {
        let [slots, dim] = dims(dout, "dout")?;
        let [n] = dims(sorted_atoms, "sorted_atoms")?;
        expect_shape(sorted_slots, &[n], "sorted_slots")?;
        let dtable = Tensor::zeros([vocab, dim], (Kind::Float, dout.device()));
        if n == 0 || dim == 0 || vocab == 0 {
            return Ok(dtable);
        }
        let dout = dout.to_kind(Kind::Float).contiguous();
        let (sorted_atoms, sorted_slots) = (sorted_atoms.contiguous(), sorted_slots.contiguous());
        let ptrs = [
            device_ptr(&dout, Kind::Float, slots * dim, self.ordinal)?,
            device_ptr(&sorted_atoms, Kind::Int, n, self.ordinal)?,
            device_ptr(&sorted_slots, Kind::Int, n, self.ordinal)?,
            device_ptr(&dtable, Kind::Float, vocab * dim, self.ordinal)?,
        ];
        let (vocab32, dim32, vec) = (to_i32(vocab)?, to_i32(dim)?, i32::from(dim % 4 == 0));
        let module = self.specialized(&POOL, vec![])?;
        let f = module.load_function("pool_bwd")?;
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        for p in &ptrs {
            launch.arg(p);
        }
        launch.arg(&n).arg(&vocab32).arg(&dim32).arg(&vec);
        // SAFETY: see the module invariant; block x reads sorted_atoms[x - 1 ..] and
        // sorted_slots up to index n - 1, rows of dout at the given slots (the layout's
        // slots, all below S = B * M), and writes the row of its atom only for ids in
        // [0, vocab): one block per atom run, so no row is written twice.
        unsafe { launch.launch(pool_grid(n, dim)?) }?;
        Ok(dtable)
    }

    /// LayerNorm of the rows of `x` (`[N, C]` fp32, contiguous) with `weight` and `bias`
    /// (`[C]` fp32), written as `out` (`BFloat16` or `Half`); also returns each row's mean
    /// and reciprocal standard deviation (`[N]` fp32) for [`CudaKernels::layer_norm_backward`].
    pub fn layer_norm_forward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        eps: f64,
        out: Kind,
    ) -> Result<(Tensor, Tensor, Tensor), CudaError> {
        let (n, c) = layer_norm_shape(x, weight, out)?;
        expect_shape(bias, &[c], "bias")?;
        let device = x.device();
        let y = Tensor::empty([n, c], (out, device));
        let mean = Tensor::empty([n], (Kind::Float, device));
        let rstd = Tensor::empty([n], (Kind::Float, device));
        if n == 0 {
            return Ok((y, mean, rstd));
        }
        let (weight, bias) = (weight.contiguous(), bias.contiguous());
        let ptrs = [
            device_ptr(x, Kind::Float, n * c, self.ordinal)?,
            device_ptr(&weight, Kind::Float, c, self.ordinal)?,
            device_ptr(&bias, Kind::Float, c, self.ordinal)?,
            device_ptr(&y, out, n * c, self.ordinal)?,
            device_ptr(&mean, Kind::Float, n, self.ordinal)?,
            device_ptr(&rstd, Kind::Float, n, self.ordinal)?,
        ];
        let module = self.layer_norm(c, out)?;
        let f = module.load_function("ln_fwd")?;
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        for p in &ptrs {
            launch.arg(p);
        }
        let eps32 = eps as f32;
        launch.arg(&n).arg(&eps32);
        // SAFETY: see the module invariant; reads n*c floats of x and c of weight and
        // bias, writes n*c half values of y and n floats of mean and rstd; the module's
        // LN_C is `c` and its output kind `out`.
        unsafe { launch.launch(row_warps(n)?) }?;
        Ok((y, mean, rstd))
    }

    /// The gradients `(dx, dweight, dbias)` of [`CudaKernels::layer_norm_forward`] for the
    /// output gradient `dy` (`[N, C]` in the output's kind), all fp32. Deterministic:
    /// `dweight` and `dbias` are summed in a fixed order, without atomics.
    pub fn layer_norm_backward(
        &self,
        x: &Tensor,
        weight: &Tensor,
        mean: &Tensor,
        rstd: &Tensor,
        dy: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor), CudaError> {
        let (n, c) = layer_norm_shape(x, weight, dy.kind())?;
        expect_shape(dy, &[n, c], "dy")?;
        expect_shape(mean, &[n], "mean")?;
        expect_shape(rstd, &[n], "rstd")?;
        let device = x.device();
        let dx = Tensor::empty([n, c], (Kind::Float, device));
        if n == 0 {
            let zeros = Tensor::zeros([c], (Kind::Float, device));
            return Ok((dx, zeros.copy(), zeros));
        }
        let blocks = (n + LAYER_NORM_ROWS_PER_BLOCK - 1) / LAYER_NORM_ROWS_PER_BLOCK;
        let partial = Tensor::empty([blocks, 2, c], (Kind::Float, device));
        let dwb = Tensor::empty([2, c], (Kind::Float, device));
        let (weight, dy) = (weight.contiguous(), dy.contiguous());
        let ptrs = [
            device_ptr(x, Kind::Float, n * c, self.ordinal)?,
            device_ptr(&weight, Kind::Float, c, self.ordinal)?,
            device_ptr(mean, Kind::Float, n, self.ordinal)?,
            device_ptr(rstd, Kind::Float, n, self.ordinal)?,
            device_ptr(&dy, dy.kind(), n * c, self.ordinal)?,
            device_ptr(&dx, Kind::Float, n * c, self.ordinal)?,
            device_ptr(&partial, Kind::Float, blocks * 2 * c, self.ordinal)?,
        ];
        let module = self.layer_norm(c, dy.kind())?;
        let f = module.load_function("ln_bwd")?;
        let stream = self.current_stream()?;
        let mut launch = stream.launch_builder(&f);
        for p in &ptrs {
            launch.arg(p);
        }
        let rows_per_block = LAYER_NORM_ROWS_PER_BLOCK as i32;
        launch.arg(&n).arg(&rows_per_block);
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(blocks)
                    .map_err(|_| CudaError::Input(format!("{n} rows are too many")))?,
                1,
                1,
            ),
            block_dim: (LAYER_NORM_WARPS * 32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: see the module invariant; reads x, dy (n*c), weight (c), mean and rstd
        // (n), writes dx (n*c) and one row of 2*c partials per block.
        unsafe { launch.launch(cfg) }?;
        let dwb_ptr = device_ptr(&dwb, Kind::Float, 2 * c, self.ordinal)?;
        let f = module.load_function("ln_bwd_reduce")?;
        let mut launch = stream.launch_builder(&f);
        let blocks32 = to_i32(blocks)?;
        launch.arg(&ptrs[6]).arg(&dwb_ptr).arg(&blocks32);
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from((2 * c + 255) / 256).unwrap_or(1), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: as above; reads the partials the previous launch on this stream wrote,
        // writes 2*c floats.
        unsafe { launch.launch(cfg) }?;
        Ok((dx, dwb.get(0), dwb.get(1)))
    }

    /// Whether the device has bf16 tensor-core MMA (`mma.sync ... bf16`: sm_80 and later).
    fn has_bf16_mma(&self) -> bool {
        self.arch
            .trim_start_matches("sm_")
            .parse::<u32>()
            .is_ok_and(|cc| cc >= 80)
    }

    /// The LayerNorm module for `c` columns and output kind `out`.
    fn layer_norm(&self, c: i64, out: Kind) -> Result<Arc<CudaModule>, CudaError> {
        self.specialized(
            &LAYER_NORM,
            vec![
                format!("-DLN_C={c}"),
                format!("-DOUT_BF16={}", i32::from(out == Kind::BFloat16)),
            ],
        )
    }

    /// The set-attention module for head dimension `d`, with or without the content term.
    fn set_attention(&self, d: i64, content: bool) -> Result<Arc<CudaModule>, CudaError> {
        self.specialized(
            &SET_ATTENTION,
            vec![
                format!("-DHEAD_DIM={d}"),
                format!("-DCONTENT={}", i32::from(content)),
                format!("-DSA_LANES={}", set_attention_lanes(d)),
            ],
        )
    }

    /// The router's `dz` with top-k: each set sums the (token, slot) entries that kept it,
    /// bucketed by a stable counting sort of the entries by `(bh, set)` (in token order
    /// within a set, and the same order every run: a fixed summation order; router.cu
    /// says how). `ptrs` are `q, dout, kept_p, kept_ds`.
    fn router_dz_sparse(
        &self,
        module: &Arc<CudaModule>,
        shape: RouterShape,
        kept: &Tensor,
        ptrs: [u64; 4],
        dz: &Tensor,
        (layout, tokens): (i32, Kind),
    ) -> Result<(), CudaError> {
        let RouterShape { b, h, l, m, d } = shape;
        let device = kept.device();
        let entries = b * h * l * ROUTER_TOPK_MAX;
        if entries > i64::from(i32::MAX) {
            return Err(CudaError::Input(format!(
                "{entries} kept entries (B * H * L * {ROUTER_TOPK_MAX}) overflow the sparse dz's 32-bit indices: use fewer tokens per step"
            )));
        }
        // The stable counting sort of the kept entries by (bh, set), router.cu: one warp
        // per chunk of tokens, each with a running count per set in shared memory.
        let tally_bytes = 4 * m.max(1);
        if tally_bytes > ROUTER_BUCKET_SHARED_BYTES {
            return Err(CudaError::Input(format!(
                "{m} sets per sequence are more than the CUDA router's top-k backward takes ({}); use --ska-backend naive or shorter sequences",
                ROUTER_BUCKET_SHARED_BYTES / 4
            )));
        }
        let warps = (ROUTER_BUCKET_SHARED_BYTES / tally_bytes).min(8);
        let chunks = (l + ROUTER_BUCKET_TOKENS - 1) / ROUTER_BUCKET_TOKENS;
        let cells = b * h * m * chunks;
        let counts = Tensor::zeros([cells.max(1)], (Kind::Int, device));
        let order = Tensor::empty([entries.max(1)], (Kind::Int, device));
        let (kept_ptr, counts_ptr, order_ptr) = (
            device_ptr(kept, Kind::Int, entries, self.ordinal)?,
            device_ptr(&counts, Kind::Int, cells, self.ordinal)?,
            device_ptr(&order, Kind::Int, entries, self.ordinal)?,
        );
        let (l32, m32, chunks32) = (to_i32(l)?, to_i32(m)?, to_i32(chunks)?);
        let bucket_grid = LaunchConfig {
            grid_dim: (
                to_u32((chunks + warps - 1) / warps)?.max(1),
                shape.heads_dim()?.max(1),
                1,
            ),
            block_dim: (to_u32(32 * warps)?, 1, 1),
            shared_mem_bytes: to_u32(warps * tally_bytes)?,
        };
        let f = module.load_function("router_dz_bucket")?;
        let stream = self.current_stream()?;
        let bucket = |scanned: &u64, place: i32| -> Result<(), CudaError> {
            let mut launch = stream.launch_builder(&f);
            launch
                .arg(&kept_ptr)
                .arg(&counts_ptr)
                .arg(scanned)
                .arg(&order_ptr)
                .arg(&l32)
                .arg(&m32)
                .arg(&chunks32)
                .arg(&place);
            // SAFETY: see the module invariant; reads the b*h*l*8 kept entries (sets
            // below m, or -1). place 0 writes counts at (bh * m + j) * chunks + chunk <
            // cells; place 1 reads the scan of counts (cells entries, written before on
            // this stream) and writes each kept entry's index once, at a distinct
            // position below the number of kept entries (<= entries).
            unsafe { launch.launch(bucket_grid) }?;
            Ok(())
        };
        bucket(&counts_ptr, 0)?;
        let scanned = counts.cumsum(0, Kind::Int);
        let scanned_ptr = device_ptr(&scanned, Kind::Int, cells, self.ordinal)?;
        bucket(&scanned_ptr, 1)?;
        let dz_ptr = device_ptr(dz, Kind::Float, b * h * m * d, self.ordinal)?;
        let f = module.load_function("router_bwd_dz_sparse")?;
        let mut launch = stream.launch_builder(&f);
        for p in ptrs.iter().chain([&order_ptr, &scanned_ptr, &dz_ptr]) {
            launch.arg(p);
        }
        // 16-byte row loads need 16-byte aligned rows (libtorch's allocations are).
        let aligned = i32::from(ptrs[0].is_multiple_of(16) && ptrs[1].is_multiple_of(16));
        let h32 = to_i32(h)?;
        launch
            .arg(&h32)
            .arg(&l32)
            .arg(&m32)
            .arg(&chunks32)
            .arg(&layout)
            .arg(&aligned);
        let cfg = LaunchConfig {
            grid_dim: (
                u32::try_from(m.max(1))
                    .map_err(|_| CudaError::Input(format!("{m} sets are too many")))?,
                shape.heads_dim()?.max(1),
                1,
            ),
            block_dim: (
                u32::try_from(sparse_dz_threads(d, tokens))
                    .map_err(|_| CudaError::Input(format!("head dimension {d}")))?,
                1,
                1,
            ),
            shared_mem_bytes: 0,
        };
        // SAFETY: see the module invariant; reads q and dout (b*h*l*d), kept_p and
        // kept_ds (b*h*l*8, written by router_bwd_dq before on this stream), order
        // (entry indices below b*h*l*8, at the positions the scan assigns) and the scan
        // (cells nondecreasing offsets into order); writes dz, every element once.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }

    /// The router module for head dimension `d` and token rows of kind `tokens` (fp32 or
    /// bf16, [`router_token_kind`]).
    fn router(&self, d: i64, tokens: Kind) -> Result<Arc<CudaModule>, CudaError> {
        self.specialized(
            &ROUTER,
            vec![
                format!("-DHEAD_DIM={d}"),
                format!("-DTOKEN_BF16={}", i32::from(tokens == Kind::BFloat16)),
                format!("-DDQ_TOKEN_LANES={}", row_lanes(d)),
                format!("-DMMA_WARPS={ROUTER_MMA_WARPS}"),
            ],
        )
    }

    /// `source` compiled with `defines` (`-DNAME=VALUE`), compiled (or read from the disk
    /// cache) at first use and kept for the process.
    fn specialized(
        &self,
        source: &'static Source,
        defines: Vec<String>,
    ) -> Result<Arc<CudaModule>, CudaError> {
        let mut modules = self.specialized.lock().unwrap_or_else(|e| e.into_inner());
        let key = (source.file, defines);
        if let Some(module) = modules.get(&key) {
            return Ok(module.clone());
        }
        let ptx = compiled(source, &self.arch, &key.1)?;
        let module = self.ctx.load_module(ptx)?;
        modules.insert(key, module.clone());
        Ok(module)
    }

    /// Waits for every kernel launched so far on libtorch's current stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        Ok(self.current_stream()?.synchronize()?)
    }

    /// libtorch's current stream on this device, borrowed for the next launches: the
    /// kernels then order after the libtorch ops that wrote their inputs and before
    /// those that read their outputs, whatever stream the caller (or the autograd
    /// engine, which runs a backward on its forward's stream) has made current.
    pub(crate) fn current_stream(&self) -> Result<Arc<CudaStream>, CudaError> {
        let handle = crate::shim::cuda_current_stream(self.ordinal)
            .map_err(|e| CudaError::Driver(format!("libtorch's current stream: {e}")))?;
        // SAFETY: the handle is a stream of this device's primary context, the context
        // `ctx` retains (libtorch and cudarc both use the primary context); libtorch's
        // streams (the legacy default stream and its pool's) live as long as the
        // process, so the borrowed wrapper never outlives its stream; ordering with
        // libtorch's work is by construction: it is libtorch's own current stream.
        Ok(unsafe {
            self.ctx
                .wrap_borrowed_stream(handle as cudarc::driver::sys::CUstream)
        })
    }
}

/// The grid of the pooling kernels: `rows` blocks along x (slots or occurrences), the
/// row's columns in chunks of [`POOL_THREADS`] threads (4 columns each when `dim % 4 ==
/// 0`) along y.
fn pool_grid(rows: i64, dim: i64) -> Result<LaunchConfig, CudaError> {
    let per_thread = if dim % 4 == 0 { 4 } else { 1 };
    let chunks =
        (dim + per_thread * i64::from(POOL_THREADS) - 1) / (per_thread * i64::from(POOL_THREADS));
    let x = u32::try_from(rows)
        .ok()
        .filter(|&x| x < i32::MAX as u32)
        .ok_or_else(|| {
            CudaError::Input(format!("{rows} pooling rows are too many for one grid"))
        })?;
    Ok(LaunchConfig {
        grid_dim: (
            x,
            u32::try_from(chunks)
                .map_err(|_| CudaError::Input(format!("a row of {dim} columns is too wide")))?,
            1,
        ),
        block_dim: (POOL_THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Whether the dense top-k `dz` of bf16 token rows runs on tensor cores
/// (`router_bwd_dz_kept_mma`); `AUSA_ROUTER_DZ_MMA=0` keeps the CUDA-core kernel, for
/// measurements.
fn dz_mma() -> bool {
    static ON: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    tuning_knob(&ON, "AUSA_ROUTER_DZ_MMA", 1, |_| true) != 0
}

/// Threads of a `router_bwd_dz_sparse` block for head dimension `d` and token rows of
/// kind `tokens`: `DZ_GROUPS` groups of `DZ_ENTRY_LANES` lanes (router.cu), each lane
/// `DZ_VEC` dims (16 bytes when they divide the row), as many groups as fit 256 threads.
fn sparse_dz_threads(d: i64, tokens: Kind) -> i64 {
    let per_load = 16 / tokens.elt_size_in_bytes() as i64;
    let vec = if d % per_load == 0 { per_load } else { 1 };
    let lanes = d / vec;
    (256 / lanes).max(1) * lanes
}

/// The grid of the pairwise kernels: key tiles x query tiles x sequences.
fn pair_grid(b: i64, m: i64) -> Result<LaunchConfig, CudaError> {
    let tiles = u32::try_from((m + i64::from(TILE) - 1) / i64::from(TILE))
        .map_err(|_| CudaError::Input(format!("{m} sets per sequence are too many")))?;
    let seqs = u32::try_from(b)
        .ok()
        .filter(|&s| s <= 65_535)
        .ok_or_else(|| {
            CudaError::Input(format!(
                "a batch of {b} sequences is too large (at most 65535)"
            ))
        })?;
    Ok(LaunchConfig {
        grid_dim: (tiles.max(1), tiles.max(1), seqs.max(1)),
        block_dim: (TILE, TILE, 1),
        shared_mem_bytes: 0,
    })
}

fn to_u32(v: i64) -> Result<u32, CudaError> {
    u32::try_from(v).map_err(|_| CudaError::Input(format!("{v} does not fit a launch dimension")))
}

fn to_i32(v: i64) -> Result<i32, CudaError> {
    i32::try_from(v)
        .map_err(|_| CudaError::Input(format!("{v} does not fit a kernel's 32-bit index")))
}

fn dims<const N: usize>(t: &Tensor, name: &str) -> Result<[i64; N], CudaError> {
    t.size().try_into().map_err(|_| {
        CudaError::Input(format!(
            "{name}: expected {N} dimensions, got {:?}",
            t.size()
        ))
    })
}

fn expect_shape(t: &Tensor, shape: &[i64], name: &str) -> Result<(), CudaError> {
    if t.size() != shape {
        return Err(CudaError::Input(format!(
            "{name}: expected shape {shape:?}, got {:?}",
            t.size()
        )));
    }
    Ok(())
}

/// The device address of `t`'s data after checking the launch invariant: a contiguous
/// tensor of `kind` with `numel` elements on GPU `ordinal`. 32-bit integer kernels take
/// `Int` tensors (the bits of u32 and i32 agree).
/// `(N, C)` of a LayerNorm input `x` (`[N, C]` fp32, contiguous) with `weight` (`[C]`
/// fp32) and half-precision kind `half`, checked against what the kernels support.
fn layer_norm_shape(x: &Tensor, weight: &Tensor, half: Kind) -> Result<(i64, i64), CudaError> {
    let [n, c] = dims(x, "x")?;
    expect_shape(weight, &[c], "weight")?;
    if !(1..=LAYER_NORM_MAX_COLS).contains(&c) {
        return Err(CudaError::Input(format!(
            "the fused LayerNorm normalizes 1..={LAYER_NORM_MAX_COLS} columns, got {c}"
        )));
    }
    if !matches!(half, Kind::BFloat16 | Kind::Half) {
        return Err(CudaError::Input(format!(
            "the fused LayerNorm writes BFloat16 or Half, not {half:?}"
        )));
    }
    if !x.is_contiguous() {
        return Err(CudaError::Input("x must be contiguous".into()));
    }
    Ok((n, c))
}

/// One warp per row: blocks of `LAYER_NORM_WARPS` rows.
fn row_warps(rows: i64) -> Result<LaunchConfig, CudaError> {
    let blocks = (rows + i64::from(LAYER_NORM_WARPS) - 1) / i64::from(LAYER_NORM_WARPS);
    Ok(LaunchConfig {
        grid_dim: (
            u32::try_from(blocks.max(1))
                .map_err(|_| CudaError::Input(format!("{rows} rows are too many")))?,
            1,
            1,
        ),
        block_dim: (LAYER_NORM_WARPS * 32, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// The kind of the router's token rows (`q`, its output, `dout`, `dq`): fp32 or bf16,
/// read and written as they are; the caller casts any other kind to fp32.
pub fn router_token_kind(q: &Tensor) -> Result<Kind, CudaError> {
    match q.kind() {
        kind @ (Kind::Float | Kind::BFloat16) => Ok(kind),
        other => Err(CudaError::Input(format!(
            "the fused router takes fp32 or bf16 queries, got {other:?}"
        ))),
    }
}

fn device_ptr(t: &Tensor, kind: Kind, numel: i64, ordinal: usize) -> Result<u64, CudaError> {
    if t.device() != Device::Cuda(ordinal) {
        return Err(CudaError::Input(format!(
            "expected a tensor on cuda:{ordinal}, got one on {:?}",
            t.device()
        )));
    }
    if t.kind() != kind {
        return Err(CudaError::Input(format!(
            "expected {kind:?}, got {:?}",
            t.kind()
        )));
    }
    if !t.is_contiguous() || t.numel() as i64 != numel {
        return Err(CudaError::Input(format!(
            "expected a contiguous tensor of {numel} elements, got {:?}",
            t.size()
        )));
    }
    Ok(t.data_ptr() as u64)
}

/// Compiles every kernel source for `arch` with NVRTC, bypassing the cache (no GPU
/// needed): how CPU machines check that the sources compile.
pub fn compile_all(arch: &str) -> Result<(), CudaError> {
    if !loadable("nvrtc") {
        return Err(CudaError::Unavailable("libnvrtc.so was not found".into()));
    }
    preload_nvrtc_builtins();
    // Head dimension 20: rows that 16-byte loads do not divide in bf16.
    for (source, variant, head_dim) in SOURCES
        .iter()
        .flat_map(|s| [(s, "0"), (s, "1")])
        .flat_map(|(s, v)| [(s, v, 64), (s, v, 20)])
    {
        if source.file == LAYER_NORM.file && head_dim != 64 {
            continue;
        }
        let defines = if source.file == LAYER_NORM.file {
            // A size that is not a multiple of 32, and the bf16 and fp16 outputs.
            vec!["-DLN_C=100".to_string(), format!("-DOUT_BF16={variant}")]
        } else {
            // With and without the content term (set attention), fp32 and bf16 token
            // rows (router).
            vec![
                format!("-DHEAD_DIM={head_dim}"),
                format!("-DCONTENT={variant}"),
                format!("-DTOKEN_BF16={variant}"),
                format!("-DDQ_TOKEN_LANES={}", row_lanes(head_dim)),
                format!("-DSA_LANES={}", set_attention_lanes(head_dim)),
            ]
        };
        let ptx = compile(source, arch, &defines)?.to_src();
        // A register array indexed by a run-time value (a top-k list read at `topk - 1`)
        // silently moves to local memory, which made the router's forward several times
        // slower; no kernel here needs local memory, so any is a regression.
        if ptx.contains("ld.local") || ptx.contains("st.local") {
            return Err(CudaError::Input(format!(
                "{} ({}) uses local memory: a register array indexed at run time?",
                source.file,
                defines.join(" ")
            )));
        }
    }
    Ok(())
}

fn compile_options(arch: &str, defines: &[String]) -> Vec<String> {
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
    ];
    options.extend(defines.iter().cloned());
    options
}

fn compile(source: &Source, arch: &str, defines: &[String]) -> Result<Ptx, CudaError> {
    cudarc::nvrtc::compile_ptx_with_opts(
        source.text,
        CompileOptions {
            options: compile_options(arch, defines),
            name: Some(source.file.to_string()),
            ..CompileOptions::default()
        },
    )
    .map_err(|e| CudaError::Compile {
        file: source.file,
        log: e.to_string(),
    })
}

/// The PTX of `source` for `arch` with `defines` (`-DNAME=VALUE`), from the disk cache
/// or compiled now.
fn compiled(source: &Source, arch: &str, defines: &[String]) -> Result<Ptx, CudaError> {
    let options = compile_options(arch, defines);
    let key = {
        let mut h = blake3::Hasher::new();
        h.update(source.text.as_bytes());
        for o in &options {
            h.update(b"\0").update(o.as_bytes());
        }
        h.finalize().to_hex().to_string()
    };
    let cached = cache_dir().map(|d| d.join(format!("{}-{}.ptx", source.file, &key[..32])));
    if let Some(text) = cached
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        return Ok(Ptx::from_src(text));
    }
    let ptx = compile(source, arch, defines)?;
    if let Some(path) = cached {
        store(&path, &ptx.to_src());
    }
    Ok(ptx)
}

/// Writes a cache entry through a temp file and a rename; failures are ignored (the
/// cache is an optimization).
fn store(path: &std::path::Path, text: &str) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    if std::fs::write(&tmp, text).is_err() || std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("AUSA_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ausa").join("kernels"))
}
