//! The W&B sweep configurations equivalent to a sweep file (`ausa sweep FILE
//! --wandb-yaml OUT.yaml`), for `wandb sweep OUT.yaml` and `wandb agent`.
//!
//! A W&B grid sweep is the product of its parameters' `values` lists, so:
//!
//! - each `[grid]` becomes one W&B sweep whose parameters are its axes (`values`);
//! - an axis of tables (flags that vary together, `shape = [{window = 32, stride =
//!   16}, ...]`) cannot be one W&B parameter, so each of its tables gets a W&B sweep of
//!   its own, with the table's flags as single-`value` parameters;
//! - each `[[run]]` becomes a W&B sweep of single-`value` parameters;
//! - `[base]` flags and `--set` overrides that are not a parameter are fixed in the
//!   command.
//!
//! W&B cannot share runs across sweeps: a run that two grids have in common (the base
//! run of an ablation) runs once in `ausa sweep` and once per W&B sweep.
//!
//! The command each agent run executes trains with `ausa train lm` into
//! `runs/$WANDB_RUN_ID` and then logs that run with `ausa report --wandb`, whose
//! `wandb.init` joins the agent's run (the agent sets `WANDB_RUN_ID`, `WANDB_SWEEP_ID`,
//! `WANDB_PROJECT`): the trainer itself never talks to W&B. Parameters reach the
//! trainer as `--flag=value` (`${args_no_boolean_flags}`: a switch is `--flag` when
//! true, left out when false).
//!
//! The YAML is written by hand: block mappings and lists whose strings are JSON-quoted
//! (a JSON string is a YAML double-quoted scalar), so every value reads back as
//! written without a YAML library.

use crate::spec::{AxisValue, FlagValue, Flags, Sweep};

/// One W&B sweep configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct WandbSweep {
    /// Where it comes from in the sweep file (`[grid]`, `[[grid]] #2 shape=...`).
    pub origin: String,
    /// The YAML text.
    pub yaml: String,
}

/// One W&B parameter: a `values` list (a grid axis) or a single `value`.
#[derive(Debug, Clone)]
enum Param {
    Values(Vec<String>),
    Value(String),
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// A flag value as YAML: integers bare, switches as booleans, the rest quoted.
fn scalar(v: &FlagValue) -> String {
    match v {
        FlagValue::On => "true".into(),
        FlagValue::Off => "false".into(),
        FlagValue::Value(s) => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                s.clone()
            } else {
                quote(s)
            }
        }
    }
}

/// Single-quotes `s` for `sh`.
fn sh(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=,:+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The single entry (`flag` or `set`) of an axis value, if it has exactly one.
fn single(v: &AxisValue) -> Option<(String, String)> {
    match (v.flags.flags.len(), v.flags.sets.len()) {
        (1, 0) => {
            let (k, value) = v.flags.flags.iter().next()?;
            Some((k.clone(), scalar(value)))
        }
        (0, 1) => Some(("set".into(), quote(&v.flags.sets[0]))),
        _ => None,
    }
}

/// One W&B sweep before rendering: where it comes from, its parameters, and the
/// overrides fixed in its command besides the base.
type Doc = (String, Vec<(String, Param)>, Flags);

/// Every W&B sweep of `sweep`, in file order.
pub fn sweeps(sweep: &Sweep) -> Vec<WandbSweep> {
    let mut docs: Vec<Doc> = Vec::new();
    let several = sweep.grids.len() > 1;
    for (g, axes) in sweep.grids.iter().enumerate() {
        let at = if several {
            format!("[[grid]] #{}", g + 1)
        } else {
            "[grid]".to_string()
        };
        let mut params = Vec::new();
        let mut tables: Vec<&Vec<AxisValue>> = Vec::new();
        for axis in axes {
            let singles: Option<Vec<(String, String)>> = axis.values.iter().map(single).collect();
            match singles {
                Some(s) if s.iter().all(|(k, _)| *k == s[0].0) => params.push((
                    s[0].0.clone(),
                    Param::Values(s.into_iter().map(|(_, v)| v).collect()),
                )),
                _ => tables.push(&axis.values),
            }
        }
        // One W&B sweep per combination of the table axes' values.
        let mut combos: Vec<Vec<&AxisValue>> = vec![vec![]];
        for values in tables {
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push(v);
                        c
                    })
                })
                .collect();
        }
        for combo in combos {
            let mut params = params.clone();
            let mut fixed = Flags::default();
            let mut labels = Vec::new();
            for v in &combo {
                labels.push(v.label.clone());
                for (k, value) in &v.flags.flags {
                    params.push((k.clone(), Param::Value(scalar(value))));
                }
                fixed.sets.extend(v.flags.sets.iter().cloned());
            }
            let origin = if labels.is_empty() {
                at.clone()
            } else {
                format!("{at} {}", labels.join("_"))
            };
            docs.push((origin, params, fixed));
        }
    }
    for (i, run) in sweep.runs.iter().enumerate() {
        let params = run
            .flags
            .flags
            .iter()
            .map(|(k, v)| (k.clone(), Param::Value(scalar(v))))
            .collect();
        let fixed = Flags {
            flags: Default::default(),
            sets: run.flags.sets.clone(),
        };
        docs.push((format!("[[run]] #{}", i + 1), params, fixed));
    }
    let total = docs.len();
    docs.into_iter()
        .enumerate()
        .map(|(i, (origin, params, fixed))| WandbSweep {
            yaml: yaml(sweep, i, total, &origin, &params, &fixed),
            origin,
        })
        .collect()
}

