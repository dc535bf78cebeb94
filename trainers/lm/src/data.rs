//! The data path: one split's set artifacts (`--cache-mode full`) as whole-split tensors
//! over the artifact memory maps, gathered per batch with tensor ops.
//!
//! [`SplitData::open`] opens the four files of a split (`ausa_artifacts::SetPaths`), lets
//! `SetArtifacts::open` cross-check them, checks what the tensor path relies on (every
//! sequence has the same length and the same set layout, one routing table, ids below
//! the vocabulary), and wraps the mapped arrays as tensors **without copying**
//! ([`zero_copy`]). On CUDA the whole-split tensors move to the device once
//! ([`SplitData::to_device`]), so each batch is gathered on the GPU. A batch
//! ([`SplitData::batch`]) is `index_select`s over those tensors: no per-set or per-token
//! loop in Rust.

use std::path::Path;

use ausa_artifacts::histogram::{self, Buckets};
use ausa_artifacts::{
    ArtifactError, BanksFile, RoutingFile, SetArtifacts, SetPaths, SignaturesFile, TokensFile,
};
use ausa_kernels::SetInputs;
use tch::{Device, Kind, Tensor};

use crate::Error;

pub mod zero_copy;

/// The whole split's arrays; on the CPU they point into the memory maps.
#[derive(Debug)]
pub(crate) struct Arrays {
    /// `[Nseq, L]` token ids (`Int16` for 16-bit ids, `Int32` for 32-bit).
    pub(crate) tokens: Tensor,
    /// `[Nsets, k]` `Int32` MinHash values (bit-reinterpreted `u32`; only equality matters).
    pub(crate) signatures: Tensor,
    /// `[Nsets]` `Int32` set sizes.
    pub(crate) sizes: Tensor,
    /// `[Nsets, 2]` `Int32` spans.
    pub(crate) spans: Tensor,
    /// `[Nvalues]` atom ids (`Int16` or `Int32`, like `tokens`).
    pub(crate) values: Tensor,
    /// `[Nsets + 1]` `Int64` offsets into `values`.
    pub(crate) set_offsets: Tensor,
    /// `[L, M]` bool: token `t` routes to local set `m` (the routing table).
    pub(crate) route: Tensor,
}

/// Most buckets of a bank histogram in the run metadata (integer buckets below that).
pub const MAX_HISTOGRAM_BINS: u64 = 64;

/// One bank histogram: `(le, count)` buckets of width `width` (bucket `le` counts the
/// values in `(le - width, le]`), as `ausa_artifacts::histogram` makes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankHistogram {
    /// Bucket width (1: one bucket per integer).
    pub width: u64,
    /// `(le, count)`, smallest first, empty buckets left out.
    pub bins: Vec<(u64, u64)>,
}

impl BankHistogram {
    /// The lengths of the ranges `offsets` delimit, in at most [`MAX_HISTOGRAM_BINS`]
    /// integer buckets.
    fn of_offsets(offsets: &[u64]) -> BankHistogram {
        let max = histogram::lengths(offsets).max().unwrap_or(0);
        let buckets = Buckets::bounded(max, MAX_HISTOGRAM_BINS);
        BankHistogram {
            width: buckets.width().unwrap_or(1),
            bins: histogram::histogram(histogram::lengths(offsets), buckets),
        }
    }

    /// Total count (the number of values).
    pub fn total(&self) -> u64 {
        self.bins.iter().map(|b| b.1).sum()
    }
}

/// A split's bank statistics: sets per sequence and atoms (distinct ids) per set, one
/// pass over the bank's offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankHistograms {
    /// Sets per sequence (over sequences).
    pub sets_per_seq: BankHistogram,
    /// Atoms per set, the set sizes (over sets).
    pub atoms_per_set: BankHistogram,
}

/// One split, ready to be batched.
#[derive(Debug)]
pub struct SplitData {
    // Field order matters: `arrays` (views of the maps) is dropped before `_maps`.
    arrays: Arrays,
    _maps: zero_copy::Maps,
    num_sequences: i64,
    seq_len: i64,
    sets_per_seq: i64,
    vocab: u32,
    k: u32,
    window: u32,
    stride: u32,
    router_topk: u32,
    /// Leading partial windows per sequence (the banks' early-positions remedy).
    leading_sets: i64,
    /// Positions of a sequence that route to no set.
    blind_positions: i64,
    /// The most sets one position routes to (the routing table's candidates).
    route_sets: i64,
    /// Whether `arrays` are views of the maps (false after [`SplitData::to_device`]).
    zero_copy: bool,
    /// Sets per sequence and atoms per set.
    histograms: BankHistograms,
}

