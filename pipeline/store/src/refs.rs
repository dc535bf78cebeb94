//! Refs per configuration: `refs/<dag>/<config>/<stage>` records the object that a
//! configuration of a DAG built for a stage.
//!
//! A configuration is a DAG name plus its canonical `--set` overrides ([`Config`]); its
//! directory `refs/<dag>/<config id>/` holds one ref file per stage and `.config`, JSON
//! `{"dag", "overrides"}`, rewritten whenever a ref of the configuration changes, so its
//! mtime says when the configuration last built something (the sweep policies of
//! `ausa gc` read it). A ref file is JSON `{"kind", "fingerprint", "key"}`; the key is
//! copied in so that `ausa explain` can say why a stage rebuilds even after `gc` removed
//! the old object. Refs are replaced atomically (temp file + rename), written only after
//! their object is published, and only when they change: a no-op build writes nothing.
//!
//! Stores made before configurations existed have `refs/<dag>/<stage>` files; they are
//! listed with the configuration id `legacy`, still keep their objects, and are never
//! swept by a policy.

use std::path::PathBuf;
use std::time::SystemTime;

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

/// The id of the configuration without overrides.
pub const DEFAULT_CONFIG: &str = "default";
/// The id under which refs of the old layout (`refs/<dag>/<stage>`) are listed.
pub const LEGACY_CONFIG: &str = "legacy";
/// The file in a configuration's ref directory that records the configuration.
const CONFIG_FILE: &str = ".config";

/// A configuration: a DAG and the `--set` overrides it was built with.
///
/// Its identity never includes paths, hosts or times, so every user and machine that
/// builds `demo --set corpus.docs=500` shares one configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Config {
    /// The DAG's name.
    pub dag: String,
    /// Canonical overrides `stage.param=value`: one per `stage.param` (the last given
    /// wins, as when they are applied), sorted.
    pub overrides: Vec<String>,
}

impl Config {
    /// The configuration of `dag` with `overrides` (`stage.param=value`, values in
    /// canonical form: the caller renders parsed values, so `docs=0500` and `docs=500`
    /// are one configuration). Order does not matter; for a repeated `stage.param` the
    /// last one wins.
    pub fn new<S: AsRef<str>>(dag: &str, overrides: &[S]) -> Config {
        let mut by_name = std::collections::BTreeMap::new();
        for o in overrides {
            let o = o.as_ref().trim();
            let name = o.split_once('=').map_or(o, |(n, _)| n).trim();
            by_name.insert(name.to_string(), o.to_string());
        }
        Config {
            dag: dag.to_string(),
            overrides: by_name.into_values().collect(),
        }
    }

    /// The configuration's directory name under `refs/<dag>/`: `default` without
    /// overrides, else 16 hex digits of the blake3 of its canonical JSON.
    pub fn id(&self) -> String {
        if self.overrides.is_empty() {
            return DEFAULT_CONFIG.into();
        }
        let text = serde_json::to_string(&self.overrides).expect("strings serialize");
        blake3::hash(format!("{}\n{text}", self.dag).as_bytes()).to_hex()[..16].to_string()
    }

    /// `demo` or `demo --set a.b=1 --set c.d=2`, for people.
    pub fn label(&self) -> String {
        let mut out = self.dag.clone();
        for o in &self.overrides {
            out.push_str(" --set ");
            out.push_str(o);
        }
        out
    }

    /// The ref of `stage` in this configuration.
    pub fn ref_name(&self, stage: &str) -> RefName {
        RefName {
            dag: self.dag.clone(),
            config: self.id(),
            stage: stage.to_string(),
        }
    }
}

/// A ref as listed by [`Store::list_refs`]: its name, and its content or why it is unreadable.
pub type RefEntry = (RefName, Result<Ref, StoreError>);

/// A ref's name: DAG, configuration id and stage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefName {
    /// DAG name.
    pub dag: String,
    /// The configuration's id ([`Config::id`]), or [`LEGACY_CONFIG`].
    pub config: String,
    /// Stage name.
    pub stage: String,
}

impl std::fmt::Display for RefName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.config == DEFAULT_CONFIG {
            write!(f, "{}:{}", self.dag, self.stage)
        } else {
            write!(f, "{}@{}:{}", self.dag, self.config, self.stage)
        }
    }
}

/// A configuration found in the store.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigInfo {
    /// The DAG.
    pub dag: String,
    /// Its id (directory name), or [`LEGACY_CONFIG`].
    pub id: String,
    /// Its overrides, when recorded (not for legacy refs or an unreadable record).
    pub overrides: Option<Vec<String>>,
    /// When it last built or changed a ref (store clock); `None` when unknown.
    #[serde(skip)]
    pub last_built: Option<SystemTime>,
    /// Its stages' refs.
    pub stages: Vec<String>,
}

impl ConfigInfo {
    /// `demo`, `demo --set ...`, or `demo@<id>` when the overrides are unknown.
    pub fn label(&self) -> String {
        match &self.overrides {
            Some(o) => Config::new(&self.dag, o).label(),
            None => format!("{}@{}", self.dag, self.id),
        }
    }
}

impl Store {
    fn ref_path(&self, name: &RefName) -> PathBuf {
        let dag = self.root().join("refs").join(&name.dag);
        if name.config == LEGACY_CONFIG {
            dag.join(&name.stage)
        } else {
            dag.join(&name.config).join(&name.stage)
        }
    }

    /// Reads a ref; `None` if the stage was never built in this configuration.
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

