//! The only unsafe code of the trainer: whole-split tensors over the artifact memory
//! maps, without a copy (`Tensor::from_blob`).
//!
//! Invariant: every tensor made here borrows memory owned by a `Maps` value, so
//! - the tensors live in `SplitData`'s `arrays`, declared before its `Maps` field (Rust
//!   drops fields in declaration order: the tensors go first), and never leave it: a
//!   batch is built with `index_select`, which copies, and `to_device` copies too;
//! - the maps are read-only (`PROT_READ`) and nothing writes through these tensors (no
//!   in-place op is ever applied to them);
//! - the pointers are aligned for their kinds: every Arrow buffer of an artifact starts
//!   on a 64-byte boundary (validated when the file was opened).
#![allow(unsafe_code)]

use ausa_artifacts::{BanksFile, SignaturesFile, TokenIds, TokensFile};
use tch::{Device, Kind, Tensor};

use super::Arrays;

/// The open files whose mappings the tensors borrow.
#[derive(Debug)]
pub(crate) struct Maps {
    pub(crate) sequences: TokensFile,
    pub(crate) banks: BanksFile,
    pub(crate) signatures: SignaturesFile,
}

/// A tensor of shape `dims` over `data` (`kind` must match `T`'s width).
fn view<T>(data: &[T], dims: &[i64], kind: Kind) -> Tensor {
    assert_eq!(
        dims.iter().product::<i64>() as usize,
        data.len(),
        "tensor shape does not cover the mapped array"
    );
    assert_eq!(kind.elt_size_in_bytes(), std::mem::size_of::<T>());
    let mut strides = vec![1i64; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * dims[i + 1];
    }
    // SAFETY: `data` lies in a map owned by `Maps`, which outlives the tensor (module
    // invariant); shape and strides cover exactly `data.len()` elements of `kind`'s width
    // (checked above); the tensor is only read.
    unsafe { Tensor::from_blob(data.as_ptr().cast(), dims, &strides, kind, Device::Cpu) }
}

fn ids(data: TokenIds<'_>, dims: &[i64]) -> Tensor {
    match data {
        TokenIds::U16(s) => view(s, dims, Kind::Int16),
        TokenIds::U32(s) => view(s, dims, Kind::Int),
    }
}

impl Maps {
    /// The split's arrays as tensors over the maps (`route` left empty for the caller).
    pub(crate) fn arrays(&self, nseq: i64, seq_len: i64, k: i64) -> Arrays {
        let nsets = self.banks.num_sets() as i64;
        Arrays {
            tokens: ids(self.sequences.ids(), &[nseq, seq_len]),
            signatures: view(self.signatures.signatures(), &[nsets, k], Kind::Int),
            sizes: view(self.signatures.sizes(), &[nsets], Kind::Int),
            spans: view(self.banks.spans(), &[nsets, 2], Kind::Int),
            values: ids(self.banks.values(), &[self.banks.values().len() as i64]),
            set_offsets: view(self.banks.set_offsets(), &[nsets + 1], Kind::Int64),
            route: Tensor::new(),
        }
    }
}
