//! The one error type of this crate.

use std::path::PathBuf;

/// An artifact file could not be written or read, or does not have the expected format.
///
/// Every variant names the file, so a message is useful without further context.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The file system refused an operation on the file.
    #[error("I/O error on `{}`", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The Parquet library failed to encode or decode the file.
    #[error("Parquet error in `{}`", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// The file is readable but its columns or values do not match the format.
    #[error("`{}` is not a valid artifact table: {detail}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// What is wrong (names the column and what was expected).
        detail: String,
    },
}

impl ArtifactError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> ArtifactError {
        ArtifactError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn parquet(
        path: &std::path::Path,
        source: impl Into<parquet::errors::ParquetError>,
    ) -> ArtifactError {
        ArtifactError::Parquet {
            path: path.to_path_buf(),
            source: source.into(),
        }
    }

    pub(crate) fn schema(path: &std::path::Path, detail: impl Into<String>) -> ArtifactError {
        ArtifactError::Schema {
            path: path.to_path_buf(),
            detail: detail.into(),
        }
    }
}
