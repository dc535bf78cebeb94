//! Checking objects against their manifests.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::fsutil::list_files;
use crate::hash::hash_file;
use crate::manifest::{manifest_digest, Manifest, MANIFEST_DIGEST_NAME, MANIFEST_NAME};
use crate::{ObjectId, Store, StoreError};

/// How thoroughly to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// Existence, file type and size (a few `stat` calls: used on every no-op build).
    Sizes,
    /// Sizes plus the blake3 of every byte (before a stage reads its inputs, `verify`).
    Full,
}

/// What a check of an object found.
#[derive(Debug, Clone)]
pub enum Health {
    /// There is no object (never built, or removed).
    Absent,
    /// The object matches its manifest.
    Sound(Box<Manifest>),
    /// The bytes on disk disagree with the manifest (or the directory is not a real
    /// object directory). Never reported for an object that vanished during the check.
    Damaged(Vec<Problem>),
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
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(StoreError::Corrupt {
                dir: dir.clone(),
                problems: vec![format!(
                    "{}: the object directory is a symlink (objects must be real directories \
                     inside the store)",
                    dir.display()
                )],
            });
        }
        let (manifest, bytes) = Manifest::read_with_bytes(&dir)?;
        let mut problems = Vec::new();
        let digest_path = dir.join(MANIFEST_DIGEST_NAME);
        match std::fs::read(&digest_path) {
            Ok(d) if d == manifest_digest(&bytes).as_bytes() => {}
            Ok(_) => problems.push(Problem {
                path: dir.join(MANIFEST_NAME),
                what: format!(
                    "the manifest was edited after publishing (its blake3 does not match {MANIFEST_DIGEST_NAME})"
                ),
            }),
            Err(e) => problems.push(Problem {
                path: digest_path,
                what: format!("cannot read the manifest's digest: {e}"),
            }),
        }
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
                    .filter(|p| {
                        p != &PathBuf::from(MANIFEST_NAME)
                            && p != &PathBuf::from(MANIFEST_DIGEST_NAME)
                            && !listed.contains(p)
                    })
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

    /// Checks an object and says whether it is absent, sound or damaged.
    ///
    /// "Damaged" means the bytes disagree with the manifest: an object that disappears
    /// or is replaced (`gc`, `--force` elsewhere) while it is checked is reported absent
    /// or checked again, never damaged.
    pub fn health(
        &self,
        id: &ObjectId,
        mode: VerifyMode,
        fingerprint_of: &dyn Fn(&serde_json::Value) -> String,
    ) -> Result<Health, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.object_dir(id);
        let identity = |dir: &std::path::Path| {
            std::fs::symlink_metadata(dir)
                .ok()
                .map(|m| (m.dev(), m.ino()))
        };
        let mut retries = 3;
        loop {
            let Some(before) = identity(&dir) else {
                return Ok(Health::Absent);
            };
            let problems = match self.verify_object(id, mode, fingerprint_of) {
                Ok((manifest, problems)) if problems.is_empty() => {
                    return Ok(Health::Sound(Box::new(manifest)))
                }
                Ok((_, problems)) => problems,
                Err(StoreError::Corrupt { problems, .. }) => problems
                    .into_iter()
                    .map(|what| Problem {
                        path: dir.clone(),
                        what,
                    })
                    .collect(),
                Err(e @ StoreError::Manifest { .. }) => vec![Problem {
                    path: dir.join(MANIFEST_NAME),
                    what: e.to_string(),
                }],
                Err(StoreError::Io { path, source })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    vec![Problem {
                        path,
                        what: "missing (the object has no manifest)".into(),
                    }]
                }
                Err(e) => return Err(e),
            };
            match identity(&dir) {
                None => return Ok(Health::Absent),
                Some(after) if after == before => return Ok(Health::Damaged(problems)),
                Some(_) if retries > 0 => retries -= 1,
                Some(_) => return Ok(Health::Damaged(problems)),
            }
        }
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
