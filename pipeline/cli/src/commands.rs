//! One function per subcommand. Each loads what it needs, calls the libraries, and
//! prints through [`Output`]: a text form for humans and a JSON form for scripts.

use std::time::Instant;

use ausa_build::{Outcome, Pipeline, Resolved, Target};
use ausa_engine::BuildOptions;
use ausa_store::{Health, Manifest, ObjectId, Store, StoreError, VerifyMode};
use rayon::prelude::*;
use serde_json::json;

use crate::args::{Cli, Command, TargetArgs};
use crate::diagnostics::CliError;
use crate::output::{bytes, Output};
use crate::remote;

/// Runs the command; returns the exit code for a completed command.
pub fn run(cli: &Cli, out: &Output) -> Result<i32, CliError> {
    let root = Store::default_root(cli.store.as_deref());
    // An absolute root, so `ausa path` and JSON output print paths that work from any
    // directory.
    let root = std::path::absolute(&root).unwrap_or(root);
    // Only commands that write (build, pull) may create a store; the others say there
    // is none rather than start an empty cache because of a typo.
    let pipeline = || -> Result<Pipeline, CliError> { Ok(Pipeline::new(Store::open(&root)?)) };
    let writing = || -> Result<Pipeline, CliError> { Ok(Pipeline::new(Store::create(&root)?)) };
    match &cli.command {
        Command::Build {
            target,
            jobs,
            dry_run,
            force,
            force_upstream,
            push,
            remote,
        } => {
            let opts = BuildOptions {
                jobs: jobs.map_or(BuildOptions::default().jobs, |n| n as usize),
                ..BuildOptions::default()
            };
            let force = Force {
                stages: *force || *force_upstream,
                upstream: *force_upstream,
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
            // A dry run writes nothing: a missing store reads as an empty one.
            let pipeline = match dry_run {
                true => match Store::open(&root) {
                    Ok(store) => Pipeline::new(store),
                    Err(StoreError::NoStore { .. }) => Pipeline::new(Store::at(&root)),
                    Err(e) => return Err(e.into()),
                },
                false => writing()?,
            };
            build(&pipeline, target, &opts, force, *dry_run, remote, out)
        }
        Command::Push { target, remote } => {
            let remote = remote::open(remote.remote.as_deref(), "push")?;
            let pipeline = pipeline()?;
            let resolved = resolve(&pipeline, target)?;
            remote::push_plan(pipeline.store(), &resolved, &remote, out)
        }
        Command::Pull { target, remote } => {
            let remote = remote::open(remote.remote.as_deref(), "pull")?;
            let pipeline = writing()?;
            let resolved = resolve(&pipeline, target)?;
            remote::pull(pipeline.store(), &resolved, &remote, out)
        }
        Command::Status {
            target,
            verify,
            remote,
        } => {
            let remote_flag = remote.remote.as_deref();
            let remote = remote::remote_url(remote_flag)?
                .map(|_| remote::open(remote_flag, "status"))
                .transpose()?;
            status(&pipeline()?, target, *verify, remote.as_ref(), out)
        }
        Command::Explain { target } => explain(&pipeline()?, target, out),
        Command::Show { target, verify } => show(&pipeline()?, &target.into(), *verify, out),
        Command::Path { target } => path(&pipeline()?, &target.into(), out),
        Command::Ls => ls(pipeline()?.store(), out),
        Command::Verify { target, overrides } => {
            let target = target.as_ref().map(|t| TargetArgs {
                target: t.clone(),
                overrides: overrides.clone(),
            });
            verify(&pipeline()?, target.as_ref(), out)
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
            gc(pipeline()?.store(), &opts, out)
        }
        #[cfg(feature = "train")]
        Command::Train(args) => crate::train::run(cli.store.as_deref(), args, out),
        #[cfg(feature = "train")]
        Command::Sweep(args) => crate::sweep::run(cli.store.as_deref(), args, out),
        #[cfg(feature = "train")]
        Command::Bench(args) => crate::bench::run(args, out),
        Command::Report(args) => crate::report::run(args, out),
    }
}

/// What `--force` / `--force-upstream` asked for.
#[derive(Clone, Copy)]
struct Force {
    /// Rebuild the named stages (or, for a whole DAG, every stage).
    stages: bool,
    /// Rebuild their upstream stages too.
    upstream: bool,
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

/// How hard `status` and `show` look at existing objects.
fn check_mode(verify: bool) -> VerifyMode {
    if verify {
        VerifyMode::Full
    } else {
        VerifyMode::Sizes
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
    force: Force,
    dry_run: bool,
    remote: Remote<'_>,
    out: &Output,
) -> Result<i32, CliError> {
    let resolved = resolve(pipeline, args)?;
    let store = pipeline.store();
    let opts = &BuildOptions {
        force: match force.stages {
            true => ausa_engine::forced_stages(&resolved.plan, &resolved.stages, force.upstream),
            false => Vec::new(),
        },
        config: Some(resolved.config.clone()),
        ..opts.clone()
    };
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
                &resolved,
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
        let mut e = ausa_engine::explain(store, &loaded.plan, &loaded.config, stage);
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

fn status(
    pipeline: &Pipeline,
    args: &TargetArgs,
    verify: bool,
    remote: Option<&ausa_remote::Remote>,
    out: &Output,
) -> Result<i32, CliError> {
    let store = pipeline.store();
    let loaded = resolve(pipeline, args)?;
    let states = pipeline.states_checked(&loaded, check_mode(verify));
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
    Ok(if states.iter().any(|s| s.state == StateKind::Damaged) {
        STATUS_DAMAGED
    } else if states.iter().any(|s| s.state != StateKind::UpToDate) {
        STATUS_NOT_BUILT
    } else {
        0
    })
}

fn explain(pipeline: &Pipeline, args: &TargetArgs, out: &Output) -> Result<i32, CliError> {
    let store = pipeline.store();
    let loaded = resolve(pipeline, args)?;
    let mut entries = Vec::new();
    for stage in loaded.targeted() {
        let e = ausa_engine::explain(store, &loaded.plan, &loaded.config, stage);
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

/// The stage a single-stage command (`show`, `path`) works on.
fn selected_stage<'a>(
    loaded: &'a Resolved,
    args: &TargetArgs,
    command: &str,
) -> Result<&'a ausa_dag::PlannedStage, CliError> {
    loaded.selected().map_err(|e| match e {
        ausa_build::BuildError::NeedsStage { dag, stages } => CliError::usage(
            format!("`ausa {command}` needs one stage: `{dag}:STAGE`"),
            Some(format!("stages of `{dag}`: {}", stages.join(", "))),
        ),
        e => CliError::from_build(e, args),
    })
}

fn show(
    pipeline: &Pipeline,
    args: &TargetArgs,
    verify: bool,
    out: &Output,
) -> Result<i32, CliError> {
    let (store, registry) = (pipeline.store(), pipeline.registry());
    let loaded = resolve(pipeline, args)?;
    let stage = selected_stage(&loaded, args, "show")?;
    let spec = loaded
        .dag
        .stage(&stage.name)
        .expect("planned stages come from the DAG");
    let kind = registry
        .get(&stage.kind)
        .expect("validated kinds are registered");
    let id = ausa_engine::object_id(stage);
    let manifest = match store.health(&id, check_mode(verify), &ausa_dag::fingerprint)? {
        Health::Sound(m) => Some(*m),
        // A damaged object's manifest is shown if it parses, its state says damaged.
        Health::Damaged(_) => Manifest::read(&store.object_dir(&id)).ok(),
        Health::Absent => None,
    };
    let state = pipeline
        .states_checked(&loaded, check_mode(verify))
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
        out.data("stats:");
        let stats = serde_json::to_string_pretty(&m.stats).unwrap_or_default();
        for l in stats.lines() {
            out.data(&format!("  {l}"));
        }
    }
    Ok(0)
}

fn path(pipeline: &Pipeline, args: &TargetArgs, out: &Output) -> Result<i32, CliError> {
    let loaded = resolve(pipeline, args)?;
    let stage = selected_stage(&loaded, args, "path")?;
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
    let configs = store.list_configs()?;
    let refs = store.list_refs()?;
    let mut rows = Vec::new();
    for id in store.list_objects()? {
        let size = store
            .has_object(&id)
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
            .map(|(name, _)| {
                let label = store
                    .list_configs()
                    .ok()
                    .and_then(|c| {
                        c.into_iter()
                            .find(|c| c.dag == name.dag && c.id == name.config)
                    })
                    .and_then(|c| c.overrides)
                    .map(|o| o.iter().map(|o| format!(" --set {o}")).collect::<String>())
                    .unwrap_or_default();
                format!("`ausa build {}:{} --force{label}`", name.dag, name.stage)
            })
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