/// One batch as tensors on the data's device.
#[derive(Debug)]
pub struct Batch {
    /// `[B, L]` `Int64` token ids.
    pub tokens: Tensor,
    /// The batch's set structure (for SKA blocks).
    pub sets: SetInputs,
}

fn artifact(e: ArtifactError) -> Error {
    Error::Artifact(e.to_string())
}

fn bad(path: &Path, what: String) -> Error {
    Error::Artifact(format!("{}: {what}", path.display()))
}

impl SplitData {
    /// Opens one split's set artifacts (validated once) as zero-copy CPU tensors.
    pub fn open(paths: &SetPaths) -> Result<SplitData, Error> {
        // Cross-checks the four files (same sequences, sets, vocabulary).
        SetArtifacts::open(paths).map_err(artifact)?;
        // Full validation of the token file (every id below the vocabulary).
        let sequences = TokensFile::open(&paths.sequences).map_err(artifact)?;
        let banks = BanksFile::open(&paths.banks).map_err(artifact)?;
        let signatures = SignaturesFile::open(&paths.signatures).map_err(artifact)?;
        let routing = RoutingFile::open(&paths.routing).map_err(artifact)?;

        let nseq = sequences.num_documents();
        let offsets = sequences.doc_offsets();
        let seq_len = if nseq == 0 {
            0
        } else {
            offsets[1] - offsets[0]
        };
        if nseq == 0 || seq_len < 2 {
            let what = format!("{nseq} sequences of {seq_len} tokens: nothing to train on");
            return Err(bad(&paths.sequences, what));
        }
        if let Some(i) = offsets.windows(2).position(|w| w[1] - w[0] != seq_len) {
            let what = format!("sequence {i} has {} tokens, the first has {seq_len}: the trainer needs fixed-length sequences (the `sequences` stage makes them)", offsets[i + 1] - offsets[i]);
            return Err(bad(&paths.sequences, what));
        }
        let seq_offsets = banks.seq_offsets();
        let per_seq = seq_offsets[1] - seq_offsets[0];
        if let Some(i) = seq_offsets.windows(2).position(|w| w[1] - w[0] != per_seq) {
            let what = format!("sequence {i} has {} sets, sequence 0 has {per_seq}: the trainer needs one set layout per split", seq_offsets[i + 1] - seq_offsets[i]);
            return Err(bad(&paths.banks, what));
        }
        let spans = banks.spans();
        let per = 2 * per_seq as usize;
        if let Some(i) = spans.chunks(per.max(1)).position(|c| c != &spans[..per]) {
            let what = format!("sequence {i} has other set spans than sequence 0: one layout per split is required");
            return Err(bad(&paths.banks, what));
        }
        let ends: Vec<u32> = spans[..per].chunks(2).map(|s| s[1]).collect();
        let table = routing
            .layout_of(&ends)
            .filter(|t| t.num_tokens() == seq_len as usize)
            .ok_or_else(|| {
                bad(routing.path(), format!("no routing table for set ends {ends:?} over {seq_len} tokens: the file comes from a different bank"))
            })?;
        let m = per_seq as usize;
        let mut route = vec![false; seq_len as usize * m];
        let mut blind_positions = 0;
        let mut route_sets = 0;
        for t in 0..seq_len as usize {
            let candidates = table.candidates(t);
            blind_positions += i64::from(candidates.is_empty());
            route_sets = route_sets.max(candidates.len() as i64);
            for &j in candidates {
                route[t * m + j as usize] = true;
            }
        }
        // Full windows start every `stride > 0` tokens, so exactly one starts at 0; every
        // other set starting at 0 is a leading partial window.
        let at_zero = spans[..per].chunks(2).filter(|s| s[0] == 0).count() as i64;
        let leading_sets = (at_zero - 1).max(0);
        let histograms = BankHistograms {
            sets_per_seq: BankHistogram::of_offsets(seq_offsets),
            atoms_per_set: BankHistogram::of_offsets(banks.set_offsets()),
        };
        let shape = banks.shape();
        let vocab = shape.vocab_size;
        let k = signatures.k();
        let maps = zero_copy::Maps {
            sequences,
            banks,
            signatures,
        };
        let arrays = maps.arrays(nseq as i64, seq_len as i64, k as i64);
        let route = Tensor::from_slice(&route).view([seq_len as i64, per_seq as i64]);
        let arrays = Arrays { route, ..arrays };
        // Atom ids are not range-checked when the bank is opened (gather does it per batch).
        if arrays.values.numel() > 0 {
            let max = widen(&arrays.values).max().int64_value(&[]);
            if max >= i64::from(vocab) {
                let what = format!("atom id {max} is not below the vocabulary size {vocab}");
                return Err(bad(&paths.banks, what));
            }
        }
        Ok(SplitData {
            arrays,
            _maps: maps,
            num_sequences: nseq as i64,
            seq_len: seq_len as i64,
            sets_per_seq: per_seq as i64,
            vocab,
            k,
            window: shape.window,
            stride: shape.stride,
            router_topk: routing.topk(),
            leading_sets,
            blind_positions,
            route_sets,
            zero_copy: true,
            histograms,
        })
    }

