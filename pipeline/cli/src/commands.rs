//! One function per subcommand. Each loads what it needs, calls the libraries, and
//! prints through [`Output`]: a text form for humans and a JSON form for scripts.

use std::time::Instant;

use ausa_build::{Outcome, Pipeline, Resolved, Target};
use ausa_engine::BuildOptions;
use ausa_store::{Manifest, ObjectId, Store, VerifyMode};
use rayon::prelude::*;
use serde_json::json;

use crate::args::{Cli, Command, TargetArgs};
use crate::diagnostics::CliError;
use crate::output::{bytes, Output};
use crate::remote;

/// Runs the command; returns the exit code for a completed command.
pub fn run(cli: &Cli, out: &Output) -> Result<i32, CliError> {
    let pipeline = || -> Result<Pipeline, CliError> {
        let root = Store::default_root(cli.store.as_deref());
        // An absolute root, so `ausa path` and JSON output print paths that work
        // from any directory.
        let root = std::path::absolute(&root).unwrap_or(root);
        Ok(Pipeline::new(Store::open(root)?))
    };
    match &cli.command {
        Command::Build {
            target,
            jobs,
            dry_run,
            force,
            push,
            remote,
        } => {
            let opts = BuildOptions {
                jobs: jobs.map_or(BuildOptions::default().jobs, |n| n as usize),
                force: *force,
            };
            let remote_flag = remote.remote.as_deref();
            let remote = match remote::remote_url(remote_flag)? {
                Some(_) if !*dry_run => Some(remote::open(remote_flag, "build")?),
                _ if *push => {
                    return Err(CliError::usage(
                        "`ausa build --push` needs a remote",
                        Some(remote::HOW_TO_NAME_A_REMOTE.into()),
                    ))
                }
                _ => None,
            };
            let remote = Remote {
                remote: remote.as_ref(),
                push: *push,
            };
            build(&pipeline()?, target, &opts, *dry_run, remote, out)
        }
        Command::Push { target, remote } => {
            let remote = remote::open(remote.remote.as_deref(), "push")?;
            let pipeline = pipeline()?;
            let resolved = resolve(&pipeline, target)?;
            remote::push_plan(pipeline.store(), &resolved.plan, &remote, out)
        }
        Command::Pull { target, remote } => {
            let remote = remote::open(remote.remote.as_deref(), "pull")?;
            let pipeline = pipeline()?;
            let resolved = resolve(&pipeline, target)?;
            remote::pull(pipeline.store(), &resolved.plan, &remote, out)
        }
        Command::Status { target, remote } => {
            let remote_flag = remote.remote.as_deref();
            let remote = remote::remote_url(remote_flag)?
                .map(|_| remote::open(remote_flag, "status"))
                .transpose()?;
            status(&pipeline()?, target, remote.as_ref(), out)
        }
        Command::Explain { target } => explain(&pipeline()?, target, out),
        Command::Show { target } => show(&pipeline()?, &target.into(), out),
        Command::Path { target } => path(&pipeline()?, &target.into(), out),
        Command::Ls => ls(pipeline()?.store(), out),
        Command::Verify { target, overrides } => {
            let target = target.as_ref().map(|t| TargetArgs {
                target: t.clone(),
                overrides: overrides.clone(),
            });
            verify(&pipeline()?, target.as_ref(), out)
        }
        Command::Gc { dry_run } => gc(pipeline()?.store(), *dry_run, out),
        #[cfg(feature = "train")]
        Command::Train(args) => crate::train::run(cli.store.as_deref(), args, out),
    }
}

/// The remote side of a build: read-through and `--push`.
#[derive(Clone, Copy)]
struct Remote<'a> {
    remote: Option<&'a ausa_remote::Remote>,
    push: bool,
}

/// Resolves a `DAG[:STAGE]` argument with its `--set` overrides through the build API.
fn resolve(pipeline: &Pipeline, args: &TargetArgs) -> Result<Resolved, CliError> {
    let target = Target::parse(&args.target, &args.overrides)?;
    pipeline
        .resolve(&target)
        .map_err(|e| CliError::from_build(e, args))
}

