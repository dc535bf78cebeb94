//! `ausa bench ska`: one SKA layer (set attention and router, with the atom pooling that
//! feeds it) timed at fixed shapes on synthetic sets, per backend and precision, as rows of
//! a CSV with the SPEC's benchmark fields.
//!
//! Inputs: `B = tokens / L` sequences of pseudo-random token ids (a 4096-id vocabulary,
//! seed 0), windowed into sets and signed with the toy MinHash of `ausa_kernels::toy`
//! (the same layout rules as the pipeline's stages), token states `x` `[B, L, d]` and atom
//! embeddings `[4096, d]` with gradients, `d = H * D`. A step is the layer's forward, and
//! for `fwd+bwd` also the gradients of `x`, the embeddings and every layer parameter from
//! a fixed random output gradient of the output's kind (`out.backward(grad)`, as the
//! attention peers do), dropped after each step so nothing accumulates. The per-batch
//! `SetLayout` (padding and `Delta`) is timed on its own (`layout_ms`): it runs once per
//! batch for all layers. Every time is the median of `iters` steps with the device synchronized around
//! each, after `warmup` untimed ones. With `cuda_graph` the two passes are each captured once
//! in a CUDA graph (after the eager warm-up, on a side stream) and the replays are timed: the
//! GPU's time without the host's launches and autograd engine. The gradients then
//! accumulate into `.grad` across replays (a captured step cannot drop them), an in-place
//! add per leaf that the eager steps, which start from no gradient, do not pay.
//!
//! Columns ([`SkaBenchRow::fields`]): the SPEC's `backend, dtype, B, L, H, D, window,
//! stride, minhash_k, router_topk, avg_sets_per_seq, avg_atoms_per_set, elapsed_ms,
//! steps_per_s, max_vram_mb, scores_computed, throughput_per_1e6_scores` (`elapsed_ms` is
//! forward + backward; `router_topk` is the gate top-k; `scores_computed = B * H * M * M`),
//! then `candidates` (the route's candidate sets per token, `--router-topk`: the last
//! `candidates` visible sets, as the `routing` stage limits them; 0 = every visible
//! set), `fwd_ms, bwd_ms, layout_ms, model_tflops, model_gbps`: FLOP and byte counts of the
//! math (the GEMM-shaped products; the tensors a fused kernel must read and write once),
//! over the measured times, so the reference and a fused kernel are rated by the same
//! count; and `cuda_graph` (1: timed as graph replays; `layout_ms` is always eager).

use std::path::PathBuf;
use std::time::Instant;

use ausa_kernels::graph::StepGraph;
use ausa_kernels::pool::AtomPool;
use ausa_kernels::toy::{random_tokens, sets_recent, ToyShape};
use ausa_kernels::{pool_atoms_with, SetAttention, SetLayout, SkaConfig};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::model::{Attn, ModelConfig, SkaBackend};
use crate::train::Precision;
use crate::Error;

/// Ids of the synthetic token streams.
const VOCAB: u32 = 4096;

/// One benchmark configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkaBenchShape {
    /// Tokens per step (`B * L`).
    pub tokens: i64,
    /// Tokens per sequence (`L`).
    pub seq_len: i64,
    /// Heads (`H`).
    pub heads: i64,
    /// Head width (`D`).
    pub head_dim: i64,
    /// Set window.
    pub window: i64,
    /// Set stride.
    pub stride: i64,
    /// MinHash values per set.
    pub minhash_k: i64,
    /// Router top-k over the gates (0: every visible set).
    pub gate_topk: i64,
    /// Candidate sets per token in the route: the most recent `candidates` visible ones
    /// (the `routing` stage's `router_topk`; 0: every visible set).
    pub candidates: i64,
    /// Compute precision.
    pub precision: Precision,
    /// The SKA implementation.
    pub backend: SkaBackend,
    /// Time the layer's core only ([`SetAttention::core`]): the router queries are an
    /// input (`[B, L, H * D]` viewed per head, as the gate projection hands them over)
    /// and the heads' router outputs the output, without the gate and output projections:
    /// the counterpart of what the attention peers time (they take q, k, v and return the
    /// heads' outputs; their projections are outside). CSV column `scope`.
    pub core: bool,
}

/// Warm-up and timed steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkaBenchSettings {
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps per pass (forward; forward + backward).
    pub iters: usize,
    /// Time replays of a CUDA graph of the step (captured after the eager warm-up, on a
    /// side stream) instead of eager steps: the GPU's time without the host's launch and
    /// autograd work. CUDA only.
    pub cuda_graph: bool,
}

