//! Checking objects against their manifests.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::fsutil::list_files;
use crate::hash::hash_file;
use crate::manifest::{Manifest, MANIFEST_NAME};
use crate::{ObjectId, Store, StoreError};

/// How thoroughly to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// Existence, file type and size (a few `stat` calls: used on every no-op build).
    Sizes,
    /// Sizes plus the blake3 of every byte (before a stage reads its inputs, `verify`).
    Full,
}

/// One mismatch between an object and its manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong.
    pub what: String,
}

impl Store {
    /// Checks an object; returns its manifest and every problem found.
    ///
    /// `fingerprint_of` recomputes a fingerprint from a key (the DAG layer owns the key
    /// encoding), so a manifest whose key was edited is caught too.
    pub fn verify_object(
        &self,
        id: &ObjectId,
        mode: VerifyMode,
        fingerprint_of: &dyn Fn(&serde_json::Value) -> String,
    ) -> Result<(Manifest, Vec<Problem>), StoreError> {
        let dir = self.object_dir(id);
        let manifest = Manifest::read(&dir)?;
        let mut problems = Vec::new();
        if fingerprint_of(&manifest.key) != id.fingerprint {
            problems.push(Problem {
                path: dir.join(MANIFEST_NAME),
                what: "the key in the manifest does not hash to the object's fingerprint".into(),
            });
        }
        let results: Vec<Option<Problem>> = {
            use rayon::prelude::*;
            manifest
                .files
                .par_iter()
                .map(|f| check_file(&dir, f, mode))
                .collect()
        };
        problems.extend(results.into_iter().flatten());
        let listed: BTreeSet<PathBuf> = manifest
            .files
            .iter()
            .map(|f| PathBuf::from(&f.name))
            .collect();
        match list_files(&dir) {
            Ok(found) => problems.extend(
                found
                    .into_iter()
                    .filter(|p| p != &PathBuf::from(MANIFEST_NAME) && !listed.contains(p))
                    .map(|p| Problem {
                        path: dir.join(p),
                        what: "file is not in the manifest".into(),
                    }),
            ),
            Err(e) => problems.push(Problem {
                path: dir.clone(),
                what: e.to_string(),
            }),
        }
        Ok((manifest, problems))
    }

    /// Like [`Store::verify_object`], but any problem becomes a [`StoreError::Corrupt`].
    pub fn check_object(
        &self,
        id: &ObjectId,
        mode: VerifyMode,
        fingerprint_of: &dyn Fn(&serde_json::Value) -> String,
    ) -> Result<Manifest, StoreError> {
        let (manifest, problems) = self.verify_object(id, mode, fingerprint_of)?;
        if problems.is_empty() {
            Ok(manifest)
        } else {
            Err(StoreError::Corrupt {
                dir: self.object_dir(id),
                problems: problems
                    .iter()
                    .map(|p| format!("{}: {}", p.path.display(), p.what))
                    .collect(),
            })
        }
    }
}

fn check_file(
    dir: &std::path::Path,
    entry: &crate::FileEntry,
    mode: VerifyMode,
) -> Option<Problem> {
    let path = dir.join(&entry.name);
    let problem = |what: String| {
        Some(Problem {
            path: path.clone(),
            what,
        })
    };
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) => return problem(format!("cannot read: {e}")),
    };
    if !meta.file_type().is_file() {
        return problem("is not a regular file (symlinks are not allowed in objects)".into());
    }
    if meta.len() != entry.size {
        return problem(format!(
            "size is {} bytes, the manifest says {} (truncated or overwritten)",
            meta.len(),
            entry.size
        ));
    }
    if mode == VerifyMode::Full {
        match hash_file(&path) {
            Ok((digest, _)) if digest != entry.blake3 => {
                return problem(format!(
                    "blake3 is {}, the manifest says {}",
                    &digest[..16],
                    &entry.blake3[..16.min(entry.blake3.len())]
                ));
            }
            Ok(_) => {}
            Err(e) => return problem(format!("cannot read: {e}")),
        }
    }
    None
}
