//! The parallel build loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use ausa_dag::{fingerprint, InputArtifact, Plan, PlannedStage, Registry, StageContext};
use ausa_store::{Acquired, Published, Store, StoreError, VerifyMode};

use crate::{
    object_id, planned_ref, ref_name, BuildOptions, BuildReport, FailureCause, ObjectSource,
    Outcome, Reporter, StageReport,
};

#[derive(Clone)]
enum Slot {
    Pending,
    Running,
    Done(Outcome),
}

/// Builds every stage of `plan` that is not in the store yet, `opts.jobs` stages at a
/// time, and points the DAG's refs at the results. A failed stage does not stop
/// independent ones; its downstream stages are skipped.
pub fn build(
    store: &Store,
    plan: &Plan,
    registry: &Registry,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
) -> BuildReport {
    build_with_source(store, plan, registry, opts, reporter, None)
}

/// Like [`build`], but missing objects are first asked of `source` (a remote cache);
/// a stage is built only when the source lacks its object or the fetch fails.
pub fn build_with_source(
    store: &Store,
    plan: &Plan,
    registry: &Registry,
    opts: &BuildOptions,
    reporter: &dyn Reporter,
    source: Option<&dyn ObjectSource>,
) -> BuildReport {
    // Leftovers of killed builds on this host; failing to clean is not fatal.
    let _ = store.clean_dead_temp_dirs();
    // `--force` means "rebuild here", so it never fetches.
    let fetched = match source.filter(|_| !opts.force) {
        Some(source) => prefetch(store, plan, reporter, source),
        None => vec![None; plan.stages.len()],
    };
    let build = Build {
        store,
        plan,
        registry,
        opts,
        reporter,
        fetched,
    };
    let slots = Mutex::new(vec![Slot::Pending; plan.stages.len()]);
    let changed = Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..opts.jobs.max(1).min(plan.stages.len()) {
            scope.spawn(|| build.worker(&slots, &changed));
        }
    });
    let slots = slots.into_inner().unwrap_or_else(|p| p.into_inner());
    let stages = plan
        .stages
        .iter()
        .zip(slots)
        .map(|(stage, slot)| StageReport {
            stage: stage.name.clone(),
            kind: stage.kind.clone(),
            fingerprint: stage.fingerprint.clone(),
            outcome: match slot {
                Slot::Done(o) => o,
                _ => Outcome::Failed {
                    error: "not run (internal error)".into(),
                    cause: FailureCause::Internal,
                },
            },
        })
        .collect();
    BuildReport {
        dag: plan.dag.clone(),
        stages,
    }
}

/// Fetches every missing object of `plan` that `source` has, `parallel_fetches()` at
/// a time, before any stage runs: a fetch needs no inputs, so waiting for upstream
/// stages, as a build must, would download one object after another.
/// Returns the outcome of each stage that was fetched.
fn prefetch(
    store: &Store,
    plan: &Plan,
    reporter: &dyn Reporter,
    source: &dyn ObjectSource,
) -> Vec<Option<Outcome>> {
    let fetched = Mutex::new(vec![None; plan.stages.len()]);
    let next = AtomicUsize::new(0);
    let threads = source.parallel_fetches().clamp(1, plan.stages.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let idx = next.fetch_add(1, Ordering::Relaxed);
                let Some(stage) = plan.stages.get(idx) else {
                    return;
                };
                if let Some(outcome) = fetch(store, stage, reporter, source) {
                    fetched.lock().unwrap_or_else(|p| p.into_inner())[idx] = Some(outcome);
                }
            });
        }
    });
    fetched.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Fetches one stage's object under its build lock (so two local builds do not both
/// download it). `None` when it is already here, the source lacks it, or the fetch
/// failed (reported); the build loop then reuses or builds it as usual.
fn fetch(
    store: &Store,
    stage: &PlannedStage,
    reporter: &dyn Reporter,
    source: &dyn ObjectSource,
) -> Option<Outcome> {
    let id = object_id(stage);
    if store.has_object(&id) {
        return None;
    }
    // A lock error is left to the build loop, which meets it again and reports it.
    let Ok(Acquired::Locked(guard)) =
        store.lock_object(&id, &mut |h| reporter.waiting(stage, &h.owner))
    else {
        return None;
    };
    let started = Instant::now();
    let progress = reporter.progress(stage);
    let outcome = match source.fetch(store, &id, progress.as_ref()) {
        Ok(Some(bytes)) => Some(Outcome::Fetched {
            seconds: started.elapsed().as_secs_f64(),
            bytes,
        }),
        Ok(None) => None,
        Err(error) => {
            reporter.fetch_failed(stage, &error);
            None
        }
    };
    drop((progress, guard));
    outcome
}

/// What every worker of one build shares.
struct Build<'a> {
    store: &'a Store,
    plan: &'a Plan,
    registry: &'a Registry,
    opts: &'a BuildOptions,
    reporter: &'a dyn Reporter,
    /// Per stage, the outcome of its fetch when [`prefetch`] downloaded it.
    fetched: Vec<Option<Outcome>>,
}

