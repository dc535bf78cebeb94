//! Batches for training: [`SetArtifacts`] opens one split's bank, signature and
//! routing files together and [`SetArtifacts::gather`] copies the rows of a batch of
//! sequences into one flat CSR ([`SetBatch`]) ready to become tensors.
//!
//! Opening checks that the three files agree (same sequences, same sets). Gathering
//! checks what opening skips to stay O(metadata + offsets): every gathered atom id
//! is below the vocabulary size and every candidate index names a set of its
//! sequence. Any batch size works, the last short batch included.

use std::path::Path;

use crate::banks::invalid;
use crate::{ArtifactError, BanksFile, RoutingFile, SignaturesFile};

/// One split's banks, signatures and routing, opened and cross-checked.
#[derive(Debug, Clone)]
pub struct SetArtifacts {
    banks: BanksFile,
    signatures: SignaturesFile,
    routing: RoutingFile,
}

/// One batch of sequences as flat arrays; set and token indices are batch-local.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetBatch {
    /// Atom ids of every set, concatenated.
    pub values: Vec<u32>,
    /// `Nsets + 1` offsets into `values`, rebased to start at 0.
    pub set_offsets: Vec<u64>,
    /// `Nseq + 1` pointers into the sets: sequence `i` has sets `seq_sets[i]..seq_sets[i+1]`.
    pub seq_sets: Vec<u64>,
    /// `k` signature values per set, row-major.
    pub signatures: Vec<u32>,
    /// Exact size of every set.
    pub sizes: Vec<u32>,
    /// `start, end` per set.
    pub spans: Vec<u32>,
    /// `Nseq + 1` pointers into the tokens.
    pub seq_tokens: Vec<u64>,
    /// `Ntokens + 1` offsets into `candidates`.
    pub token_offsets: Vec<u64>,
    /// Candidate sets per token, as indices local to the token's sequence.
    pub candidates: Vec<u32>,
}

impl SetArtifacts {
    /// Opens the three files of one split and checks that they describe the same sets.
    pub fn open(
        banks: &Path,
        signatures: &Path,
        routing: &Path,
    ) -> Result<SetArtifacts, ArtifactError> {
        let artifacts = SetArtifacts {
            banks: BanksFile::open(banks)?,
            signatures: SignaturesFile::open(signatures)?,
            routing: RoutingFile::open(routing)?,
        };
        if artifacts.signatures.num_sets() != artifacts.banks.num_sets() {
            let detail = format!(
                "it has {} sets but `{}` has {}",
                artifacts.signatures.num_sets(),
                banks.display(),
                artifacts.banks.num_sets()
            );
            return Err(invalid(signatures, "minhash/1", "minhash", detail));
        }
        if artifacts.routing.num_sequences() != artifacts.banks.num_sequences() {
            let detail = format!("its sequences differ from those of `{}`", banks.display());
            return Err(invalid(routing, "routing/1", "routing", detail));
        }
        Ok(artifacts)
    }

    /// Number of sequences.
    pub fn num_sequences(&self) -> usize {
        self.banks.num_sequences()
    }

    /// The batch of sequences `seq_ids` (any order, any count).
    pub fn gather(&self, seq_ids: &[usize]) -> Result<SetBatch, ArtifactError> {
        let mut batch = SetBatch {
            set_offsets: vec![0],
            seq_sets: vec![0],
            seq_tokens: vec![0],
            token_offsets: vec![0],
            ..SetBatch::default()
        };
        for &seq in seq_ids {
            self.push_sets(seq, &mut batch)?;
            self.push_routing(seq, &mut batch)?;
        }
        Ok(batch)
    }

    fn push_sets(&self, seq: usize, batch: &mut SetBatch) -> Result<(), ArtifactError> {
        let banks = &self.banks;
        let sets = banks
            .sets_of(seq)
            .ok_or_else(|| self.bad_bank(format!("no sequence {seq}")))?;
        let k = self.signatures.k() as usize;
        let vocab = banks.shape().vocab_size;
        for set in sets.clone() {
            let atoms = banks
                .set(set)
                .ok_or_else(|| self.bad_bank(format!("no set {set}")))?;
            if let Some(bad) = atoms.iter().find(|&a| a >= vocab) {
                return Err(self.bad_bank(format!("set {set} has atom id {bad} >= {vocab}")));
            }
            batch.values.extend(atoms.iter());
            batch.set_offsets.push(batch.values.len() as u64);
            batch
                .signatures
                .extend_from_slice(&self.signatures.signatures()[set * k..(set + 1) * k]);
            batch.sizes.push(self.signatures.sizes()[set]);
            batch
                .spans
                .extend_from_slice(&banks.spans()[2 * set..2 * set + 2]);
        }
        batch.seq_sets.push(batch.sizes.len() as u64);
        Ok(())
    }

    fn push_routing(&self, seq: usize, batch: &mut SetBatch) -> Result<(), ArtifactError> {
        let routing = &self.routing;
        let local_sets = self.banks.sets_of(seq).map_or(0, |r| r.len()) as u32;
        let (offsets, sets) = (routing.token_offsets(), routing.sets());
        let tokens = routing.seq_offsets()[seq] as usize..routing.seq_offsets()[seq + 1] as usize;
        for t in tokens {
            let candidates = &sets[offsets[t] as usize..offsets[t + 1] as usize];
            if let Some(bad) = candidates.iter().find(|&&j| j >= local_sets) {
                let detail = format!("sequence {seq} routes to set {bad} of {local_sets}");
                return Err(invalid(routing.path(), "routing/1", "routing", detail));
            }
            batch.candidates.extend_from_slice(candidates);
            batch.token_offsets.push(batch.candidates.len() as u64);
        }
        batch.seq_tokens.push(batch.token_offsets.len() as u64 - 1);
        Ok(())
    }

    fn bad_bank(&self, detail: String) -> ArtifactError {
        invalid(self.banks.path(), "banks/1", "banks", detail)
    }
}
