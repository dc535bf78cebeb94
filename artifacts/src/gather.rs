//! Batches for training: [`SetArtifacts`] opens one split's sequence, bank,
//! signature and routing files together and [`SetArtifacts::gather`] copies the rows
//! of a batch of sequences into flat arrays ([`SetBatch`]) ready to become tensors.
//!
//! Opening costs the metadata plus Arrow's pass over the list offsets (sequences,
//! sets), never the values, so it stays in milliseconds for any corpus size; it
//! checks that the four files agree (same sequences, same sets, same vocabulary).
//! Gathering checks what opening skips: every gathered token and atom id is below the
//! vocabulary size and each sequence's set layout has a routing table covering its
//! tokens. Any batch size works, the last short batch included.

use std::path::{Path, PathBuf};

use crate::banks::invalid;
use crate::{ArtifactError, BanksFile, RoutingFile, SignaturesFile, Split, TokenIds, TokensFile};

/// The four files of one split, as built by the `sequences`, `banks`, `minhash` and
/// `routing` stages.
#[derive(Debug, Clone)]
pub struct SetPaths {
    /// `sequences-<split>.arrow`.
    pub sequences: PathBuf,
    /// `banks-<split>.arrow`.
    pub banks: PathBuf,
    /// `minhash-<split>.arrow`.
    pub signatures: PathBuf,
    /// `routing-<split>.arrow`.
    pub routing: PathBuf,
}

impl SetPaths {
    /// The paths of `split`'s files in the object directories of the `sequences`,
    /// `banks`, `minhash` and `routing` stages (file names are this crate's).
    pub fn new(
        split: Split,
        sequences_dir: &Path,
        banks_dir: &Path,
        minhash_dir: &Path,
        routing_dir: &Path,
    ) -> SetPaths {
        SetPaths {
            sequences: crate::sequences_path(sequences_dir, split),
            banks: crate::banks_path(banks_dir, split),
            signatures: crate::minhash_path(minhash_dir, split),
            routing: crate::routing_path(routing_dir, split),
        }
    }
}

/// One split's set artifacts, opened and cross-checked.
#[derive(Debug, Clone)]
pub struct SetArtifacts {
    sequences: TokensFile,
    banks: BanksFile,
    signatures: SignaturesFile,
    routing: RoutingFile,
}

/// One batch of sequences as flat arrays; every index is batch-local.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetBatch {
    /// Token ids of every sequence, concatenated.
    pub tokens: Vec<u32>,
    /// `Nseq + 1` pointers into `tokens` (and into `token_offsets`' tokens).
    pub seq_tokens: Vec<u64>,
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
    /// `start, end` per set, in positions of its sequence.
    pub spans: Vec<u32>,
    /// `Ntokens + 1` offsets into `candidates`.
    pub token_offsets: Vec<u64>,
    /// Candidate sets per token, as batch set indices (into `sizes`, `spans`, ...).
    pub candidates: Vec<u32>,
}

impl SetArtifacts {
    /// Opens the four files of one split and checks that they describe the same
    /// sequences and sets.
    pub fn open(paths: &SetPaths) -> Result<SetArtifacts, ArtifactError> {
        let artifacts = SetArtifacts {
            sequences: TokensFile::open_structure(&paths.sequences)?,
            banks: BanksFile::open(&paths.banks)?,
            signatures: SignaturesFile::open(&paths.signatures)?,
            routing: RoutingFile::open(&paths.routing)?,
        };
        artifacts.cross_check(paths)?;
        Ok(artifacts)
    }

    fn cross_check(&self, paths: &SetPaths) -> Result<(), ArtifactError> {
        let sequences = self.banks.num_sequences();
        let sets = self.banks.num_sets();
        let vocab = self.banks.shape().vocab_size;
        let mismatch = |path: &Path, format, stage, what: String| {
            let detail = format!("{what}, but `{}` has {sequences} sequences, {sets} sets and vocabulary {vocab}: the files come from different builds", paths.banks.display());
            Err(invalid(path, format, stage, detail))
        };
        if self.sequences.num_documents() != sequences || self.sequences.vocab_size() != vocab {
            let what = format!(
                "it has {} sequences and vocabulary {}",
                self.sequences.num_documents(),
                self.sequences.vocab_size()
            );
            return mismatch(&paths.sequences, crate::TOKENS_FORMAT, "sequences", what);
        }
        if self.signatures.num_sets() != sets {
            let what = format!("it has {} sets", self.signatures.num_sets());
            return mismatch(&paths.signatures, crate::MINHASH_FORMAT, "minhash", what);
        }
        if self.routing.num_sequences() != sequences as u64 {
            let what = format!(
                "it was built for {} sequences",
                self.routing.num_sequences()
            );
            return mismatch(&paths.routing, crate::ROUTING_FORMAT, "routing", what);
        }
        Ok(())
    }

