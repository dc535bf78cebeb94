#!/usr/bin/env bash
# Store benchmarks of issue 2 (see docs/benchmarks.md):
#   1. no-op `ausa build demo` (everything up to date), whole process, median of 200 runs;
#   2. `ausa verify` throughput on a store of >= 1 GB.
# Usage: tests/bench/store.sh [WORKDIR] [RUNS=200] [DOCS=1300000]
#   (needs hyperfine: apt-get install hyperfine; tests/bench/smoke.sh passes tiny sizes)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
runs=${2:-200}
docs=${3:-1300000}
cargo build --release -q -p ausa-cli
ausa=$PWD/target/release/ausa
command -v hyperfine >/dev/null || { echo "hyperfine is needed: apt-get install hyperfine" >&2; exit 2; }

echo "== no-op build of demo (store $work/noop)"
"$ausa" build demo --store "$work/noop" -q
hyperfine -N --warmup 10 --runs "$runs" --export-json "$work/noop.json" \
  "$ausa build demo --store $work/noop -q" >/dev/null
python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][0]; \
print(f\"no-op build: median {r['median']*1e3:.2f} ms, mean {r['mean']*1e3:.2f} ms, max {r['max']*1e3:.2f} ms (target <= 20 ms)\")" "$work/noop.json"

echo "== verify throughput (store $work/big, corpus.docs=$docs: >= 1 GB at the default)"
if [ ! -f "$work/big.built" ]; then
  # 1.3M synthetic documents give a documents.parquet of about 1.1 GB.
  "$ausa" build demo --store "$work/big" -q --set "corpus.docs=$docs"
  touch "$work/big.built"
fi
du -sh "$work/big/objects"
"$ausa" verify --store "$work/big" >/dev/null   # warm the page cache once
for i in 1 2 3; do "$ausa" verify --store "$work/big"; done
echo "== cold cache (needs root to drop caches)"
if sync && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then "$ausa" verify --store "$work/big"; else echo "skipped: cannot drop caches"; fi
