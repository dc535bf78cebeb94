#!/usr/bin/env bash
# What each `ausa train lm --cache-mode` costs (docs/cache-modes.md): the wall time of a
# one-step run on the demo DAG with `full` (every object from a built store), `tokens`
# (banks, signatures and routing rebuilt from the store's token ids) and `none` (the whole
# chain rebuilt from the synthetic corpus, no store), median of RUNS runs each. A one-step
# run is almost all start-up and artifact work, so the differences are what the mode costs.
# Usage: tests/bench/cache_modes.sh [WORKDIR] [RUNS=3]
# Environment: AUSA_BIN [target/release/ausa, built with --features train].
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
runs=${2:-3}
# Without AUSA_BIN, build the release binary with the train feature (a no-op when fresh;
# target/release/ausa may be a pipeline-only build of another script).
ausa=${AUSA_BIN:-target/release/ausa}
if [ -z "${AUSA_BIN:-}" ]; then
  cargo build --release -q --locked -p ausa-cli --features train
fi
mkdir -p "$work"
store=$work/store
"$ausa" train lm --dag demo --store "$store" --cache-only -q
tiny=(--dag demo --steps 1 --d-model 32 --layers 1 --heads 2 --batch 4 --eval-batches 1
  --device cpu --threads 1 -q)
for mode in full tokens none; do
  times=()
  for i in $(seq "$runs"); do
    out=$work/run-$mode-$i
    rm -rf "$out"
    start=$(date +%s.%N)
    "$ausa" train lm "${tiny[@]}" --store "$store" --cache-mode "$mode" --out "$out"
    end=$(date +%s.%N)
    times+=("$(python3 -c "print(f'{$end - $start:.3f}')")")
  done
  median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
  echo "cache-mode $mode: median ${median} s over $runs runs (${times[*]})"
done