    /// Number of sequences.
    pub fn num_sequences(&self) -> usize {
        self.banks.num_sequences()
    }

    /// MinHash values per set.
    pub fn minhash_k(&self) -> u32 {
        self.signatures.k()
    }

    /// The batch of sequences `seq_ids` (any order, any count, repeats allowed).
    pub fn gather(&self, seq_ids: &[usize]) -> Result<SetBatch, ArtifactError> {
        let mut batch = SetBatch {
            seq_tokens: vec![0],
            set_offsets: vec![0],
            seq_sets: vec![0],
            token_offsets: vec![0],
            ..SetBatch::default()
        };
        for &seq in seq_ids {
            if seq >= self.num_sequences() {
                let n = self.num_sequences();
                return Err(self.bad_bank(format!("no sequence {seq}: it has {n}")));
            }
            let first_set = batch.sizes.len() as u32;
            self.push_tokens(seq, &mut batch)?;
            self.push_sets(seq, &mut batch)?;
            self.push_routing(seq, first_set, &mut batch)?;
        }
        Ok(batch)
    }

    fn push_tokens(&self, seq: usize, batch: &mut SetBatch) -> Result<(), ArtifactError> {
        let ids = self.sequences.document(seq).unwrap_or(TokenIds::EMPTY);
        let vocab = self.sequences.vocab_size();
        if let Some(bad) = ids.iter().find(|&id| id >= vocab) {
            let detail = format!("sequence {seq} has token id {bad}, not below {vocab}");
            let path = self.sequences.path();
            return Err(invalid(path, crate::TOKENS_FORMAT, "sequences", detail));
        }
        batch.tokens.extend(ids.iter());
        batch.seq_tokens.push(batch.tokens.len() as u64);
        Ok(())
    }

    fn push_sets(&self, seq: usize, batch: &mut SetBatch) -> Result<(), ArtifactError> {
        let banks = &self.banks;
        let k = self.signatures.k() as usize;
        let vocab = banks.shape().vocab_size;
        // In range: `open` checked both offset levels and the signature count.
        for set in banks.sets_of(seq).unwrap_or(0..0) {
            let atoms = banks.set(set).unwrap_or(TokenIds::EMPTY);
            if let Some(bad) = atoms.iter().find(|&a| a >= vocab) {
                return Err(
                    self.bad_bank(format!("set {set} has atom id {bad}, not below {vocab}"))
                );
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

    /// Appends the candidates of every token of `seq`, offset by `first_set` (the
    /// sequence's first set in the batch).
    fn push_routing(
        &self,
        seq: usize,
        first_set: u32,
        batch: &mut SetBatch,
    ) -> Result<(), ArtifactError> {
        let sets = self.banks.sets_of(seq).unwrap_or(0..0);
        let ends: Vec<u32> = sets.map(|s| self.banks.spans()[2 * s + 1]).collect();
        let tokens = self.sequences.document(seq).map_or(0, |ids| ids.len());
        let table = self
            .routing
            .layout_of(&ends)
            .filter(|table| table.num_tokens() == tokens);
        let Some(table) = table else {
            let detail = format!(
                "no table for sequence {seq} ({tokens} tokens, sets ending at {ends:?}): it \
                 was built from a different bank"
            );
            let path = self.routing.path();
            return Err(invalid(path, crate::ROUTING_FORMAT, "routing", detail));
        };
        for t in 0..tokens {
            let candidates = table.candidates(t).iter().map(|&j| first_set + j);
            batch.candidates.extend(candidates);
            batch.token_offsets.push(batch.candidates.len() as u64);
        }
        Ok(())
    }

    fn bad_bank(&self, detail: String) -> ArtifactError {
        invalid(self.banks.path(), crate::BANKS_FORMAT, "banks", detail)
    }
}
