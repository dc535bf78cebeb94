#!/usr/bin/env bash
# Remote benchmarks of issue 5 (see docs/benchmarks.md): against a `moto` S3 server on
# 127.0.0.1, the whole-command time of
#   push          `ausa push demo:doc_stats`           vs `aws s3 sync STORE s3://...` (up)
#   pull          `ausa pull` into an empty store        vs `aws s3 sync s3://... DIR` (down)
#   read-through  `ausa build --remote` into an empty store, everything found on the remote
#                                                        vs the same `aws s3 sync` down
# of one store of >= 1 GB: the demo DAG's corpus (DOCS synthetic documents, one
# documents.parquet of about 1.15 GiB at the default) and its statistics.
# Each tool gets a fresh server in each run; which tool goes first alternates.
# `aws s3 sync` down uses whole-file GETs (s3.multipart_threshold = 4GB): with its
# default ranged 8 MiB GETs, moto re-reads the whole 1.15 GiB object for every range
# and the download takes minutes. DEFAULT_DOWN=1 also times that default download once.
# Usage: [DEFAULT_DOWN=1] tests/bench/remote.sh [WORKDIR] [RUNS=3] [DOCS=1300000]
# (creates .venv with moto[server] and awscli from PyPI if they are missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=${1:-$(mktemp -d)}
runs=${2:-3}
docs=${3:-1300000}
mkdir -p "$work"
work=$(cd "$work" && pwd)
cargo build --release -q --locked -p ausa-cli
ausa=$root/target/release/ausa
if [ ! -x .venv/bin/moto_server ] || [ ! -x .venv/bin/aws ]; then
  python3 -m venv .venv && .venv/bin/pip install -q 'moto[server]' awscli
fi
aws=$root/.venv/bin/aws
target=demo:doc_stats
sets=(--set "corpus.docs=$docs")

echo "== source store $work/src ($target, corpus.docs=$docs)"
if [ ! -f "$work/src.built" ]; then
  rm -rf "$work/src"
  "$ausa" build "$target" --store "$work/src" -q "${sets[@]}"
  touch "$work/src.built"
fi
bytes=$(du -sb "$work/src/objects" | cut -f1)
echo "objects: $bytes bytes"

printf '[default]\ns3 =\n    multipart_threshold = 4GB\n' >"$work/aws-whole-files.cfg"
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_DEFAULT_REGION=us-east-1
moto=
start_moto() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$root/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
  moto=$!
  export AWS_ENDPOINT_URL=http://127.0.0.1:$port
  for _ in $(seq 150); do
    curl -sf -X PUT "$AWS_ENDPOINT_URL/bench" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "moto_server did not start on port $port (see $work/moto.log)" >&2
  exit 2
}
stop_moto() {
  if [ -n "$moto" ]; then kill "$moto" 2>/dev/null || true; wait "$moto" 2>/dev/null || true; fi
  moto=
}
trap stop_moto EXIT

times=$work/times.txt
: >"$times"
# timed RUN MEASURE COMMAND...: whole-command wall time, appended to $times. Every
# command starts from the same state: no earlier command's dirty pages left to write back.
timed() {
  local run=$1 measure=$2 t0 t1
  shift 2
  sync
  t0=$(date +%s.%N)
  "$@" >"$work/last.log" 2>&1 || { cat "$work/last.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$run $measure $t0 $t1" >>"$times"
}

bench_ausa() {
  local run=$1 url=s3://bench/ausa
  rm -rf "$work/pulled" "$work/rt"
  timed "$run" ausa-push "$ausa" push "$target" --store "$work/src" --remote "$url" -q "${sets[@]}"
  timed "$run" ausa-pull "$ausa" pull "$target" --store "$work/pulled" --remote "$url" -q "${sets[@]}"
  cmp "$(find "$work/src/objects" -name documents.parquet)" "$(find "$work/pulled/objects" -name documents.parquet)"
  # Like the peer's download, the read-through build starts without another 1.15 GiB copy
  # in the page cache.
  rm -rf "$work/pulled"
  timed "$run" ausa-read-through "$ausa" build "$target" --store "$work/rt" --remote "$url" -q "${sets[@]}"
  # The read-through build must have fetched, not built: every stage is there, verified.
  "$ausa" verify --store "$work/rt" -q
  cmp "$(find "$work/src/objects" -name documents.parquet)" "$(find "$work/rt/objects" -name documents.parquet)"
  rm -rf "$work/pulled" "$work/rt"
}

bench_aws() {
  local run=$1 url=s3://bench/sync
  rm -rf "$work/down"
  timed "$run" aws-up "$aws" s3 sync "$work/src" "$url" --only-show-errors \
    --exclude '*' --include 'objects/*' --include 'refs/*'
  timed "$run" aws-down env AWS_CONFIG_FILE="$work/aws-whole-files.cfg" \
    "$aws" s3 sync "$url" "$work/down" --only-show-errors
  cmp "$(find "$work/src/objects" -name documents.parquet)" "$(find "$work/down/objects" -name documents.parquet)"
  rm -rf "$work/down"
  if [ "${DEFAULT_DOWN:-0}" = 1 ] && [ "$run" = 1 ]; then
    timed "$run" aws-down-default "$aws" s3 sync "$url" "$work/down" --only-show-errors
    rm -rf "$work/down"
  fi
}

for run in $(seq "$runs"); do
  echo "== run $run of $runs"
  if [ $((run % 2)) -eq 1 ]; then order="ausa aws"; else order="aws ausa"; fi
  for tool in $order; do
    start_moto
    "bench_$tool" "$run"
    stop_moto
  done
done

python3 - "$times" "$bytes" "$runs" <<'PY'
import statistics, sys
path, size, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t = {}
for line in open(path):
    run, measure, t0, t1 = line.split()
    t.setdefault(measure, []).append(float(t1) - float(t0))
med = {m: statistics.median(v) for m, v in t.items()}
mib = size / 2**20
print(f"\n{size / 2**30:.2f} GiB of objects, {runs} runs, median (all runs); ratio = aws time / ausa time")
print(f"| measure | ausa | aws s3 sync | ratio |")
print(f"|---|---|---|---|")
for name, ours, peer in [("push", "ausa-push", "aws-up"), ("pull", "ausa-pull", "aws-down"),
                         ("read-through build", "ausa-read-through", "aws-down")]:
    cell = lambda m: (f"{med[m]:.2f} s, {mib / med[m]:.0f} MiB/s ("
                      + ", ".join(f"{x:.2f}" for x in t[m]) + ")")
    print(f"| {name} | {cell(ours)} | {cell(peer)} | **{med[peer] / med[ours]:.2f}x** |")
if "aws-down-default" in t:
    d = t["aws-down-default"][0]
    print(f"aws s3 sync down with its default ranged GETs: {d:.2f} s, {mib / d:.0f} MiB/s "
          f"(pull ratio {d / med['ausa-pull']:.1f}x)")
PY
