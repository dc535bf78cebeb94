//! The parallel build loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use ausa_dag::{fingerprint, InputArtifact, Plan, PlannedStage, Registry, StageContext};
use ausa_store::{Acquired, Config, Health, Pin, Published, Ref, Store, StoreError, VerifyMode};

use crate::{
    object_id, planned_ref, BuildOptions, BuildReport, FailureCause, ObjectSource, Outcome,
    Reporter, StageReport,
};

#[derive(Clone)]
enum Slot {
    Pending,
    Running,
    Done(Outcome),
}

/// Builds every stage of `plan` that is not in the store yet, `opts.jobs` stages at a
/// time, and points the configuration's refs at the results (writing only refs that
/// change: a no-op build writes nothing). A failed stage does not stop independent
/// ones; its downstream stages are skipped.
///
/// Safe beside `gc` and `--force` in other processes and on other hosts: every object a
/// stage reads, and every object until its ref is written, is pinned; an input that
/// vanished anyway (a sweep policy dropped its configuration) is rebuilt.
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
    let fetched = match source.filter(|_| opts.force.is_empty()) {
        Some(source) => prefetch(store, plan, reporter, source),
        None => vec![None; plan.stages.len()],
    };
    let config = opts
        .config
        .clone()
        .unwrap_or_else(|| Config::new::<&str>(&plan.dag, &[]));
    let build = Build {
        store,
        plan,
        registry,
        opts,
        reporter,
        fetched,
        config,
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
    if stage.pending.is_some() || store.has_object(&id) {
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
    /// The configuration whose refs this build writes.
    config: Config,
}

/// A stage's object exists; `pin` (when the ref must still be written) keeps it so.
struct Ensured {
    outcome: Outcome,
    pin: Option<Pin>,
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
            // A panic must not leave the slot running forever (the other workers would
            // wait for it): it becomes this stage's failure.
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_stage(idx)))
                    .unwrap_or_else(|panic| Outcome::Failed {
                        error: format!(
                            "internal error: {}",
                            panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "panic".into())
                        ),
                        cause: FailureCause::Internal,
                    });
            self.reporter.finished(stage, &outcome);
            guard = lock();
            guard[idx] = Slot::Done(outcome);
            changed.notify_all();
        }
    }

    /// Fetched, reused or built, then the configuration's ref points at it.
    fn run_stage(&self, idx: usize) -> Outcome {
        let stage = &self.plan.stages[idx];
        let force = self.opts.force.contains(&stage.name);
        let ensured = match &self.fetched[idx] {
            Some(fetched) => self.pin_fetched(idx, fetched),
            None => self.ensure(idx, force),
        };
        let result = ensured.and_then(|ensured| {
            if let Some(pin) = &ensured.pin {
                debug_assert!(pin.present);
                self.store
                    .record_ref(&self.config, &stage.name, &self.expected_ref(stage))
                    .map_err(Failure::from)?;
            }
            drop(ensured.pin);
            Ok(ensured.outcome)
        });
        result.unwrap_or_else(|f| Outcome::Failed {
            error: f.error,
            cause: f.cause,
        })
    }

    fn expected_ref(&self, stage: &PlannedStage) -> Ref {
        planned_ref(stage)
    }

    fn ref_is_current(&self, stage: &PlannedStage) -> bool {
        let name = self.config.ref_name(&stage.name);
        self.store.read_ref(&name).ok().flatten() == Some(self.expected_ref(stage))
    }

    /// An object the prefetch downloaded, pinned for its ref; rebuilt if gc took it
    /// before the pin (it had no ref yet).
    fn pin_fetched(&self, idx: usize, fetched: &Outcome) -> Result<Ensured, Failure> {
        let pin = self.store.pin(&object_id(&self.plan.stages[idx]))?;
        if pin.present {
            return Ok(Ensured {
                outcome: fetched.clone(),
                pin: Some(pin),
            });
        }
        self.ensure(idx, false)
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
        } else if let Some(dir) = unwritable_dir(&e) {
            FailureCause::Unwritable { dir }
        } else {
            FailureCause::Store
        };
        Failure {
            error: e.to_string(),
            cause,
        }
    }
}

/// The directory a permission error was about, for the caller's remedy.
fn unwritable_dir(e: &StoreError) -> Option<std::path::PathBuf> {
    match e {
        StoreError::Io { path, source }
            if matches!(
                source.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            Some(if path.is_dir() {
                path.clone()
            } else {
                path.parent().unwrap_or(path).to_path_buf()
            })
        }
        _ => None,
    }
}

/// The failure for an object whose bytes disagree with its manifest.
fn damaged(store: &Store, stage: &PlannedStage, problems: &[ausa_store::Problem]) -> Failure {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.path.display(), p.what))
        .collect();
    Failure {
        error: format!(
            "object {} is corrupted: {}",
            store.object_dir(&object_id(stage)).display(),
            lines.join("; ")
        ),
        cause: FailureCause::Corrupted {
            stage: stage.name.clone(),
        },
    }
}