    /// Moves the whole split to `device` once (a copy; the maps are no longer read).
    pub fn to_device(mut self, device: Device) -> SplitData {
        if device == Device::Cpu {
            return self;
        }
        let a = &self.arrays;
        self.arrays = Arrays {
            tokens: a.tokens.to_device(device),
            signatures: a.signatures.to_device(device),
            sizes: a.sizes.to_device(device),
            spans: a.spans.to_device(device),
            values: a.values.to_device(device),
            set_offsets: a.set_offsets.to_device(device),
            route: a.route.to_device(device),
        };
        self.zero_copy = false;
        self
    }

    /// Number of sequences.
    pub fn num_sequences(&self) -> i64 {
        self.num_sequences
    }

    /// Tokens per sequence.
    pub fn seq_len(&self) -> i64 {
        self.seq_len
    }

    /// Sets per sequence.
    pub fn sets_per_seq(&self) -> i64 {
        self.sets_per_seq
    }

    /// Vocabulary size of the ids.
    pub fn vocab(&self) -> u32 {
        self.vocab
    }

    /// MinHash values per set.
    pub fn minhash_k(&self) -> u32 {
        self.k
    }

    /// Bank window and stride.
    pub fn window_stride(&self) -> (u32, u32) {
        (self.window, self.stride)
    }

    /// Mean atoms per set over the split.
    pub fn avg_atoms_per_set(&self) -> f64 {
        let sets = self.arrays.sizes.numel().max(1);
        self.arrays.values.numel() as f64 / sets as f64
    }

    /// Histograms of sets per sequence and atoms per set (from the bank's offsets).
    pub fn histograms(&self) -> &BankHistograms {
        &self.histograms
    }

    /// The routing table's recency top-k (0 = all visible sets).
    pub fn router_topk(&self) -> u32 {
        self.router_topk
    }

    /// Leading partial windows per sequence (`banks.leading`, the early-positions
    /// remedy); 0 without them.
    pub fn leading_sets(&self) -> i64 {
        self.leading_sets
    }

    /// Positions of every sequence that may use no set (the routing table's empty
    /// rows): `window - 1` with full windows only, `stride - 1` with leading ones.
    pub fn blind_positions(&self) -> i64 {
        self.blind_positions
    }

    /// The most sets one position routes to (the routing table's longest candidate
    /// list): every batch's `SetInputs::max_route_sets`.
    pub fn route_sets(&self) -> i64 {
        self.route_sets
    }

    /// The memory range of the mapped token ids, and the data pointer of the token tensor
    /// (for the zero-copy test); `None` after [`SplitData::to_device`].
    pub fn token_pointers(&self) -> Option<(std::ops::Range<*const u8>, *const u8)> {
        if !self.zero_copy {
            return None;
        }
        let range = self._maps.sequences.ids().as_ptr_range();
        Some((range, self.arrays.tokens.data_ptr() as *const u8))
    }

