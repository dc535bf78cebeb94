#!/usr/bin/env bash
# An ablation on real text through `ausa sweep` and `ausa report` (issue 14, "Measured"),
# sized for a CPU: WikiText-2 valid.txt split by article as in lm_quality.sh (50 articles
# train, 10 evaluate, 4k BPE), SKA with hidden-state set features in block 1 of 2 (the
# best SKA configuration of docs/benchmarks.md's quality runs), MinHash k {32, 128} x gate
# top-k {0, 2} x seeds {0, 1}, plus dot-naive for both seeds: 10 runs.
# Writes WORKDIR/sweep (results.csv, runs/) and WORKDIR/report (report.md, tables, PNG/SVG).
#
# Usage: tests/bench/wt2_articles_ablation.sh [WORKDIR] [STEPS=300] [PARALLEL=2]
# Environment: AUSA_BIN [target/release/ausa, built with --features train], AUSA_DATA
#   [../shared/data/wikitext-2/valid.txt], DEVICE [cpu].
# About 11 minutes on 2 cores with the debug binary at 300 steps; the smoke run uses 2.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
steps=${2:-300}
parallel=${3:-2}
ausa=${AUSA_BIN:-target/release/ausa}
if [ -z "${AUSA_BIN:-}" ]; then
  cargo build --release -q --locked -p ausa-cli --features train
fi
mkdir -p "$work"
# The split and the DAG (lm_quality.sh skips by name, and stops, when the data is absent).
dag=$(PREPARE_ONLY=1 AUSA_BIN="$ausa" tests/bench/lm_quality.sh "$work/data")
if [ -z "$dag" ]; then exit 0; fi
cat > "$work/ablation.toml" <<TOML
# Written by tests/bench/wt2_articles_ablation.sh.
description = "WikiText-2 articles: SKA (hidden features, block 1 of 2) minhash-k x gate-topk, seeds 0-1, and dot-naive"
task = "lm"
dag = "$dag"

[base]
attn = "ska"
set-features = "hidden"
ska-layers = "1"
steps = $steps
d-model = 64
layers = 2
heads = 2
batch = 8
lr = 2e-3
warmup = $((steps / 20 + 1))
eval-every = $((steps / 3 > 0 ? steps / 3 : 1))
eval-batches = 0
device = "${DEVICE:-cpu}"
threads = 1

[[grid]]
minhash-k = [32, 128]
gate-topk = [0, 2]
seed = [0, 1]

[[run]]
attn = "dot-naive"
seed = 0

[[run]]
attn = "dot-naive"
seed = 1
TOML
"$ausa" sweep "$work/ablation.toml" --out "$work/sweep" --store "$work/data/store" --parallel "$parallel"
"$ausa" report "$work/sweep" --out "$work/report"
echo "report: $work/report/report.md"
