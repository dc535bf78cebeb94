//! Running a stage in a test (cargo feature `testing`): parameters from the schema's
//! defaults, a real [`StageContext`], no engine. The one harness the stage crates'
//! tests share.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::params::{ParamValue, Params};
use crate::plan::PlannedStage;
use crate::stage::{
    ExternalFile, InputArtifact, NoProgress, RemoteFile, Stage, StageContext, StageError, Stats,
};

/// Every default of `stage`'s schema (required parameters are left out).
pub fn defaults(stage: &dyn Stage) -> Params {
    params(stage, &[])
}

/// The defaults of `stage`'s parameters with `overrides` applied.
///
/// # Panics
///
/// On an override the schema does not declare (a bug in the test).
pub fn params(stage: &dyn Stage, overrides: &[(&str, ParamValue)]) -> Params {
    let mut values: BTreeMap<String, ParamValue> = stage
        .params()
        .iter()
        .filter_map(|spec| Some((spec.name.to_string(), spec.default.value()?)))
        .collect();
    for (name, value) in overrides {
        assert!(
            stage.param(name).is_some(),
            "`{}` has no parameter `{name}`",
            stage.kind()
        );
        values.insert(name.to_string(), value.clone());
    }
    Params::from_values(values)
}

/// External files for `Paths` parameters, as the planner would list them (sizes read
/// from disk; digests left empty, which no stage reads).
pub fn external(files: &[(&str, &[PathBuf])]) -> BTreeMap<String, Vec<ExternalFile>> {
    files
        .iter()
        .map(|(param, paths)| {
            let files = paths
                .iter()
                .map(|p| ExternalFile {
                    path: p.clone(),
                    blake3: String::new(),
                    size: std::fs::metadata(p).map_or(0, |m| m.len()),
                })
                .collect();
            (param.to_string(), files)
        })
        .collect()
}

/// Checks `params` and runs `stage` into `out_dir`.
pub fn run(
    stage: &dyn Stage,
    params: &Params,
    inputs: &[InputArtifact],
    external: &BTreeMap<String, Vec<ExternalFile>>,
    out_dir: &Path,
) -> Result<Stats, StageError> {
    run_with(stage, params, inputs, external, &BTreeMap::new(), out_dir)
}

/// Runs a planned stage (its parameters, external and remote inputs) into `out_dir`.
pub fn run_planned(
    stage: &dyn Stage,
    planned: &PlannedStage,
    inputs: &[InputArtifact],
    out_dir: &Path,
) -> Result<Stats, StageError> {
    if let Some(pending) = &planned.pending {
        return Err(pending.reason.clone().into());
    }
    let (params, external, remote) = (&planned.params, &planned.external, &planned.remote);
    run_with(stage, params, inputs, external, remote, out_dir)
}

fn run_with(
    stage: &dyn Stage,
    params: &Params,
    inputs: &[InputArtifact],
    external: &BTreeMap<String, Vec<ExternalFile>>,
    remote: &BTreeMap<String, Vec<RemoteFile>>,
    out_dir: &Path,
) -> Result<Stats, StageError> {
    stage.check(params)?;
    let ctx = StageContext {
        params,
        inputs,
        external,
        remote,
        out_dir,
        progress: &NoProgress,
    };
    stage.run(&ctx)
}