    /// Points `name` at an object (atomically replacing the old ref). Prefer
    /// [`Store::record_ref`], which also records the configuration.
    pub fn write_ref(&self, name: &RefName, r: &Ref) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(r).expect("refs serialize");
        write_atomic(&self.ref_path(name), &bytes)
    }

    /// Points `stage` of `config` at `r` unless it already points there; records the
    /// configuration. Returns whether anything was written.
    pub fn record_ref(&self, config: &Config, stage: &str, r: &Ref) -> Result<bool, StoreError> {
        let name = config.ref_name(stage);
        if self.read_ref(&name).ok().flatten().as_ref() == Some(r) {
            return Ok(false);
        }
        crate::hooks::point("ref:before");
        self.write_ref(&name, r)?;
        let record = serde_json::json!({"dag": config.dag, "overrides": config.overrides});
        let path = self.ref_path(&RefName {
            stage: CONFIG_FILE.into(),
            ..name
        });
        write_atomic(&path, record.to_string().as_bytes())?;
        crate::hooks::point("ref:after");
        Ok(true)
    }

    /// Every ref in the store, sorted by name. Unreadable refs are returned as errors
    /// in place so one bad file does not hide the others.
    pub fn list_refs(&self) -> Result<Vec<RefEntry>, StoreError> {
        let mut out = Vec::new();
        for info in self.list_configs()? {
            for stage in &info.stages {
                let name = RefName {
                    dag: info.dag.clone(),
                    config: info.id.clone(),
                    stage: stage.clone(),
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
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Every configuration with refs in the store, by DAG then id.
    pub fn list_configs(&self) -> Result<Vec<ConfigInfo>, StoreError> {
        let refs = self.root().join("refs");
        let mut out = Vec::new();
        for dag in crate::fsutil::sorted_dir_names(&refs)? {
            let dir = refs.join(&dag);
            let mut legacy = Vec::new();
            let mut configs = Vec::new();
            for entry in std::fs::read_dir(&dir)
                .map_err(|e| StoreError::io(&dir, e))?
                .filter_map(Result::ok)
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    continue;
                }
                match entry.file_type() {
                    Ok(t) if t.is_file() => legacy.push(name),
                    Ok(t) if t.is_dir() => configs.push(name),
                    _ => {}
                }
            }
            legacy.sort();
            configs.sort();
            if !legacy.is_empty() {
                out.push(ConfigInfo {
                    dag: dag.clone(),
                    id: LEGACY_CONFIG.into(),
                    overrides: None,
                    last_built: None,
                    stages: legacy,
                });
            }
            for id in configs {
                let cdir = dir.join(&id);
                let record = cdir.join(CONFIG_FILE);
                let overrides = std::fs::read(&record)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .and_then(|v| serde_json::from_value(v["overrides"].clone()).ok());
                let last_built = std::fs::metadata(&record).and_then(|m| m.modified()).ok();
                let mut stages: Vec<String> = std::fs::read_dir(&cdir)
                    .map_err(|e| StoreError::io(&cdir, e))?
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect();
                stages.sort();
                out.push(ConfigInfo {
                    dag: dag.clone(),
                    id,
                    overrides,
                    last_built,
                    stages,
                });
            }
        }
        Ok(out)
    }

    /// Removes a configuration's refs (a sweep policy of `gc`).
    pub(crate) fn remove_config(&self, info: &ConfigInfo) -> Result<(), StoreError> {
        let dir = self.root().join("refs").join(&info.dag).join(&info.id);
        match crate::fsutil::remove_tree(&dir) {
            // A build of this configuration wrote a ref meanwhile: it is in use again.
            Err(StoreError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::DirectoryNotEmpty =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_round_trip_and_list_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let r = Ref {
            kind: "corpus".into(),
            fingerprint: "f".repeat(64),
            key: serde_json::json!({"a": 1}),
        };
        let config = Config::new::<&str>("demo", &[]);
        let b = config.ref_name("b");
        let a = config.ref_name("a");
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
        std::fs::write(store.root().join("refs/demo/default/a"), b"{garbage").unwrap();
        assert!(matches!(store.read_ref(&a), Err(StoreError::Ref { .. })));
    }

    #[test]
    fn configurations_are_canonical_and_record_their_overrides() {
        let a = Config::new("demo", &["corpus.docs=500", "corpus.seed=1"]);
        let b = Config::new(
            "demo",
            &["corpus.seed=1", "corpus.docs=9", "corpus.docs=500"],
        );
        assert_eq!(a, b);
        assert_eq!(a.id(), b.id());
        assert_ne!(a.id(), Config::new("demo", &["corpus.docs=501"]).id());
        assert_ne!(
            a.id(),
            Config::new("other", &["corpus.docs=500", "corpus.seed=1"]).id()
        );
        assert_eq!(Config::new::<&str>("demo", &[]).id(), DEFAULT_CONFIG);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(dir.path()).unwrap();
        let r = Ref {
            kind: "corpus".into(),
            fingerprint: "f".repeat(64),
            key: serde_json::json!({}),
        };
        assert!(store.record_ref(&a, "corpus", &r).unwrap());
        assert!(
            !store.record_ref(&a, "corpus", &r).unwrap(),
            "unchanged: no write"
        );
        let configs = store.list_configs().unwrap();
        assert_eq!(configs.len(), 1);
        assert_eq!(configs[0].overrides.as_ref(), Some(&a.overrides));
        assert_eq!(configs[0].stages, ["corpus"]);
        assert_eq!(
            configs[0].label(),
            "demo --set corpus.docs=500 --set corpus.seed=1"
        );
    }
}
