//! Parsing and validating DAG files.
//!
//! A DAG file is TOML:
//!
//! ```toml
//! description = "What this DAG is for"
//!
//! [stages.corpus]
//! kind = "corpus"          # a stage kind from the registry
//! docs = 2000              # parameters of that kind; omitted ones take their defaults
//!
//! [stages.doc_stats]
//! kind = "doc_stats"
//! inputs = { documents = "corpus" }   # slot = upstream stage; a list fills slots in order
//! ```
//!
//! Every error names the file, line and key, and lists the valid choices.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::params::{ParamType, ParamValue, Params};
use crate::stage::Registry;

/// Where a DAG's text came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Compiled into the binary under this name.
    Embedded(String),
    /// Read from this file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Embedded(name) => write!(f, "<embedded dags/{name}.toml>"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The text of a DAG and where it came from.
#[derive(Debug, Clone)]
pub struct DagSource {
    /// The DAG's name: refs are stored under it (`refs/<name>/<stage>`).
    pub name: String,
    /// Where the text came from (for error messages).
    pub origin: Origin,
    /// The directory relative `Paths` parameters are resolved against.
    pub base_dir: PathBuf,
    /// The TOML text.
    pub text: String,
}

/// A position in a DAG file, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file (or embedded name, or `--set`).
    pub origin: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

/// A DAG that could not be loaded: malformed TOML, unknown kind or parameter, wrong
/// type, bad reference, cycle. Always a usage error (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DagError {
    /// Where, when known.
    pub location: Option<Location>,
    /// What is wrong, naming the key or value.
    pub message: String,
    /// What to do about it (valid choices, the fix).
    pub hint: Option<String>,
}

impl fmt::Display for DagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(loc) = &self.location {
            write!(f, "{}:{}:{}: ", loc.origin, loc.line, loc.column)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for DagError {}

/// One `--set STAGE.PARAM=VALUE` override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Target stage name.
    pub stage: String,
    /// Parameter name.
    pub param: String,
    /// The value, parsed as a TOML value when it is one, else taken as a string.
    pub value: toml::Value,
    /// The argument as typed, for error messages.
    pub text: String,
}

impl Override {
    /// Parses `STAGE.PARAM=VALUE`.
    ///
    /// VALUE is read as TOML (`3`, `0.5`, `true`, `"x"`, `["a", "b"]`); anything that is
    /// not valid TOML is taken as a plain string, so `--set corpus.source=local` works.
    pub fn parse(text: &str) -> Result<Override, DagError> {
        let usage = |why: &str| DagError {
            location: None,
            message: format!("invalid --set `{text}`: {why}"),
            hint: Some("write --set STAGE.PARAM=VALUE, e.g. --set corpus.docs=500".into()),
        };
        let (lhs, rhs) = text.split_once('=').ok_or_else(|| usage("missing `=`"))?;
        let (stage, param) = lhs.split_once('.').ok_or_else(|| usage("missing `.`"))?;
        if stage.is_empty() || param.is_empty() {
            return Err(usage("empty stage or parameter name"));
        }
        let value = toml::from_str::<BTreeMap<String, toml::Value>>(&format!("v = {rhs}"))
            .ok()
            .and_then(|mut m| m.remove("v"))
            .unwrap_or_else(|| toml::Value::String(rhs.to_string()));
        Ok(Override {
            stage: stage.trim().to_string(),
            param: param.trim().to_string(),
            value,
            text: text.to_string(),
        })
    }
}

/// One validated stage of a DAG.
#[derive(Debug, Clone, PartialEq)]
pub struct StageSpec {
    /// The stage's name in the DAG (`[stages.<name>]`).
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Every parameter of the kind, defaults filled in, overrides applied.
    pub params: Params,
    /// `(slot, upstream stage name)` in the kind's slot order.
    pub inputs: Vec<(&'static str, String)>,
    /// Names of parameters that came from defaults (for `ausa show`).
    pub defaulted: BTreeSet<String>,
}

/// A validated DAG, stages in topological order (ties broken by name).
#[derive(Debug, Clone)]
pub struct DagSpec {
    /// The DAG's name.
    pub name: String,
    /// The `description` field, if any.
    pub description: Option<String>,
    /// Directory relative input paths resolve against.
    pub base_dir: PathBuf,
    /// Stages, each after all its upstreams.
    pub stages: Vec<StageSpec>,
}

type RawStage = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDag {
    #[serde(default)]
    description: Option<String>,
    stages: BTreeMap<Spanned<String>, Spanned<RawStage>>,
}

/// Keys of a stage table that are not parameters.
const RESERVED_KEYS: [&str; 2] = ["kind", "inputs"];

struct Ctx<'a> {
    source: &'a DagSource,
}

