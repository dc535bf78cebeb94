//! The one library path from a DAG target to the files a trainer opens.
//!
//! A caller (the `ausa` CLI, a trainer's `--precache`, a notebook) names a target
//! (`demo:routing`, `wt2`, `my-dag.toml:banks`) with `--set`-style overrides; this
//! crate resolves it into a [`Resolved`] plan (never downloading anything), reports
//! each stage's state, builds what is missing with progress through the caller's
//! [`Reporter`], and hands back the object directories ([`ObjectDirs`]), from which
//! the artifact readers of `ausa-artifacts` are opened without naming a file by hand.
//!
//! It owns target parsing and the glue between `ausa-dag` (plans), `ausa-engine`
//! (building, states) and `ausa-stages` (the stage kinds). It must not print, know
//! CLI syntax (hints are rendered by the caller from the typed [`BuildError`]), or
//! define file formats (those are `ausa-artifacts`').
//!
//! ```no_run
//! # fn demo() -> Result<(), ausa_build::BuildError> {
//! use ausa_build::{Pipeline, Target};
//! let pipeline = Pipeline::new(ausa_store::Store::create("/tmp/ausa-store")?);
//! let target = Target::parse("demo:minhash,routing", &["corpus.docs=500"])?;
//! let resolved = pipeline.resolve(&target)?;
//! let dirs = pipeline.ensure_built(&resolved, &Default::default(), &ausa_engine::Silent)?;
//! let sets = dirs.set_artifacts(ausa_artifacts::Split::Train)?;
//! println!("{} sequences", sets.num_sequences());
//! # Ok(()) }
//! ```

mod error;
mod objects;
mod scratch;

use ausa_dag::{ContentHasher, DagSpec, Override, PlainHasher, Plan, PlannedStage, Registry};
use ausa_engine::{BuildOptions, BuildReport, ObjectSource, Reporter, StageState, StoreHasher};
use ausa_store::Store;

pub use ausa_engine::{Outcome, StateKind};
pub use error::BuildError;
pub use objects::{ObjectDir, ObjectDirs};
pub use scratch::{build_scratch, default_scratch_parent, Scratch};

/// A DAG target: a DAG (an embedded name or a `.toml` path), optionally stages of
/// it (`demo:routing`, `demo:minhash,routing`), and `STAGE.PARAM=VALUE` overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// The DAG argument as given: an embedded name (`demo`) or a path to a DAG file.
    pub dag: String,
    /// The stages after `:` (comma-separated); empty for the whole DAG.
    pub stages: Vec<String>,
    /// Parsed overrides, in the order given.
    pub overrides: Vec<Override>,
}

impl Target {
    /// Parses `DAG[:STAGE[,STAGE...]]` and `STAGE.PARAM=VALUE` overrides.
    ///
    /// A `:` followed by something containing `/` belongs to a path
    /// (`C:/dags/x.toml`), not to a stage name.
    pub fn parse(target: &str, overrides: &[impl AsRef<str>]) -> Result<Target, BuildError> {
        let (dag, stages) = match target.rsplit_once(':') {
            Some((d, s)) if !s.contains('/') => {
                let stages: Vec<String> = s.split(',').map(|n| n.trim().to_string()).collect();
                if stages.iter().any(String::is_empty) {
                    return Err(BuildError::EmptyStage {
                        target: target.to_string(),
                    });
                }
                (d, stages)
            }
            _ => (target, Vec::new()),
        };
        if dag.is_empty() {
            return Err(BuildError::EmptyTarget);
        }
        let overrides = overrides
            .iter()
            .map(|o| Override::parse(o.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target {
            dag: dag.to_string(),
            stages,
            overrides,
        })
    }

    /// The same target with other stages selected.
    pub fn with_stages(&self, stages: &[&str]) -> Target {
        Target {
            stages: stages.iter().map(|s| s.to_string()).collect(),
            ..self.clone()
        }
    }
}

/// A resolved target: the validated DAG, its plan (the selected stages and their
/// upstreams, or every stage), and the selected stages.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The validated DAG with overrides applied.
    pub dag: DagSpec,
    /// Stages to build, upstreams first, with keys and fingerprints.
    pub plan: Plan,
    /// The stages named in the target; empty for the whole DAG.
    pub stages: Vec<String>,
    /// The configuration (DAG + canonical overrides) whose refs builds of this target
    /// write and whose state `status` reports.
    pub config: ausa_store::Config,
}

/// The configuration of `dag` with `overrides`: values rendered from their parsed form,
/// so `docs=0500` and `docs=500` are one configuration ([`ausa_store::Config::new`]
/// sorts and dedups). The one place a target's configuration is derived.
pub fn config_of(dag: &str, overrides: &[Override]) -> ausa_store::Config {
    let canonical: Vec<String> = overrides
        .iter()
        .map(|o| format!("{}.{}={}", o.stage, o.param, o.value))
        .collect();
    ausa_store::Config::new(dag, &canonical)
}

impl Resolved {
    /// The one selected stage's plan entry; [`BuildError::NeedsStage`] when the
    /// target named none or several.
    pub fn selected(&self) -> Result<&PlannedStage, BuildError> {
        let [name] = self.stages.as_slice() else {
            return Err(BuildError::NeedsStage {
                dag: self.dag.name.clone(),
                stages: self.dag.stages.iter().map(|s| s.name.clone()).collect(),
            });
        };
        self.plan
            .stage(name)
            .ok_or_else(|| BuildError::Dag(self.dag.unknown_stage(name)))
    }

    /// The planned stages the target is about: the selected ones, or all.
    pub fn targeted(&self) -> Vec<&PlannedStage> {
        if self.stages.is_empty() {
            return self.plan.stages.iter().collect();
        }
        self.plan
            .stages
            .iter()
            .filter(|s| self.stages.contains(&s.name))
            .collect()
    }
}

