//! Experiment tracking for ausa runs, from the run directory's own numbers.
//!
//! - [`tfevents`]: TensorBoard event files (TFRecord framing, `tensorflow.Event`
//!   protobufs through prost, CRC32C through crc32c), written by the trainer into
//!   `RUN/tb/` as it logs.
//! - [`scalars`]: the one mapping from a `metrics.jsonl` line to scalar tags
//!   (`train/loss`, `valid/word_ppl`, ...), shared by both trackers.
//! - [`wandb`]: Weights & Biases through the official `wandb` Python package in a
//!   sidecar process (`ausa report ... --wandb`); no network code here.
//!
//! It depends on no other ausa crate and never links libtorch.
//!
//! ```no_run
//! use ausa_track::tfevents::EventWriter;
//! let mut tb = EventWriter::create(std::path::Path::new("runs/r1/tb"))?;
//! tb.scalars(1, &[("train/loss".into(), 6.9)])?; // one record, on disk when it returns
//! # Ok::<(), ausa_track::TrackError>(())
//! ```

use std::path::{Path, PathBuf};

pub mod scalars;
pub mod tfevents;
pub mod wandb;

/// Errors of the trackers.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not what it should be.
    #[error("{}: {message}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line or byte.
        message: String,
    },
    /// The Python interpreter could not be started.
    #[error("cannot run {}: {source}", python.display())]
    Python {
        /// The interpreter.
        python: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The Python has no `wandb` package.
    #[error("{} has no `wandb` package", python.display())]
    NoWandb {
        /// The interpreter.
        python: PathBuf,
    },
    /// The sidecar failed (wandb printed why on stderr).
    #[error("wandb: {0}")]
    Sidecar(String),
}

impl TrackError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrackError + '_ {
        move |source| TrackError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            TrackError::Python { python, .. } => Some(format!(
                "install Python 3 (with `wandb`: {} -m pip install wandb), or name one with --python",
                python.display()
            )),
            TrackError::NoWandb { python } => Some(format!(
                "install it: {} -m pip install wandb (or name another Python with --python)",
                python.display()
            )),
            _ => None,
        }
    }
}
