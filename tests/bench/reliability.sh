#!/usr/bin/env bash
# The figures of docs/store.md, "Reliability" (issue 10): a shared store beside gc,
# --force, kill -9, concurrent builders, corruption and full disks, plus the no-op build
# time. Release binary, small configurations (a few minutes on 2 cores).
# Usage: tests/bench/reliability.sh [WORKDIR]
# Needs: unshare (full-disk sizes; skipped without), hyperfine (no-op time; a shell
# loop otherwise).
set -uo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
cargo build --release -q -p ausa-cli || exit 2
ausa=$PWD/target/release/ausa
small="--set corpus.docs=300"
export AUSA_LOCK_LEASE_MS=3000

# Runs "$@" in the background, its exit status into $work/rc/<n>.
n=0
bg() { n=$((n + 1)); ( "$@" >"$work/log/$n.out" 2>"$work/log/$n.err"; echo $? >"$work/rc/$n" ) & }
failures() { grep -L '^0$' "$work"/rc/* 2>/dev/null | wc -l; }
corrupt_reports() { cat "$work"/log/*.err 2>/dev/null | grep -ci corrupt; }
reset() { rm -rf "$work/rc" "$work/log"; mkdir -p "$work/rc" "$work/log"; n=0; }
partial() { # object dirs without a manifest or digest, or symlinked ones
  local bad=0
  for d in "$1"/objects/*/*; do
    [ -e "$d" ] || continue
    if [ -L "$d" ] || [ ! -f "$d/manifest.json" ] || [ ! -f "$d/manifest.blake3" ]; then bad=$((bad + 1)); fi
  done
  echo $bad
}

echo "== 1. builds beside a gc loop (15 builds, different --set; gc and gc --keep-last 2)"
s=$work/s1; rm -rf "$s"; reset
"$ausa" build demo --store "$s" -q $small
( while [ ! -f "$work/stop1" ]; do "$ausa" gc --store "$s" -q; "$ausa" gc --store "$s" -q --keep-last 2; done ) &
gcpid=$!
for i in $(seq 1 15); do
  bg "$ausa" build demo --store "$s" -q $small --set corpus.seed=$i
  # three at a time
  if [ $((i % 3)) = 0 ]; then while [ "$(ls "$work/rc" | wc -l)" -lt $i ]; do sleep 0.1; done; fi
done
touch "$work/stop1"; wait $gcpid
echo "gc-during-build: $(failures) of 15 builds failed, $(corrupt_reports) corruption reports"

echo "== 2. two builds with different --set at a time plus a gc loop (20 builds)"
s=$work/s2; rm -rf "$s"; reset
"$ausa" build demo:corpus --store "$s" -q $small
( while [ ! -f "$work/stop2" ]; do "$ausa" gc --store "$s" -q --keep-last 1; done ) &
gcpid=$!
for i in $(seq 1 10); do
  bg "$ausa" build demo --store "$s" -q --set corpus.docs=300 --set corpus.seed=$i
  bg "$ausa" build demo --store "$s" -q --set corpus.docs=350 --set corpus.seed=$i
  wait_n=$((2 * i)); while [ "$(ls "$work/rc" | wc -l)" -lt $wait_n ]; do sleep 0.1; done
done
touch "$work/stop2"; wait $gcpid
echo "two-configs-plus-gc: $(failures) of 20 builds failed, $(corrupt_reports) corruption reports"

echo "== 3. two --force builds beside four plain ones, 5 rounds (30 processes)"
s=$work/s3; rm -rf "$s"; reset
"$ausa" build demo --store "$s" -q $small
for round in 1 2 3 4 5; do
  for j in 1 2; do bg "$ausa" build demo:tokenizer --force --store "$s" -q $small; done
  for j in 1 2 3 4; do bg "$ausa" build demo --store "$s" -q $small; done
  while [ "$(ls "$work/rc" | wc -l)" -lt $((6 * round)) ]; do sleep 0.1; done
