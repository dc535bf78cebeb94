//! The state of planned stages and the reasons they would rebuild (`status`,
//! `explain`, `build --dry-run`).
//!
//! Like ninja's `-d explain`, every reason is one short line; a changed key yields one
//! line per changed field.

use ausa_dag::{diff_keys, fingerprint, KeyChange, Plan, PlannedStage};
use ausa_store::{Config, Health, Ref, RefName, Store, VerifyMode, LEGACY_CONFIG};

use crate::object_id;

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
    /// Its key cannot be computed now: its remote inputs (files on a dataset hub), or
    /// an upstream stage's, are unknown offline (see [`ausa_dag::PlannedStage::pending`]).
    NeedsHub,
    /// The object exists but its bytes disagree with its manifest (a failed size
    /// check, or with a full check a failed hash), or it is not a real object directory.
    Damaged,
}

impl StateKind {
    /// The word shown in tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            StateKind::UpToDate => "up-to-date",
            StateKind::Stale => "stale",
            StateKind::Missing => "missing",
            StateKind::NeedsHub => "needs-hub",
            StateKind::Damaged => "damaged",
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
    /// Bytes of the object's files, when it exists and is sound.
    pub bytes: Option<u64>,
    /// What is wrong with a damaged object, one line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
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

/// The state of every planned stage in `config`. `mode` says how hard to look at
/// existing objects: [`VerifyMode::Sizes`] (a few stats, as a no-op build does) or
/// [`VerifyMode::Full`] (rehash every byte).
pub fn stage_states(
    store: &Store,
    plan: &Plan,
    config: &Config,
    mode: VerifyMode,
) -> Vec<StageState> {
    plan.stages
        .iter()
        .map(|s| state_of(store, config, s, mode))
        .collect()
}

fn state_of(store: &Store, config: &Config, stage: &PlannedStage, mode: VerifyMode) -> StageState {
    let id = object_id(stage);
    if stage.pending.is_some() {
        return StageState {
            stage: stage.name.clone(),
            kind: stage.kind.clone(),
            fingerprint: stage.fingerprint.clone(),
            state: StateKind::NeedsHub,
            bytes: None,
            problems: Vec::new(),
        };
    }
    let (state, bytes, problems) = match store.health(&id, mode, &fingerprint) {
        Ok(Health::Sound(m)) => (StateKind::UpToDate, Some(m.total_size()), Vec::new()),
        Ok(Health::Damaged(problems)) => (
            StateKind::Damaged,
            None,
            problems
                .iter()
                .map(|p| format!("{}: {}", p.path.display(), p.what))
                .collect(),
        ),
        Err(e) => (StateKind::Damaged, None, vec![e.to_string()]),
        Ok(Health::Absent) => match previous_ref(store, config, &stage.name) {
            Ok(Some((_, r))) if r.fingerprint != stage.fingerprint => {
                (StateKind::Stale, None, Vec::new())
            }
            _ => (StateKind::Missing, None, Vec::new()),
        },
    };
    StageState {
        stage: stage.name.clone(),
        kind: stage.kind.clone(),
        fingerprint: stage.fingerprint.clone(),
        state,
        bytes,
        problems,
    }
}

/// The last build of `stage` to compare with: in `config`, else (a configuration never
/// built here) in the DAG's configuration that built most recently, else in a store of
/// the old layout. Returns the configuration id with the ref.
fn previous_ref(
    store: &Store,
    config: &Config,
    stage: &str,
) -> Result<Option<(String, Ref)>, ausa_store::StoreError> {
    let name = |id: &str| RefName {
        dag: config.dag.clone(),
        config: id.to_string(),
        stage: stage.to_string(),
    };
    let own = config.id();
    if let Some(r) = store.read_ref(&name(&own))? {
        return Ok(Some((own, r)));
    }
    let mut others: Vec<_> = store
        .list_configs()?
        .into_iter()
        .filter(|c| c.dag == config.dag && c.id != own && c.stages.iter().any(|s| s == stage))
        .collect();
    // Newest first; the legacy refs (no time) last.
    others.sort_by_key(|c| std::cmp::Reverse((c.id != LEGACY_CONFIG, c.last_built)));
    for c in others {
        if let Some(r) = store.read_ref(&name(&c.id))? {
            return Ok(Some((c.id, r)));
        }
    }
    Ok(None)
}

/// Explains one planned stage against the ref of its last build in `config` (or, for a
/// configuration never built, of the DAG's most recent configuration).
pub fn explain(store: &Store, plan: &Plan, config: &Config, stage: &PlannedStage) -> Explanation {
    let state = state_of(store, config, stage, VerifyMode::Sizes);
    let previous = previous_ref(store, config, &stage.name).map(|p| p.map(|(_, r)| r));
    let mut reasons = Vec::new();
    let mut changes = Vec::new();
    match (&state.state, previous) {
        (StateKind::UpToDate, _) => {}
        (StateKind::NeedsHub, _) => reasons.extend(stage.pending.iter().map(|p| p.reason.clone())),
        (StateKind::Damaged, _) => {
            reasons.push("its object is damaged (a forced rebuild replaces it)".into());
            reasons.extend(state.problems.iter().cloned());
        }
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
    let previous = previous_ref(store, config, &stage.name)
        .ok()
        .flatten()
        .map(|(_, r)| r.fingerprint);
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
