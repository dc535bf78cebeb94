//! Helpers for the tokenizer tests: run stages through real `StageContext`s on
//! temporary directories.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ausa_artifacts::{DocumentsWriter, Split};
use ausa_dag::{InputArtifact, ParamValue, Params, Stage, StageError, Stats};
use ausa_stages::tokenize::TokenizeStage;
use ausa_stages::tokenizer::TokenizerStage;
use ausa_stages::CorpusStage;
use tempfile::TempDir;

/// A stage's output directory and the kind that produced it.
#[derive(Debug)]
pub struct Built {
    dir: TempDir,
    kind: &'static str,
}

impl Built {
    /// Wraps a directory filled by hand as the output of a `kind` stage.
    pub fn existing(dir: TempDir, kind: &'static str) -> Built {
        Built { dir, kind }
    }

    /// The output directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// This output as the input artifact of `slot`.
    pub fn input(&self, slot: &'static str) -> InputArtifact {
        InputArtifact {
            slot,
            kind: self.kind.to_string(),
            dir: self.dir.path().to_path_buf(),
        }
    }
}

pub use ausa_dag::testing::params;

/// Checks and runs `stage` into `out`.
pub fn run(
    stage: &dyn Stage,
    params: &Params,
    inputs: &[InputArtifact],
    external: &[(&str, &[&PathBuf])],
    out: &Path,
) -> Result<Stats, StageError> {
    let owned: Vec<(&str, Vec<PathBuf>)> = external
        .iter()
        .map(|(name, paths)| (*name, paths.iter().map(|p| p.to_path_buf()).collect()))
        .collect();
    let lists: Vec<(&str, &[PathBuf])> = owned.iter().map(|(n, p)| (*n, p.as_slice())).collect();
    ausa_dag::testing::run(
        stage,
        params,
        inputs,
        &ausa_dag::testing::external(&lists),
        out,
    )
}

/// A synthetic corpus of `docs` documents (seed 0).
pub fn corpus(docs: i64) -> Built {
    let out = tempfile::tempdir().unwrap();
    let p = params(&CorpusStage, &[("docs", ParamValue::Int(docs))]);
    run(&CorpusStage, &p, &[], &[], out.path()).unwrap();
    Built::existing(out, "corpus")
}

/// A documents table with the given documents (`doc_id` = position).
pub fn documents(docs: &[(Split, &str)]) -> Built {
    let out = tempfile::tempdir().unwrap();
    let mut writer = DocumentsWriter::create(out.path().join("documents.parquet")).unwrap();
    for (i, (split, text)) in docs.iter().enumerate() {
        writer.push(i as u64, *split, text).unwrap();
    }
    writer.finish().unwrap();
    Built::existing(out, "corpus")
}

/// Trains a tokenizer of `vocab_size` tokens on `docs`.
pub fn run_tokenizer(docs: &Built, vocab_size: i64) -> Result<(Built, Stats), StageError> {
    run_tokenizer_with(docs, &[("vocab_size", ParamValue::Int(vocab_size))])
}

/// Trains a tokenizer on `docs` with parameters `overrides`.
pub fn run_tokenizer_with(
    docs: &Built,
    overrides: &[(&str, ParamValue)],
) -> Result<(Built, Stats), StageError> {
    let out = tempfile::tempdir().unwrap();
    let p = params(&TokenizerStage, overrides);
    let stats = run(
        &TokenizerStage,
        &p,
        &[docs.input("documents")],
        &[],
        out.path(),
    )?;
    Ok((Built::existing(out, "tokenizer"), stats))
}

/// Tokenizes `docs` with `tokenizer`.
pub fn run_tokenize(docs: &Built, tokenizer: &Built) -> Result<(Built, Stats), StageError> {
    let out = tempfile::tempdir().unwrap();
    let p = params(&TokenizeStage, &[]);
    let inputs = [docs.input("documents"), tokenizer.input("tokenizer")];
    let stats = run(&TokenizeStage, &p, &inputs, &[], out.path())?;
    Ok((Built::existing(out, "tokenize"), stats))
}
