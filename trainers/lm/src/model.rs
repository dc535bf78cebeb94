//! The decoder-only transformer: a learned token embedding (tied to the output layer),
//! learned position embeddings or rotary positions (`--pos`), pre-LN blocks of
//! attention + GELU MLP, a final LayerNorm. The attention of each block is
//! `dot-naive`, `sdpa` or `ska` (set-kernel attention from `ausa-kernels`, the layers
//! named by `--ska-layers`), whose set features are pooled from the atom embeddings or
//! from the block's input hidden states (`--set-features`).
//!
//! Rotary positions (RoFormer, the GPT-NeoX "rotate half" layout) rotate each head's
//! query and key pairs `(x_i, x_{i + dh/2})` by `t * 10000^(-2i/dh)`: dot and SDPA
//! blocks see relative positions; SKA blocks get positions from the set spans only.
//!
//! Precision: parameters are fp32 (the optimizer's master copy); with bf16/fp16 compute
//! the matmuls run in the compute kind (weights cast at use) while LayerNorm, softmax
//! statistics of the loss, and the SKA distance `Delta` stay fp32.

use ausa_kernels::cuda::{CudaKernels, ROUTER_MAX_HEAD_DIM, ROUTER_TOPK_MAX};
use ausa_kernels::layer_norm::HalfLayerNorm;
use ausa_kernels::pool::AtomPool;
use ausa_kernels::OpImpl;
use ausa_kernels::{
    linear_kind, pool_atoms_with, pool_hidden, Adapter, SetAttention, SetLayout, SkaConfig,
};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Epsilon of every LayerNorm of the model (libtorch's default).
const LAYER_NORM_EPS: f64 = 1e-5;

/// The attention of the blocks (`--attn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attn {
    /// Explicit `Q K^T / sqrt(d)`, masked softmax, `@ V`: no fused kernel.
    DotNaive,
    /// libtorch's fused `scaled_dot_product_attention`, causal.
    Sdpa,
    /// Set-kernel attention + router in the `--ska-layers` blocks, `dot-naive` elsewhere.
    Ska,
}

impl Attn {
    /// Parses the `--attn` value.
    pub fn parse(s: &str) -> Option<Attn> {
        match s {
            "dot-naive" => Some(Attn::DotNaive),
            "sdpa" => Some(Attn::Sdpa),
            "ska" => Some(Attn::Ska),
            _ => None,
        }
    }

    /// The `--attn` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Attn::DotNaive => "dot-naive",
            Attn::Sdpa => "sdpa",
            Attn::Ska => "ska",
        }
    }
}

/// Positions (`--pos`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pos {
    /// A learned `[seq_len, d]` embedding added to the token embedding.
    #[default]
    Learned,
    /// Rotary positions on the queries and keys of dot and SDPA blocks.
    Rotary,
}

impl Pos {
    /// The `--pos` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Pos::Learned => "learned",
            Pos::Rotary => "rotary",
        }
    }
}

/// Where SKA's set features `Phi` come from (`--set-features`, SPEC "Set features,
/// two choices").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SetFeatures {
    /// `Phi(S) = sum_{u in S} adapter(E[u])`: static, pooled once per forward.
    #[default]
    Atoms,
    /// The mean of each SKA block's input hidden states over the set's span: contextual,
    /// pooled per block.
    Hidden,
}

/// How SKA's set distance `Delta` is computed (`--delta`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaEstimate {
    /// From the cached MinHash signatures (the SPEC's estimate; any vocabulary).
    #[default]
    Minhash,
    /// The exact symmetric difference of the sets' atoms (vocabularies of at most
    /// `ausa_kernels::exact::MAX_EXACT_UNIVERSE` atoms): how much the estimate costs.
    Exact,
}

impl DeltaEstimate {
    /// The `--delta` value.
    pub fn as_str(self) -> &'static str {
        match self {
            DeltaEstimate::Minhash => "minhash",
            DeltaEstimate::Exact => "exact",
        }
    }
}

impl SetFeatures {
    /// The `--set-features` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SetFeatures::Atoms => "atoms",
            SetFeatures::Hidden => "hidden",
        }
    }
}

