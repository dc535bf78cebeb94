//! The contract between the engine and a stage kind.
//!
//! A stage kind is one type implementing [`Stage`]: a kind name, a version salt, a
//! parameter schema, the input slots it reads, and [`Stage::run`]. The engine knows
//! nothing else about it; adding a stage kind is one file plus a line in the registry.
//! Stage kinds usually implement [`TypedStage`] instead, whose methods receive the
//! parameters already parsed into the struct that [`crate::stage_params!`] declares.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::params::{FromParams, ParamSpec, Params};

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

/// A file a stage fetches from elsewhere (a dataset hub) **when it runs**, known at plan
/// time by its content digest only: planning never downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Where it comes from, in the stage's own terms (for the `download` stage:
    /// `<commit>/<path in the repository>`). Not part of the key.
    pub location: String,
    /// The content digest the remote announces, with its algorithm
    /// (`sha256:<hex>`, `git-sha1:<hex>`). Enters the key; the stage checks the
    /// fetched bytes against it where it can.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
}

/// Why a stage's key cannot be computed now (its remote inputs are unknown): the stage
/// is planned as [`PlannedStage::pending`](crate::PlannedStage::pending) instead of
/// failing the plan, so that every command but a build of it still works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// What is missing, naming the remote (`dataset `x` at revision `main` is not in
    /// the hub cache ...`).
    pub reason: String,
    /// What to do about it.
    pub hint: Option<String>,
}

/// What [`Stage::remote_inputs`] found out at plan time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteInputs {
    /// The stage fetches nothing.
    None,
    /// The files, keyed like `Paths` parameters (`"train"` -> files); their digests
    /// enter the key under `external.<name>`, and they reach [`Stage::run`] through
    /// [`StageContext::remote_files`].
    Known(BTreeMap<String, Vec<RemoteFile>>),
    /// Cannot be known now (no network and nothing cached, or the remote refused).
    Unknown(Pending),
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
    /// Remote files the stage fetches itself, as [`Stage::remote_inputs`] listed them.
    pub remote: &'a BTreeMap<String, Vec<RemoteFile>>,
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

    /// The remote files listed under `name` (empty if none).
    pub fn remote_files(&self, name: &str) -> &[RemoteFile] {
        self.remote.get(name).map(Vec::as_slice).unwrap_or(&[])
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
    /// The schema entry of parameter `name` (the one lookup every caller uses).
    fn param(&self, name: &str) -> Option<&'static ParamSpec> {
        self.params().iter().find(|p| p.name == name)
    }
    /// The input slots, in the order artifacts are passed to [`Stage::run`].
    fn inputs(&self) -> &'static [InputSlot];
    /// Checks rules that involve several parameters; the message names the parameters.
    fn check(&self, _params: &Params) -> Result<(), String> {
        Ok(())
    }
    /// Lists the inputs fetched from elsewhere (files of a dataset hub) by their
    /// content digests, **without downloading them**: at most metadata requests, or
    /// what a local cache knows. Called by the planner before fingerprints are
    /// computed; [`Stage::run`] fetches the files. `Err` only for a bug (a parameter
    /// the schema lacks); an unreachable remote is [`RemoteInputs::Unknown`].
    fn remote_inputs(&self, _params: &Params) -> Result<RemoteInputs, StageError> {
        Ok(RemoteInputs::None)
    }
    /// Produces the outputs in `ctx.out_dir` and returns statistics.
    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError>;
}

/// A stage kind whose methods take its parameters parsed into one typed struct,
/// declared with [`crate::stage_params!`]; every `TypedStage` is a [`Stage`].
pub trait TypedStage: Send + Sync {
    /// The parameter struct (its schema is [`FromParams::SPECS`]).
    type Params: FromParams;
    /// See [`Stage::kind`].
    fn kind(&self) -> &'static str;
    /// See [`Stage::salt`].
    fn salt(&self) -> &'static str;
    /// See [`Stage::doc`].
    fn doc(&self) -> &'static str;
    /// See [`Stage::inputs`].
    fn inputs(&self) -> &'static [InputSlot];
    /// See [`Stage::check`].
    fn check(&self, _params: &Self::Params) -> Result<(), String> {
        Ok(())
    }
    /// See [`Stage::remote_inputs`].
    fn remote_inputs(&self, _params: &Self::Params) -> RemoteInputs {
        RemoteInputs::None
    }
    /// See [`Stage::run`]; `params` are `ctx.params`, parsed.
    fn run(&self, params: &Self::Params, ctx: &StageContext<'_>) -> Result<Stats, StageError>;
}

impl<T: TypedStage> Stage for T {
    fn kind(&self) -> &'static str {
        TypedStage::kind(self)
    }
    fn salt(&self) -> &'static str {
        TypedStage::salt(self)
    }
    fn doc(&self) -> &'static str {
        TypedStage::doc(self)
    }
    fn params(&self) -> &'static [ParamSpec] {
        T::Params::SPECS
    }
    fn inputs(&self) -> &'static [InputSlot] {
        TypedStage::inputs(self)
    }
    fn check(&self, params: &Params) -> Result<(), String> {
        let params = T::Params::from_params(params).map_err(|e| e.to_string())?;
        TypedStage::check(self, &params)
    }
    fn remote_inputs(&self, params: &Params) -> Result<RemoteInputs, StageError> {
        Ok(TypedStage::remote_inputs(
            self,
            &T::Params::from_params(params)?,
        ))
    }
    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        TypedStage::run(self, &T::Params::from_params(ctx.params)?, ctx)
    }
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