impl Build<'_> {
    /// Makes stage `idx`'s object exist (reused, built elsewhere, or built here; with
    /// `force`, rebuilt and swapped in), pinned unless its ref is already current.
    fn ensure(&self, idx: usize, force: bool) -> Result<Ensured, Failure> {
        let (store, plan, reporter) = (self.store, self.plan, self.reporter);
        let stage = &plan.stages[idx];
        if let Some(pending) = &stage.pending {
            // Its key is unknown (remote inputs unreachable at plan time): not buildable.
            return Err(Failure {
                error: pending.reason.clone(),
                cause: FailureCause::NeedsHub {
                    hint: pending.hint.clone(),
                },
            });
        }
        let id = object_id(stage);
        let mut out_pin = None;
        if !force {
            // A cheap stat check on every no-op build catches truncated files.
            match store.health(&id, VerifyMode::Sizes, &fingerprint)? {
                Health::Sound(_) if self.ref_is_current(stage) => {
                    return Ok(Ensured {
                        outcome: Outcome::UpToDate,
                        pin: None,
                    })
                }
                Health::Sound(_) => match store.pin(&id) {
                    Ok(pin) if pin.present => {
                        return Ok(Ensured {
                            outcome: Outcome::UpToDate,
                            pin: Some(pin),
                        })
                    }
                    Ok(pin) => out_pin = Some(pin), // removed meanwhile: build it
                    // A store we may not write: the object is there, its ref stays as it
                    // is (nothing else needs writing for an up-to-date stage).
                    Err(e) if is_permission(&e) => {
                        return Ok(Ensured {
                            outcome: Outcome::UpToDate,
                            pin: None,
                        })
                    }
                    Err(e) => return Err(e.into()),
                },
                Health::Damaged(problems) => return Err(damaged(store, stage, &problems)),
                Health::Absent => {}
            }
        }
        // Pinned from before the publish until the ref is written, so gc cannot take
        // the new object while it is still unreferenced.
        let mut out_pin = match out_pin {
            Some(pin) => pin,
            None => store.pin(&id)?,
        };
        let mut on_wait = |h: &ausa_store::LockHolder| reporter.waiting(stage, &h.owner);
        let guard = if force {
            store.lock_for_replace(&id, &mut on_wait)?
        } else {
            match store.lock_object(&id, &mut on_wait)? {
                Acquired::Present => {
                    // Our pin predates the object, so gc cannot have taken it since.
                    out_pin.present = true;
                    return Ok(Ensured {
                        outcome: Outcome::BuiltElsewhere,
                        pin: Some(out_pin),
                    });
                }
                Acquired::Locked(guard) => guard,
            }
        };
        reporter.started(stage);
        let (inputs, _input_pins) = self.pinned_inputs(stage)?;
        let kind = self.registry.get(&stage.kind).ok_or_else(|| Failure {
            error: format!("unknown stage kind `{}`", stage.kind),
            cause: FailureCause::Internal,
        })?;
        let staging = if force {
            store.stage_replacement(&id)?
        } else {
            store.stage(&id)?
        };
        let started = Instant::now();
        let progress = reporter.progress(stage);
        let ctx = StageContext {
            params: &stage.params,
            inputs: &inputs,
            external: &stage.external,
            remote: &stage.remote,
            out_dir: staging.path(),
            progress: progress.as_ref(),
        };
        ausa_store::hooks::record_run(&stage.kind, &stage.fingerprint);
        ausa_store::hooks::point(&format!("stage:{}", stage.name));
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
        let outcome = match published {
            Published::New(m) => Outcome::Built {
                seconds,
                bytes: m.total_size(),
            },
            Published::AlreadyPresent => Outcome::BuiltElsewhere,
        };
        out_pin.present = true;
        Ok(Ensured {
            outcome,
            pin: Some(out_pin),
        })
    }

    /// Pins and fully re-hashes every input object before the stage reads it; an input
    /// that vanished since it was planned (its configuration swept meanwhile) is
    /// rebuilt first.
    fn pinned_inputs(
        &self,
        stage: &PlannedStage,
    ) -> Result<(Vec<InputArtifact>, Vec<Pin>), Failure> {
        let (store, plan) = (self.store, self.plan);
        let mut inputs = Vec::new();
        let mut pins = Vec::new();
        for (slot, idx) in &stage.inputs {
            let up = &plan.stages[*idx];
            let id = object_id(up);
            let mut pin = store.pin(&id)?;
            let mut rebuilt = 0;
            loop {
                if pin.present {
                    match store.health(&id, VerifyMode::Full, &fingerprint)? {
                        Health::Sound(_) => break,
                        Health::Damaged(problems) => return Err(damaged(store, up, &problems)),
                        Health::Absent => {}
                    }
                }
                rebuilt += 1;
                if rebuilt > 3 {
                    return Err(Failure {
                        error: format!(
                            "input `{}` of `{}` keeps disappearing from the store \
                             (`ausa gc` never removes a pinned object: is something deleting objects by hand?)",
                            up.name, stage.name
                        ),
                        cause: FailureCause::Store,
                    });
                }
                pin = match self.ensure(*idx, false)?.pin {
                    Some(pin) => pin,
                    None => store.pin(&id)?,
                };
            }
            inputs.push(InputArtifact {
                slot,
                kind: up.kind.clone(),
                dir: store.object_dir(&id),
            });
            pins.push(pin);
        }
        Ok((inputs, pins))
    }
}

fn is_permission(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. } if matches!(
        source.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
    ))
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
