//! Command-line arguments (clap). Parsing only: no work happens here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// ausa: build, share and inspect the artifact caches of AUSA experiments.
#[derive(Debug, Parser)]
#[command(
    name = "ausa",
    version,
    about,
    long_about = "ausa builds a DAG of fingerprinted stages (corpus, statistics, tokenizer, ...) \
into a content-addressed store of immutable artifacts. A rebuild with nothing changed is a no-op; \
a changed input or parameter always gives a new artifact.",
    after_help = "Examples:\n  ausa build demo                 build the embedded demo DAG\n  \
ausa build demo --set corpus.docs=500\n  ausa status demo                what is built, stale or missing\n  \
ausa explain demo:doc_stats     why a stage would rebuild\n  ausa verify                     rehash every object in the store\n  \
ausa push demo --remote s3://bucket/ausa   share the built artifacts\n  \
ausa pull demo --remote s3://bucket/ausa   fetch them on another machine\n\n\
Exit codes: 0 ok, 1 build or verify failure, 2 usage or config error \
(`ausa status`: 3 missing or stale, 4 damaged)."
)]
pub struct Cli {
    /// Store directory [default: $AUSA_STORE, else $XDG_CACHE_HOME/ausa, else ~/.cache/ausa]
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Print a machine-readable JSON document on stdout instead of human output.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors (and the answers of read commands).
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// A `DAG[:STAGE]` target and the overrides that shape its fingerprints.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// An embedded DAG name (e.g. `demo`) or a path to a .toml file, optionally with
    /// `:STAGE` (or `:STAGE,STAGE`) to select stages and their upstreams.
    #[arg(value_name = "DAG[:STAGE]")]
    pub target: String,
    /// Override a stage parameter (repeatable), e.g. `--set corpus.docs=500`.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub overrides: Vec<String>,
}

/// A `DAG:STAGE` target (one stage required) and its overrides.
#[derive(Debug, Args)]
pub struct StageTargetArgs {
    /// An embedded DAG name (e.g. `demo`) or a path to a .toml file, and the stage.
    #[arg(value_name = "DAG:STAGE")]
    pub target: String,
    /// Override a stage parameter (repeatable), e.g. `--set corpus.docs=500`.
    #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
    pub overrides: Vec<String>,
}

impl From<&StageTargetArgs> for TargetArgs {
    fn from(a: &StageTargetArgs) -> TargetArgs {
        TargetArgs {
            target: a.target.clone(),
            overrides: a.overrides.clone(),
        }
    }
}

/// The remote of commands that talk to one.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// Remote store: s3://bucket/prefix or file:///path [default: $AUSA_REMOTE, else
    /// `remote = "..."` in $XDG_CONFIG_HOME/ausa/config.toml]
    #[arg(long, value_name = "URL")]
    pub remote: Option<String>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a DAG (or one stage and its upstreams) into the store.
    ///
    /// With --remote, every missing object the remote has is first downloaded and
    /// verified (two objects at a time, not waiting for upstream stages); only what
    /// the remote lacks, or fails to deliver, is built here.
    Build {
        #[command(flatten)]
        target: TargetArgs,
        /// Stages to build at once, at least 1 [default: number of cores].
        #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1024))]
        jobs: Option<u64>,
        /// Say what would be built and why, without building.
        #[arg(long)]
        dry_run: bool,
        /// Rebuild the named stage(s) even if their objects exist (replaces a damaged
        /// artifact atomically); their upstream stages are reused. For a whole DAG,
        /// every stage.
        #[arg(long)]
        force: bool,
        /// Like --force, and rebuild every upstream stage of the named ones too.
        #[arg(long)]
        force_upstream: bool,
        /// Upload what the build produced (and its refs) to the remote afterwards.
        #[arg(long)]
        push: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Upload a DAG's objects (files first, manifest last) and refs to the remote.
    Push {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Download a DAG's objects the local store lacks, verifying every file's blake3.
    Pull {
        #[command(flatten)]
        target: TargetArgs,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Show each stage's fingerprint and state: up-to-date, stale, missing or damaged
    /// (and, with a remote, whether it is local, on the remote or missing).
    ///
    /// Exit status: 0 when every stage is up to date, 3 when any is missing or stale,
    /// 4 when any object is damaged (fails its size check, or with --verify its hash).
    Status {
        #[command(flatten)]
        target: TargetArgs,
        /// Rehash every byte of the existing objects, not only check their sizes.
        #[arg(long)]
        verify: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Explain why stages would rebuild: a field-by-field diff against their last build.
    Explain {
        #[command(flatten)]
        target: TargetArgs,
    },
    /// Show a stage: parameters (with defaults), fingerprint, manifest and statistics.
    Show {
        #[command(flatten)]
        target: StageTargetArgs,
        /// Rehash every byte of the object, not only check its sizes.
        #[arg(long)]
        verify: bool,
    },
    /// Print the object directory of a built stage (for scripts).
    Path {
        #[command(flatten)]
        target: StageTargetArgs,
    },
    /// List the objects in the store with their sizes and the configurations (DAG +
    /// overrides) whose refs point at them.
    Ls,
    /// Rehash object files against their manifests and report every mismatch.
    Verify {
        /// Limit to the objects of this DAG (or stage); default: every object.
        #[arg(value_name = "DAG[:STAGE]")]
        target: Option<String>,
        /// Override a stage parameter (repeatable), as for `build`.
        #[arg(long = "set", value_name = "STAGE.PARAM=VALUE")]
        overrides: Vec<String>,
    },
    /// Remove objects no configuration references, temp dirs of builds that died, and
    /// locks whose lease expired. Safe beside running builds, on any host.
    ///
    /// Every configuration built (DAG + --set overrides) keeps its objects until a
    /// policy drops it: --older-than and --keep-last, for parameter sweeps.
    Gc {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Drop configurations that last built anything longer ago than this (e.g. 30d).
        #[arg(long, value_name = "AGE")]
        older_than: Option<String>,
        /// Per DAG, keep only the N configurations that built most recently.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
    },
    /// Train a model on a DAG's artifacts (built with the `train` feature).
    #[cfg(feature = "train")]
    Train(crate::train::TrainArgs),
    /// Run a sweep: a grid of `ausa train` runs from a TOML file or an embedded sweep.
    ///
    /// The artifacts of every run are built first, once per configuration. Runs go one
    /// at a time or --parallel N at a time (one per GPU, behind an idle gate). Each run
    /// gets a row in DIR/results.csv whatever happens (ok, oom, failed with its exit
    /// code, killed); a second `ausa sweep` of the same file and --out skips finished
    /// runs and shares the work with any other one running there.
    ///
    /// GPUs are found with nvidia-smi ($AUSA_NVIDIA_SMI names another program); where
    /// there is none the gate is skipped with a note. Run `ausa report DIR` afterwards.
    #[cfg(feature = "train")]
    Sweep(crate::sweep::SweepArgs),
    /// Kernel benchmarks (`ausa bench ska`), as CSV rows with the SPEC's fields.
    #[cfg(feature = "train")]
    Bench(crate::bench::BenchArgs),
    /// Write paper tables (A: fp32 naive vs naive, B: bf16 optimized), ablations,
    /// figures (PNG, SVG) and report.json from run directories.
    Report(crate::report::ReportArgs),
}
