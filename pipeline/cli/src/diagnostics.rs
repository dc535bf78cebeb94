//! The one error type of the CLI: a message, hints saying what to do, and the exit code.
//!
//! Library crates return typed errors that say what went wrong; this module alone
//! turns them into advice in CLI syntax (`ausa build demo:tokens --force`).

use ausa_build::BuildError;
use ausa_dag::DagError;
use ausa_engine::{BuildReport, FailureCause, Outcome};
use ausa_store::StoreError;

use crate::args::TargetArgs;
use crate::output::Output;

/// An error ready for the user.
#[derive(Debug)]
pub struct CliError {
    /// The message (may span lines).
    pub message: String,
    /// `hint:` lines.
    pub hints: Vec<String>,
    /// 1 for failures, 2 for usage and configuration errors.
    pub code: i32,
}

impl CliError {
    /// A usage or configuration error (exit 2).
    pub fn usage(message: impl Into<String>, hint: Option<String>) -> CliError {
        CliError {
            message: message.into(),
            hints: hint.into_iter().collect(),
            code: 2,
        }
    }

    /// A failure of the work itself (exit 1).
    pub fn failure(message: impl Into<String>, hint: Option<String>) -> CliError {
        CliError {
            message: message.into(),
            hints: hint.into_iter().collect(),
            code: 1,
        }
    }

    /// A build-API error, with hints that repeat the user's own target and `--set`s.
    pub fn from_build(e: BuildError, args: &TargetArgs) -> CliError {
        let e = match e {
            BuildError::Dag(d) => return d.into(),
            BuildError::Store(s) => return s.into(),
            e => e,
        };
        let code = if e.is_usage() { 2 } else { 1 };
        let hint = match &e {
            BuildError::Dag(_) | BuildError::Store(_) => None,
            BuildError::NeedsStage { dag, stages } => {
                Some(format!("stages of `{dag}`: {}", stages.join(", ")))
            }
            BuildError::NotBuilt { stage, .. } => {
                Some(format!("run `{}`", build_command(args, Some(stage), "")))
            }
            BuildError::NoStageOfKind { kind, .. } => Some(format!(
                "name a target whose upstream chain has a `{kind}` stage (see `ausa status {}`)",
                dag_arg(args)
            )),
            BuildError::BuildFailed(report) => {
                let hints = failure_hints(report, args);
                return CliError {
                    message: e.to_string(),
                    hints,
                    code: 1,
                };
            }
            BuildError::EmptyTarget | BuildError::EmptyStage { .. } => {
                Some("e.g. `demo`, `demo:tokens` or `demo:minhash,routing`".into())
            }
            BuildError::ScratchDir { .. } => {
                Some("set TMPDIR to a writable directory with free space".into())
            }
            BuildError::AmbiguousKind { .. }
            | BuildError::Artifact(_)
            | BuildError::ScratchStage { .. } => None,
        };
        CliError {
            message: e.to_string(),
            hints: hint.into_iter().collect(),
            code,
        }
    }

    /// The error of a build that left stages unbuilt: each failed stage's error once
    /// (the progress output only names it), and advice from each failure's cause.
    pub fn build_failed(report: &BuildReport, args: &TargetArgs, out: &Output) -> CliError {
        let failed: Vec<_> = report
            .stages
            .iter()
            .filter(|s| !s.outcome.is_ok())
            .collect();
        let mut message = format!(
            "build of `{}` failed ({} stage(s) not built)",
            report.dag,
            failed.len()
        );
        if !out.is_json() {
            for s in &failed {
                if let Outcome::Failed { error, .. } = &s.outcome {
                    message.push_str(&format!("\n  stage `{}`: {error}", s.stage));
                }
            }
        }
        CliError {
            message,
            hints: failure_hints(report, args),
            code: 1,
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        self.code
    }
}

/// Advice for each failed stage of `report`, from its typed cause.
fn failure_hints(report: &BuildReport, args: &TargetArgs) -> Vec<String> {
    let mut hints = Vec::new();
    for s in &report.stages {
        let Outcome::Failed { cause, .. } = &s.outcome else {
            continue;
        };
        let hint = match cause {
            FailureCause::DiskFull => Some(DISK_FULL.to_string()),
            FailureCause::Corrupted { stage } => Some(format!(
                "rebuild it with `{}`, or run `ausa verify` to check the whole store",
                build_command(args, Some(stage), " --force")
            )),
            FailureCause::Store => Some(PERMISSIONS.to_string()),
            FailureCause::NeedsHub { hint } => hint.clone(),
            FailureCause::Unwritable { dir } => Some(unwritable(dir)),
            FailureCause::Stage | FailureCause::Internal => None,
        };
        if let Some(h) = hint.filter(|h| !hints.contains(h)) {
            hints.push(h);
        }
    }
    hints
}

const DISK_FULL: &str = "the disk is full: free space or point --store at another disk";
const PERMISSIONS: &str =
    "check that the store directory exists and is writable, or use --store DIR";

/// The remedy for a store directory this user may not write.
fn unwritable(dir: &std::path::Path) -> String {
    format!(
        "you cannot write {}: ask the store's owner for group write access (docs/store.md, \
         \"Sharing a store\"), or use a store of your own with --store DIR",
        dir.display()
    )
}

/// The DAG part of the user's target (`demo` of `demo:tokens`, or a path).
fn dag_arg(args: &TargetArgs) -> String {
    ausa_build::Target::parse(&args.target, &[] as &[&str])
        .map_or_else(|_| args.target.clone(), |t| t.dag)
}

/// `ausa build DAG[:STAGE] --set ...{extra}`, repeating the user's overrides so the
/// command names the same configuration.
fn build_command(args: &TargetArgs, stage: Option<&str>, extra: &str) -> String {
    let mut cmd = format!("ausa build {}", dag_arg(args));
    if let Some(stage) = stage {
        cmd.push(':');
        cmd.push_str(stage);
    }
    for o in &args.overrides {
        cmd.push_str(" --set ");
        cmd.push_str(o);
    }
    cmd.push_str(extra);
    cmd
}

impl From<BuildError> for CliError {
    fn from(e: BuildError) -> CliError {
        let args = TargetArgs {
            target: String::new(),
            overrides: Vec::new(),
        };
        CliError::from_build(e, &args)
    }
}

impl From<DagError> for CliError {
    fn from(e: DagError) -> CliError {
        CliError::usage(e.to_string(), e.hint)
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> CliError {
        let hint = e.hint().or_else(|| {
            e.is_corruption().then(|| {
                "run `ausa verify` to list damaged objects, then `ausa build <DAG>:<STAGE> --force`"
                    .to_string()
            })
        });
        if e.is_bad_store_path() {
            CliError::usage(e.to_string(), hint)
        } else {
            CliError::failure(e.to_string(), hint)
        }
    }
}
