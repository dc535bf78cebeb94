//! The stage kinds of ausa and their registry.
//!
//! This crate owns what each stage kind *does*: one module per kind implementing
//! [`ausa_dag::Stage`] ([`corpus`], [`download`], [`doc_stats`], [`subset`],
//! [`tokenizer`], [`tokenize`], [`sequences`], [`banks`], [`minhash`], [`routing`]), the helpers they share (the synthetic text generator,
//! local file readers, the WikiText article rule, the BPE trainer and encoder, a
//! hand-written RNG), and [`registry`], which lists every kind.
//!
//! It must not touch the object store, fingerprints, scheduling or the CLI (those
//! belong to `ausa-store`, `ausa-dag`, `ausa-engine` and `ausa-cli`), and it must not
//! define file formats: stages write and read artifacts only through
//! `ausa-artifacts`. A stage writes only inside `ctx.out_dir`.

pub mod banks;
pub mod corpus;
pub mod doc_stats;
pub mod download;
mod lines;
mod local;
pub mod minhash;
mod parquet_text;
mod rng;
pub mod routing;
pub mod sequences;
mod sink;
pub mod subset;
mod synthetic;
pub mod tokenize;
pub mod tokenizer;
mod tokenizer_bpe;
mod tokenizer_encode;
mod tokenizer_markers;
mod tokenizer_pretok;
mod txt;
mod wikitext;

pub use corpus::CorpusStage;
pub use doc_stats::DocStatsStage;

/// Every stage kind, ready for the DAG loader and the engine.
pub fn registry() -> ausa_dag::Registry {
    let mut registry = ausa_dag::Registry::new();
    registry.register(Box::new(CorpusStage));
    registry.register(Box::new(DocStatsStage));
    registry.register(Box::new(download::DownloadStage::default()));
    registry.register(Box::new(subset::SubsetStage));
    registry.register(Box::new(tokenize::TokenizeStage));
    registry.register(Box::new(tokenizer::TokenizerStage));
    registry.register(Box::new(sequences::SequencesStage));
    registry.register(Box::new(banks::BanksStage));
    registry.register(Box::new(minhash::MinHashStage));
    registry.register(Box::new(routing::RoutingStage));
    registry
}

#[cfg(test)]
mod tests;
