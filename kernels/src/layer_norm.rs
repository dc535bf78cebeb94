//! LayerNorm of the fp32 residual stream written straight in the matmuls' half kind
//! (bf16 / fp16) as an op with its own backward, in two implementations behind one
//! [`CustomOp`]:
//!
//! - [`OpImpl::Manual`]: tensor ops on any device, forward and backward written out (the
//!   plain reference of the kernels' math, tested against libtorch's autograd);
//! - [`OpImpl::Cuda`]: the kernels of `cuda/layer_norm.cu`, which read `x` once and write
//!   the half-precision rows once (libtorch's `layer_norm` writes fp32 rows that a cast
//!   kernel then reads back and rewrites: two more passes over the activations, in the
//!   forward and again in the backward).
//!
//! [`OpImpl::Autograd`] needs no op: `layer_norm(x).to_kind(half)` under libtorch's
//! autograd.
//!
//! The math, per row of `C` values: `mean`, `var` (biased), `rstd = 1 / sqrt(var + eps)`,
//! `xhat = (x - mean) rstd`, `y = half(xhat w + b)`. Backward, with `g = dy w`:
//! `dx = rstd (g - mean(g) - xhat mean(g xhat))`, `dw = sum_rows dy xhat`,
//! `db = sum_rows dy`, all in fp32.

use std::sync::Arc;

use tch::{nn, Kind, Tensor};

use crate::shim::autograd::{CustomOp, Forward, OpHandle};
use crate::{OpBackend as Backend, OpImpl};

/// The fused LayerNorm ops of one implementation, one per half kind (cheap to copy).
#[derive(Debug, Clone, Copy)]
pub struct HalfLayerNorm {
    bf16: OpHandle,
    fp16: OpHandle,
}

impl HalfLayerNorm {
    /// The ops for LayerNorms of epsilon `eps` as `imp` computes them; `None` for
    /// [`OpImpl::Autograd`], which needs no op. For `Cuda`, the device's kernels are
    /// opened (or reused) here.
    pub fn new(imp: OpImpl, eps: f64) -> Result<Option<HalfLayerNorm>, String> {
        let handle = |out: Kind| -> Result<Option<OpHandle>, String> {
            let Some(backend) = imp.op_backend()? else {
                return Ok(None);
            };
            Ok(Some(OpHandle::register(Arc::new(LayerNormOp {
                out,
                eps,
                backend,
            }))))
        };
        match (handle(Kind::BFloat16)?, handle(Kind::Half)?) {
            (Some(bf16), Some(fp16)) => Ok(Some(HalfLayerNorm { bf16, fp16 })),
            _ => Ok(None),
        }
    }

    /// Whether `forward` applies to `x` normalized into kind `out`: an fp32 `x` whose last
    /// dimension the kernels support, and a half `out` (else the caller uses libtorch's
    /// LayerNorm and a cast).
    pub fn applies(x: &Tensor, out: Kind) -> bool {
        let cols = x.size().last().copied().unwrap_or(0);
        x.kind() == Kind::Float
            && matches!(out, Kind::BFloat16 | Kind::Half)
            && (1..=crate::cuda::LAYER_NORM_MAX_COLS).contains(&cols)
    }

    /// `layer_norm(x)` through `ln`'s weight and bias, as kind `out` (BFloat16 or Half),
    /// differentiable in `x`, the weight and the bias. `x` is fp32 with any leading
    /// dimensions; `ln` must have an elementwise affine, and the epsilon these ops were
    /// made with (tch does not expose a layer's own).
    pub fn forward(&self, ln: &nn::LayerNorm, x: &Tensor, out: Kind) -> Result<Tensor, String> {
        let (Some(w), Some(b)) = (&ln.ws, &ln.bs) else {
            return Err("the fused LayerNorm needs a weight and a bias".into());
        };
        self.forward_with(x, w, b, out)
    }

