//! Executes build plans against the object store.
//!
//! This crate owns the build loop: for every stage of a [`Plan`] it decides whether
//! the object already exists, takes the build lock, verifies the inputs, runs the
//! stage in a temp dir, publishes the result atomically and moves the DAG's ref.
//! Independent stages run in parallel on `jobs` threads; each stage uses rayon inside.
//! It also answers "what is the state of this stage and why would it rebuild?"
//! ([`inspect`]).
//!
//! It must not know what any stage kind does (that is `ausa-stages`), how keys are
//! made (`ausa-dag`) or how the store lays out files (`ausa-store`), and it prints
//! nothing: progress and outcomes go to a [`Reporter`].
//!
//! ```no_run
//! # fn demo(registry: &ausa_dag::Registry) -> Result<(), Box<dyn std::error::Error>> {
//! let store = ausa_store::Store::create("/tmp/store")?;
//! let source = ausa_dag::locate("demo")?;
//! let dag = ausa_dag::DagSpec::load(&source, registry, &[])?;
//! let plan = ausa_dag::Plan::resolve(&dag, None, registry, &ausa_engine::StoreHasher::new(&store))?;
//! let report = ausa_engine::build(&store, &plan, registry, &ausa_engine::BuildOptions::default(), &ausa_engine::Silent);
//! assert!(report.ok());
//! # Ok(()) }
//! ```

pub mod inspect;
mod run;

use std::path::Path;

use ausa_dag::{ContentHasher, Plan, PlannedStage, Progress};
use ausa_store::{ObjectId, Ref, RefName, StatCache, Store};

pub use ausa_store::Config;
pub use inspect::{explain, stage_states, Explanation, StageState, StateKind};
pub use run::{build, build_with_source};

/// The store object a planned stage builds.
pub fn object_id(stage: &PlannedStage) -> ObjectId {
    ObjectId {
        kind: stage.kind.clone(),
        fingerprint: stage.fingerprint.clone(),
    }
}

/// The ref that records which object `stage` last built in configuration `config`.
pub fn ref_name(config: &Config, stage: &PlannedStage) -> RefName {
    config.ref_name(&stage.name)
}

/// The ref a build of `stage` records: its object and the key it was built from
/// (what `explain` diffs against later).
pub fn planned_ref(stage: &PlannedStage) -> Ref {
    Ref {
        kind: stage.kind.clone(),
        fingerprint: stage.fingerprint.clone(),
        key: stage.key.clone(),
    }
}

/// Options of one build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Stages built at once (at least 1).
    pub jobs: usize,
    /// Names of the stages to rebuild even though their objects exist (`--force`): the
    /// rebuilt copy replaces the old one atomically. Other stages are reused as usual,
    /// so `--force` on one stage rebuilds that stage only; see [`forced_stages`].
    pub force: Vec<String>,
    /// The configuration (DAG + overrides) whose refs the build writes; `None`: the
    /// plan's DAG without overrides.
    pub config: Option<ausa_store::Config>,
}

impl Default for BuildOptions {
    fn default() -> BuildOptions {
        let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
        BuildOptions {
            jobs,
            force: Vec::new(),
            config: None,
        }
    }
}

/// The stages `--force` rebuilds: the `targets` named, or with `upstream` also every
/// stage they depend on (the whole plan, which is the targets and their upstreams);
/// without targets (a whole DAG), every planned stage.
pub fn forced_stages(plan: &Plan, targets: &[String], upstream: bool) -> Vec<String> {
    if targets.is_empty() || upstream {
        plan.stages.iter().map(|s| s.name.clone()).collect()
    } else {
        targets.to_vec()
    }
}

/// How one stage of a build ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The object already existed.
    UpToDate,
    /// We built and published it.
    Built {
        /// Wall time of the stage.
        seconds: f64,
        /// Bytes of its files.
        bytes: u64,
    },
    /// Another process published it while we waited for its lock.
    BuiltElsewhere,
    /// Downloaded from an [`ObjectSource`] (a remote cache) instead of built.
    Fetched {
        /// Wall time of the download and its verification.
        seconds: f64,
        /// Bytes of its files.
        bytes: u64,
    },
    /// The stage (or its publication) failed; nothing was published.
    Failed {
        /// The error with its causes, one line.
        error: String,
        /// What kind of failure it was; callers render advice from it.
        cause: FailureCause,
    },
    /// Not attempted because an upstream stage failed.
    Skipped {
        /// The failed upstream stage.
        upstream: String,
    },
}

