//! The `routing` stage kind: every token's candidate sets, written as
//! `routing-<split>.arrow` ([`ausa_artifacts::routing`]).
//!
//! Sets of a bank are in span order with non-decreasing ends, so the sets a causal
//! token `t` may use (`end <= t + 1`) are a prefix of its sequence's bank; with
//! `router_topk > 0` only the last `router_topk` of that prefix. Non-causal tokens
//! get every set of their sequence (`router_topk` applies to causal tables only).
//! A sequence's length is its last set's end (windows cover every token).
//! Parameters owned here: `router_topk`, `causal`.

use std::path::Path;

use ausa_artifacts::{banks_path, routing_path, write_routing, BanksFile, Routing, Split};
use ausa_dag::{
    InputSlot, ParamDefault, ParamSpec, ParamType, Stage, StageContext, StageError, Stats,
};
use serde_json::{json, Value};

static INPUTS: [InputSlot; 1] = [InputSlot {
    name: "banks",
    kinds: &["banks"],
    doc: "the set banks to route tokens to",
}];

static PARAMS: [ParamSpec; 2] = [
    ParamSpec {
        name: "router_topk",
        ty: ParamType::Int {
            min: 0,
            max: 1 << 20,
        },
        default: ParamDefault::Int(0),
        doc: "causal: keep only the most recent this many visible sets per token (0 = all)",
    },
    ParamSpec {
        name: "causal",
        ty: ParamType::Bool,
        default: ParamDefault::Bool(true),
        doc: "token t sees only sets with end <= t+1 (language modelling); false: all sets",
    },
];

/// The `routing` stage kind (input `banks`; writes `routing-<split>.arrow`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RoutingStage;

impl Stage for RoutingStage {
    fn kind(&self) -> &'static str {
        "routing"
    }

    fn salt(&self) -> &'static str {
        "1"
    }

    fn doc(&self) -> &'static str {
        "For every token of every sequence, the sets it may use: causal tokens at position t \
         only sets ending at or before t+1 (the router_topk most recent when > 0), otherwise \
         every set of the sequence. Writes routing-<split>.arrow (CSR of local set indices)."
    }

    fn params(&self) -> &'static [ParamSpec] {
        &PARAMS
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn run(&self, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let topk = ctx.params.int("router_topk")? as u32;
        let causal = ctx.params.bool("causal")?;
        let dir = &ctx.input("banks")?.dir;
        let mut splits = serde_json::Map::new();
        for split in Split::ALL {
            let path = banks_path(dir, split);
            if path.exists() {
                let out = routing_path(ctx.out_dir, split);
                splits.insert(
                    split.as_str().into(),
                    route_split(&path, &out, causal, topk)?,
                );
            }
        }
        let mut stats = Stats::new();
        stats.insert("causal".into(), json!(causal));
        stats.insert("router_topk".into(), json!(topk));
        stats.insert("splits".into(), Value::Object(splits));
        Ok(stats)
    }
}

/// Appends the candidates of every token of one sequence whose sets have `ends`
/// (non-decreasing) to `routing`, and ends the sequence.
pub fn route_sequence(ends: &[u32], causal: bool, topk: u32, routing: &mut Routing) {
    let len = ends.last().copied().unwrap_or(0);
    let mut visible = 0;
    for t in 0..len {
        while visible < ends.len() && ends[visible] <= t + 1 {
            visible += 1;
        }
        let range = match (causal, topk) {
            (false, _) => 0..ends.len(),
            (true, 0) => 0..visible,
            (true, k) => visible.saturating_sub(k as usize)..visible,
        };
        routing.sets.extend(range.map(|j| j as u32));
        routing.token_offsets.push(routing.sets.len() as u64);
    }
    routing
        .seq_offsets
        .push(routing.token_offsets.len() as u64 - 1);
}

/// The routing table of a whole bank file.
pub fn route_banks(banks: &BanksFile, causal: bool, topk: u32) -> Routing {
    let mut routing = Routing {
        seq_offsets: vec![0],
        token_offsets: vec![0],
        sets: Vec::new(),
    };
    let spans = banks.spans();
    for seq in 0..banks.num_sequences() {
        let sets = banks.sets_of(seq).unwrap_or(0..0);
        let ends: Vec<u32> = sets.map(|s| spans[2 * s + 1]).collect();
        route_sequence(&ends, causal, topk, &mut routing);
    }
    routing
}

fn route_split(path: &Path, out: &Path, causal: bool, topk: u32) -> Result<Value, StageError> {
    let banks = BanksFile::open(path)?;
    let routing = route_banks(&banks, causal, topk);
    let tokens = routing.token_offsets.len() - 1;
    let candidates = routing.sets.len();
    write_routing(out, causal, topk, routing)?;
    Ok(json!({ "tokens": tokens, "candidates": candidates }))
}