/// Whether the LayerNorms before the half-precision matmuls run as the fused CUDA kernel
/// (`--fused-layernorm`; `ausa_kernels::layer_norm`), which writes the normalized rows
/// in bf16 / fp16 directly, or as libtorch's LayerNorm and a cast. The same math and
/// parameters either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FusedNorm {
    /// The fused kernel on CUDA in bf16 / fp16 when the kernels load, else libtorch's.
    #[default]
    Auto,
    /// The fused kernel, or a usage error saying why it cannot run.
    On,
    /// libtorch's LayerNorm and a cast.
    Off,
}

impl FusedNorm {
    /// The `--fused-layernorm` value.
    pub fn as_str(self) -> &'static str {
        match self {
            FusedNorm::Auto => "auto",
            FusedNorm::On => "on",
            FusedNorm::Off => "off",
        }
    }

    /// How the LayerNorms compute for matmuls in `kind` on `device`: `OpImpl::Cuda` for the
    /// fused kernel, `OpImpl::Autograd` for libtorch's.
    pub fn ops(self, kind: tch::Kind, device: tch::Device) -> Result<OpImpl, String> {
        if self == FusedNorm::Off {
            return Ok(OpImpl::Autograd);
        }
        let half = matches!(kind, tch::Kind::BFloat16 | tch::Kind::Half);
        let why_not = match (device, half) {
            (_, false) => "it applies to --precision bf16 or fp16".to_string(),
            (tch::Device::Cuda(ordinal), true) => match CudaKernels::shared(ordinal) {
                Ok(_) => return Ok(OpImpl::Cuda { ordinal }),
                Err(e) => format!("the CUDA kernels do not load ({e})"),
            },
            _ => "it needs --device cuda".to_string(),
        };
        match self {
            FusedNorm::On => Err(format!(
                "--fused-layernorm on: {why_not}; use --fused-layernorm auto or off"
            )),
            FusedNorm::Auto | FusedNorm::Off => Ok(OpImpl::Autograd),
        }
    }
}

/// How SKA blocks compute (`--ska-backend`): the same model and parameters either way,
/// so a checkpoint resumes under either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkaBackend {
    /// Batched tensor ops differentiated by libtorch (the reference; CPU and GPU).
    #[default]
    Naive,
    /// The set attention and the router as fused CUDA kernels with their own backward
    /// (`ausa_kernels::set_attention`, `ausa_kernels::router`); pooling, projections and
    /// `Delta` stay tensor ops.
    Cuda,
}

impl SkaBackend {
    /// The `--ska-backend` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SkaBackend::Naive => "naive",
            SkaBackend::Cuda => "cuda",
        }
    }

    /// The SKA ops' implementation on `device` for compute kind `kind`, after checking that
    /// this backend can run there (the message names the flag to change).
    pub fn ops(
        self,
        model: &ModelConfig,
        kind: tch::Kind,
        device: tch::Device,
    ) -> Result<OpImpl, String> {
        match self {
            SkaBackend::Naive => Ok(OpImpl::Autograd),
            SkaBackend::Cuda => {
                let tch::Device::Cuda(ordinal) = device else {
                    return Err(
                        "--ska-backend cuda needs a CUDA device: pass --device cuda on a GPU machine, or use --ska-backend naive".into(),
                    );
                };
                if model.attn != Attn::Ska {
                    return Err("--ska-backend cuda applies only with --attn ska".into());
                }
                if !matches!(kind, tch::Kind::Float | tch::Kind::BFloat16) {
                    return Err(
                        "--ska-backend cuda computes in fp32 or bf16: use --precision bf16 (or fp32), or --ska-backend naive for fp16".into(),
                    );
                }
                if model.router_topk > ROUTER_TOPK_MAX {
                    return Err(format!(
                        "--ska-backend cuda keeps at most {ROUTER_TOPK_MAX} sets per token: lower --gate-topk {} or use --ska-backend naive",
                        model.router_topk
                    ));
                }
                let head_dim = model.d_model / model.heads.max(1);
                if head_dim > ROUTER_MAX_HEAD_DIM {
                    return Err(format!(
                        "--ska-backend cuda supports head dimensions up to {ROUTER_MAX_HEAD_DIM}, --d-model / --heads is {head_dim}: raise --heads or use --ska-backend naive"
                    ));
                }
                CudaKernels::shared(ordinal).map_err(|e| {
                    format!("--ska-backend cuda: the CUDA kernels do not load ({e}); use --ska-backend naive")
                })?;
                Ok(OpImpl::Cuda { ordinal })
            }
        }
    }
}