done
"$ausa" verify --store "$s" -q >/dev/null && v=clean || v=FAILED
echo "force-beside-builds: $(failures) of 30 processes failed, $(corrupt_reports) corruption reports, verify $v"

echo "== 4. kill -9 at random points (40 trials)"
s=$work/s4; rm -rf "$s"
alive=0; partials=0; bad_verify=0; seed=12345
for t in $(seq 1 40); do
  seed=$(( (seed * 1103515245 + 12345) % 2147483648 ))
  ms=$(( 20 + seed % 1500 ))
  "$ausa" build demo --store "$s" -q --set corpus.docs=3000 --set corpus.seed=$((t % 4)) & pid=$!
  sleep "$(awk -v m="$ms" 'BEGIN { printf "%.3f", m / 1000 }')"
  if kill -0 $pid 2>/dev/null; then alive=$((alive + 1)); kill -9 $pid; fi
  wait $pid 2>/dev/null
  partials=$((partials + $(partial "$s")))
  [ -d "$s/objects" ] && { "$ausa" verify --store "$s" -q >/dev/null 2>&1 || bad_verify=$((bad_verify + 1)); }
done
for k in 0 1 2 3; do "$ausa" build demo --store "$s" -q --set corpus.docs=3000 --set corpus.seed=$k || echo "rebuild failed"; done
"$ausa" gc --store "$s" -q
left=$(( $(ls -A "$s/locks" | wc -l) + $(ls -A "$s/pins" | wc -l) + $(ls -A "$s/tmp" | wc -l) ))
echo "kill-9: 40 trials, $alive victims alive when killed, $partials partial objects visible, $bad_verify failed verifies, $left locks/pins/temp dirs left after gc"

