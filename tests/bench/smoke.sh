#!/usr/bin/env bash
# Runs every benchmark script once on tiny inputs, so none of them rots unnoticed: a
# check that each still runs end to end against its peer (CI calls it), not a timing.
# The numbers it prints mean nothing; docs/benchmarks.md has the real runs and commands.
# Usage: tests/bench/smoke.sh   (needs what the scripts need: hyperfine, python3 -m venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run() {
  local name=$1
  shift
  echo "== smoke: $name"
  local started=$SECONDS
  if ! "$@" >"$work/$name.log" 2>&1; then
    cat "$work/$name.log"
    echo "smoke: $name FAILED ($*)" >&2
    exit 1
  fi
  tail -n 3 "$work/$name.log"
  echo "   ($((SECONDS - started)) s)"
}
run store tests/bench/store.sh "$work/store" 3 2000
run pipeline tests/bench/pipeline.sh "$work/sets" 300
run sets tests/bench/sets.sh "$work/sets" 1 300
run tokenize tests/bench/tokenize.sh "$work/tokenize" 1
run remote tests/bench/remote.sh "$work/remote" 1 300
run sweep tests/bench/sweep.sh "$work/sweep" 2 10
# The trainer scripts use the debug binary with the train feature that tests/run.sh built
# (CI runs it first): a release build of the trainer would cost minutes and gigabytes.
if ! target/debug/ausa train lm --help >/dev/null 2>&1; then
  echo "smoke: target/debug/ausa lacks \`train\` (run tests/run.sh first, which builds it)" >&2
  exit 1
fi
run cache_modes env AUSA_BIN=target/debug/ausa tests/bench/cache_modes.sh "$work/cache_modes" 1
run lm_quality env AUSA_BIN=target/debug/ausa D_MODEL=32 LAYERS=1 HEADS=2 BATCH=4 THREADS=1 \
  tests/bench/lm_quality.sh "$work/lm_quality" 2
run wt2_ablation env AUSA_BIN=target/debug/ausa tests/bench/wt2_articles_ablation.sh \
  "$work/wt2_ablation" 2 2
# The layer bench on the CPU (full route and a route of the 2 most recent sets) joined
# with a peers CSV in attn_peers.py's columns (that script needs a GPU) by ska_vs_peers.py.
ska_join() {
  local dir=$1
  mkdir -p "$dir"
  for c in 0 2; do
    target/debug/ausa bench ska --device cpu --threads 1 --lens 128 --tokens 256 --heads 2 \
      --head-dim 8 --minhash-k 16 --warmup 0 --iters 1 --precision bf16 --gate-topk 2 \
      --router-topk "$c" --csv "$dir/ska.csv"
  done
  # One eager and one graph-timed peer row: each table takes the rows of its own timing.
  printf 'peer,dtype,B,L,H,D,fwd_ms,elapsed_ms,max_vram_mb,rate,cuda_graph\n%s\n%s\n' \
    'sdpa_flash,bf16,2,128,2,8,0.1,0.3,10,1,0' 'sdpa_flash,bf16,2,128,2,8,0.1,0.2,10,1,1' \
    >"$dir/peers.csv"
  python3 tests/bench/ska_vs_peers.py "$dir/ska.csv" "$dir/peers.csv" --dtype bf16 | tee "$dir/table.md"
  grep -q "ska-naive top2 c2 ms" "$dir/table.md"
  grep -q "| 0.300 |" "$dir/table.md"
  python3 tests/bench/ska_vs_peers.py "$dir/ska.csv" "$dir/peers.csv" --dtype bf16 --cuda-graph \
    | tee "$dir/graph.md"
  if grep -q "0.300\|ska-naive" "$dir/graph.md"; then
    echo "ska_vs_peers.py --cuda-graph: eager rows in the graph table" >&2
    return 1
  fi
  if grep -q "sdpa_flash / ska-naive" "$dir/table.md"; then
    echo "ska_vs_peers.py: a peer ratio against the naive backend" >&2
    return 1
  fi
  # A core-scope row (no projections) joins only with --core.
  target/debug/ausa bench ska --device cpu --threads 1 --lens 128 --tokens 256 --heads 2 \
    --head-dim 8 --minhash-k 16 --warmup 0 --iters 1 --precision bf16 --gate-topk 2 \
    --router-topk 2 --core --csv "$dir/ska.csv"
  python3 tests/bench/ska_vs_peers.py "$dir/ska.csv" "$dir/peers.csv" --dtype bf16 --core \
    | tee "$dir/core.md"
  grep -q "ska-naive top2 c2 ms" "$dir/core.md"
  if grep -q "ska-naive top2 ms" "$dir/core.md"; then
    echo "ska_vs_peers.py --core: layer rows in the core table" >&2
    return 1
  fi
  python3 tests/bench/ska_vs_peers.py "$dir/ska.csv" "$dir/peers.csv" --dtype bf16 >"$dir/again.md"
  cmp -s "$dir/table.md" "$dir/again.md" || {
    echo "ska_vs_peers.py: a core row changed the layer table" >&2
    return 1
  }
}
run ska_join ska_join "$work/ska_join"
echo "smoke: every benchmark script ran"
