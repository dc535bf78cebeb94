//! The object directories of a resolved plan, and the artifact readers opened from
//! them.

use std::path::{Path, PathBuf};

use ausa_artifacts::{SetArtifacts, SetPaths, Split};
use ausa_store::Store;

use crate::{BuildError, Resolved};

/// One planned stage's published object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDir {
    /// Stage name in the DAG.
    pub stage: String,
    /// Stage kind.
    pub kind: String,
    /// Fingerprint.
    pub fingerprint: String,
    /// The read-only object directory (absolute when the store root is).
    pub dir: PathBuf,
}

/// The object directories of every stage of a plan, upstreams first: what a reader
/// needs to open the target's artifacts.
#[derive(Debug, Clone)]
pub struct ObjectDirs {
    dag: String,
    target: Vec<String>,
    objects: Vec<ObjectDir>,
}

impl ObjectDirs {
    /// The objects of a plan named `dag` whose target selected `target`.
    pub(crate) fn new(dag: &str, target: &[String], objects: Vec<ObjectDir>) -> ObjectDirs {
        ObjectDirs {
            dag: dag.to_string(),
            target: target.to_vec(),
            objects,
        }
    }

    /// Every planned stage's object; [`BuildError::NotBuilt`] for the first missing.
    pub(crate) fn of_plan(store: &Store, resolved: &Resolved) -> Result<ObjectDirs, BuildError> {
        let mut objects = Vec::with_capacity(resolved.plan.stages.len());
        for stage in &resolved.plan.stages {
            let id = ausa_engine::object_id(stage);
            if !store.has_object(&id) {
                return Err(BuildError::NotBuilt {
                    dag: resolved.plan.dag.clone(),
                    stage: stage.name.clone(),
                    fingerprint: stage.fingerprint.clone(),
                });
            }
            objects.push(ObjectDir {
                stage: stage.name.clone(),
                kind: stage.kind.clone(),
                fingerprint: stage.fingerprint.clone(),
                dir: store.object_dir(&id),
            });
        }
        Ok(ObjectDirs::new(
            &resolved.plan.dag,
            &resolved.stages,
            objects,
        ))
    }

    /// All objects, upstreams first.
    pub fn iter(&self) -> impl Iterator<Item = &ObjectDir> {
        self.objects.iter()
    }

    /// The object of stage `name`.
    pub fn stage(&self, name: &str) -> Option<&ObjectDir> {
        self.objects.iter().find(|o| o.stage == name)
    }

    /// The one object of stage kind `kind` in the plan (a target's chain has one
    /// `banks`, one `minhash`, ...).
    pub fn by_kind(&self, kind: &str) -> Result<&ObjectDir, BuildError> {
        let mut found = self.objects.iter().filter(|o| o.kind == kind);
        let first = found.next().ok_or_else(|| BuildError::NoStageOfKind {
            dag: self.dag.clone(),
            target: match self.target.is_empty() {
                true => "*".into(),
                false => self.target.join(","),
            },
            kind: kind.to_string(),
        })?;
        let rest: Vec<&ObjectDir> = found.collect();
        if !rest.is_empty() {
            return Err(BuildError::AmbiguousKind {
                dag: self.dag.clone(),
                kind: kind.to_string(),
                stages: std::iter::once(first)
                    .chain(rest)
                    .map(|o| o.stage.clone())
                    .collect(),
            });
        }
        Ok(first)
    }

    /// The directory of the one stage of kind `kind`.
    pub fn dir_of_kind(&self, kind: &str) -> Result<&Path, BuildError> {
        self.by_kind(kind).map(|o| o.dir.as_path())
    }

    /// The paths of `split`'s set artifacts (sequences, banks, signatures, routing)
    /// in this plan's objects.
    pub fn set_paths(&self, split: Split) -> Result<SetPaths, BuildError> {
        Ok(SetPaths::new(
            split,
            self.dir_of_kind("sequences")?,
            self.dir_of_kind("banks")?,
            self.dir_of_kind("minhash")?,
            self.dir_of_kind("routing")?,
        ))
    }

    /// Opens and cross-checks `split`'s set artifacts.
    pub fn set_artifacts(&self, split: Split) -> Result<SetArtifacts, BuildError> {
        Ok(SetArtifacts::open(&self.set_paths(split)?)?)
    }
}
