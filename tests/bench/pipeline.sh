#!/usr/bin/env bash
# Whole-build benchmark (issues 3 and 4): `ausa build` from an empty store of a ~140 MB
# synthetic corpus (the size of WikiText-103 at 25%) through routing: corpus, doc_stats,
# subset (fraction 1.0, so the tokenizer sees all the text), tokenizer (vocab 16384),
# tokens, sequences (256), banks (window 64, stride 32), minhash (k 128), routing.
# Reports wall time, peak RSS and per-stage times.
# Usage: tests/bench/pipeline.sh [WORKDIR] [DOCS=43000] (smoke.sh passes a tiny DOCS)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=${1:-$(mktemp -d)}
docs=${2:-43000}
mkdir -p "$work"
cargo build --release -q -p ausa-cli
ausa=$PWD/target/release/ausa
# 43,000 synthetic documents average 3,256 bytes: about 140 MB of text.
cat > "$work/wt103-25pct-synthetic.toml" <<DAG
[stages.corpus]
kind = "corpus"
docs = $docs
seed = 1

[stages.doc_stats]
kind = "doc_stats"
inputs = { documents = "corpus" }

[stages.subset]
kind = "subset"
inputs = { documents = "corpus", doc_stats = "doc_stats" }
fraction = 1.0

[stages.tokenizer]
kind = "tokenizer"
inputs = { documents = "subset" }
vocab_size = 16384

[stages.tokens]
kind = "tokenize"
inputs = { documents = "subset", tokenizer = "tokenizer" }

[stages.sequences]
kind = "sequences"
inputs = { tokens = "tokens" }
seq_len = 256

[stages.banks]
kind = "banks"
inputs = { sequences = "sequences" }
window = 64
stride = 32

[stages.minhash]
kind = "minhash"
inputs = { banks = "banks" }
minhash_k = 128

[stages.routing]
kind = "routing"
inputs = { banks = "banks" }
DAG
rm -rf "$work/store"
/usr/bin/time -f "whole build: %e s wall, peak RSS %M KiB" \
  "$ausa" build "$work/wt103-25pct-synthetic.toml" --store "$work/store" --json > "$work/build.json"
python3 - "$work/build.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for s in r["report"]["stages"]:
    print(f"  {s['stage']:<10} {s['outcome']:<8} {s.get('seconds', 0):6.2f} s  {s.get('bytes', 0)/1e6:8.1f} MB")
PY
"$ausa" show "$work/wt103-25pct-synthetic.toml:corpus" --store "$work/store" --json |
  python3 -c "import json,sys; s=json.load(sys.stdin)['manifest']['stats']; print(f\"corpus text: {s['bytes']/1e6:.1f} MB, {s['words']} words\")"