impl Ctx<'_> {
    fn at(&self, offset: usize) -> Location {
        let before = &self.source.text[..offset.min(self.source.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Location {
            origin: self.source.origin.to_string(),
            line,
            column,
        }
    }

    fn err(&self, offset: usize, message: String, hint: Option<String>) -> DagError {
        DagError {
            location: Some(self.at(offset)),
            message,
            hint,
        }
    }
}

impl DagSpec {
    /// Parses and validates `source` against `registry`, then applies `overrides`.
    pub fn load(
        source: &DagSource,
        registry: &Registry,
        overrides: &[Override],
    ) -> Result<DagSpec, DagError> {
        let ctx = Ctx { source };
        let raw: RawDag = toml::from_str(&source.text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            ctx.err(offset, format!("malformed DAG file: {}", e.message()), None)
        })?;
        let mut stages = BTreeMap::new();
        for (name, table) in &raw.stages {
            let spec = parse_stage(&ctx, registry, name, table)?;
            stages.insert(name.get_ref().clone(), spec);
        }
        if stages.is_empty() {
            return Err(ctx.err(0, "the DAG has no stages".into(), None));
        }
        for ov in overrides {
            apply_override(&mut stages, registry, ov)?;
        }
        check_references(&ctx, &raw, &stages, registry)?;
        let order = topological_order(&ctx, &raw, &stages)?;
        let stages = order
            .into_iter()
            .filter_map(|n| stages.remove(&n))
            .collect();
        Ok(DagSpec {
            name: source.name.clone(),
            description: raw.description,
            base_dir: source.base_dir.clone(),
            stages,
        })
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.name == name)
    }

    /// The error for a stage name that is not in this DAG, listing the valid ones.
    pub fn unknown_stage(&self, name: &str) -> DagError {
        DagError {
            location: None,
            message: format!("DAG `{}` has no stage `{name}`", self.name),
            hint: Some(format!(
                "stages of `{}`: {}",
                self.name,
                self.stage_names().join(", ")
            )),
        }
    }

    fn stage_names(&self) -> Vec<&str> {
        self.stages.iter().map(|s| s.name.as_str()).collect()
    }

    /// Names of `target` and every stage it depends on, in topological order; all
    /// stages when `target` is `None`.
    pub fn closure(&self, target: Option<&str>) -> Result<Vec<&StageSpec>, DagError> {
        let Some(target) = target else {
            return Ok(self.stages.iter().collect());
        };
        if self.stage(target).is_none() {
            return Err(self.unknown_stage(target));
        }
        let mut needed = BTreeSet::from([target.to_string()]);
        for stage in self.stages.iter().rev() {
            if needed.contains(&stage.name) {
                needed.extend(stage.inputs.iter().map(|(_, up)| up.clone()));
            }
        }
        Ok(self
            .stages
            .iter()
            .filter(|s| needed.contains(&s.name))
            .collect())
    }
}

