//! The set x set attention of an SKA layer as an op with its own backward, in two
//! implementations behind one [`CustomOp`]:
//!
//! - [`OpImpl::Manual`]: tensor ops on any device, forward and backward written out (the
//!   plain reference of the CUDA kernels' math, tested against libtorch's autograd);
//! - [`OpImpl::Cuda`]: the fused kernels of `cuda/set_attention.cu` (fp32 inside; other
//!   kinds are cast in and the results cast back).
//!
//! [`OpImpl::Autograd`] needs no op: `SetAttention::set_outputs` differentiated by
//! libtorch.
//!
//! The math, per sequence and head, over the attendable pairs (`attend[i, j]`):
//! `K_ij = exp(-gamma Delta_ij)`, `s_ij = (K_ij + beta qa_i . kb_j) / tau`,
//! `P_ij = exp(s_ij - lse_i)`, `out_i = sum_j P_ij v_j` (zeros for a row with no
//! attendable set). Backward, with `D_i = dout_i . out_i` and
//! `dS_ij = P_ij (dout_i . v_j - D_i)`: `dv_j = sum_i P_ij dout_i`,
//! `dqa_i = beta / tau sum_j dS_ij kb_j`, `dkb_j = beta / tau sum_i dS_ij qa_i`,
//! `dgamma = sum_ij dS_ij (-Delta_ij K_ij) / tau`, `dtau = sum_ij dS_ij (-s_ij / tau)`.
//! `Delta` and `attend` get no gradient.

use std::sync::Arc;

use tch::{Kind, Tensor};

use crate::cuda::SetAttentionInputs;
use crate::shim::autograd::{CustomOp, Forward, OpHandle};
use crate::{OpBackend as Backend, OpImpl};

/// A registered set-attention op (cheap to copy; one per layer configuration).
#[derive(Debug, Clone, Copy)]
pub struct FusedSetAttention {
    handle: OpHandle,
    content: bool,
}

/// The differentiable inputs of one call (`[B, H, M, D]` rows, `[H]` head constants).
#[derive(Debug)]
pub struct SetAttentionArgs<'a> {
    /// `[B, M, M]` fp32 `Delta` of the batch (no gradient).
    pub delta: &'a Tensor,
    /// `[B, 1, M, M]` bool: query set `i` may attend key set `j` (no gradient).
    pub attend: &'a Tensor,
    /// `[H]` `gamma_h`.
    pub gamma: &'a Tensor,
    /// `[H]` `tau_h`.
    pub tau: &'a Tensor,
    /// `[B, H, M, D]` values.
    pub v: &'a Tensor,
    /// `(qa, kb)`, each `[B, H, M, D]`, when the op was made with a content term.
    pub content: Option<(&'a Tensor, &'a Tensor)>,
}

impl FusedSetAttention {
    /// The op with content weight `beta` (0: no content term) as `imp` computes it;
    /// `None` for [`OpImpl::Autograd`]. For `Cuda`, the device's kernels are opened (or
    /// reused) here.
    pub fn new(imp: OpImpl, beta: f64) -> Result<Option<FusedSetAttention>, String> {
        let Some(backend) = imp.op_backend()? else {
            return Ok(None);
        };
        let content = beta != 0.0;
        let op = SetAttentionOp {
            beta,
            content,
            backend,
        };
        Ok(Some(FusedSetAttention {
            handle: OpHandle::register(Arc::new(op)),
            content,
        }))
    }

    /// `[B, H, M, D]` set outputs, differentiable in `gamma`, `tau`, `v` and the content
    /// rows.
    pub fn forward(&self, args: &SetAttentionArgs) -> Result<Tensor, String> {
        let mut inputs = vec![args.delta, args.attend, args.gamma, args.tau, args.v];
        match (self.content, args.content) {
            (true, Some((qa, kb))) => inputs.extend([qa, kb]),
            (false, None) => {}
            (true, None) => return Err("the set attention op expects qa and kb".into()),
            (false, Some(_)) => return Err("the set attention op has no content term".into()),
        }
        self.handle.apply_one(&inputs).map_err(|e| e.to_string())
    }
}

struct SetAttentionOp {
    beta: f64,
    content: bool,
    backend: Backend,
}

/// `[1, H, 1, 1]` view of a per-head constant.
fn per_head(t: &Tensor) -> Tensor {
    t.view([1, -1, 1, 1])
}

/// The manual forward in `v`'s kind: `(out, p, s, k)` with `P` zero outside `attend`.
fn manual_forward(inputs: &[Tensor], beta: f64) -> (Tensor, Tensor, Tensor, Tensor) {
    let (delta, attend, gamma, tau, v) =
        (&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4]);
    let kind = v.kind();
    let k = (delta.to_kind(kind).unsqueeze(1) * -per_head(&gamma.to_kind(kind))).exp();
    let x = match inputs.get(5..7) {
        Some([qa, kb]) => &k + qa.matmul(&kb.transpose(-1, -2)) * beta,
        _ => k.shallow_clone(),
    };
    let s = x / per_head(&tau.to_kind(kind));
    let hidden = attend.expand_as(&s).logical_not();
    let lse = s
        .masked_fill(&hidden, f64::NEG_INFINITY)
        .logsumexp([-1i64].as_slice(), true);
    // A row with no attendable set has lse = -inf: its s - lse is +inf, masked to 0.
    let p = (&s - lse).exp().masked_fill(&hidden, 0.0);
    (p.matmul(v), p, s, k)
}

