#!/usr/bin/env bash
# The MinHash error of the set distance Delta on real banks (issue 13): WikiText-2
# valid.txt (../shared) tokenized with a 4k BPE, sequences of 256, windows of 64 by 32,
# signatures for each k; every causal pair of sets of every sequence, estimate against
# the exact symmetric difference (artifacts/examples/minhash_error.rs).
# Usage: tests/bench/minhash_error.sh WORKDIR [K...]   (default K: 32 64 128 256)
# Writes WORKDIR/minhash_error.csv and prints the summary table.
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:?usage: minhash_error.sh WORKDIR [K...]}
shift
ks=("$@")
[ ${#ks[@]} -gt 0 ] || ks=(32 64 128 256)
if [ ! -f ../shared/data/wikitext-2/valid.txt ]; then
  echo "SKIPPED minhash_error [shared-data]: ../shared/data/wikitext-2/valid.txt is absent" >&2
  exit 0
fi
# Not a timing: the test suite's debug build (dependencies optimized) is fast enough.
cargo build -q --locked --workspace --features ausa-cli/train --bins --example minhash_error
ausa=target/debug/ausa
dag=tests/bench/minhash-error.toml
mkdir -p "$work"
csv=$work/minhash_error.csv
: > "$csv"
for k in "${ks[@]}"; do
  set_k=(--set "minhash.minhash_k=$k")
  "$ausa" build "$dag:minhash" --store "$work/store" -q "${set_k[@]}"
  banks=$("$ausa" path "$dag:banks" --store "$work/store" "${set_k[@]}")/banks-train.arrow
  sigs=$("$ausa" path "$dag:minhash" --store "$work/store" "${set_k[@]}")/minhash-train.arrow
  target/debug/examples/minhash_error "$banks" "$sigs" | { [ -s "$csv" ] && tail -n +2 || cat; } >> "$csv"
done
python3 - "$csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
stats = {}
for r in rows:
    if r["kind"] == "stat":
        stats.setdefault(r["k"], {})[r["lo"]] = float(r["value"])
print("| k | pairs | bias | mean abs error | RMSE | mean relative | p50 | p90 | p99 | max | mean exact Delta |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for k, s in stats.items():
    print(f"| {k} | {int(s['pairs'])} | {s['mean']:+.2f} | {s['mean_abs']:.2f} | {s['rmse']:.2f} | {100*s['mean_rel']:.1f}% | {s['p50_abs']:.2f} | {s['p90_abs']:.2f} | {s['p99_abs']:.2f} | {s['max_abs']:.2f} | {s['mean_exact']:.1f} |")
PY