fn parse_stage(
    ctx: &Ctx<'_>,
    registry: &Registry,
    name: &Spanned<String>,
    table: &Spanned<RawStage>,
) -> Result<StageSpec, DagError> {
    let stage_name = name.get_ref();
    if !is_valid_name(stage_name) {
        return Err(ctx.err(
            name.span().start,
            format!("invalid stage name `{stage_name}`"),
            Some("stage names use letters, digits, `_` and `-`".into()),
        ));
    }
    let kind_value = table
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == "kind")
        .map(|(_, v)| v)
        .ok_or_else(|| {
            ctx.err(
                table.span().start,
                format!("stage `{stage_name}` has no `kind`"),
                Some(format!("valid kinds: {}", registry.kinds().join(", "))),
            )
        })?;
    let kind = match kind_value.get_ref() {
        toml::Value::String(s) => s.clone(),
        other => {
            return Err(ctx.err(
                kind_value.span().start,
                format!(
                    "stage `{stage_name}`: `kind` must be a string, found {}",
                    other.type_str()
                ),
                None,
            ))
        }
    };
    let stage = registry.get(&kind).ok_or_else(|| {
        ctx.err(
            kind_value.span().start,
            format!("stage `{stage_name}`: unknown stage kind `{kind}`"),
            Some(format!("valid kinds: {}", registry.kinds().join(", "))),
        )
    })?;
    let mut values = BTreeMap::new();
    let mut inputs_raw = None;
    for (key, value) in table.get_ref() {
        match key.get_ref().as_str() {
            "kind" => {}
            "inputs" => inputs_raw = Some(value),
            param => {
                let spec = stage.param(param).ok_or_else(|| {
                    ctx.err(
                        key.span().start,
                        format!(
                            "stage `{stage_name}`: unknown parameter `{param}` for kind `{kind}`"
                        ),
                        Some(valid_params_hint(stage.params().iter().map(|p| p.name))),
                    )
                })?;
                let v = ParamValue::from_toml(&spec.ty, value.get_ref()).map_err(|why| {
                    ctx.err(
                        value.span().start,
                        format!("stage `{stage_name}`, parameter `{param}`: {why}"),
                        None,
                    )
                })?;
                values.insert(param.to_string(), v);
            }
        }
    }
    let mut defaulted = BTreeSet::new();
    for spec in stage.params() {
        if values.contains_key(spec.name) {
            continue;
        }
        let default = spec.default.value().ok_or_else(|| {
            ctx.err(
                table.span().start,
                format!(
                    "stage `{stage_name}`: required parameter `{}` is missing",
                    spec.name
                ),
                Some(format!(
                    "`{}`: {} ({})",
                    spec.name,
                    spec.doc,
                    spec.ty.describe()
                )),
            )
        })?;
        values.insert(spec.name.to_string(), default);
        defaulted.insert(spec.name.to_string());
    }
    let params = Params::from_values(values);
    stage.check(&params).map_err(|why| {
        ctx.err(
            table.span().start,
            format!("stage `{stage_name}`: {why}"),
            None,
        )
    })?;
    let inputs = parse_inputs(
        ctx,
        stage_name,
        stage.inputs(),
        inputs_raw,
        table.span().start,
    )?;
    Ok(StageSpec {
        name: stage_name.clone(),
        kind,
        params,
        inputs,
        defaulted,
    })
}

fn valid_params_hint<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<_> = names.collect();
    if names.is_empty() {
        "this kind takes no parameters (besides `kind` and `inputs`)".into()
    } else {
        format!("valid parameters: {}", names.join(", "))
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !RESERVED_KEYS.contains(&name)
}

fn parse_inputs(
    ctx: &Ctx<'_>,
    stage_name: &str,
    slots: &'static [crate::stage::InputSlot],
    raw: Option<&Spanned<toml::Value>>,
    table_offset: usize,
) -> Result<Vec<(&'static str, String)>, DagError> {
    let slot_names = || slots.iter().map(|s| s.name).collect::<Vec<_>>().join(", ");
    let offset = raw.map_or(table_offset, |r| r.span().start);
    let bad = |why: String| {
        let hint = if slots.is_empty() {
            "this kind reads no inputs: remove `inputs`".to_string()
        } else {
            format!(
                "input slots: {}; write inputs = {{ {} = \"<stage>\" }}",
                slot_names(),
                slots[0].name
            )
        };
        ctx.err(offset, format!("stage `{stage_name}`: {why}"), Some(hint))
    };
    let mut given: BTreeMap<String, String> = BTreeMap::new();
    match raw.map(|r| r.get_ref()) {
        None => {}
        Some(toml::Value::Array(items)) => {
            if items.len() > slots.len() {
                return Err(bad(format!(
                    "{} inputs given, the kind has {} slots",
                    items.len(),
                    slots.len()
                )));
            }
            for (slot, item) in slots.iter().zip(items) {
                let up = item
                    .as_str()
                    .ok_or_else(|| bad("`inputs` entries must be stage names".into()))?;
                given.insert(slot.name.to_string(), up.to_string());
            }
        }
        Some(toml::Value::Table(table)) => {
            for (slot, item) in table {
                if !slots.iter().any(|s| s.name == slot) {
                    return Err(bad(format!("unknown input slot `{slot}`")));
                }
                let up = item
                    .as_str()
                    .ok_or_else(|| bad(format!("input `{slot}` must be a stage name")))?;
                given.insert(slot.clone(), up.to_string());
            }
        }
        Some(other) => {
            return Err(bad(format!(
                "`inputs` must be a table or a list, found {}",
                other.type_str()
            )))
        }
    }
    slots
        .iter()
        .map(|slot| {
            given
                .remove(slot.name)
                .map(|up| (slot.name, up))
                .ok_or_else(|| {
                    bad(format!(
                        "input slot `{}` is not connected ({})",
                        slot.name, slot.doc
                    ))
                })
        })
        .collect()
}