    /// `ids` as an `Int64` tensor on the data's device. On CUDA the copy goes through
    /// pinned memory and does not block: a copy from pageable memory makes libtorch wait
    /// for the GPU to finish all queued work first (a host synchronization per batch).
    fn upload(&self, ids: &[i64]) -> Tensor {
        let ids = Tensor::from_slice(ids);
        match self.arrays.tokens.device() {
            Device::Cpu => ids,
            // Pinning only fails without CUDA, where there is no device copy either; the
            // plain copy is then the right fallback.
            device => ausa_kernels::shim::pin_memory(&ids)
                .unwrap_or(ids)
                .to_device_(device, Kind::Int64, true, false),
        }
    }

    /// The `[B, L]` `Int64` token ids of sequences `ids` (the tokens of
    /// [`SplitData::batch`] without gathering the sets: all a model without SKA blocks
    /// reads).
    pub fn tokens(&self, ids: &[i64]) -> Tensor {
        widen(&self.arrays.tokens.index_select(0, &self.upload(ids)))
    }

    /// The batch of sequences `ids` (any order, repeats allowed; each below
    /// [`SplitData::num_sequences`]).
    ///
    /// Every index the gathers need (the batch's sets, their batch-local offsets, the
    /// positions of their atoms in the split's values) is computed on the host from the
    /// mapped offsets, which stay open after [`SplitData::to_device`], and goes up in one
    /// pinned copy; the device then only gathers. Computing the indices there instead
    /// takes some twenty small kernels, and sizing the atom gather would wait for the GPU.
    pub fn batch(&self, ids: &[i64]) -> Batch {
        let a = &self.arrays;
        let bsz = ids.len() as i64;
        let m = self.sets_per_seq;
        let per_seq = m as usize;
        let offsets = self._maps.banks.set_offsets();
        // The sets of sequence i are i*m .. (i+1)*m, and their atoms one contiguous range.
        let atoms = |i: i64| {
            let first = i as usize * per_seq;
            offsets[first] as i64..offsets[first + per_seq] as i64
        };
        let total: i64 = ids.iter().map(|&i| atoms(i).end - atoms(i).start).sum();
        let nsets = bsz * m;
        let mut host = Vec::with_capacity((bsz + 2 * nsets + 1 + total) as usize);
        host.extend_from_slice(ids);
        host.extend(ids.iter().flat_map(|&i| (i * m)..((i + 1) * m)));
        host.push(0);
        let mut end = 0i64;
        for &i in ids {
            let first = i as usize * per_seq;
            for g in first..first + per_seq {
                end += (offsets[g + 1] - offsets[g]) as i64;
                host.push(end);
            }
        }
        for &i in ids {
            host.extend(atoms(i));
        }
        let up = self.upload(&host);
        let part = |start: i64, len: i64| up.narrow(0, start, len);
        let seqs = part(0, bsz);
        let sets = part(bsz, nsets);
        let set_offsets = part(bsz + nsets, nsets + 1);
        let value_index = part(bsz + 2 * nsets + 1, total);
        let long = (Kind::Int64, a.tokens.device());
        let spans = a.spans.index_select(0, &sets).to_kind(Kind::Int64);
        let sets_in = SetInputs {
            seq_sets: Tensor::arange(bsz + 1, long) * m,
            max_sets: m,
            max_route_sets: self.route_sets,
            signatures: a.signatures.index_select(0, &sets),
            sizes: a.sizes.index_select(0, &sets).to_kind(Kind::Int64),
            starts: spans.select(1, 0),
            ends: spans.select(1, 1),
            values: widen(&a.values.index_select(0, &value_index)),
            set_offsets,
            route: a.route.unsqueeze(0).expand([bsz, self.seq_len, m], false),
        };
        Batch {
            tokens: widen(&a.tokens.index_select(0, &seqs)),
            sets: sets_in,
        }
    }
}

/// `Int64` copy of stored ids: unsigned ids are wrapped as signed tensors of the same
/// width (tch has no `UInt16`/`UInt32`), so mask them back to their unsigned value.
fn widen(ids: &Tensor) -> Tensor {
    let mask = if ids.kind() == Kind::Int16 {
        0xFFFF
    } else {
        0xFFFF_FFFF
    };
    ids.to_kind(Kind::Int64).bitwise_and(mask)
}