fn build(
    pipeline: &Pipeline,
    args: &TargetArgs,
    opts: &BuildOptions,
    dry_run: bool,
    remote: Remote<'_>,
    out: &Output,
) -> Result<i32, CliError> {
    let resolved = resolve(pipeline, args)?;
    let store = pipeline.store();
    if dry_run {
        return dry_run_report(store, &resolved, opts, out);
    }
    let started = Instant::now();
    let reporter = out.reporter(&resolved.plan.dag);
    let source = remote.remote.map(remote::RemoteSource);
    let source = source.as_ref().map(|s| s as &dyn ausa_engine::ObjectSource);
    let report = pipeline.build(&resolved, opts, &reporter, source);
    drop(reporter);
    out.json(
        &json!({"ok": report.ok(), "seconds": started.elapsed().as_secs_f64(), "report": report}),
    );
    let count = |f: fn(&Outcome) -> bool| report.stages.iter().filter(|s| f(&s.outcome)).count();
    let built = count(|o| matches!(o, Outcome::Built { .. }));
    let fetched = count(|o| matches!(o, Outcome::Fetched { .. }));
    if report.ok() {
        let fresh = report.stages.len() - built - fetched;
        let from_remote = if remote.remote.is_some() {
            format!("{fetched} fetched, ")
        } else {
            String::new()
        };
        out.log(&format!(
            "{}: {built} built, {from_remote}{fresh} up to date ({:.2}s)",
            resolved.plan.dag,
            started.elapsed().as_secs_f64()
        ));
        if let (Some(r), true) = (remote.remote, remote.push) {
            // With --json only the build's document goes to stdout.
            let quiet = Output::new(false, true);
            remote::push_plan(
                store,
                &resolved.plan,
                r,
                if out.is_json() { &quiet } else { out },
            )?;
        }
        return Ok(0);
    }
    Err(CliError::build_failed(&report, args, out))
}

fn dry_run_report(
    store: &Store,
    loaded: &Resolved,
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
    pipeline: &Pipeline,
    args: &TargetArgs,
    remote: Option<&ausa_remote::Remote>,
    out: &Output,
) -> Result<i32, CliError> {
    let store = pipeline.store();
    let loaded = resolve(pipeline, args)?;
    let states = pipeline.states(&loaded);
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

fn explain(pipeline: &Pipeline, args: &TargetArgs, out: &Output) -> Result<i32, CliError> {
    let store = pipeline.store();
    let loaded = resolve(pipeline, args)?;
    let mut entries = Vec::new();
    for stage in loaded.targeted() {
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

/// The stage a single-stage command (`show`, `path`) works on.
fn selected_stage<'a>(
    loaded: &'a Resolved,
    args: &TargetArgs,
) -> Result<&'a ausa_dag::PlannedStage, CliError> {
    loaded.selected().map_err(|e| CliError::from_build(e, args))
}

fn show(pipeline: &Pipeline, args: &TargetArgs, out: &Output) -> Result<i32, CliError> {
    let (store, registry) = (pipeline.store(), pipeline.registry());
    let loaded = resolve(pipeline, args)?;
    let stage = selected_stage(&loaded, args)?;
    let spec = loaded
        .dag
        .stage(&stage.name)
        .expect("planned stages come from the DAG");
    let kind = registry
        .get(&stage.kind)
        .expect("validated kinds are registered");
    let id = ausa_engine::object_id(stage);
    let manifest = store
        .has_object(&id)
        .then(|| Manifest::read(&store.object_dir(&id)))
        .transpose()?;
    let state = pipeline
        .states(&loaded)
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
        out.line("stats:");
        let stats = serde_json::to_string_pretty(&m.stats).unwrap_or_default();
        for l in stats.lines() {
            out.line(&format!("  {l}"));
        }
    }
    Ok(0)
}

fn path(pipeline: &Pipeline, args: &TargetArgs, out: &Output) -> Result<i32, CliError> {
    let loaded = resolve(pipeline, args)?;
    let stage = selected_stage(&loaded, args)?;
    let dirs = pipeline
        .object_dirs(&loaded)
        .map_err(|e| CliError::from_build(e, args))?;
    let dir = &dirs
        .stage(&stage.name)
        .expect("object_dirs covers every planned stage")
        .dir;
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

fn verify(pipeline: &Pipeline, target: Option<&TargetArgs>, out: &Output) -> Result<i32, CliError> {
    let store = pipeline.store();
    let ids: Vec<ObjectId> = match target {
        None => store.list_objects()?,
        Some(args) => {
            let loaded = resolve(pipeline, args)?;
            let ids = loaded.plan.stages.iter().map(ausa_engine::object_id);
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
        return Ok(0);
    }
    // Name the DAG:STAGE of each damaged object, from the refs that point at it.
    let refs = store.list_refs().unwrap_or_default();
    let mut hints = Vec::new();
    for (id, result) in &results {
        let damaged = match result {
            Ok((_, found)) => !found.is_empty(),
            Err(_) => true,
        };
        if !damaged {
            continue;
        }
        let users: Vec<String> = refs
            .iter()
            .filter(|(_, r)| r.as_ref().is_ok_and(|r| r.object() == **id))
            .map(|(name, _)| format!("`ausa build {}:{} --force`", name.dag, name.stage))
            .collect();
        hints.push(match users.is_empty() {
            true => format!("{id} is referenced by no DAG: `ausa gc` removes it"),
            false => format!("rebuild {id} with {}", users.join(" or ")),
        });
    }
    Err(CliError {
        message: format!(
            "{} problem(s) found in the store {}",
            problems.len(),
            store.root().display()
        ),
        hints,
        code: 1,
    })
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