echo "== 5. 8 concurrent builders x 3 rounds"
onces=0; total=0
for round in 1 2 3; do
  s=$work/s5.$round; rm -rf "$s"; reset
  for j in $(seq 1 8); do bg "$ausa" build demo --store "$s" --json --set corpus.docs=5000; done
  while [ "$(ls "$work/rc" | wc -l)" -lt 8 ]; do sleep 0.2; done
  counts=$(cat "$work"/log/*.out | python3 -c '
import json, sys, collections
text = sys.stdin.read()
dec = json.JSONDecoder(); i = 0; built = collections.Counter(); stages = set()
while i < len(text):
    text_i = text[i:].lstrip()
    if not text_i: break
    doc, end = dec.raw_decode(text_i); i = len(text) - len(text_i) + end
    for s in doc["report"]["stages"]:
        stages.add(s["stage"]); built[s["stage"]] += s["outcome"] == "built"
print(sum(1 for s in stages if built[s] == 1), len(stages))')
  onces=$((onces + ${counts% *})); total=$((total + ${counts#* }))
  [ "$(failures)" = 0 ] || echo "round $round: $(failures) builders failed"
done
echo "concurrent-builders: $onces of $total artifacts built exactly once (8 builders x 3 rounds)"

echo "== 6. corruption cases detected by verify / status / status --verify / a reading stage"
s=$work/s6
fresh() { rm -rf "$s"; "$ausa" build demo --store "$s" -q; c=$(ls -d "$s"/objects/corpus/*); }
writable() { chmod u+w "$1" "$(dirname "$1")"; }
cases=0; by_verify=0; by_status=0; by_status_v=0; by_stage=0
check() { # $1: case name
  cases=$((cases + 1))
  "$ausa" verify --store "$s" -q >/dev/null 2>&1 || by_verify=$((by_verify + 1))
  "$ausa" status demo --store "$s" -q >/dev/null 2>&1; [ $? = 4 ] && by_status=$((by_status + 1))
  "$ausa" status demo --verify --store "$s" -q >/dev/null 2>&1; [ $? = 4 ] && by_status_v=$((by_status_v + 1))
  "$ausa" build demo --store "$s" -q --set doc_stats.histogram_bins=9 >/dev/null 2>&1 || by_stage=$((by_stage + 1))
}
for damage in flip truncate extend delete extra symfile symdir stats key files-size unknown-field emptied; do
  fresh
  f=$c/documents.parquet
  case $damage in
    flip) writable "$f"; printf '\x55' | dd of="$f" bs=1 seek=1000 conv=notrunc status=none ;;
    truncate) writable "$f"; truncate -s -100 "$f" ;;
    extend) writable "$f"; printf 'x' >>"$f" ;;
    delete) writable "$f"; rm "$f" ;;
    extra) chmod u+w "$c"; echo x >"$c/extra.bin" ;;
    symfile) writable "$f"; cp "$f" "$work/copy.parquet"; rm "$f"; ln -s "$work/copy.parquet" "$f" ;;
    symdir) rm -rf "$work/outside"; cp -a "$c" "$work/outside"; chmod -R u+w "$c"; rm -rf "$c"; ln -s "$work/outside" "$c" ;;
    stats) writable "$c/manifest.json"; sed -i 's/"documents": 2000/"documents": 999999/' "$c/manifest.json" ;;
    key) writable "$c/manifest.json"; sed -i '0,/"docs": 2000/s//"docs": 1/' "$c/manifest.json" ;;
    files-size) writable "$c/manifest.json"; python3 - "$c/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1])); m["files"][0]["size"] += 1
open(sys.argv[1], "w").write(json.dumps(m, indent=2))
EOF
      ;;
    unknown-field) writable "$c/manifest.json"; sed -i '0,/{/s//{"extra": 1,/' "$c/manifest.json" ;;
    emptied) writable "$f"; : >"$f" ;;
  esac
  check "$damage"
done
echo "corruption: $cases cases; verify $by_verify/$cases, status $by_status/$cases, status --verify $by_status_v/$cases, reading stage $by_stage/$cases"

echo "== 7. full disk: demo on tmpfs of 1..16 MiB"
if unshare -rm true 2>/dev/null; then
  res=$(unshare -rm sh -c '
    ok=0; clean=0; sizes=0
    for mb in $(seq 1 16); do
      T=$(mktemp -d); mount -t tmpfs -o size=${mb}m tmpfs "$T" || exit 99
      "$0" build demo --store "$T/s" -q --set corpus.docs=3000 >/dev/null 2>"$T/err"; rc=$?
      bad=0
      for d in "$T"/s/objects/*/*; do [ -e "$d" ] || continue; [ -f "$d/manifest.json" ] || bad=1; done
      [ "$(ls -A "$T/s/tmp" 2>/dev/null | wc -l)" = 0 ] || bad=1
      if [ $rc = 0 ]; then ok=$((ok+1)); elif grep -q "disk is full" "$T/err"; then :; else bad=1; fi
      sizes=$((sizes+1)); [ $bad = 0 ] && clean=$((clean+1))
      umount "$T"
    done
    echo "$sizes $clean $ok"' "$ausa")
  set -- $res
  echo "full-disk: $1 sizes, $2 with nothing partial and the disk-full hint on failure ($3 fit)"
else
  echo "full-disk: skipped (cannot create a mount namespace)"
fi

echo "== 8. no-op build of demo"
s=$work/s8; rm -rf "$s"; "$ausa" build demo --store "$s" -q
if command -v hyperfine >/dev/null; then
  hyperfine -N --warmup 10 --runs 200 --export-json "$work/noop.json" "$ausa build demo --store $s -q" >/dev/null
  python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][0]; \
print(f\"no-op build: median {r['median']*1e3:.2f} ms over 200 runs\")" "$work/noop.json"
else
  python3 - "$ausa" "$s" <<'EOF'
import subprocess, sys, time, statistics
t = []
for _ in range(200):
    a = time.perf_counter(); subprocess.run([sys.argv[1], "build", "demo", "--store", sys.argv[2], "-q"], check=True)
    t.append(time.perf_counter() - a)
print(f"no-op build: median {statistics.median(t)*1e3:.2f} ms over 200 runs (python loop)")
EOF
fi