/// Model shape and attention options.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Vocabulary size (token ids are below it).
    pub vocab: i64,
    /// Positions (the sequence length).
    pub seq_len: i64,
    /// Width.
    pub d_model: i64,
    /// Blocks.
    pub layers: i64,
    /// Attention heads.
    pub heads: i64,
    /// MLP width over `d_model`.
    pub ffn_mult: i64,
    /// Dropout on the residual branches and embeddings (0 = off).
    pub dropout: f64,
    /// Attention kind.
    pub attn: Attn,
    /// With `ska`: the blocks that use SKA (the others use `dot-naive`).
    pub ska_layers: Vec<i64>,
    /// With `ska`: the content term weight `beta`.
    pub beta: f64,
    /// With `ska`: router top-k over the gates (0 = all visible sets).
    pub router_topk: i64,
    /// With `ska`: rank of the atom adapter (0 = off).
    pub adapter_rank: i64,
    /// Learned or rotary positions (absent in checkpoints before the option: learned).
    #[serde(default)]
    pub pos: Pos,
    /// With `ska`: atom or hidden-state set features (absent in older checkpoints: atoms).
    #[serde(default)]
    pub set_features: SetFeatures,
    /// With `ska`: MinHash or exact `Delta` (absent in older checkpoints: MinHash).
    #[serde(default)]
    pub delta: DeltaEstimate,
}

impl ModelConfig {
    /// Checks the shape; the message names the flag to change.
    pub fn check(&self) -> Result<(), String> {
        if self.d_model <= 0 || self.heads <= 0 || self.d_model % self.heads != 0 {
            return Err(format!(
                "--d-model {} must be a positive multiple of --heads {}",
                self.d_model, self.heads
            ));
        }
        if self.layers <= 0 || self.ffn_mult <= 0 || self.vocab <= 0 || self.seq_len <= 1 {
            return Err("--layers, --ffn-mult must be positive and --seq-len above 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("--dropout {} must be in [0, 1)", self.dropout));
        }
        if self.pos == Pos::Rotary && (self.d_model / self.heads) % 2 != 0 {
            return Err(format!(
                "--pos rotary rotates pairs of a head's dimensions: --d-model {} / --heads {} = {} must be even",
                self.d_model,
                self.heads,
                self.d_model / self.heads
            ));
        }
        if self.set_features == SetFeatures::Hidden && self.adapter_rank > 0 {
            return Err(format!(
                "--adapter-rank {} adapts atom embeddings, which --set-features hidden does not use; pass --adapter-rank 0 or --set-features atoms",
                self.adapter_rank
            ));
        }
        let universe = ausa_kernels::exact::MAX_EXACT_UNIVERSE;
        if self.delta == DeltaEstimate::Exact && self.vocab > universe {
            return Err(format!(
                "--delta exact holds each set as a bitset of at most {universe} atoms, but the vocabulary has {}: use --delta minhash, or a tokenizer of at most {universe} ids",
                self.vocab
            ));
        }
        if let Some(bad) = self.ska_layers.iter().find(|&&l| l < 0 || l >= self.layers) {
            return Err(format!(
                "--ska-layers names layer {bad}, but the model has layers 0..{}",
                self.layers
            ));
        }
        Ok(())
    }

    /// Whether block `layer` uses SKA.
    pub fn is_ska(&self, layer: i64) -> bool {
        self.attn == Attn::Ska && self.ska_layers.contains(&layer)
    }

    /// The per-batch set structure every SKA block shares, with `Delta` as `--delta`
    /// says (the exact one replaces the MinHash estimate; [`ModelConfig::check`]
    /// bounded the vocabulary).
    pub fn set_layout(&self, sets: &ausa_kernels::SetInputs, seq_len: i64) -> SetLayout {
        let layout = SetLayout::new(sets, seq_len);
        match self.delta {
            DeltaEstimate::Minhash => layout,
            DeltaEstimate::Exact => {
                let delta = ausa_kernels::exact::exact_delta(&layout, self.vocab);
                SetLayout { delta, ..layout }
            }
        }
    }

    /// Whether any block uses SKA (then batches need their set structure).
    pub fn uses_sets(&self) -> bool {
        (0..self.layers).any(|l| self.is_ska(l))
    }
}

enum Mixer {
    Dot {
        qkv: nn::Linear,
        out: nn::Linear,
        fused: bool,
    },
    Ska(SetAttention),
}

struct Block {
    ln1: nn::LayerNorm,
    mixer: Mixer,
    ln2: nn::LayerNorm,
    up: nn::Linear,
    down: nn::Linear,
}

/// The language model.
pub struct Lm {
    config: ModelConfig,
    tokens: Tensor,
    /// `[seq_len, d]` learned positions (`--pos learned`).
    positions: Option<Tensor>,
    /// `[seq_len, dh]` cos and sin tables (`--pos rotary`): constants, not variables.
    rotary: Option<(Tensor, Tensor)>,
    adapter: Adapter,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
    /// The fused LayerNorm-to-half ops (`None`: libtorch's LayerNorm and a cast).
    half_norm: Option<HalfLayerNorm>,
    /// The atom pooling of the SKA backend (`None`: `embedding_bag` under autograd).
    pool: Option<AtomPool>,
}

impl std::fmt::Debug for Lm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lm").field("config", &self.config).finish()
    }
}

