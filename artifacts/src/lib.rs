//! On-disk artifact formats of ausa: writers and validated readers.
//!
//! This crate owns the bytes of every artifact file a stage writes and another stage
//! (or a user) reads. Each format lives in one module whose documentation is the
//! format's specification (columns, types, nullability, compression, row groups):
//!
//! - [`documents`]: `documents.parquet`, the corpus documents.
//! - [`doc_stats`]: `doc_stats.parquet`, per-document word and character counts.
//! - [`tokens`]: `tokens-<split>.arrow`, token ids per split (Arrow IPC, read
//!   zero-copy through a memory map).
//! - [`banks`]: `banks-<split>.arrow`, each sequence's sets as a two-level CSR.
//! - [`signatures`]: `minhash-<split>.arrow`, k MinHash values and the size per set.
//! - [`routing`]: `routing-<split>.arrow`, each token position's candidate sets, per
//!   set layout.
//! - [`gather`]: one split's set artifacts opened together, gathered per batch.
//! - [`histogram`]: the bucketing of bank statistics (sets per sequence, atoms per
//!   set) that the manifest statistics and the trainer's run metadata share.
//!
//! Writers are deterministic: the same rows always give byte-identical files,
//! whatever the machine, time or library version (`created_by` is fixed to `"ausa"`).
//! Readers validate the schema and report errors naming the file and the column.
//!
//! This crate must not touch the object store, stage parameters, or the engine; it
//! knows nothing about where files live beyond the path it is given.

pub mod banks;
pub mod doc_stats;
pub mod documents;
mod error;
pub mod gather;
pub mod histogram;
mod ipc;
mod mmap;
pub mod routing;
pub mod signatures;
mod split;
mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tokens;

pub use banks::{
    banks_file_name, banks_path, BankShape, BanksFile, BanksSummary, BanksWriter, BANKS_FORMAT,
};
pub use doc_stats::{
    doc_stats_path, histogram_path, read_doc_stats, DocStat, DocStatsWriter, DOC_STATS_FILE,
    DOC_STATS_FORMAT, HISTOGRAM_FILE,
};
pub use documents::{
    document_batches, documents_path, read_documents, Document, DocumentBatch, DocumentBatches,
    DocumentRef, DocumentsWriter, DOCUMENTS_FILE, DOCUMENTS_FORMAT,
};
pub use error::ArtifactError;
pub use gather::{SetArtifacts, SetBatch, SetPaths};
pub use mmap::filled_u32_buffer;
pub use routing::{
    routing_file_name, routing_path, write_routing, LayoutTable, Routing, RoutingFile,
    RoutingLayout, ROUTING_FORMAT,
};
pub use signatures::{
    minhash_file_name, minhash_path, write_signatures, SignaturesFile, MINHASH_FORMAT,
};
pub use split::Split;
pub use tokens::{
    sequences_file_name, sequences_path, tokenizer_path, tokens_file_name, tokens_path, IdWidth,
    TokenIds, TokensFile, TokensSummary, TokensWriter, TOKENIZER_FILE, TOKENS_FORMAT,
};

#[cfg(test)]
mod tests;
