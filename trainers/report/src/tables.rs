//! Tables A and B and the ablations, computed from loaded runs.
//!
//! - **Table A** (naive vs naive): fp32 runs of `dot-naive` and SKA's `naive` backend.
//! - **Table B** (optimized vs optimized): bf16 runs of `sdpa` and SKA (its backend is a
//!   column: `cuda` is the optimized one).
//!
//! A row is one configuration: runs that differ only in their seed are averaged (mean,
//! and the standard deviation over seeds where there are several). Only complete runs
//! enter tables.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::run::{Knobs, Run};

/// Mean and sample standard deviation of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Stat {
    /// The mean.
    pub mean: f64,
    /// The sample standard deviation (0 for one value).
    pub std: f64,
    /// How many values.
    pub n: usize,
}

impl Stat {
    /// Over the values that exist; `None` when none does.
    pub fn of(values: impl IntoIterator<Item = Option<f64>>) -> Option<Stat> {
        let v: Vec<f64> = values
            .into_iter()
            .flatten()
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n as f64;
        let std = if n > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        Some(Stat { mean, std, n })
    }
}

/// One row of Table A or B.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `dot-naive`, `sdpa`, `ska/naive`, `ska/cuda`.
    pub method: String,
    /// The configuration (the knobs of the first run; seeds differ).
    pub knobs: Knobs,
    /// Seeds averaged.
    pub seeds: Vec<u64>,
    /// Steps per second.
    pub steps_per_s: Option<Stat>,
    /// Tokens per second.
    pub tokens_per_s: Option<Stat>,
    /// Peak VRAM (MiB).
    pub max_vram_mb: Option<Stat>,
    /// Millions of attention scores per second.
    pub throughput_per_1e6_scores: Option<Stat>,
    /// Sets per sequence.
    pub avg_sets_per_seq: Option<Stat>,
    /// Atoms per set.
    pub avg_atoms_per_set: Option<Stat>,
    /// Validation word-level perplexity.
    pub valid_word_ppl: Option<Stat>,
    /// The run directories of the row (each number traces back to them).
    pub runs: Vec<String>,
}

/// Which table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// fp32, dot-naive vs SKA naive.
    A,
    /// bf16, SDPA vs SKA.
    B,
}

impl Which {
    /// Whether `run` belongs in this table.
    pub fn admits(self, k: &Knobs) -> bool {
        match self {
            Which::A => {
                k.precision == "fp32"
                    && (k.attn == "dot-naive"
                        || (k.attn == "ska" && k.ska_backend.as_deref() == Some("naive")))
            }
            Which::B => k.precision == "bf16" && (k.attn == "sdpa" || k.attn == "ska"),
        }
    }
}

/// The knobs without the seed, as a grouping key.
fn config_key(k: &Knobs) -> String {
    let mut k = k.clone();
    k.seed = 0;
    format!("{k:?}")
}

/// The order of rows: by method, then the shape and the ablation knobs.
fn row_order(k: &Knobs) -> (String, [i64; 9], u64) {
    (
        k.method(),
        [
            k.seq_len,
            k.window,
            k.stride,
            k.minhash_k,
            k.router_topk,
            k.gate_topk,
            k.adapter_rank,
            k.d_model,
            k.layers,
        ],
        k.beta.to_bits(),
    )
}

/// The rows of table `which`, ordered by method, then shape and knobs.
pub fn table(runs: &[Run], which: Which) -> Vec<Row> {
    let mut groups: Vec<(String, Vec<&Run>)> = Vec::new();
    for run in runs.iter().filter(|r| r.complete && which.admits(&r.knobs)) {
        let key = config_key(&run.knobs);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(run),
            None => groups.push((key, vec![run])),
        }
    }
    groups.sort_by(|a, b| row_order(&a.1[0].knobs).cmp(&row_order(&b.1[0].knobs)));
    groups
        .into_iter()
        .map(|(_, members)| {
            let stat = |f: &dyn Fn(&Run) -> Option<f64>| Stat::of(members.iter().map(|r| f(r)));
            Row {
                method: members[0].knobs.method(),
                knobs: members[0].knobs.clone(),
                seeds: members.iter().map(|r| r.knobs.seed).collect(),
                steps_per_s: stat(&|r| r.perf.steps_per_s),
                tokens_per_s: stat(&|r| r.perf.tokens_per_s),
                max_vram_mb: stat(&|r| r.perf.max_vram_mb),
                throughput_per_1e6_scores: stat(&|r| r.perf.throughput_per_1e6_scores),
                avg_sets_per_seq: stat(&|r| r.perf.avg_sets_per_seq),
                avg_atoms_per_set: stat(&|r| r.perf.avg_atoms_per_set),
                valid_word_ppl: stat(&|r| r.quality.valid_word_ppl),
                runs: members.iter().map(|r| r.label.clone()).collect(),
            }
        })
        .collect()
}

/// An ablation knob: its name in the report and how to read it from a run.
pub struct Knob {
    /// The flag-like name (`minhash-k`).
    pub name: &'static str,
    /// The value as text (for grouping and axis labels).
    pub value: fn(&Knobs) -> String,
}

