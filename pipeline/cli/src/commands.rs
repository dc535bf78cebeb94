//! One function per subcommand. Each loads what it needs, calls the libraries, and
//! prints through [`Output`]: a text form for humans and a JSON form for scripts.

use std::time::Instant;

use ausa_dag::{DagSpec, Override, Plan, Registry};
use ausa_engine::{BuildOptions, StoreHasher};
use ausa_store::{Config, Health, Manifest, ObjectId, Store, VerifyMode};
use rayon::prelude::*;
use serde_json::json;

use crate::args::{Cli, Command, TargetArgs};
use crate::diagnostics::CliError;
use crate::output::{bytes, Output};
use crate::remote;

/// Runs the command; returns the exit code for a completed command.
pub fn run(cli: &Cli, out: &Output) -> Result<i32, CliError> {
    let registry = ausa_stages::registry();
    let root = Store::default_root(cli.store.as_deref());
    // Only commands that write may create a store; the others say there is none.
    let store = || -> Result<Store, CliError> { Ok(Store::open(&root)?) };
    let writable_store = || -> Result<Store, CliError> { Ok(Store::create(&root)?) };
    match &cli.command {
        Command::Build {
            target,
            jobs,
            dry_run,
            force,
            force_upstream,
            push,
        } => {
            let opts = BuildOptions {
                jobs: jobs.unwrap_or(BuildOptions::default().jobs),
                ..BuildOptions::default()
            };
            let force = Force {
                stage: *force || *force_upstream,
                upstream: *force_upstream,
            };
            let remote = match remote::remote_url(cli.remote.as_deref())? {
                Some(_) if !*dry_run => Some(remote::open(cli.remote.as_deref(), "build")?),
                _ if *push => return Err(CliError::usage(
                    "`ausa build --push` needs a remote",
                    Some(
                        "pass --remote s3://bucket/prefix (or file:///path), or set AUSA_REMOTE"
                            .into(),
                    ),
                )),
                _ => None,
            };
            let remote = Remote {
                remote: remote.as_ref(),
                push: *push,
            };
            // A dry run writes nothing: a missing store reads as an empty one.
            let store = match dry_run {
                true => Store::open(&root).or_else(|e| match e {
                    ausa_store::StoreError::NoStore { .. } => Ok(Store::at(&root)),
                    e => Err(e),
                })?,
                false => writable_store()?,
            };
            build(
                &store, &registry, target, &opts, force, *dry_run, remote, out,
            )
        }
        Command::Push { target } => {
            let remote = remote::open(cli.remote.as_deref(), "push")?;
            remote::push(&store()?, &registry, target, &remote, out)
        }
        Command::Pull { target } => {
            let remote = remote::open(cli.remote.as_deref(), "pull")?;
            remote::pull(&writable_store()?, &registry, target, &remote, out)
        }
        Command::Status { target, verify } => {
            let remote = remote::remote_url(cli.remote.as_deref())?
                .map(|_| remote::open(cli.remote.as_deref(), "status"))
                .transpose()?;
            status(&store()?, &registry, target, *verify, remote.as_ref(), out)
        }
        Command::Explain { target } => explain(&store()?, &registry, target, out),
        Command::Show { target, verify } => show(&store()?, &registry, target, *verify, out),
        Command::Path { target } => path(&store()?, &registry, target, out),
        Command::Ls => ls(&store()?, out),
        Command::Verify { target, overrides } => {
            let target = target.as_ref().map(|t| TargetArgs {
                target: t.clone(),
                overrides: overrides.clone(),
            });
            verify(&store()?, &registry, target.as_ref(), out)
        }
        Command::Gc {
            dry_run,
            older_than,
            keep_last,
        } => {
            let opts = ausa_store::GcOptions {
                dry_run: *dry_run,
                older_than: older_than.as_deref().map(parse_age).transpose()?,
                keep_last: *keep_last,
            };
            gc(&store()?, &opts, out)
        }
    }
}

/// What `--force` / `--force-upstream` asked for.
#[derive(Clone, Copy)]
struct Force {
    /// Rebuild the named stage (or, for a whole DAG, every stage).
    stage: bool,
    /// Rebuild its upstream stages too.
    upstream: bool,
}

