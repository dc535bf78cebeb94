//! Parameter sweeps of trainer runs (`ausa sweep`): a TOML file of a base command and
//! grids over trainer flags and DAG `--set` overrides ([`spec`]), named sweeps compiled
//! into the binary ([`embedded`]), the sweep directory with its per-run locks, records
//! and `results.csv` ([`dir`]), and the executor that runs the trainer processes
//! sequentially or several at a time, one per GPU behind an idle gate ([`exec`],
//! [`gpu`]), and the equivalent W&B sweep configurations of a sweep file ([`wandb`]).
//!
//! It knows nothing about models or artifacts: the caller (the CLI) checks each run's
//! flags with the trainer's own parser, builds the artifacts every run needs once,
//! and says how to start a run's process.
//!
//! ```no_run
//! use ausa_sweep::{spec, dir::SweepDir};
//! let schema = spec::FlagSchema::default(); // the CLI fills it from `ausa train lm`'s flags
//! let sweep = spec::Sweep::parse(&spec::locate("demo-ablation")?, &schema)?;
//! for run in sweep.runs() {
//!     println!("{}: {:?}", run.name, run.args(&sweep.dag));
//! }
//! let dir = SweepDir::new("sweeps/demo");
//! # Ok::<(), ausa_sweep::SweepError>(())
//! ```

mod child;
pub mod dir;
pub mod embedded;
pub mod exec;
pub mod gpu;
pub mod spec;
pub mod wandb;

/// Errors of a sweep.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The sweep file is invalid (a usage error).
    #[error("{origin}: {message}")]
    Spec {
        /// The file (or embedded sweep).
        origin: String,
        /// What is wrong, naming the table and key.
        message: String,
        /// What to do.
        hint: Option<String>,
    },
    /// A run directory under `--out` belongs to other arguments (the sweep changed).
    #[error("run `{run}` in {} was made with other flags:\n  was: {was}\n  now: {now}", dir.display())]
    Changed {
        /// The run.
        run: String,
        /// Its directory.
        dir: std::path::PathBuf,
        /// Its arguments then.
        was: String,
        /// Its arguments now.
        now: String,
    },
    /// A file of the sweep directory.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A lock file.
    #[error(transparent)]
    Store(#[from] ausa_store::StoreError),
}

impl SweepError {
    /// What to do about it, when there is advice.
    pub fn hint(&self) -> Option<String> {
        match self {
            SweepError::Spec { hint, .. } => hint.clone(),
            SweepError::Changed { dir, .. } => Some(format!(
                "use another --out for the changed sweep, or remove {} to run it anew",
                dir.display()
            )),
            _ => None,
        }
    }

    /// 2 for an invalid sweep file or a changed sweep, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            SweepError::Spec { .. } | SweepError::Changed { .. } => 2,
            _ => 1,
        }
    }
}
