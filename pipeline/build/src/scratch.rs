//! Building outside the store: the planned stages a caller does not take from a store
//! run into a private scratch directory that is deleted when the [`Scratch`] drops.
//!
//! This is how a trainer's `--cache-mode tokens` (token artifacts from the store, the
//! set stages rebuilt per run) and `--cache-mode none` (every stage per run, no store
//! at all) get their artifacts. The stages are the same `Stage::run` code the engine
//! calls, given the same parameters, inputs and external files, so the files are the
//! same bytes a store build publishes; only the directory differs. Nothing here takes
//! a lock, writes a manifest or a ref, or hashes outputs: a scratch object is never
//! shared, so none of the store's guarantees are needed, and none are claimed.
//!
//! Layout: `<parent>/ausa-scratch-XXXXXX/<stage name>/`, one directory per stage
//! that ran. A process killed with SIGKILL leaves its scratch directory behind
//! (nothing else does): it lives under the system temp dir, which the OS cleans.

use std::path::{Path, PathBuf};
use std::time::Instant;

use ausa_dag::{InputArtifact, PlannedStage, Registry, StageContext};
use ausa_engine::{Outcome, Reporter};

use crate::{BuildError, ObjectDir, ObjectDirs, Resolved};

/// Stage objects built into a private directory, with any objects taken from a
/// store: every planned stage of the target has a directory in [`Scratch::dirs`].
///
/// Dropping it deletes the scratch directory; keep it alive as long as anything
/// reads (or maps) its files.
#[derive(Debug)]
pub struct Scratch {
    dirs: ObjectDirs,
    built: Vec<String>,
    // Dropped last: the directory goes once nothing refers to it any more.
    dir: tempfile::TempDir,
}

impl Scratch {
    /// Every planned stage's directory (scratch or store), upstreams first.
    pub fn dirs(&self) -> &ObjectDirs {
        &self.dirs
    }

    /// The scratch directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The stages that ran into the scratch directory, in plan order.
    pub fn built(&self) -> &[String] {
        &self.built
    }
}

/// Runs every stage of `resolved`'s plan that `stored` does not hold (same stage
/// name and fingerprint) into a new private directory under `parent`, upstreams
/// first, reporting each to `reporter`; the stages of `stored` are read where they
/// are. With `stored = None` everything is built and no store is involved at all.
///
/// A failing stage is [`BuildError::ScratchStage`]; a stage whose key is pending
/// (a hub dataset whose files cannot be listed now) cannot run either.
pub fn build_scratch(
    registry: &Registry,
    resolved: &Resolved,
    stored: Option<&ObjectDirs>,
    parent: &Path,
    reporter: &dyn Reporter,
) -> Result<Scratch, BuildError> {
    let dir = tempfile::Builder::new()
        .prefix("ausa-scratch-")
        .tempdir_in(parent)
        .map_err(|source| BuildError::ScratchDir {
            dir: parent.to_path_buf(),
            source,
        })?;
    let plan = &resolved.plan;
    let mut objects: Vec<ObjectDir> = Vec::with_capacity(plan.stages.len());
    let mut built = Vec::new();
    for stage in &plan.stages {
        let from_store = stored
            .and_then(|s| s.stage(&stage.name))
            .filter(|o| o.fingerprint == stage.fingerprint);
        if let Some(object) = from_store {
            objects.push(object.clone());
            continue;
        }
        let out = dir.path().join(&stage.name);
        run_stage(registry, &plan.dag, stage, &objects, &out, reporter)?;
        objects.push(ObjectDir {
            stage: stage.name.clone(),
            kind: stage.kind.clone(),
            fingerprint: stage.fingerprint.clone(),
            dir: out,
        });
        built.push(stage.name.clone());
    }
    Ok(Scratch {
        dirs: ObjectDirs::new(&plan.dag, &resolved.stages, objects),
        built,
        dir,
    })
}

/// Runs one stage into `out` (created here) with its inputs from `done` (the
/// directories of the stages before it, in plan order).
fn run_stage(
    registry: &Registry,
    dag: &str,
    stage: &PlannedStage,
    done: &[ObjectDir],
    out: &Path,
    reporter: &dyn Reporter,
) -> Result<(), BuildError> {
    let failed = |error: String| BuildError::ScratchStage {
        dag: dag.to_string(),
        stage: stage.name.clone(),
        error,
    };
    if let Some(pending) = &stage.pending {
        return Err(failed(pending.reason.clone()));
    }
    let kind = registry
        .get(&stage.kind)
        .ok_or_else(|| failed(format!("unknown stage kind `{}`", stage.kind)))?;
    let inputs: Vec<InputArtifact> = stage
        .inputs
        .iter()
        .map(|(slot, idx)| InputArtifact {
            slot,
            kind: done[*idx].kind.clone(),
            dir: done[*idx].dir.clone(),
        })
        .collect();
    std::fs::create_dir(out).map_err(|e| failed(format!("{}: {e}", out.display())))?;
    reporter.started(stage);
    let started = Instant::now();
    let progress = reporter.progress(stage);
    let ctx = StageContext {
        params: &stage.params,
        inputs: &inputs,
        external: &stage.external,
        remote: &stage.remote,
        out_dir: out,
        progress: progress.as_ref(),
    };
    let result = kind.run(&ctx);
    drop(progress);
    let outcome = match &result {
        Ok(_) => Outcome::Built {
            seconds: started.elapsed().as_secs_f64(),
            bytes: dir_size(out),
        },
        Err(e) => Outcome::Failed {
            error: error_chain(e.as_ref()),
            cause: ausa_engine::FailureCause::Stage,
        },
    };
    reporter.finished(stage, &outcome);
    match outcome {
        Outcome::Failed { error, .. } => Err(failed(error)),
        _ => Ok(()),
    }
}

/// Bytes of the files directly in `dir` (stages write flat directories).
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// `error: cause: cause`, one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The system temp dir: where callers put scratch directories unless told otherwise.
pub fn default_scratch_parent() -> PathBuf {
    std::env::temp_dir()
}
