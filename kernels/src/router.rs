//! The token -> set router of an SKA layer as an op with its own backward, in two
//! implementations behind one [`CustomOp`]:
//!
//! - [`OpImpl::Manual`]: tensor ops on any device, forward and backward written out
//!   (the plain reference of the CUDA kernels' math, and the way the autograd bridge is
//!   tested on a machine without a GPU);
//! - [`OpImpl::Cuda`]: the fused kernels of `cuda/router.cu` (fp32 arithmetic; bf16
//!   token rows are read and written as bf16, the set rows `z` and other kinds go through
//!   fp32 copies).
//!
//! [`OpImpl::Autograd`] is the default: the router in tensor ops differentiated by
//! libtorch (`SetAttention::forward`'s own code, `--ska-backend naive`).
//!
//! The math, for token `t` with query `q_t` and set outputs `z_j`: over the kept sets
//! (visible, and among the `topk` best when `topk > 0`) `P_tj = exp(q_t . z_j - lse_t)`,
//! `out_t = sum_j P_tj z_j`; a token without a kept set gets zeros. Backward:
//! `D_t = dout_t . out_t`, `dS_tj = P_tj (dout_t . z_j - D_t)`, `dq_t = sum_j dS_tj z_j`,
//! `dz_j = sum_t dS_tj q_t + P_tj dout_t`.

use std::sync::Arc;

use tch::{Kind, Tensor};

use crate::cuda::RouterSaved;
use crate::shim::autograd::{CustomOp, Forward, OpHandle};
use crate::{top_k_mask, OpBackend as Backend, OpImpl};

/// A registered router op (cheap to copy; one per layer configuration): two
/// registrations, for routes that may hold any number of sets per token and for narrow
/// ones (at most [`crate::cuda::ROUTER_TOPK_MAX`] per token, which the CUDA forward lists
/// per token).
#[derive(Debug, Clone, Copy)]
pub struct Router {
    wide: OpHandle,
    narrow: OpHandle,
}

impl Router {
    /// The router with top-k `topk` (0: every visible set) as `imp` computes it; `None`
    /// for [`OpImpl::Autograd`], which needs no op. For `Cuda`, the kernels of that
    /// device are opened (or reused) here.
    pub fn new(imp: OpImpl, topk: i64) -> Result<Option<Router>, String> {
        let Some(backend) = imp.op_backend()? else {
            return Ok(None);
        };
        let backend = Arc::new(backend);
        let op = |narrow| {
            OpHandle::register(Arc::new(RouterOp {
                topk,
                backend: backend.clone(),
                narrow,
            }))
        };
        Ok(Some(Router {
            wide: op(false),
            narrow: op(true),
        }))
    }

    /// `[B, H, L, D]` router output for queries `q` (`[B, H, L, D]`), set outputs `z`
    /// (`[B, H, M, D]`) and `route` (`[B, 1, L, M]` bool), differentiable in `q` and `z`.
    /// `narrow`: no token's route holds more than [`crate::cuda::ROUTER_TOPK_MAX`] sets
    /// (a hint for the CUDA kernels' choice; the results do not depend on it).
    pub fn forward(
        &self,
        q: &Tensor,
        z: &Tensor,
        route: &Tensor,
        narrow: bool,
    ) -> Result<Tensor, String> {
        let handle = if narrow { self.narrow } else { self.wide };
        handle.apply_one(&[q, z, route]).map_err(|e| e.to_string())
    }
}

/// `q` as the kernels take it: bf16 as it is, any other kind as fp32.
fn token_rows(q: &Tensor) -> Tensor {
    match q.kind() {
        Kind::BFloat16 => q.shallow_clone(),
        _ => q.to_kind(Kind::Float),
    }
}

struct RouterOp {
    topk: i64,
    backend: Arc<Backend>,
    /// The route holds at most `ROUTER_TOPK_MAX` sets per token (the per-token forward).
    narrow: bool,
}

/// The manual forward: output, and `P` (zero outside the kept sets) for the backward.
fn manual_forward(q: &Tensor, z: &Tensor, route: &Tensor, topk: i64) -> (Tensor, Tensor) {
    let logits = q.matmul(&z.transpose(-1, -2));
    let mask = top_k_mask(&logits, &route.expand_as(&logits), topk);
    let hidden = mask.logical_not();
    let lse = logits
        .masked_fill(&hidden, f64::NEG_INFINITY)
        .logsumexp([-1i64].as_slice(), true);
    // A row without a kept set has lse = -inf: its logits - lse are +inf, masked to 0.
    let p = (logits - lse).exp().masked_fill(&hidden, 0.0);
    let out = p.matmul(z);
    (out, p)
}

