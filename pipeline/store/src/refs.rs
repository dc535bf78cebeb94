//! Named refs: `refs/<dag>/<stage>` records the object a DAG's stage last built.
//!
//! A ref file is JSON `{"kind", "fingerprint", "key"}`. The key is copied in so that
//! `ausa explain` can say why a stage rebuilds even after `gc` removed the old object.
//! Refs are replaced atomically (temp file + rename) and written only after their
//! object is published, so a ref never points at a partial object.

use serde::{Deserialize, Serialize};

use crate::fsutil::write_atomic;
use crate::{ObjectId, Store, StoreError};

/// The content of a ref.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ref {
    /// Stage kind of the object.
    pub kind: String,
    /// Fingerprint of the object.
    pub fingerprint: String,
    /// The canonical key it was built from.
    pub key: serde_json::Value,
}

impl Ref {
    /// The object this ref points to.
    pub fn object(&self) -> ObjectId {
        ObjectId {
            kind: self.kind.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

/// A ref as listed by [`Store::list_refs`]: its name, and its content or why it is unreadable.
pub type RefEntry = (RefName, Result<Ref, StoreError>);

/// A ref's name: DAG and stage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefName {
    /// DAG name.
    pub dag: String,
    /// Stage name.
    pub stage: String,
}

impl std::fmt::Display for RefName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dag, self.stage)
    }
}

impl Store {
    fn ref_path(&self, name: &RefName) -> std::path::PathBuf {
        self.root().join("refs").join(&name.dag).join(&name.stage)
    }

    /// Reads a ref; `None` if the stage was never built in this store.
    pub fn read_ref(&self, name: &RefName) -> Result<Option<Ref>, StoreError> {
        let path = self.ref_path(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Ref {
                    path,
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io(&path, e)),
        }
    }

    /// Points `name` at an object (atomically replacing the old ref).
    pub fn write_ref(&self, name: &RefName, r: &Ref) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(r).expect("refs serialize");
        write_atomic(&self.ref_path(name), &bytes)
    }

    /// Every ref in the store, sorted by name. Unreadable refs are returned as errors
    /// in place so one bad file does not hide the others.
    pub fn list_refs(&self) -> Result<Vec<RefEntry>, StoreError> {
        let refs = self.root().join("refs");
        let mut out = Vec::new();
        for dag in crate::fsutil::sorted_dir_names(&refs)? {
            let dir = refs.join(&dag);
            let mut stages: Vec<String> = std::fs::read_dir(&dir)
                .map_err(|e| StoreError::io(&dir, e))?
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with(".tmp."))
                .collect();
            stages.sort();
            for stage in stages {
                let name = RefName {
                    dag: dag.clone(),
                    stage,
                };
                let r = self.read_ref(&name).and_then(|r| {
                    r.ok_or_else(|| StoreError::Ref {
                        path: self.ref_path(&name),
                        reason: "vanished".into(),
                    })
                });
                out.push((name, r));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip_and_list_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = Ref {
            kind: "corpus".into(),
            fingerprint: "f".repeat(64),
            key: serde_json::json!({"a": 1}),
        };
        let b = RefName {
            dag: "demo".into(),
            stage: "b".into(),
        };
        let a = RefName {
            dag: "demo".into(),
            stage: "a".into(),
        };
        assert_eq!(store.read_ref(&a).unwrap(), None);
        store.write_ref(&b, &r).unwrap();
        store.write_ref(&a, &r).unwrap();
        assert_eq!(store.read_ref(&a).unwrap(), Some(r.clone()));
        let names: Vec<_> = store
            .list_refs()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(names, ["demo:a", "demo:b"]);
        std::fs::write(store.root().join("refs/demo/a"), b"{garbage").unwrap();
        assert!(matches!(store.read_ref(&a), Err(StoreError::Ref { .. })));
    }
}