/// Why a stage failed, for callers that turn failures into advice (the CLI's hints,
/// a trainer's message). The engine itself never writes advice.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "cause", rename_all = "kebab-case")]
pub enum FailureCause {
    /// The stage's own code returned an error.
    Stage,
    /// The disk (or a quota) was full while writing.
    DiskFull,
    /// The object of `stage` (this stage or an input) fails its manifest check.
    Corrupted {
        /// The stage whose object is damaged.
        stage: String,
    },
    /// The store could not be read or written (I/O).
    Store,
    /// A directory of the store that this user may not write (a read-only or a
    /// group store without group write access).
    Unwritable {
        /// The directory.
        dir: std::path::PathBuf,
    },
    /// The engine or the plan is inconsistent (a bug).
    Internal,
    /// The stage's key is unknown: its remote inputs (files on a dataset hub) could not
    /// be listed at plan time (see [`ausa_dag::PlannedStage::pending`]).
    NeedsHub {
        /// What the stage says to do about it.
        hint: Option<String>,
    },
}

impl Outcome {
    /// Whether the stage's object is available after the build.
    pub fn is_ok(&self) -> bool {
        matches!(
            self,
            Outcome::UpToDate
                | Outcome::Built { .. }
                | Outcome::BuiltElsewhere
                | Outcome::Fetched { .. }
        )
    }
}

/// The result of one stage of a build.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageReport {
    /// Stage name.
    pub stage: String,
    /// Stage kind.
    pub kind: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// The result of a build, stages in plan order.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    /// The DAG built.
    pub dag: String,
    /// One entry per planned stage.
    pub stages: Vec<StageReport>,
}

impl BuildReport {
    /// Whether every stage's object is available.
    pub fn ok(&self) -> bool {
        self.stages.iter().all(|s| s.outcome.is_ok())
    }
}

/// Receives build events. Called from worker threads.
pub trait Reporter: Sync {
    /// A stage starts to build (after taking its lock).
    fn started(&self, stage: &PlannedStage);
    /// A stage waits for another process's lock.
    fn waiting(&self, stage: &PlannedStage, holder: &str);
    /// A stage finished, whatever the outcome.
    fn finished(&self, stage: &PlannedStage, outcome: &Outcome);
    /// The progress sink for a stage that is running.
    fn progress<'a>(&'a self, stage: &PlannedStage) -> Box<dyn Progress + 'a>;
    /// Fetching a stage's object from the [`ObjectSource`] failed; it is built instead.
    fn fetch_failed(&self, _stage: &PlannedStage, _error: &str) {}
}

/// Somewhere a missing object may be copied from instead of built: a remote cache.
///
/// The engine stays free of network code; the CLI implements this with
/// `ausa-remote`. An implementation must publish through the store's atomic publish
/// (after verifying the content), so a failed fetch leaves nothing visible.
pub trait ObjectSource: Sync {
    /// Publishes `id` into `store` if the source has it: `Ok(Some(bytes))` when it
    /// was copied, `Ok(None)` when the source lacks it, `Err` (a one-line reason) when
    /// the copy failed or was rejected. Bytes copied go to `progress`.
    fn fetch(
        &self,
        store: &Store,
        id: &ausa_store::ObjectId,
        progress: &dyn Progress,
    ) -> Result<Option<u64>, String>;

    /// How many objects [`fetch`](ObjectSource::fetch) may be asked for at once, from
    /// different threads.
    fn parallel_fetches(&self) -> usize {
        1
    }
}

/// A [`Reporter`] that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Reporter for Silent {
    fn started(&self, _stage: &PlannedStage) {}
    fn waiting(&self, _stage: &PlannedStage, _holder: &str) {}
    fn finished(&self, _stage: &PlannedStage, _outcome: &Outcome) {}
    fn progress<'a>(&'a self, _stage: &PlannedStage) -> Box<dyn Progress + 'a> {
        Box::new(ausa_dag::NoProgress)
    }
}

/// Hashes external inputs through the store's stat cache.
#[derive(Debug, Clone)]
pub struct StoreHasher(StatCache);

impl StoreHasher {
    /// The hasher of `store`.
    pub fn new(store: &Store) -> StoreHasher {
        StoreHasher(StatCache::new(store))
    }
}

impl ContentHasher for StoreHasher {
    fn digest(&self, path: &Path) -> std::io::Result<(String, u64)> {
        self.0.digest(path)
    }
}
