//! The typed error of the build API. Messages name the value at fault; what to do
//! about it (CLI commands, flags) is rendered by the caller.

use ausa_dag::DagError;
use ausa_engine::BuildReport;
use ausa_store::StoreError;

/// Everything that can go wrong between a target and its files.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The target string has no DAG part (`:banks`).
    #[error("the target names no DAG (expected DAG[:STAGE])")]
    EmptyTarget,
    /// A stage name in the target is empty (`demo:`, `demo:a,,b`).
    #[error("`{target}` has an empty stage name (expected DAG[:STAGE[,STAGE...]])")]
    EmptyStage {
        /// The target as given.
        target: String,
    },
    /// The DAG, a parameter or an override is invalid (a usage error).
    #[error(transparent)]
    Dag(#[from] DagError),
    /// The store failed (I/O, permissions, a damaged object).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The caller needs one stage but the target named none.
    #[error("this needs a stage: `{dag}:STAGE`")]
    NeedsStage {
        /// The DAG's name.
        dag: String,
        /// Its stage names, for the hint.
        stages: Vec<String>,
    },
    /// A planned stage's object is not in the store.
    #[error("{dag}:{stage} is not built in this store (fingerprint {})", &fingerprint[..12])]
    NotBuilt {
        /// The DAG's name.
        dag: String,
        /// The stage whose object is missing.
        stage: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// The plan has no stage of the kind a reader needs.
    #[error("{dag}:{target} has no upstream stage of kind `{kind}`")]
    NoStageOfKind {
        /// The DAG's name.
        dag: String,
        /// The targeted stage (or `*` for the whole DAG).
        target: String,
        /// The kind looked for.
        kind: String,
    },
    /// The plan has several stages of the kind a reader needs.
    #[error("{dag} has several stages of kind `{kind}` ({}); name one as the target", stages.join(", "))]
    AmbiguousKind {
        /// The DAG's name.
        dag: String,
        /// The kind looked for.
        kind: String,
        /// The stages of that kind.
        stages: Vec<String>,
    },
    /// A build that was asked for failed; the report has every stage's outcome.
    #[error("build of `{}` failed ({} stage(s) not built)", .0.dag, .0.stages.iter().filter(|s| !s.outcome.is_ok()).count())]
    BuildFailed(Box<BuildReport>),
    /// A stage run into a scratch directory (outside the store) failed.
    #[error("{dag}:{stage} failed while building outside the store: {error}")]
    ScratchStage {
        /// The DAG's name.
        dag: String,
        /// The stage.
        stage: String,
        /// The error with its causes, one line.
        error: String,
    },
    /// The scratch directory could not be created.
    #[error("cannot create a scratch directory in {}: {source}", dir.display())]
    ScratchDir {
        /// Where it was to be created.
        dir: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An artifact in the store could not be opened.
    #[error(transparent)]
    Artifact(#[from] ausa_artifacts::ArtifactError),
}

impl BuildError {
    /// Whether the error is the caller's input (exit 2 in the CLI) rather than a
    /// failure of the work (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            BuildError::EmptyTarget
                | BuildError::EmptyStage { .. }
                | BuildError::Dag(_)
                | BuildError::NeedsStage { .. }
                | BuildError::NoStageOfKind { .. }
                | BuildError::AmbiguousKind { .. }
        )
    }
}