/// One measured configuration: a CSV row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkaBenchRow {
    /// The configuration.
    pub shape: SkaBenchShape,
    /// Sequences (`B`).
    pub batch: i64,
    /// Set slots per sequence (`M`).
    pub sets_per_seq: i64,
    /// Mean distinct atoms per set.
    pub atoms_per_set: f64,
    /// Median forward time.
    pub fwd_ms: f64,
    /// Median forward + backward time.
    pub fwd_bwd_ms: f64,
    /// Median time of the per-batch layout (`Delta`, masks).
    pub layout_ms: f64,
    /// Peak CUDA memory over the timed passes (MiB); `None` on the CPU.
    pub max_vram_mb: Option<f64>,
    /// `B * H * M * M`.
    pub scores_computed: f64,
    /// Forward FLOPs of the math (see the module docs).
    pub fwd_flops: f64,
    /// Bytes a fused forward must move at least.
    pub fwd_bytes: f64,
    /// The passes were timed as CUDA graph replays ([`SkaBenchSettings::cuda_graph`]).
    pub cuda_graph: bool,
    /// Which router forward ran: `per-token` (the CUDA backend's kernel over each token's
    /// candidate list: a narrow route, `AUSA_ROUTER_PER_TOKEN=1`), `tiles` (its kernels
    /// over tiles of sets), or `tensor-ops` (the naive backend). CSV column
    /// `router_forward`, so rows of an A/B run say which side they are.
    pub router_forward: &'static str,
}

impl SkaBenchRow {
    /// `(column, value)` in CSV order.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let s = &self.shape;
        let steps_per_s = 1e3 / self.fwd_bwd_ms;
        // Backward ~ 2x forward for GEMM-shaped work: 3x the forward count in all.
        let flops = 3.0 * self.fwd_flops;
        let bytes = 3.0 * self.fwd_bytes;
        let backend = format!("ska-{}", s.backend.as_str());
        vec![
            ("backend", backend),
            ("dtype", s.precision.as_str().to_string()),
            ("B", self.batch.to_string()),
            ("L", s.seq_len.to_string()),
            ("H", s.heads.to_string()),
            ("D", s.head_dim.to_string()),
            ("window", s.window.to_string()),
            ("stride", s.stride.to_string()),
            ("minhash_k", s.minhash_k.to_string()),
            ("router_topk", s.gate_topk.to_string()),
            ("avg_sets_per_seq", self.sets_per_seq.to_string()),
            ("avg_atoms_per_set", format!("{:.2}", self.atoms_per_set)),
            ("elapsed_ms", format!("{:.4}", self.fwd_bwd_ms)),
            ("steps_per_s", format!("{steps_per_s:.3}")),
            (
                "max_vram_mb",
                self.max_vram_mb
                    .map(|v| format!("{v:.1}"))
                    .unwrap_or_default(),
            ),
            ("scores_computed", format!("{}", self.scores_computed)),
            (
                "throughput_per_1e6_scores",
                format!("{:.4}", self.scores_computed * steps_per_s / 1e6),
            ),
            ("candidates", s.candidates.to_string()),
            ("fwd_ms", format!("{:.4}", self.fwd_ms)),
            ("bwd_ms", format!("{:.4}", self.fwd_bwd_ms - self.fwd_ms)),
            ("layout_ms", format!("{:.4}", self.layout_ms)),
            (
                "model_tflops",
                format!("{:.4}", flops / (self.fwd_bwd_ms * 1e-3) / 1e12),
            ),
            (
                "model_gbps",
                format!("{:.3}", bytes / (self.fwd_bwd_ms * 1e-3) / 1e9),
            ),
            ("cuda_graph", u8::from(self.cuda_graph).to_string()),
            ("scope", if s.core { "core" } else { "layer" }.to_string()),
            ("router_forward", self.router_forward.to_string()),
        ]
    }
}

