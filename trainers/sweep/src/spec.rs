//! The sweep file (TOML) and its expansion into runs.
//!
//! ```toml
//! description = "attention x MinHash k on demo"
//! task = "lm"                     # `ausa train lm`
//! dag = "demo"                    # --dag of every run (a name, or a path relative to this file)
//!
//! [base]                          # flags of every run: the trainer's flag names without `--`
//! steps = 4
//! device = "cpu"
//! set = ["corpus.docs=300"]       # DAG --set overrides
//!
//! [grid]                          # every combination of the axes (or [[grid]]: several grids)
//! attn = ["dot-naive", "ska"]
//! minhash-k = [32, 64]
//! shape = [{ window = 32, stride = 16 }, { window = 64, stride = 32 }]  # flags that vary together
//!
//! [[run]]                         # explicit runs (base + these flags), besides the grids
//! attn = "sdpa"
//! ```
//!
//! A value is a string, number or boolean (`true` gives the bare switch, `false` drops
//! it), or an array (joined with `,`: `ska-layers = [0, 1]`). A grid axis is an array of
//! values for one flag, or of tables of flags that vary together (an optional `label`
//! names the table in run names). Runs with the same flags are one run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::SweepError;

/// Whether a trainer flag takes a value or is a bare switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--precache`: `true` or `false` in the file.
    Switch,
    /// `--steps 4`.
    Value,
}

/// The flags a task accepts, from the trainer's own argument parser.
#[derive(Debug, Clone, Default)]
pub struct FlagSchema {
    /// Long flag name (without `--`) -> kind.
    pub flags: BTreeMap<String, FlagKind>,
}

/// Flags `ausa sweep` sets itself for every run.
pub const RESERVED: [&str; 7] = [
    "dag",
    "out",
    "resume",
    "precache",
    "cache-only",
    "store",
    "json",
];

/// The trainer command a sweep runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// `ausa train lm`.
    Lm,
}

impl Task {
    /// The task's name in sweep files.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Lm => "lm",
        }
    }

    /// The tasks sweep files may name.
    pub const ALL: [Task; 1] = [Task::Lm];
}

/// One flag's value in a run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(untagged)]
pub enum FlagValue {
    /// A bare switch that is on.
    On,
    /// A switch turned off (drops a `true` from `[base]`).
    Off,
    /// `--flag VALUE`.
    Value(String),
}

/// Flags and `--set` overrides (one table of the file, or a whole run).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Flags {
    /// Flag name (without `--`) -> value.
    pub flags: BTreeMap<String, FlagValue>,
    /// `STAGE.PARAM=VALUE` overrides, in order.
    pub sets: Vec<String>,
}

impl Flags {
    /// `self` with `other` on top: `other`'s flags win, its overrides come after.
    fn merged(&self, other: &Flags) -> Flags {
        let mut out = self.clone();
        for (k, v) in &other.flags {
            out.flags.insert(k.clone(), v.clone());
        }
        out.sets.extend(other.sets.iter().cloned());
        out
    }

    /// `(name, value)` of every entry, overrides as `set:STAGE.PARAM`.
    fn entries(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .flags
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    FlagValue::On => "true".to_string(),
                    FlagValue::Off => "false".to_string(),
                    FlagValue::Value(v) => v.clone(),
                };
                (k.clone(), v)
            })
            .collect();
        for s in &self.sets {
            let (k, v) = s.split_once('=').unwrap_or((s, ""));
            out.push((format!("set:{k}"), v.to_string()));
        }
        out
    }
}

/// One value of a grid axis: its flags and the label it contributes to run names.
#[derive(Debug, Clone)]
pub(crate) struct AxisValue {
    pub(crate) flags: Flags,
    pub(crate) label: String,
}

/// A grid axis.
#[derive(Debug, Clone)]
pub(crate) struct Axis {
    pub(crate) values: Vec<AxisValue>,
}

/// A parsed sweep file.
#[derive(Debug, Clone)]
pub struct Sweep {
    /// The sweep's name: the embedded name or the file's stem.
    pub name: String,
    /// Where it came from: `embedded` or the file's path.
    pub origin: String,
    /// What it is for.
    pub description: Option<String>,
    /// The trainer command.
    pub task: Task,
    /// The `--dag` of every run (a file path is absolute).
    pub dag: String,
    pub(crate) base: Flags,
    pub(crate) grids: Vec<Vec<Axis>>,
    pub(crate) runs: Vec<AxisValue>,
}

