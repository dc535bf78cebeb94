//! `ausa push`, `ausa pull`, and the remote half of `build --remote/--push` and
//! `status --remote`: choosing the remote, and reporting transfers.

use std::time::Instant;

use ausa_dag::Plan;
use ausa_remote::{Remote, RemoteError, Transfer};
use ausa_store::{ObjectId, Store};
use serde_json::json;

use crate::diagnostics::CliError;
use crate::output::{bytes, Output};

/// The remote URL: `--remote`, else `$AUSA_REMOTE`, else `remote = "..."` in
/// `$XDG_CONFIG_HOME/ausa/config.toml` (or `~/.config/ausa/config.toml`).
pub fn remote_url(flag: Option<&str>) -> Result<Option<String>, CliError> {
    if let Some(url) = flag.filter(|u| !u.is_empty()) {
        return Ok(Some(url.to_string()));
    }
    if let Some(url) = std::env::var("AUSA_REMOTE").ok().filter(|u| !u.is_empty()) {
        return Ok(Some(url));
    }
    config_remote()
}

fn config_remote() -> Result<Option<String>, CliError> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    let dir = env("XDG_CONFIG_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".config")));
    let Some(path) = dir.map(|d| d.join("ausa").join("config.toml")) else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e| CliError::usage(format!("{}: {e}", path.display()), None))?;
    Ok(table
        .get("remote")
        .and_then(|v| v.as_str())
        .map(String::from))
}

/// The hint for a command that needs a remote and got none.
pub const HOW_TO_NAME_A_REMOTE: &str =
    "pass --remote s3://bucket/prefix (or file:///path), or set AUSA_REMOTE";

/// Opens the remote, or explains how to name one.
pub fn open(flag: Option<&str>, command: &str) -> Result<Remote, CliError> {
    let url = remote_url(flag)?.ok_or_else(|| {
        CliError::usage(
            format!("`ausa {command}` needs a remote"),
            Some(HOW_TO_NAME_A_REMOTE.into()),
        )
    })?;
    Remote::open(&url).map_err(remote_error)
}

/// A remote error with a hint for the usual causes.
pub fn remote_error(e: RemoteError) -> CliError {
    let hint = match &e {
        RemoteError::Url { .. } => Some("remote URLs look like s3://bucket/prefix or file:///abs/path".into()),
        RemoteError::Backend { .. } => Some(
            "check the network, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION and AWS_ENDPOINT_URL".into(),
        ),
        RemoteError::Untrusted { .. } => Some(
            "the remote copy is damaged or was tampered with: nothing was published locally; re-push it from a good store".into(),
        ),
        RemoteError::NotOnRemote { .. } => Some("push it first: `ausa push <DAG>` on the machine that built it".into()),
        RemoteError::Store(_) => None,
    };
    match e {
        RemoteError::Store(s) => s.into(),
        e => CliError::failure(e.to_string(), hint),
    }
}

fn ids(plan: &Plan) -> Vec<ObjectId> {
    plan.stages.iter().map(ausa_engine::object_id).collect()
}

/// `ausa push`: pushes every object of `plan` (all must be built) and points the remote refs at them.
pub fn push_plan(
    store: &Store,
    resolved: &ausa_build::Resolved,
    remote: &Remote,
    out: &Output,
) -> Result<i32, CliError> {
    let plan = &resolved.plan;
    if let Some(stage) = plan
        .stages
        .iter()
        .find(|s| !store.has_object(&ausa_engine::object_id(s)))
    {
        return Err(CliError::failure(
            format!(
                "{}:{} is not built, so it cannot be pushed",
                plan.dag, stage.name
            ),
            Some(format!(
                "run `ausa build {}` first (or `ausa build {} --push`)",
                plan.dag, plan.dag
            )),
        ));
    }
    let started = Instant::now();
    let bar = out.transfer_bar(&format!("push {}", plan.dag));
    let result = remote
        .push_objects(store, &ids(plan), &bar)
        .map_err(remote_error)?;
    drop(bar);
    for stage in &plan.stages {
        let name = ausa_engine::ref_name(&resolved.config, stage);
        remote
            .push_ref(&name, &ausa_engine::planned_ref(stage))
            .map_err(remote_error)?;
    }
    report(plan, remote, &result, started, "pushed", out);
    Ok(0)
}