/// The manual backward: `(dq, dz)`.
fn manual_backward(
    q: &Tensor,
    z: &Tensor,
    p: &Tensor,
    out: &Tensor,
    dout: &Tensor,
) -> (Tensor, Tensor) {
    let dp = dout.matmul(&z.transpose(-1, -2));
    let d = (dout * out).sum_dim_intlist([-1i64].as_slice(), true, out.kind());
    let ds = p * (dp - d);
    let dq = ds.matmul(z);
    let dz = ds.transpose(-1, -2).matmul(q) + p.transpose(-1, -2).matmul(dout);
    (dq, dz)
}

impl CustomOp for RouterOp {
    fn name(&self) -> &str {
        match *self.backend {
            Backend::Manual => "router (manual backward)",
            Backend::Cuda(_) => "router (CUDA)",
        }
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Forward, String> {
        let [q, z, route] = inputs else {
            return Err(format!(
                "expected q, z, route; got {} tensors",
                inputs.len()
            ));
        };
        match &*self.backend {
            Backend::Manual => {
                let (out, p) = manual_forward(q, z, route, self.topk);
                Ok(Forward {
                    saved: vec![q.shallow_clone(), z.shallow_clone(), p, out.shallow_clone()],
                    outputs: vec![out],
                })
            }
            Backend::Cuda(kernels) => {
                let kind = q.kind();
                let qk = token_rows(q);
                // z as it comes, fp32 or bf16: the forward's tensor-core kernel and the
                // backward's top-k dq read bf16 rows as they are (saved in bf16, half
                // the memory); any other kind as fp32.
                let saved = kernels
                    .router_forward(
                        &qk,
                        z,
                        route,
                        self.topk,
                        kind == Kind::BFloat16,
                        self.narrow,
                    )
                    .map_err(|e| e.to_string())?;
                let z_rows = match z.kind() {
                    Kind::BFloat16 => z.shallow_clone(),
                    _ => z.to_kind(Kind::Float),
                };
                let out = saved.out.to_kind(kind);
                Ok(Forward {
                    outputs: vec![out],
                    saved: vec![
                        qk,
                        z_rows,
                        route.shallow_clone(),
                        saved.out,
                        saved.lse,
                        saved.kept,
                        saved.route_bits,
                        // An empty tensor: the forward wrote no gates.
                        saved
                            .kept_p
                            .unwrap_or_else(|| Tensor::empty([0], (Kind::Float, q.device()))),
                    ],
                })
            }
        }
    }

    fn backward(
        &self,
        saved: &[Tensor],
        grad_outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>, String> {
        let [dout] = grad_outputs else {
            return Err(format!(
                "expected one output gradient, got {}",
                grad_outputs.len()
            ));
        };
        match &*self.backend {
            Backend::Manual => {
                let [q, z, p, out] = saved else {
                    return Err(format!("expected 4 saved tensors, got {}", saved.len()));
                };
                let (dq, dz) = manual_backward(q, z, p, out, &dout.to_kind(out.kind()));
                Ok(vec![Some(dq), Some(dz), None])
            }
            Backend::Cuda(kernels) => {
                let [q, z, route, out, lse, kept, route_bits, kept_p] = saved else {
                    return Err(format!("expected 8 saved tensors, got {}", saved.len()));
                };
                let kind = dout.kind();
                let fwd = RouterSaved {
                    out: out.shallow_clone(),
                    lse: lse.shallow_clone(),
                    kept: kept.shallow_clone(),
                    topk: self.topk,
                    route_bits: route_bits.shallow_clone(),
                    kept_p: (kept_p.numel() > 0).then(|| kept_p.shallow_clone()),
                };
                let (dq, dz) = kernels
                    .router_backward(q, z, route, &fwd, dout)
                    .map_err(|e| e.to_string())?;
                Ok(vec![Some(dq.to_kind(kind)), Some(dz.to_kind(kind)), None])
            }
        }
    }
}