/// One run of a sweep.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSpec {
    /// The run's directory name, derived from its parameters.
    pub name: String,
    /// What sets this run apart (the grid's or explicit run's entries), for tables.
    pub params: Vec<(String, String)>,
    /// Every flag of the run (base included).
    pub flags: Flags,
}

impl RunSpec {
    /// The trainer's arguments after the task (`--dag DAG --flag value ... --set X`),
    /// flags sorted by name: the same run always gets the same command line.
    pub fn args(&self, dag: &str) -> Vec<String> {
        let mut args = vec!["--dag".to_string(), dag.to_string()];
        for (k, v) in &self.flags.flags {
            match v {
                FlagValue::On => args.push(format!("--{k}")),
                FlagValue::Off => {}
                FlagValue::Value(v) => {
                    args.push(format!("--{k}"));
                    args.push(v.clone());
                }
            }
        }
        for s in &self.flags.sets {
            args.push("--set".into());
            args.push(s.clone());
        }
        args
    }
}

/// Where a sweep's text comes from.
#[derive(Debug, Clone)]
pub struct SweepSource {
    /// The sweep's name.
    pub name: String,
    /// `embedded` or the path.
    pub origin: String,
    /// Directory that relative `dag` paths are resolved against.
    pub base_dir: PathBuf,
    /// The TOML text.
    pub text: String,
}

