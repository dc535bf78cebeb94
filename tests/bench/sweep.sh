#!/usr/bin/env bash
# Sweep and report overheads (issue 14):
# 1. `ausa sweep demo-ablation` (4 runs of STEPS CPU steps, artifacts built first by
#    --cache-only): per run, the seconds from the sweep spawning the trainer to the
#    trainer starting to train (run_meta.json written, data opened) and to its first
#    step done, from sweep_status.json, run_meta.json's mtime and metrics.jsonl;
# 2. `ausa report` over RUNS generated run directories (the layout `ausa train lm`
#    writes, 200 steps each), median of 5.
# The binary is the dev-profile build of the tests (the train feature) unless AUSA names
# one. Usage: tests/bench/sweep.sh [WORKDIR] [STEPS=6] [RUNS=100]
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
steps=${2:-6}
nruns=${3:-100}
mkdir -p "$work"
if [ -z "${AUSA:-}" ]; then
  cargo build -q --locked -p ausa-cli --features train
  AUSA=$PWD/target/debug/ausa
fi
store=$work/store
rm -rf "$work/sweep" "$work/sweep.toml"
# demo-ablation with STEPS steps per run.
sed "s/^steps = .*/steps = $steps/" dags/sweeps/demo-ablation.toml > "$work/sweep.toml"
"$AUSA" --store "$store" sweep "$work/sweep.toml" --out "$work/sweep" --cache-only -q
start=$(date +%s.%N)
"$AUSA" --store "$store" sweep "$work/sweep.toml" --out "$work/sweep" -q
end=$(date +%s.%N)
python3 - "$work/sweep" "$start" "$end" <<'PY'
import json, os, statistics, sys
root, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
to_train, to_step, walls = [], [], []
for name in sorted(os.listdir(f"{root}/runs")):
    d = f"{root}/runs/{name}"
    status = json.load(open(f"{d}/sweep_status.json"))
    assert status["status"] == "ok", (name, status)
    spawned = status["started_unix_s"]
    meta_at = os.stat(f"{d}/run_meta.json").st_mtime
    first = json.loads(open(f"{d}/metrics.jsonl").readline())
    to_train.append(meta_at - spawned)
    to_step.append(meta_at - spawned + first["elapsed_s"])
    walls.append(status["elapsed_s"])
    print(f"{name}: spawn -> training {meta_at - spawned:.3f} s, -> first step {to_step[-1]:.3f} s, whole run {status['elapsed_s']:.2f} s")
print(f"median spawn -> training start: {statistics.median(to_train):.3f} s; -> first step done: {statistics.median(to_step):.3f} s")
print(f"sweep of {len(walls)} runs: {end - start:.2f} s wall, {sum(walls):.2f} s in runs, {end - start - sum(walls):.2f} s outside them")
PY
# report over generated runs
python3 - "$work/fake" "$nruns" <<'PY'
import json, os, shutil, sys
root, n = sys.argv[1], int(sys.argv[2])
shutil.rmtree(root, ignore_errors=True)
attns = ["dot-naive", "ska", "sdpa"]
for i in range(n):
    attn, prec = attns[i % 3], ["fp32", "bf16"][(i // 3) % 2]
    k = [32, 64, 128, 256][(i // 6) % 4]
    seed = i // 24
    d = f"{root}/run-{i:03d}"
    os.makedirs(d)
    meta = {"ausa_version": "0.1.0", "device": "cpu", "config": {"model": {"seq_len": 256, "d_model": 64, "layers": 2, "heads": 4,
            "attn": attn, "beta": 0.0, "router_topk": 0, "adapter_rank": 0}, "batch": 8, "accum": 1, "precision": prec, "seed": seed},
            "steps": 200, "seeds": {"seed": seed}, "ska_backend": "naive",
            "data": {"train": {"seq_len": 256, "sets_per_seq": 7, "window": 64, "stride": 32, "minhash_k": k, "router_topk": 0}},
            "run": {"command": ["ausa", "train", "lm"], "dag": "demo", "artifacts": [{"stage": "minhash", "kind": "minhash", "fingerprint": "f" * 64}]}}
    json.dump(meta, open(f"{d}/run_meta.json", "w"))
    with open(f"{d}/metrics.jsonl", "w") as m:
        for s in range(1, 201):
            m.write(json.dumps({"kind": "train", "step": s, "loss": 7 - s / 100, "tokens_per_s": 1e4}) + "\n")
    json.dump({"steps": 200, "last_loss": 5.0, "valid": {"loss": 5.1, "token_ppl": 160.0, "word_ppl": 500.0 + i}, "tokens_per_s": 1e4, "elapsed_s": 40.0},
              open(f"{d}/summary.json", "w"))
PY
times=()
for _ in 1 2 3 4 5; do
  s=$(date +%s.%N)
  "$AUSA" report "$work/fake" --out "$work/report" -q
  e=$(date +%s.%N)
  times+=("$(python3 -c "print($e - $s)")")
done
python3 -c "import statistics,sys; t=sorted(map(float,sys.argv[1:])); print(f'ausa report over $nruns runs: median {statistics.median(t):.3f} s (min {t[0]:.3f}, max {t[-1]:.3f})')" "${times[@]}"
