#!/usr/bin/env bash
# Builds the demo DAG and checks its artifacts with pyarrow and the Python `tokenizers`
# package (installed into .venv from PyPI); then does the same for real WikiText-2 text
# with `<unk>` markers (tests/interop/realtext.toml), every document checked, when
# ../shared/data/wikitext-2/valid.txt exists; finally a training checkpoint goes through
# Python's `safetensors` both ways (tests/interop/checkpoint_check.py). Called by .ci/run
# after the tests (the trainer needs the libtorch that tests/run.sh installs).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --disable-pip-version-check pyarrow tokenizers safetensors numpy
# The same features as the test suite, so nothing is recompiled; `train` for the checkpoint check.
cargo build -q --locked --workspace --features ausa-cli/train --bins
store=$(mktemp -d)
trap 'rm -rf "$store"' EXIT
target/debug/ausa build demo --store "$store" -q
.venv/bin/python tests/interop/check.py target/debug/ausa "$store" demo
real=../shared/data/wikitext-2/valid.txt
if [ -f "$real" ]; then
  target/debug/ausa build tests/interop/realtext.toml --store "$store" -q
  AUSA_INTEROP_ALL=1 .venv/bin/python tests/interop/check.py target/debug/ausa "$store" \
    tests/interop/realtext.toml
else
  # As ausa-testkit skips: visible by name, logged for .ci/run, fatal when required.
  line="SKIPPED interop_real_wikitext [shared-data]: $real is absent"
  echo "$line" >&2
  if [ -n "${AUSA_SKIP_LOG:-}" ]; then echo "$line" >> "$AUSA_SKIP_LOG"; fi
  case ",${AUSA_REQUIRE:-}," in
    *,shared-data,*) echo "interop_real_wikitext: AUSA_REQUIRE needs shared-data" >&2; exit 1 ;;
  esac
fi

# A checkpoint written by us, read and rewritten by Python: resuming from either copy
# must give the same losses to the last bit.
runs="$store/runs"
train=(target/debug/ausa --store "$store" -q train lm --dag demo --device cpu --threads 1 --d-model 32 --layers 1 --heads 2)
"${train[@]}" --steps 2 --out "$runs/ours"
.venv/bin/python tests/interop/checkpoint_check.py "$runs/ours" "$runs/python" "$runs/perturbed"
for run in ours python perturbed; do "${train[@]}" --steps 4 --resume --out "$runs/$run"; done
.venv/bin/python - "$runs"/{ours,python,perturbed}/metrics.jsonl <<'PY'
import json, sys
def losses(path):
    rows = [json.loads(line) for line in open(path)]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]
ours, python, perturbed = (losses(p) for p in sys.argv[1:])
assert len(ours) == 4 and ours == python, (ours, python)
assert perturbed[2:] != ours[2:], ("a perturbed checkpoint resumed to the same losses", ours)
print(f"checkpoint: resumed from our file and from Python's rewrite, same losses {ours[2:]}")
PY