impl Sweep {
    /// Parses and checks a sweep file against the task's flags.
    pub fn parse(source: &SweepSource, schema: &FlagSchema) -> Result<Sweep, SweepError> {
        let err = |message: String, hint: Option<String>| SweepError::Spec {
            origin: source.origin.clone(),
            message,
            hint,
        };
        let table: toml::Table = source
            .text
            .parse()
            .map_err(|e: toml::de::Error| err(e.to_string().trim_end().to_string(), None))?;
        let known = ["description", "task", "dag", "base", "grid", "run"];
        if let Some(key) = table.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(err(
                format!("unknown top-level key `{key}`"),
                Some(format!("top-level keys: {}", known.join(", "))),
            ));
        }
        let string = |key: &str| -> Result<Option<String>, SweepError> {
            match table.get(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => Err(err(
                    format!("`{key}` must be a string, not {}", v.type_str()),
                    None,
                )),
            }
        };
        let tasks = || {
            Task::ALL
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let task = match string("task")?.as_deref() {
            Some("lm") => Task::Lm,
            Some(other) => {
                return Err(err(
                    format!("unknown task `{other}`"),
                    Some(format!("tasks: {}", tasks())),
                ))
            }
            None => {
                return Err(err(
                    "missing `task`".into(),
                    Some(format!("e.g. task = \"lm\" (tasks: {})", tasks())),
                ))
            }
        };
        let dag = string("dag")?.ok_or_else(|| {
            err(
                "missing `dag`".into(),
                Some("e.g. dag = \"demo\" (an embedded DAG or a .toml path)".into()),
            )
        })?;
        // A DAG file path is taken relative to the sweep file, like paths in DAG files.
        let dag = if dag.ends_with(".toml") || dag.contains('/') {
            source.base_dir.join(&dag).display().to_string()
        } else {
            dag
        };
        let parser = FlagParser {
            schema,
            origin: &source.origin,
        };
        let base = match table.get("base") {
            None => Flags::default(),
            Some(toml::Value::Table(t)) => parser.flags("[base]", t)?,
            Some(v) => {
                return Err(err(
                    format!("[base] must be a table, not {}", v.type_str()),
                    None,
                ))
            }
        };
        let grids = match table.get("grid") {
            None => Vec::new(),
            Some(toml::Value::Table(t)) => vec![parser.grid("[grid]", t)?],
            Some(toml::Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, g)| match g {
                    toml::Value::Table(t) => parser.grid(&format!("[[grid]] #{}", i + 1), t),
                    v => Err(err(
                        format!("[[grid]] #{} must be a table, not {}", i + 1, v.type_str()),
                        None,
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(err(
                    format!("`grid` must be a table, not {}", v.type_str()),
                    None,
                ))
            }
        };
        let runs = match table.get("run") {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, r)| match r {
                    toml::Value::Table(t) => parser.value(&format!("[[run]] #{}", i + 1), t),
                    v => Err(err(
                        format!("[[run]] #{} must be a table, not {}", i + 1, v.type_str()),
                        None,
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => {
                return Err(err(
                    format!(
                        "`run` must be an array of tables ([[run]]), not {}",
                        v.type_str()
                    ),
                    None,
                ))
            }
        };
        if grids.is_empty() && runs.is_empty() {
            return Err(err(
                "the sweep has no runs: no [grid] and no [[run]]".into(),
                Some("add e.g. [grid] attn = [\"dot-naive\", \"ska\"]".into()),
            ));
        }
        Ok(Sweep {
            name: source.name.clone(),
            origin: source.origin.clone(),
            description: string("description")?,
            task,
            dag,
            base,
            grids,
            runs,
        })
    }

    /// Every run: each grid's combinations (axes in name order), then the explicit
    /// runs; a run with the same flags as an earlier one is dropped. Names that would
    /// collide get a short hash of their flags.
    pub fn runs(&self) -> Vec<RunSpec> {
        let mut points: Vec<Vec<&AxisValue>> = Vec::new();
        for axes in &self.grids {
            let mut combos: Vec<Vec<&AxisValue>> = vec![vec![]];
            for axis in axes {
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        axis.values.iter().map(move |v| {
                            let mut c = c.clone();
                            c.push(v);
                            c
                        })
                    })
                    .collect();
            }
            points.extend(combos);
        }
        points.extend(self.runs.iter().map(|r| vec![r]));
        let mut runs: Vec<RunSpec> = Vec::new();
        for point in points {
            let mut own = Flags::default();
            let mut labels = Vec::new();
            for v in &point {
                own = own.merged(&v.flags);
                if !v.label.is_empty() {
                    labels.push(v.label.clone());
                }
            }
            let flags = self.base.merged(&own);
            if runs.iter().any(|r| r.flags == flags) {
                continue;
            }
            let name = if labels.is_empty() {
                "base".to_string()
            } else {
                labels.join("_")
            };
            runs.push(RunSpec {
                name,
                params: own.entries(),
                flags,
            });
        }
        let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
        for run in &mut runs {
            if names.iter().filter(|n| **n == run.name).count() > 1 {
                let text = format!("{:?}", run.flags);
                run.name = format!(
                    "{}-{}",
                    run.name,
                    &blake3::hash(text.as_bytes()).to_hex()[..8]
                );
            }
        }
        runs
    }
}

/// Parses flag tables against the schema, naming the table in errors.
struct FlagParser<'a> {
    schema: &'a FlagSchema,
    origin: &'a str,
}

impl FlagParser<'_> {
    fn err(&self, message: String, hint: Option<String>) -> SweepError {
        SweepError::Spec {
            origin: self.origin.to_string(),
            message,
            hint,
        }
    }

    /// A table of flags (`[base]`, a grid's table value, a `[[run]]`).
    fn flags(&self, at: &str, table: &toml::Table) -> Result<Flags, SweepError> {
        let mut out = Flags::default();
        for (key, value) in table {
            if key == "label" {
                continue;
            }
            if key == "set" {
                out.sets.extend(self.sets(at, value)?);
                continue;
            }
            let kind = self.kind(at, key)?;
            out.flags
                .insert(key.clone(), self.value_of(at, key, kind, value)?);
        }
        Ok(out)
    }

    /// A table that is one run or one axis value: its flags and run-name label.
    fn value(&self, at: &str, table: &toml::Table) -> Result<AxisValue, SweepError> {
        let flags = self.flags(at, table)?;
        let label = match table.get("label") {
            Some(toml::Value::String(s)) => sanitize(s),
            Some(v) => {
                return Err(self.err(
                    format!("{at}: `label` must be a string, not {}", v.type_str()),
                    None,
                ))
            }
            None => label_of(&flags),
        };
        Ok(AxisValue { flags, label })
    }