/// The stage kinds and the store one caller works with.
pub struct Pipeline {
    store: Store,
    registry: Registry,
}

impl Pipeline {
    /// A pipeline over `store` with every built-in stage kind.
    pub fn new(store: Store) -> Pipeline {
        Pipeline::with_registry(store, ausa_stages::registry())
    }

    /// A pipeline over `store` with the stage kinds of `registry` (tests, plugins).
    pub fn with_registry(store: Store, registry: Registry) -> Pipeline {
        Pipeline { store, registry }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The stage kinds.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Loads the target's DAG, applies its overrides and resolves the plan: external
    /// inputs are hashed (through the store's stat cache), keys and fingerprints
    /// computed. Nothing is built or downloaded.
    pub fn resolve(&self, target: &Target) -> Result<Resolved, BuildError> {
        resolve_with(target, &self.registry, &StoreHasher::new(&self.store))
    }

    /// The state of every planned stage in the target's configuration (up to date,
    /// stale, missing, damaged), checking existing objects' sizes and manifest digests.
    pub fn states(&self, resolved: &Resolved) -> Vec<StageState> {
        self.states_checked(resolved, ausa_store::VerifyMode::Sizes)
    }

    /// Like [`Pipeline::states`]; with [`ausa_store::VerifyMode::Full`] every byte of
    /// the existing objects is rehashed (`status --verify`).
    pub fn states_checked(
        &self,
        resolved: &Resolved,
        mode: ausa_store::VerifyMode,
    ) -> Vec<StageState> {
        ausa_engine::stage_states(&self.store, &resolved.plan, &resolved.config, mode)
    }

    /// Builds every stage of the plan that is not in the store, reporting to
    /// `reporter`; missing objects are first asked of `source` when given. The
    /// report lists every stage's outcome; failures do not stop independent stages.
    pub fn build(
        &self,
        resolved: &Resolved,
        opts: &BuildOptions,
        reporter: &dyn Reporter,
        source: Option<&dyn ObjectSource>,
    ) -> BuildReport {
        // The refs go to the target's configuration unless the caller chose one.
        let opts = BuildOptions {
            config: opts
                .config
                .clone()
                .or_else(|| Some(resolved.config.clone())),
            ..opts.clone()
        };
        ausa_engine::build_with_source(
            &self.store,
            &resolved.plan,
            &self.registry,
            &opts,
            reporter,
            source,
        )
    }

    /// What a trainer's `--precache` calls: builds what is missing and returns the
    /// object directories of every planned stage, or [`BuildError::BuildFailed`]
    /// with the report when a stage could not be built.
    pub fn ensure_built(
        &self,
        resolved: &Resolved,
        opts: &BuildOptions,
        reporter: &dyn Reporter,
    ) -> Result<ObjectDirs, BuildError> {
        let report = self.build(resolved, opts, reporter, None);
        if !report.ok() {
            return Err(BuildError::BuildFailed(Box::new(report)));
        }
        self.object_dirs(resolved)
    }

    /// The object directories of every planned stage, without building:
    /// [`BuildError::NotBuilt`] names the first stage whose object is not in the
    /// store (the caller tells the user how to build it).
    pub fn object_dirs(&self, resolved: &Resolved) -> Result<ObjectDirs, BuildError> {
        ObjectDirs::of_plan(&self.store, resolved)
    }
}

/// [`Pipeline::resolve`] without a store: external inputs are hashed in full every
/// time (no stat cache), and nothing is read from or written to any store. The keys
/// and fingerprints are the same as a store's. What `--cache-mode none` resolves with.
pub fn resolve_detached(target: &Target, registry: &Registry) -> Result<Resolved, BuildError> {
    resolve_with(target, registry, &PlainHasher)
}

fn resolve_with(
    target: &Target,
    registry: &Registry,
    hasher: &dyn ContentHasher,
) -> Result<Resolved, BuildError> {
    let source = ausa_dag::locate(&target.dag)?;
    let dag = DagSpec::load(&source, registry, &target.overrides)?;
    let plan = match target.stages.as_slice() {
        [] => Plan::resolve(&dag, None, registry, hasher)?,
        [one] => Plan::resolve(&dag, Some(one), registry, hasher)?,
        several => plan_of_stages(&dag, several, registry, hasher)?,
    };
    let config = config_of(&plan.dag, &target.overrides);
    Ok(Resolved {
        dag,
        plan,
        stages: target.stages.clone(),
        config,
    })
}

/// The plan of several stages and their upstreams: the whole DAG's plan restricted
/// to the union of their closures, input indices renumbered.
fn plan_of_stages(
    dag: &DagSpec,
    names: &[String],
    registry: &Registry,
    hasher: &dyn ContentHasher,
) -> Result<Plan, BuildError> {
    let mut needed = std::collections::BTreeSet::new();
    for name in names {
        needed.extend(dag.closure(Some(name))?.into_iter().map(|s| s.name.clone()));
    }
    let whole = Plan::resolve(dag, None, registry, hasher)?;
    let mut renumbered = vec![usize::MAX; whole.stages.len()];
    let mut stages = Vec::with_capacity(needed.len());
    for (old, stage) in whole.stages.into_iter().enumerate() {
        if !needed.contains(&stage.name) {
            continue;
        }
        let mut stage = stage;
        for (_, idx) in &mut stage.inputs {
            // Upstreams come first and are in the closure, so already renumbered.
            *idx = renumbered[*idx];
        }
        renumbered[old] = stages.len();
        stages.push(stage);
    }
    Ok(Plan {
        dag: whole.dag,
        stages,
    })
}