/// `ausa pull`: objects the local store lacks, verified, then local refs.
pub fn pull(
    store: &Store,
    resolved: &ausa_build::Resolved,
    remote: &Remote,
    out: &Output,
) -> Result<i32, CliError> {
    let plan = &resolved.plan;
    let started = Instant::now();
    let bar = out.transfer_bar(&format!("pull {}", plan.dag));
    let result = remote
        .pull_objects(store, &ids(plan), &ausa_dag::fingerprint, &bar)
        .map_err(remote_error)?;
    drop(bar);
    for stage in &plan.stages {
        // Pinned so that a gc elsewhere cannot take the object before its ref exists.
        let pin = store.pin(&ausa_engine::object_id(stage))?;
        if !pin.present {
            return Err(CliError::failure(
                format!(
                    "{}:{} vanished from the store right after the pull",
                    plan.dag, stage.name
                ),
                Some("run the pull again".into()),
            ));
        }
        store.record_ref(
            &resolved.config,
            &stage.name,
            &ausa_engine::planned_ref(stage),
        )?;
    }
    report(plan, remote, &result, started, "pulled", out);
    Ok(0)
}

/// One line per stage and a total with bytes/s; or one JSON document.
fn report(
    plan: &Plan,
    remote: &Remote,
    result: &[(ObjectId, Transfer)],
    started: Instant,
    verb: &str,
    out: &Output,
) {
    let seconds = started.elapsed().as_secs_f64();
    let total: u64 = result
        .iter()
        .map(|(_, t)| match t {
            Transfer::Copied(n) => *n,
            Transfer::Present => 0,
        })
        .sum();
    let rate = total as f64 / seconds.max(1e-9);
    let stages: Vec<_> = plan
        .stages
        .iter()
        .zip(result)
        .map(|(s, (_, t))| {
            let (transfer, n) = match t {
                Transfer::Copied(n) => (verb, *n),
                Transfer::Present => ("present", 0),
            };
            out.line(&format!(
                "{transfer:>9} {}:{} [{} {}] {}",
                plan.dag,
                s.name,
                s.kind,
                &s.fingerprint[..12],
                bytes(n)
            ));
            json!({"stage": s.name, "kind": s.kind, "fingerprint": s.fingerprint, "transfer": transfer, "bytes": n})
        })
        .collect();
    out.json(
        &json!({"dag": plan.dag, "remote": remote.url(), "stages": stages,
        "bytes": total, "seconds": seconds, "bytes_per_second": rate}),
    );
    out.log(&format!(
        "{}: {verb} {} in {seconds:.2}s ({}/s) {} {}",
        plan.dag,
        bytes(total),
        bytes(rate as u64),
        if verb == "pushed" { "to" } else { "from" },
        remote.url()
    ));
}

/// Read-through builds: a missing object is pulled from the remote when it has it.
pub struct RemoteSource<'a>(pub &'a Remote);

impl ausa_engine::ObjectSource for RemoteSource<'_> {
    fn fetch(
        &self,
        store: &Store,
        id: &ObjectId,
        progress: &dyn ausa_dag::Progress,
    ) -> Result<Option<u64>, String> {
        match self.0.pull_objects(
            store,
            std::slice::from_ref(id),
            &ausa_dag::fingerprint,
            &StageBytes(progress),
        ) {
            Ok(done) => Ok(Some(match done.first().map(|(_, t)| *t) {
                Some(Transfer::Copied(n)) => n,
                _ => 0,
            })),
            Err(RemoteError::NotOnRemote { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn parallel_fetches(&self) -> usize {
        ausa_remote::OBJECT_CONCURRENCY
    }
}

/// A fetch's bytes on the stage's progress bar.
struct StageBytes<'a>(&'a dyn ausa_dag::Progress);

impl ausa_remote::TransferProgress for StageBytes<'_> {
    fn start(&self, total_bytes: u64) {
        self.0.set_total(total_bytes, ausa_dag::ProgressUnit::Bytes);
    }

    fn advance(&self, n: u64) {
        self.0.advance(n);
    }
}

/// Where each planned object is: `local`, `remote` or `missing`.
pub fn locations(
    store: &Store,
    plan: &Plan,
    remote: &Remote,
) -> Result<Vec<&'static str>, CliError> {
    let ids = ids(plan);
    let on_remote = remote.present(&ids).map_err(remote_error)?;
    Ok(ids
        .iter()
        .zip(on_remote)
        .map(|(id, r)| match (store.has_object(id), r) {
            (true, _) => "local",
            (false, true) => "remote",
            (false, false) => "missing",
        })
        .collect())
}