    fn grid(&self, at: &str, table: &toml::Table) -> Result<Vec<Axis>, SweepError> {
        if table.is_empty() {
            return Err(self.err(
                format!("{at} is empty"),
                Some("give at least one axis, e.g. minhash-k = [32, 64]".into()),
            ));
        }
        let mut axes = Vec::new();
        for (key, value) in table {
            let toml::Value::Array(items) = value else {
                return Err(self.err(
                    format!(
                        "{at} `{key}` must be an array of values, not {}",
                        value.type_str()
                    ),
                    Some(format!(
                        "write {key} = [...]; a single value belongs in [base]"
                    )),
                ));
            };
            if items.is_empty() {
                return Err(self.err(
                    format!("{at} `{key}` is empty: a grid axis needs at least one value"),
                    None,
                ));
            }
            let mut values = Vec::new();
            for item in items {
                let value = match item {
                    toml::Value::Table(t) => self.value(&format!("{at} `{key}`"), t)?,
                    _ if key == "set" => {
                        let flags = Flags {
                            flags: BTreeMap::new(),
                            sets: self.sets(at, &toml::Value::Array(vec![item.clone()]))?,
                        };
                        AxisValue {
                            label: label_of(&flags),
                            flags,
                        }
                    }
                    _ => {
                        let kind = self.kind(at, key)?;
                        let mut flags = Flags::default();
                        flags
                            .flags
                            .insert(key.clone(), self.value_of(at, key, kind, item)?);
                        AxisValue {
                            label: label_of(&flags),
                            flags,
                        }
                    }
                };
                values.push(value);
            }
            axes.push(Axis { values });
        }
        Ok(axes)
    }

    fn kind(&self, at: &str, key: &str) -> Result<FlagKind, SweepError> {
        if RESERVED.contains(&key) {
            let hint = match key {
                "dag" => "name the DAG once, at the top: dag = \"...\"".to_string(),
                "out" => {
                    "`ausa sweep --out DIR` names the sweep directory; runs go in DIR/runs/<name>"
                        .to_string()
                }
                _ => "leave it out".to_string(),
            };
            return Err(self.err(
                format!("{at} `{key}`: `ausa sweep` sets --{key} itself"),
                Some(hint),
            ));
        }
        self.schema.flags.get(key).copied().ok_or_else(|| {
            let close: Vec<&str> = self
                .schema
                .flags
                .keys()
                .filter(|k| !RESERVED.contains(&k.as_str()))
                .filter(|k| k.contains(key) || key.contains(k.as_str()))
                .map(String::as_str)
                .collect();
            let hint = if close.is_empty() {
                "see `ausa train lm --help` for the flags".to_string()
            } else {
                format!("did you mean {}?", close.join(", "))
            };
            self.err(
                format!("{at} `{key}` is not a flag of `ausa train lm`"),
                Some(hint),
            )
        })
    }

    fn value_of(
        &self,
        at: &str,
        key: &str,
        kind: FlagKind,
        value: &toml::Value,
    ) -> Result<FlagValue, SweepError> {
        match (kind, value) {
            (FlagKind::Switch, toml::Value::Boolean(true)) => Ok(FlagValue::On),
            (FlagKind::Switch, toml::Value::Boolean(false)) => Ok(FlagValue::Off),
            (FlagKind::Switch, v) => Err(self.err(
                format!(
                    "{at} `{key}` is a switch: write true or false, not {}",
                    v.type_str()
                ),
                None,
            )),
            (FlagKind::Value, toml::Value::Array(items)) => {
                let parts = items
                    .iter()
                    .map(|i| self.scalar(at, key, i))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(FlagValue::Value(parts.join(",")))
            }
            (FlagKind::Value, v) => Ok(FlagValue::Value(self.scalar(at, key, v)?)),
        }
    }

    fn scalar(&self, at: &str, key: &str, value: &toml::Value) -> Result<String, SweepError> {
        match value {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            toml::Value::Boolean(b) => Ok(b.to_string()),
            v => Err(self.err(
                format!("{at} `{key}`: a {} is not a flag value", v.type_str()),
                Some("use a string, number or boolean".into()),
            )),
        }
    }

    fn sets(&self, at: &str, value: &toml::Value) -> Result<Vec<String>, SweepError> {
        let items = match value {
            toml::Value::Array(a) => a.clone(),
            v => vec![v.clone()],
        };
        items
            .iter()
            .map(|i| match i {
                toml::Value::String(s) if s.contains('=') && s.contains('.') => Ok(s.clone()),
                v => Err(self.err(
                    format!("{at} `set`: {v} is not STAGE.PARAM=VALUE"),
                    Some("e.g. set = [\"corpus.docs=300\"]".into()),
                )),
            })
            .collect()
    }
}