/// The knobs ablations are drawn for: the method, the spec's ablations, the shape.
pub const KNOBS: [Knob; 17] = [
    Knob {
        name: "method",
        value: |k| k.method(),
    },
    Knob {
        name: "precision",
        value: |k| k.precision.clone(),
    },
    Knob {
        name: "minhash-k",
        value: |k| k.minhash_k.to_string(),
    },
    Knob {
        name: "router-topk",
        value: |k| k.router_topk.to_string(),
    },
    Knob {
        name: "gate-topk",
        value: |k| k.gate_topk.to_string(),
    },
    Knob {
        name: "adapter-rank",
        value: |k| k.adapter_rank.to_string(),
    },
    Knob {
        name: "window-stride",
        value: |k| format!("{}/{}", k.window, k.stride),
    },
    Knob {
        name: "beta",
        value: |k| k.beta.to_string(),
    },
    Knob {
        name: "seq-len",
        value: |k| k.seq_len.to_string(),
    },
    Knob {
        name: "d-model",
        value: |k| k.d_model.to_string(),
    },
    Knob {
        name: "layers",
        value: |k| k.layers.to_string(),
    },
    Knob {
        name: "heads",
        value: |k| k.heads.to_string(),
    },
    Knob {
        name: "batch",
        value: |k| k.batch.to_string(),
    },
    Knob {
        name: "set-features",
        value: |k| {
            k.set_features
                .clone()
                .unwrap_or_else(|| NOT_APPLICABLE.into())
        },
    },
    Knob {
        name: "early",
        value: |k| k.early.clone().unwrap_or_else(|| NOT_APPLICABLE.into()),
    },
    Knob {
        name: "ska-layers",
        value: |k| {
            k.ska_layers
                .clone()
                .unwrap_or_else(|| NOT_APPLICABLE.into())
        },
    },
    Knob {
        name: "pos",
        value: |k| k.pos.clone(),
    },
];

/// One value of an ablation.
#[derive(Debug, Clone, Serialize)]
pub struct AblationBar {
    /// The knob's value.
    pub value: String,
    /// The quality metric over seeds.
    pub metric: Stat,
    /// Tokens per second over seeds.
    pub tokens_per_s: Option<Stat>,
    /// The runs.
    pub runs: Vec<String>,
}

/// An ablation: one knob varied around the base configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Ablation {
    /// The knob.
    pub knob: String,
    /// The other knobs' values (the base configuration), as `knob value`.
    pub around: Vec<String>,
    /// What is compared: `valid word ppl` (or `valid token ppl` where some run has no
    /// word counts).
    pub metric: String,
    /// One bar per value, in ascending order (numbers by value).
    pub bars: Vec<AblationBar>,
}

/// Sorts knob values: numerically when every value is a number.
fn sort_values(values: &mut [String]) {
    if values.iter().all(|v| v.parse::<f64>().is_ok()) {
        values.sort_by(|a, b| {
            a.parse::<f64>()
                .unwrap_or(0.0)
                .total_cmp(&b.parse().unwrap_or(0.0))
        });
    } else {
        values.sort();
    }
}

/// The value of a knob that does not apply to a run (an SKA option of a dot run).
const NOT_APPLICABLE: &str = "-";

/// The ablations of the complete runs. The base configuration is, per knob, its most
/// common value (SKA for the method, the method under study; ties: the smallest value);
/// knob K's ablation compares the runs equal to the base in every knob but K (and the
/// seed, averaged); a knob that does not apply to a run (SKA's options for dot
/// attention) matches any base. A knob with fewer than two values there has none.
pub fn ablations(runs: &[Run]) -> Vec<Ablation> {
    let done: Vec<&Run> = runs.iter().filter(|r| r.complete).collect();
    let base: Vec<String> = KNOBS
        .iter()
        .map(|knob| {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for r in &done {
                let v = (knob.value)(&r.knobs);
                if v != NOT_APPLICABLE {
                    *counts.entry(v).or_default() += 1;
                }
            }
            if knob.name == "method" {
                if let Some(ska) = counts.keys().find(|v| v.starts_with("ska")) {
                    return ska.clone();
                }
            }
            let mut values: Vec<String> = counts.keys().cloned().collect();
            sort_values(&mut values);
            let best = values.iter().map(|v| counts[v]).max().unwrap_or(0);
            values
                .into_iter()
                .find(|v| counts[v] == best)
                .unwrap_or_default()
        })
        .collect();
    let mut out = Vec::new();
    for (i, knob) in KNOBS.iter().enumerate() {
        let slice: Vec<&Run> = done
            .iter()
            .copied()
            .filter(|r| {
                KNOBS.iter().enumerate().all(|(j, other)| {
                    let v = (other.value)(&r.knobs);
                    j == i || v == base[j] || v == NOT_APPLICABLE
                })
            })
            .collect();
        let mut values: Vec<String> = slice
            .iter()
            .map(|r| (knob.value)(&r.knobs))
            .filter(|v| v != NOT_APPLICABLE)
            .collect();
        values.sort();
        values.dedup();
        if values.len() < 2 {
            continue;
        }
        sort_values(&mut values);
        let words = slice.iter().all(|r| r.quality.valid_word_ppl.is_some());
        let metric_of = |r: &Run| {
            if words {
                r.quality.valid_word_ppl
            } else {
                r.quality.valid_token_ppl
            }
        };
        let bars: Vec<AblationBar> = values
            .iter()
            .filter_map(|v| {
                let members: Vec<&Run> = slice
                    .iter()
                    .copied()
                    .filter(|r| (knob.value)(&r.knobs) == *v)
                    .collect();
                Some(AblationBar {
                    value: v.clone(),
                    metric: Stat::of(members.iter().map(|r| metric_of(r)))?,
                    tokens_per_s: Stat::of(members.iter().map(|r| r.perf.tokens_per_s)),
                    runs: members.iter().map(|r| r.label.clone()).collect(),
                })
            })
            .collect();
        if bars.len() < 2 {
            continue;
        }
        out.push(Ablation {
            knob: knob.name.to_string(),
            around: KNOBS
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(j, k)| format!("{} {}", k.name, base[j]))
                .collect(),
            metric: if words {
                "valid word ppl".into()
            } else {
                "valid token ppl".into()
            },
            bars,
        });
    }
    out
}
