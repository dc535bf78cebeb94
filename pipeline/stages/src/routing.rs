//! The `routing` stage kind: every token's candidate sets, written as
//! `routing-<split>.arrow` ([`ausa_artifacts::routing`]).
//!
//! Sets of a bank are in span order with non-decreasing ends, so the sets a causal
//! token `t` may use (`end <= t + 1`) are a prefix of its sequence's bank; with
//! `router_topk > 0` only the last `router_topk` of that prefix. Non-causal tokens
//! get every set of their sequence (`router_topk` applies to causal tables only).
//! A sequence's length is its last set's end (windows cover every token), so the
//! table depends only on the list of set ends: one table per distinct list is
//! stored, and sequences find theirs by their ends. Parameters owned here: `router_topk`, `causal`.

use std::collections::HashMap;
use std::path::Path;

use ausa_artifacts::{
    banks_path, routing_path, write_routing, BanksFile, Routing, RoutingLayout, Split,
};
use ausa_dag::{InputSlot, StageContext, StageError, Stats, TypedStage};
use serde_json::{json, Value};

static INPUTS: [InputSlot; 1] = [InputSlot {
    name: "banks",
    kinds: &["banks"],
    doc: "the set banks to route tokens to",
}];

ausa_dag::stage_params! {
    /// Parameters of the `routing` stage.
    pub struct RoutingParams {
        router_topk: u32 = int(0, 1 << 20, 0,
            "causal: keep only the most recent this many visible sets per token (0 = all)"),
        causal: bool = bool(true,
            "token t sees only sets with end <= t+1 (language modelling); false: all sets"),
    }
}

/// The `routing` stage kind (input `banks`; writes `routing-<split>.arrow`).
#[derive(Debug, Default, Clone, Copy)]
pub struct RoutingStage;

impl TypedStage for RoutingStage {
    type Params = RoutingParams;

    fn kind(&self) -> &'static str {
        "routing"
    }

    fn salt(&self) -> &'static str {
        "2"
    }

    fn doc(&self) -> &'static str {
        "For every token of every sequence, the sets it may use: causal tokens at position t \
         only sets ending at or before t+1 (the router_topk most recent when > 0), otherwise \
         every set of the sequence. Writes routing-<split>.arrow: one CSR table per distinct set \
         layout (a few KiB for fixed-length sequences)."
    }

    fn inputs(&self) -> &'static [InputSlot] {
        &INPUTS
    }

    fn run(&self, params: &RoutingParams, ctx: &StageContext<'_>) -> Result<Stats, StageError> {
        let (topk, causal) = (params.router_topk, params.causal);
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

/// The candidate table of one set layout: for each token position `t` below the
/// last end, the sets (indices into `ends`, non-decreasing) token `t` may use.
pub fn route_layout(ends: &[u32], causal: bool, topk: u32) -> RoutingLayout {
    let len = ends.last().copied().unwrap_or(0);
    let mut layout = RoutingLayout {
        ends: ends.to_vec(),
        token_offsets: vec![0],
        sets: Vec::new(),
    };
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
        layout.sets.extend(range.map(|j| j as u32));
        layout.token_offsets.push(layout.sets.len() as u64);
    }
    layout
}

/// The routing table of a whole bank file: one layout per distinct list of set
/// ends, in order of first appearance (so the bytes follow the bank's order).
pub fn route_banks(banks: &BanksFile, causal: bool, topk: u32) -> Routing {
    route_counted(banks, causal, topk).0
}

/// [`route_banks`] and how many sequences use each layout.
fn route_counted(banks: &BanksFile, causal: bool, topk: u32) -> (Routing, Vec<u64>) {
    let mut index = HashMap::new();
    let mut uses = Vec::new();
    let mut routing = Routing {
        causal,
        topk,
        sequences: banks.num_sequences() as u64,
        layouts: Vec::new(),
    };
    let spans = banks.spans();
    for seq in 0..banks.num_sequences() {
        let sets = banks.sets_of(seq).unwrap_or(0..0);
        let ends: Vec<u32> = sets.map(|s| spans[2 * s + 1]).collect();
        let i = *index.entry(ends).or_insert_with_key(|ends| {
            routing.layouts.push(route_layout(ends, causal, topk));
            uses.push(0);
            uses.len() - 1
        });
        uses[i] += 1;
    }
    (routing, uses)
}

fn route_split(path: &Path, out: &Path, causal: bool, topk: u32) -> Result<Value, StageError> {
    let banks = BanksFile::open(path)?;
    let (routing, uses) = route_counted(&banks, causal, topk);
    let (mut tokens, mut candidates) = (0u64, 0u64);
    for (layout, n) in routing.layouts.iter().zip(uses) {
        tokens += n * (layout.token_offsets.len() as u64 - 1);
        candidates += n * layout.sets.len() as u64;
    }
    write_routing(out, &routing)?;
    let per_token = if tokens == 0 {
        0.0
    } else {
        candidates as f64 / tokens as f64
    };
    Ok(json!({
        "layouts": routing.layouts.len(),
        "tokens": tokens,
        "candidates": candidates,
        "avg_candidates_per_token": (per_token * 1e3).round() / 1e3,
    }))
}
