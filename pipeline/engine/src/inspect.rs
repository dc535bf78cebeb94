//! The state of planned stages and the reasons they would rebuild (`status`,
//! `explain`, `build --dry-run`).
//!
//! Like ninja's `-d explain`, every reason is one short line; a changed key yields one
//! line per changed field.

use ausa_dag::{diff_keys, KeyChange, Plan, PlannedStage};
use ausa_store::{Manifest, Store};

use crate::{object_id, ref_name};

/// Whether a stage's object exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateKind {
    /// The object for the current fingerprint is in the store.
    UpToDate,
    /// The stage was built before, but with another key.
    Stale,
    /// Never built in this store (or its object was removed).
    Missing,
}

impl StateKind {
    /// The word shown in tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            StateKind::UpToDate => "up-to-date",
            StateKind::Stale => "stale",
            StateKind::Missing => "missing",
        }
    }
}

/// The state of one planned stage.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StageState {
    /// Stage name.
    pub stage: String,
    /// Stage kind.
    pub kind: String,
    /// Current fingerprint.
    pub fingerprint: String,
    /// The state.
    pub state: StateKind,
    /// Bytes of the object's files, when it exists.
    pub bytes: Option<u64>,
}

/// Why a stage would (or would not) rebuild.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    /// The stage's state.
    #[serde(flatten)]
    pub state: StageState,
    /// The fingerprint the DAG's ref points to, if any.
    pub previous: Option<String>,
    /// One line per reason; empty when up to date.
    pub reasons: Vec<String>,
    /// Field-by-field key differences against the ref's last build.
    pub changes: Vec<KeyChange>,
}

/// The state of every planned stage.
pub fn stage_states(store: &Store, plan: &Plan) -> Vec<StageState> {
    plan.stages
        .iter()
        .map(|s| state_of(store, plan, s))
        .collect()
}

fn state_of(store: &Store, plan: &Plan, stage: &PlannedStage) -> StageState {
    let id = object_id(stage);
    let manifest = store
        .has_object(&id)
        .then(|| Manifest::read(&store.object_dir(&id)).ok())
        .flatten();
    let state = if store.has_object(&id) {
        StateKind::UpToDate
    } else {
        match store.read_ref(&ref_name(plan, stage)) {
            Ok(Some(r)) if r.fingerprint != stage.fingerprint => StateKind::Stale,
            _ => StateKind::Missing,
        }
    };
    StageState {
        stage: stage.name.clone(),
        kind: stage.kind.clone(),
        fingerprint: stage.fingerprint.clone(),
        state,
        bytes: manifest.map(|m| m.total_size()),
    }
}

/// Explains one planned stage against the ref of its last build.
pub fn explain(store: &Store, plan: &Plan, stage: &PlannedStage) -> Explanation {
    let state = state_of(store, plan, stage);
    let name = ref_name(plan, stage);
    let previous = store.read_ref(&name);
    let mut reasons = Vec::new();
    let mut changes = Vec::new();
    match (&state.state, previous) {
        (StateKind::UpToDate, _) => {}
        (_, Err(e)) => reasons.push(format!("its ref cannot be read ({e})")),
        (_, Ok(None)) => reasons.push("never built in this store".into()),
        (_, Ok(Some(r))) if r.fingerprint == stage.fingerprint => {
            reasons.push("its object is missing from the store (removed by `ausa gc`?)".into())
        }
        (_, Ok(Some(r))) => {
            changes = diff_keys(&r.key, &stage.key);
            for reason in changes.iter().map(|c| describe_change(plan, stage, c)) {
                if !reasons.contains(&reason) {
                    reasons.push(reason);
                }
            }
            if reasons.is_empty() {
                reasons.push("its key encoding changed (a new ausa version)".into());
            }
        }
    }
    let previous = store.read_ref(&name).ok().flatten().map(|r| r.fingerprint);
    Explanation {
        state,
        previous,
        reasons,
        changes,
    }
}

fn describe_change(plan: &Plan, stage: &PlannedStage, c: &KeyChange) -> String {
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    if let Some(slot) = c.field.strip_prefix("inputs.") {
        let upstream = stage
            .inputs
            .iter()
            .find(|(s, _)| *s == slot)
            .map_or("?", |(_, idx)| plan.stages[*idx].name.as_str());
        return format!(
            "input `{slot}` changed: upstream stage `{upstream}` has a new fingerprint"
        );
    }
    if let Some(rest) = c.field.strip_prefix("external.") {
        // `train[1].blake3` and `train[1].size` are one file: report it once, by path.
        let entry = rest
            .split_once("].")
            .map_or(rest.to_string(), |(e, _)| format!("{e}]"));
        let path = external_path(stage, &entry)
            .map(|p| format!(" ({p})"))
            .unwrap_or_default();
        return match (&c.old, &c.new) {
            (None, _) => format!("external input {entry}{path} was added"),
            (_, None) => format!("external input {entry} was removed"),
            _ => format!("external input {entry}{path} changed content"),
        };
    }
    if c.field == "salt" {
        return format!(
            "the `{}` stage implementation changed (salt {} -> {})",
            stage.kind,
            show(&c.old),
            show(&c.new)
        );
    }
    format!("{} changed: {} -> {}", c.field, show(&c.old), show(&c.new))
}

/// The path of external file `param[i]` of a planned stage.
fn external_path(stage: &PlannedStage, entry: &str) -> Option<String> {
    let (param, index) = entry.strip_suffix(']')?.split_once('[')?;
    let file = stage
        .external
        .get(param)?
        .get(index.parse::<usize>().ok()?)?;
    Some(file.path.display().to_string())
}