    /// [`HalfLayerNorm::forward`] with the weight and bias (`[C]` fp32) given directly.
    pub fn forward_with(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        out: Kind,
    ) -> Result<Tensor, String> {
        let handle = match out {
            Kind::BFloat16 => self.bf16,
            Kind::Half => self.fp16,
            other => {
                return Err(format!(
                    "the fused LayerNorm writes bf16 or fp16, not {other:?}"
                ))
            }
        };
        let size = x.size();
        let cols = *size.last().ok_or("LayerNorm of a scalar")?;
        let rows = x.contiguous().view([-1, cols]);
        let y = handle
            .apply_one(&[&rows, w, b])
            .map_err(|e| e.to_string())?;
        Ok(y.view(size.as_slice()))
    }
}

struct LayerNormOp {
    out: Kind,
    eps: f64,
    backend: Backend,
}

/// The manual forward: `(y, mean, rstd)`.
fn manual_forward(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, out: Kind) -> [Tensor; 3] {
    let last = [-1i64];
    let mean = x.mean_dim(last.as_slice(), true, Kind::Float);
    let centered = x - &mean;
    let var = (&centered * &centered).mean_dim(last.as_slice(), true, Kind::Float);
    let rstd = (var + eps).rsqrt();
    let y = (centered * &rstd * w + b).to_kind(out);
    [y, mean.squeeze_dim(-1), rstd.squeeze_dim(-1)]
}

/// The manual backward: `(dx, dw, db)` in fp32.
fn manual_backward(
    x: &Tensor,
    w: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    dy: &Tensor,
) -> [Tensor; 3] {
    let last = [-1i64];
    let (mean, rstd) = (mean.unsqueeze(-1), rstd.unsqueeze(-1));
    let dy = dy.to_kind(Kind::Float);
    let xhat = (x - mean) * &rstd;
    let g = &dy * w;
    let mg = g.mean_dim(last.as_slice(), true, Kind::Float);
    let mgx = (&g * &xhat).mean_dim(last.as_slice(), true, Kind::Float);
    let dx = rstd * (g - mg - &xhat * mgx);
    let rows = [0i64];
    let dw = (&dy * xhat).sum_dim_intlist(rows.as_slice(), false, Kind::Float);
    let db = dy.sum_dim_intlist(rows.as_slice(), false, Kind::Float);
    [dx, dw, db]
}

impl CustomOp for LayerNormOp {
    fn name(&self) -> &str {
        match self.backend {
            Backend::Manual => "layer norm to half (manual backward)",
            Backend::Cuda(_) => "layer norm to half (CUDA)",
        }
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Forward, String> {
        let [x, w, b] = inputs else {
            return Err(format!("expected x, w, b; got {} tensors", inputs.len()));
        };
        let eps = self.eps;
        let [y, mean, rstd] = match &self.backend {
            Backend::Manual => manual_forward(x, w, b, eps, self.out),
            Backend::Cuda(kernels) => {
                let (y, mean, rstd) = kernels
                    .layer_norm_forward(x, w, b, eps, self.out)
                    .map_err(|e| e.to_string())?;
                [y, mean, rstd]
            }
        };
        Ok(Forward {
            outputs: vec![y],
            saved: vec![x.shallow_clone(), w.shallow_clone(), mean, rstd],
        })
    }

    fn backward(
        &self,
        saved: &[Tensor],
        grad_outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>, String> {
        let [dy] = grad_outputs else {
            return Err(format!(
                "expected one output gradient, got {}",
                grad_outputs.len()
            ));
        };
        let [x, w, mean, rstd] = saved else {
            return Err(format!("expected 4 saved tensors, got {}", saved.len()));
        };
        let [dx, dw, db] = match &self.backend {
            Backend::Manual => manual_backward(x, w, mean, rstd, dy),
            Backend::Cuda(kernels) => {
                let (dx, dw, db) = kernels
                    .layer_norm_backward(x, w, mean, rstd, &dy.to_kind(self.out))
                    .map_err(|e| e.to_string())?;
                [dx, dw, db]
            }
        };
        Ok(vec![Some(dx), Some(dw), Some(db)])
    }
}