/// What one forward pass needs besides the tokens.
pub struct Inputs<'a> {
    /// `[B, L]` `Int64` token ids.
    pub tokens: &'a Tensor,
    /// The batch's set structure (required when a block uses SKA).
    pub sets: Option<&'a SetLayout>,
    /// Compute kind (`Float`, `BFloat16`, `Half`).
    pub kind: Kind,
    /// Dropout active.
    pub train: bool,
}

impl Lm {
    /// A model under `path` (GPT-2 style init: normal(0, 0.02), residual projections
    /// scaled by `1/sqrt(2 * layers)`), SKA routers in tensor ops.
    pub fn new(path: &nn::Path, config: &ModelConfig) -> Lm {
        Lm::with_ops(path, config, OpImpl::Autograd)
    }

    /// [`Lm::new`] with the SKA blocks' router computed by `router` (from
    /// [`SkaBackend::ops`], which checked that it runs here). The parameters, and their
    /// initialization, do not depend on it.
    pub fn with_ops(path: &nn::Path, config: &ModelConfig, router: OpImpl) -> Lm {
        let d = config.d_model;
        let std = 0.02;
        let normal = Init::Randn {
            mean: 0.0,
            stdev: std,
        };
        let resid = Init::Randn {
            mean: 0.0,
            stdev: std / (2.0 * config.layers as f64).sqrt(),
        };
        let linear = |p: nn::Path, i: i64, o: i64, init: Init| {
            nn::linear(
                p,
                i,
                o,
                nn::LinearConfig {
                    ws_init: init,
                    bs_init: Some(Init::Const(0.0)),
                    bias: true,
                },
            )
        };
        let ln = |p: nn::Path| {
            let config = nn::LayerNormConfig {
                eps: LAYER_NORM_EPS,
                ..Default::default()
            };
            nn::layer_norm(p, vec![d], config)
        };
        let blocks = (0..config.layers)
            .map(|l| {
                let p = path / "blocks" / l;
                let mixer = if config.is_ska(l) {
                    let ska = SkaConfig {
                        d_model: d,
                        heads: config.heads,
                        beta: config.beta,
                        router_topk: config.router_topk,
                        ops: router,
                        ..SkaConfig::default()
                    };
                    Mixer::Ska(SetAttention::new(&p / "ska", &ska))
                } else {
                    Mixer::Dot {
                        qkv: linear(&p / "attn" / "qkv", d, 3 * d, normal),
                        out: linear(&p / "attn" / "out", d, d, resid),
                        fused: config.attn == Attn::Sdpa,
                    }
                };
                Block {
                    ln1: ln(&p / "ln1"),
                    mixer,
                    ln2: ln(&p / "ln2"),
                    up: linear(&p / "mlp" / "up", d, config.ffn_mult * d, normal),
                    down: linear(&p / "mlp" / "down", config.ffn_mult * d, d, resid),
                }
            })
            .collect();
        let tokens = path.var("tok_emb", &[config.vocab, d], normal);
        let (positions, rotary) = match config.pos {
            Pos::Learned => (
                Some(path.var("pos_emb", &[config.seq_len, d], normal)),
                None,
            ),
            Pos::Rotary => {
                let tables = rotary_tables(config.seq_len, d / config.heads, path.device());
                (None, Some(tables))
            }
        };
        Lm {
            config: config.clone(),
            tokens,
            positions,
            rotary,
            adapter: Adapter::new(path / "adapter", d, config.adapter_rank, 1.0),
            blocks,
            ln_f: ln(path / "ln_f"),
            half_norm: None,
            pool: AtomPool::new(router).unwrap_or_else(|e| panic!("the atom pooling: {e}")),
        }
    }