/// The configuration a target names: its DAG and its canonical `--set` list (values as
/// parsed, so `docs=0500` and `docs=500` are one configuration). The one place the CLI
/// derives a configuration; [`Config::new`] sorts and dedups.
pub(crate) fn config_of(dag: &str, args: &TargetArgs) -> Result<Config, CliError> {
    let overrides = args
        .overrides
        .iter()
        .map(|o| {
            ausa_dag::Override::parse(o).map(|o| format!("{}.{}={}", o.stage, o.param, o.value))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Config::new(dag, &overrides))
}

/// `30d`, `12h`, `90m`, `45s` (humantime syntax).
fn parse_age(text: &str) -> Result<std::time::Duration, CliError> {
    humantime::parse_duration(text).map_err(|e| {
        CliError::usage(
            format!("invalid --older-than `{text}`: {e}"),
            Some("write a duration such as 30d, 12h or 90m".into()),
        )
    })
}

/// A loaded DAG, its plan, and the selected stage.
pub(crate) struct Loaded {
    dag: DagSpec,
    /// The resolved plan.
    pub plan: Plan,
    stage: Option<String>,
}

/// The remote side of a build: read-through and `--push`.
#[derive(Clone, Copy)]
struct Remote<'a> {
    remote: Option<&'a ausa_remote::Remote>,
    push: bool,
}

/// Loads a DAG target with its overrides and resolves its plan.
pub(crate) fn load(
    store: &Store,
    registry: &Registry,
    args: &TargetArgs,
) -> Result<Loaded, CliError> {
    let (dag_arg, stage) = match args.target.rsplit_once(':') {
        Some((d, s)) if !s.contains('/') && !d.is_empty() => (d, Some(s.to_string())),
        _ => (args.target.as_str(), None),
    };
    let overrides = args
        .overrides
        .iter()
        .map(|o| Override::parse(o))
        .collect::<Result<Vec<_>, _>>()?;
    let source = ausa_dag::locate(dag_arg)?;
    let dag = DagSpec::load(&source, registry, &overrides)?;
    let plan = Plan::resolve(&dag, stage.as_deref(), registry, &StoreHasher::new(store))?;
    Ok(Loaded { dag, plan, stage })
}

