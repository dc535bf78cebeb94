//! The decoder-only transformer: learned token and position embeddings (the token
//! embedding tied to the output layer), pre-LN blocks of attention + GELU MLP, a final
//! LayerNorm. The attention of each block is `dot-naive`, `sdpa` or `ska` (set-kernel
//! attention from `ausa-kernels`, the layers named by `--ska-layers`).
//!
//! Precision: parameters are fp32 (the optimizer's master copy); with bf16/fp16 compute
//! the matmuls run in the compute kind (weights cast at use) while LayerNorm, softmax
//! statistics of the loss, and the SKA distance `Delta` stay fp32.

use ausa_kernels::{linear_kind, pool_phi, Adapter, SetAttention, SetLayout, SkaConfig};
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

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
    positions: Tensor,
    adapter: Adapter,
    blocks: Vec<Block>,
    ln_f: nn::LayerNorm,
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
    /// scaled by `1/sqrt(2 * layers)`).
    pub fn new(path: &nn::Path, config: &ModelConfig) -> Lm {
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
        let ln = |p: nn::Path| nn::layer_norm(p, vec![d], Default::default());
        let blocks = (0..config.layers)
            .map(|l| {
                let p = path / "blocks" / l;
                let mixer = if config.is_ska(l) {
                    let ska = SkaConfig {
                        d_model: d,
                        heads: config.heads,
                        beta: config.beta,
                        router_topk: config.router_topk,
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
        Lm {
            config: config.clone(),
            tokens: path.var("tok_emb", &[config.vocab, d], normal),
            positions: path.var("pos_emb", &[config.seq_len, d], normal),
            adapter: Adapter::new(path / "adapter", d, config.adapter_rank, 1.0),
            blocks,
            ln_f: ln(path / "ln_f"),
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
        let pos = self.positions.narrow(0, 0, len).unsqueeze(0);
        let mut x = drop(Tensor::embedding(&self.tokens, inputs.tokens, -1, false, false) + pos);
        let phi = match inputs.sets {
            Some(layout) if self.config.uses_sets() => {
                // Phi(S) = sum over the set's atoms of adapter(E[u]), once per forward.
                let phi_values = self
                    .adapter
                    .forward(&self.tokens.index_select(0, &layout.values));
                Some(pool_phi(&phi_values, layout).to_kind(kind))
            }
            _ => None,
        };
        for block in &self.blocks {
            let h = x.apply(&block.ln1).to_kind(kind);
            let mixed = match &block.mixer {
                Mixer::Dot { qkv, out, fused } => {
                    let y = self.dot_attention(&h, qkv, *fused, bsz, len);
                    linear_kind(out, &y)
                }
                Mixer::Ska(ska) => {
                    let (layout, phi) = inputs
                        .sets
                        .zip(phi.as_ref())
                        .expect("an SKA block needs the batch's sets (Inputs::sets)");
                    ska.forward(&h, phi, layout)
                }
            };
            // Out of place: the LayerNorm backward needs `x` unmodified. The add promotes the
            // branch to fp32 itself (exact from bf16/fp16): no separate cast kernel.
            x = &x + drop(mixed);
            let h = x.apply(&block.ln2).to_kind(kind);
            let m = linear_kind(&block.down, &linear_kind(&block.up, &h).gelu("none"));
            x = &x + drop(m);
        }
        let h = x.apply(&self.ln_f).to_kind(kind);
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
        let (q, k, v) = (split.get(0), split.get(1), split.get(2));
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
