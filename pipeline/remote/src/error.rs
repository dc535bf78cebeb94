//! Remote errors. Every variant names the remote location or local file at fault.

use ausa_store::StoreError;

/// An error from a remote.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The remote URL cannot be used.
    #[error("remote `{url}`: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// The object store (S3, the directory) failed: network, credentials, permissions.
    #[error("{location}: {source}")]
    Backend {
        /// The remote location.
        location: String,
        /// The backend's error.
        source: Box<object_store::Error>,
    },
    /// Downloaded content failed validation (unsafe manifest, hash mismatch,
    /// truncation); nothing was published.
    #[error("rejected {location}: {reason}")]
    Untrusted {
        /// The remote location.
        location: String,
        /// What is wrong.
        reason: String,
    },
    /// The remote does not have an object that was asked for.
    #[error("the remote has no object {object}")]
    NotOnRemote {
        /// `kind/fingerprint`.
        object: String,
    },
    /// The local store failed (including a local object that does not match its
    /// manifest: such an object is never pushed).
    #[error(transparent)]
    Store(#[from] StoreError),
}
