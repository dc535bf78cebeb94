#!/usr/bin/env bash
# Set-artifact benchmarks (issue 4), on the store of tests/bench/pipeline.sh (built first
# when WORKDIR has none):
#  1. MinHash signing (k=128) of every set of banks-train.arrow: ausa's kernel against
#     rensa (PyPI) signing the same sets in the same run; prints the ratio.
#  2. Opening the four set files of the train split and gathering batches of 32 sequences,
#     on that store and on the (much smaller) embedded demo DAG's, to show that opening
#     does not grow with the artifacts' size.
# Usage: tests/bench/sets.sh [WORKDIR] [RUNS=7] [DOCS=43000] (smoke.sh passes tiny sizes)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
runs=${2:-7}
docs=${3:-43000}
mkdir -p "$work"
dag=$work/wt103-25pct-synthetic.toml
[ -f "$dag" ] && [ -d "$work/store" ] || tests/bench/pipeline.sh "$work" "$docs"
ausa=$PWD/target/release/ausa
dir() { "$ausa" path "$dag:$1" --store "$work/store"; }
demo_dir() { "$ausa" path "demo:$1" --store "$work/demo-store"; }
banks=$(dir banks)/banks-train.arrow

venv=$work/venv
[ -x "$venv/bin/python" ] || { python3 -m venv "$venv" && "$venv/bin/pip" install -q rensa pyarrow numpy; }
# One build for both examples: one feature set for the shared dependencies, compiled once.
cargo build --release -q --locked -p ausa-stages -p ausa-artifacts --example minhash_bench --example gather_bench

echo "== MinHash signing, k=128, every set of $(basename "$banks") ($(nproc) cores)"
ours=$(target/release/examples/minhash_bench "$banks" 128 "$runs")
theirs=$("$venv/bin/python" tests/bench/minhash_rensa.py "$banks" 128 "$runs")
echo "$ours"
echo "$theirs"
python3 - "$ours" "$theirs" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert a["sets"] == b["sets"], "both must sign the same sets"
print(f"ausa {a['sets_per_s']/1e6:.2f} M sets/s, rensa {b['sets_per_s']/1e6:.2f} M sets/s: "
      f"{a['sets_per_s']/b['sets_per_s']:.1f}x")
PY

echo "== open the train split's set artifacts and gather batches of 32 sequences"
target/release/examples/gather_bench \
  "$(dir sequences)/sequences-train.arrow" "$banks" \
  "$(dir minhash)/minhash-train.arrow" "$(dir routing)/routing-train.arrow" 32 "$((runs * 7))"

echo "== the same on the embedded demo DAG"
"$ausa" build demo --store "$work/demo-store" -q
target/release/examples/gather_bench \
  "$(demo_dir sequences)/sequences-train.arrow" "$(demo_dir banks)/banks-train.arrow" \
  "$(demo_dir minhash)/minhash-train.arrow" "$(demo_dir routing)/routing-train.arrow" 32 "$((runs * 7))"
