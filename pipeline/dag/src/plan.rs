//! Resolving a validated DAG into a build plan: external inputs expanded and hashed,
//! every stage's key and fingerprint computed, in topological order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::key::{fingerprint, KEY_SCHEME};
use crate::params::{ParamType, ParamValue, Params};
use crate::spec::{DagError, DagSpec};
use crate::stage::{ExternalFile, Pending, Registry, RemoteFile, RemoteInputs};

/// The fingerprint shown for a [pending](PlannedStage::pending) stage: its key is not
/// known, and no object can have this name (it is not hex).
pub const UNKNOWN_FINGERPRINT: &str =
    "----------------------------------------------------------------";

/// Computes content digests of external input files (the store provides one with a
/// stat cache, so unchanged files are not rehashed).
pub trait ContentHasher: Sync {
    /// `(blake3 hex, size)` of the file's content.
    fn digest(&self, path: &Path) -> std::io::Result<(String, u64)>;
}

/// A [`ContentHasher`] without a cache.
#[derive(Debug, Default, Clone, Copy)]
pub struct PlainHasher;

impl ContentHasher for PlainHasher {
    fn digest(&self, path: &Path) -> std::io::Result<(String, u64)> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(path)?)?;
        let size = std::fs::metadata(path)?.len();
        Ok((hasher.finalize().to_hex().to_string(), size))
    }
}

/// One stage, ready to build.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    /// Name in the DAG.
    pub name: String,
    /// Stage kind.
    pub kind: String,
    /// Resolved parameters.
    pub params: Params,
    /// `(slot, index of the upstream stage in [`Plan::stages`])`.
    pub inputs: Vec<(&'static str, usize)>,
    /// External files per `Paths` parameter.
    pub external: BTreeMap<String, Vec<ExternalFile>>,
    /// Remote files the stage fetches when it runs (see [`crate::Stage::remote_inputs`]).
    pub remote: BTreeMap<String, Vec<RemoteFile>>,
    /// `Some` when the key cannot be computed now: the stage's remote inputs, or an
    /// upstream stage's, are unknown (offline with nothing cached). Such a stage is
    /// shown, never built; building it fails with this reason.
    pub pending: Option<Pending>,
    /// The canonical key (for a pending stage, with `"unknown"` in place of the
    /// remote digests).
    pub key: Value,
    /// blake3 of the canonical key; [`UNKNOWN_FINGERPRINT`] for a pending stage.
    pub fingerprint: String,
}

/// The stages a build needs, upstreams first.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The DAG's name.
    pub dag: String,
    /// Stages in topological order.
    pub stages: Vec<PlannedStage>,
}

