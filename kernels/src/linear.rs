//! The projections' affine map `y = x W^T + b` with the weights cast to `x`'s kind (fp32
//! master weights, bf16 compute): [`linear_kind`], the one every layer of the trainer and
//! of [`crate::SetAttention`] goes through.
//!
//! On CUDA it runs as an op with its own backward (`LinearOp`), which takes the master
//! weights themselves, for two reasons:
//! - the bias gradient: libtorch's linear backward sums the output gradient over its rows
//!   with a column reduction that reaches a third of the bandwidth a matrix-vector product
//!   `1^T dY` gets from cuBLAS (H200, bf16, CUDA-graph timed: 27.2 against 9.4 us for
//!   `[16384, 1024]`, 41.0 against 27.2 us for `[16384, 3072]`; tests/bench/projection_grads.py);
//! - the cast back: under libtorch's autograd a bf16 weight gradient is rounded to bf16
//!   and then cast to the fp32 master's kind (one more kernel per weight and per bias);
//!   here the weight-gradient GEMM and the bias product write fp32 directly from their fp32
//!   accumulators (cuBLAS with a bf16 input and an fp32 output), so the gradient is also
//!   one bf16 rounding more accurate.
//!
//! The input gradient is the GEMM libtorch's backward runs. No sum uses atomics, so the
//! gradients repeat bit for bit.

use std::sync::{Arc, OnceLock};

use tch::nn;
use tch::{Kind, Tensor};

use crate::shim::autograd::{CustomOp, Forward, OpHandle};

/// `x W^T + b` with `linear`'s weights cast to `x`'s kind.
pub fn linear_kind(linear: &nn::Linear, x: &Tensor) -> Tensor {
    affine(x, &linear.ws, linear.bs.as_ref())
}

/// `x W^T + b` for master weights of any kind, computed in `x`'s kind: `LinearOp` on
/// CUDA when there is a bias, libtorch's linear on the cast weights otherwise.
pub fn affine(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    match bias {
        Some(bias) if x.device().is_cuda() => linear_with_bias(x, weight, bias),
        bias => {
            let kind = x.kind();
            let bias = bias.map(|b| b.to_kind(kind));
            x.linear(&weight.to_kind(kind), bias.as_ref())
        }
    }
}

/// `x W^T + b` through `LinearOp` (any device; [`affine`] uses it on CUDA). `x` is
/// `[..., in]`, `weight` `[out, in]` and `bias` `[out]` of the master kind (the gradients
/// come back in it).
pub fn linear_with_bias(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Tensor {
    static OP: OnceLock<OpHandle> = OnceLock::new();
    let op = OP.get_or_init(|| OpHandle::register(Arc::new(LinearOp)));
    op.apply_one(&[x, weight, bias])
        .unwrap_or_else(|e| panic!("linear: {e}"))
}

/// The affine map with gradients written in the master kind (module docs).
struct LinearOp;

impl CustomOp for LinearOp {
    fn name(&self) -> &str {
        "linear"
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Forward, String> {
        let [x, weight, bias] = inputs else {
            return Err(format!(
                "expected x, weight, bias; got {} tensors",
                inputs.len()
            ));
        };
        let kind = x.kind();
        let compute_weight = weight.to_kind(kind);
        let y = x
            .f_linear(&compute_weight, Some(&bias.to_kind(kind)))
            .map_err(|e| format!("linear: {e}"))?;
        Ok(Forward {
            outputs: vec![y],
            // The master weight only for its kind (a handle, no copy).
            saved: vec![x.shallow_clone(), compute_weight, weight.shallow_clone()],
        })
    }

    fn backward(
        &self,
        saved: &[Tensor],
        grad_outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>, String> {
        let ([x, weight, master], [dy]) = (saved, grad_outputs) else {
            return Err("linear: expected x, weights and one output gradient".to_string());
        };
        let (n_in, n_out) = (x.size().last().copied(), dy.size().last().copied());
        let (Some(n_in), Some(n_out)) = (n_in, n_out) else {
            return Err("linear: x and its output gradient need a feature dimension".to_string());
        };
        let (kind, master_kind) = (x.kind(), master.kind());
        let dy = dy.to_kind(kind);
        let rows = dy.reshape([-1, n_out]);
        let dx = dy.matmul(weight);
        let x_rows = x.reshape([-1, n_in]);
        let ones = Tensor::ones([1, rows.size()[0]], (kind, x.device()));
        // Half-precision inputs, fp32 master: fp32 results straight from cuBLAS.
        let widen = matches!(kind, Kind::BFloat16 | Kind::Half) && master_kind == Kind::Float;
        let (dw, db) = if widen {
            (
                rows.tr()
                    .f_mm_dtype(&x_rows, master_kind)
                    .map_err(|e| format!("linear: {e}"))?,
                ones.f_mm_dtype(&rows, master_kind)
                    .map_err(|e| format!("linear: {e}"))?,
            )
        } else {
            (
                rows.tr().mm(&x_rows).to_kind(master_kind),
                ones.mm(&rows).to_kind(master_kind),
            )
        };
        Ok(vec![Some(dx), Some(dw), Some(db.view([n_out]))])
    }
}

/// `n` rounded up to a multiple of 8: a GEMM whose inner dimension is a multiple of 8
/// bf16 values (16 bytes) runs on cuBLAS's tensor-core kernels; an odd one (the value
/// map's `d + 1` inputs) falls back to a kernel 4-5x slower (docs/benchmarks.md).
pub(crate) fn aligned_width(n: i64) -> i64 {
    (n + 7) / 8 * 8
}

/// `x` `[..., n]` with zero columns appended up to `width` (an exact no-op for a product).
pub(crate) fn pad_columns(x: &Tensor, width: i64) -> Tensor {
    let n = x.size().last().copied().unwrap_or(0);
    if width == n {
        x.shallow_clone()
    } else {
        x.constant_pad_nd([0, width - n])
    }
}