    /// The model with its LayerNorms before half-precision matmuls computed as `imp`
    /// says (`OpImpl::Autograd`: libtorch's LayerNorm and a cast; see [`FusedNorm`]).
    pub fn with_layer_norm(mut self, imp: OpImpl) -> Result<Lm, String> {
        self.half_norm = HalfLayerNorm::new(imp, LAYER_NORM_EPS)?;
        Ok(self)
    }

    /// `ln(x)` in `kind`: the fused op for an fp32 `x` going into half-precision
    /// matmuls when the model has it, else libtorch's LayerNorm and a cast.
    fn norm(&self, ln: &nn::LayerNorm, x: &Tensor, kind: Kind) -> Tensor {
        match &self.half_norm {
            Some(op) if HalfLayerNorm::applies(x, kind) => op
                .forward(ln, x, kind)
                .unwrap_or_else(|e| panic!("the fused LayerNorm: {e}")),
            _ => x.apply(ln).to_kind(kind),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Logits `[B, L, vocab]` in fp32; position `t` predicts token `t + 1`.
    pub fn forward(&self, inputs: &Inputs) -> Tensor {
        let (bsz, len) = inputs.tokens.size2().expect("tokens are [B, L]");
        let kind = inputs.kind;
        let drop = |x: Tensor| {
            x.dropout(
                self.config.dropout,
                inputs.train && self.config.dropout > 0.0,
            )
        };
        let embedded = Tensor::embedding(&self.tokens, inputs.tokens, -1, false, false);
        let mut x = drop(match &self.positions {
            Some(pos) => embedded + pos.narrow(0, 0, len).unsqueeze(0),
            None => embedded,
        });
        let phi = match inputs.sets {
            Some(layout)
                if self.config.uses_sets() && self.config.set_features == SetFeatures::Atoms =>
            {
                // Phi(S) = sum over the set's atoms of adapter(E[u]), once per forward: the
                // adapter is linear, so it maps the pooled rows (M per sequence, not one
                // per atom occurrence).
                let pooled = pool_atoms_with(self.pool.as_ref(), &self.tokens, layout);
                Some(self.adapter.forward(&pooled).to_kind(kind))
            }
            _ => None,
        };
        for block in &self.blocks {
            let h = self.norm(&block.ln1, &x, kind);
            let mixed = match &block.mixer {
                Mixer::Dot { qkv, out, fused } => {
                    let y = self.dot_attention(&h, qkv, *fused, bsz, len);
                    linear_kind(out, &y)
                }
                Mixer::Ska(ska) => {
                    let layout = inputs
                        .sets
                        .expect("an SKA block needs the batch's sets (Inputs::sets)");
                    match &phi {
                        Some(phi) => ska.forward(&h, phi, layout),
                        // `hidden`: this block's own input states, pooled per set span.
                        None => ska.forward(&h, &pool_hidden(&h, layout), layout),
                    }
                }
            };
            // Out of place: the LayerNorm backward needs `x` unmodified. The add promotes the
            // branch to fp32 itself (exact from bf16/fp16): no separate cast kernel.
            x = &x + drop(mixed);
            let h = self.norm(&block.ln2, &x, kind);
            let m = linear_kind(&block.down, &linear_kind(&block.up, &h).gelu("none"));
            x = &x + drop(m);
        }
        let h = self.norm(&self.ln_f, &x, kind);
        h.matmul(&self.tokens.to_kind(kind).transpose(0, 1))
            .to_kind(Kind::Float)
    }

    fn dot_attention(
        &self,
        h: &Tensor,
        qkv: &nn::Linear,
        fused: bool,
        bsz: i64,
        len: i64,
    ) -> Tensor {
        let heads = self.config.heads;
        let dh = self.config.d_model / heads;
        let split = linear_kind(qkv, h)
            .view([bsz, len, 3, heads, dh])
            .permute([2, 0, 3, 1, 4]); // [3, B, H, L, dh]
                                       // `unbind`, not three `select`s: its backward stacks the three gradients in one
                                       // kernel, where each `select` backward zero-fills a whole [3, B, H, L, dh] tensor
                                       // and the three are then summed.
        let [mut q, mut k, v]: [Tensor; 3] = split
            .unbind(0)
            .try_into()
            .expect("the qkv projection splits into 3");
        if let Some((cos, sin)) = &self.rotary {
            let (cos, sin) = (cos.narrow(0, 0, len), sin.narrow(0, 0, len));
            q = rotate(&q, &cos, &sin);
            k = rotate(&k, &cos, &sin);
        }
        let y = if fused {
            Tensor::scaled_dot_product_attention(&q, &k, &v, None::<Tensor>, 0.0, true, None, false)
        } else {
            let scores = q.matmul(&k.transpose(-1, -2)) / (dh as f64).sqrt();
            let causal = Tensor::ones([len, len], (Kind::Bool, h.device())).tril(0);
            let scores = scores.masked_fill(&causal.logical_not(), f64::NEG_INFINITY);
            scores.softmax(-1, Kind::Float).to_kind(h.kind()).matmul(&v)
        };
        y.transpose(1, 2).reshape([bsz, len, heads * dh])
    }
}

/// The rotary `cos` and `sin` tables, `[seq_len, dh]` fp32 on `device`: column `i` and
/// `i + dh/2` of row `t` hold the angle `t * 10000^(-2i/dh)`.
fn rotary_tables(seq_len: i64, dh: i64, device: tch::Device) -> (Tensor, Tensor) {
    let half = dh / 2;
    let opts = (Kind::Float, device);
    let inv_freq = (Tensor::arange(half, opts) * (-2.0 * 10000f64.ln() / dh as f64)).exp();
    let angles = Tensor::arange(seq_len, opts).unsqueeze(1) * inv_freq.unsqueeze(0);
    let angles = Tensor::cat(&[&angles, &angles], 1);
    (angles.cos(), angles.sin())
}

/// `x` (`[.., L, dh]`) rotated by the tables: `x * cos + rotate_half(x) * sin`, with
/// `rotate_half([x1, x2]) = [-x2, x1]`.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let (x1, x2) = (x.narrow(-1, 0, half), x.narrow(-1, half, half));
    let rotated = Tensor::cat(&[x2.neg(), x1], -1);
    x * cos.to_kind(x.kind()) + rotated * sin.to_kind(x.kind())
}

/// Mean next-token cross entropy of `logits` (`[B, L, V]`) against `tokens` (`[B, L]`):
/// positions `0..L-1` predict `1..L`. Returns the mean (a scalar) and the number of
/// predicted positions.
///
/// The targets are shifted left with the last position ignored, so the loss reads the
/// logits where they are: slicing off the last position first would copy all the others
/// (and its backward would zero-fill and copy them again).
pub fn next_token_loss(logits: &Tensor, tokens: &Tensor) -> (Tensor, i64) {
    const IGNORE: i64 = -100;
    let (bsz, len, vocab) = logits.size3().expect("logits are [B, L, V]");
    let last = Tensor::full([bsz, 1], IGNORE, (Kind::Int64, tokens.device()));
    let target = Tensor::cat(&[tokens.narrow(1, 1, len - 1), last], 1).reshape([-1]);
    let loss = logits.reshape([-1, vocab]).cross_entropy_loss::<Tensor>(
        &target,
        None,
        tch::Reduction::Mean,
        IGNORE,
        0.0,
    );
    (loss, bsz * (len - 1))
}