#[allow(clippy::too_many_arguments)]
fn build(
    store: &Store,
    registry: &Registry,
    args: &TargetArgs,
    opts: &BuildOptions,
    force: Force,
    dry_run: bool,
    remote: Remote<'_>,
    out: &Output,
) -> Result<i32, CliError> {
    let loaded = load(store, registry, args)?;
    let opts = &BuildOptions {
        force: match force.stage {
            true => {
                ausa_engine::forced_stages(&loaded.plan, loaded.stage.as_deref(), force.upstream)
            }
            false => Vec::new(),
        },
        config: Some(config_of(&loaded.plan.dag, args)?),
        ..opts.clone()
    };
    if dry_run {
        return dry_run_report(store, &loaded, opts, out);
    }
    let started = Instant::now();
    let reporter = out.reporter(&loaded.plan.dag);
    let source = remote.remote.map(remote::RemoteSource);
    let source = source.as_ref().map(|s| s as &dyn ausa_engine::ObjectSource);
    let report =
        ausa_engine::build_with_source(store, &loaded.plan, registry, opts, &reporter, source);
    drop(reporter);
    out.json(
        &json!({"ok": report.ok(), "seconds": started.elapsed().as_secs_f64(), "report": report}),
    );
    let built = report
        .stages
        .iter()
        .filter(|s| matches!(s.outcome, ausa_engine::Outcome::Built { .. }))
        .count();
    let fetched = report
        .stages
        .iter()
        .filter(|s| matches!(s.outcome, ausa_engine::Outcome::Fetched { .. }))
        .count();
    if report.ok() {
        let fresh = report.stages.len() - built - fetched;
        let from_remote = if remote.remote.is_some() {
            format!("{fetched} fetched, ")
        } else {
            String::new()
        };
        out.log(&format!(
            "{}: {built} built, {from_remote}{fresh} up to date ({:.2}s)",
            loaded.plan.dag,
            started.elapsed().as_secs_f64()
        ));
        if let (Some(r), true) = (remote.remote, remote.push) {
            // With --json only the build's document goes to stdout.
            let quiet = Output::new(false, true);
            remote::push_plan(
                store,
                &loaded.plan,
                opts.config.as_ref().expect("build sets the configuration"),
                r,
                if out.is_json() { &quiet } else { out },
            )?;
        }
        return Ok(0);
    }
    let failed: Vec<_> = report
        .stages
        .iter()
        .filter(|s| !s.outcome.is_ok())
        .collect();
    // Each failure is printed once, here (the progress line only says FAILED), and even
    // with --quiet.
    let mut hints: Vec<String> = Vec::new();
    let mut lines = Vec::new();
    for s in &failed {
        if let ausa_engine::Outcome::Failed { error, hint } = &s.outcome {
            lines.push(format!("stage `{}` failed: {error}", s.stage));
            hints.extend(
                hint.iter()
                    .filter(|h| !hints.contains(h))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
    }
    Err(CliError {
        message: format!(
            "build of `{}` failed ({} stage(s) not built)\n{}",
            loaded.plan.dag,
            failed.len(),
            lines.join("\n")
        )
        .trim_end()
        .to_string(),
        hints,
        code: 1,
    })
}

fn dry_run_report(
    store: &Store,
    loaded: &Loaded,
    opts: &BuildOptions,
    out: &Output,
) -> Result<i32, CliError> {
    let mut entries = Vec::new();
    let config = opts.config.clone().expect("build sets the configuration");
    for stage in &loaded.plan.stages {
        let mut e = ausa_engine::explain(store, &loaded.plan, &config, stage);
        if opts.force.contains(&stage.name) && e.reasons.is_empty() {
            e.reasons.push("--force".into());
        }
        let verb = if e.reasons.is_empty() {
            "up to date"
        } else {
            "would build"
        };
        out.line(&format!(
            "{verb:>11} {}:{} [{} {}]",
            loaded.plan.dag,
            stage.name,
            stage.kind,
            &stage.fingerprint[..12]
        ));
        for r in &e.reasons {
            out.line(&format!("{:>11}   {r}", ""));
        }
        entries.push(e);
    }
    out.json(&json!({"dag": loaded.plan.dag, "dry_run": true, "stages": entries}));
    Ok(0)
}

/// Exit status of `status` when a stage is missing or stale (nothing damaged).
const STATUS_NOT_BUILT: i32 = 3;
/// Exit status of `status` when an object is damaged.
const STATUS_DAMAGED: i32 = 4;

fn check_mode(verify: bool) -> VerifyMode {
    if verify {
        VerifyMode::Full
    } else {
        VerifyMode::Sizes
    }
}

fn status(
    store: &Store,
    registry: &Registry,
    args: &TargetArgs,
    verify: bool,
    remote: Option<&ausa_remote::Remote>,
    out: &Output,
) -> Result<i32, CliError> {
    let loaded = load(store, registry, args)?;
    let config = config_of(&loaded.plan.dag, args)?;
    let states = ausa_engine::stage_states(store, &loaded.plan, &config, check_mode(verify));
    let places = remote
        .map(|r| remote::locations(store, &loaded.plan, r))
        .transpose()?;
    let mut doc = serde_json::to_value(&states).expect("states serialize");
    if let (Some(places), Some(rows)) = (&places, doc.as_array_mut()) {
        for (row, place) in rows.iter_mut().zip(places) {
            row["location"] = json!(place);
        }
    }
    out.json(&json!({"dag": loaded.plan.dag, "remote": remote.map(|r| r.url()), "stages": doc}));
    let where_head = if places.is_some() { "  WHERE" } else { "" };
    out.data(&format!(
        "{:<20} {:<12} {:<14} {:<11} {:>10}{where_head}",
        "STAGE", "KIND", "FINGERPRINT", "STATE", "SIZE"
    ));
    for (i, s) in states.iter().enumerate() {
        let size = s.bytes.map(bytes).unwrap_or_else(|| "-".into());
        let place = places
            .as_ref()
            .map(|p| format!("  {}", p[i]))
            .unwrap_or_default();
        out.data(&format!(
            "{:<20} {:<12} {:<14} {:<11} {:>10}{place}",
            s.stage,
            s.kind,
            &s.fingerprint[..12],
            s.state.as_str(),
            size
        ));
        for p in &s.problems {
            out.data(&format!("    {p}"));
        }
    }
    use ausa_engine::StateKind;
    let damaged = states.iter().any(|s| s.state == StateKind::Damaged);
    let not_built = states.iter().any(|s| s.state != StateKind::UpToDate);
    Ok(if damaged {
        STATUS_DAMAGED
    } else if not_built {
        STATUS_NOT_BUILT
    } else {
        0
    })
}

fn explain(
    store: &Store,
    registry: &Registry,
    args: &TargetArgs,
    out: &Output,
) -> Result<i32, CliError> {
    let loaded = load(store, registry, args)?;
    let config = config_of(&loaded.plan.dag, args)?;
    let stages: Vec<_> = match &loaded.stage {
        Some(name) => loaded.plan.stage(name).into_iter().collect(),
        None => loaded.plan.stages.iter().collect(),
    };
    let mut entries = Vec::new();
    for stage in stages {
        let e = ausa_engine::explain(store, &loaded.plan, &config, stage);
        if e.reasons.is_empty() {
            out.data(&format!(
                "{}: up to date ({})",
                stage.name,
                &stage.fingerprint[..12]
            ));
        } else {
            out.data(&format!(
                "{}: would rebuild ({}):",
                stage.name,
                &stage.fingerprint[..12]
            ));
            for r in &e.reasons {
                out.data(&format!("  {r}"));
            }
        }
        entries.push(e);
    }
    out.json(&json!({"dag": loaded.plan.dag, "stages": entries}));
    Ok(0)
}

fn selected_stage<'a>(
    loaded: &'a Loaded,
    command: &str,
) -> Result<&'a ausa_dag::PlannedStage, CliError> {
    let name = loaded.stage.as_deref().ok_or_else(|| {
        let names: Vec<_> = loaded.dag.stages.iter().map(|s| s.name.as_str()).collect();
        CliError::usage(
            format!("`ausa {command}` needs a stage: DAG:STAGE"),
            Some(format!(
                "stages of `{}`: {}",
                loaded.dag.name,
                names.join(", ")
            )),
        )
    })?;
    loaded
        .plan
        .stage(name)
        .ok_or_else(|| loaded.dag.unknown_stage(name).into())
}