/// The manual backward: the gradients of `(gamma, tau, v, qa, kb)`.
fn manual_backward(
    saved: &[Tensor],
    dout: &Tensor,
    beta: f64,
) -> (Tensor, Tensor, Tensor, Option<(Tensor, Tensor)>) {
    let (delta, gamma, tau, v, out, p, s, k) = (
        &saved[0], &saved[1], &saved[2], &saved[3], &saved[4], &saved[5], &saved[6], &saved[7],
    );
    let kind = v.kind();
    let tau_h = per_head(&tau.to_kind(kind));
    let dp = dout.matmul(&v.transpose(-1, -2));
    let d = (dout * out).sum_dim_intlist([-1i64].as_slice(), true, kind);
    let ds = p * (dp - d);
    let dv = p.transpose(-1, -2).matmul(dout);
    let heads = [0i64, 2, 3];
    let dgamma = (&ds * (delta.to_kind(kind).unsqueeze(1) * k).neg() / &tau_h)
        .sum_dim_intlist(heads.as_slice(), false, kind)
        .to_kind(gamma.kind());
    let dtau = (&ds * s.neg() / &tau_h)
        .sum_dim_intlist(heads.as_slice(), false, kind)
        .to_kind(tau.kind());
    let content = match saved.get(8..10) {
        Some([qa, kb]) => {
            let scale = &tau_h.reciprocal() * beta;
            Some((
                ds.matmul(kb) * &scale,
                ds.transpose(-1, -2).matmul(qa) * &scale,
            ))
        }
        _ => None,
    };
    (dgamma, dtau, dv, content)
}

impl CustomOp for SetAttentionOp {
    fn name(&self) -> &str {
        match self.backend {
            Backend::Manual => "set attention (manual backward)",
            Backend::Cuda(_) => "set attention (CUDA)",
        }
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Forward, String> {
        let expected = if self.content { 7 } else { 5 };
        if inputs.len() != expected {
            return Err(format!(
                "expected delta, attend, gamma, tau, v{}; got {} tensors",
                if self.content { ", qa, kb" } else { "" },
                inputs.len()
            ));
        }
        let rows = &inputs[4..];
        match &self.backend {
            Backend::Manual => {
                let (out, p, s, k) = manual_forward(inputs, self.beta);
                let mut saved = vec![
                    inputs[0].shallow_clone(),
                    inputs[2].shallow_clone(),
                    inputs[3].shallow_clone(),
                    inputs[4].shallow_clone(),
                    out.shallow_clone(),
                    p,
                    s,
                    k,
                ];
                saved.extend(rows[1..].iter().map(Tensor::shallow_clone));
                Ok(Forward {
                    outputs: vec![out],
                    saved,
                })
            }
            Backend::Cuda(kernels) => {
                let kind = inputs[4].kind();
                let f32s: Vec<Tensor> = inputs
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        if i == 1 {
                            t.shallow_clone()
                        } else {
                            t.to_kind(Kind::Float)
                        }
                    })
                    .collect();
                let (out, lse) = kernels
                    .set_attention_forward(&cuda_inputs(&f32s, self.beta))
                    .map_err(|e| e.to_string())?;
                let output = out.to_kind(kind);
                let mut saved = f32s;
                saved.extend([out, lse]);
                Ok(Forward {
                    outputs: vec![output],
                    saved,
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
        let (dgamma, dtau, dv, content) = match &self.backend {
            Backend::Manual => {
                let kind = saved[3].kind();
                manual_backward(saved, &dout.to_kind(kind), self.beta)
            }
            Backend::Cuda(kernels) => {
                let n = saved.len();
                let (inputs, out, lse) = (&saved[..n - 2], &saved[n - 2], &saved[n - 1]);
                let grads = kernels
                    .set_attention_backward(
                        &cuda_inputs(inputs, self.beta),
                        out,
                        lse,
                        &dout.to_kind(Kind::Float),
                    )
                    .map_err(|e| e.to_string())?;
                let content = grads.dqa.zip(grads.dkb);
                (grads.dgamma, grads.dtau, grads.dv, content)
            }
        };
        // Gradients in the kind of the output (the inputs' kind); gamma and tau keep
        // their own (fp32 master parameters).
        let kind = dout.kind();
        let mut grads = vec![None, None, Some(dgamma), Some(dtau), Some(dv.to_kind(kind))];
        if let Some((dqa, dkb)) = content {
            grads.extend([Some(dqa.to_kind(kind)), Some(dkb.to_kind(kind))]);
        }
        Ok(grads)
    }
}

/// The kernels' view of fp32 inputs `[delta, attend, gamma, tau, v, (qa, kb)]`.
fn cuda_inputs(t: &[Tensor], beta: f64) -> SetAttentionInputs<'_> {
    SetAttentionInputs {
        delta: &t[0],
        attend: &t[1],
        gamma: &t[2],
        tau: &t[3],
        v: &t[4],
        content: match t.get(5..7) {
            Some([qa, kb]) => Some((qa, kb, beta)),
            _ => None,
        },
    }
}
