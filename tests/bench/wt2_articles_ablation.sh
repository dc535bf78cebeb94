#!/usr/bin/env bash
# An ablation on real text through `ausa sweep` and `ausa report` (issue 14, "Measured"),
# sized for a CPU: WikiText-2 valid.txt split by article as in lm_quality.sh (50 articles
# train, 10 evaluate, 4k BPE), SKA with hidden-state set features in block 1 of 2 (the
# best SKA configuration of docs/benchmarks.md's quality runs), MinHash k {32, 128} x gate
# top-k {0, 2} x seeds {0, 1}, plus dot-naive for both seeds: 10 runs.
# Writes WORKDIR/sweep (results.csv, runs/) and WORKDIR/report (report.md, tables, PNG/SVG).
#
# GRID=spec instead runs the SPEC's LM ablations one knob at a time around a GPU-sized
# base (SKA in blocks 1 and 3 of 4 with atom set features, bf16, the cuda backend;
# sequences of 512 so a token has up to 15 candidate sets and router-topk 4 / 8 prune):
# minhash-k {32,64,128,256}, router-topk {0,4,8}, adapter-rank {0,32,64}, window x stride
# {(32,16),(64,32)}, beta {0,1}, precision {fp32,bf16}, backend {naive,cuda}, plus the
# dot-naive fp32, sdpa bf16 and SKA naive fp32 (Table A) baselines; seeds 0 and 1: 30 runs.
#
# Usage: tests/bench/wt2_articles_ablation.sh [WORKDIR] [STEPS=300] [PARALLEL=2]
# Environment: AUSA_BIN [target/release/ausa, built with --features train], AUSA_DATA
#   [../shared/data/wikitext-2/valid.txt], DEVICE [cpu], GRID [small | spec],
#   SWEEP_FLAGS [extra `ausa sweep` flags, e.g. the GPU gate's --gpu-max-util].
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
if [ "${GRID:-small}" = spec ]; then
cat > "$work/ablation.toml" <<TOML
# Written by tests/bench/wt2_articles_ablation.sh (GRID=spec).
description = "WikiText-2 articles: the SPEC's ablations around SKA (atoms, blocks 1 and 3 of 4, bf16, cuda), seeds 0-1, and the dot baselines"
task = "lm"
dag = "$dag"

[base]
attn = "ska"
ska-layers = "1,3"
set-features = "atoms"
ska-backend = "cuda"
precision = "bf16"
minhash-k = 128
router-topk = 0
adapter-rank = 0
window = 64
stride = 32
beta = 0
steps = $steps
seq-len = 512
d-model = 128
layers = 4
heads = 4
batch = 8
lr = 2e-3
warmup = $((steps / 20 + 1))
eval-every = $((steps / 3 > 0 ? steps / 3 : 1))
eval-batches = 0
device = "${DEVICE:-cuda}"

[[grid]]
minhash-k = [32, 64, 128, 256]
seed = [0, 1]

[[grid]]
router-topk = [0, 4, 8]
seed = [0, 1]

[[grid]]
adapter-rank = [0, 32, 64]
seed = [0, 1]

[[grid]]
shape = [{ window = 32, stride = 16 }, { window = 64, stride = 32 }]
seed = [0, 1]

[[grid]]
beta = [0, 1]
seed = [0, 1]

[[grid]]
precision = ["fp32", "bf16"]
seed = [0, 1]

[[grid]]
ska-backend = ["naive", "cuda"]
seed = [0, 1]

[[grid]]
baseline = [
  { label = "dot-naive-fp32", attn = "dot-naive", precision = "fp32", ska-backend = "naive" },
  { label = "sdpa-bf16", attn = "sdpa", precision = "bf16", ska-backend = "naive" },
  { label = "ska-naive-fp32", precision = "fp32", ska-backend = "naive" },
]
seed = [0, 1]
TOML
else
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
fi
"$ausa" sweep "$work/ablation.toml" --out "$work/sweep" --store "$work/data/store" --parallel "$parallel" ${SWEEP_FLAGS:-}
"$ausa" report "$work/sweep" --out "$work/report"
echo "report: $work/report/report.md"