fn show(
    store: &Store,
    registry: &Registry,
    args: &TargetArgs,
    verify: bool,
    out: &Output,
) -> Result<i32, CliError> {
    let loaded = load(store, registry, args)?;
    let config = config_of(&loaded.plan.dag, args)?;
    let stage = selected_stage(&loaded, "show")?;
    let spec = loaded
        .dag
        .stage(&stage.name)
        .expect("planned stages come from the DAG");
    let kind = registry
        .get(&stage.kind)
        .expect("validated kinds are registered");
    let id = ObjectId {
        kind: stage.kind.clone(),
        fingerprint: stage.fingerprint.clone(),
    };
    let manifest = match store.health(&id, check_mode(verify), &ausa_dag::fingerprint)? {
        Health::Sound(m) => Some(*m),
        // A damaged object's manifest is shown if it parses, marked damaged below.
        Health::Damaged(_) => Manifest::read(&store.object_dir(&id)).ok(),
        Health::Absent => None,
    };
    let state = ausa_engine::stage_states(store, &loaded.plan, &config, check_mode(verify))
        .into_iter()
        .find(|s| s.stage == stage.name);
    let params: serde_json::Map<_, _> = kind
        .params()
        .iter()
        .map(|p| {
            let value = spec.params.get(p.name).map(|v| v.to_json());
            (p.name.to_string(), json!({"value": value, "default": spec.defaulted.contains(p.name), "type": p.ty.describe(), "doc": p.doc}))
        })
        .collect();
    let inputs: Vec<_> = spec
        .inputs
        .iter()
        .map(|(slot, up)| json!({"slot": slot, "stage": up}))
        .collect();
    out.json(&json!({
        "dag": loaded.plan.dag, "stage": stage.name, "kind": stage.kind, "fingerprint": stage.fingerprint,
        "state": state.as_ref().map(|s| s.state), "object": manifest.as_ref().map(|_| store.object_dir(&id)),
        "params": params, "inputs": inputs, "key": stage.key, "manifest": manifest,
    }));
    out.data(&format!(
        "{}:{}  (kind `{}`: {})",
        loaded.plan.dag,
        stage.name,
        stage.kind,
        kind.doc()
    ));
    out.data(&format!("  fingerprint  {}", stage.fingerprint));
    out.data(&format!(
        "  state        {}",
        state.as_ref().map_or("missing", |s| s.state.as_str())
    ));
    for p in state.iter().flat_map(|s| &s.problems) {
        out.data(&format!("               {p}"));
    }
    if manifest.is_some() {
        out.data(&format!(
            "  object       {}",
            store.object_dir(&id).display()
        ));
    }
    out.data("parameters:");
    for p in kind.params() {
        let value = spec
            .params
            .get(p.name)
            .map(|v| v.to_string())
            .unwrap_or_default();
        let mark = if spec.defaulted.contains(p.name) {
            " (default)"
        } else {
            ""
        };
        out.data(&format!("  {:<20} = {value}{mark}    # {}", p.name, p.doc));
    }
    for (slot, up) in &spec.inputs {
        out.data(&format!("input {slot} <- {up}"));
    }
    if let Some(m) = manifest {
        out.data("files:");
        for f in &m.files {
            out.data(&format!(
                "  {:<28} {:>10}  blake3 {}",
                f.name,
                bytes(f.size),
                &f.blake3[..16]
            ));
        }
        out.data(&format!(
            "built by {} at {} in {:.2}s (ausa {})",
            m.built.host, m.built.time, m.built.seconds, m.tool_version
        ));
        out.data("statistics:");
        let stats = serde_json::to_string_pretty(&m.stats).unwrap_or_default();
        for l in stats.lines() {
            out.data(&format!("  {l}"));
        }
    }
    Ok(0)
}