impl Plan {
    /// Resolves `target` (or every stage) of `spec`: expands and hashes external
    /// inputs and computes keys and fingerprints.
    pub fn resolve(
        spec: &DagSpec,
        target: Option<&str>,
        registry: &Registry,
        hasher: &dyn ContentHasher,
    ) -> Result<Plan, DagError> {
        let mut stages: Vec<PlannedStage> = Vec::new();
        for stage in spec.closure(target)? {
            let kind = registry.get(&stage.kind).ok_or_else(|| DagError {
                location: None,
                message: format!("unknown stage kind `{}`", stage.kind),
                hint: None,
            })?;
            let mut inputs = Vec::new();
            let mut input_fps = serde_json::Map::new();
            let mut pending = None;
            for (slot, up) in &stage.inputs {
                let idx = stages
                    .iter()
                    .position(|s| &s.name == up)
                    .expect("closure is topological");
                input_fps.insert(
                    slot.to_string(),
                    Value::from(stages[idx].fingerprint.clone()),
                );
                if let (None, Some(why)) = (&pending, &stages[idx].pending) {
                    pending = Some(Pending {
                        reason: format!("upstream stage `{up}` is pending: {}", why.reason),
                        hint: why.hint.clone(),
                    });
                }
                inputs.push((*slot, idx));
            }
            let mut params = serde_json::Map::new();
            let mut external = BTreeMap::new();
            let mut external_key = serde_json::Map::new();
            for (name, value) in stage.params.iter() {
                let param = kind.param(name);
                if param.is_some_and(|p| !p.in_key(&stage.params, value)) {
                    // Irrelevant for these values (`docs` of a local corpus), or a
                    // later-added parameter at its default: not in the key, and its
                    // paths are not read.
                    continue;
                }
                match (param.map(|p| p.ty), value) {
                    (Some(ParamType::Paths { extensions }), ParamValue::Paths(paths)) => {
                        let files = expand_paths(&spec.base_dir, paths, extensions, hasher)
                            .map_err(|why| DagError {
                                location: None,
                                message: format!(
                                    "stage `{}`, parameter `{name}`: {why}",
                                    stage.name
                                ),
                                hint: Some("fix the path in the DAG file or with --set".into()),
                            })?;
                        let digests = files
                            .iter()
                            .map(|f| json!({"blake3": f.blake3, "size": f.size}));
                        external_key.insert(name.to_string(), Value::Array(digests.collect()));
                        external.insert(name.to_string(), files);
                    }
                    _ => {
                        params.insert(name.to_string(), value.to_json());
                    }
                }
            }
            let remote_inputs = kind.remote_inputs(&stage.params).map_err(|e| DagError {
                location: None,
                message: format!("stage `{}`: cannot list its remote inputs: {e}", stage.name),
                hint: None,
            })?;
            let mut remote = BTreeMap::new();
            match remote_inputs {
                RemoteInputs::None => {}
                RemoteInputs::Known(files) => {
                    for (name, files) in files {
                        let digests = files
                            .iter()
                            .map(|f| json!({"digest": f.digest, "size": f.size}));
                        external_key.insert(name.clone(), Value::Array(digests.collect()));
                        remote.insert(name, files);
                    }
                }
                RemoteInputs::Unknown(why) => {
                    external_key.insert("remote".into(), Value::from("unknown"));
                    pending = Some(why);
                }
            }
            let key = json!({
                "scheme": KEY_SCHEME,
                "kind": stage.kind,
                "salt": kind.salt(),
                "params": params,
                "inputs": input_fps,
                "external": external_key,
            });
            let fingerprint = match pending {
                Some(_) => UNKNOWN_FINGERPRINT.to_string(),
                None => fingerprint(&key),
            };
            stages.push(PlannedStage {
                name: stage.name.clone(),
                kind: stage.kind.clone(),
                params: stage.params.clone(),
                inputs,
                fingerprint,
                key,
                external,
                remote,
                pending,
            });
        }
        Ok(Plan {
            dag: spec.name.clone(),
            stages,
        })
    }

    /// The planned stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&PlannedStage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// Expands files, directories (recursively, keeping `extensions`) and glob patterns,
/// each entry sorted by path, duplicates dropped, then hashes every file.
fn expand_paths(
    base: &Path,
    entries: &[String],
    extensions: &[&str],
    hasher: &dyn ContentHasher,
) -> Result<Vec<ExternalFile>, String> {
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in entries {
        let full = base.join(entry);
        let mut found = if entry.contains(['*', '?', '[']) {
            let pattern = full.to_string_lossy().into_owned();
            let paths = glob::glob(&pattern).map_err(|e| format!("bad glob `{entry}`: {e}"))?;
            let mut v: Vec<PathBuf> = paths
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            v.iter().try_for_each(|p| supported(p, extensions))?;
            v
        } else if full.is_dir() {
            let mut v = Vec::new();
            walk_dir(&full, extensions, &mut v)
                .map_err(|e| format!("cannot read directory {}: {e}", full.display()))?;
            v.sort();
            v
        } else if full.is_file() {
            supported(&full, extensions)?;
            vec![full.clone()]
        } else {
            return Err(format!("input `{}` does not exist", full.display()));
        };
        if found.is_empty() {
            return Err(format!(
                "`{entry}` matches no input files (looked for .{} under {})",
                extensions.join(", ."),
                full.display()
            ));
        }
        found.retain(|p| !files.contains(p));
        files.extend(found);
    }
    files
        .into_iter()
        .map(|path| hash_external(path, hasher))
        .collect()
}

/// Whether `path` ends in one of `extensions` (ASCII case ignored), else an error
/// naming the file and the accepted ones: unsupported files fail the plan, so
/// `--dry-run` reports them.
fn supported(path: &Path, extensions: &[&str]) -> Result<(), String> {
    if has_extension(path, extensions) {
        return Ok(());
    }
    Err(format!(
        "unsupported input file `{}`: expected a file ending in .{}",
        path.display(),
        extensions.join(", .")
    ))
}

fn has_extension(path: &Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn hash_external(path: PathBuf, hasher: &dyn ContentHasher) -> Result<ExternalFile, String> {
    let (blake3, size) = hasher
        .digest(&path)
        .map_err(|e| format!("cannot read input file {}: {e}", path.display()))?;
    Ok(ExternalFile { path, blake3, size })
}

fn walk_dir(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk_dir(&path, extensions, out)?;
        } else if has_extension(&path, extensions) {
            out.push(path);
        }
    }
    Ok(())
}