/// The CSV header of [`SkaBenchRow::fields`].
pub fn csv_header() -> String {
    let row = SkaBenchRow {
        shape: SkaBenchShape {
            tokens: 1,
            seq_len: 1,
            heads: 1,
            head_dim: 1,
            window: 1,
            stride: 1,
            minhash_k: 1,
            gate_topk: 0,
            candidates: 0,
            precision: Precision::Fp32,
            backend: SkaBackend::Naive,
            core: false,
        },
        batch: 1,
        sets_per_seq: 0,
        atoms_per_set: 0.0,
        fwd_ms: 1.0,
        fwd_bwd_ms: 1.0,
        layout_ms: 0.0,
        max_vram_mb: None,
        scores_computed: 0.0,
        fwd_flops: 0.0,
        fwd_bytes: 0.0,
        cuda_graph: false,
        router_forward: "tiles",
    };
    row.fields()
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(",")
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median of `iters` synchronized runs of `f` after `warmup` untimed ones, in ms.
fn median_ms(device: Device, settings: SkaBenchSettings, mut f: impl FnMut()) -> f64 {
    for _ in 0..settings.warmup {
        f();
    }
    sync(device);
    let mut times: Vec<f64> = (0..settings.iters.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            sync(device);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Checks a configuration (usage errors name the flag).
fn check(shape: &SkaBenchShape) -> Result<(), Error> {
    let positive = [
        ("--tokens", shape.tokens),
        ("--lens", shape.seq_len),
        ("--heads", shape.heads),
        ("--head-dim", shape.head_dim),
        ("--window", shape.window),
        ("--stride", shape.stride),
        ("--minhash-k", shape.minhash_k),
    ];
    if let Some((flag, v)) = positive.iter().find(|(_, v)| *v <= 0) {
        return Err(Error::Usage(format!("{flag} must be positive, got {v}")));
    }
    if shape.candidates < 0 {
        return Err(Error::Usage(format!(
            "--router-topk must be 0 (every visible set) or positive, got {}",
            shape.candidates
        )));
    }
    if shape.seq_len < shape.window {
        return Err(Error::Usage(format!(
            "L = {} is shorter than --window {}: a sequence would have no set",
            shape.seq_len, shape.window
        )));
    }
    if shape.tokens < shape.seq_len {
        return Err(Error::Usage(format!(
            "--tokens {} is below L = {}: a step needs at least one sequence",
            shape.tokens, shape.seq_len
        )));
    }
    Ok(())
}

/// Measures one configuration on `device`.
pub fn run(
    shape: &SkaBenchShape,
    settings: SkaBenchSettings,
    device: Device,
) -> Result<SkaBenchRow, Error> {
    check(shape)?;
    if settings.cuda_graph && !device.is_cuda() {
        return Err(Error::Usage(
            "--cuda-graph needs a CUDA device (--device cuda)".to_string(),
        ));
    }
    let d = shape.heads * shape.head_dim;
    // The backend's own checks (a CUDA device, top-k and head-width limits).
    let model = ModelConfig {
        vocab: i64::from(VOCAB),
        seq_len: shape.seq_len,
        d_model: d,
        layers: 1,
        heads: shape.heads,
        ffn_mult: 4,
        dropout: 0.0,
        attn: Attn::Ska,
        ska_layers: vec![],
        beta: 0.0,
        router_topk: shape.gate_topk,
        adapter_rank: 0,
        pos: Default::default(),
        set_features: Default::default(),
        delta: Default::default(),
    };
    let router = shape
        .backend
        .ops(&model, shape.precision.kind(), device)
        .map_err(Error::Usage)?;
    let batch = shape.tokens / shape.seq_len;
    let toks = random_tokens(0, batch as usize, shape.seq_len as usize, VOCAB);
    let toy = ToyShape {
        window: shape.window as usize,
        stride: shape.stride as usize,
        k: shape.minhash_k as usize,
        seed: 1,
        leading: false,
    };
    let inputs = sets_recent(&toks, toy, shape.candidates as usize, device);
    let layout = SetLayout::new(&inputs, shape.seq_len);
    let kind = shape.precision.kind();
    tch::manual_seed(0);
    let vs = tch::nn::VarStore::new(device);
    let config = SkaConfig {
        d_model: d,
        heads: shape.heads,
        router_topk: shape.gate_topk,
        ops: router,
        ..SkaConfig::default()
    };
    let layer = SetAttention::new(&vs.root() / "ska", &config);
    let pool = AtomPool::new(router).map_err(Error::Usage)?;
    let embedding =
        (Tensor::randn([i64::from(VOCAB), d], (Kind::Float, device)) * 0.3).set_requires_grad(true);
    // The layer's input: token states, or with `core` the router queries (token-major,
    // as the gate projection's output is).
    let x = Tensor::randn([batch, shape.seq_len, d], (Kind::Float, device))
        .to_kind(kind)
        .set_requires_grad(true);
    let per_head = |t: &Tensor| {
        t.view([batch, shape.seq_len, shape.heads, shape.head_dim])
            .transpose(1, 2)
    };
    let forward = || {
        let phi = pool_atoms_with(pool.as_ref(), &embedding, &layout).to_kind(kind);
        if shape.core {
            layer.core(&per_head(&x), &phi, &layout)
        } else {
            layer.forward(&x, &phi, &layout)
        }
    };
    let mut leaves: Vec<Tensor> = vs.trainable_variables();
    leaves.push(embedding.shallow_clone());
    leaves.push(x.shallow_clone());
    // The output gradient, as the attention peers pass one (`out.backward(grad)`): the
    // backward starts from a tensor of the output's kind, not from a scalar loss (an fp32
    // copy of the output for the sum would be in the peak and the time).
    // With `core`, of the heads' outputs' shape and token-major layout (the gradient the
    // output projection's backward would hand over).
    let out_grad = Tensor::randn([batch, shape.seq_len, d], (kind, device));
    let out_grad = if shape.core {
        per_head(&out_grad)
    } else {
        out_grad
    };
    if let Device::Cuda(i) = device {
        ausa_kernels::shim::cuda_reset_peak(i)
            .map_err(|e| Error::Torch(format!("resetting the CUDA peak: {e}")))?;
    }
    let layout_ms = median_ms(device, settings, || {
        let _ = SetLayout::new(&inputs, shape.seq_len);
    });
    // (cuda_graph implies a CUDA device: checked above.)
    let (fwd_ms, fwd_bwd_ms) = match device {
        Device::Cuda(ordinal) if settings.cuda_graph => {
            let mut keep: Vec<&Tensor> = leaves.iter().collect();
            keep.push(&out_grad);
            let backward = || {
                let out = forward();
                ausa_kernels::shim::backward_with_grad(&out, &out_grad).map(|()| out)
            };
            graphed_ms(ordinal, settings, &keep, || tch::no_grad(forward), backward)?
        }
        _ => {
            let fwd_ms = median_ms(device, settings, || {
                let _ = tch::no_grad(forward);
            });
            let mut backward_error = None;
            let fwd_bwd_ms = median_ms(device, settings, || {
                let out = forward();
                if let Err(e) = ausa_kernels::shim::backward_with_grad(&out, &out_grad)
                    .and_then(|()| ausa_kernels::shim::set_grads_to_none(&mut leaves))
                {
                    backward_error.get_or_insert(e);
                }
            });
            if let Some(e) = backward_error {
                return Err(Error::Torch(format!("the SKA layer's backward: {e}")));
            }
            (fwd_ms, fwd_bwd_ms)
        }
    };
    let max_vram_mb = match device {
        Device::Cuda(i) => Some(
            ausa_kernels::shim::cuda_memory(i)
                .map_err(|e| Error::Torch(format!("reading the CUDA peak: {e}")))?
                .peak_allocated as f64
                / (1024.0 * 1024.0),
        ),
        _ => None,
    };
    let m = layout.max_sets;
    let real_sets = layout
        .sizes
        .gt(0.0)
        .sum(Kind::Float)
        .double_value(&[])
        .max(1.0);
    let atoms_per_set = layout.sizes.sum(Kind::Float).double_value(&[]) / real_sets;
    let (b, l, h, dh) = (
        batch as f64,
        shape.seq_len as f64,
        shape.heads as f64,
        shape.head_dim as f64,
    );
    let (mf, df) = (m as f64, d as f64);
    let projections = if shape.core { 0.0 } else { 1.0 };
    let fwd_flops = projections * 2.0 * b * l * df * df * 2.0 // gate and output projections
        + 2.0 * b * mf * (df + 1.0) * df // values
        + 2.0 * b * h * mf * mf * dh // set weights x values
        + 2.0 * 2.0 * b * h * l * mf * dh; // router logits and mix
    let elem = match kind {
        Kind::Float => 4.0,
        _ => 2.0,
    };
    // x in, y out, the signatures and the pooled features.
    let fwd_bytes =
        2.0 * b * l * df * elem + b * mf * shape.minhash_k as f64 * 4.0 + b * mf * df * elem;
    Ok(SkaBenchRow {
        shape: shape.clone(),
        batch,
        sets_per_seq: m,
        atoms_per_set,
        fwd_ms,
        fwd_bwd_ms,
        layout_ms,
        max_vram_mb,
        scores_computed: b * h * mf * mf,
        fwd_flops,
        fwd_bytes,
        cuda_graph: settings.cuda_graph,
        router_forward: match shape.backend {
            SkaBackend::Naive => "tensor-ops",
            SkaBackend::Cuda
                if ausa_kernels::cuda::takes_per_token_forward(
                    shape.gate_topk,
                    layout.narrow_route(),
                    shape.head_dim,
                ) =>
            {
                "per-token"
            }
            SkaBackend::Cuda => "tiles",
        },
    })
}

/// Median forward and forward + backward times (ms) of CUDA graph replays on device
/// `ordinal`: each pass runs eagerly `warmup` times (at least once: NVRTC compiles, cuBLAS
/// workspaces and the allocator's blocks must exist before a capture) on a side stream,
/// is captured there, and its replays are timed like eager steps. `keep` are the tensors
/// the passes read from outside.
fn graphed_ms(
    ordinal: usize,
    settings: SkaBenchSettings,
    keep: &[&Tensor],
    forward: impl Fn() -> Tensor,
    backward: impl Fn() -> Result<Tensor, ausa_kernels::shim::ShimError>,
) -> Result<(f64, f64), Error> {
    let device = Device::Cuda(ordinal);
    let graph_error = |e: ausa_kernels::cuda::CudaError| {
        Error::Torch(format!(
            "--cuda-graph: {e} (run without --cuda-graph to time eager steps)"
        ))
    };
    let _side = side_stream(ordinal)?;
    let warm = settings.warmup.max(1);
    for _ in 0..warm {
        let _ = forward();
    }
    sync(device);
    let (graph, _out) = StepGraph::capture(ordinal, keep, &forward).map_err(graph_error)?;
    let fwd_ms = replay_ms(device, settings, &graph).map_err(graph_error)?;
    drop(graph);
    for _ in 0..warm {
        let _ = backward().map_err(|e| Error::Torch(format!("the SKA layer's backward: {e}")))?;
    }
    sync(device);
    let (graph, out) = StepGraph::capture(ordinal, keep, &backward).map_err(graph_error)?;
    let _out = out.map_err(|e| Error::Torch(format!("the SKA layer's backward, captured: {e}")))?;
    let fwd_bwd_ms = replay_ms(device, settings, &graph).map_err(graph_error)?;
    Ok((fwd_ms, fwd_bwd_ms))
}

/// A side stream for graph captures, unless the caller made one current already (a
/// capture cannot use the legacy default stream). Callers that time several rows keep one
/// side stream for all ([`side_stream`] from the outside): libtorch keeps a cuBLAS
/// workspace per stream for the rest of the process, which a new stream per row would add
/// to every later row's peak.
pub fn side_stream(ordinal: usize) -> Result<Option<ausa_kernels::shim::PoolStream>, Error> {
    let current = ausa_kernels::shim::cuda_current_stream(ordinal)
        .map_err(|e| Error::Torch(format!("--cuda-graph: libtorch's current stream: {e}")))?;
    if current != 0 {
        return Ok(None);
    }
    ausa_kernels::shim::PoolStream::enter(ordinal)
        .map(Some)
        .map_err(|e| Error::Torch(format!("--cuda-graph: a side stream: {e}")))
}

/// [`median_ms`] of a graph's replays; the first failed replay is the error.
fn replay_ms(
    device: Device,
    settings: SkaBenchSettings,
    graph: &StepGraph,
) -> Result<f64, ausa_kernels::cuda::CudaError> {
    let mut failed = None;
    let ms = median_ms(device, settings, || {
        if let Err(e) = graph.replay() {
            failed.get_or_insert(e);
        }
    });
    failed.map_or(Ok(ms), Err)
}

/// Appends `rows` to the CSV at `path` (header first when new; a file with another header
/// is an error and is left as it was), through a temp file and a rename.
pub fn append_csv(path: &PathBuf, rows: &[SkaBenchRow]) -> Result<(), Error> {
    let io = |p: &std::path::Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    let header = csv_header();
    let mut text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(path)(e)),
    };
    match text.lines().next() {
        None => text = format!("{header}\n"),
        Some(first) if first == header => {}
        Some(_) => {
            return Err(Error::Usage(format!(
                "{}: its header has other columns than `ausa bench ska`'s; pass another --csv",
                path.display()
            )))
        }
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    for row in rows {
        let values: Vec<String> = row.fields().into_iter().map(|(_, v)| v).collect();
        text.push_str(&values.join(","));
        text.push('\n');
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}
