#!/usr/bin/env bash
# The per-token router forward against the tile kernels on a GPU, in one device call
# (docs/benchmarks.md "Stop 23"): the kernels' tests, then `ausa bench ska` graph rows at
# every L with AUSA_ROUTER_PER_TOKEN=0 and =1, the same with --core, the attention peers
# timed the same way, the joined tables, and Nsight kernel times at 1k and 16k.
#
# Build here, run there (../shared/docs/device.md): copy the release `ausa` and the
# kernels' test binary (`cargo test -p ausa-kernels --no-run`) into one folder, carry it,
# and on the GPU machine run
#   tests/bench/gpu_router_ab.sh FOLDER OUT [LENS=512,1024,2048,4096,8192,16384]
# FOLDER holds `ausa` and `kernels_tests`; OUT gets ab.csv, peers.csv, the tables
# (tables.md), the Nsight kernel lists (kernels_L.csv) and the test log.
# Needs PyTorch with CUDA on the machine (for libtorch's libraries and the peers), and
# `ncu` for the Nsight step (skipped when absent).
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${1:?usage: gpu_router_ab.sh FOLDER OUT [LENS]}
out=${2:?usage: gpu_router_ab.sh FOLDER OUT [LENS]}
lens=${3:-512,1024,2048,4096,8192,16384}
mkdir -p "$out"
torch_lib=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")')
nvidia=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
export LD_LIBRARY_PATH=$torch_lib:$(ls -d "$nvidia"/nvidia/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export AUSA_KERNEL_CACHE=${AUSA_KERNEL_CACHE:-/tmp/ausa-kcache}
ausa=$bin/ausa
layer=(bench ska --device cuda --precision bf16 --gate-topk 8 --router-topk 8
  --ska-backend cuda --lens "$lens" --warmup 3 --iters 20 --cuda-graph)

echo "== kernel tests"
"$bin/kernels_tests" --test-threads 1 >"$out/tests.log" 2>&1
echo "kernel tests rc=$?"
grep -E "test result|FAILED|panicked" "$out/tests.log" | head -20

echo "== layer and core, tile kernels (0) and per-token forward (1)"
for scope in "" --core; do
  for per_token in 0 1; do
    AUSA_ROUTER_PER_TOKEN=$per_token "$ausa" "${layer[@]}" $scope --csv "$out/ab.csv" 2>&1 |
      grep -v " rows -> "
  done
done

echo "== peers"
python3 tests/bench/attn_peers.py --lens "$lens" --cuda-graph --csv "$out/peers.csv" 2>&1 |
  grep -v "^\[" | tail -30

echo "== tables"
{
  echo "### layer, graph replays"
  python3 tests/bench/ska_vs_peers.py "$out/ab.csv" "$out/peers.csv" --dtype bf16 --topk 8 \
    --candidates 8 --cuda-graph
  echo
  echo "### core (no gate or output projection), graph replays"
  python3 tests/bench/ska_vs_peers.py "$out/ab.csv" "$out/peers.csv" --dtype bf16 --topk 8 \
    --candidates 8 --cuda-graph --core
} | tee "$out/tables.md"

if command -v ncu >/dev/null; then
  echo "== Nsight kernel times (one fwd + bwd per L, per-token forward on)"
  for l in 1024 16384; do
    AUSA_ROUTER_PER_TOKEN=1 ncu --csv --metrics gpu__time_duration.sum "$ausa" bench ska \
      --device cuda --ska-backend cuda --lens "$l" --precision bf16 --gate-topk 8 \
      --router-topk 8 --warmup 0 --iters 1 >"$out/ncu_$l.raw" 2>/dev/null
    python3 - "$out/ncu_$l.raw" "$out/kernels_$l.csv" <<'PY'
import csv, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if not l.startswith("=="))]
if not rows:
    sys.exit("no Nsight rows")
h = rows[0]
name, value = h.index("Kernel Name"), h.index("Metric Value")
with open(sys.argv[2], "w") as f:
    f.write("us,kernel\n")
    for r in rows[1:]:
        v = r[value].replace(",", "")
        if len(r) > value and v.replace(".", "").isdigit():
            f.write("%.2f,%s\n" % (float(v) / 1000, r[name][:90].replace(",", ";")))
            if "route" in r[name]:
                print("%-44s %8.1f us" % (r[name][:44], float(v) / 1000))
PY
    rm -f "$out/ncu_$l.raw"
  done
fi
