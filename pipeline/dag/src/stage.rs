//! The contract between the engine and a stage kind.
//!
//! A stage kind is one type implementing [`Stage`]: a kind name, a version salt, a
//! parameter schema, the input slots it reads, and [`Stage::run`]. The engine knows
//! nothing else about it; adding a stage kind is one file plus a line in the registry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::params::{ParamSpec, Params};

/// Statistics a stage reports; stored in the manifest and shown by `ausa show`.
pub type Stats = serde_json::Map<String, serde_json::Value>;

/// The error a stage returns: any error with its cause chain; the CLI prints the chain.
pub type StageError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An upstream artifact a stage kind reads, by slot name.
#[derive(Debug, Clone, Copy)]
pub struct InputSlot {
    /// Slot name, used in the DAG file (`inputs = { documents = "corpus" }`) and in keys.
    pub name: &'static str,
    /// Stage kinds whose artifacts fit this slot.
    pub kinds: &'static [&'static str],
    /// One line shown by `ausa show`.
    pub doc: &'static str,
}

/// A verified upstream artifact handed to [`Stage::run`].
#[derive(Debug, Clone)]
pub struct InputArtifact {
    /// The slot it fills.
    pub slot: &'static str,
    /// The upstream stage's kind.
    pub kind: String,
    /// The published, read-only object directory.
    pub dir: PathBuf,
}

/// One external input file, expanded from a [`crate::ParamType::Paths`] parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalFile {
    /// Where it was read (absolute or relative to the current directory).
    pub path: PathBuf,
    /// blake3 of its content, lowercase hex.
    pub blake3: String,
    /// Size in bytes.
    pub size: u64,
}

/// Units for [`Progress`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressUnit {
    /// Counted things, named (`"docs"`, `"files"`).
    Items(&'static str),
    /// Bytes (shown with throughput).
    Bytes,
}

/// Progress reporting from inside a stage. Cheap to call from many rayon threads.
pub trait Progress: Sync {
    /// Announces the amount of work, replacing any earlier total.
    fn set_total(&self, total: u64, unit: ProgressUnit);
    /// Records `n` more units done.
    fn advance(&self, n: u64);
}

/// A [`Progress`] that ignores everything (tests, quiet runs).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _total: u64, _unit: ProgressUnit) {}
    fn advance(&self, _n: u64) {}
}

/// Everything [`Stage::run`] may use.
pub struct StageContext<'a> {
    /// Resolved parameters (every declared one, defaults filled in).
    pub params: &'a Params,
    /// Verified upstream artifacts, in the order of [`Stage::inputs`].
    pub inputs: &'a [InputArtifact],
    /// External input files per `Paths` parameter, in a deterministic order.
    pub external: &'a BTreeMap<String, Vec<ExternalFile>>,
    /// The empty directory to write outputs into (a temp dir the engine publishes).
    pub out_dir: &'a Path,
    /// Progress sink.
    pub progress: &'a dyn Progress,
}

impl StageContext<'_> {
    /// The artifact in input slot `slot`.
    pub fn input(&self, slot: &str) -> Result<&InputArtifact, StageError> {
        self.inputs
            .iter()
            .find(|i| i.slot == slot)
            .ok_or_else(|| format!("input slot `{slot}` was not provided (engine bug)").into())
    }

    /// The external files of `Paths` parameter `param` (empty if none were given).
    pub fn external_files(&self, param: &str) -> &[ExternalFile] {
        self.external.get(param).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// A stage kind.
///
/// Implementations must be deterministic: the same parameters, inputs and external
/// file contents give byte-identical outputs whatever the thread count.
pub trait Stage: Send + Sync {
    /// The kind name used in DAG files (`kind = "corpus"`) and in the store layout.
    fn kind(&self) -> &'static str;
    /// Version salt: bump it whenever the output for the same inputs changes.
    fn salt(&self) -> &'static str;
    /// One paragraph for `ausa show` and docs.
    fn doc(&self) -> &'static str;
    /// The parameter schema.
    fn params(&self) -> &'static [ParamSpec];
    /// The input slots, in the order artifacts are passed to [`Stage::run`].
    fn inputs(&self) -> &'static [InputSlot];
    /// Checks rules that involve several parameters; the message names the parameters.
    fn check(&self, _params: &Params) -> Result<(), String> {
        Ok(())
    }
    /// Fetches external inputs that are not local paths (files from a dataset hub) and
    /// returns the local files, keyed like `Paths` parameters (`"files"` -> paths).
    ///
    /// Called by the planner before fingerprints are computed: the returned files'
    /// content digests enter the key under `external.<name>` and reach [`Stage::run`]
    /// through [`StageContext::external_files`]. Must be idempotent and cheap when
    /// the files are already cached.
    fn fetch_inputs(&self, _params: &Params) -> Result<BTreeMap<String, Vec<PathBuf>>, StageError> {
        Ok(BTreeMap::new())
    }
    /// Produces the outputs in `ctx.out_dir` and returns statistics.
    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError>;
}

/// The stage kinds a DAG may use.
#[derive(Default)]
pub struct Registry {
    stages: BTreeMap<&'static str, Box<dyn Stage>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds a stage kind (a later one with the same kind name replaces the earlier).
    pub fn register(&mut self, stage: Box<dyn Stage>) {
        self.stages.insert(stage.kind(), stage);
    }

    /// The stage kind named `kind`.
    pub fn get(&self, kind: &str) -> Option<&dyn Stage> {
        self.stages.get(kind).map(|s| s.as_ref())
    }

    /// All kind names, sorted.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.stages.keys().copied().collect()
    }
}
