//! The projections' affine map `y = x W^T + b` with the weights cast to `x`'s kind (fp32
//! master weights, bf16 compute): [`linear_kind`], the one every layer of the trainer and
//! of [`crate::SetAttention`] goes through.
//!
//! On CUDA it runs as an op with its own backward ([`LinearOp`]) for one reason: the bias
//! gradient. libtorch's linear backward sums the output gradient over its rows with a
//! column reduction that reaches a third of the bandwidth a matrix-vector product
//! `dY^T 1` gets from cuBLAS (H200, bf16, CUDA-graph timed: 27.2 against 9.0 us for
//! `[16384, 1024]`, 41.0 against 27.3 us for `[16384, 3072]`; docs/benchmarks.md). The
//! other two gradients are the same GEMMs libtorch's backward runs. Every sum accumulates
//! in fp32 and rounds once to `x`'s kind, as libtorch's does; none uses atomics, so
//! the gradients repeat bit for bit.

use std::sync::{Arc, OnceLock};

use tch::nn;
use tch::Tensor;

use crate::shim::autograd::{CustomOp, Forward, OpHandle};

/// `x W^T + b` with `linear`'s weights cast to `x`'s kind.
pub fn linear_kind(linear: &nn::Linear, x: &Tensor) -> Tensor {
    let kind = x.kind();
    let bias = linear.bs.as_ref().map(|b| b.to_kind(kind));
    affine(x, &linear.ws.to_kind(kind), bias.as_ref())
}

/// `x W^T + b` for weights already of `x`'s kind: [`LinearOp`] on CUDA when there is a
/// bias, libtorch's linear otherwise.
pub fn affine(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    match bias {
        Some(bias) if x.device().is_cuda() => linear_with_bias(x, weight, bias),
        bias => x.linear(weight, bias),
    }
}

/// `x W^T + b` through [`LinearOp`] (any device; [`linear_kind`] uses it on CUDA). `x` is
/// `[..., in]`, `weight` `[out, in]`, `bias` `[out]`, all of one kind.
pub fn linear_with_bias(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Tensor {
    static OP: OnceLock<OpHandle> = OnceLock::new();
    let op = OP.get_or_init(|| OpHandle::register(Arc::new(LinearOp)));
    op.apply_one(&[x, weight, bias])
        .unwrap_or_else(|e| panic!("linear: {e}"))
}

/// The affine map with the bias gradient as a matrix-vector product (module docs).
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
        let y = x
            .f_linear(weight, Some(bias))
            .map_err(|e| format!("linear: {e}"))?;
        Ok(Forward {
            outputs: vec![y],
            saved: vec![x.shallow_clone(), weight.shallow_clone()],
        })
    }

    fn backward(
        &self,
        saved: &[Tensor],
        grad_outputs: &[Tensor],
    ) -> Result<Vec<Option<Tensor>>, String> {
        let ([x, weight], [dy]) = (saved, grad_outputs) else {
            return Err("linear: expected x, weight and one output gradient".to_string());
        };
        let (n_in, n_out) = (x.size().last().copied(), dy.size().last().copied());
        let (Some(n_in), Some(n_out)) = (n_in, n_out) else {
            return Err("linear: x and its output gradient need a feature dimension".to_string());
        };
        let dy = dy.to_kind(x.kind());
        let rows = dy.reshape([-1, n_out]);
        let dx = dy.matmul(weight);
        let dw = rows.tr().matmul(&x.reshape([-1, n_in]));
        let ones = Tensor::ones([rows.size()[0]], (x.kind(), x.device()));
        let db = rows.tr().mv(&ones);
        Ok(vec![Some(dx), Some(dw), Some(db)])
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
