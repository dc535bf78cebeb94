#!/usr/bin/env bash
# Start-up of `ausa train lm --cache-mode full` on a built wt2-sized store (CPU): hyperfine
# over a whole process that opens the three splits' set artifacts (validated memory maps),
# builds the model, runs ONE tiny step and one evaluation batch per split, and writes its
# run directory: an upper bound on "process start to the first step".
# The store: WikiText-2's validation text (../shared/data/wikitext-2/valid.txt, 1.1 MB)
# repeated 10 times as the train split (about WikiText-2 train's 2.1M words) and once as
# validation and test, a 16k BPE like the wt2 DAG, seq_len 256, window 64, stride 32, k 128.
# Usage: tests/bench/lm_startup.sh [WORKDIR] [RUNS=10]  (needs hyperfine and the release
# binary with the train feature: cargo build --release -p ausa-cli --features train)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
runs=${2:-10}
valid=$(realpath ../shared/data/wikitext-2/valid.txt)
ausa=$PWD/target/release/ausa
mkdir -p "$work"
train=$work/train.txt
[ -f "$train" ] || for _ in $(seq 10); do cat "$valid"; done > "$train"
dag=$work/wt2-sized.toml
cat > "$dag" <<TOML
description = "wt2-sized: WikiText-2 valid x10 as train, valid as validation and test"
[stages.corpus]
kind = "corpus"
source = "local"
train = ["$train"]
validation = ["$valid"]
test = ["$valid"]
text_format = "wikitext"
[stages.doc_stats]
kind = "doc_stats"
inputs = ["corpus"]
[stages.subset]
kind = "subset"
inputs = { documents = "corpus", doc_stats = "doc_stats" }
fraction = 1.0
[stages.tokenizer]
kind = "tokenizer"
inputs = ["subset"]
vocab_size = 16384
[stages.tokens]
kind = "tokenize"
inputs = { documents = "corpus", tokenizer = "tokenizer" }
[stages.sequences]
kind = "sequences"
inputs = ["tokens"]
[stages.banks]
kind = "banks"
inputs = ["sequences"]
[stages.minhash]
kind = "minhash"
inputs = ["banks"]
[stages.routing]
kind = "routing"
inputs = ["banks"]
TOML
"$ausa" --store "$work/store" build "$dag" --quiet
"$ausa" --store "$work/store" show "$dag:sequences" --json | python3 -c 'import json,sys; s=json.load(sys.stdin)["manifest"]["stats"]; print("sequences stats:", json.dumps(s)[:300])'
for attn in sdpa ska; do
  hyperfine --warmup 2 --runs "$runs" --export-json "$work/startup-$attn.json" \
    --prepare "rm -rf $work/run-$attn" \
    "$ausa --store $work/store train lm --dag $dag --cache-mode full --attn $attn --device cpu --threads 1 --d-model 32 --layers 1 --heads 2 --batch 2 --steps 1 --eval-batches 1 --quiet --out $work/run-$attn"
done
