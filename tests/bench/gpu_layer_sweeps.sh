#!/usr/bin/env bash
# The issue's layer sweeps on a GPU, as graph replays (issue 13, "Sweeps"): MinHash k 32,
# 64, 128, 256 at L = 1k and 16k; fp32 at every L; sets per sequence from 8 (L = 288) to
# 511 (L = 16384) in bf16; all with gate top-8 and the route of the 8 most recent sets.
# Usage (on the GPU machine, FOLDER holding the release `ausa`, as gpu_router_ab.sh):
#   tests/bench/gpu_layer_sweeps.sh FOLDER OUT
# Writes OUT/sweeps.csv (`ausa bench ska` rows; the minhash_k, dtype and
# avg_sets_per_seq columns say which sweep a row is in) and prints each row.
set -uo pipefail
cd "$(dirname "$0")/../.."
bin=${1:?usage: gpu_layer_sweeps.sh FOLDER OUT}
out=${2:?usage: gpu_layer_sweeps.sh FOLDER OUT}
mkdir -p "$out"
torch_lib=$(python3 -c 'import torch, os; print(os.path.dirname(torch.__file__) + "/lib")')
nvidia=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null || true)
export LD_LIBRARY_PATH=$torch_lib:$(ls -d "$nvidia"/nvidia/*/lib 2>/dev/null | tr '\n' ':')${LD_LIBRARY_PATH:-}
export AUSA_KERNEL_CACHE=${AUSA_KERNEL_CACHE:-/tmp/ausa-kcache}
bench=("$bin/ausa" bench ska --device cuda --gate-topk 8 --router-topk 8 --ska-backend cuda
  --warmup 3 --iters 20 --cuda-graph --csv "$out/sweeps.csv")
for k in 32 64 128 256; do
  "${bench[@]}" --precision bf16 --lens 1024,16384 --minhash-k "$k" 2>&1 | grep -v " rows -> "
done
"${bench[@]}" --precision fp32 --lens 512,1024,2048,4096,8192,16384 2>&1 | grep -v " rows -> "
"${bench[@]}" --precision bf16 --lens 288,512,2048,8192 2>&1 | grep -v " rows -> "
