//! Store errors. Every variant names the file at fault.

use std::path::{Path, PathBuf};

/// An error from the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error (`StorageFull` for a full disk).
        source: std::io::Error,
    },
    /// A manifest that does not parse or breaks the rules (unsafe paths, wrong object).
    #[error("invalid manifest {}: {reason}", path.display())]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A ref file that does not parse.
    #[error("invalid ref {}: {reason}", path.display())]
    Ref {
        /// The ref file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An object whose files do not match its manifest.
    #[error("object {} is corrupted: {}", dir.display(), problems.join("; "))]
    Corrupt {
        /// The object directory.
        dir: PathBuf,
        /// One line per mismatch.
        problems: Vec<String>,
    },
    /// A stage wrote something that cannot be published (a symlink, a special file).
    #[error("cannot publish {}: {reason}", path.display())]
    Unpublishable {
        /// The offending path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl StoreError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether this error means an artifact is damaged (the remedy is a forced rebuild).
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. } | StoreError::Manifest { .. }
        )
    }
}