fn path(
    store: &Store,
    registry: &Registry,
    args: &TargetArgs,
    out: &Output,
) -> Result<i32, CliError> {
    let loaded = load(store, registry, args)?;
    let stage = selected_stage(&loaded, "path")?;
    let id = ObjectId {
        kind: stage.kind.clone(),
        fingerprint: stage.fingerprint.clone(),
    };
    if !store.has_object(&id) {
        return Err(CliError::failure(
            format!(
                "{}:{} is not built in {}",
                loaded.plan.dag,
                stage.name,
                store.root().display()
            ),
            Some(format!(
                "run `ausa build {}:{}`",
                loaded.plan.dag, stage.name
            )),
        ));
    }
    let dir = store.object_dir(&id);
    out.json(&json!({"path": dir}));
    out.data(&dir.display().to_string());
    Ok(0)
}

fn ls(store: &Store, out: &Output) -> Result<i32, CliError> {
    let configs = store.list_configs()?;
    let refs = store.list_refs()?;
    let mut rows = Vec::new();
    for id in store.list_objects()? {
        let valid = store.has_object(&id);
        let size = valid
            .then(|| Manifest::read(&store.object_dir(&id)).ok())
            .flatten()
            .map(|m| m.total_size());
        let pointing: Vec<_> = refs
            .iter()
            .filter(|(_, r)| r.as_ref().is_ok_and(|r| r.object() == id))
            .map(|(n, _)| n)
            .collect();
        let names: Vec<String> = pointing.iter().map(|n| n.to_string()).collect();
        let mut labels: Vec<String> = Vec::new();
        for n in &pointing {
            let info = configs.iter().find(|c| c.dag == n.dag && c.id == n.config);
            let label = info.map_or_else(|| format!("{}@{}", n.dag, n.config), |c| c.label());
            if !labels.contains(&label) {
                labels.push(label);
            }
        }
        rows.push(
            json!({"kind": id.kind, "fingerprint": id.fingerprint, "bytes": size,
            "refs": names, "configs": labels}),
        );
    }
    out.json(&json!({"store": store.root(), "objects": rows}));
    out.data(&format!(
        "{:<12} {:<14} {:>10}  CONFIGURATIONS",
        "KIND", "FINGERPRINT", "SIZE"
    ));
    for r in &rows {
        let size = r["bytes"]
            .as_u64()
            .map(bytes)
            .unwrap_or_else(|| "invalid".into());
        let labels: Vec<_> = r["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        let fp = r["fingerprint"].as_str().unwrap_or("");
        out.data(&format!(
            "{:<12} {:<14} {:>10}  {}",
            r["kind"].as_str().unwrap_or(""),
            &fp[..12.min(fp.len())],
            size,
            if labels.is_empty() {
                "(none: gc removes it)".to_string()
            } else {
                labels.join(", ")
            }
        ));
    }
    Ok(0)
}

fn verify(
    store: &Store,
    registry: &Registry,
    target: Option<&TargetArgs>,
    out: &Output,
) -> Result<i32, CliError> {
    let ids: Vec<ObjectId> = match target {
        None => store.list_objects()?,
        Some(args) => {
            let loaded = load(store, registry, args)?;
            let ids = loaded.plan.stages.iter().map(|s| ObjectId {
                kind: s.kind.clone(),
                fingerprint: s.fingerprint.clone(),
            });
            ids.filter(|id| store.has_object(id)).collect()
        }
    };
    let started = Instant::now();
    let results: Vec<_> = ids
        .par_iter()
        .map(|id| {
            let result = store.verify_object(id, VerifyMode::Full, &ausa_dag::fingerprint);
            (id, result)
        })
        .collect();
    let seconds = started.elapsed().as_secs_f64();
    let mut total = 0u64;
    let mut problems = Vec::new();
    for (id, result) in &results {
        match result {
            Ok((m, found)) => {
                total += m.total_size();
                problems.extend(found.iter().map(|p| json!({"object": id.to_string(), "path": p.path, "problem": p.what})));
            }
            Err(e) => problems.push(json!({"object": id.to_string(), "path": store.object_dir(id), "problem": e.to_string()})),
        }
    }
    let rate = total as f64 / seconds.max(1e-9);
    out.json(&json!({"ok": problems.is_empty(), "objects": ids.len(), "bytes": total, "seconds": seconds, "bytes_per_second": rate, "problems": problems}));
    for p in &problems {
        out.log(&format!(
            "CORRUPT {}: {}",
            p["path"].as_str().unwrap_or(""),
            p["problem"].as_str().unwrap_or("")
        ));
    }
    out.line(&format!(
        "verified {} objects, {} in {seconds:.2}s ({}/s): {} problem(s)",
        ids.len(),
        bytes(total),
        bytes(rate as u64),
        problems.len()
    ));
    if problems.is_empty() {
        Ok(0)
    } else {
        Err(CliError::failure(
            format!(
                "{} problem(s) found in the store {}",
                problems.len(),
                store.root().display()
            ),
            Some("rebuild damaged objects with `ausa build <DAG>:<STAGE> --force`".into()),
        ))
    }
}

fn gc(store: &Store, opts: &ausa_store::GcOptions, out: &Output) -> Result<i32, CliError> {
    let report = store.gc(opts)?;
    let dry_run = opts.dry_run;
    out.json(&json!({"dry_run": dry_run, "report": report}));
    let verb = if dry_run { "would remove" } else { "removed" };
    for c in &report.configs {
        out.line(&format!("{verb} configuration {c}"));
    }
    for id in &report.objects {
        out.line(&format!("{verb} object {id}"));
    }
    for id in &report.in_use {
        out.line(&format!("kept object {id}: a running build uses it"));
    }
    for dir in &report.temp_dirs {
        out.line(&format!("{verb} temp dir {}", dir.display()));
    }
    for lock in &report.stale_locks {
        out.line(&format!("{verb} expired lock {}", lock.display()));
    }
    out.line(&format!(
        "{verb} {} configuration(s), {} object(s) ({}), {} temp dir(s) and {} expired lock(s)",
        report.configs.len(),
        report.objects.len(),
        bytes(report.object_bytes),
        report.temp_dirs.len(),
        report.stale_locks.len()
    ));
    Ok(0)
}
