//! One function per subcommand. Each loads what it needs, calls the libraries, and
//! prints through [`Output`]: a text form for humans and a JSON form for scripts.

use std::time::Instant;

use ausa_dag::{DagSpec, Override, Plan, Registry};
use ausa_engine::{BuildOptions, StoreHasher};
use ausa_store::{Manifest, ObjectId, Store, VerifyMode};
use rayon::prelude::*;
use serde_json::json;

use crate::args::{Cli, Command, TargetArgs};
use crate::diagnostics::CliError;
use crate::output::{bytes, Output};
use crate::remote;

/// Runs the command; returns the exit code for a completed command.
pub fn run(cli: &Cli, out: &Output) -> Result<i32, CliError> {
    let registry = ausa_stages::registry();
    let store = || -> Result<Store, CliError> {
        Ok(Store::open(Store::default_root(cli.store.as_deref()))?)
    };
    match &cli.command {
        Command::Build {
            target,
            jobs,
            dry_run,
            force,
            push,
        } => {
            let opts = BuildOptions {
                jobs: jobs.unwrap_or(BuildOptions::default().jobs),
                force: *force,
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
            build(&store()?, &registry, target, &opts, *dry_run, remote, out)
        }
        Command::Push { target } => {
            let remote = remote::open(cli.remote.as_deref(), "push")?;
            remote::push(&store()?, &registry, target, &remote, out)
        }
        Command::Pull { target } => {
            let remote = remote::open(cli.remote.as_deref(), "pull")?;
            remote::pull(&store()?, &registry, target, &remote, out)
        }
        Command::Status { target } => {
            let remote = remote::remote_url(cli.remote.as_deref())?
                .map(|_| remote::open(cli.remote.as_deref(), "status"))
                .transpose()?;
            status(&store()?, &registry, target, remote.as_ref(), out)
        }
        Command::Explain { target } => explain(&store()?, &registry, target, out),
        Command::Show { target } => show(&store()?, &registry, target, out),
        Command::Path { target } => path(&store()?, &registry, target, out),
        Command::Ls => ls(&store()?, out),
        Command::Verify { target, overrides } => {
            let target = target.as_ref().map(|t| TargetArgs {
                target: t.clone(),
                overrides: overrides.clone(),
            });
            verify(&store()?, &registry, target.as_ref(), out)
        }
        Command::Gc { dry_run } => gc(&store()?, *dry_run, out),
    }
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

fn build(
    store: &Store,
    registry: &Registry,
    args: &TargetArgs,
    opts: &BuildOptions,
    dry_run: bool,
    remote: Remote<'_>,
    out: &Output,
) -> Result<i32, CliError> {
    let loaded = load(store, registry, args)?;
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
    let mut hints = Vec::new();
    for s in &failed {
        if let ausa_engine::Outcome::Failed { error, hint } = &s.outcome {
            if !out.is_json() {
                out.log(&format!("error: stage `{}` failed: {error}", s.stage));
            }
            hints.extend(hint.clone());
        }
    }
    Err(CliError {
        message: format!(
            "build of `{}` failed ({} stage(s) not built)",
            loaded.plan.dag,
            failed.len()
        ),
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
    for stage in &loaded.plan.stages {
        let mut e = ausa_engine::explain(store, &loaded.plan, stage);
        if opts.force && e.reasons.is_empty() {
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

fn status(
    store: &Store,
    registry: &Registry,
    args: &TargetArgs,
    remote: Option<&ausa_remote::Remote>,
    out: &Output,
) -> Result<i32, CliError> {
    let loaded = load(store, registry, args)?;
    let states = ausa_engine::stage_states(store, &loaded.plan);
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
    out.line(&format!(
        "{:<20} {:<12} {:<14} {:<11} {:>10}{where_head}",
        "STAGE", "KIND", "FINGERPRINT", "STATE", "SIZE"
    ));
    for (i, s) in states.iter().enumerate() {
        let size = s.bytes.map(bytes).unwrap_or_else(|| "-".into());
        let place = places
            .as_ref()
            .map(|p| format!("  {}", p[i]))
            .unwrap_or_default();
        out.line(&format!(
            "{:<20} {:<12} {:<14} {:<11} {:>10}{place}",
            s.stage,
            s.kind,
            &s.fingerprint[..12],
            s.state.as_str(),
            size
        ));
    }
    Ok(0)
}

fn explain(
    store: &Store,
    registry: &Registry,
    args: &TargetArgs,
    out: &Output,
) -> Result<i32, CliError> {
    let loaded = load(store, registry, args)?;
    let stages: Vec<_> = match &loaded.stage {
        Some(name) => loaded.plan.stage(name).into_iter().collect(),
        None => loaded.plan.stages.iter().collect(),
    };
    let mut entries = Vec::new();
    for stage in stages {
        let e = ausa_engine::explain(store, &loaded.plan, stage);
        if e.reasons.is_empty() {
            out.line(&format!(
                "{}: up to date ({})",
                stage.name,
                &stage.fingerprint[..12]
            ));
        } else {
            out.line(&format!(
                "{}: would rebuild ({}):",
                stage.name,
                &stage.fingerprint[..12]
            ));
            for r in &e.reasons {
                out.line(&format!("  {r}"));
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
    out: &Output,
) -> Result<i32, CliError> {
    let loaded = load(store, registry, args)?;
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
    let manifest = store
        .has_object(&id)
        .then(|| Manifest::read(&store.object_dir(&id)))
        .transpose()?;
    let state = ausa_engine::stage_states(store, &loaded.plan)
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
    out.line(&format!(
        "{}:{}  (kind `{}`: {})",
        loaded.plan.dag,
        stage.name,
        stage.kind,
        kind.doc()
    ));
    out.line(&format!("  fingerprint  {}", stage.fingerprint));
    out.line(&format!(
        "  state        {}",
        state.map_or("missing", |s| s.state.as_str())
    ));
    if manifest.is_some() {
        out.line(&format!(
            "  object       {}",
            store.object_dir(&id).display()
        ));
    }
    out.line("parameters:");
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
        out.line(&format!("  {:<20} = {value}{mark}    # {}", p.name, p.doc));
    }
    for (slot, up) in &spec.inputs {
        out.line(&format!("input {slot} <- {up}"));
    }
    if let Some(m) = manifest {
        out.line("files:");
        for f in &m.files {
            out.line(&format!(
                "  {:<28} {:>10}  blake3 {}",
                f.name,
                bytes(f.size),
                &f.blake3[..16]
            ));
        }
        out.line(&format!(
            "built by {} at {} in {:.2}s (ausa {})",
            m.built.host, m.built.time, m.built.seconds, m.tool_version
        ));
        out.line("statistics:");
        let stats = serde_json::to_string_pretty(&m.stats).unwrap_or_default();
        for l in stats.lines() {
            out.line(&format!("  {l}"));
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
    let refs = store.list_refs()?;
    let mut rows = Vec::new();
    for id in store.list_objects()? {
        let size = Manifest::read(&store.object_dir(&id))
            .ok()
            .map(|m| m.total_size());
        let names: Vec<String> = refs
            .iter()
            .filter(|(_, r)| r.as_ref().is_ok_and(|r| r.object() == id))
            .map(|(n, _)| n.to_string())
            .collect();
        rows.push(
            json!({"kind": id.kind, "fingerprint": id.fingerprint, "bytes": size, "refs": names}),
        );
    }
    out.json(&json!({"store": store.root(), "objects": rows}));
    out.line(&format!(
        "{:<12} {:<14} {:>10}  REFS",
        "KIND", "FINGERPRINT", "SIZE"
    ));
    for r in &rows {
        let size = r["bytes"]
            .as_u64()
            .map(bytes)
            .unwrap_or_else(|| "invalid".into());
        let names: Vec<_> = r["refs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        let fp = r["fingerprint"].as_str().unwrap_or("");
        out.line(&format!(
            "{:<12} {:<14} {:>10}  {}",
            r["kind"].as_str().unwrap_or(""),
            &fp[..12.min(fp.len())],
            size,
            names.join(" ")
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

fn gc(store: &Store, dry_run: bool, out: &Output) -> Result<i32, CliError> {
    let report = store.gc(dry_run)?;
    out.json(&json!({"dry_run": dry_run, "report": report}));
    let verb = if dry_run { "would remove" } else { "removed" };
    for id in &report.objects {
        out.line(&format!("{verb} object {id}"));
    }
    for dir in &report.temp_dirs {
        out.line(&format!("{verb} temp dir {}", dir.display()));
    }
    out.line(&format!(
        "{verb} {} object(s) ({}) and {} temp dir(s)",
        report.objects.len(),
        bytes(report.object_bytes),
        report.temp_dirs.len()
    ));
    Ok(0)
}