impl Build<'_> {
    /// Takes ready stages until none are left.
    fn worker(&self, slots: &Mutex<Vec<Slot>>, changed: &Condvar) {
        let lock = || slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut guard = lock();
        loop {
            let next = next_ready(self.plan, &mut guard);
            let Some(idx) = next else {
                if guard.iter().any(|s| matches!(s, Slot::Pending)) {
                    guard = changed.wait(guard).unwrap_or_else(|p| p.into_inner());
                    continue;
                }
                return;
            };
            drop(guard);
            let stage = &self.plan.stages[idx];
            let outcome = self.run_stage(idx);
            self.reporter.finished(stage, &outcome);
            guard = lock();
            guard[idx] = Slot::Done(outcome);
            changed.notify_all();
        }
    }

    /// Fetched, reused or built, then the DAG's ref points at it.
    fn run_stage(&self, idx: usize) -> Outcome {
        let stage = &self.plan.stages[idx];
        let outcome = match &self.fetched[idx] {
            Some(fetched) => Ok(fetched.clone()),
            None => self.build_or_reuse(stage),
        };
        let result = outcome.and_then(|outcome| {
            let name = ref_name(self.plan, stage);
            self.store
                .write_ref(&name, &planned_ref(stage))
                .map_err(Failure::from)?;
            Ok(outcome)
        });
        result.unwrap_or_else(|f| Outcome::Failed {
            error: f.error,
            cause: f.cause,
        })
    }
}

/// Marks and returns the first pending stage whose inputs are all done, first marking
/// stages with a failed input as skipped.
fn next_ready(plan: &Plan, slots: &mut [Slot]) -> Option<usize> {
    for (idx, stage) in plan.stages.iter().enumerate() {
        if !matches!(slots[idx], Slot::Pending) {
            continue;
        }
        let failed_input = stage.inputs.iter().find(|(_, up)| match &slots[*up] {
            Slot::Done(o) => !o.is_ok(),
            _ => false,
        });
        if let Some((_, up)) = failed_input {
            slots[idx] = Slot::Done(Outcome::Skipped {
                upstream: plan.stages[*up].name.clone(),
            });
            return next_ready(plan, slots);
        }
        if stage
            .inputs
            .iter()
            .all(|(_, up)| matches!(&slots[*up], Slot::Done(o) if o.is_ok()))
        {
            slots[idx] = Slot::Running;
            return Some(idx);
        }
    }
    None
}

struct Failure {
    error: String,
    cause: FailureCause,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        let cause = if disk_full(&e) {
            FailureCause::DiskFull
        } else {
            FailureCause::Store
        };
        Failure {
            error: e.to_string(),
            cause,
        }
    }
}

/// A failure to read `stage`'s object: corruption is reported as such, naming the
/// stage, so the caller can say how to rebuild it.
fn corrupted(stage: &PlannedStage, e: StoreError) -> Failure {
    if e.is_corruption() {
        Failure {
            error: e.to_string(),
            cause: FailureCause::Corrupted {
                stage: stage.name.clone(),
            },
        }
    } else {
        Failure::from(e)
    }
}

impl Build<'_> {
    fn build_or_reuse(&self, stage: &PlannedStage) -> Result<Outcome, Failure> {
        let (store, plan, registry, opts, reporter) = (
            self.store,
            self.plan,
            self.registry,
            self.opts,
            self.reporter,
        );
        let id = object_id(stage);
        if opts.force {
            store.remove_object(&id)?;
        } else if store.has_object(&id) {
            // A cheap stat check on every no-op build catches truncated files.
            store
                .check_object(&id, VerifyMode::Sizes, &fingerprint)
                .map_err(|e| corrupted(stage, e))?;
            return Ok(Outcome::UpToDate);
        }
        let guard = match store.lock_object(&id, &mut |h| reporter.waiting(stage, &h.owner))? {
            Acquired::Present => return Ok(Outcome::BuiltElsewhere),
            Acquired::Locked(guard) => guard,
        };
        reporter.started(stage);
        let inputs = verified_inputs(store, plan, stage)?;
        let kind = registry.get(&stage.kind).ok_or_else(|| Failure {
            error: format!("unknown stage kind `{}`", stage.kind),
            cause: FailureCause::Internal,
        })?;
        let staging = store.stage(&id)?;
        let started = Instant::now();
        let progress = reporter.progress(stage);
        let ctx = StageContext {
            params: &stage.params,
            inputs: &inputs,
            external: &stage.external,
            out_dir: staging.path(),
            progress: progress.as_ref(),
        };
        let stats = kind.run(&ctx).map_err(|e| Failure {
            error: error_chain(e.as_ref()),
            cause: if disk_full(e.as_ref()) {
                FailureCause::DiskFull
            } else {
                FailureCause::Stage
            },
        })?;
        let seconds = started.elapsed().as_secs_f64();
        let published = staging.publish(
            store,
            stage.key.clone(),
            serde_json::Value::Object(stats),
            seconds,
        )?;
        drop(guard);
        Ok(match published {
            Published::New(m) => Outcome::Built {
                seconds,
                bytes: m.total_size(),
            },
            Published::AlreadyPresent => Outcome::BuiltElsewhere,
        })
    }
}

/// Fully re-hashes every input object before a stage reads it.
fn verified_inputs(
    store: &Store,
    plan: &Plan,
    stage: &PlannedStage,
) -> Result<Vec<InputArtifact>, Failure> {
    stage
        .inputs
        .iter()
        .map(|(slot, idx)| {
            let up = &plan.stages[*idx];
            let id = object_id(up);
            store
                .check_object(&id, VerifyMode::Full, &fingerprint)
                .map_err(|e| corrupted(up, e))?;
            Ok(InputArtifact {
                slot,
                kind: up.kind.clone(),
                dir: store.object_dir(&id),
            })
        })
        .collect()
}

/// `error: cause: cause`, one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

/// Whether an error was caused by a full disk (ENOSPC or a disk quota), at any depth.
fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        let io = err.downcast_ref::<std::io::Error>();
        if io.is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        }) {
            return true;
        }
        current = err.source();
    }
    false
}