fn apply_override(
    stages: &mut BTreeMap<String, StageSpec>,
    registry: &Registry,
    ov: &Override,
) -> Result<(), DagError> {
    let err = |message: String, hint: String| DagError {
        location: None,
        message: format!("--set {}: {message}", ov.text),
        hint: Some(hint),
    };
    let names: Vec<_> = stages.keys().cloned().collect();
    let stage = stages.get_mut(&ov.stage).ok_or_else(|| {
        err(
            format!("no stage `{}`", ov.stage),
            format!("stages: {}", names.join(", ")),
        )
    })?;
    let kind = registry
        .get(&stage.kind)
        .ok_or_else(|| err("unknown kind".into(), String::new()))?;
    let spec = kind.param(&ov.param).ok_or_else(|| {
        err(
            format!("unknown parameter `{}` for kind `{}`", ov.param, stage.kind),
            valid_params_hint(kind.params().iter().map(|p| p.name)),
        )
    })?;
    let mut value =
        ParamValue::from_toml(&spec.ty, &ov.value).map_err(|why| err(why, spec.doc.into()))?;
    if let (ParamType::Paths { .. }, ParamValue::Paths(paths)) = (&spec.ty, &mut value) {
        // Paths typed on the command line are relative to where the command runs,
        // not to the DAG file.
        let cwd = std::env::current_dir().unwrap_or_default();
        for p in paths.iter_mut() {
            if Path::new(p).is_relative() {
                *p = cwd.join(&*p).to_string_lossy().into_owned();
            }
        }
    }
    stage.params.set(&ov.param, value);
    stage.defaulted.remove(&ov.param);
    kind.check(&stage.params)
        .map_err(|why| err(why, "fix the values of this stage".into()))
}

fn check_references(
    ctx: &Ctx<'_>,
    raw: &RawDag,
    stages: &BTreeMap<String, StageSpec>,
    registry: &Registry,
) -> Result<(), DagError> {
    for (name, table) in &raw.stages {
        let spec = &stages[name.get_ref()];
        let kind = registry
            .get(&spec.kind)
            .expect("kind checked while parsing");
        for (slot, up) in &spec.inputs {
            let upstream = stages.get(up).ok_or_else(|| {
                ctx.err(
                    table.span().start,
                    format!(
                        "stage `{}`: input `{slot}` names missing upstream stage `{up}`",
                        spec.name
                    ),
                    Some(format!(
                        "stages: {}",
                        stages.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                )
            })?;
            let accepted = kind
                .inputs()
                .iter()
                .find(|s| s.name == *slot)
                .map_or(&[][..], |s| s.kinds);
            if !accepted.contains(&upstream.kind.as_str()) {
                return Err(ctx.err(
                    table.span().start,
                    format!(
                        "stage `{}`: input `{slot}` needs a stage of kind {}, but `{up}` is a `{}`",
                        spec.name,
                        accepted.join(" or "),
                        upstream.kind
                    ),
                    None,
                ));
            }
        }
    }
    Ok(())
}

fn topological_order(
    ctx: &Ctx<'_>,
    raw: &RawDag,
    stages: &BTreeMap<String, StageSpec>,
) -> Result<Vec<String>, DagError> {
    let mut order = Vec::with_capacity(stages.len());
    let mut placed = BTreeSet::new();
    while order.len() < stages.len() {
        let ready: Vec<&String> = stages
            .iter()
            .filter(|(n, s)| {
                !placed.contains(*n) && s.inputs.iter().all(|(_, up)| placed.contains(up))
            })
            .map(|(n, _)| n)
            .collect();
        if ready.is_empty() {
            let stuck: Vec<_> = stages
                .keys()
                .filter(|n| !placed.contains(*n))
                .cloned()
                .collect();
            let first = raw
                .stages
                .keys()
                .find(|k| k.get_ref() == &stuck[0])
                .map_or(0, |k| k.span().start);
            return Err(ctx.err(
                first,
                format!("dependency cycle among stages: {}", stuck.join(", ")),
                Some("a stage cannot read its own output, directly or through others".into()),
            ));
        }
        for name in ready {
            placed.insert(name.clone());
            order.push(name.clone());
        }
    }
    Ok(order)
}