/// The run-name part of a table of flags: `key-value` joined with `_`.
fn label_of(flags: &Flags) -> String {
    flags
        .entries()
        .iter()
        .map(|(k, v)| sanitize(&format!("{}-{v}", k.trim_start_matches("set:"))))
        .collect::<Vec<_>>()
        .join("_")
}

/// Keeps `[A-Za-z0-9.-]`, maps everything else to `_` (directory names that need no
/// quoting in a shell).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Resolves a sweep argument: a path to a `.toml` file (its stem is the name) or an
/// embedded sweep's name.
pub fn locate(arg: &str) -> Result<SweepSource, SweepError> {
    let cwd = std::env::current_dir().unwrap_or_default();
    if arg.ends_with(".toml") || arg.contains('/') {
        let path = Path::new(arg);
        let text = std::fs::read_to_string(path).map_err(|e| SweepError::Spec {
            origin: arg.to_string(),
            message: format!("cannot read the sweep file: {e}"),
            hint: Some(format!(
                "embedded sweeps: {}",
                crate::embedded::names().join(", ")
            )),
        })?;
        let name = path
            .file_stem()
            .map(|s| sanitize(&s.to_string_lossy()))
            .unwrap_or_else(|| "sweep".into());
        return Ok(SweepSource {
            name,
            origin: arg.to_string(),
            base_dir: cwd.join(path.parent().unwrap_or(Path::new(""))),
            text,
        });
    }
    let text = crate::embedded::text(arg).ok_or_else(|| SweepError::Spec {
        origin: arg.to_string(),
        message: format!("no sweep named `{arg}`"),
        hint: Some(format!(
            "embedded sweeps: {}; or give a path to a .toml file",
            crate::embedded::names().join(", ")
        )),
    })?;
    Ok(SweepSource {
        name: arg.to_string(),
        origin: format!("embedded sweep `{arg}`"),
        base_dir: cwd,
        text: text.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> FlagSchema {
        let mut s = FlagSchema::default();
        for f in [
            "steps",
            "attn",
            "minhash-k",
            "window",
            "stride",
            "seed",
            "ska-layers",
            "device",
        ] {
            s.flags.insert(f.into(), FlagKind::Value);
        }
        s.flags.insert("memory-safe".into(), FlagKind::Switch);
        s
    }

    fn parse(text: &str) -> Result<Sweep, SweepError> {
        let source = SweepSource {
            name: "t".into(),
            origin: "t.toml".into(),
            base_dir: PathBuf::from("/sweeps"),
            text: text.into(),
        };
        Sweep::parse(&source, &schema())
    }

    fn message(r: Result<Sweep, SweepError>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(s) => panic!("expected an error, got {} runs", s.runs().len()),
        }
    }

    #[test]
    fn a_grid_expands_to_every_combination_with_names_from_the_values() {
        let sweep = parse(
            r#"task = "lm"
dag = "demo"
[base]
steps = 4
set = ["corpus.docs=300"]
[grid]
attn = ["dot-naive", "ska"]
minhash-k = [32, 64]
"#,
        )
        .unwrap();
        let runs = sweep.runs();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "attn-dot-naive_minhash-k-32",
                "attn-dot-naive_minhash-k-64",
                "attn-ska_minhash-k-32",
                "attn-ska_minhash-k-64"
            ]
        );
        assert_eq!(
            runs[2].args(&sweep.dag),
            [
                "--dag",
                "demo",
                "--attn",
                "ska",
                "--minhash-k",
                "32",
                "--steps",
                "4",
                "--set",
                "corpus.docs=300"
            ]
        );
        assert_eq!(
            runs[2].params,
            [
                ("attn".to_string(), "ska".to_string()),
                ("minhash-k".into(), "32".into())
            ]
        );
    }

    #[test]
    fn grouped_axes_several_grids_and_explicit_runs_dedup_identical_runs() {
        let sweep = parse(
            r#"task = "lm"
dag = "dags/x.toml"
[base]
attn = "ska"
memory-safe = true
[[grid]]
shape = [{ window = 32, stride = 16 }, { label = "w64", window = 64, stride = 32 }]
[[grid]]
minhash-k = [128]
set = ["corpus.docs=300", "corpus.docs=600"]
[[run]]
attn = "sdpa"
memory-safe = false
ska-layers = [0, 1]
[[run]]
shape = 1
"#,
        );
        // `shape` is no flag outside a grid axis of tables.
        assert!(message(sweep).contains("[[run]] #2 `shape` is not a flag"));
        let sweep = parse(
            r#"task = "lm"
dag = "dags/x.toml"
[base]
attn = "ska"
memory-safe = true
[[grid]]
shape = [{ window = 32, stride = 16 }, { label = "w64", window = 64, stride = 32 }]
[[grid]]
minhash-k = [128]
set = ["corpus.docs=300", "corpus.docs=600"]
[[run]]
attn = "sdpa"
memory-safe = false
ska-layers = [0, 1]
[[run]]
window = 32
stride = 16
"#,
        )
        .unwrap();
        assert_eq!(sweep.dag, "/sweeps/dags/x.toml");
        let runs = sweep.runs();
        let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
        // The last [[run]] equals the first grid point: one run.
        assert_eq!(
            names,
            [
                "stride-16_window-32",
                "w64",
                "minhash-k-128_corpus.docs-300",
                "minhash-k-128_corpus.docs-600",
                "attn-sdpa_memory-safe-false_ska-layers-0_1"
            ]
        );
        let sdpa = runs[4].args(&sweep.dag);
        assert!(!sdpa.contains(&"--memory-safe".to_string()), "{sdpa:?}");
        assert!(sdpa.windows(2).any(|w| w == ["--ska-layers", "0,1"]));
        assert!(runs[0]
            .args(&sweep.dag)
            .contains(&"--memory-safe".to_string()));
    }

    #[test]
    fn bad_files_are_errors_that_name_the_key() {
        let head = "task = \"lm\"\ndag = \"demo\"\n";
        for (body, expected) in [
            (
                "[grid]\nminhash = [1]\n",
                "[grid] `minhash` is not a flag of `ausa train lm`",
            ),
            ("[grid]\nattn = []\n", "[grid] `attn` is empty"),
            ("[grid]\n", "[grid] is empty"),
            ("", "the sweep has no runs"),
            ("[grid]\nattn = \"ska\"\n", "must be an array of values"),
            (
                "[base]\nout = \"x\"\n[grid]\nseed=[1]\n",
                "`ausa sweep` sets --out itself",
            ),
            ("[base]\nmemory-safe = 1\n[grid]\nseed=[1]\n", "is a switch"),
            (
                "[base]\nset = [\"docs\"]\n[grid]\nseed=[1]\n",
                "is not STAGE.PARAM=VALUE",
            ),
            ("grid = 3\n", "`grid` must be a table"),
            (
                "colour = 1\n[grid]\nseed=[1]\n",
                "unknown top-level key `colour`",
            ),
            ("[grid\n", "TOML parse error"),
        ] {
            let got = message(parse(&format!("{head}{body}")));
            assert!(got.contains(expected), "{body:?}: {got}");
            assert!(got.starts_with("t.toml: "), "{got}");
        }
        assert!(message(parse("dag = \"demo\"\n[grid]\nseed=[1]\n")).contains("missing `task`"));
        assert!(message(parse("task = \"vit\"\ndag = \"demo\"\n")).contains("unknown task `vit`"));
        assert!(message(parse("task = \"lm\"\n[grid]\nseed=[1]\n")).contains("missing `dag`"));
    }

    #[test]
    fn colliding_names_get_a_hash_and_stay_stable() {
        let sweep =
            parse("task = \"lm\"\ndag = \"demo\"\n[grid]\nattn = [\"a b\", \"a_b\"]\n").unwrap();
        let names: Vec<String> = sweep.runs().into_iter().map(|r| r.name).collect();
        assert_eq!(names.len(), 2);
        assert_ne!(names[0], names[1]);
        assert!(
            names.iter().all(|n| n.starts_with("attn-a_b-")),
            "{names:?}"
        );
        let again: Vec<String> = sweep.runs().into_iter().map(|r| r.name).collect();
        assert_eq!(names, again);
    }
}