fn yaml(
    sweep: &Sweep,
    index: usize,
    total: usize,
    origin: &str,
    params: &[(String, Param)],
    fixed: &Flags,
) -> String {
    // The trainer's command line: base flags that no parameter sets, then overrides.
    let mut train = vec![
        "\"$0\"".to_string(),
        "train".into(),
        sweep.task.as_str().into(),
        "--dag".into(),
        sh(&sweep.dag),
    ];
    for (k, v) in &sweep.base.flags {
        if params.iter().any(|(p, _)| p == k) {
            continue;
        }
        match v {
            FlagValue::On => train.push(format!("--{k}")),
            FlagValue::Off => {}
            FlagValue::Value(v) => {
                train.push(format!("--{k}"));
                train.push(sh(v));
            }
        }
    }
    for s in sweep.base.sets.iter().chain(&fixed.sets) {
        train.push("--set".into());
        train.push(sh(s));
    }
    train.extend(
        [
            "--out",
            "\"runs/$WANDB_RUN_ID\"",
            "--precache",
            "\"$@\"",
            "&&",
            "\"$0\"",
            "report",
            "\"runs/$WANDB_RUN_ID\"",
            "--out",
            "\"reports/$WANDB_RUN_ID\"",
            "--wandb",
        ]
        .map(String::from),
    );
    let name = if total == 1 {
        sweep.name.clone()
    } else {
        format!("{}-{}", sweep.name, index + 1)
    };
    let mut out = format!(
        "# W&B sweep {} of {total} of the ausa sweep `{}` ({}): {origin}.\n\
         # Generated by `ausa sweep {} --wandb-yaml`. Create it with `wandb sweep FILE`, run\n\
         # it with `wandb agent ID`: each agent run trains into runs/<W&B run id> and logs\n\
         # that run with `ausa report --wandb` (metrics only).\n",
        index + 1,
        sweep.name,
        sweep.origin,
        sweep.name
    );
    out.push_str(&format!("name: {}\n", quote(&name)));
    if let Some(d) = &sweep.description {
        out.push_str(&format!("description: {}\n", quote(d)));
    }
    out.push_str("program: \"ausa\"\nmethod: \"grid\"\nparameters:\n");
    if params.is_empty() {
        out.pop();
        out.push_str(" {}\n");
    }
    for (k, p) in params {
        out.push_str(&format!("  {}:\n", quote(k)));
        match p {
            Param::Values(values) => {
                out.push_str("    values:\n");
                for v in values {
                    out.push_str(&format!("      - {v}\n"));
                }
            }
            Param::Value(v) => out.push_str(&format!("    value: {v}\n")),
        }
    }
    out.push_str("command:\n");
    for part in [
        "/bin/sh".to_string(),
        "-c".into(),
        train.join(" "),
        "${program}".into(),
        "${args_no_boolean_flags}".into(),
    ] {
        out.push_str(&format!("  - {}\n", quote(&part)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{FlagKind, FlagSchema, SweepSource};

    fn parse(text: &str) -> Sweep {
        let mut schema = FlagSchema::default();
        for f in [
            "steps",
            "attn",
            "minhash-k",
            "window",
            "stride",
            "seed",
            "lr",
        ] {
            schema.flags.insert(f.into(), FlagKind::Value);
        }
        schema.flags.insert("memory-safe".into(), FlagKind::Switch);
        let source = SweepSource {
            name: "t".into(),
            origin: "t.toml".into(),
            base_dir: "/sweeps".into(),
            text: text.into(),
        };
        Sweep::parse(&source, &schema).unwrap()
    }

    #[test]
    fn a_grid_is_one_wandb_sweep_with_its_axes_as_values_and_the_base_in_the_command() {
        let sweep = parse(
            r#"task = "lm"
dag = "demo"
description = "a \"quoted\" grid"
[base]
steps = 4
lr = 3e-3
attn = "sdpa"
memory-safe = true
set = ["corpus.docs=300"]
[grid]
attn = ["dot-naive", "ska"]
minhash-k = [32, 64]
"#,
        );
        let docs = sweeps(&sweep);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].origin, "[grid]");
        let yaml = &docs[0].yaml;
        let body: Vec<&str> = yaml.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                r#"name: "t""#,
                r#"description: "a \"quoted\" grid""#,
                r#"program: "ausa""#,
                r#"method: "grid""#,
                "parameters:",
                r#"  "attn":"#,
                "    values:",
                r#"      - "dot-naive""#,
                r#"      - "ska""#,
                r#"  "minhash-k":"#,
                "    values:",
                "      - 32",
                "      - 64",
                "command:",
                r#"  - "/bin/sh""#,
                r#"  - "-c""#,
                // --attn is a parameter, so the base's --attn is left out.
                r#"  - "\"$0\" train lm --dag demo --lr 0.003 --memory-safe --steps 4 --set corpus.docs=300 --out \"runs/$WANDB_RUN_ID\" --precache \"$@\" && \"$0\" report \"runs/$WANDB_RUN_ID\" --out \"reports/$WANDB_RUN_ID\" --wandb""#,
                r#"  - "${program}""#,
                r#"  - "${args_no_boolean_flags}""#,
            ]
        );
    }

    #[test]
    fn tables_of_flags_and_explicit_runs_become_sweeps_of_single_values() {
        let sweep = parse(
            r#"task = "lm"
dag = "my dag.toml"
[[grid]]
seed = [0, 1]
shape = [{ window = 32, stride = 16 }, { label = "big", window = 64, stride = 32 }]
[[grid]]
set = ["banks.window=32", "banks.window=64"]
[[run]]
attn = "sdpa"
set = ["corpus.docs=10"]
"#,
        );
        let docs = sweeps(&sweep);
        let origins: Vec<&str> = docs.iter().map(|d| d.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "[[grid]] #1 stride-16_window-32",
                "[[grid]] #1 big",
                "[[grid]] #2",
                "[[run]] #1"
            ]
        );
        let big = &docs[1].yaml;
        assert!(big.contains("name: \"t-2\"\n"), "{big}");
        assert!(
            big.contains("  \"seed\":\n    values:\n      - 0\n      - 1\n"),
            "{big}"
        );
        assert!(big.contains("  \"window\":\n    value: 64\n"), "{big}");
        assert!(big.contains("  \"stride\":\n    value: 32\n"), "{big}");
        // The DAG path is quoted for the shell.
        assert!(big.contains("--dag '/sweeps/my dag.toml'"), "{big}");
        let sets = &docs[2].yaml;
        assert!(
            sets.contains("  \"set\":\n    values:\n      - \"banks.window=32\"\n"),
            "{sets}"
        );
        let run = &docs[3].yaml;
        assert!(run.contains("  \"attn\":\n    value: \"sdpa\"\n"), "{run}");
        assert!(run.contains("--set corpus.docs=10 --out"), "{run}");
    }
}
