//! The atom pooling `Phi(S) = sum_{u in S} e(u)` ([`crate::pool_atoms`]) as an op with
//! its own backward, in two implementations behind one [`CustomOp`]:
//!
//! - [`OpImpl::Manual`]: tensor ops on any device (`embedding_bag` forward, `index_add`
//!   backward over the layout's atom order): the plain reference of the kernels;
//! - [`OpImpl::Cuda`]: the kernels of `cuda/pool.cu`, whose backward is one gather pass
//!   over the occurrences in atom order, which the layout sorts once per batch
//!   (`SetLayout::atom_ids`, `SetLayout::atom_slots`). libtorch's `embedding_bag`
//!   backward sorts the ids again on every call.
//!
//! [`OpImpl::Autograd`] needs no op: [`crate::pool_atoms`] is `embedding_bag` under
//! libtorch's autograd.
//!
//! The math: `out[s] = sum_{e in slot s} table[values[e]]`, and for the table's gradient
//! `dtable[u] = sum_{e : values[e] = u} dout[slot(e)]`.

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use crate::shim::autograd::{CustomOp, Forward, OpHandle};
use crate::{OpBackend as Backend, OpImpl, SetLayout};

/// A registered pooling op (cheap to copy).
#[derive(Debug, Clone, Copy)]
pub struct AtomPool {
    handle: OpHandle,
}

impl AtomPool {
    /// The pooling as `imp` computes it; `None` for [`OpImpl::Autograd`], which needs no
    /// op. For `Cuda`, the device's kernels are opened (or reused) here.
    pub fn new(imp: OpImpl) -> Result<Option<AtomPool>, String> {
        let Some(backend) = imp.op_backend()? else {
            return Ok(None);
        };
        Ok(Some(AtomPool {
            handle: OpHandle::register(Arc::new(PoolOp { backend })),
        }))
    }

    /// `[B, M, dim]` pooled rows of `table` (`[V, dim]`) over the layout's sets, in the
    /// table's kind, differentiable in `table`. The CUDA kernels sum in fp32 (another
    /// kind goes through an fp32 copy); the manual op sums in the table's kind.
    pub fn forward(&self, table: &Tensor, layout: &SetLayout) -> Result<Tensor, String> {
        let [_, dim] = table.size()[..] else {
            return Err(format!(
                "the pooled table must be [V, dim], got {:?}",
                table.size()
            ));
        };
        let kind = table.kind();
        let pooled = self
            .handle
            .apply_one(&[
                table,
                &layout.values,
                &layout.slot_offsets,
                &layout.atom_ids,
                &layout.atom_slots,
            ])
            .map_err(|e| e.to_string())?;
        Ok(pooled
            .view([layout.batch, layout.max_sets, dim])
            .to_kind(kind))
    }
}

struct PoolOp {
    backend: Backend,
}

impl CustomOp for PoolOp {
    fn name(&self) -> &str {
        match self.backend {
            Backend::Manual => "atom pooling (manual backward)",
            Backend::Cuda(_) => "atom pooling (CUDA)",
        }
    }

    fn forward(&self, inputs: &[Tensor]) -> Result<Forward, String> {
        let [table, values, offsets, atom_ids, atom_slots] = inputs else {
            return Err(format!(
                "expected table, values, offsets, atom ids, atom slots; got {} tensors",
                inputs.len()
            ));
        };
        let pooled = match &self.backend {
            Backend::Manual => crate::bag_sums(table, values, offsets),
            Backend::Cuda(kernels) => kernels
                .pool_forward(&table.to_kind(Kind::Float), values, offsets)
                .map_err(|e| e.to_string())?,
        };
        // The backward needs the table's row count, kept as the size of an empty tensor
        // (saved tensors are how state reaches it).
        let vocab = Tensor::empty([table.size()[0]], (Kind::Int8, Device::Cpu));
        Ok(Forward {
            outputs: vec![pooled],
            saved: vec![atom_ids.shallow_clone(), atom_slots.shallow_clone(), vocab],
        })
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
        let [atom_ids, atom_slots, vocab] = saved else {
            return Err(format!("expected 3 saved tensors, got {}", saved.len()));
        };
        let vocab = vocab.size()[0];
        // (libtorch casts a gradient to its input's kind.)
        let dtable = match &self.backend {
            Backend::Manual => {
                let dim = dout.size()[1];
                Tensor::zeros([vocab, dim], (dout.kind(), dout.device())).index_add(
                    0,
                    atom_ids,
                    &dout.index_select(0, atom_slots),
                )
            }
            Backend::Cuda(kernels) => kernels
                .pool_backward(&dout.to_kind(Kind::Float), atom_ids, atom_slots, vocab)
                .map_err(|e| e.to_string())?,
        };
        Ok(vec![Some(dtable), None, None, None, None])
    }
}
