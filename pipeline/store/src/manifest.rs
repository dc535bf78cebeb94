//! `manifest.json`: the commit point of an object.
//!
//! ```json
//! {
//!   "format": "ausa-manifest/1",
//!   "kind": "corpus",
//!   "fingerprint": "<64 hex: blake3 of the canonical key>",
//!   "key": { ... the canonical key, so `ausa explain` can diff it ... },
//!   "files": [ {"name": "documents.parquet", "size": 123, "blake3": "<64 hex>"} ],
//!   "stats": { ... stage statistics ... },
//!   "tool_version": "0.1.0",
//!   "built": {"host": "gpu-3", "time": "2026-11-22T22:10:00Z", "seconds": 1.25}
//! }
//! ```
//!
//! `built` is informational only: it never enters a fingerprint or a comparison.
//! File names are relative paths inside the object directory; a manifest naming an
//! absolute path, a `..` component, or itself is rejected when read, so nothing can
//! be made to read or hash outside the object.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The manifest's file name inside every object directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// The file beside the manifest holding the blake3 (hex) of the manifest's bytes, so
/// that an edited manifest (statistics, sizes) is caught by every check.
pub const MANIFEST_DIGEST_NAME: &str = "manifest.blake3";
/// The manifest layout version.
pub const MANIFEST_FORMAT: &str = "ausa-manifest/1";

/// One file of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Path relative to the object directory, `/`-separated.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// blake3 of the content, lowercase hex.
    pub blake3: String,
}

/// Informational data about the build that produced an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildInfo {
    /// Host name of the builder.
    pub host: String,
    /// RFC 3339 time the object was published.
    pub time: String,
    /// Wall time of the stage in seconds.
    pub seconds: f64,
}

/// The manifest of an object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`].
    pub format: String,
    /// The stage kind.
    pub kind: String,
    /// The object's fingerprint.
    pub fingerprint: String,
    /// The canonical key the fingerprint hashes.
    pub key: serde_json::Value,
    /// Every file of the object except the manifest, sorted by name.
    pub files: Vec<FileEntry>,
    /// Stage statistics.
    pub stats: serde_json::Value,
    /// The `ausa` version that built it.
    pub tool_version: String,
    /// Who built it and when (informational).
    pub built: BuildInfo,
}

impl Manifest {
    /// Total size of the object's files in bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Reads and validates the manifest of the object at `dir`, which must be named
    /// `<kind>/<fingerprint>`.
    pub fn read(dir: &Path) -> Result<Manifest, StoreError> {
        Manifest::read_with_bytes(dir).map(|(m, _)| m)
    }

    /// Like [`Manifest::read`], also returning the manifest's bytes (to check them
    /// against [`MANIFEST_DIGEST_NAME`]).
    pub fn read_with_bytes(dir: &Path) -> Result<(Manifest, Vec<u8>), StoreError> {
        let path = dir.join(MANIFEST_NAME);
        let bytes = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
        let dir_fp = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let dir_kind = dir
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .unwrap_or("");
        let id = crate::ObjectId {
            kind: dir_kind.to_string(),
            fingerprint: dir_fp.to_string(),
        };
        Manifest::parse(&bytes, &id, &path).map(|m| (m, bytes))
    }

    /// Parses and validates manifest bytes that must describe `id` (the same rules as
    /// [`Manifest::read`]). `origin` names the bytes in errors: a file, or a remote URL
    /// for a manifest that was downloaded and is not trusted yet.
    pub fn parse(
        bytes: &[u8],
        id: &crate::ObjectId,
        origin: &Path,
    ) -> Result<Manifest, StoreError> {
        let bad = |reason: String| StoreError::Manifest {
            path: origin.to_path_buf(),
            reason,
        };
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(bad(format!("unknown format `{}`", manifest.format)));
        }
        let (dir_kind, dir_fp) = (id.kind.as_str(), id.fingerprint.as_str());
        if manifest.fingerprint != dir_fp || manifest.kind != dir_kind {
            return Err(bad(format!(
                "it describes {}/{} but lies in {dir_kind}/{dir_fp}",
                manifest.kind, manifest.fingerprint
            )));
        }
        let mut names = std::collections::BTreeSet::new();
        for file in &manifest.files {
            check_file_name(&file.name)
                .map_err(|why| bad(format!("file `{}`: {why}", file.name)))?;
            if !names.insert(file.name.as_str()) {
                return Err(bad(format!("file `{}` is listed twice", file.name)));
            }
        }
        Ok(manifest)
    }
}

/// The content of [`MANIFEST_DIGEST_NAME`] for manifest `bytes`.
pub(crate) fn manifest_digest(bytes: &[u8]) -> String {
    format!("{}\n", blake3::hash(bytes).to_hex())
}

/// Accepts only plain relative paths that stay inside the object directory.
pub fn check_file_name(name: &str) -> Result<(), &'static str> {
    let path = Path::new(name);
    if name.is_empty() || name.contains('\\') || name.contains('\0') {
        return Err("not a plain relative path");
    }
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("path leaves the object directory (absolute or `..`)");
    }
    if name == MANIFEST_NAME || name == MANIFEST_DIGEST_NAME {
        return Err("the manifest cannot list itself or its digest");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_rejected() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "./a",
            "a\\b",
            MANIFEST_NAME,
            MANIFEST_DIGEST_NAME,
        ] {
            assert!(check_file_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a.parquet", "sub/b.arrow"] {
            assert!(check_file_name(good).is_ok(), "{good:?}");
        }
    }
}
