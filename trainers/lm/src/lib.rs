//! The ausa language-model trainer (`ausa train lm`): a decoder-only transformer in `tch`
//! fed from the set artifacts.
//!
//! - [`model`]: the transformer with `dot-naive`, `sdpa` or `ska` attention.
//! - [`data`]: a split's set artifacts as zero-copy tensors, gathered per batch.
//! - [`train`]: the loop (seeded sampler, AdamW, warmup + cosine, clipping,
//!   accumulation, fp32/bf16/fp16), evaluation (token and word perplexity, bits per byte),
//!   metrics, `run_meta.json`, safetensors checkpoints and exact resume.
//! - [`bench`](mod@bench): `--benchmark`, the timed training step as a row of the benchmark CSV.
//! - [`device`]: `--device auto|cpu|cuda` (loads libtorch's CUDA library itself).
//! - [`memory`]: `--memory-safe`'s shapes from the free VRAM, out-of-memory errors.
//!
//! This crate reads artifacts only through `ausa-artifacts` and never touches the store
//! or the pipeline; the CLI resolves the DAG and passes artifact paths in.
//!
//! ```no_run
//! use ausa_train::data::SplitData;
//! # fn paths() -> ausa_artifacts::SetPaths { unimplemented!() }
//! let train = SplitData::open(&paths())?;
//! let batch = train.batch(&[0, 1]); // [2, L] tokens and the batch's sets
//! # Ok::<(), ausa_train::Error>(())
//! ```

pub mod bench;
pub mod data;
pub mod device;
pub mod memory;
pub mod model;
pub mod ska_bench;
pub mod train;

/// Errors of the trainer; [`Error::exit_code`] maps them to the CLI's exit codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad flag or flag combination (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A missing, mismatched or corrupt artifact.
    #[error("{0}")]
    Artifact(String),
    /// A checkpoint that cannot be resumed.
    #[error("{0}")]
    Checkpoint(String),
    /// A file in the run directory.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(String),
    /// The device ran out of memory; the message names the flags to lower.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// Writing the TensorBoard event file failed.
    #[error("tensorboard: {0}")]
    Track(#[from] ausa_track::TrackError),
}

impl Error {
    /// 2 for usage errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Error {
        Error::Torch(e.to_string())
    }
}

#[cfg(test)]
mod tests;
