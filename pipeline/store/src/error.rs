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
    /// The path is not a store (commands that only read never create one).
    #[error("no store at {}: {reason}", root.display())]
    NoStore {
        /// The path given.
        root: PathBuf,
        /// What is there instead.
        reason: String,
    },
    /// The store path names something that is not a directory.
    #[error("the store path {} is not a directory", root.display())]
    NotADirectory {
        /// The path given.
        root: PathBuf,
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

    /// Whether the store path itself is wrong (a usage error: exit 2).
    pub fn is_bad_store_path(&self) -> bool {
        matches!(
            self,
            StoreError::NoStore { .. } | StoreError::NotADirectory { .. }
        )
    }

    /// What to do about this error, when the store knows: a full disk, a directory the
    /// user may not write, a store path that is wrong.
    pub fn hint(&self) -> Option<String> {
        match self {
            StoreError::Io { path, source } => io_hint(path, source),
            StoreError::NoStore { .. } => Some(
                "check --store / $AUSA_STORE; `ausa build` or `ausa pull` creates a store".into(),
            ),
            StoreError::NotADirectory { .. } => Some(
                "--store takes the store's directory (e.g. ~/.cache/ausa), not a file in it".into(),
            ),
            _ => None,
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

/// The hint for an OS error on `path`, shared by every place the store writes.
pub fn io_hint(path: &Path, e: &std::io::Error) -> Option<String> {
    use std::io::ErrorKind;
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(path)
    };
    match e.kind() {
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            Some("the disk is full: free space or point --store at another disk".into())
        }
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => Some(format!(
            "you cannot write {}: ask the store's owner for group write access \
             (docs/store.md, \"Sharing a store\"), or use a store of your own with --store DIR",
            dir.display()
        )),
        _ => None,
    }
}
